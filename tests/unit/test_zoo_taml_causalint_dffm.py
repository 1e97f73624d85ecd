"""Mechanism tests for TAML, CausalInt and DFFM: each fails if its mechanism is wired wrong."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny import SPEC, no_host_sync, tiny_batch

from training.data import FeatureSpec
from training.models import build_model
from training.models.causalint import causalint_gradient_penalty, causalint_orthogonality
from training.models.taml import taml_distillation, taml_ensemble


def batch(n: int = 8, seed: int = 1) -> dict[str, torch.Tensor]:
    return tiny_batch(n, seed)


# ----------------------------------------------------------------------------- TAML


def test_taml_prob_ensemble_is_log_odds_of_mean_probability():
    z = torch.randn(6, 2, 3) * 3
    p = torch.sigmoid(taml_ensemble(z, "prob"))
    assert torch.allclose(p, torch.sigmoid(z).mean(-1), atol=1e-6)
    assert torch.allclose(taml_ensemble(z, "logit"), z.mean(-1))


@pytest.mark.parametrize("how", ["prob", "logit"])
@pytest.mark.parametrize("kind", ["bce", "mse"])
@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_taml_distillation_target_carries_no_gradient(how, kind, tau):
    """d KD / d z equals the gradient with the teacher held constant, and differs from a live teacher's."""
    B = 6
    z = (torch.randn(B, 2, 3) * 2).requires_grad_()
    (grad,) = torch.autograd.grad(taml_distillation(z, how, kind, tau), z)

    s = torch.sigmoid(z.detach() / tau)  # (B, T, M)
    p = torch.sigmoid(taml_ensemble(z.detach() / tau, how)).unsqueeze(-1)  # constant teacher
    dloss_ds = (s - p) if kind == "bce" else 2 * (s - p) * s * (1 - s)  # d/d(z/τ) per element
    expected = dloss_ds / tau * tau**2 / B
    assert torch.allclose(grad, expected, atol=1e-6)
    assert grad.abs().sum() > 0  # the students learn

    if (kind, how) == ("mse", "prob"):
        return  # Σ_l (s_l − mean s)² has no gradient through the mean anyway: nothing to tell apart
    # the same loss with a live (non-detached) teacher has a different gradient: the check has power
    zl = z.detach().requires_grad_()
    t = zl / tau
    live = torch.sigmoid(taml_ensemble(t, how)).unsqueeze(-1).expand_as(t)
    loss = F.binary_cross_entropy_with_logits(t, live, reduction="none") if kind == "bce" else (t.sigmoid() - live) ** 2
    (live_grad,) = torch.autograd.grad(loss.mean(0).sum() * tau**2, zl)
    assert not torch.allclose(live_grad, expected, atol=1e-4)


def test_taml_extra_losses_distil_into_students_only():
    """Through the model's hook: the KD gradient on the learner logits is λ_kd × the constant-teacher one,
    and the learners' own parameters get a non-zero gradient from it."""
    model = build_model("taml", SPEC, emb_dim=4, kd_weight=0.7, learner_loss_weight=0.0)
    b = batch()
    logits = model(b)
    z = model.learner_logits(b).detach().requires_grad_()  # (B, T, M)
    kd_only = model.extra_losses(b, logits)
    assert set(kd_only) == {"distillation"}
    kd_only["distillation"].backward()
    tower_grad = model.towers.weights[-1].grad
    assert tower_grad is not None and tower_grad.abs().sum() > 0

    model.learner_logits = lambda _batch: z  # feed a leaf through the hook (no cached forward)
    (grad,) = torch.autograd.grad(model.extra_losses(b, logits)["distillation"], z)
    p = torch.sigmoid(taml_ensemble(z.detach(), "prob")).unsqueeze(-1)
    assert torch.allclose(grad, 0.7 * (torch.sigmoid(z.detach()) - p) / z.shape[0], atol=1e-6)


def test_taml_learner_bce_uses_the_label_mask_and_esmm_multiplies():
    model = build_model("taml", SPEC, emb_dim=4, kd_weight=0.0)
    b = batch()
    b["label_mask"] = torch.zeros_like(b["label_mask"])
    assert model.extra_losses(b, model(b))["learner_bce"] == 0
    esmm = build_model("taml", SPEC, emb_dim=4, esmm=True).eval()
    plain = build_model("taml", SPEC, emb_dim=4)
    plain.load_state_dict(esmm.state_dict())
    z, zp = esmm.learner_logits(b), plain.eval().learner_logits(b)  # (B, T, M)
    assert torch.allclose(torch.sigmoid(z[:, 1]), torch.sigmoid(zp[:, 0]) * torch.sigmoid(zp[:, 1]), atol=1e-6)


def test_taml_config_errors():
    for bad in ({"n_learners": 0}, {"ensemble": "median"}, {"kd_temperature": 0.0}):
        with pytest.raises(ValueError):
            build_model("taml", SPEC, **bad)
    with pytest.raises(ValueError, match="esmm"):
        build_model("taml", FeatureSpec(**{**SPEC.to_dict(), "tasks": ["click", "like"]}), esmm=True)


# ------------------------------------------------------------------------- CausalInt

CAUSALINT_LOSSES_OFF = {"adv_weight": 0.0, "cls_weight": 0.0, "orth_weight": 0.0, "grad_orth_weight": 0.0}


@pytest.mark.parametrize("scale", [0.1, 0.3])
def test_causalint_adversary_reverses_the_gradient(scale):
    """Gradient into h_inv through the GRL = −λ × the gradient of the same loss without it."""
    model = build_model("causalint", SPEC, emb_dim=4, grl_scale=scale)
    h = torch.randn(8, 64, requires_grad=True)
    s = torch.randint(0, 3, (8,))
    (with_grl, w_with) = torch.autograd.grad(
        F.cross_entropy(model.adversary(h), s), [h, model.adversary.classifier.weight]
    )
    (without, w_without) = torch.autograd.grad(
        F.cross_entropy(model.adversary.classifier(h), s), [h, model.adversary.classifier.weight]
    )
    assert without.abs().sum() > 0
    assert torch.allclose(with_grl, -scale * without, atol=1e-7)
    assert torch.allclose(w_with, w_without)  # the classifier itself still minimises its loss


def test_causalint_adversarial_loss_reaches_the_shared_encoder_reversed():
    """Via extra_losses: the invariant encoder's gradient is −λ·λ_adv × that of the plain scenario CE."""
    cfg = {**CAUSALINT_LOSSES_OFF, "grl_scale": 0.1, "adv_weight": 2.0}
    model = build_model("causalint", SPEC, emb_dim=4, **cfg)
    b = batch(16)
    logits = model(b)
    losses = model.extra_losses(b, logits)
    assert set(losses) == {"adversarial"}
    params = list(model.invariant.parameters())
    got = torch.autograd.grad(losses["adversarial"], params)
    h_inv = F.relu(model.invariant(model.embedding.flat(b)))  # f_inv ends at its last Linear; h = ReLU(u)
    plain = F.cross_entropy(model.adversary.classifier(h_inv), b["scenario"])
    ref = torch.autograd.grad(plain, params)
    assert any(r.abs().sum() > 0 for r in ref)
    for g, r in zip(got, ref, strict=True):
        assert torch.allclose(g, -0.1 * 2.0 * r, atol=1e-7)


@pytest.mark.parametrize("form", ["sample", "batch"])
def test_causalint_orthogonality_is_zero_only_for_orthogonal_representations(form):
    # "sample": each row's h_inv ⟂ h_s (disjoint feature supports);
    # "batch" (DSN): every feature column of H_inv ⟂ every column of H_s over the batch (disjoint row supports)
    h_inv = torch.zeros(8, 6)
    h_s = torch.zeros(8, 6)
    if form == "sample":
        h_inv[:, :3], h_s[:, 3:] = torch.randn(8, 3), torch.randn(8, 3)
    else:
        h_inv[:4], h_s[4:] = torch.randn(4, 6), torch.randn(4, 6)
    assert causalint_orthogonality(h_inv, h_s, form) < 1e-10
    assert causalint_orthogonality(h_inv, 5 * h_s, form) < 1e-10  # scale-free
    mixed = h_s + 0.5 * h_inv
    assert causalint_orthogonality(h_inv, mixed, form) > 1e-2
    assert causalint_orthogonality(h_inv, h_inv, form) > 1e-2


def test_causalint_sample_orthogonality_row_wise():
    h_inv = torch.randn(8, 6)
    r = torch.randn(8, 6)
    h_s = r - (r * h_inv).sum(-1, keepdim=True) / h_inv.square().sum(-1, keepdim=True) * h_inv  # ⟂ per row
    assert causalint_orthogonality(h_inv, h_s, "sample") < 1e-10
    assert causalint_orthogonality(h_inv, r, "sample") > 1e-3


def test_causalint_orthogonality_acts_before_the_relu():
    """Default: L_orth on u = the last layers' pre-activations, whose cosines take both signs; on the ReLU
    outputs ("post_activation") every cosine is >= 0, so 0 is reachable only with disjoint active units."""
    b = batch(32)
    losses = {}
    for where in ("pre_activation", "post_activation"):
        torch.manual_seed(0)
        model = build_model("causalint", SPEC, emb_dim=4, **{**CAUSALINT_LOSSES_OFF, "orth_weight": 0.5})
        model.config.orth_input = where
        losses[where] = model.extra_losses(b, model(b))["orthogonality"]
    reps = model.representations(b)
    assert torch.equal(reps.h_inv, F.relu(reps.u_inv)) and torch.equal(reps.h_s, F.relu(reps.u_s))
    rows = torch.arange(32)
    assert torch.equal(reps.u_s, model.specific(model.embedding.flat(b))[rows, b["scenario"]])  # own f_s
    assert torch.allclose(losses["pre_activation"], 0.5 * causalint_orthogonality(reps.u_inv, reps.u_s))
    assert torch.allclose(losses["post_activation"], 0.5 * causalint_orthogonality(reps.h_inv, reps.h_s))
    assert not torch.allclose(losses["pre_activation"], losses["post_activation"])
    pre_cos = F.cosine_similarity(reps.u_inv, reps.u_s, dim=-1)
    post_cos = F.cosine_similarity(reps.h_inv, reps.h_s, dim=-1)
    assert (pre_cos < 0).any() and (pre_cos > 0).any() and (post_cos >= 0).all()


def test_causalint_extra_losses_wire_the_model_representations():
    model = build_model("causalint", SPEC, emb_dim=4, orth_weight=0.5, grad_orth_weight=0.3)
    b = batch(16)
    logits = model(b)
    reps = model._last  # what the trainer's forward left for extra_losses
    losses = model.extra_losses(b, logits)
    assert set(losses) == {"adversarial", "scenario_cls", "orthogonality", "grad_orthogonality"}
    assert model._last is None  # dropped after use
    assert torch.allclose(losses["orthogonality"], 0.5 * causalint_orthogonality(reps.u_inv, reps.u_s))
    grads = model.scenario_gradients(b, logits, reps)
    assert torch.allclose(losses["grad_orthogonality"], 0.3 * causalint_gradient_penalty(grads, "conflict"))
    assert causalint_gradient_penalty(grads, "cos2") > 0  # so the check above tells the two forms apart
    conflicting = {**b, "labels": (b["scenario"] == 0).float().unsqueeze(1).expand(-1, 2).clone()}
    conflict = model.extra_losses(conflicting, model(conflicting))["grad_orthogonality"]
    assert conflict > 0  # scenario 0 all positive, the others all negative: their gradients oppose
    total = sum(losses.values())
    total.backward()  # the double-backward regulariser included
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.scenario_classifier.weight.grad.abs().sum() > 0


def test_causalint_gradient_penalty_punishes_conflict_only():
    g = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 2.0], [0.0, 0.0, 0.0]])
    # pairs: (0,1) cos 0.6 aligned; (0,2) cos −1; (1,2) cos −0.6; (·,3) orthogonal; row 4 absent (zero)
    assert causalint_gradient_penalty(g[[0, 1]], "conflict") == 0  # positive transfer: no penalty
    assert causalint_gradient_penalty(g[[0, 1]], "cos2") == pytest.approx(0.36)  # the old form punishes it
    assert causalint_gradient_penalty(g, "conflict") == pytest.approx(1.0 + 0.36)
    assert causalint_gradient_penalty(g, "cos2") == pytest.approx(0.36 + 1.0 + 0.36)
    assert causalint_gradient_penalty(g[[0, 3, 4]], "conflict") == 0 == causalint_gradient_penalty(g[[0, 3, 4]], "cos2")


def looped_scenario_gradients(model, b, logits) -> torch.Tensor:
    """The former computation: one autograd.grad per scenario present, w.r.t. f_inv's last weight."""
    weight = model.invariant[-1].weight
    bce = F.binary_cross_entropy_with_logits(logits, b["labels"], reduction="none")
    bce = torch.where(b["label_mask"], bce, torch.zeros_like(bce))
    grads = torch.zeros(SPEC.n_scenarios, weight.numel())
    for j in range(SPEC.n_scenarios):
        rows = b["scenario"] == j
        if rows.any():
            mask = b["label_mask"] & rows.unsqueeze(1)
            loss_j = (bce * rows.unsqueeze(1)).sum(0) / mask.sum(0).clamp(min=1)
            (g,) = torch.autograd.grad(loss_j.sum(), weight, create_graph=True)
            grads[j] = g.flatten()
    return grads


@pytest.mark.parametrize("absent", [None, 1])
def test_causalint_scenario_gradients_equal_the_per_scenario_loop(absent):
    """One vectorised backward gives every ∇_W L_j (value and its own gradient) of the per-scenario loop."""
    model = build_model("causalint", SPEC, emb_dim=4)
    b = batch(24)
    b["label_mask"][::5, 1] = False
    if absent is not None:
        b["scenario"] = torch.where(b["scenario"] == absent, (absent + 1) % 3, b["scenario"])
    logits = model(b)
    reps = model._last
    got = model.scenario_gradients(b, logits, reps)  # (S, D*H)
    want = looped_scenario_gradients(model, b, logits)
    assert want.abs().sum() > 0 and torch.allclose(got, want, atol=1e-7, rtol=1e-5)
    if absent is not None:
        assert torch.equal(got[absent], torch.zeros_like(got[absent]))
    params = [model.invariant[0].weight, model.invariant[-1].weight, model.specific.weights[0], model.towers.weights[0]]
    for form in ("conflict", "cos2"):
        new = torch.autograd.grad(causalint_gradient_penalty(got, form) + got.sum(), params, retain_graph=True)
        old = torch.autograd.grad(causalint_gradient_penalty(want, form) + want.sum(), params, retain_graph=True)
        assert all(o.abs().sum() > 0 for o in old)  # the penalty trains f_inv, f_s and the towers
        assert all(torch.allclose(n, o, atol=1e-7, rtol=1e-4) for n, o in zip(new, old, strict=True))


def test_causalint_gradient_orthogonality_is_differentiable_and_needs_two_scenarios():
    model = build_model("causalint", SPEC, emb_dim=4, grad_penalty="cos2")
    b = batch(16)
    reg = model.gradient_orthogonality(b, model(b), model._last)
    assert reg > 0
    (g,) = torch.autograd.grad(reg, model.invariant[-1].weight)  # differentiable w.r.t. θ itself (create_graph)
    assert g.abs().sum() > 0
    b["scenario"] = torch.zeros_like(b["scenario"])
    assert model.gradient_orthogonality(b, model(b)) == 0  # no reps: recomputed from the batch


def test_causalint_training_step_has_no_host_sync():
    model = build_model("causalint", SPEC, emb_dim=4)
    b = batch(16)
    with no_host_sync():
        logits = model(b)
        loss = logits.sum() + sum(model.extra_losses(b, logits).values())
        loss.backward()


@pytest.mark.parametrize(("j", "t"), [(0, 1), (2, 0)])
def test_causalint_each_row_reads_its_own_scenario_tower(j, t):
    model = build_model("causalint", SPEC, emb_dim=4).eval()
    b = batch(24)
    before = model(b)
    with torch.no_grad():  # +1 on the output bias of Tower_{j,t}
        model.towers.biases[-1].view(SPEC.n_scenarios, len(SPEC.tasks))[j, t] += 1.0
    shift = model(b) - before  # (B, T)
    own = b["scenario"] == j
    assert own.any() and (~own).any()
    assert torch.allclose(shift[own, t], torch.ones(int(own.sum())))
    assert torch.equal(shift[~own], torch.zeros_like(shift[~own])) and torch.equal(shift[:, 1 - t], torch.zeros(24))


@pytest.mark.parametrize("j", range(3))
def test_causalint_scenario_network_is_h_s_for_its_rows_and_a_counterfactual_for_the_rest(j):
    model = build_model("causalint", SPEC, emb_dim=4).eval()
    b = batch(24)
    before = model.representations(b)
    with torch.no_grad():  # shift the output of f_j
        model.specific.biases[-1][j] += 1.0
    after = model.representations(b)
    own = b["scenario"] == j
    assert torch.equal(after.h_inv, before.h_inv)
    assert (after.h_s[own] != before.h_s[own]).any(-1).all() and torch.equal(after.h_s[~own], before.h_s[~own])
    assert (after.h_tr[~own] != before.h_tr[~own]).any(-1).all()  # f_j feeds every other row's TransNet


def test_causalint_transnet_uses_only_counterfactual_scenarios():
    model = build_model("causalint", SPEC, emb_dim=4)
    h_all = torch.randn(4, 3, 64)
    scenario = torch.tensor([0, 1, 2, 1])
    h_s = h_all[torch.arange(4), scenario]
    base = model.transnet(h_all, h_s, scenario)
    own = h_all.clone()
    own[torch.arange(4), scenario] += 10.0  # the factual slot (h_s passed separately stays fixed)
    assert torch.allclose(model.transnet(own, h_s, scenario), base, atol=1e-6)
    other = h_all.clone()
    other[torch.arange(4), (scenario + 1) % 3] += 10.0
    assert not torch.allclose(model.transnet(other, h_s, scenario), base, atol=1e-3)
    one = model.transnet(h_all[:, :1], h_all[:, 0], torch.zeros(4, dtype=torch.long))
    assert torch.equal(one, torch.zeros(4, 64))


def test_causalint_config_errors():
    bad_configs = (
        {"inv_dims": (32,), "spec_dims": (16,)},
        {"orth_form": "x"},
        {"grl_scale": -1.0},
        {"orth_input": "relu"},
        {"grad_penalty": "pcgrad"},
    )
    for bad in bad_configs:
        with pytest.raises(ValueError):
            build_model("causalint", SPEC, **bad)


# ----------------------------------------------------------------------------- DFFM


def _kernels(model, b):
    return [k for k in model.interaction_weights(b) if k is not None]


def test_dffm_interaction_weights_follow_the_scenario_only():
    model = build_model("dffm", SPEC, emb_dim=4)
    b = batch()
    b["scenario"] = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    other = {**b, "scenario": (b["scenario"] + 1) % 3}  # same features, other scenario
    for w, w_other in zip(_kernels(model, b), _kernels(model, other), strict=True):
        assert w.shape[:2] == (8, 10)  # (B, P) with F = 3 sparse + dense + behaviour = 5 fields
        assert (w - w_other).flatten(1).abs().amax(1).min() > 0  # every row's kernel changed
        assert torch.equal(w[0], w[3])  # rows 0..3 differ in features but share the scenario
    e = model.embedding(b)
    u = model.interaction(e, model.domain_embedding(b, e))
    u_other = model.interaction(e, model.domain_embedding(other, e))
    assert not torch.allclose(u, u_other)


def test_dffm_domain_fields_enter_the_domain_embedding():
    model = build_model("dffm", SPEC, emb_dim=4, domain_fields=("item_id",))
    b = batch()
    moved = {**b, "sparse": b["sparse"].clone()}
    moved["sparse"][:, 1] = moved["sparse"][:, 1] % 39 + 1  # other items, same scenarios
    assert not torch.allclose(_kernels(model, b)[0], _kernels(model, moved)[0])
    with pytest.raises(ValueError, match="domain_fields"):
        build_model("dffm", SPEC, domain_fields=("nope",))


@pytest.mark.parametrize("pooling", ["target", "mean"])
def test_dffm_behaviour_attention_ignores_padding(pooling):
    model = build_model("dffm", SPEC, emb_dim=4, dfub_pooling=pooling)
    b = batch()
    b["seq"][:, 3:] = 0  # last two positions padded everywhere
    b["seq"][0] = 0  # row 0 has no behaviour at all
    b["seq"][1:, :3] = b["seq"][1:, :3].clamp(min=1)
    e = model.embedding(b)
    e_d = model.domain_embedding(b, e)
    base = model.behaviour_vector(b, e, e_d)  # (B, k)
    assert torch.equal(base[0], torch.zeros(4)) and torch.isfinite(base).all()

    with torch.no_grad():  # the padding row of the item table: only padded positions read it
        model.embedding.table.weight[model.embedding.seq_offset] += 5.0
    e = model.embedding(b)
    assert torch.allclose(model.behaviour_vector(b, e, e_d), base, atol=1e-6)

    e_h = torch.randn(8, 5, 4)
    mask = b["seq"] > 0
    e_t, out = e[:, 1], model.behaviour(e_h, mask, e[:, 1], e_d)
    noisy = e_h.clone()
    noisy[~mask] = torch.randn(int((~mask).sum()), 4) * 100
    assert torch.allclose(model.behaviour(noisy, mask, e_t, e_d), out, atol=1e-5)
    noisy[:, 0] += 1.0  # a real behaviour
    assert not torch.allclose(model.behaviour(noisy, mask, e_t, e_d)[1:], out[1:], atol=1e-4)


@pytest.mark.parametrize("pooling", ["target", "mean"])
def test_dffm_behaviour_attention_depends_on_target_item_and_scenario(pooling):
    model = build_model("dffm", SPEC, emb_dim=4, dfub_pooling=pooling)
    b = batch()
    b["seq"] = b["seq"].clamp(min=1)
    e = model.embedding(b)
    e_d = model.domain_embedding(b, e)
    base = model.behaviour_vector(b, e, e_d)
    other_item = {**b, "sparse": b["sparse"].clone()}
    other_item["sparse"][:, 1] = other_item["sparse"][:, 1] % 39 + 1  # same history, other target
    e2 = model.embedding(other_item)
    changed = model.behaviour_vector(other_item, e2, model.domain_embedding(other_item, e2))
    assert (changed - base).abs().amax(1).min() > 0
    other_scenario = {**b, "scenario": (b["scenario"] + 1) % 3}
    changed = model.behaviour_vector(other_scenario, e, model.domain_embedding(other_scenario, e))
    assert (changed - base).abs().amax(1).min() > 0


def test_dffm_config_errors_and_pair_list():
    for bad in ({"dffi_rank": 0, "dffi_diagonal": False}, {"dfub_pooling": "max"}, {"dffi_pairs": ((0, 0),)}):
        with pytest.raises(ValueError):
            build_model("dffm", SPEC, **bad)
    model = build_model("dffm", SPEC, emb_dim=4, dffi_pairs=((0, 1), (1, 4)), dffi_rank=0)
    assert model.interaction.out_dim == 2 * 4 and model(batch()).shape == (8, 2)


def test_dffm_without_sequence():
    spec = FeatureSpec(**{**SPEC.to_dict(), "seq_field": None})
    model = build_model("dffm", spec, emb_dim=4)
    assert model.behaviour is None and model(batch()).shape == (8, 2)
