"""MDL: features never read domain tokens, task tokens read the active scenario only, mixers, groups, lean forward."""

from __future__ import annotations

import math

import pytest
import torch
from tiny import SPEC, S, T, changed, no_host_sync, refuse, scenario_batches
from tiny import scenario_batch as batch
from tiny import seeded_model as model

from training.data import default_spec
from training.models import build_model
from training.models.mdl import semantic_groups

DOMAIN_PARTS = ("scenario_tokens", "task_tokens", "important")
BLOCK_DOMAIN_PARTS = ("attention", "scenario_ffn", "task_ffn")


def perturb(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p))


@pytest.mark.parametrize("mixer", ["rankmixer", "mhsa"])
def test_mdl_features_never_read_domain_tokens(mixer):
    mdl, b = model("mdl", mixer=mixer, d_model=32), batch()
    before = mdl.forward_tokens(b)
    torch.manual_seed(5)
    for name in DOMAIN_PARTS:
        perturb(getattr(mdl, name))
    for block in mdl.blocks:
        for name in BLOCK_DOMAIN_PARTS:
            if getattr(block, name) is not None:
                perturb(getattr(block, name))
    after = mdl.forward_tokens(b)
    assert torch.equal(after["features"], before["features"])  # every block's self-interaction, unchanged
    assert changed(after["scenarios"], before["scenarios"]).all() and changed(after["tasks"], before["tasks"]).all()


def test_mdl_domain_tokens_read_features():
    mdl, b = model("mdl", d_model=32), batch()
    before = mdl.forward_tokens(b)
    perturb(mdl.tokenizer)
    after = mdl.forward_tokens(b)
    assert changed(after["scenarios"], before["scenarios"]).all() and changed(after["tasks"], before["tasks"]).all()


@pytest.mark.parametrize("j", range(S))
def test_mdl_task_tokens_receive_the_active_scenario_only(j):
    mdl, b = model("mdl", d_model=32), batch()
    before = mdl(b)
    with torch.no_grad():  # scenario j's token: its prior and its query projection in block 0
        mdl.scenario_tokens.priors[j] += 2.0
        mdl.blocks[0].attention.w_q[j] += 0.5
    after = mdl(b)
    own = b["scenario"] == j
    assert changed(after[own], before[own]).all()
    assert torch.allclose(after[~own], before[~own], rtol=0, atol=1e-6)


def test_mdl_global_token_reaches_every_sample():
    mdl, b = model("mdl", d_model=32), batch()
    before = mdl(b)
    with torch.no_grad():
        mdl.scenario_tokens.priors[S] += 2.0  # the global token sits after the S scenario tokens
    assert changed(mdl(b), before).all()
    assert model("mdl", use_global_token=False).scenario_tokens.priors.shape[0] == S


def test_mdl_no_task_to_task_attention():
    mdl, b = model("mdl", d_model=32), batch()
    before = mdl(b)
    with torch.no_grad():
        mdl.task_tokens.priors[0] += 2.0
    after = mdl(b)
    assert changed(after[:, 0], before[:, 0]).all()
    assert torch.allclose(after[:, 1], before[:, 1], rtol=0, atol=1e-6)


def test_mdl_attention_layout():
    mdl, b = model("mdl", d_model=32, n_blocks=2, n_heads=4), batch()
    out = mdl.forward_tokens(b)
    assert len(out["scenario_attention"]) == 2 == len(mdl.blocks)
    for scen, task in zip(out["scenario_attention"], out["task_attention"], strict=True):
        assert scen.shape == (12, 4, S + 1, mdl.n_features) and task.shape == (12, 4, T, mdl.n_features)
        for a in (scen, task):
            assert torch.allclose(a.sum(-1), torch.ones(a.shape[:-1]))
    assert mdl.blocks[0].scenario_ffn is not None and mdl.blocks[-1].scenario_ffn is None


def test_mdl_rankmixer_token_mixing_is_a_head_shuffle():
    mdl = model("mdl", d_model=8)  # N_f = 4 feature tokens → 4 heads of 2
    x = torch.arange(4 * 8.0).view(1, 4, 8)
    mixed = mdl.blocks[0].mixer(x)
    for h in range(4):
        for i in range(4):
            assert torch.equal(mixed[0, h, 2 * i : 2 * i + 2], x[0, i, 2 * h : 2 * h + 2])
    with pytest.raises(ValueError, match="rankmixer"):
        build_model("mdl", SPEC, d_model=32, feature_groups="field")  # N_f = 5


def test_mdl_semantic_feature_groups():
    spec = default_spec(3)
    names = [*spec.sparse_fields, "<dense>", "<seq>"]
    groups = [[names[i] for i in g] for g in semantic_groups(spec, "semantic")]
    assert groups == [
        ["user_id", "user_segment", "<seq>"],
        ["item_id", "item_category", "item_price_bucket"],
        ["scenario_id", "position", "device", "hour"],
        ["<dense>"],
    ]
    assert len(semantic_groups(spec, "field")) == len(names)
    with pytest.raises(ValueError, match="important_fields"):
        build_model("mdl", SPEC, important_fields=("query_id",))


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"use_global_token": False},
        {"mixer": "mhsa", "per_token_kv": False},
        {"token_ffn_dims": (16,), "n_blocks": 1, "dropout": 0.2},
        {"norm": "layer", "token_ffn_dims": (16,)},
        {"norm": "batch"},
    ],
)
def test_mdl_forward_carries_only_the_read_scenario_tokens_and_matches_all_tokens_computed(overrides):
    """forward = the heads on forward_tokens (every scenario token carried through every block), value and gradient."""
    for b in scenario_batches():
        mdl = model("mdl", d_model=32, **overrides)
        with torch.no_grad():  # random norm affines: ones / zeros at init would hide a wrong per-token gather
            for name, p in mdl.named_parameters():
                if ".norms." in name:
                    p.normal_()
        assert torch.allclose(mdl(b), mdl.heads(mdl.forward_tokens(b)["tasks"]).squeeze(-1), atol=1e-5)
        mdl.train().config.dropout = 0.0
        for m in mdl.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        params = list(mdl.parameters())
        lean = torch.autograd.grad(mdl(b).square().sum(), params, allow_unused=True)
        full_logits = mdl.heads(mdl.forward_tokens(b)["tasks"]).squeeze(-1)
        full = torch.autograd.grad(full_logits.square().sum(), params, allow_unused=True)
        for p, g_lean, g_full in zip(params, lean, full, strict=True):
            g_lean, g_full = (torch.zeros_like(p) if g is None else g for g in (g_lean, g_full))
            assert torch.allclose(g_lean, g_full, atol=1e-5, rtol=1e-4)


def test_mdl_forward_skips_the_inactive_scenario_tokens(monkeypatch):
    mdl, b = model("mdl", d_model=32, n_blocks=2), batch()
    monkeypatch.setattr(mdl.scenario_tokens, "forward", refuse)  # would initialise all S + 1 tokens
    monkeypatch.setattr(mdl.blocks[0].scenario_ffn, "forward", refuse)  # would update all S + 1 tokens
    queries = []
    for block in mdl.blocks:
        block.attention.register_forward_hook(lambda _m, args, _out: queries.append(args[0].shape[1]))
    mdl(b)
    assert queries == [2 + T, 2 + T]  # the active and the global scenario token, then the T task tokens


def test_mdl_training_step_has_no_host_sync():
    mdl, b = model("mdl", d_model=32).train(), batch()
    with no_host_sync():
        mdl(b).sum().backward()


def test_mdl_task_tokens_read_the_updated_features_through_their_own_queries():
    """One block's task path by hand: q_t = T_t W_Q[t]; k_f, v_f = F'_f W_KV[f] of the UPDATED feature tokens;
    per head softmax(q kᵀ/√d_h) v; T̂ = T + read; T̃ = T̂ + (Ŝ_own + Ŝ_global)/2; out = FFN_t(T̃) + T̃."""
    mdl, b = model("mdl", d_model=32, n_heads=4), batch()
    block, H, d = mdl.blocks[0], 4, 32
    features = mdl.tokenizer(mdl.embedding(b))  # (B, N_f, d)
    imp = mdl.important(b["sparse"])
    scenarios, tasks = mdl.scenario_tokens(imp), mdl.task_tokens(imp)  # (B, S+1, d), (B, T, d)
    out_features, _, out_tasks, attention = block(features, scenarios, tasks, b["scenario"])

    updated = block.feature_ffn(block.mix_norm(block.mixer(features) + features))  # F' (B, N_f, d)
    assert torch.allclose(out_features, updated, atol=1e-6)
    k, v = torch.einsum("bfd,fde->bfe", updated, block.attention.w_kv).chunk(2, dim=-1)  # (B, N_f, d) each

    def read(tokens: torch.Tensor, w_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = torch.einsum("bnd,nde->bne", tokens, w_q)  # (B, n, d)
        heads = [slice(h * d // H, (h + 1) * d // H) for h in range(H)]
        maps = torch.stack([(q[..., s] @ k[..., s].transpose(1, 2) / math.sqrt(d // H)).softmax(-1) for s in heads], 1)
        return torch.cat([maps[:, h] @ v[..., s] for h, s in enumerate(heads)], dim=-1), maps  # (B, n, d), maps

    task_read, task_map = read(tasks, block.attention.w_q[S + 1 :])
    scen_read, _ = read(scenarios, block.attention.w_q[: S + 1])
    assert torch.allclose(attention[:, :, S + 1 :], task_map, atol=1e-6)  # (B, H, T, N_f)
    s_hat = scenarios + scen_read  # (B, S+1, d)
    s_avg = (s_hat[torch.arange(len(b["scenario"])), b["scenario"]] + s_hat[:, S]) / 2  # (B, d)
    t_tilde = tasks + task_read + s_avg.unsqueeze(1)  # (B, T, d)
    assert torch.allclose(out_tasks, block.task_ffn(t_tilde) + t_tilde, atol=1e-5)
    assert changed(task_read[:, 0], task_read[:, 1]).all()  # each task reads the features its own way


def test_mdl_mhsa_mixer_is_self_attention_over_the_feature_tokens():
    """mixer="mhsa" (the abstract's feature self-attention): every output token reads every input token,
    with no positional signal (permuting tokens permutes outputs); RankMixer's mixing is a fixed shuffle."""
    x = torch.randn(5, 4, 32)
    perm = torch.tensor([2, 0, 3, 1])
    mhsa = model("mdl", d_model=32, mixer="mhsa").blocks[0].mixer
    assert isinstance(mhsa.attention, torch.nn.MultiheadAttention) and mhsa.attention.num_heads == 4
    assert torch.allclose(mhsa(x[:, perm]), mhsa(x)[:, perm], atol=1e-6)
    xg = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(mhsa(xg)[:, 0].sum(), xg)
    assert (grad.abs().sum(-1) > 0).all()  # token 0 reads all four tokens
    rankmixer = model("mdl", d_model=32).blocks[0].mixer
    assert not torch.allclose(rankmixer(x[:, perm]), rankmixer(x)[:, perm], atol=1e-3)
