"""Model names without importing torch: the DAG's param schema is built at parse time.

Each model is one file in `training/models/` named as it is registered
(tests check that the two lists agree).
"""

from __future__ import annotations

from msmt.settings import PROJECT_ROOT

MODELS_DIR = PROJECT_ROOT / "training" / "models"
_NOT_MODELS = {"__init__", "base"}


def model_names() -> list[str]:
    return sorted(p.stem for p in MODELS_DIR.glob("*.py") if p.stem not in _NOT_MODELS)
