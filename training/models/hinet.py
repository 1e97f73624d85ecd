"""HiNet: hierarchical information extraction for multi-scenario multi-task recommendation, all in this file.

Reference: J. Zhou, X. Cao, W. Li, L. Bo, K. Zhang, C. Luo, Q. Yu, "HiNet: Novel
Multi-Scenario & Multi-Task Learning with Hierarchical Information Extraction",
ICDE 2023 (https://arxiv.org/abs/2303.06095); official TF-1.15 code `mrchor/HiNet`
(`src/HiNet.py`), whose details are followed where the paper is silent.

    x = BN([e_1; …; e_F])                              input (the scenario id feeds SAN only)
    SEI(x) = Σ_j g_j(x) · sub_j(x),  g = softmax(ReLU(W x))          sub-expert integration
    S_sh = SEI_sh(x),  S_j = SEI_j(x) for every scenario j,  S_cur = S_{s(i)}
    a = softmax(MLP_san(e_s)),  a_{s(i)} := 0,  S_san = Σ_j a_j S_j   scenario-aware attention
    C = [S_san; S_cur; S_sh]  →  CGC (per-slot + shared experts, softmax(W C) per slot)  →  towers

Notation: B batch, F fields, k embedding dim, S scenarios, T tasks, N sub-experts per
SEI, D expert output width, P task slots (S·T or T), E experts per slot + shared.

Flags that follow the official code (defaults):
- `gate_relu=True`: the SEI gates are softmax(ReLU(·)) — the ReLU before the softmax
  is a code quirk; False drops it. (The CGC gate is `cgc_gate`, the SAN's `san_relu_all`.)
- `san_renorm=False`: the own scenario's SAN weight is zeroed *after* the softmax and
  the rest is not renormalised (weights sum to 1 − a_own); True renormalises them.
- `head_mode="scenario_task"`: S·T CGC slots (experts, gate and tower per (scenario,
  task)), each sample read from its own scenario's T heads; "task" is the paper's T
  tasks, one slot per task shared by all scenarios.
- `scenario_in_input=False`: the scenario id feeds SAN only, not x (as in the code).
- SEI sub-experts `sub_dims=(128, 64)`, `n_sub=5`; SAN MLP `san_dims=(128, 64, 1)`
  then → S on a 64-d scenario embedding; CGC `exp_per_slot=2`, `n_shared=2`, experts
  `expert_dims=(128, 64)`, towers `tower_dims=(128, 64)` then Linear → 1; `emb_dim=32`.

Resolutions and fidelity switches (not fixed by the paper; [R] in MODELS.md):
- `unmasked_loss=False`: the code trains every (scenario, task) head on every sample,
  with label 0 on the heads of other scenarios. The default trains each sample on its
  own scenario's heads only (the trainer's masked BCE on the returned logits). With
  True, `extra_losses` adds the other scenarios' heads against label 0, normalised per
  task like the trainer's BCE (the code's loss exactly when no label is masked); only in
  `head_mode="scenario_task"`. The per-head logits ride on the returned logits tensor
  (attribute `hinet_heads`), so no state is kept on the module; without it they are
  recomputed (a second forward, with fresh dropout masks).
- `cgc_gate="softmax"`: the CGC gate mixes the slot's experts with softmax(W C), as in
  the paper and PLE. The official code's CGC softmax runs over a singleton axis, so
  every weight is 1 and the experts are simply summed; "sum" reproduces that.
  "relu_softmax" is softmax(ReLU(W C)), the SEI gates' quirk carried over to the CGC
  (this file's earlier default, which is neither the paper nor the code).
- `sei_dropout=0.0`: the code's keep_prob 0.5 after every sub-expert layer (0.5 here)
  regularises 8 epochs at Adam lr 1e-4; msmt trains 2 epochs at lr 1e-3 (trainer and
  hinet.json defaults), a schedule that under-fits rather than over-fits, where
  dropping half of every sub-expert's units mainly slows fitting (measured in
  docs/models.md); 0.0 is also every zoo model's `dropout`; 0.5 restores the code.
- `san_relu_all=False`: the code puts a ReLU after every SAN layer, the 1-unit layer
  (`san_dims` ends in 1) and the S logits before the softmax included. Each of those
  two can be dead at init: a scenario whose 1-unit pre-activation is negative, or
  whose S logits are all negative, gets a constant attention and no gradient into its
  SAN, and one of the two happens for most seeds. By default both stay linear (the
  wide layers keep their ReLU); True restores the code.
- `input_norm="batchnorm"`: BatchNorm1d on x, trained normally. The code calls
  `tf.layers.batch_normalization` without `training=True`, so its moving statistics
  never update and it acts as a learnable affine map; "none" drops the norm.

Compute: in "scenario_task" mode a row reads T of the S·T CGC slots. The forward runs
only those (their experts and towers; the gate Linear and the shared experts are cheap
and run whole): rows are regrouped, without a host sync, into fixed-size chunks of one
scenario each (`ScenarioChunks`), and each chunk runs its scenario's weights.
`head_logits` (and `unmasked_loss`, which needs every head) still runs every slot, and
so does `norm="batch"`, whose statistics are over the whole batch.

Deviations: one CGC level only (the code's default `level_number=1`); the behaviour
sequence enters x as the mean of its item embeddings (the shared `FeatureEmbedding`);
L2 (0.05 in the code), Adam lr 1e-4 and batch 4096 are trainer settings, not here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from training.data import FeatureSpec
from training.layers import MLP, FeatureEmbedding, ParallelMLP, ScenarioChunks, run_networks, runs_subsets
from training.models.base import ModelConfig, MsmtModel

HEAD_MODES = ("scenario_task", "task")
CGC_GATES = ("softmax", "relu_softmax", "sum")
INPUT_NORMS = ("batchnorm", "none")


@dataclass
class HinetConfig(ModelConfig):
    emb_dim: int = 32  # code: embedding_size 32
    scenario_in_input: bool = False  # code: the scenario id reaches SAN only
    input_norm: str = "batchnorm"  # "batchnorm" | "none"; see the module docstring
    # scenario extraction layer
    n_sub: int = 5  # N: sub-experts per SEI module (shared and each scenario's)
    sub_dims: tuple[int, ...] = (128, 64)  # hidden widths of each sub-expert; D = last
    sei_dropout: float = 0.0  # after every sub-expert layer; code: 0.5 (for 8 epochs at lr 1e-4) [R]
    gate_relu: bool = True  # code quirk: softmax(ReLU(·)) in the SEI gates
    san_emb_dim: int = 64  # scenario embedding, input of SAN only
    san_dims: tuple[int, ...] = (128, 64, 1)  # SAN MLP widths before the final Linear → S (code)
    san_relu_all: bool = False  # code: True (ReLU on the 1-unit layer and the logits too: dead at init)
    san_renorm: bool = False  # code: no renormalisation after zeroing the own scenario
    # task extraction layer (one CGC level)
    head_mode: str = "scenario_task"  # "scenario_task" (code: S·T slots) | "task" (T slots)
    exp_per_slot: int = 2  # specific experts per slot
    n_shared: int = 2  # shared experts
    expert_dims: tuple[int, ...] = (128, 64)  # CGC expert widths
    tower_dims: tuple[int, ...] = (128, 64)  # tower hidden widths, then Linear → 1
    cgc_gate: str = "softmax"  # "softmax" (paper) | "relu_softmax" | "sum" (code's effective behaviour)
    unmasked_loss: bool = False  # True: the code's loss on every head of every sample

    def __post_init__(self) -> None:
        super().__post_init__()
        self.sub_dims, self.san_dims = tuple(self.sub_dims), tuple(self.san_dims)
        self.expert_dims, self.tower_dims = tuple(self.expert_dims), tuple(self.tower_dims)
        for name, choices in (("head_mode", HEAD_MODES), ("cgc_gate", CGC_GATES), ("input_norm", INPUT_NORMS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        if min(self.n_sub, self.exp_per_slot, self.san_emb_dim) < 1 or self.n_shared < 0:
            raise ValueError("n_sub, exp_per_slot and san_emb_dim must be >= 1 and n_shared >= 0")
        if (
            not self.sub_dims
            or not self.expert_dims
            or any(d < 1 for d in self.sub_dims + self.san_dims + self.expert_dims + self.tower_dims)
        ):
            raise ValueError(f"bad widths: sub {self.sub_dims}, san {self.san_dims}, experts {self.expert_dims}")
        if not 0.0 <= self.sei_dropout < 1.0:
            raise ValueError(f"sei_dropout must be in [0, 1), got {self.sei_dropout}")
        if self.unmasked_loss and self.head_mode != "scenario_task":
            raise ValueError("unmasked_loss needs head_mode='scenario_task' (other scenarios' heads)")


def _gate(scores: torch.Tensor, relu: bool) -> torch.Tensor:
    """softmax over the last axis, after a ReLU when `relu` (the official code's gates)."""
    return (F.relu(scores) if relu else scores).softmax(dim=-1)


class HinetSei(nn.Module):
    """M independent sub-expert integration (SEI) modules, run as one batched call.

    Each module m has N sub-expert MLPs and a gate softmax(ReLU(W_m x)) over them;
    its output is the gate-weighted sum of its sub-experts.
    """

    def __init__(
        self, n_modules: int, d_in: int, n_sub: int, dims: tuple[int, ...], dropout: float, relu: bool, norm: str
    ) -> None:
        super().__init__()
        self.n_modules, self.n_sub, self.relu = n_modules, n_sub, relu
        self.subexperts = ParallelMLP(n_modules * n_sub, [d_in, *dims], dropout=dropout, norm=norm)
        self.gates = nn.Linear(d_in, n_modules * n_sub)
        self.out_dim = dims[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x `(B, d_in)` → one output per module `(B, M, D)`."""
        subs = self.subexperts(x).unflatten(1, (self.n_modules, self.n_sub))  # (B, M, N, D)
        gates = _gate(self.gates(x).unflatten(1, (self.n_modules, self.n_sub)), self.relu)  # (B, M, N)
        return torch.einsum("bmn,bmnd->bmd", gates, subs)  # (B, M, D)


class HinetScenarioAttention(nn.Module):
    """SAN: weights over the S scenario experts from the scenario embedding, own scenario zeroed."""

    def __init__(self, n_scenarios: int, emb_dim: int, dims: tuple[int, ...], relu_all: bool, renorm: bool):
        super().__init__()
        self.renorm = renorm
        self.embedding = nn.Embedding(n_scenarios, emb_dim)
        self.mlp = MLP([emb_dim, *dims, n_scenarios], activate_last=relu_all)  # code: ReLU on every layer
        if not relu_all:  # a 1-unit layer stays linear (Identity keeps the parameter names)
            for i in range(len(self.mlp) - 2):
                if isinstance(self.mlp[i], nn.Linear) and self.mlp[i].out_features == 1:
                    self.mlp[i + 1] = nn.Identity()

    def weights(self, scenario: torch.Tensor) -> torch.Tensor:
        """scenario `(B,)` → weights `(B, S)`: softmax over S, then a_{s(i)} := 0 (renormalised if asked)."""
        probs = self.mlp(self.embedding(scenario)).softmax(dim=-1)  # (B, S)
        others = 1.0 - F.one_hot(scenario, probs.shape[1]).to(probs.dtype)  # (B, S)
        weights = probs * others  # (B, S)
        if self.renorm:
            weights = weights / weights.sum(-1, keepdim=True).clamp(min=torch.finfo(weights.dtype).tiny)  # (B, S)
        return weights

    def forward(self, scenario: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        """scenario `(B,)`, scenario experts `(B, S, D)` → S_san `(B, D)`."""
        return torch.einsum("bs,bsd->bd", self.weights(scenario), experts)  # (B, D)


class HinetCgc(nn.Module):
    """One CGC level: P slots, each with its own experts plus the shared ones, its gate and its tower.

    The slots are scenario-major (slot s·T' + t) over `n_groups` scenarios (1 when they are tasks only).
    """

    def __init__(self, n_slots: int, n_groups: int, d_in: int, config: HinetConfig) -> None:
        super().__init__()
        self.n_slots, self.n_own, self.n_groups = n_slots, config.exp_per_slot, n_groups
        self.n_experts = config.exp_per_slot + config.n_shared  # E: what each slot's gate mixes
        self.summed, self.relu = config.cgc_gate == "sum", config.cgc_gate == "relu_softmax"
        dims, drop, norm = [d_in, *config.expert_dims], config.dropout, config.norm
        self.experts = ParallelMLP(n_slots * config.exp_per_slot, dims, dropout=drop, norm=norm)
        self.shared = ParallelMLP(config.n_shared, dims, dropout=drop, norm=norm) if config.n_shared else None
        self.gates = nn.Linear(d_in, n_slots * self.n_experts)
        tower_dims = [config.expert_dims[-1], *config.tower_dims, 1]
        self.towers = ParallelMLP(n_slots, tower_dims, dropout=drop, activate_last=False, norm=norm)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        """c `(B, d_in)` → one logit per slot `(B, P)`."""
        experts = self.experts(c).unflatten(1, (self.n_slots, self.n_own))  # (B, P, E_own, D)
        if self.shared is not None:
            shared = self.shared(c).unsqueeze(1).expand(-1, self.n_slots, -1, -1)  # (B, P, E_sh, D)
            experts = torch.cat([experts, shared], dim=2)  # (B, P, E, D)
        if self.summed:  # the official code's effective gate: every weight 1
            mixed = experts.sum(dim=2)  # (B, P, D)
        else:
            gates = _gate(self.gates(c).unflatten(1, (self.n_slots, self.n_experts)), self.relu)  # (B, P, E)
            mixed = torch.einsum("bpe,bped->bpd", gates, experts)  # (B, P, D)
        return self.towers(mixed).squeeze(-1)  # (B, P, 1) → (B, P)

    def forward_own(self, c: torch.Tensor, scenario: torch.Tensor) -> torch.Tensor:
        """c `(B, d_in)`, scenario `(B,)` → the logits of the row's own scenario slots only `(B, T')`.

        The same values as `forward(c)` read at slots s·T' … s·T' + T' − 1, computing only those.
        """
        B, n_per = c.shape[0], self.n_slots // self.n_groups  # n_per = T' slots per scenario
        chunks = ScenarioChunks(scenario, self.n_groups)
        own = torch.arange(n_per * self.n_own, device=c.device)  # a scenario's experts, slot-major
        index = chunks.owner.unsqueeze(1) * (n_per * self.n_own) + own  # (K, T'·E_own)
        experts = run_networks(self.experts, chunks.pad(c), index)  # (K, T'·E_own, c, D)
        experts = chunks.unpad(experts.transpose(1, 2)).unflatten(1, (n_per, self.n_own))  # (B, T', E_own, D)
        if self.shared is not None:
            shared = self.shared(c).unsqueeze(1).expand(-1, n_per, -1, -1)  # (B, T', E_sh, D)
            experts = torch.cat([experts, shared], dim=2)  # (B, T', E, D)
        if self.summed:
            mixed = experts.sum(dim=2)  # (B, T', D)
        else:
            scores = self.gates(c).view(B, self.n_groups, n_per, self.n_experts)  # (B, S, T', E)
            scores = scores[torch.arange(B, device=c.device), scenario]  # (B, T', E)
            mixed = torch.einsum("bpe,bped->bpd", _gate(scores, self.relu), experts)  # (B, T', D)
        towers = torch.arange(n_per, device=c.device)  # a scenario's towers
        index = chunks.owner.unsqueeze(1) * n_per + towers  # (K, T')
        logits = run_networks(self.towers, chunks.pad(mixed).transpose(1, 2), index)  # (K, T', c, 1)
        return chunks.unpad(logits.squeeze(-1).transpose(1, 2))  # (K, c, T') → (B, T')


class Hinet(MsmtModel):
    """Embeddings → scenario extraction (shared SEI, S scenario SEIs, SAN) → CGC → heads.

    Example::

        model = Hinet(spec, HinetConfig(head_mode="task"))
        logits = model(batch)  # (B, T)
    """

    Config = HinetConfig

    def __init__(self, spec: FeatureSpec, config: HinetConfig) -> None:
        super().__init__(spec, config)
        self.n_scenarios = spec.n_scenarios
        self.embedding = FeatureEmbedding(spec, config.emb_dim)
        keep = list(range(self.embedding.n_fields))
        if not config.scenario_in_input and spec.scenario_field in spec.sparse_fields:
            keep.remove(spec.sparse_fields.index(spec.scenario_field))
        if not keep:
            raise ValueError("HiNet needs at least one input field besides the scenario id")
        self.register_buffer("input_fields", torch.tensor(keep), persistent=False)
        d_in = len(keep) * config.emb_dim
        self.input_norm = nn.BatchNorm1d(d_in) if config.input_norm == "batchnorm" else nn.Identity()
        # module 0: scenario-shared SEI; module 1 + j: scenario j's SEI
        self.sei = HinetSei(
            1 + self.n_scenarios, d_in, config.n_sub, config.sub_dims, config.sei_dropout, config.gate_relu, config.norm
        )
        self.san = HinetScenarioAttention(
            self.n_scenarios, config.san_emb_dim, config.san_dims, config.san_relu_all, config.san_renorm
        )
        n_groups = self.n_scenarios if config.head_mode == "scenario_task" else 1
        self.n_slots = n_groups * self.n_tasks
        self.cgc = HinetCgc(self.n_slots, n_groups, 3 * self.sei.out_dim, config)

    def extract_scenarios(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """batch → scenario extraction output C = [S_san; S_cur; S_sh] `(B, 3D)`."""
        fields = self.embedding(batch).index_select(1, self.input_fields)  # (B, F', k)
        x = self.input_norm(fields.flatten(1))  # (B, F'*k)
        scenario = batch["scenario"]  # (B,)
        modules = self.sei(x)  # (B, 1+S, D)
        shared, experts = modules[:, 0], modules[:, 1:]  # (B, D), (B, S, D)
        current = experts[torch.arange(experts.shape[0], device=experts.device), scenario]  # (B, D)
        return torch.cat([self.san(scenario, experts), current, shared], dim=-1)  # (B, 3D)

    def head_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """batch → every head's logits: `(B, S, T)` in "scenario_task" mode, `(B, T)` in "task" mode."""
        slots = self.cgc(self.extract_scenarios(batch))  # (B, P)
        if self.config.head_mode == "scenario_task":
            return slots.unflatten(1, (self.n_scenarios, self.n_tasks))  # (B, S, T)
        return slots  # (B, T)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """batch (see `TensorData.batches`) → logits `(B, T)`, each row from its own scenario's heads."""
        if self.config.head_mode == "task":
            return self.head_logits(batch)  # (B, T)
        if not self.config.unmasked_loss and runs_subsets(self.cgc.experts):  # only the own T slots are read
            return self.cgc.forward_own(self.extract_scenarios(batch), batch["scenario"])  # (B, T)
        heads = self.head_logits(batch)  # (B, S, T)
        index = batch["scenario"].view(-1, 1, 1).expand(-1, 1, self.n_tasks)  # (B, 1, T)
        logits = heads.gather(1, index).squeeze(1)  # (B, T)
        logits.hinet_heads = heads  # read back by extra_losses (the code's loss on every head)
        return logits

    def extra_losses(self, batch: dict[str, torch.Tensor], logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """With `unmasked_loss`: BCE(label 0) of the other scenarios' heads, as in the official code."""
        if not self.config.unmasked_loss:
            return {}
        heads = getattr(logits, "hinet_heads", None)
        if heads is None:
            heads = self.head_logits(batch)  # (B, S, T)
        others = 1.0 - F.one_hot(batch["scenario"], self.n_scenarios).to(heads.dtype)  # (B, S)
        bce = F.binary_cross_entropy_with_logits(heads, torch.zeros_like(heads), reduction="none")  # (B, S, T)
        mask = batch["label_mask"].to(heads.dtype)  # (B, T)
        per_task = torch.einsum("bst,bs,bt->t", bce, others, mask) / mask.sum(0).clamp(min=1)  # (T,)
        return {"hinet_other_heads": per_task.sum()}


MODEL = Hinet
DESCRIPTION = "HiNet (Zhou et al., ICDE 2023): SEI scenario experts + SAN, then CGC per (scenario, task) head"
