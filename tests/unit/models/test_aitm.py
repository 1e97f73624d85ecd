"""AITM mechanisms: the calibrator loss, click → conversion information flow only, the AIT unit's self-attention."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny import CLICK, CONV, SPEC, grads, is_zero
from tiny import multitask_batch as batch

from training.models import build_model


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
