"""MMoE: Multi-gate Mixture-of-Experts, all in this file.

Reference: J. Ma, Z. Zhao, X. Yi, J. Chen, L. Hong, E. H. Chi, "Modeling Task
Relationships in Multi-task Learning with Multi-gate Mixture-of-Experts", KDD 2018
(https://dl.acm.org/doi/10.1145/3219819.3220007).

    f_t(x) = Σ_e g_t(x)_e · expert_e(x),   g_t(x) = softmax(W_t x),   y_t = tower_t(f_t(x))

Notation: B batch, F fields, k embedding dim, E experts, T tasks, D expert output width.

Resolutions (not fixed by the paper, each a config flag): experts are ReLU MLPs
(`expert_dims`); gates are one linear layer on the same input as the experts,
without bias by default as in the paper's formula (`gate_bias`); the scenario id
is an ordinary input field, so experts and gates both see the scenario.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from training.data import FeatureSpec
from training.layers import FeatureEmbedding, ParallelMLP
from training.models.base import ModelConfig, MsmtModel


@dataclass
class MmoeConfig(ModelConfig):
    n_experts: int = 4  # E
    expert_dims: tuple[int, ...] = (128, 64)  # hidden widths of each expert; D = last
    tower_dims: tuple[int, ...] = (32,)  # hidden widths of each task tower, then Linear → 1
    gate_bias: bool = False  # paper: g_t(x) = softmax(W_t x), no bias

    def __post_init__(self) -> None:
        super().__post_init__()
        self.expert_dims, self.tower_dims = tuple(self.expert_dims), tuple(self.tower_dims)
        if self.n_experts < 1:
            raise ValueError(f"n_experts must be >= 1, got {self.n_experts}")
        if not self.expert_dims or any(d < 1 for d in self.expert_dims + self.tower_dims):
            raise ValueError(f"bad widths: experts {self.expert_dims}, towers {self.tower_dims}")


class MmoeGates(nn.Module):
    """One softmax gate per task over the E experts, all T computed by one Linear."""

    def __init__(self, d_in: int, n_experts: int, n_tasks: int, bias: bool) -> None:
        super().__init__()
        self.n_experts, self.n_tasks = n_experts, n_tasks
        self.linear = nn.Linear(d_in, n_tasks * n_experts, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x `(B, d_in)` → gate weights `(B, T, E)`, each row summing to 1."""
        scores = self.linear(x).view(-1, self.n_tasks, self.n_experts)  # (B, T, E)
        return scores.softmax(dim=-1)  # (B, T, E)


class Mmoe(MsmtModel):
    """Embeddings → E experts → per-task gated mixture → T towers.

    Example::

        model = Mmoe(spec, MmoeConfig(n_experts=8))
        logits = model(batch)  # (B, T)
    """

    Config = MmoeConfig

    def __init__(self, spec: FeatureSpec, config: MmoeConfig) -> None:
        super().__init__(spec, config)
        self.embedding = FeatureEmbedding(spec, config.emb_dim)
        d_in = self.embedding.out_dim
        self.experts = ParallelMLP(
            config.n_experts, [d_in, *config.expert_dims], dropout=config.dropout, norm=config.norm
        )
        self.gates = MmoeGates(d_in, config.n_experts, self.n_tasks, config.gate_bias)
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
        experts = self.experts(x)  # (B, E, D)
        gates = self.gates(x)  # (B, T, E)
        mixed = torch.einsum("bte,bed->btd", gates, experts)  # (B, T, D)
        return self.towers(mixed).squeeze(-1)  # (B, T, 1) → (B, T)


MODEL = Mmoe
DESCRIPTION = "MMoE (Ma et al., KDD 2018): shared experts, one softmax gate per task"
