"""The model zoo: every module of this package is one model, registered by its file name.

Add a model: write `training/models/<name>.py` defining `MODEL` (the `MsmtModel`
subclass, whose `Config` is its config dataclass) and `DESCRIPTION` (one line:
paper, venue, idea). Discovery needs no list to edit, and `training.catalog` reads
the same file names for the DAG's param schema without importing torch.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, fields

from training.data import FeatureSpec
from training.models.base import ModelConfig, MsmtModel

_NOT_MODELS = {"base"}


@dataclass(frozen=True)
class ModelEntry:
    model: type[MsmtModel]
    config: type[ModelConfig]
    description: str


def _discover() -> dict[str, ModelEntry]:
    entries = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name in _NOT_MODELS:
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        entries[info.name] = ModelEntry(module.MODEL, module.MODEL.Config, module.DESCRIPTION)
    return entries


REGISTRY: dict[str, ModelEntry] = _discover()


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
