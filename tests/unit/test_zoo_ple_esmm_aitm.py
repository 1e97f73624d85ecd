"""Mechanisms of the PLE, ESMM and AITM baselines, each checked so that a wrong wiring fails."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny import SPEC

from training.data import FeatureSpec, synthetic
from training.models import build_model
from training.models.esmm import esmm_ctcvr_logit
from training.trainer import masked_bce

CLICK, CONV = 0, 1


def batch(n: int = 8) -> dict[str, torch.Tensor]:
    return next(synthetic(SPEC, n, seed=3).batches(n, shuffle=False))


def grads(loss: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True))


def is_zero(gs: list[torch.Tensor | None]) -> bool:
    return all(g is None or torch.count_nonzero(g) == 0 for g in gs)


# ----------------------------------------------------------------------------- PLE


def ple(n_levels: int):
    return build_model(
        "ple", SPEC, emb_dim=4, n_levels=n_levels, n_specific_experts=2, n_shared_experts=3, expert_dims=(8,)
    ).eval()


def set_experts(level, index: list[int], value: float) -> None:
    """Make the given experts of a level output the constant `value` (> 0 survives the ReLU, 0 = off)."""
    with torch.no_grad():
        for w in level.experts.weights:
            w[index] = 0.0
        for b in level.experts.biases:
            b[index] = value


def expert_ids(level, task: int | None) -> list[int]:
    """Indices of one task's specific experts, or (task=None) of the shared ones."""
    m_t, T = level.m_t, level.n_tasks
    return list(range(task * m_t, (task + 1) * m_t)) if task is not None else list(range(T * m_t, level.n_experts))


@pytest.mark.parametrize("n_levels", [1, 2])
def test_ple_task_output_ignores_other_tasks_experts_at_the_last_level(n_levels):
    model, b = ple(n_levels), batch()
    before = model(b)
    set_experts(model.levels[-1], expert_ids(model.levels[-1], CONV), 0.0)  # conversion's own experts off
    after = model(b)
    assert torch.equal(after[:, CLICK], before[:, CLICK])  # click's gate never selects them
    assert not torch.allclose(after[:, CONV], before[:, CONV])  # conversion's gate does


def test_ple_shared_gate_of_a_non_final_level_mixes_every_expert():
    model, b = ple(2), batch()
    first = model.levels[0]
    x = model.embedding.flat(b)
    out_before, logits_before = first(x), model(b)
    set_experts(first, expert_ids(first, CONV), 0.0)
    out_after, logits_after = first(x), model(b)
    assert torch.equal(out_after[:, CLICK], out_before[:, CLICK])  # click's task gate: own + shared only
    assert not torch.allclose(out_after[:, -1], out_before[:, -1])  # the shared gate reads conversion's experts
    assert not torch.allclose(logits_after[:, CLICK], logits_before[:, CLICK])  # … and feeds click at level 2
    assert model.levels[-1].shared_gate is None and first.shared_gate is not None


def test_ple_task_gate_is_a_convex_combination_of_own_and_shared_experts():
    model, b = ple(1), batch()
    level = model.levels[0]
    x = model.embedding.flat(b)
    set_experts(level, expert_ids(level, CLICK) + expert_ids(level, None), 0.7)  # click's selection: all 0.7
    set_experts(level, expert_ids(level, CONV), 5.0)  # outside click's selection
    out = level(x)  # (B, T+1, D)
    assert torch.allclose(out[:, CLICK], torch.full_like(out[:, CLICK], 0.7), atol=1e-6)  # weights sum to 1
    assert (out[:, CONV] > 0.7 + 1e-3).all() and (out[:, CONV] < 5.0).all()  # conversion mixes 0.7 and 5
    task_gates, shared_gate = level.gates(x.unsqueeze(1).expand(-1, 3, -1))
    assert task_gates.shape == (8, 2, 2 + 3) and shared_gate is None  # m_t + m_s per task; CGC has no shared gate
    assert (task_gates >= 0).all() and torch.allclose(task_gates.sum(-1), torch.ones(8, 2))


def test_ple_bad_config():
    with pytest.raises(ValueError, match="n_levels"):
        build_model("ple", SPEC, n_levels=0)
    with pytest.raises(ValueError, match="at least one"):
        build_model("ple", SPEC, n_specific_experts=0, n_shared_experts=0)


# ---------------------------------------------------------------------------- ESMM


def esmm():
    return build_model("esmm", SPEC, emb_dim=4, tower_dims=(8, 4)).double()


def double_batch(n: int = 8) -> dict[str, torch.Tensor]:
    return {k: v.double() if v.is_floating_point() else v for k, v in batch(n).items()}


def test_esmm_conversion_output_is_ctr_times_cvr():
    model, b = esmm(), double_batch()
    logits = model(b)
    p_ctr, p_ctcvr, p_cvr = logits[:, CLICK].sigmoid(), logits[:, CONV].sigmoid(), model.cvr(b)
    assert p_cvr.shape == (8,) and ((p_cvr > 0) & (p_cvr < 1)).all()
    assert torch.allclose(p_ctcvr, p_ctr * p_cvr, rtol=1e-12, atol=0)
    assert (p_ctcvr < p_ctr).all()  # conversion ⊂ click on the impression space


def test_esmm_ctcvr_logit_is_exact_and_stable_in_the_tails():
    a, b = torch.meshgrid(
        torch.linspace(-12, 12, 9, dtype=torch.float64), torch.linspace(-12, 12, 9, dtype=torch.float64), indexing="ij"
    )
    assert torch.allclose(esmm_ctcvr_logit(a, b), torch.logit(a.sigmoid() * b.sigmoid()), rtol=1e-9)
    a = torch.tensor([200.0, 200.0, -200.0, 30.0, 0.0], requires_grad=True)
    b = torch.tensor([200.0, -200.0, -200.0, 300.0, 300.0], requires_grad=True)
    z = esmm_ctcvr_logit(a, b)  # float32: the naive logit(σ(a)σ(b)) is ±inf / nan here
    expected = torch.tensor([200.0 - 0.6931, -200.0, -400.0, 30.0, 0.0])  # −logsumexp(−a, −b, −a−b) by hand
    assert torch.allclose(z, expected, atol=1e-3)
    loss = F.binary_cross_entropy_with_logits(z, torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()


def test_esmm_cvr_tower_learns_only_through_the_product():
    model, b = esmm(), double_batch()
    logits = model(b)
    labels, mask = b["labels"], b["label_mask"]
    ctr_loss = F.binary_cross_entropy_with_logits(logits[:, CLICK], labels[:, CLICK])
    ctcvr_loss = F.binary_cross_entropy_with_logits(logits[:, CONV], labels[:, CONV])
    params = [*model.towers.weights, *model.towers.biases]  # network 0 = CTR tower, 1 = CVR tower
    from_ctr, from_ctcvr = grads(ctr_loss, params), grads(ctcvr_loss, params)
    assert is_zero([g[1] for g in from_ctr])  # the click loss never reaches the CVR tower
    assert not is_zero([g[0] for g in from_ctr])
    assert not is_zero([g[1] for g in from_ctcvr])  # the CTCVR loss does, through pCTR·pCVR
    assert not is_zero([g[0] for g in from_ctcvr])  # … and also teaches the CTR tower
    total, _ = masked_bce(logits, labels, mask)  # what the trainer optimises
    assert model.extra_losses(b, logits) == {}  # no direct CVR loss anywhere
    for g_total, g_ctcvr in zip(grads(total, params), from_ctcvr, strict=True):
        assert torch.allclose(g_total[1], g_ctcvr[1], rtol=1e-10, atol=1e-14)


def test_esmm_needs_two_tasks():
    spec = FeatureSpec(SPEC.sparse_fields, SPEC.vocab_sizes, SPEC.dense_fields, tasks=("click", "cart", "buy"))
    with pytest.raises(ValueError, match="2 tasks"):
        build_model("esmm", spec)


# ---------------------------------------------------------------------------- AITM


def aitm(**overrides):
    return build_model("aitm", SPEC, emb_dim=4, tower_dims=(8, 4), **overrides)


def test_aitm_calibrator_is_zero_iff_conversion_never_exceeds_click():
    model, b = aitm(), batch(4)
    ordered = torch.tensor([[2.0, -1.0], [0.0, 0.0], [-3.0, -5.0], [1.0, 0.5]])  # p_conv <= p_click everywhere
    assert model.extra_losses(b, ordered)["calibrator"] == 0.0
    violated = torch.tensor([[2.0, -1.0], [0.0, 1.0], [-3.0, -5.0], [-1.0, 2.0]], requires_grad=True)
    loss = model.extra_losses(b, violated)["calibrator"]
    p = violated.detach().sigmoid()
    assert loss > 0 and torch.isclose(loss, 0.6 * ((p[:, 1] - p[:, 0]).clamp(min=0)).mean())
    (g,) = torch.autograd.grad(loss, violated)
    assert is_zero([g[[0, 2]]]) and (g[[1, 3], CONV] > 0).all() and (g[[1, 3], CLICK] < 0).all()
    assert aitm(calibrator_weight=0.0).extra_losses(b, violated) == {}
    with pytest.raises(ValueError, match="calibrator_weight"):
        aitm(calibrator_weight=-1.0)


def test_aitm_information_flows_click_to_conversion_only():
    model, b = aitm(), batch()
    logits = model(b)
    click_loss = F.binary_cross_entropy_with_logits(logits[:, CLICK], b["labels"][:, CLICK])
    conv_loss = F.binary_cross_entropy_with_logits(logits[:, CONV], b["labels"][:, CONV])
    tower = [*model.towers.weights, *model.towers.biases]  # network 0 = click, 1 = conversion
    head = [*model.heads.weights, *model.heads.biases]
    transfer_and_ait = [*model.transfers.parameters(), *model.ait.parameters()]
    from_click, from_conv = grads(click_loss, tower + head + transfer_and_ait), grads(conv_loss, tower + head)
    n_tower = len(tower)
    # the click loss reaches nothing private to the conversion step
    assert is_zero([g[CONV] for g in from_click[: n_tower + len(head)]])
    assert is_zero(from_click[n_tower + len(head) :])
    # the conversion loss reaches the click tower through the transfer, but not the click head
    assert not is_zero([g[CLICK] for g in from_conv[:n_tower]])
    assert is_zero([g[CLICK] for g in from_conv[n_tower:]])
    assert not is_zero([g[CONV] for g in from_conv[:n_tower]])


def test_aitm_ait_unit_is_attention_over_transfer_and_own_representation():
    model = aitm()
    ait = model.ait[0]
    D = ait.dim
    with torch.no_grad():
        ait.qkv.weight[2 * D :] = torch.eye(D)  # h3 = identity, so z_t is a convex mix of p and q
    p, q = torch.randn(8, D), torch.randn(8, D)
    w, values = ait.weights_and_values(p, q)
    assert w.shape == (8, 2) and (w > 0).all() and torch.allclose(w.sum(1), torch.ones(8))
    assert torch.allclose(values, torch.stack([p, q], dim=1))  # ait_bias=False: h3(u) = u
    z = ait(p, q)
    assert torch.allclose(z, w[:, :1] * p + w[:, 1:] * q, atol=1e-6)
    low, high = torch.minimum(p, q), torch.maximum(p, q)
    assert ((z >= low - 1e-6) & (z <= high + 1e-6)).all()
    assert torch.allclose(ait(q, q), q, atol=1e-6)  # equal inputs: the mix is that input
    # the paper's score of each vector u is <h1(u), h2(u)> / sqrt(D): u against itself, not p against q
    h1, h2 = ait.qkv.weight[:D], ait.qkv.weight[D : 2 * D]
    scores = torch.stack([((u @ h1.T) * (u @ h2.T)).sum(-1) for u in (p, q)], dim=1) / D**0.5  # (B, 2)
    assert torch.allclose(w, scores.softmax(dim=1), atol=1e-6)
