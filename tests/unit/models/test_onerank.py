"""OneRank mechanisms: structured mask, request isolation and mixing, padding, detachment, listwise loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from training.data import FeatureSpec, synthetic
from training.models import build_model
from training.models import onerank as onerank_module
from training.models.onerank import Onerank, OnerankConfig, interaction_mask, request_layout

SPEC = FeatureSpec(
    sparse_fields=["user_id", "item_id", "scenario_id", "hour", "item_category"],
    vocab_sizes=[30, 40, 4, 25, 9],
    dense_fields=["u_ctr", "i_ctr"],
    seq_len=5,
    n_scenarios=3,
    tasks=("click", "conversion"),
)
SMALL = {"emb_dim": 4, "d_model": 16, "n_heads": 2, "n_anchors": 2}
ATOL = 1e-5  # float reassociation only; a leak moves logits by orders of magnitude more


def model_with(seed: int = 0, **overrides) -> Onerank:
    torch.manual_seed(seed)
    return build_model("onerank", SPEC, **{**SMALL, **overrides}).eval()


def rows(n: int, groups: list[int], seed: int = 3) -> dict[str, torch.Tensor]:
    """n rows of one user context per request (as logged data has), with the given group ids."""
    batch = next(synthetic(SPEC, n, seed=seed).batches(n, shuffle=False))
    batch["group"] = torch.tensor(groups)
    for g in set(groups):  # rows of a request share user, scenario, hour and history
        idx = (batch["group"] == g).nonzero().squeeze(1)
        for name in ("user_id", "scenario_id", "hour"):
            col = SPEC.sparse_fields.index(name)
            batch["sparse"][idx, col] = batch["sparse"][idx[0], col].clone()
        batch["seq"][idx] = batch["seq"][idx[0]].clone()
        batch["scenario"][idx] = batch["scenario"][idx[0]].clone()
    return batch


def take(batch: dict[str, torch.Tensor], index: list[int]) -> dict[str, torch.Tensor]:
    return {k: v[torch.tensor(index)] for k, v in batch.items()}


def perturb(batch: dict[str, torch.Tensor], index: list[int], everything: bool = True) -> dict[str, torch.Tensor]:
    """New ids / values on the given rows: candidate fields only, or everything (context included)."""
    out = {k: v.clone() for k, v in batch.items()}
    idx = torch.tensor(index)
    cols = range(len(SPEC.sparse_fields)) if everything else [1, 4]  # item_id, item_category
    for c in cols:  # rotate the ids 1..v-1 by one: every id changes, none becomes padding
        out["sparse"][idx, c] = out["sparse"][idx, c] % (SPEC.vocab_sizes[c] - 1) + 1
    out["dense"][idx] += 1.5
    if everything:
        out["seq"][idx] = (out["seq"][idx] + 7) % SPEC.vocab("item_id")
    return out


# --------------------------------------------------------------------------- request layout


def test_request_layout_groups_interleaved_rows_and_pads():
    req, pos, first, n_req, n_cand = request_layout(torch.tensor([7, 3, 7, 9, 3, 7]), 6, torch.device("cpu"))
    assert (n_req, n_cand) == (3, 3)
    assert req.tolist() == [1, 0, 1, 2, 0, 1] and pos.tolist() == [0, 0, 1, 0, 1, 2]
    assert first.tolist() == [1, 0, 3]  # lowest row index of each request
    req, pos, _, n_req, n_cand = request_layout(torch.tensor([-1, 4, -1, 4]), 4, torch.device("cpu"))
    assert (n_req, n_cand) == (3, 2) and len(set(req[[0, 2]].tolist())) == 2  # unknown request: alone
    req, pos, first, n_req, n_cand = request_layout(None, 4, torch.device("cpu"))
    assert (n_req, n_cand) == (4, 1) and req.tolist() == [0, 1, 2, 3] and pos.tolist() == [0] * 4
    with pytest.raises(ValueError, match="group"):
        request_layout(torch.zeros(3, dtype=torch.long), 4, torch.device("cpu"))


def test_batching_is_by_request():
    assert Onerank.batching == "request" and model_with().batching == "request"


# --------------------------------------------------------------------------- structured attention mask


@pytest.mark.parametrize("add_candidate", [False, True])
def test_task_tokens_see_context_and_own_candidate_only(add_candidate):
    model = model_with(task_token_add_candidate=add_candidate)
    encoder = model.encoder
    n_rows, n_ctx, d = 3, 6, 16
    ctx = torch.randn(2, n_ctx, d, requires_grad=True)
    ctx_valid = torch.ones(2, n_ctx, dtype=torch.bool)
    cand = torch.randn(n_rows, d, requires_grad=True)
    req = torch.tensor([0, 0, 1])  # rows 0 and 1 are sibling candidates

    def grads(output: torch.Tensor, *inputs: torch.Tensor) -> list[torch.Tensor]:
        got = torch.autograd.grad(output, inputs, allow_unused=True, retain_graph=True)
        return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, got, strict=True)]

    probe = torch.randn(d)  # r is layer-normed: a plain sum would have zero gradient everywhere
    ctx_out, r = encoder(ctx, ctx_valid, cand, req)  # (R, C, d), (B, K, d)
    for k in range(2):
        g_templates, g_cand, g_ctx = grads(r[0, k] @ probe, encoder.templates, cand, ctx)
        assert g_templates[k].abs().sum() > 0 and g_templates[1 - k].abs().sum() == 0  # task tokens blind to each other
        assert g_cand[0].abs().sum() > 0 and g_cand[1:].abs().sum() == 0  # own candidate only, not the sibling
        assert g_ctx[0].abs().sum() > 0 and g_ctx[1].abs().sum() == 0  # own request's context only
    g_cand, g_templates = grads((ctx_out @ probe).sum(), cand, encoder.templates)
    assert g_cand.abs().sum() == 0 and g_templates.abs().sum() == 0  # the context never reads the groups
    g_ctx = grads((ctx_out[:, 2] @ probe).sum(), ctx)[0]
    assert g_ctx[:, :3].abs().sum() > 0 and g_ctx[:, 3:].abs().sum() == 0  # causal within the context

    encoder.group_mask.fill_(True)  # the same checks catch a mask that lets task tokens meet
    _, r = encoder(ctx, ctx_valid, cand, req)
    assert grads(r[0, 0] @ probe, encoder.templates)[0][1].abs().sum() > 0


def test_context_padding_is_never_read():
    model = model_with()
    batch = rows(3, [0, 0, 0])
    batch["seq"][:, 3:] = 0  # the last two history slots are padding
    base = model(batch)
    with torch.no_grad():  # change what padding embeds to: nothing may move
        model.embedding.table.weight[model.embedding.seq_offset] += 3.0
    assert torch.allclose(model(batch), base, atol=ATOL)


# --------------------------------------------------------------------------- requests: isolation, mixing, padding


def test_candidates_never_attend_to_another_request():
    model = model_with()
    batch = rows(8, [0, 0, 0, 1, 1, 1, 2, 2])
    base = model(batch)
    changed = model(perturb(batch, [3, 4, 5]))  # request 1 (context and candidates)
    others = [0, 1, 2, 6, 7]
    assert torch.allclose(changed[others], base[others], atol=ATOL)
    assert (changed[3:6] - base[3:6]).abs().max() > 1e-3


@pytest.mark.parametrize("n_anchors", [0, 2])
def test_siblings_mix_in_setwise_mode_only(n_anchors):
    batch = rows(4, [0, 0, 0, 1])
    sibling_changed = perturb(batch, [1], everything=False)
    setwise = model_with(n_anchors=n_anchors)
    assert (setwise(sibling_changed)[0] - setwise(batch)[0]).abs().max() > 1e-4  # candidate-aware
    pointwise = model_with(n_anchors=n_anchors, setwise=False)
    assert torch.allclose(pointwise(sibling_changed)[0], pointwise(batch)[0], atol=ATOL)
    no_group = {k: v for k, v in batch.items() if k != "group"}
    assert torch.allclose(setwise(no_group), pointwise(batch), atol=ATOL)  # no "group": pointwise too
    alone = torch.cat([pointwise(take(batch, [i])) for i in range(4)])
    assert torch.allclose(alone, pointwise(batch), atol=ATOL)  # pointwise: a row's score is its own


def test_padding_never_changes_results():
    model = model_with()
    batch = rows(7, [5, 5, 9, 9, 9, 9, 9])
    alone = model(take(batch, [0, 1]))  # N = 2, no padding
    mixed = model(take(batch, [2, 0, 3, 4, 1, 5, 6]))  # padded to N = 5, rows interleaved
    assert torch.allclose(mixed[[1, 4]], alone, atol=ATOL)
    longer = model(take(batch, [2, 3, 4, 5, 6]))
    assert torch.allclose(mixed[[0, 2, 3, 5, 6]], longer, atol=ATOL)  # row order inside a batch is irrelevant


# --------------------------------------------------------------------------- controlled cross-task interaction


def task_loss(model: Onerank, batch: dict[str, torch.Tensor], k: int) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(model(batch)[:, k], batch["labels"][:, k])


@pytest.mark.parametrize("interaction", ["null", "cascade"])
def test_task_loss_never_updates_another_tasks_private_path(interaction):
    batch = rows(6, [0, 0, 0, 1, 1, 1])
    model = model_with(interaction=interaction).train()
    private = model.task_private_parameters()
    readers = {"null": [0, 1], "cascade": [1]}[interaction]  # tasks whose query reads another task
    for k in range(2):
        grads = torch.autograd.grad(task_loss(model, batch, k), list(private.values()), allow_unused=True)
        for name, g in zip(private, grads, strict=True):
            assert g is None or g[1 - k].abs().sum() == 0, f"task {k}'s loss reached task {1 - k}'s {name}"
        own = dict(zip(private, grads, strict=True))
        for name in ("templates", "w_situation", "w_key", "w_value", "w_out"):
            assert own[name][k].abs().sum() > 0, f"task {k}'s loss did not reach its own {name}"
    leaky = model_with(interaction=interaction, detach_cross_task=False)
    assert torch.allclose(leaky(batch), model.eval()(batch), atol=1e-6)  # detachment changes no value
    for k in readers:  # without detachment the same check fails: task k's loss reaches task j's path
        grads = torch.autograd.grad(task_loss(leaky, batch, k), [leaky.encoder.templates, leaky.cross.w_value])
        assert all(g[1 - k].abs().sum() > 0 for g in grads)


@pytest.mark.parametrize(
    ("interaction", "hybrid", "reads"),
    [
        ("parallel", (), {0: False, 1: False}),
        ("null", (), {0: True, 1: True}),
        ("cascade", (), {0: False, 1: True}),  # click first: conversion reads click
        ("hybrid", ((1, 1), (0, 1)), {0: True, 1: False}),
    ],
)
def test_interaction_mask_decides_which_task_reads_which(interaction, hybrid, reads):
    model = model_with(interaction=interaction, hybrid_mask=hybrid)
    batch = rows(4, [0, 0, 1, 1])
    base = model(batch)
    for k in range(2):
        step = 0.5 * torch.randn(model.cross.w_out.shape[1:], generator=torch.Generator().manual_seed(k))
        with torch.no_grad():
            model.cross.w_out[1 - k] += step  # another task's private path (not task k's own channel)
        moved = (model(batch)[:, k] - base[:, k]).abs().max() > 1e-4
        with torch.no_grad():
            model.cross.w_out[1 - k] -= step
        assert moved == reads[k], f"task {k} reading task {1 - k}: {bool(moved)}"


def test_interaction_masks():
    assert interaction_mask("parallel", 3).equal(torch.eye(3, dtype=torch.bool))
    assert interaction_mask("null", 3).all()
    assert interaction_mask("cascade", 3).equal(torch.ones(3, 3, dtype=torch.bool).tril())
    with pytest.raises(ValueError, match="diagonal"):
        interaction_mask("hybrid", 2, ((0, 1), (1, 1)))


# --------------------------------------------------------------------------- matching score and listwise loss


def test_logits_are_the_matching_score_of_the_rows_own_request():
    """logit_k^i = cos(z_k of the row's request, r_k^i) / τ + b_k, with z the task interaction's output and r the
    encoder's task representations (raw dot product when normalize_scores=False)."""
    batch = rows(7, [4, 4, 9, 9, 9, 2, 4])
    req, _, _, n_req, _ = request_layout(batch["group"], 7, torch.device("cpu"))
    for normalize in (True, False):
        model = model_with(tau=0.5, normalize_scores=normalize)
        seen = {}
        model.encoder.register_forward_hook(lambda _m, _a, out, seen=seen: seen.update(r=out[1]))  # (B, K, d)
        model.interaction.register_forward_hook(lambda _m, _a, out, seen=seen: seen.update(z=out))  # (R, K, d)
        logits = model(batch)

        def score(z: torch.Tensor, r: torch.Tensor, bias: torch.Tensor, normalize: bool) -> torch.Tensor:
            if normalize:
                z, r = F.normalize(z, dim=-1), F.normalize(r, dim=-1)
            return (z * r).sum(-1) / 0.5 + bias  # (B, K)

        assert torch.allclose(logits, score(seen["z"][req], seen["r"], model.score_bias, normalize), atol=1e-5)
        other = score(seen["z"][(req + 1) % n_req], seen["r"], model.score_bias, normalize)  # another request's z
        assert ((logits - other).abs() > 1e-3).any(-1).all()


def test_score_bias_starts_at_the_base_rate():
    """b_k = logit(p_k) at init, so the initial mean probability sits near the base rate (within the cosine
    term's seed-dependent offset), where a zero bias starts near 0.5 whatever the rate."""
    data = synthetic(SPEC, 200, seed=0, rows_per_request=8)
    batch = next(data.batches(200, shuffle=False))
    prior = torch.tensor([0.05, 0.005])
    assert OnerankConfig().score_prior == (0.05, 0.005)
    for seed in range(3):
        model = model_with(seed, d_model=128, n_heads=8)  # the default width
        assert torch.allclose(model.score_bias, torch.logit(prior))
        with torch.no_grad():
            p = torch.sigmoid(model(batch)).mean(0)  # (K,) initial mean probability
        assert ((torch.logit(p) - torch.logit(prior)).abs() < 2.0).all(), p
        zero = model_with(seed, d_model=128, n_heads=8, score_prior=())
        assert torch.equal(zero.score_bias, torch.zeros(2))
        with torch.no_grad():
            p_zero = torch.sigmoid(zero(batch)).mean(0)
        assert (torch.logit(p_zero) - torch.logit(prior))[1] > 3.0  # the former init: far above 0.5%
    assert torch.allclose(model_with(score_prior=(0.1,)).score_bias, torch.logit(torch.tensor([0.1, 0.1])))
    with pytest.raises(ValueError, match="score_prior"):
        model_with(score_prior=(0.1, 0.2, 0.3))


def test_a_training_step_builds_the_request_layout_once(monkeypatch):
    """forward builds the layout (one host sync: R and N) and extra_losses of the same batch reuses it."""
    model = model_with().train()
    batch = rows(9, [3, 3, 3, 1, 1, 8, 8, 8, 8])
    built, syncs = [], []
    real = onerank_module.request_layout
    monkeypatch.setattr(onerank_module, "request_layout", lambda *args: built.append(1) or real(*args))
    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "unique", "nonzero"):
        method = getattr(torch.Tensor, name)
        monkeypatch.setattr(
            torch.Tensor, name, lambda self, *a, _n=name, _m=method, **k: syncs.append(_n) or _m(self, *a, **k)
        )
    for name in ("unique", "bincount"):
        fn = getattr(torch, name)
        monkeypatch.setattr(torch, name, lambda *a, _n=name, _f=fn, **k: syncs.append(_n) or _f(*a, **k))
    logits = model(batch)
    loss = model.extra_losses(batch, logits)["listwise"]
    loss.backward()
    assert len(built) == 1 and syncs == ["tolist"]
    monkeypatch.undo()
    again = {**batch, "group": batch["group"].clone()}  # a batch the forward did not see: built afresh
    assert torch.allclose(model.extra_losses(again, logits.detach())["listwise"], loss)


def test_logits_are_cosine_over_tau_plus_bias():
    model = model_with(tau=0.5)
    with torch.no_grad():
        model.score_bias.copy_(torch.tensor([3.0, -3.0]))
    logits = model(rows(5, [0, 0, 1, 1, 1]))
    assert ((logits - torch.tensor([3.0, -3.0])).abs() <= 2.0 + 1e-5).all()  # |cos| / 0.5 <= 2


def test_listwise_loss_matches_hand_computation():
    model = model_with(listwise_weight=0.7)
    logits = torch.tensor([[1.0, 0.0], [2.0, 1.0], [0.5, 3.0], [0.0, 0.0], [1.0, -1.0], [4.0, 2.0]])
    batch = {
        "sparse": torch.zeros(6, 5, dtype=torch.long),
        "group": torch.tensor([0, 0, 0, 1, 1, 2]),
        "labels": torch.tensor([[1.0, 0], [1, 1], [0, 0], [0, 0], [0, 0], [1, 1]]),
        "label_mask": torch.tensor([[1, 1], [1, 1], [1, 0], [1, 1], [1, 1], [1, 1]], dtype=torch.bool),
    }
    got = model.extra_losses(batch, logits)["listwise"]

    def nce(scores: list[float], positives: list[int]) -> float:
        lse = math.log(sum(math.exp(s) for s in scores))
        return sum(lse - scores[p] for p in positives) / len(positives)

    click = (nce([1.0, 2.0, 0.5], [0, 1]) + nce([4.0], [0])) / 2  # request 1 has no positive: skipped
    conversion = (nce([0.0, 1.0], [1]) + nce([2.0], [0])) / 2  # row 2's conversion label is masked: not a candidate
    assert got.item() == pytest.approx(0.7 * (click + conversion), rel=1e-6)


def test_listwise_loss_is_safe_without_positives_and_at_zero_weight():
    batch = rows(6, [0, 0, 0, 1, 1, 1])
    batch["labels"].zero_()
    model = model_with().train()
    logits = model(batch)
    loss = model.extra_losses(batch, logits)["listwise"]
    assert loss.item() == 0.0
    loss.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    batch["labels"][4, 0] = 1.0  # one positive in request 1: request 0 (no positive) adds nothing
    full = model.extra_losses(batch, logits)["listwise"]
    assert full.item() > 0 and full.item() == pytest.approx(
        model.extra_losses(take(batch, [3, 4, 5]), logits[3:])["listwise"].item()
    )
    assert model_with(listwise_weight=0.0).extra_losses(batch, logits) == {}
    assert model_with(setwise=False).extra_losses(batch, logits) == {}
    assert model.extra_losses({k: v for k, v in batch.items() if k != "group"}, logits) == {}


# --------------------------------------------------------------------------- config and training


@pytest.mark.parametrize(
    "overrides",
    [
        {"d_model": 10, "n_heads": 4},
        {"interaction": "tree"},
        {"interaction": "hybrid"},
        {"hybrid_mask": ((1, 0), (0, 1))},
        {"interaction": "hybrid", "hybrid_mask": ((1, 1, 1), (1, 1, 1))},
        {"tau": 0.0},
        {"listwise_weight": -1.0},
        {"situation_pool": "max"},
        {"n_anchors": -1},
    ],
)
def test_bad_config_is_a_value_error(overrides):
    with pytest.raises(ValueError):
        build_model("onerank", SPEC, **{**SMALL, **overrides})


def test_each_token_kind_needs_a_field():
    no_dense = FeatureSpec(**{**SPEC.to_dict(), "dense_fields": []})
    with pytest.raises(ValueError, match="context_fields"):  # nothing left for the candidate token
        build_model("onerank", no_dense, context_fields=tuple(SPEC.sparse_fields))
    no_seq = FeatureSpec(**{**SPEC.to_dict(), "seq_field": None})
    with pytest.raises(ValueError, match="context_fields"):  # nothing for the profile token
        build_model("onerank", no_seq, context_fields=())
    model = build_model("onerank", no_seq, **SMALL)  # no history: the context is the profile token alone
    assert model(rows(3, [0, 0, 1])).shape == (3, 2)


def test_config_defaults_follow_the_paper_where_known():
    config = OnerankConfig()
    assert config.detach_cross_task and config.setwise and config.tau == 0.1 and config.listwise_weight == 1.0


def test_training_with_request_batches_lowers_both_losses():
    from training.trainer import TrainConfig, fit

    data = synthetic(SPEC, 480, seed=0, rows_per_request=6)
    model = model_with(seed=1).train()
    result = fit(model, data, None, TrainConfig(epochs=4, batch_size=96, lr=1e-2, device="cpu"))
    first, last = result.history[0], result.history[-1]
    assert math.isfinite(last["listwise"]) and last["listwise"] < first["listwise"]
    assert last["train_loss"] < first["train_loss"]
