"""Per-model default hyper-parameters, versioned in `training/configs/<model>.json`.

Each file holds `{"version": N, "hparams": {...}}`: trainer fields (lr, batch_size,
schedule, …) and model config fields that msmt runs with by default, on top of
the paper defaults in each model's `Config`. Precedence, lowest first: settings
(`MSMT_EPOCHS`, …) < the model's file < explicit overrides (DAG param `overrides`,
`msmt train --set k=v`, the MLproject's `overrides`). Bump `version` when a file
changes: it is logged with every run (`hparams.version`).
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

from msmt.errors import StopRun

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def load(model_name: str) -> tuple[int, dict]:
    """(version, hparams) of a model's file; a model without a file has version 0 and none."""
    path = CONFIG_DIR / f"{model_name}.json"
    if not path.exists():
        return 0, {}
    data = json.loads(path.read_text())
    return int(data["version"]), dict(data["hparams"])


def resolve(model_name: str, overrides: dict | None) -> tuple[int, dict]:
    """The file's hyper-parameters with `overrides` on top, and the file's version."""
    version, hparams = load(model_name)
    return version, {**hparams, **(overrides or {})}


_SCALARS = {"int": int, "float": (int, float), "bool": bool, "str": str}


class OverrideError(StopRun, ValueError):
    """An override names no field of the trainer or the model, or holds a value they refuse."""


def check_overrides(model_name: str, overrides: dict) -> None:
    """Refuse unknown or invalid `overrides` for `model_name` before any work is done.

    Keys are `TrainConfig` fields or fields of the model's config; both are built
    once with the values, so a bad value fails here too, not after the Spark steps.
    """
    from training.models import REGISTRY
    from training.trainer import TrainConfig

    if model_name not in REGISTRY:
        raise OverrideError(f"unknown model {model_name!r}; the zoo has: {', '.join(sorted(REGISTRY))}")
    train_keys = {f.name for f in fields(TrainConfig)}
    model_keys = {f.name for f in fields(REGISTRY[model_name].config)}
    unknown = sorted(set(overrides) - train_keys - model_keys)
    if unknown:
        raise OverrideError(
            f"unknown override(s) {', '.join(unknown)} for {model_name}; valid keys: trainer "
            f"{', '.join(sorted(train_keys))}; {model_name} {', '.join(sorted(model_keys))}"
        )
    types = {f.name: str(f.type) for f in (*fields(TrainConfig), *fields(REGISTRY[model_name].config))}
    for key, value in overrides.items():
        expected = _SCALARS.get(types[key])
        if expected and (not isinstance(value, expected) or (isinstance(value, bool) and types[key] != "bool")):
            raise OverrideError(f"override {key}={value!r} for {model_name}: expected {types[key]}")
    _, resolved = resolve(model_name, overrides)
    try:
        TrainConfig(**{k: v for k, v in resolved.items() if k in train_keys})
        REGISTRY[model_name].config(**{k: v for k, v in resolved.items() if k not in train_keys})
    except (TypeError, ValueError) as bad:
        raise OverrideError(f"invalid override for {model_name}: {bad}") from bad


def parse_assignments(items: list[str]) -> dict:
    """`["lr=0.001", "tower_dims=[64, 32]", "mixer=mhsa"]` → typed dict (JSON values, else strings)."""
    out: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected key=value, got {item!r}")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw.strip()
    return out
