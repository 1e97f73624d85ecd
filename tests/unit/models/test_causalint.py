"""CausalInt: the adversary (confusion or reversal), orthogonality and gradient-conflict penalties, own towers,
counterfactual TransNet."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny import SPEC, no_host_sync
from tiny import tiny_batch as batch

from training.models import build_model
from training.models.causalint import causalint_gradient_penalty, causalint_orthogonality

CAUSALINT_LOSSES_OFF = {"adv_weight": 0.0, "cls_weight": 0.0, "orth_weight": 0.0, "grad_orth_weight": 0.0}


@pytest.mark.parametrize("scale", [0.1, 0.3])
def test_causalint_adversary_reverses_the_gradient(scale):
    """Gradient into h_inv through the GRL = −λ × the gradient of the same loss without it."""
    model = build_model("causalint", SPEC, emb_dim=4, grl_scale=scale, adversary="reversal")
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
    cfg = {**CAUSALINT_LOSSES_OFF, "grl_scale": 0.1, "adv_weight": 2.0, "adversary": "reversal"}
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


def test_causalint_confusion_trains_the_classifier_on_the_scenario_and_the_encoder_towards_uniform():
    """Default adversary: C's gradient is that of its plain scenario CE (h_inv detached); f_inv's is
    λ·λ_adv × that of CE(uniform, C(h_inv)) through a frozen C; the loss is bounded below by λ·λ_adv·log S."""
    cfg = {**CAUSALINT_LOSSES_OFF, "grl_scale": 0.3, "adv_weight": 2.0}
    model = build_model("causalint", SPEC, emb_dim=4, **cfg)
    b = batch(16)
    losses = model.extra_losses(b, model(b))
    encoder, classifier = list(model.invariant.parameters()), list(model.adversary.classifier.parameters())
    got_encoder = torch.autograd.grad(losses["adversarial"], encoder, retain_graph=True)
    got_classifier = torch.autograd.grad(losses["adversarial"], classifier)

    h_inv = F.relu(model.invariant(model.embedding.flat(b)))  # (B, D)
    scenario_ce = F.cross_entropy(model.adversary.classifier(h_inv), b["scenario"])
    uniform_ce = -model.adversary.classifier(h_inv).log_softmax(-1).mean()
    ref_classifier = torch.autograd.grad(2.0 * scenario_ce, classifier)
    ref_encoder = torch.autograd.grad(2.0 * 0.3 * uniform_ce, encoder)
    assert any(r.abs().sum() > 0 for r in ref_encoder)
    for g, r in zip((*got_encoder, *got_classifier), (*ref_encoder, *ref_classifier), strict=True):
        assert torch.allclose(g, r, atol=1e-6)
    n_scenarios = SPEC.n_scenarios
    assert float(losses["adversarial"]) >= 2.0 * 0.3 * torch.log(torch.tensor(float(n_scenarios)))


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


def test_causalint_runs_only_the_rows_own_towers_with_the_values_of_all_towers():
    model = build_model("causalint", SPEC, emb_dim=4).eval()
    b = batch(24)
    reps = model.representations(b)
    every = model.towers(torch.cat([reps.h_inv, reps.h_s, reps.h_tr], dim=-1)).squeeze(-1)  # (B, S*T): all towers
    own = every.view(24, SPEC.n_scenarios, len(SPEC.tasks))[torch.arange(24), b["scenario"]]  # (B, T)
    assert torch.allclose(model.tower_logits(reps, b["scenario"]), own, atol=1e-6)
    with no_host_sync():
        model.train()(b).sum().backward()


@pytest.mark.parametrize("norm", ["layer", "batch"])
def test_causalint_normed_towers_give_each_row_its_own_towers_values(norm):
    """With a norm in the towers (random affines, so a wrong per-tower gather shows), each row still gets
    the values of its own scenario's towers among all S·T run on the whole batch."""
    torch.manual_seed(0)
    model = build_model("causalint", SPEC, emb_dim=4, norm=norm).train()
    with torch.no_grad():
        for name, p in model.towers.named_parameters():
            if name.startswith("norms."):
                p.normal_()
    b = batch(24)
    reps = model.representations(b)
    every = model.towers(torch.cat([reps.h_inv, reps.h_s, reps.h_tr], dim=-1)).squeeze(-1)  # (B, S*T)
    own = every.view(24, SPEC.n_scenarios, len(SPEC.tasks))[torch.arange(24), b["scenario"]]  # (B, T)
    assert torch.allclose(model.tower_logits(reps, b["scenario"]), own, atol=1e-5)


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
        {"adversary": "maximise"},
        {"orth_input": "relu"},
        {"grad_penalty": "pcgrad"},
    )
    for bad in bad_configs:
        with pytest.raises(ValueError):
            build_model("causalint", SPEC, **bad)
