"""AITM: Adaptive Information Transfer Multi-task framework, all in this file.

Reference: D. Xi, Z. Chen, P. Yan, Y. Zhang, Y. Zhu, F. Zhuang, Y. Chen, "Modeling the
Sequential Dependence among Audience Multi-step Conversions with Multi-task Learning
in Targeted Display Advertising", KDD 2021 (arXiv 2105.08489,
https://arxiv.org/abs/2105.08489); official code github.com/xidongbo/AITM.

    q_t = tower_t(x)                               task t's own representation
    z_1 = q_1;  p_{t−1} = transfer_{t−1}(z_{t−1})  what step t−1 passes on
    z_t = AIT_t(p_{t−1}, q_t) = Σ_{u ∈ {p_{t−1}, q_t}} w_u · h3(u),
          w_u = softmax_u(⟨h1(u), h2(u)⟩ / √D)      (t ≥ 2)
    ŷ_t = σ(head_t(z_t))
    L_lc = α Σ_{t≥2} mean_i max(ŷ_{i,t} − ŷ_{i,t−1}, 0)   behavioural expectation calibrator

Information flows only forward along the funnel: step t reads step t−1 through the
transfer, never the reverse.

Notation: B batch, F fields, k embedding dim, T tasks (funnel steps, in `spec.tasks`
order, e.g. click → conversion), D tower width.

Resolutions (each a config flag unless noted):
- `tower_dims` = (128, 64, 32): the official code's per-task tower (ReLU after each layer,
  dropout from `dropout`); the towers share only the embeddings.
- `transfer_dims` = (): hidden widths of the transfer MLP before its final D-wide
  ReLU layer (official code: a single Dense(D, relu)).
- `ait_bias` = False: h1, h2, h3 are bias-free D×D maps as in the official code.
- `calibrator_weight` α = 0.6 (official code's default `--weight`); the mean runs over
  every row of the batch, as in the official code (it needs no label, so `label_mask`
  does not apply); with α = 0 `extra_losses` returns no term.
- (no flag) with T > 2 tasks each step t ≥ 2 has its own transfer and AIT unit, the
  paper's chain form for longer funnels (its credit-card funnel has several steps).
- (no flag) the scenario id is an ordinary input field.
Deviations: the official code applies the calibrator and BCE on probabilities; here the
trainer applies BCE-with-logits (the same loss, computed stably).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from training.data import FeatureSpec
from training.layers import MLP, FeatureEmbedding, ParallelMLP
from training.models.base import ModelConfig, MsmtModel


@dataclass
class AitmConfig(ModelConfig):
    tower_dims: tuple[int, ...] = (128, 64, 32)  # per-task tower widths; D = last (official code)
    transfer_dims: tuple[int, ...] = ()  # hidden widths of the transfer MLP, then a D-wide ReLU layer
    ait_bias: bool = False  # official code: h1, h2, h3 are plain D×D matrices
    calibrator_weight: float = 0.6  # α of the behavioural expectation calibrator (official default)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.tower_dims, self.transfer_dims = tuple(self.tower_dims), tuple(self.transfer_dims)
        if not self.tower_dims or any(d < 1 for d in self.tower_dims + self.transfer_dims):
            raise ValueError(f"bad widths: towers {self.tower_dims}, transfer {self.transfer_dims}")
        if self.calibrator_weight < 0:
            raise ValueError(f"calibrator_weight must be >= 0, got {self.calibrator_weight}")


class AitmAttention(nn.Module):
    """The AIT unit: attention over the two vectors {p_{t−1}, q_t}, each scored by ⟨h1(u), h2(u)⟩/√D."""

    def __init__(self, dim: int, bias: bool) -> None:
        super().__init__()
        self.dim = dim
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)  # h1, h2, h3 in one matmul

    def weights_and_values(self, p: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """p, q `(B, D)` → attention weights `(B, 2)` (p first, summing to 1) and values h3(u) `(B, 2, D)`."""
        u = torch.stack([p, q], dim=1)  # (B, 2, D)
        h1, h2, h3 = self.qkv(u).split(self.dim, dim=-1)  # 3 × (B, 2, D)
        w = ((h1 * h2).sum(-1) / math.sqrt(self.dim)).softmax(dim=1)  # (B, 2)
        return w, h3

    def forward(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """p = transferred p_{t−1} `(B, D)`, q = q_t `(B, D)` → z_t `(B, D)`."""
        w, h3 = self.weights_and_values(p, q)
        return torch.einsum("bu,bud->bd", w, h3)  # (B, D)


class Aitm(MsmtModel):
    """Embeddings → T towers q_t → chain of transfer + AIT units → T heads.

    Example::

        model = Aitm(spec, AitmConfig())
        logits = model(batch)  # (B, T)
        losses = model.extra_losses(batch, logits)  # {"calibrator": scalar}
    """

    Config = AitmConfig

    def __init__(self, spec: FeatureSpec, config: AitmConfig) -> None:
        super().__init__(spec, config)
        self.embedding = FeatureEmbedding(spec, config.emb_dim)
        D = config.tower_dims[-1]
        self.towers = ParallelMLP(
            self.n_tasks, [self.embedding.out_dim, *config.tower_dims], dropout=config.dropout, norm=config.norm
        )
        # transfers[t-1] and ait[t-1] belong to step t (t = 1..T-1, 0-based): they feed task t from task t-1
        self.transfers = nn.ModuleList(
            MLP([D, *config.transfer_dims, D], dropout=config.dropout, norm=config.norm)
            for _ in range(self.n_tasks - 1)
        )
        self.ait = nn.ModuleList(AitmAttention(D, config.ait_bias) for _ in range(self.n_tasks - 1))
        self.heads = ParallelMLP(self.n_tasks, [D, 1], activate_last=False)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """batch (see `TensorData.batches`) → logits `(B, T)`."""
        x = self.embedding.flat(batch)  # (B, F*k)
        q = self.towers(x)  # (B, T, D)
        z = [q[:, 0]]  # z_1 = q_1, (B, D)
        for t in range(1, self.n_tasks):
            p = self.transfers[t - 1](z[t - 1])  # (B, D): p_{t−1}
            z.append(self.ait[t - 1](p, q[:, t]))  # (B, D): z_t
        return self.heads(torch.stack(z, dim=1)).squeeze(-1)  # (B, T, D) → (B, T, 1) → (B, T)

    def extra_losses(self, batch: dict[str, torch.Tensor], logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"calibrator": α Σ_{t≥2} mean_i max(ŷ_t − ŷ_{t−1}, 0)} from the forward's logits `(B, T)`."""
        if self.config.calibrator_weight == 0 or self.n_tasks < 2:
            return {}
        probs = logits.sigmoid()  # (B, T)
        excess = (probs[:, 1:] - probs[:, :-1]).clamp(min=0)  # (B, T-1)
        return {"calibrator": self.config.calibrator_weight * excess.mean(0).sum()}


MODEL = Aitm
DESCRIPTION = "AITM (Xi et al., KDD 2021): attention-based information transfer along the click → conversion funnel"
