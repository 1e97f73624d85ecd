"""TAML: the probability ensemble, a distillation target without gradient, the masked learner BCE, ESMM product."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny import SPEC
from tiny import tiny_batch as batch

from training.data import FeatureSpec
from training.models import build_model
from training.models.taml import taml_distillation, taml_ensemble


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


def test_taml_each_learner_mixes_the_shared_its_tasks_and_its_own_experts():
    """z_{t,l} = tower_{t,l}(Σ_g softmax(W_{t,l} x)_g · [E^sh; E^t; E^{t,l}]_g(x)), computed by hand per (t, l)
    with counts that tell the layouts apart (n_t = n_l = 2, M = 3): a learner must not read another task's
    or another learner's experts."""
    torch.manual_seed(0)
    model = build_model("taml", SPEC, emb_dim=4, n_task_experts=2, n_learner_experts=2, tower_dims=(8,)).eval()
    with torch.no_grad():  # unit-scale embeddings: at the 0.01 init every gate is ≈ uniform and hides a mix-up
        model.embedding.table.weight.normal_()
    b = batch()
    x = model.embedding.flat(b)  # (B, F*k)
    ex = model.extractor
    shared, task, learner = ex.shared(x), ex.task(x), ex.learner(x)  # (B, 2, D), (B, T*2, D), (B, T*M*2, D)
    gates = model.gates.linear(x).view(len(x), 2, 3, 6).softmax(-1)  # (B, T, M, G = 2 + 2 + 2)
    z = model.learner_logits(b)  # (B, T, M)
    for t in range(2):
        for m in range(3):
            pool = torch.cat([shared, task[:, 2 * t : 2 * t + 2], learner[:, 2 * (3 * t + m) : 2 * (3 * t + m) + 2]], 1)
            h = torch.einsum("bg,bgd->bd", gates[:, t, m], pool)  # (B, D)
            n = 3 * t + m  # tower of learner (t, m)
            w0, w1 = model.towers.weights[0][n], model.towers.weights[1][n]
            b0, b1 = model.towers.biases[0][n], model.towers.biases[1][n]
            want = torch.relu(h @ w0 + b0) @ w1 + b1  # (B, 1)
            assert torch.allclose(z[:, t, m], want.squeeze(-1), atol=1e-5), (t, m)
    assert gates.std(-1).min() > 0.02  # no gate is uniform (1/6 each): the check has power


def test_taml_learner_experts_reach_only_their_learner_and_task_experts_only_their_task():
    torch.manual_seed(0)
    model = build_model("taml", SPEC, emb_dim=4, n_learners=3).eval()
    b = batch()
    before = model.learner_logits(b)  # (B, T, M)
    with torch.no_grad():  # shift the output of learner (t=1, l=2)'s own expert
        model.extractor.learner.biases[-1][1 * 3 + 2] += 1.0
    moved = (model.learner_logits(b) - before).abs().amax(0) > 1e-6  # (T, M)
    assert moved.tolist() == [[False, False, False], [False, False, True]]
    before = model.learner_logits(b)
    with torch.no_grad():  # shift task 0's first expert
        model.extractor.task.biases[-1][0] += 1.0
    moved = (model.learner_logits(b) - before).abs().amax(0) > 1e-6
    assert moved.tolist() == [[True, True, True], [False, False, False]]
    before = model.learner_logits(b)
    with torch.no_grad():  # a shared expert feeds every learner
        model.extractor.shared.biases[-1][1] += 1.0
    assert ((model.learner_logits(b) - before).abs().amax(0) > 1e-6).all()
