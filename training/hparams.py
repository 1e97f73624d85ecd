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
from pathlib import Path

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
