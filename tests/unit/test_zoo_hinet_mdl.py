"""Mechanism tests for HiNet and MDL: each one fails if the mechanism it names were wired wrong."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from tiny import SPEC, no_host_sync

from training.data import default_spec, synthetic
from training.layers import MLP, ParallelMLP, ScenarioChunks
from training.models import build_model
from training.models import hinet as hinet_module
from training.models.hinet import HinetConfig
from training.models.mdl import semantic_groups
from training.trainer import masked_bce

S, T = SPEC.n_scenarios, len(SPEC.tasks)


def batch(n: int = 12) -> dict[str, torch.Tensor]:
    """n rows, scenarios 0, 1, 2, 0, 1, 2, … (the scenario field kept consistent)."""
    b = next(synthetic(SPEC, n, seed=3).batches(n, shuffle=False))
    b["scenario"] = torch.arange(n) % S
    b["sparse"][:, SPEC.sparse_fields.index("scenario_id")] = b["scenario"] + 1
    return b


def model(name: str, **overrides):
    torch.manual_seed(0)
    return build_model(name, SPEC, **overrides).eval()


def changed(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per row: does any entry differ by more than float noise?"""
    return ((a - b).abs() > 1e-5).reshape(len(a), -1).any(dim=1)


def refuse(*_args, **_kwargs):
    raise AssertionError("this computation should not run")


def scenario_batches() -> list[dict[str, torch.Tensor]]:
    """Interleaved scenarios, a batch of one scenario, and one where scenario 1 is absent."""
    mixed, single, absent = batch(64), batch(10), batch(30)
    single["scenario"][:] = 2
    absent["scenario"] = torch.where(absent["scenario"] == 1, 0, absent["scenario"])
    return [mixed, single, absent]


# ---------------------------------------------------------------- HiNet


def test_hinet_san_weight_of_own_scenario_is_exactly_zero():
    b = batch()
    rows = torch.arange(len(b["scenario"]))
    for renorm in (False, True):
        weights = model("hinet", san_renorm=renorm).san.weights(b["scenario"])  # (B, S)
        assert torch.equal(weights[rows, b["scenario"]], torch.zeros(len(rows)))
        others = weights.masked_select(F.one_hot(b["scenario"], S) == 0)
        assert (others > 0).all()
        sums = weights.sum(-1)
        if renorm:
            assert torch.allclose(sums, torch.ones_like(sums))
        else:  # the code: softmax first, zero after, no renormalisation
            assert (sums < 1 - 1e-4).all()


def test_hinet_scenario_layer_is_san_cur_shared_of_the_sei_outputs():
    hinet, b = model("hinet"), batch()
    D, rows = hinet.sei.out_dim, torch.arange(12)
    x = hinet.input_norm(hinet.embedding(b).index_select(1, hinet.input_fields).flatten(1))
    modules = hinet.sei(x)  # (B, 1+S, D): shared SEI, then one per scenario
    weights = hinet.san.weights(b["scenario"])  # from the scenario id alone
    c = hinet.extract_scenarios(b)
    assert c.shape == (12, 3 * D)
    assert torch.allclose(c[:, :D], torch.einsum("bs,bsd->bd", weights, modules[:, 1:]), atol=1e-6)
    assert torch.equal(c[:, D : 2 * D], modules[rows, 1 + b["scenario"]])
    assert torch.equal(c[:, 2 * D :], modules[:, 0])


def test_hinet_san_gradient_never_reaches_own_scenario_expert():
    san = model("hinet").san
    scenario = torch.arange(6) % S
    experts = torch.randn(6, S, 8, requires_grad=True)
    (grad,) = torch.autograd.grad(san(scenario, experts).pow(2).sum(), experts)
    own = F.one_hot(scenario, S).bool()  # (B, S)
    assert torch.equal(grad[own], torch.zeros_like(grad[own]))
    assert (grad[~own].abs().sum(-1) > 0).all()


@pytest.mark.parametrize("j", range(S))
def test_hinet_scenario_expert_reaches_san_of_other_scenarios_only(j):
    hinet, b = model("hinet"), batch()
    D = hinet.sei.out_dim
    before = hinet.extract_scenarios(b)  # (B, 3D) = [S_san; S_cur; S_sh]
    with torch.no_grad():  # shift the output of scenario j's SEI (module 1 + j)
        hinet.sei.subexperts.biases[-1].view(1 + S, hinet.config.n_sub, D)[1 + j] += 1.0
    after = hinet.extract_scenarios(b)
    own = b["scenario"] == j
    san_b, san_a = before[:, :D], after[:, :D]
    assert torch.equal(san_a[own], san_b[own])  # SAN never weighs the sample's own scenario
    assert changed(san_a[~own], san_b[~own]).all()  # but does weigh scenario j for everyone else
    assert changed(after[own, D : 2 * D], before[own, D : 2 * D]).all()  # S_cur is scenario j's expert
    assert torch.equal(after[~own, D : 2 * D], before[~own, D : 2 * D])
    assert torch.equal(after[:, 2 * D :], before[:, 2 * D :])  # the shared SEI is untouched


@pytest.mark.parametrize("j", range(S))
def test_hinet_scenario_task_logits_come_only_from_own_scenario_heads(j):
    hinet, b = model("hinet"), batch()
    before = hinet(b)
    with torch.no_grad():  # +1 on the output bias of scenario j's T heads
        hinet.cgc.towers.biases[-1].view(S, T)[j] += 1.0
    shift = hinet(b) - before  # (B, T)
    own = b["scenario"] == j
    assert torch.allclose(shift[own], torch.ones_like(shift[own]))
    assert torch.equal(shift[~own], torch.zeros_like(shift[~own]))


def test_hinet_scenario_task_gradients_reach_only_the_own_scenario_slots():
    hinet, b = model("hinet"), batch()
    only_1 = {k: v[b["scenario"] == 1] for k, v in b.items()}
    hinet(only_1).sum().backward()
    E = hinet.config.exp_per_slot
    tower_grad = hinet.cgc.towers.weights[0].grad.abs().flatten(1).sum(-1).view(S, T)  # per (scenario, task) slot
    expert_grad = hinet.cgc.experts.weights[0].grad.abs().flatten(1).sum(-1).view(S, T * E)
    for grad in (tower_grad, expert_grad):
        assert (grad[1] > 0).all() and (grad[[0, 2]] == 0).all()


def test_hinet_task_mode_has_one_head_per_task_shared_by_scenarios():
    hinet, b = model("hinet", head_mode="task"), batch()
    assert hinet.n_slots == T
    before = hinet(b)
    with torch.no_grad():
        hinet.cgc.towers.biases[-1][0] += 1.0
    shift = hinet(b) - before
    assert torch.allclose(shift[:, 0], torch.ones(len(shift))) and torch.equal(shift[:, 1], torch.zeros(len(shift)))


def test_hinet_unmasked_loss_reproduces_the_official_all_heads_loss():
    b = batch()
    assert model("hinet").extra_losses(b, model("hinet")(b)) == {}
    hinet = model("hinet", unmasked_loss=True)
    logits = hinet(b)
    extra = hinet.extra_losses(b, logits)
    heads = hinet.head_logits(b)  # (B, S, T)
    # the code: per head, mean over every sample of BCE against the label, 0 off the sample's scenario
    targets = F.one_hot(b["scenario"], S).unsqueeze(-1) * b["labels"].unsqueeze(1)  # (B, S, T)
    official = F.binary_cross_entropy_with_logits(heads, targets, reduction="none").mean(0).sum()
    total = masked_bce(logits, b["labels"], b["label_mask"])[0] + extra["hinet_other_heads"]
    assert torch.allclose(total, official)
    recomputed = hinet.extra_losses(b, logits.detach().clone())  # no heads attached: recomputed
    assert torch.allclose(recomputed["hinet_other_heads"], extra["hinet_other_heads"])
    with pytest.raises(ValueError, match="unmasked_loss"):
        build_model("hinet", SPEC, unmasked_loss=True, head_mode="task")


def test_hinet_gate_flags():
    b = batch()
    for relu in (True, False):
        hinet = model("hinet", gate_relu=relu)
        x = hinet.input_norm(hinet.embedding(b).index_select(1, hinet.input_fields).flatten(1))
        with torch.no_grad():  # all gate scores negative and different
            hinet.sei.gates.weight.zero_()
            hinet.sei.gates.bias.copy_(-torch.arange(1.0, 1.0 + hinet.sei.gates.bias.numel()))
        subs = hinet.sei.subexperts(x).unflatten(1, (1 + S, hinet.config.n_sub))  # (B, M, N, D)
        uniform = torch.allclose(hinet.sei(x), subs.mean(2), atol=1e-6)
        assert uniform == relu  # ReLU before softmax: negative scores → equal weights
    for gate, reacts in (("softmax", True), ("sum", False)):
        hinet = model("hinet", cgc_gate=gate)
        before = hinet(b)
        with torch.no_grad():
            hinet.cgc.gates.bias.normal_(std=3.0)
        assert changed(hinet(b), before).any() == reacts  # "sum": the code's singleton-axis softmax
    with pytest.raises(ValueError, match="head_mode"):
        build_model("hinet", SPEC, head_mode="scenario")


def test_hinet_scenario_id_feeds_san_only_by_default():
    assert model("hinet").input_fields.tolist() == [0, 1, 3, 4]  # user, item, dense, seq
    assert model("hinet", scenario_in_input=True).input_fields.tolist() == [0, 1, 2, 3, 4]


def test_hinet_cgc_gate_is_the_paper_softmax_by_default():
    """Every slot mixes its experts with softmax(W C); "relu_softmax" (the SEI quirk) flattens negative scores."""
    b = batch()
    out = {}
    for gate in ("softmax", "relu_softmax"):
        hinet, B = model("hinet", cgc_gate=gate), len(b["scenario"])
        cgc = hinet.cgc
        P, E = cgc.n_slots, cgc.n_experts
        with torch.no_grad():  # every gate score negative and different
            cgc.gates.weight.zero_()
            cgc.gates.bias.copy_(-0.5 * torch.arange(1.0, 1.0 + P * E))
        c = hinet.extract_scenarios(b)
        own = cgc.experts(c).unflatten(1, (P, cgc.n_own))  # (B, P, E_own, D)
        experts = torch.cat([own, cgc.shared(c).unsqueeze(1).expand(-1, P, -1, -1)], dim=2)  # (B, P, E, D)
        scores = cgc.gates(c).view(B, P, E)
        weights = scores.softmax(-1) if gate == "softmax" else torch.full_like(scores, 1 / E)  # ReLU → all 0
        want = cgc.towers(torch.einsum("bpe,bped->bpd", weights, experts)).squeeze(-1)  # (B, P)
        assert torch.allclose(cgc(c), want, atol=1e-6)
        out[gate] = hinet(b)
        assert torch.allclose(out[gate], want.view(B, S, T)[torch.arange(B), b["scenario"]], atol=1e-6)
    assert changed(out["softmax"], out["relu_softmax"]).all()


def test_hinet_san_learns_for_every_scenario_at_init_across_seeds():
    """The code's ReLUs on the SAN's 1-unit layer and on its logits leave some scenarios with a constant
    attention and no gradient at init; the default keeps those two layers linear."""
    scenario = torch.arange(S)
    probe = torch.randn(S, S, generator=torch.Generator().manual_seed(0))
    dead = {}
    for relu_all in (False, True):
        dead[relu_all] = 0
        for seed in range(20):
            torch.manual_seed(seed)
            san = build_model("hinet", SPEC, san_relu_all=relu_all).san
            (grad,) = torch.autograd.grad((san.weights(scenario) * probe).sum(), san.embedding.weight)
            dead[relu_all] += int((grad.abs().sum(-1) == 0).any())  # some scenario's SAN gets no gradient
    assert dead[False] == 0
    assert dead[True] >= 3  # the check has power: the code's layout dies for several of these seeds
    assert not any(isinstance(m, torch.nn.ReLU) for m in list(model("hinet").san.mlp)[-3:])  # 1 → S stays linear


@pytest.mark.parametrize(
    "overrides", [{}, {"n_shared": 0}, {"cgc_gate": "sum"}, {"cgc_gate": "relu_softmax", "dropout": 0.3}]
)
def test_hinet_forward_runs_only_the_own_slots_and_matches_every_slot_computed(overrides):
    """forward = the former computation (every S·T slot, then the row's own T), value and gradient."""
    for b in scenario_batches():
        hinet, rows = model("hinet", **overrides), torch.arange(len(b["scenario"]))
        assert torch.allclose(hinet(b), hinet.head_logits(b)[rows, b["scenario"]], atol=1e-6)
        hinet = model("hinet", sei_dropout=0.0, **{**overrides, "dropout": 0.0}).train()  # batch-stat BN, no masks
        params = [p for p in hinet.parameters() if p.requires_grad]
        lean = torch.autograd.grad(hinet(b).square().sum(), params, allow_unused=True)
        full = torch.autograd.grad(hinet.head_logits(b)[rows, b["scenario"]].square().sum(), params, allow_unused=True)
        for p, g_lean, g_full in zip(params, lean, full, strict=True):
            g_lean, g_full = (torch.zeros_like(p) if g is None else g for g in (g_lean, g_full))
            assert torch.allclose(g_lean, g_full, atol=1e-6, rtol=1e-4)


def test_hinet_forward_skips_the_other_scenarios_slots(monkeypatch):
    hinet, b = model("hinet"), batch(64)
    runs = []
    real = hinet_module.run_networks
    monkeypatch.setattr(
        hinet_module, "run_networks", lambda mlp, x, index: runs.append((mlp, index)) or real(mlp, x, index)
    )
    for every_slot in (hinet.cgc.experts, hinet.cgc.towers):  # the ParallelMLPs over all S·T slots never run
        monkeypatch.setattr(every_slot, "forward", refuse)
    hinet(b)
    (experts, e_index), (towers, t_index) = runs
    E = hinet.config.exp_per_slot
    assert experts is hinet.cgc.experts and towers is hinet.cgc.towers
    assert e_index.shape[1] == T * E and t_index.shape[1] == T  # each chunk runs one scenario's T slots
    owner = t_index[:, 0] // T  # (K,) the chunk's scenario
    assert torch.equal(t_index, owner.unsqueeze(1) * T + torch.arange(T))
    assert torch.equal(e_index, owner.unsqueeze(1) * T * E + torch.arange(T * E))


@pytest.mark.parametrize("n", [1, 7, 64, 301])
def test_hinet_scenario_chunks_hold_one_scenario_each(n):
    for scenario in (torch.randint(0, S, (n,), generator=torch.Generator().manual_seed(n)), torch.full((n,), 1)):
        chunks = ScenarioChunks(scenario, S)
        assert chunks.n_chunks == math.ceil(n / chunks.size) + S - 1  # a bound fixed by B and S alone
        assert chunks.slot.unique().numel() == n and (chunks.slot < chunks.n_chunks * chunks.size).all()
        assert torch.equal(chunks.owner[chunks.slot // chunks.size], scenario)  # each row sits in its own chunk
        x = torch.randn(n, 3)
        padded = chunks.pad(x)  # (K, c, 3)
        assert torch.equal(chunks.unpad(padded), x) and padded.count_nonzero() == x.count_nonzero()  # 0 elsewhere


def test_hinet_training_step_has_no_host_sync():
    hinet, b = model("hinet").train(), batch()
    with no_host_sync():
        hinet(b).sum().backward()


def test_hinet_defaults():
    config = HinetConfig()
    assert config.cgc_gate == "softmax"  # the paper's CGC gate (the code effectively sums)
    assert config.gate_relu and not config.san_relu_all  # the code's SEI gates; a SAN that is alive at init
    assert config.sei_dropout < 0.5  # msmt's 2-epoch schedule, not the code's 8 epochs at lr 1e-4


# ---------------------------------------------------------------- MDL

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
    spec = default_spec(3, ("click", "conversion"))
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
    ],
)
def test_mdl_forward_carries_only_the_read_scenario_tokens_and_matches_all_tokens_computed(overrides):
    """forward = the heads on forward_tokens (every scenario token carried through every block), value and gradient."""
    for b in scenario_batches():
        mdl = model("mdl", d_model=32, **overrides)
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


# ---------------------------------------------------------------- shared MLP blocks: optional norm


def test_mlp_norm_none_is_the_plain_mlp_bit_for_bit():
    """norm="none" adds no module, draws the same random init and computes the same bits as Linear → ReLU
    without the option, so every model built on these blocks is unchanged."""
    x = torch.randn(6, 8)
    torch.manual_seed(0)
    mlp = MLP([8, 16, 4], dropout=0.1, activate_last=False).eval()
    after_mlp = torch.rand(1)  # the RNG stream after the build
    torch.manual_seed(0)
    plain = torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Dropout(0.1), torch.nn.Linear(16, 4)
    ).eval()
    assert torch.equal(torch.rand(1), after_mlp)
    assert list(mlp.state_dict()) == list(plain.state_dict()) and torch.equal(mlp(x), plain(x))

    torch.manual_seed(0)
    par = ParallelMLP(3, [8, 16, 4], activate_last=False)
    after_par = torch.rand(1)
    assert par.norms is None and set(par.state_dict()) == {"weights.0", "weights.1", "biases.0", "biases.1"}
    torch.manual_seed(0)
    w0, b0 = torch.empty(3, 8, 16).uniform_(-(8**-0.5), 8**-0.5), torch.empty(3, 16).uniform_(-(8**-0.5), 8**-0.5)
    w1, b1 = torch.empty(3, 16, 4).uniform_(-0.25, 0.25), torch.empty(3, 4).uniform_(-0.25, 0.25)
    assert torch.equal(torch.rand(1), after_par)
    assert all(torch.equal(a, b) for a, b in zip(par.state_dict().values(), (w0, w1, b0, b1), strict=True))
    want = torch.stack([torch.relu(x @ w0[n] + b0[n]) @ w1[n] + b1[n] for n in range(3)], dim=1)  # (B, n, 4)
    assert torch.allclose(par(x), want, atol=1e-6)


@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_mlp_norm_sits_between_each_activated_linear_and_its_activation(norm):
    kind = torch.nn.BatchNorm1d if norm == "batch" else torch.nn.LayerNorm
    mlp = MLP([8, 16, 12, 1], activate_last=False, norm=norm)
    layers = [type(m) for m in mlp]
    assert [issubclass(t, kind) for t in layers] == [False, True, False, False, True, False, False]
    assert layers[0] is layers[3] is layers[6] is torch.nn.Linear and layers[2] is torch.nn.ReLU
    seen = []
    mlp[1].register_forward_hook(lambda _m, _i, out: seen.append(out))
    x = torch.randn(32, 8) * 5 + 3
    mlp(x)
    axis = 0 if norm == "batch" else 1  # per unit over the batch, or per row over the units
    assert torch.allclose(seen[0].mean(axis), torch.zeros(1), atol=1e-5)
    assert torch.allclose(seen[0].var(axis, unbiased=False), torch.ones(1), atol=1e-3)
    assert mlp(torch.randn(4, 3, 8)).shape == (4, 3, 1)  # leading axes count as rows

    par = ParallelMLP(3, [8, 16, 4], activate_last=True, norm=norm)
    assert len(par.norms) == 2  # both layers are activated
    hidden = []
    par.norms[0].register_forward_hook(lambda _m, _i, out: hidden.append(out))  # (n, B, d)
    par(x)
    h = hidden[0]
    axis = 1 if norm == "batch" else 2  # per network and unit over the batch, or per network and row
    assert torch.allclose(h.mean(axis), torch.zeros(1), atol=1e-5)
    assert torch.allclose(h.var(axis, unbiased=False), torch.ones(1), atol=1e-3)
    with pytest.raises(ValueError, match="norm"):
        MLP([8, 4], norm="group")
