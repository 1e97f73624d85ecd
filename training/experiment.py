"""Train and score a zoo model on a table: what a daily run does to its training set, in one call.

No Airflow, Spark, Feast or MLflow: a data scientist comparing msmt's MMoE with another library's
on the same file needs the table, the model's name and the held-out day.

    import pyarrow.parquet as pq
    from training.experiment import train_and_score

    result = train_and_score(pq.read_table("training_set.parquet"), "mmoe", eval_ds="2026-01-05",
                             overrides={"epochs": 3, "n_experts": 8})
    for cell in result.cells:
        print(cell["scenario"], cell["task"], cell["auc"])

The table is a training set's layout (the samples' columns, the feature columns, a string `ds`);
another layout comes with its own `FeatureSpec` (`spec=`). Hyper-parameters resolve as in the
pipeline: the settings' defaults, then `training/configs/<model>.json`, then `overrides`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import torch
from torch import nn

from msmt.settings import Settings
from training import hparams
from training.data import FeatureSpec, default_spec, encode, read_training_set, split_by_day
from training.evaluate import score_cells
from training.models import build_model
from training.trainer import FitResult, fit
from training.worker import split_overrides


@dataclass
class Scored:
    model: nn.Module  # trained, in eval mode
    spec: FeatureSpec
    fitted: FitResult  # per-epoch losses (the held-out day's too), throughput
    cells: list[dict]  # per scenario × task: rows, positives, auc, logloss on the held-out day


def train_and_score(
    table: pa.Table | str,
    model: str,
    eval_ds: str,
    *,
    overrides: dict | None = None,
    scenarios: Sequence[str] | None = None,
    spec: FeatureSpec | None = None,
    settings: Settings | None = None,
) -> Scored:
    """Fit `model` on the days before `eval_ds` of `table` (or of the training set at that URI) and
    score it on `eval_ds`, per scenario × task; `scenarios` name the scenario ids in order."""
    settings = settings or Settings.from_env()
    if isinstance(table, str):
        table = read_training_set(settings, table)
    scenarios = tuple(scenarios or settings.scenarios)
    spec = spec or default_spec(len(scenarios), settings.tasks)
    _, merged = hparams.resolve(model, overrides)
    hparams.check_overrides(model, merged)
    train_cfg, model_overrides = split_overrides(settings, merged)
    train_table, eval_table = split_by_day(table, eval_ds)
    if train_table.num_rows == 0:
        raise ValueError(f"no training rows before {eval_ds}")
    train, held_out = encode(train_table, spec), encode(eval_table, spec)
    torch.manual_seed(train_cfg.seed)
    net = build_model(model, spec, **model_overrides)
    fitted = fit(net, train, held_out, train_cfg)
    return Scored(model=net, spec=spec, fitted=fitted, cells=score_cells(net, held_out, scenarios, spec.tasks))
