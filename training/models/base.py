"""The one shallow base every zoo model shares: spec + config in, logits out, one loss hook.

Contract (see DESIGN.md "Model contract"):
- `Model(spec, config)` builds everything from the `FeatureSpec` and the model's
  own `Config` dataclass (a subclass of `ModelConfig`, named `<Model>Config`);
- `forward(batch) -> logits (B, T)` in `spec.tasks` order, no sigmoid, no loss;
- `extra_losses(batch, logits) -> {name: scalar}`: losses the model needs beyond
  the trainer's masked per-task BCE (regularisers, distillation, listwise terms).
  The trainer adds every value to the BCE total and logs each by name; the
  default is none. Keep task weighting and sampling in the trainer;
- `compile_blocker() -> str | None`: why the configuration cannot run under
  `torch.compile` (the trainer refuses `compile` with that reason), None by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from training.data import FeatureSpec
from training.layers import NORMS


@dataclass
class ModelConfig:
    """Fields every model has; each model's config extends it."""

    emb_dim: int = 16  # k: embedding size of every field
    dropout: float = 0.0
    norm: str = "none"  # "none" | "batch" | "layer" inside every MLP block (experts, bottoms, towers, FFNs)

    def __post_init__(self) -> None:
        if self.emb_dim < 1:
            raise ValueError(f"emb_dim must be >= 1, got {self.emb_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")


class MsmtModel(nn.Module):
    """Holds `spec` and `config` so a saved model can be rebuilt from its logged dicts."""

    Config: ClassVar[type[ModelConfig]] = ModelConfig

    def __init__(self, spec: FeatureSpec, config: ModelConfig) -> None:
        super().__init__()
        if not isinstance(config, self.Config):
            raise ValueError(f"{type(self).__name__} needs a {self.Config.__name__}, got {type(config).__name__}")
        self.spec, self.config = spec, config
        self.n_tasks = len(spec.tasks)

    def extra_losses(self, batch: dict[str, torch.Tensor], logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named scalar losses added to the trainer's BCE; none by default."""
        return {}

    def compile_blocker(self) -> str | None:
        """Why this configuration cannot train under `torch.compile`, or None (the default) when it can."""
        return None
