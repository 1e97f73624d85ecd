"""Train one zoo model on a training-set partition and record everything in one MLflow run.

The run holds what a reviewer needs to trust (or reproduce) the model: params
(model, its config, the optimiser, train days and rows), per-epoch losses, per
scenario × task AUC / logloss on the held-out day with a chart, the training
partition as a dataset input whose digest is a hash of the partition's files
(same bytes ⇔ same digest), and the pyfunc model, registered as a new version
of `settings.registered_model` tagged `status=challenger`. Only the gate
(training.promotion) moves the `champion` alias.

Training itself runs in its own process group (training.worker under torchrun,
`settings.train_workers` ranks) or, in the cluster profile, in a GPU pod that
wrote its outputs to `trained_dir` beforehand; this process only logs.
"""

from __future__ import annotations

import hashlib
import math
import tempfile
import warnings
from dataclasses import asdict

import mlflow
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import torch
from matplotlib.figure import Figure
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.models import infer_signature

from msmt.settings import Settings
from training import hparams
from training.data import default_spec, encode, read_held_out, rows_per_day
from training.models import build_model
from training.pyfunc import log_ranker
from training.trainer import score_cells
from training.worker import launch, read_metrics, read_state_dict, split_overrides

CELL_METRICS = ("auc", "logloss")


def train_model(
    settings: Settings,
    training_set_uri: str,
    eval_ds: str,
    model_name: str | None = None,
    overrides: dict | None = None,
    run_name: str | None = None,
    trained_dir: str | None = None,
) -> dict:
    """Fit on the days before `eval_ds`, evaluate on `eval_ds`, log and register the model.

    `overrides` mixes `TrainConfig` fields (epochs, batch_size, lr, …) and fields
    of the model's config (n_experts, emb_dim, …); each goes where it belongs.
    Returns plain values for XCom: run_id, model_uri (`models:/<name>/<version>`),
    version and the held-out cell metrics. `trained_dir`: outputs of a worker that
    already ran (the cluster's pod); None runs it here through torchrun.
    """
    model_name = model_name or settings.model_name
    hparams_version, overrides = hparams.resolve(model_name, overrides)
    train_cfg, model_overrides = split_overrides(settings, overrides)
    days = rows_per_day(training_set_uri)  # the parent reads the held-out day only: the worker trains
    train_days = sorted(day for day in days if day < eval_ds)
    if not train_days:
        raise ValueError(f"no training rows before {eval_ds} in {training_set_uri}")
    eval_table = read_held_out(training_set_uri, eval_ds)
    spec = default_spec(len(settings.scenarios), settings.tasks)
    eval_data = encode(eval_table, spec)  # the worker encodes the training days itself
    torch.manual_seed(train_cfg.seed)
    model = build_model(model_name, spec, **model_overrides)
    model_config = asdict(model.config)

    settings.configure_mlflow()
    with mlflow.start_run(run_name=run_name or f"{model_name}-{eval_ds}") as run:
        mlflow.set_tags({"msmt.model": model_name, "msmt.eval_ds": eval_ds})
        mlflow.log_params(
            {
                "model": model_name,
                "hparams.version": hparams_version,  # training/configs/<model>.json
                **{f"model.{k}": v for k, v in model_config.items()},
                **{f"train.{k}": v for k, v in asdict(train_cfg).items()},
                "train_days": ",".join(train_days),
                "train_rows": sum(days[day] for day in train_days),
                "eval_ds": eval_ds,
                "eval_rows": eval_table.num_rows,
                "attribution_window_days": settings.attribution_window_days,  # labels matured this long
                "scenarios": ",".join(settings.scenarios),
                "training_set_uri": training_set_uri,
            }
        )
        mlflow.log_input(_training_dataset(training_set_uri, eval_table), context="training")
        with tempfile.TemporaryDirectory(prefix="msmt-train-") as scratch:
            out = trained_dir or scratch
            if trained_dir is None:
                workers = settings.train_workers
                launch(settings, training_set_uri, eval_ds, model_name, out, overrides, workers)
            fitted = read_metrics(out)
            model.load_state_dict(read_state_dict(out))
        for step, epoch_metrics in enumerate(fitted["history"]):
            mlflow.log_metrics(epoch_metrics, step=step)
        mlflow.set_tags({"msmt.device": fitted["device"], "msmt.train_workers": fitted["world_size"]})

        cells = score_cells(model, eval_data, settings.scenarios, settings.tasks)
        metrics = {
            f"{name}.{c['scenario']}.{c['task']}": c[name]
            for c in cells
            for name in CELL_METRICS
            if math.isfinite(c[name])  # a cell with one label class has no AUC
        }
        mlflow.log_metrics(metrics)
        mlflow.log_table(pd.DataFrame(cells), "eval/cells.json")
        mlflow.log_figure(_auc_chart(cells, eval_ds), "eval/auc_by_cell.png")

        info = log_ranker(model, model_name, model_config, spec, eval_table.slice(0, 5).to_pandas())
        version = mlflow.register_model(
            info.model_uri,
            settings.registered_model,
            tags={"model": model_name, "eval_ds": eval_ds, "run_id": run.info.run_id, "status": "challenger"},
        )
    return {
        "run_id": run.info.run_id,
        "model_uri": f"models:/{settings.registered_model}/{version.version}",
        "version": str(version.version),
        "metrics": metrics,
    }


def partition_digest(uri: str) -> str:
    """Content hash of every file under a partition (paths, sizes, bytes), local or s3://.

    32 hex characters: MLflow stores dataset digests in a 36-character column.
    """
    fs, root = pafs.FileSystem.from_uri(uri)
    files = sorted(
        (info for info in fs.get_file_info(pafs.FileSelector(root, recursive=True)) if info.is_file),
        key=lambda info: info.path,
    )
    if not files:
        raise FileNotFoundError(f"no files under {uri}")
    digest = hashlib.blake2b(digest_size=16)
    for info in files:
        digest.update(f"{info.path[len(root) :]}\0{info.size}\0".encode())
        with fs.open_input_stream(info.path) as stream:
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def _training_dataset(uri: str, table: pa.Table) -> MetaDataset:
    """The partition as an MLflow dataset: source URI, content digest, column schema (from `table`,
    any of its days; no data copy)."""
    with warnings.catch_warnings():  # MLflow registers its local source twice; the int hint is for serving
        warnings.filterwarnings("ignore", message="The specified dataset source")
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
        source = resolve_dataset_source(uri)
        schema = infer_signature(table.slice(0, 100).to_pandas()).inputs
    name = f"training_set/{uri.rstrip('/').rsplit('/', 1)[-1]}"
    return MetaDataset(source, name=name, digest=partition_digest(uri), schema=schema)


def _auc_chart(cells: list[dict], eval_ds: str) -> Figure:
    """Grouped bars: AUC per scenario (with its held-out rows), one bar per task; pyplot-free, no global state."""
    scenarios = list(dict.fromkeys(c["scenario"] for c in cells))
    tasks = list(dict.fromkeys(c["task"] for c in cells))
    by_cell = {(c["scenario"], c["task"]): c for c in cells}
    fig = Figure(figsize=(1.6 + 1.4 * len(scenarios), 3.6))
    ax = fig.add_subplot()
    width = 0.8 / len(tasks)
    for t, task in enumerate(tasks):
        offset = (t - (len(tasks) - 1) / 2) * width
        values = [by_cell[s, task]["auc"] for s in scenarios]
        bars = ax.bar([i + offset for i in range(len(scenarios))], values, width, label=task)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(scenarios)), [f"{s}\n{by_cell[s, tasks[0]]['rows']} rows" for s in scenarios])
    ax.set_ylim(0.4, 1.1)  # headroom for the legend
    ax.set_yticks([0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    ax.set_ylabel("AUC")
    ax.set_title(f"held-out AUC per scenario × task ({eval_ds})")
    ax.legend(loc="upper center", ncols=len(tasks), fontsize=8, frameon=False)
    fig.tight_layout()
    return fig
