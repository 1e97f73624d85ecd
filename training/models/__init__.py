"""The model zoo: every model registered by name (one file per model).

Add a model: write `training/models/<name>.py` (see base.py for the contract),
add one `ModelEntry` below; tests/unit/test_models.py then covers it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from training.data import FeatureSpec
from training.models.base import ModelConfig, MsmtModel
from training.models.mmoe import Mmoe, MmoeConfig
from training.models.shared_bottom import SharedBottom, SharedBottomConfig


@dataclass(frozen=True)
class ModelEntry:
    model: type[MsmtModel]
    config: type[ModelConfig]
    description: str


REGISTRY: dict[str, ModelEntry] = {
    "shared_bottom": ModelEntry(
        SharedBottom, SharedBottomConfig, "Shared-Bottom (Caruana 1997): one shared MLP, one tower per task"
    ),
    "mmoe": ModelEntry(Mmoe, MmoeConfig, "MMoE (Ma et al., KDD 2018): shared experts, one softmax gate per task"),
}


def model_names() -> list[str]:
    return sorted(REGISTRY)


def build_model(name: str, spec: FeatureSpec, **overrides: object) -> MsmtModel:
    """Build a registered model; `overrides` are fields of its config (unknown ones are an error)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(model_names())}")
    entry = REGISTRY[name]
    known = {f.name for f in fields(entry.config)}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"{name} has no config field(s) {sorted(unknown)}; fields: {sorted(known)}")
    return entry.model(spec, entry.config(**overrides))
