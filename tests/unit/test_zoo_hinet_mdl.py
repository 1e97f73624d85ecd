"""Mechanism tests for HiNet and MDL: each one fails if the mechanism it names were wired wrong."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny import SPEC

from training.data import default_spec, synthetic
from training.models import build_model
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
