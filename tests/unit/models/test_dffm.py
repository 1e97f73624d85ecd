"""DFFM: scenario-driven interaction kernels, domain fields, behaviour attention blind to padding, target-aware."""

from __future__ import annotations

import pytest
import torch
from tiny import SPEC
from tiny import tiny_batch as batch

from training.data import FeatureSpec
from training.models import build_model


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


@pytest.mark.parametrize(("rank", "diagonal"), [(4, True), (0, True), (2, False)])
def test_dffm_interaction_is_e_i_times_the_domain_kernel_times_e_j(rank, diagonal):
    """u_ij = (e_i W_ij) ⊙ e_j with W_ij = diag(d_ij) + U_ij V_ijᵀ built as a k×k matrix, for every pair i < j
    in order; (e_j W_ij) ⊙ e_i, a transposed kernel or another pair order would differ."""
    torch.manual_seed(0)
    model = build_model("dffm", SPEC, emb_dim=4, dffi_rank=rank, dffi_diagonal=diagonal).eval()
    with torch.no_grad():  # unit-scale embeddings (0.01 at init would put every u_ij below the tolerance)
        model.embedding.table.weight.normal_()
        model.domain.weight.normal_()
    b = batch()
    e = model.embedding(b)  # (B, F, k)
    e_d = model.domain_embedding(b, e)  # (B, k)
    diag, u, v = model.interaction.kernels(e_d)
    B, F, k = e.shape
    W = torch.zeros(B, F * (F - 1) // 2, k, k)  # (B, P, k, k)
    if diag is not None:
        W = W + torch.diag_embed(diag)
    if u is not None:
        W = W + u @ v.transpose(-1, -2)
    pairs = [(i, j) for i in range(F) for j in range(i + 1, F)]
    want = torch.stack([(e[:, i].unsqueeze(1) @ W[:, p]).squeeze(1) * e[:, j] for p, (i, j) in enumerate(pairs)], 1)
    got = model.interaction(e, e_d).view(B, len(pairs), k)  # (B, P, k)
    assert torch.allclose(got, want, atol=1e-5) and got.abs().mean() > 0.01
    if rank:  # a full (non-symmetric) kernel: the roles of e_i and e_j are not interchangeable
        swapped = torch.stack(
            [(e[:, j].unsqueeze(1) @ W[:, p]).squeeze(1) * e[:, i] for p, (i, j) in enumerate(pairs)], 1
        )
        assert not torch.allclose(got, swapped, atol=1e-3)
