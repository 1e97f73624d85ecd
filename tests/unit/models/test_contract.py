"""Every registered model: shapes, gradients, bad input, determinism."""

from __future__ import annotations

import pytest
import torch
from tiny import SPEC, tiny_batch
from tiny import registry_batch as batch

from training.layers import MLP, ParallelMLP, ParallelNorm
from training.models import REGISTRY, build_model, model_names


def test_registry_lists_every_model():
    assert model_names() == sorted(REGISTRY) and {"mmoe", "shared_bottom"} <= set(REGISTRY)
    assert all(entry.description for entry in REGISTRY.values())
    with pytest.raises(ValueError, match="unknown model"):
        build_model("nope", SPEC)
    with pytest.raises(ValueError, match="no config field"):
        build_model("mmoe", SPEC, n_layers=3)


@pytest.mark.parametrize("name", model_names())
def test_output_shape_and_backward(name):
    model = build_model(name, SPEC, emb_dim=4)
    logits = model(batch())
    assert logits.shape == (4, len(SPEC.tasks))
    extra = model.extra_losses(batch(), logits)
    assert all(value.dim() == 0 and torch.isfinite(value) for value in extra.values())
    (logits.sum() + sum(extra.values())).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", model_names())
def test_wrong_field_count_is_a_value_error(name):
    model = build_model(name, SPEC)
    bad = batch()
    bad["sparse"] = bad["sparse"][:, :2]
    with pytest.raises(ValueError, match="sparse"):
        model(bad)
    bad = batch()
    bad["dense"] = torch.zeros(4, 5)
    with pytest.raises(ValueError, match="dense"):
        model(bad)


@pytest.mark.parametrize("name", model_names())
def test_bad_config_is_a_value_error(name):
    with pytest.raises(ValueError):
        build_model(name, SPEC, emb_dim=0)


@pytest.mark.parametrize("name", model_names())
def test_seeded_build_is_deterministic(name):
    outs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_model(name, SPEC).eval()
        outs.append(model(batch()))
    assert torch.equal(outs[0], outs[1])
    torch.manual_seed(1)
    assert not torch.equal(build_model(name, SPEC).eval()(batch()), outs[0])


def _block_norms(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The norm modules inside the model's MLP / ParallelMLP blocks (not its own LayerNorms or STAR's PN)."""
    found = []
    for m in model.modules():
        if isinstance(m, MLP):
            found += [c for c in m if isinstance(c, (torch.nn.BatchNorm1d, torch.nn.LayerNorm))]
        elif isinstance(m, ParallelMLP) and m.norms is not None:
            found += list(m.norms)
    return found


@pytest.mark.parametrize("name", model_names())
def test_norm_reaches_every_models_mlp_blocks(name):
    """`norm` is a field of every config: "none" adds no norm module; "batch" / "layer" put norms in the
    model's MLP blocks that the forward uses (each gets a gradient) and that change the output."""
    b = tiny_batch(12)  # every scenario present, so every scenario-specific block runs
    torch.manual_seed(0)
    plain = build_model(name, SPEC, emb_dim=4)
    assert plain.config.norm == "none" and not _block_norms(plain)
    for norm in ("batch", "layer"):
        torch.manual_seed(0)
        model = build_model(name, SPEC, emb_dim=4, norm=norm)
        norms = _block_norms(model)
        kind = torch.nn.BatchNorm1d if norm == "batch" else (torch.nn.LayerNorm, ParallelNorm)
        assert norms and all(isinstance(n, kind) or getattr(n, "kind", None) == norm for n in norms)
        logits = model(b)
        (logits.sum() + sum(model.extra_losses(b, logits).values())).backward()
        for n in norms:
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in n.parameters())
        assert not torch.allclose(logits, plain(b), atol=1e-4)
    with pytest.raises(ValueError, match="norm"):
        build_model(name, SPEC, norm="group")
