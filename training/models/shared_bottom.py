"""Shared-Bottom multi-task network, all in this file.

Reference: R. Caruana, "Multitask Learning", Machine Learning 28, 1997
(https://doi.org/10.1023/A:1007379606734): hard parameter sharing, one bottom
network shared by every task, one tower per task.

Notation: B batch, F fields, k embedding dim, T tasks, D bottom width.
The scenario id is one of the F fields, so the bottom sees which scenario a row is from.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from training.data import FeatureSpec
from training.layers import MLP, FeatureEmbedding, ParallelMLP
from training.models.base import ModelConfig, MsmtModel


@dataclass
class SharedBottomConfig(ModelConfig):
    bottom_dims: tuple[int, ...] = (256, 128)  # hidden widths of the shared bottom; D = last
    tower_dims: tuple[int, ...] = (64,)  # hidden widths of each task tower, then Linear → 1

    def __post_init__(self) -> None:
        super().__post_init__()
        self.bottom_dims, self.tower_dims = tuple(self.bottom_dims), tuple(self.tower_dims)
        if not self.bottom_dims or any(d < 1 for d in self.bottom_dims + self.tower_dims):
            raise ValueError(f"bad widths: bottom {self.bottom_dims}, towers {self.tower_dims}")


class SharedBottom(MsmtModel):
    """Embeddings → shared bottom MLP → T towers (batched as one ParallelMLP).

    Example::

        model = SharedBottom(spec, SharedBottomConfig(emb_dim=8))
        logits = model(batch)  # (B, T)
    """

    Config = SharedBottomConfig

    def __init__(self, spec: FeatureSpec, config: SharedBottomConfig) -> None:
        super().__init__(spec, config)
        self.embedding = FeatureEmbedding(spec, config.emb_dim)
        self.bottom = MLP([self.embedding.out_dim, *config.bottom_dims], dropout=config.dropout, norm=config.norm)
        self.towers = ParallelMLP(
            self.n_tasks,
            [config.bottom_dims[-1], *config.tower_dims, 1],
            dropout=config.dropout,
            activate_last=False,
            norm=config.norm,
        )

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """batch (see `TensorData.batches`) → logits `(B, T)`."""
        x = self.embedding.flat(batch)  # (B, F*k)
        h = self.bottom(x)  # (B, D)
        return self.towers(h).squeeze(-1)  # (B, T, 1) → (B, T)


MODEL = SharedBottom
DESCRIPTION = "Shared-Bottom (Caruana 1997): one shared MLP, one tower per task"
