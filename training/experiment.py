"""Train and score a zoo model on a table: what a daily run does to its training set, in one call.

No Airflow, Spark, Feast or MLflow: a data scientist comparing msmt's MMoE with another library's
on the same file needs the table, the model's name and the held-out day.

    import pyarrow.parquet as pq
    from training.experiment import train_and_score

    result = train_and_score(pq.read_table("training_set.parquet"), "mmoe", eval_ds="2026-01-05",
                             overrides={"epochs": 3, "n_experts": 8})
    for cell in result.cells:
        print(cell["scenario"], cell["task"], cell["auc"])

The table is a training set's layout under a data contract (`contract=`, default MSMT_CONTRACT):
the samples' keys, the contract's input columns, the feature columns, a string `ds`. Any parquet
file with a `ds` column, the contract's columns, `scenario_id` and the task labels will do; feature
view columns the file lacks are unknown (null) inputs, named in a warning — or pass a `FeatureSpec`
(`spec=`).
Hyper-parameters resolve as in the pipeline: the settings' defaults, then
`training/configs/<model>.json`, then `overrides`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import torch
from torch import nn

from msmt.settings import Settings
from training import hparams
from training.data import (
    FeatureSpec,
    data_vocab_sizes,
    encode,
    read_training_set,
    spec_for,
    split_by_day,
    with_unknown_dense,
)
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
    contract: str | Path | None = None,
    spec: FeatureSpec | None = None,
    settings: Settings | None = None,
) -> Scored:
    """Fit `model` on the days before `eval_ds` of `table` (or of the training set at that URI) and
    score it on `eval_ds`, per scenario × task; `scenarios` name the scenario ids in order.

    The inputs are the data contract's (`contract`: a file; default the settings' MSMT_CONTRACT),
    sized from the training days as the pipeline sizes them; `spec` replaces them outright."""
    settings = settings or Settings.from_env()
    if contract is not None:
        settings = settings.with_(contract=str(contract))
    if isinstance(table, str):
        table = read_training_set(settings, table)
    scenarios = tuple(scenarios or settings.scenarios)
    _, merged = hparams.resolve(model, overrides)
    hparams.check_overrides(model, merged)
    train_cfg, model_overrides = split_overrides(settings, merged)
    train_table, eval_table = split_by_day(table, eval_ds)
    if train_table.num_rows == 0:
        raise ValueError(f"no training rows before {eval_ds}")
    sizes = data_vocab_sizes(settings.data_contract, train_table)
    spec = spec or spec_for(settings.data_contract, len(scenarios), sizes)
    train_table, eval_table = with_unknown_dense(train_table, spec), with_unknown_dense(eval_table, spec)
    train, held_out = encode(train_table, spec), encode(eval_table, spec)
    torch.manual_seed(train_cfg.seed)
    net = build_model(model, spec, **model_overrides)
    fitted = fit(net, train, held_out, train_cfg)
    return Scored(model=net, spec=spec, fitted=fitted, cells=score_cells(net, held_out, scenarios, spec.tasks))
