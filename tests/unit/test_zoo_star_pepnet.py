"""STAR and PEPNet mechanisms: partitioned normalisation, star weights, auxiliary logit, gates, stop-gradients."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_batch

from training.data import FeatureSpec
from training.models import build_model
from training.models.star import StarLinear, StarPartitionedNorm

SPEC = FeatureSpec(
    sparse_fields=["user_id", "item_id", "scenario_id", "position"],
    vocab_sizes=[50, 40, 4, 9],
    dense_fields=["u_ctr", "i_ctr"],
    seq_len=5,
    n_scenarios=3,
    tasks=("click", "conversion"),
)
SCENARIO_COL = SPEC.sparse_fields.index("scenario_id")


def batch(n: int = 12, seed: int = 1) -> dict[str, torch.Tensor]:
    return tiny_batch(n, seed, SPEC)


def randomise_affine(norm: StarPartitionedNorm) -> None:
    with torch.no_grad():
        for p in (norm.gamma, norm.beta, norm.scenario_gamma, norm.scenario_beta):
            p.copy_(torch.randn_like(p))


# ---------------------------------------------------------------- STAR: partitioned normalisation

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


# ---------------------------------------------------------------- STAR: star topology, auxiliary logit


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


# ---------------------------------------------------------------- PEPNet


def test_pepnet_gates_lie_in_zero_two_and_can_exceed_one():
    model = build_model("pepnet", SPEC, emb_dim=4, tower_dims=(8, 6))
    _, gates = model.forward_with_gates(batch())
    every = [gates["epnet"], *gates["ppnet"]]
    assert [g.shape for g in gates["ppnet"]] == [(12, 2, model.general_index.numel() * 4), (12, 2, 8), (12, 2, 6)]
    assert all(((g > 0) & (g < 2)).all() for g in every)
    with torch.no_grad():
        model.epnet.mlp.biases[-1].fill_(6.0)
        model.ppnet[1].mlp.biases[-1].fill_(6.0)
    _, gates = model.forward_with_gates(batch())
    assert (gates["epnet"] > 1.9).all() and (gates["ppnet"][1] > 1.9).all()  # γ = 2, not a plain sigmoid
    assert (gates["epnet"] < 2).all()


def test_pepnet_gates_scale_the_embedding_and_every_tower_layers_input():
    model = build_model("pepnet", SPEC, emb_dim=4, tower_dims=(8, 6)).eval()
    b = batch()
    logits, gates = model.forward_with_gates(b)
    general = model.embedding(b)[:, model.general_index].flatten(1)  # E
    h = (gates["epnet"] * general).unsqueeze(1).expand(-1, 2, -1)  # O_ep = δ_ep ⊙ E, one copy per task
    for delta, layer in zip(gates["ppnet"], model.tower_layers, strict=True):
        h = layer(delta * h)  # H^{l+1} = f((δ^l ⊙ H^l) W^l + b^l)
    assert torch.allclose(h.squeeze(-1), logits, atol=1e-6)
    with torch.no_grad():
        model.ppnet[2].mlp.biases[-1].fill_(-30.0)  # the logit layer's gate → 0: logits = tower biases
    assert torch.allclose(model(b), model.tower_layers[2].biases[0].squeeze(-1).expand(12, 2), atol=1e-5)


@pytest.mark.parametrize("context", ["epnet", "hidden"])
def test_pepnet_gates_send_no_gradient_into_the_general_embedding(context):
    model = build_model("pepnet", SPEC, emb_dim=4, tower_dims=(8,), pp_gate_context=context)
    b = batch()
    table, dense = model.embedding.table.weight, model.embedding.dense_proj.weight  # dense: general only
    scenario_rows = model.embedding.offsets[SCENARIO_COL] + b["sparse"][:, SCENARIO_COL]

    def grads(loss, params):
        out = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(params, out, strict=True)]

    logits, gates = model.forward_with_gates(b)
    g_dense, g_table = grads(gates["epnet"].square().sum(), [dense, table])
    assert torch.count_nonzero(g_dense) == 0  # sg(E): the gate does not train the general embedding …
    assert g_table[scenario_rows].abs().sum() > 0  # … but trains the scenario embedding
    pp_loss = sum(g.square().sum() for g in gates["ppnet"])
    g_dense, *g_ep = grads(pp_loss, [dense, *model.epnet.parameters()])
    assert torch.count_nonzero(g_dense) == 0 and all(torch.count_nonzero(g) == 0 for g in g_ep)  # sg(O_ep)
    assert grads(logits.sum(), [dense])[0].abs().sum() > 0  # the main path does train it


def test_pepnet_sg_priors_stops_the_prior_embeddings_gradient_through_ppnet():
    b = batch()
    user_rows = b["sparse"][:, 0]  # user_id: offset 0, a general field and a prior
    for flag in (False, True):
        torch.manual_seed(0)
        model = build_model("pepnet", SPEC, emb_dim=4, tower_dims=(8,), sg_priors=flag)
        _, gates = model.forward_with_gates(b)
        loss = sum(g.sum() for g in gates["ppnet"])
        (grad,) = torch.autograd.grad(loss, [model.embedding.table.weight], allow_unused=True)
        assert (grad is None or grad[user_rows].abs().sum() == 0) == flag


def test_pepnet_changing_only_the_scenario_changes_the_epnet_gate():
    model = build_model("pepnet", SPEC, emb_dim=4).eval()  # domain_in_general=False: E has no scenario
    b = batch()
    moved = {k: v.clone() for k, v in b.items()}
    moved["scenario"] = (b["scenario"] + 1) % SPEC.n_scenarios
    moved["sparse"][:, SCENARIO_COL] = moved["scenario"] + 1
    general = model.embedding(b)[:, model.general_index]
    assert torch.equal(general, model.embedding(moved)[:, model.general_index])  # E itself is unchanged
    _, gates = model.forward_with_gates(b)
    _, gates_moved = model.forward_with_gates(moved)
    assert (gates["epnet"] - gates_moved["epnet"]).abs().amax(1).gt(1e-6).all()  # every row's gate moved
    assert not torch.allclose(model(b), model(moved))


def test_pepnet_bad_config_is_a_value_error():
    with pytest.raises(ValueError, match="not sparse fields"):
        build_model("pepnet", SPEC, prior_fields=("user_id", "author_id"))
    with pytest.raises(ValueError, match="pp_gate_context"):
        build_model("pepnet", SPEC, pp_gate_context="both")
    with pytest.raises(ValueError, match="gate_scale"):
        build_model("pepnet", SPEC, gate_scale=0.0)
