"""PEPNet: gates in (0, 2), gated embedding and tower-layer inputs, stop-gradients into embeddings, EPNet gate."""

from __future__ import annotations

import pytest
import torch
from tiny import POSITION_SPEC as SPEC
from tiny import SCENARIO_COL
from tiny import position_batch as batch

from training.models import build_model


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
