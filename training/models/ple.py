"""PLE: Progressive Layered Extraction (stacked Customized Gate Control), all in this file.

Reference: H. Tang, J. Liu, M. Zhao, X. Gong, "Progressive Layered Extraction (PLE):
A Novel Multi-Task Learning (MTL) Model for Personalized Recommendations",
RecSys 2020 (https://doi.org/10.1145/3383313.3412236).

    level j, task k:  g^{k,j} = softmax(W^{k,j} g^{k,j-1}) · [E^j_{k,1..m_t}, E^j_{s,1..m_s}]
    level j, shared:  g^{s,j} = softmax(W^{s,j} g^{s,j-1}) · [E^j_{1..T,1..m_t}, E^j_{s,1..m_s}]  (non-final j)
    g^{k,0} = g^{s,0} = x,   y_k = tower_k(g^{k,N})

Task k's experts at level j read g^{k,j-1}; the shared experts read g^{s,j-1}. A
task gate selects only its own experts plus the shared ones (CGC); the shared gate
of a non-final level selects every expert of that level, which is how the tasks'
private experts feed the shared path of the next level.

Notation: B batch, F fields, k embedding dim, T tasks, N levels, m_t task-specific
experts per task, m_s shared experts, E = T·m_t + m_s experts per level, D expert width.

Resolutions (not fixed by the paper, each a config flag):
- `n_levels` = 2: the paper compares multi-level models as two-level ones; 1 gives CGC.
- `n_specific_experts` = `n_shared_experts` = 2 and `expert_dims` = (64,): sizes are
  dataset-specific in the paper; every level uses the same expert widths.
- experts are ReLU MLPs; gates are one linear layer, without bias by default as in the
  paper's formula `softmax(W x)` (`gate_bias`); `tower_dims` = (32,).
- the scenario id is an ordinary input field, so experts and gates both see the scenario.
Deviations: none known beyond the resolutions above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from training.data import FeatureSpec
from training.layers import FeatureEmbedding, ParallelMLP
from training.models.base import ModelConfig, MsmtModel


@dataclass
class PleConfig(ModelConfig):
    n_levels: int = 2  # N extraction layers; 1 = CGC
    n_specific_experts: int = 2  # m_t experts owned by each task, per level
    n_shared_experts: int = 2  # m_s shared experts, per level
    expert_dims: tuple[int, ...] = (64,)  # hidden widths of each expert; D = last (same at every level)
    tower_dims: tuple[int, ...] = (32,)  # hidden widths of each task tower, then Linear → 1
    gate_bias: bool = False  # paper: softmax(W x), no bias

    def __post_init__(self) -> None:
        super().__post_init__()
        self.expert_dims, self.tower_dims = tuple(self.expert_dims), tuple(self.tower_dims)
        if self.n_levels < 1:
            raise ValueError(f"n_levels must be >= 1, got {self.n_levels}")
        if self.n_specific_experts < 0 or self.n_shared_experts < 0:
            raise ValueError(f"expert counts must be >= 0, got {self.n_specific_experts}, {self.n_shared_experts}")
        if self.n_specific_experts + self.n_shared_experts < 1:
            raise ValueError("need at least one task-specific or shared expert")
        if not self.expert_dims or any(d < 1 for d in self.expert_dims + self.tower_dims):
            raise ValueError(f"bad widths: experts {self.expert_dims}, towers {self.tower_dims}")


class PleGates(nn.Module):
    """`n` independent softmax gates, each one Linear over its own input: `(B, n, d_in)` → `(B, n, E)`."""

    def __init__(self, n: int, d_in: int, n_experts: int, bias: bool) -> None:
        super().__init__()
        bound = 1 / math.sqrt(d_in)  # nn.Linear's default init, per gate
        self.weight = nn.Parameter(torch.empty(n, d_in, n_experts).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n, n_experts).uniform_(-bound, bound)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x `(B, n, d_in)` → gate weights `(B, n, E)`, each row summing to 1."""
        scores = torch.einsum("bni,nie->bne", x, self.weight)  # (B, n, E)
        if self.bias is not None:
            scores = scores + self.bias
        return scores.softmax(dim=-1)  # (B, n, E)


class PleExtractionLayer(nn.Module):
    """One CGC level: T·m_t task experts + m_s shared experts, T task gates, and (non-final) a shared gate.

    All E experts of the level run as one ParallelMLP; expert `i < T·m_t` belongs to
    task `i // m_t` and reads that task's input, the last m_s read the shared input.
    """

    def __init__(self, d_in: int, n_tasks: int, config: PleConfig, final: bool) -> None:
        super().__init__()
        self.n_tasks, self.final = n_tasks, final
        self.m_t, self.m_s = config.n_specific_experts, config.n_shared_experts
        self.n_experts = n_tasks * self.m_t + self.m_s
        self.d_out = config.expert_dims[-1]
        self.experts = ParallelMLP(
            self.n_experts, [d_in, *config.expert_dims], dropout=config.dropout, norm=config.norm
        )
        # input group of each expert: its task (0..T-1) or T for the shared experts
        owner = torch.cat([torch.arange(n_tasks).repeat_interleave(self.m_t), torch.full((self.m_s,), n_tasks)])
        self.register_buffer("owner", owner, persistent=False)  # (E,)
        self.task_gates = PleGates(n_tasks, d_in, self.m_t + self.m_s, config.gate_bias)
        self.shared_gate = None if final else PleGates(1, d_in, self.n_experts, config.gate_bias)

    def gates(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """inputs `(B, T+1, d_in)` → task gates `(B, T, m_t+m_s)`, shared gate `(B, E)` or None."""
        task = self.task_gates(inputs[:, : self.n_tasks])  # (B, T, m_t+m_s)
        shared = None if self.shared_gate is None else self.shared_gate(inputs[:, self.n_tasks :]).squeeze(1)  # (B, E)
        return task, shared

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """inputs `(B, T+1, d_in)` (T task inputs, then the shared one), or `(B, d_in)` read by all → `(B, T+1, D)`.

        The final level has no shared gate; its shared slot is returned as zeros.
        """
        B = inputs.shape[0]
        if inputs.dim() == 2:  # first level: every expert and gate reads x, one shared-input matmul
            experts = self.experts(inputs)  # (B, E, D)
            inputs = inputs.unsqueeze(1).expand(-1, self.n_tasks + 1, -1)  # (B, T+1, d_in), a view
        else:
            experts = self.experts(inputs[:, self.owner])  # (B, E, D)
        own = experts[:, : self.n_tasks * self.m_t].reshape(B, self.n_tasks, self.m_t, self.d_out)  # (B, T, m_t, D)
        shared = experts[:, self.n_tasks * self.m_t :].unsqueeze(1).expand(-1, self.n_tasks, -1, -1)  # (B, T, m_s, D)
        selected = torch.cat([own, shared], dim=2)  # (B, T, m_t+m_s, D): S^k per task
        task_gates, shared_gate = self.gates(inputs)
        task_out = torch.einsum("bte,bted->btd", task_gates, selected)  # (B, T, D)
        if shared_gate is None:
            shared_out = task_out.new_zeros(B, 1, self.d_out)  # (B, 1, D), unused after the last level
        else:
            shared_out = torch.einsum("be,bed->bd", shared_gate, experts).unsqueeze(1)  # (B, 1, D)
        return torch.cat([task_out, shared_out], dim=1)  # (B, T+1, D)


class Ple(MsmtModel):
    """Embeddings → N extraction layers (CGC) → T towers.

    Example::

        model = Ple(spec, PleConfig(n_levels=2))
        logits = model(batch)  # (B, T)
    """

    Config = PleConfig

    def __init__(self, spec: FeatureSpec, config: PleConfig) -> None:
        super().__init__(spec, config)
        self.embedding = FeatureEmbedding(spec, config.emb_dim)
        d_ins = [self.embedding.out_dim] + [config.expert_dims[-1]] * (config.n_levels - 1)
        self.levels = nn.ModuleList(
            PleExtractionLayer(d_in, self.n_tasks, config, final=j == config.n_levels - 1)
            for j, d_in in enumerate(d_ins)
        )
        self.towers = ParallelMLP(
            self.n_tasks,
            [config.expert_dims[-1], *config.tower_dims, 1],
            dropout=config.dropout,
            activate_last=False,
            norm=config.norm,
        )

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """batch (see `TensorData.batches`) → logits `(B, T)`."""
        x = self.embedding.flat(batch)  # (B, F*k)
        h = x  # (B, F*k): g^{k,0} = g^{s,0} = x
        for level in self.levels:
            h = level(h)  # (B, T+1, D)
        return self.towers(h[:, : self.n_tasks]).squeeze(-1)  # (B, T, 1) → (B, T)


MODEL = Ple
DESCRIPTION = "PLE (Tang et al., RecSys 2020): stacked CGC, task-specific + shared experts, customised gates"
