"""Train one zoo model on a training-set partition and record everything in one MLflow run.

The run holds what a reviewer needs to trust (or reproduce) the model: params
(model, its config, the optimiser, train days and rows), per-epoch losses, per
scenario × task AUC / logloss on the held-out day with a chart, the training
partition as a dataset input whose digest is a hash of the partition's files
(same bytes ⇔ same digest), and the pyfunc model, registered as a new version
of `settings.registered_model` tagged `status=challenger` and
`gate.decision=pending`. Only the gate (training.promotion) judges it, and only a
version whose tags say it passed can become `champion`.

Training itself runs in its own process group (training.worker under torchrun,
`settings.train_workers` ranks) or, in the cluster profile, in a GPU pod that
wrote its outputs to `trained_dir` beforehand; this process only logs.

A kill -9 must not cost the day its progress nor leave a lie in MLflow. The
worker checkpoints to `<home>/checkpoints/<eval_ds>/<model>-<key>` (`checkpoint_dir`),
stable for the same model, configuration and training-set bytes, so a re-run of
the day resumes there (and trains afresh when any of them changed); the worker
removes it once its outputs are written. Each run is tagged with this process's
host and pid (`msmt.host`, `msmt.pid`), and a re-run of the day first marks FAILED
the runs of that day its host left RUNNING with a pid that no longer exists.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import socket
import tempfile
import warnings
from dataclasses import asdict

import mlflow
import pandas as pd
import pyarrow as pa
import torch
from matplotlib.figure import Figure
from mlflow import MlflowClient
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.models import infer_signature

from msmt import storage
from msmt.errors import StopRun
from msmt.settings import Settings
from training import hparams
from training.data import encode, encoding_report, read_held_out, rows_per_day, training_spec
from training.evaluate import score_cells
from training.models import build_model
from training.pyfunc import log_ranker
from training.tracking import configure_mlflow
from training.trainer import TrainConfig
from training.worker import launch, read_metrics, read_state_dict, split_overrides

CELL_METRICS = ("auc", "logloss")
HOST_TAG, PID_TAG = "msmt.host", "msmt.pid"
PENDING = {"gate.decision": "pending"}  # until training.promotion.evaluate_and_gate judges the version

log = logging.getLogger("msmt.training")


def train_model(
    settings: Settings,
    training_set_uri: str,
    eval_ds: str,
    model_name: str | None = None,
    overrides: dict | None = None,
    run_name: str | None = None,
    trained_dir: str | None = None,
    registered_model: str | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
) -> dict:
    """Fit on the days before `eval_ds`, evaluate on `eval_ds`, log and register the model.

    `overrides` mixes `TrainConfig` fields (epochs, batch_size, lr, …) and fields
    of the model's config (n_experts, emb_dim, …); each goes where it belongs.
    Returns plain values for XCom: run_id, model_uri (`models:/<name>/<version>`),
    version and the held-out cell metrics. `trained_dir`: outputs of a worker that
    already ran (the cluster's pod); None runs it here through torchrun. An experiment's replays
    register under their own `registered_model` and log as children of `parent_run_id`, with `tags`.
    """
    registered_model = registered_model or settings.registered_model
    model_name = model_name or settings.model_name
    hparams_version, overrides = hparams.resolve(model_name, overrides)
    train_cfg, model_overrides = split_overrides(settings, overrides)
    days = rows_per_day(settings, training_set_uri)  # the parent reads the held-out day only: the worker trains
    train_days = sorted(day for day in days if day < eval_ds)
    if not train_days:
        raise ValueError(f"no training rows before {eval_ds} in {training_set_uri}")
    eval_table = read_held_out(settings, training_set_uri, eval_ds)
    spec = training_spec(settings, training_set_uri, eval_ds)  # the worker derives the same
    encoding = encoding_report(eval_table, spec)
    check_encoding(settings, encoding, f"{training_set_uri} ds={eval_ds}")
    eval_data = encode(eval_table, spec)  # the worker encodes the training days itself
    torch.manual_seed(train_cfg.seed)
    model = build_model(model_name, spec, **model_overrides)
    model_config = asdict(model.config)
    digest = storage.partition_digest(settings, training_set_uri)
    ckpt = train_cfg.checkpoint_dir or checkpoint_dir(settings, eval_ds, model_name, train_cfg, model_config, digest)

    configure_mlflow(settings)
    fail_dead_runs(settings, eval_ds)
    with mlflow.start_run(run_name=run_name or f"{model_name}-{eval_ds}", parent_run_id=parent_run_id) as run:
        process = {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}  # see fail_dead_runs
        mlflow.set_tags({"msmt.model": model_name, "msmt.eval_ds": eval_ds, **process, **(tags or {})})
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
                "contract": settings.data_contract.name,
                "contract.digest": settings.data_contract.digest,  # the data contract the inputs were derived from
            }
        )
        mlflow.log_metrics({f"encoding.{f}.{kind}": v for f, shares in encoding.items() for kind, v in shares.items()})
        contract = {k: getattr(settings.data_contract, k) for k in ("name", "version", "digest", "source")}
        contract["feature_service"] = settings.data_contract.feature_service
        mlflow.log_dict({"contract": contract, "inputs": spec.inputs()}, "feature_spec.json")
        mlflow.log_input(_training_dataset(training_set_uri, eval_table, digest), context="training")
        with tempfile.TemporaryDirectory(prefix="msmt-train-") as scratch:
            out = trained_dir or scratch
            if trained_dir is None:
                mlflow.set_tag("msmt.checkpoint_dir", ckpt)
                launch(settings, training_set_uri, eval_ds, model_name, out, overrides, settings.train_workers, ckpt)
                with contextlib.suppress(OSError):  # the day's directory, once its last checkpoint is spent
                    (settings.home / "checkpoints" / eval_ds).rmdir()
            fitted = read_metrics(settings, out)
            model.load_state_dict(read_state_dict(settings, out))
        for step, epoch_metrics in enumerate(fitted["history"]):
            mlflow.log_metrics(epoch_metrics, step=step)
        mlflow.set_tags({"msmt.device": fitted["device"], "msmt.train_workers": fitted["world_size"]})
        if fitted.get("resumed_from"):
            mlflow.set_tag("msmt.resumed_from", json.dumps(fitted["resumed_from"]))

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
        version_tags = {"model": model_name, "eval_ds": eval_ds, "run_id": run.info.run_id, "status": "challenger"}
        version = mlflow.register_model(info.model_uri, registered_model, tags=version_tags | PENDING)
    return {
        "run_id": run.info.run_id,
        "model_uri": f"models:/{registered_model}/{version.version}",
        "version": str(version.version),
        "metrics": metrics,
    }


class EncodingError(StopRun):
    """The model could not tell ids apart: too many outside a vocabulary, or sharing hashed rows."""


def check_encoding(settings: Settings, report: dict[str, dict[str, float]], where: str) -> None:
    """Stop before training when a sparse field's encoding loses more than the settings allow."""
    failures = []
    for name, shares in report.items():
        if shares.get("out_of_vocab", 0.0) > settings.max_out_of_vocab_rate:
            failures.append(f"{name}: {shares['out_of_vocab']:.1%} of its ids are outside its vocabulary "
                            f"(max {settings.max_out_of_vocab_rate:.1%}): declare a larger `vocab` in the data "
                            "contract, or `hash_buckets`")  # fmt: skip
        if shares.get("collided", 0.0) > settings.max_hash_collision_rate:
            failures.append(f"{name}: {shares['collided']:.1%} of its distinct values share a hashed row "
                            f"(max {settings.max_hash_collision_rate:.1%}): give it more rows")  # fmt: skip
    if failures:
        raise EncodingError(f"{where}: " + "; ".join(failures))


def checkpoint_dir(
    settings: Settings, eval_ds: str, model_name: str, train_cfg: TrainConfig, model_config: dict, digest: str
) -> str:
    """Where the worker checkpoints this training: `<home>/checkpoints/<eval_ds>/<model>-<key>`.

    The key hashes everything the weights depend on (model, its config, the train
    config, scenarios, tasks, the training set's content digest): a re-run of the
    same day after a crash finds the checkpoint and resumes, while a re-run on
    corrected data or other hyper-parameters trains afresh. Under the profile's
    home, not /tmp: it has to outlive the process, and the machine's tmp cleaner.
    """
    key = {"model": model_name, "model_config": model_config, "train": asdict(train_cfg), "data": digest,
           "scenarios": settings.scenarios, "tasks": settings.tasks}  # fmt: skip
    short = hashlib.blake2b(json.dumps(key, sort_keys=True, default=str).encode(), digest_size=6).hexdigest()
    return str(settings.home / "checkpoints" / eval_ds / f"{model_name}-{short}")


def fail_dead_runs(settings: Settings, eval_ds: str) -> list[str]:
    """Mark FAILED the runs of `eval_ds` that this host's processes left RUNNING and that died; their ids.

    A training process killed with SIGKILL (the OOM killer, a killed task) cannot
    end its MLflow run, which would then show RUNNING forever. A pid is only
    meaningful on its own host, so runs of other hosts are left alone; a pid that
    exists (maybe reused) counts as alive: better a stale RUNNING than a live run failed.
    """
    client = MlflowClient()
    experiment_id = mlflow.get_experiment_by_name(settings.experiment).experiment_id
    host = socket.gethostname()
    query = f"attributes.status = 'RUNNING' and tags.`msmt.eval_ds` = '{eval_ds}' and tags.`{HOST_TAG}` = '{host}'"
    failed = []
    for run in client.search_runs([experiment_id], filter_string=query):
        pid = int(run.data.tags[PID_TAG])
        if _alive(pid):
            continue
        why = f"process {pid} on {host} died while the run was RUNNING; found by a re-run of {eval_ds}"
        client.set_tag(run.info.run_id, "msmt.failed_because", why)
        client.set_terminated(run.info.run_id, "FAILED")
        log.warning("run %s marked FAILED: %s", run.info.run_id, why)
        failed.append(run.info.run_id)
    return failed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _training_dataset(uri: str, table: pa.Table, digest: str) -> MetaDataset:
    """The partition as an MLflow dataset: source URI, content `digest` (`storage.partition_digest`), column
    schema (from `table`, any of its days; no data copy)."""
    with warnings.catch_warnings():  # MLflow registers its local source twice; the int hint is for serving
        warnings.filterwarnings("ignore", message="The specified dataset source")
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
        source = resolve_dataset_source(uri)
        schema = infer_signature(table.slice(0, 100).to_pandas()).inputs
    name = f"training_set/{uri.rstrip('/').rsplit('/', 1)[-1]}"
    return MetaDataset(source, name=name, digest=digest, schema=schema)


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
