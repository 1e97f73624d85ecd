"""STAR: per-scenario partitioned normalisation, star-topology weights W_p ⊙ W, task heads, auxiliary logit."""

from __future__ import annotations

import pytest
import torch
from tiny import POSITION_SPEC as SPEC
from tiny import SCENARIO_COL
from tiny import position_batch as batch

from training.models import build_model
from training.models.star import StarLinear, StarPartitionedNorm


def randomise_affine(norm: StarPartitionedNorm) -> None:
    with torch.no_grad():
        for p in (norm.gamma, norm.beta, norm.scenario_gamma, norm.scenario_beta):
            p.copy_(torch.randn_like(p))


# ---------------------------------------------------------------- partitioned normalisation

SCEN = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])


def test_pn_train_normalises_each_scenario_with_its_own_batch_statistics():
    norm = StarPartitionedNorm(3, n_scenarios=3, momentum=0.1, eps=1e-5).train()
    randomise_affine(norm)
    x = torch.randn(10, 3) * 3 + 2
    out = norm(x, SCEN)
    for p in range(3):
        rows = x[p == SCEN]
        x_hat = (rows - rows.mean(0)) / torch.sqrt(rows.var(0, unbiased=False) + 1e-5)
        expected = norm.gamma * norm.scenario_gamma[p] * x_hat + norm.beta + norm.scenario_beta[p]
        assert torch.allclose(out[p == SCEN], expected, atol=1e-5), p

    changed = x.clone()
    changed[SCEN == 1] = torch.randn(3, 3) * 10 + 50  # only scenario-1 rows move
    again = norm(changed, SCEN)
    keep = SCEN != 1
    assert torch.allclose(again[keep], out[keep], atol=1e-6)  # whole-batch statistics would move them
    assert not torch.allclose(again[~keep], out[~keep])


def test_pn_running_statistics_move_only_with_their_own_scenarios_rows():
    norm = StarPartitionedNorm(3, n_scenarios=4, momentum=0.1, eps=1e-5).train()
    scen = torch.tensor([0, 0, 0, 0, 1, 2, 2, 2])  # scenario 1 has one row, scenario 3 none
    x = torch.randn(8, 3) * 2 + 1
    norm(x, scen)
    x0, x2 = x[scen == 0], x[scen == 2]
    assert torch.allclose(norm.running_mean[0], 0.1 * x0.mean(0), atol=1e-6)
    assert torch.allclose(norm.running_var[0], 0.9 + 0.1 * x0.var(0, unbiased=True), atol=1e-6)
    assert torch.allclose(norm.running_mean[2], 0.1 * x2.mean(0), atol=1e-6)
    assert torch.allclose(norm.running_var[2], 0.9 + 0.1 * x2.var(0, unbiased=True), atol=1e-6)
    assert torch.allclose(norm.running_mean[1], 0.1 * x[4], atol=1e-6)  # one row: mean moves …
    assert torch.equal(norm.running_var[1], torch.ones(3))  # … variance does not
    assert torch.equal(norm.running_mean[3], torch.zeros(3)) and torch.equal(norm.running_var[3], torch.ones(3))

    before = norm.running_mean.clone(), norm.running_var.clone()
    norm(torch.randn(3, 3) * 100, torch.tensor([2, 2, 2]))  # a batch of scenario 2 only
    assert torch.equal(norm.running_mean[[0, 1, 3]], before[0][[0, 1, 3]])
    assert torch.equal(norm.running_var[[0, 1, 3]], before[1][[0, 1, 3]])
    assert not torch.allclose(norm.running_mean[2], before[0][2])


def test_pn_eval_uses_each_scenarios_running_statistics():
    norm = StarPartitionedNorm(3, n_scenarios=3, momentum=0.1, eps=1e-5)
    randomise_affine(norm)
    with torch.no_grad():
        norm.running_mean.copy_(torch.randn(3, 3))
        norm.running_var.copy_(torch.rand(3, 3) + 0.5)
    norm.eval()
    x = torch.randn(10, 3)
    out = norm(x, SCEN)
    mean, var = norm.running_mean[SCEN], norm.running_var[SCEN]
    scale = norm.gamma * norm.scenario_gamma[SCEN]
    expected = scale * (x - mean) / torch.sqrt(var + 1e-5) + norm.beta + norm.scenario_beta[SCEN]
    assert torch.allclose(out, expected, atol=1e-5)
    assert torch.allclose(norm(x[:1], SCEN[:1]), out[:1], atol=1e-6)  # a row alone: no batch statistics
    buffers = norm.running_mean.clone()
    norm(x * 5, SCEN)
    assert torch.equal(norm.running_mean, buffers)  # eval never updates


def test_pn_statistics_stay_float32_under_bf16_autocast():
    norm = StarPartitionedNorm(3, n_scenarios=3, momentum=0.1, eps=1e-5).train()
    x = torch.randn(10, 3) * 3 + 100  # a large mean: bf16 statistics would lose the rows' spread
    reference = norm(x, SCEN)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = norm(x, SCEN)
    assert out.dtype == torch.float32 and torch.allclose(out, reference, atol=1e-4)


def test_star_train_mode_rows_of_one_scenario_ignore_other_scenarios_rows():
    """Whole model: rows interact only through PN, so PN per scenario keeps scenarios apart."""
    model = build_model("star", SPEC, emb_dim=4, star_dims=(8,), pn_hidden=True, specific_init_std=0.3).train()
    b = batch()
    out = model(b)
    other = b["scenario"] != b["scenario"][0]
    changed = {k: v.clone() for k, v in b.items()}
    changed["dense"][other] = changed["dense"][other] * 7 + 3
    again = model(changed)
    same = ~other
    assert torch.allclose(again[same], out[same], atol=1e-5)
    assert not torch.allclose(again[other], out[other])


# ---------------------------------------------------------------- star topology, auxiliary logit


def test_star_linear_uses_elementwise_product_of_specific_and_shared_weights():
    layer = StarLinear(5, 4, n_scenarios=3, specific_init_std=0.5)
    with torch.no_grad():
        layer.bias.copy_(torch.randn_like(layer.bias))
    x = torch.randn(10, 5)
    out = layer(x, SCEN)
    weight, bias = layer.effective()
    for p in range(3):
        w_p = layer.weight[p] * layer.shared_weight  # W_p ⊙ W
        b_p = layer.bias[p] + layer.shared_bias
        assert torch.allclose(weight[p], w_p) and torch.allclose(bias[p], b_p)
        assert torch.allclose(out[p == SCEN], x[p == SCEN] @ w_p + b_p, atol=1e-5), p
    assert not torch.allclose(weight[0], weight[1])  # scenarios really differ

    fresh = StarLinear(5, 4, n_scenarios=3, specific_init_std=0.0)
    assert torch.equal(fresh.effective()[0], fresh.shared_weight.expand(3, 5, 4))  # starts as the shared FCN


def test_star_heads_are_star_layers_or_shared_linears():
    star = build_model("star", SPEC, emb_dim=4, specific_init_std=0.3)
    assert isinstance(star.head, StarLinear) and star.head.weight.shape[-1] == len(SPEC.tasks)
    shared = build_model("star", SPEC, emb_dim=4, task_heads="shared")
    assert isinstance(shared.head, torch.nn.Linear) and shared.head.out_features == len(SPEC.tasks)


def test_star_auxiliary_logit_is_added_to_the_main_logit():
    model = build_model("star", SPEC, emb_dim=4, star_dims=(8,), aux_dims=(6,)).eval()
    b = batch()
    fields = model.embedding(b)
    out = model(b)
    main, aux = model.main_logits(fields, b["scenario"]), model.aux_logits(fields)
    assert torch.allclose(out, main + aux, atol=1e-6)
    with torch.no_grad():
        model.aux[-1].bias += torch.tensor([1.5, -2.0])  # shift only the auxiliary network's output
    shifted = model(b)
    assert torch.allclose(shifted - out, torch.tensor([1.5, -2.0]).expand_as(out), atol=1e-5)
    assert model.aux[0].in_features == 2 * 4  # scenario id + position (the absent defaults skipped)


def test_star_scenario_id_reaches_the_main_network_only_when_asked():
    b = batch()
    moved = {k: v.clone() for k, v in b.items()}
    moved["sparse"][:, SCENARIO_COL] = 1  # embedding of the scenario field only; the star routing is unchanged
    for flag, differs in ((False, False), (True, True)):
        model = build_model("star", SPEC, emb_dim=4, scenario_in_main=flag).eval()
        main = model.main_logits(model.embedding(b), b["scenario"])
        main_moved = model.main_logits(model.embedding(moved), b["scenario"])
        assert (not torch.allclose(main, main_moved)) == differs


def test_star_bad_config_is_a_value_error():
    with pytest.raises(ValueError, match="task_heads"):
        build_model("star", SPEC, task_heads="towers")
    with pytest.raises(ValueError, match="aux_fields"):
        build_model("star", SPEC, aux_fields=("position",))
    with pytest.raises(ValueError, match="pn_momentum"):
        build_model("star", SPEC, pn_momentum=0.0)
