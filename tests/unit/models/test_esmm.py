"""ESMM mechanisms: pCTCVR = pCTR·pCVR, an exact and stable CTCVR logit, a CVR tower taught only through the product."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny import CLICK, CONV, SPEC, grads, is_zero
from tiny import multitask_batch as batch

from training.data import FeatureSpec
from training.models import build_model
from training.models.esmm import esmm_ctcvr_logit
from training.trainer import masked_bce


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
