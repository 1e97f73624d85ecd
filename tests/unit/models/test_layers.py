"""Shared layers: ScenarioChunks (one scenario per chunk); MLP/ParallelMLP's optional norm ('none' = plain MLP)."""

from __future__ import annotations

import math

import pytest
import torch
from tiny import S

from training.layers import MLP, ParallelMLP, ScenarioChunks


@pytest.mark.parametrize("n", [1, 7, 64, 301])
def test_hinet_scenario_chunks_hold_one_scenario_each(n):
    for scenario in (torch.randint(0, S, (n,), generator=torch.Generator().manual_seed(n)), torch.full((n,), 1)):
        chunks = ScenarioChunks(scenario, S)
        assert chunks.n_chunks == math.ceil(n / chunks.size) + S - 1  # a bound fixed by B and S alone
        assert chunks.slot.unique().numel() == n and (chunks.slot < chunks.n_chunks * chunks.size).all()
        assert torch.equal(chunks.owner[chunks.slot // chunks.size], scenario)  # each row sits in its own chunk
        x = torch.randn(n, 3)
        padded = chunks.pad(x)  # (K, c, 3)
        assert torch.equal(chunks.unpad(padded), x) and padded.count_nonzero() == x.count_nonzero()  # 0 elsewhere


# ---------------------------------------------------------------- shared MLP blocks: optional norm


def test_mlp_norm_none_is_the_plain_mlp_bit_for_bit():
    """norm="none" adds no module, draws the same random init and computes the same bits as Linear → ReLU
    without the option, so every model built on these blocks is unchanged."""
    x = torch.randn(6, 8)
    torch.manual_seed(0)
    mlp = MLP([8, 16, 4], dropout=0.1, activate_last=False).eval()
    after_mlp = torch.rand(1)  # the RNG stream after the build
    torch.manual_seed(0)
    plain = torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Dropout(0.1), torch.nn.Linear(16, 4)
    ).eval()
    assert torch.equal(torch.rand(1), after_mlp)
    assert list(mlp.state_dict()) == list(plain.state_dict()) and torch.equal(mlp(x), plain(x))

    torch.manual_seed(0)
    par = ParallelMLP(3, [8, 16, 4], activate_last=False)
    after_par = torch.rand(1)
    assert par.norms is None and set(par.state_dict()) == {"weights.0", "weights.1", "biases.0", "biases.1"}
    torch.manual_seed(0)
    w0, b0 = torch.empty(3, 8, 16).uniform_(-(8**-0.5), 8**-0.5), torch.empty(3, 16).uniform_(-(8**-0.5), 8**-0.5)
    w1, b1 = torch.empty(3, 16, 4).uniform_(-0.25, 0.25), torch.empty(3, 4).uniform_(-0.25, 0.25)
    assert torch.equal(torch.rand(1), after_par)
    assert all(torch.equal(a, b) for a, b in zip(par.state_dict().values(), (w0, w1, b0, b1), strict=True))
    want = torch.stack([torch.relu(x @ w0[n] + b0[n]) @ w1[n] + b1[n] for n in range(3)], dim=1)  # (B, n, 4)
    assert torch.allclose(par(x), want, atol=1e-6)


@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_mlp_norm_sits_between_each_activated_linear_and_its_activation(norm):
    kind = torch.nn.BatchNorm1d if norm == "batch" else torch.nn.LayerNorm
    mlp = MLP([8, 16, 12, 1], activate_last=False, norm=norm)
    layers = [type(m) for m in mlp]
    assert [issubclass(t, kind) for t in layers] == [False, True, False, False, True, False, False]
    assert layers[0] is layers[3] is layers[6] is torch.nn.Linear and layers[2] is torch.nn.ReLU
    seen = []
    mlp[1].register_forward_hook(lambda _m, _i, out: seen.append(out))
    x = torch.randn(32, 8) * 5 + 3
    mlp(x)
    axis = 0 if norm == "batch" else 1  # per unit over the batch, or per row over the units
    assert torch.allclose(seen[0].mean(axis), torch.zeros(1), atol=1e-5)
    assert torch.allclose(seen[0].var(axis, unbiased=False), torch.ones(1), atol=1e-3)
    assert mlp(torch.randn(4, 3, 8)).shape == (4, 3, 1)  # leading axes count as rows

    par = ParallelMLP(3, [8, 16, 4], activate_last=True, norm=norm)
    assert len(par.norms) == 2  # both layers are activated
    hidden = []
    par.norms[0].register_forward_hook(lambda _m, _i, out: hidden.append(out))  # (n, B, d)
    par(x)
    h = hidden[0]
    axis = 1 if norm == "batch" else 2  # per network and unit over the batch, or per network and row
    assert torch.allclose(h.mean(axis), torch.zeros(1), atol=1e-5)
    assert torch.allclose(h.var(axis, unbiased=False), torch.ones(1), atol=1e-3)
    with pytest.raises(ValueError, match="norm"):
        MLP([8, 4], norm="group")
