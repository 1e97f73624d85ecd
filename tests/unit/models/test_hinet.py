"""HiNet: SAN skips the own scenario, SEI/CGC gates, own-scenario heads and slots, unmasked loss, lean forward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny import SPEC, S, T, changed, no_host_sync, refuse, scenario_batches
from tiny import scenario_batch as batch
from tiny import seeded_model as model

from training.models import build_model
from training.models import hinet as hinet_module
from training.models.hinet import HinetConfig
from training.trainer import masked_bce


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


def shake_norms(m: torch.nn.Module) -> torch.nn.Module:
    """Random affine parameters in the MLP blocks' norms (ones / zeros at init would hide a wrong gather)."""
    with torch.no_grad():
        for name, p in m.named_parameters():
            if ".norms." in name:
                p.normal_()
    return m


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"n_shared": 0},
        {"cgc_gate": "sum"},
        {"cgc_gate": "relu_softmax", "dropout": 0.3},
        {"norm": "layer"},
        {"norm": "batch"},
    ],
)
def test_hinet_forward_runs_only_the_own_slots_and_matches_every_slot_computed(overrides):
    """forward = the former computation (every S·T slot, then the row's own T), value and gradient."""
    for b in scenario_batches():
        hinet, rows = shake_norms(model("hinet", **overrides)), torch.arange(len(b["scenario"]))
        assert torch.allclose(hinet(b), hinet.head_logits(b)[rows, b["scenario"]], atol=1e-6)
        hinet = shake_norms(model("hinet", sei_dropout=0.0, **{**overrides, "dropout": 0.0}).train())  # batch-stat BN
        params = [p for p in hinet.parameters() if p.requires_grad]
        lean = torch.autograd.grad(hinet(b).square().sum(), params, allow_unused=True)
        full = torch.autograd.grad(hinet.head_logits(b)[rows, b["scenario"]].square().sum(), params, allow_unused=True)
        for p, g_lean, g_full in zip(params, lean, full, strict=True):
            g_lean, g_full = (torch.zeros_like(p) if g is None else g for g in (g_lean, g_full))
            scale = max(1.0, g_full.abs().max().item())  # float noise grows with the shaken norms' gradients
            assert torch.allclose(g_lean, g_full, atol=1e-6 * scale, rtol=1e-4)


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


def test_hinet_training_step_has_no_host_sync():
    hinet, b = model("hinet").train(), batch()
    with no_host_sync():
        hinet(b).sum().backward()


def test_hinet_defaults():
    config = HinetConfig()
    assert config.cgc_gate == "softmax"  # the paper's CGC gate (the code effectively sums)
    assert config.gate_relu and not config.san_relu_all  # the code's SEI gates; a SAN that is alive at init
    assert config.sei_dropout < 0.5  # msmt's 2-epoch schedule, not the code's 8 epochs at lr 1e-4
