"""The training process: read a training set, train one zoo model, write its weights and metrics.

Runs under torchrun, on one CPU or many GPUs alike:

    python -m torch.distributed.run --standalone --nproc-per-node N -m training.worker \\
        --training-set <uri> --eval-ds <day> --model mmoe --out <dir or s3://…> [--overrides '{"epochs": 3}']

Settings come from the `MSMT_*` environment (`Settings.to_env()` of the parent);
`--overrides` mixes TrainConfig and model-config fields as in training.train; they
go on top of the model's `training/configs/<model>.json` (training.hparams).
Every rank reads the partition, keeps its own requests (`TensorData.shard`) of
the training days and of the held-out day (the validation loss), and trains;
rank 0 writes `<out>/model.pt` (the state dict, read back with
`weights_only=True`) and `<out>/metrics.json` (per-epoch history, device,
world size, throughput, configs). Checkpoints go to `--checkpoint-dir`
(default `<out>/checkpoints`; training.train passes one that outlives its
scratch `--out`), a restarted worker resumes from the last one (and says so in
a progress line), and a finished run removes it. Every read and write, local or
`s3://`, goes through msmt.storage. MLflow is not used here: the parent logs.

Module level imports the standard library only, so the DAG can build the
command (`worker_command`) without importing torch or pyarrow.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import subprocess
import sys
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

from training import hparams

if TYPE_CHECKING:
    from msmt.settings import Settings

MODEL_FILE = "model.pt"
METRICS_FILE = "metrics.json"
PROGRESS = "[msmt.worker] "  # prefix of the lines `launch` forwards from the worker's output to its log

log = logging.getLogger("msmt.training")


def worker_command(
    training_set: str,
    eval_ds: str,
    model: str,
    out: str,
    overrides: dict | None = None,
    workers: int | str = 1,
    python: str = "python",
    checkpoint_dir: str | None = None,
) -> list[str]:
    """The torchrun command line that trains `model` (the same for a subprocess and a pod);
    string arguments may be Airflow templates (`workers="{{ params.gpus }}"`)."""
    if isinstance(workers, int) and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    command = [python, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={workers}"]
    command += ["-m", "training.worker", "--training-set", training_set, "--eval-ds", eval_ds]
    command += ["--model", model, "--out", out, "--overrides", json.dumps(overrides or {}, sort_keys=True)]
    if checkpoint_dir:
        command += ["--checkpoint-dir", checkpoint_dir]
    return command


def split_overrides(settings, overrides: dict):
    """Settings' optimiser defaults, then the `TrainConfig` overrides; the rest is model config."""
    from training.trainer import TrainConfig

    train_fields = {f.name for f in fields(TrainConfig)}
    base = TrainConfig(
        epochs=settings.epochs, batch_size=settings.batch_size, lr=settings.learning_rate, seed=settings.seed
    )
    cfg = replace(base, **{k: v for k, v in overrides.items() if k in train_fields})
    return cfg, {k: v for k, v in overrides.items() if k not in train_fields}


def launch(
    settings: Settings,
    training_set: str,
    eval_ds: str,
    model: str,
    out: str | os.PathLike,
    overrides: dict | None = None,
    workers: int = 1,
    checkpoint_dir: str | None = None,
) -> dict:
    """Run the worker as its own process group through torchrun; returns its metrics.json.

    The child gets the parent's environment plus `settings.to_env()`; its output
    goes to `<out>/worker.log`, whose tail is in the error when it fails, and its
    progress lines (a start line, a resume line, one per epoch) to the `msmt.training`
    log as they come. `checkpoint_dir`: where it checkpoints and resumes from (None:
    `<out>/checkpoints`, which lives only as long as `out`).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    command = worker_command(training_set, eval_ds, model, str(out), overrides, workers, sys.executable, checkpoint_dir)
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    log_path = out / "worker.log"
    with open(log_path, "w") as worker_log:
        proc = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", preexec_fn=_die_with_parent)  # fmt: skip
        for line in proc.stdout:
            worker_log.write(line)
            if line.startswith(PROGRESS):  # progress reaches the task's log as it happens
                log.info(line[len(PROGRESS) :].rstrip())
        returncode = proc.wait()
    if returncode != 0:
        tail = log_path.read_text(errors="replace")[-4000:]
        raise RuntimeError(f"training worker failed (exit {returncode}); {log_path} ends with:\n{tail}")
    return read_metrics(settings, str(out))


def _die_with_parent() -> None:
    """In the torchrun child, before exec: ask Linux for SIGTERM when the launching thread dies.

    A launcher killed with SIGKILL cannot stop its children; without this, torchrun
    and its workers would train on, orphaned, and keep writing the checkpoint that
    the re-run of the day resumes from. torchrun passes the SIGTERM on to its workers.
    """
    if sys.platform == "linux":
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _in(out: str, name: str) -> str:
    """The URI of `name` under the output directory or prefix `out`."""
    return f"{out.rstrip('/')}/{name}"


def read_metrics(settings: Settings, out: str) -> dict:
    from msmt import storage

    return storage.read_json(settings, _in(out, METRICS_FILE))


def read_state_dict(settings: Settings, out: str) -> dict:
    """The trained weights (tensors only: `weights_only=True`)."""
    import torch

    from msmt import storage

    payload = storage.read_bytes(settings, _in(out, MODEL_FILE))
    return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)


def run(args: argparse.Namespace) -> dict | None:
    import torch

    from msmt import storage
    from msmt.settings import Settings
    from training import checkpoint, distributed
    from training.data import load_split, training_spec
    from training.models import build_model
    from training.trainer import fit

    settings = Settings.from_env()
    ctx = distributed.init_from_env()
    try:
        _, overrides = hparams.resolve(args.model, json.loads(args.overrides))  # the model's file, then these
        train_cfg, model_overrides = split_overrides(settings, overrides)
        checkpoint_dir = args.checkpoint_dir or train_cfg.checkpoint_dir or _in(args.out, "checkpoints")
        train_cfg = replace(train_cfg, checkpoint_dir=checkpoint_dir)
        spec = training_spec(settings, args.training_set, args.eval_ds)
        train, valid = load_split(settings, args.training_set, spec, args.eval_ds)
        if len(train) == 0:
            raise ValueError(f"no training rows before {args.eval_ds} in {args.training_set}")
        rows = {"train_rows": len(train), "eval_rows": len(valid)}
        train, valid = train.shard(ctx.rank, ctx.world_size), valid.shard(ctx.rank, ctx.world_size)
        torch.manual_seed(train_cfg.seed)  # the initial weights (DDP broadcasts rank 0's anyway)
        model = build_model(args.model, spec, **model_overrides)
        if ctx.is_main:
            _progress(f"{args.model}: {rows['train_rows']:,} training rows, {rows['eval_rows']:,} held out, "
                      f"{train_cfg.epochs} epochs, {ctx.world_size} rank(s)")  # fmt: skip
            saved = checkpoint.latest(settings, checkpoint_dir) if train_cfg.resume else None
            if saved is not None:
                _progress(f"resuming from {saved}")
        on_epoch = _report_epoch(train_cfg) if ctx.is_main else None
        result = fit(model, train, valid, train_cfg, on_epoch, settings=settings)
        if not ctx.is_main:
            return None
        buffer = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
        storage.write_bytes(settings, _in(args.out, MODEL_FILE), buffer.getvalue())
        metrics = {
            "model": args.model,
            "model_config": asdict(model.config),
            "train_config": asdict(train_cfg),
            "spec": spec.to_dict(),
            **rows,
            **asdict(result),
        }
        storage.write_json(settings, _in(args.out, METRICS_FILE), metrics)
        checkpoint.discard(settings, checkpoint_dir)
        return metrics
    finally:
        distributed.barrier()
        distributed.shutdown()


def _progress(message: str) -> None:
    print(PROGRESS + message, flush=True)


def _report_epoch(cfg):
    """`fit`'s on_epoch: one progress line per epoch."""

    def report(epoch: int, metrics: dict[str, float]) -> None:
        valid = f", valid_loss {metrics['valid_loss']:.4f}" if "valid_loss" in metrics else ""
        _progress(f"epoch {epoch + 1}/{cfg.epochs}: train_loss {metrics['train_loss']:.4f}{valid}, "
                  f"{metrics['samples_per_s']:,.0f} rows/s, {metrics['seconds']:.1f} s")  # fmt: skip

    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--training-set", required=True, help="training-set partition (path or URI)")
    parser.add_argument("--eval-ds", required=True, help="held-out day; training uses the days before it")
    parser.add_argument("--model", required=True, help="zoo model name")
    parser.add_argument("--out", required=True, help="output directory or URI (rank 0 writes)")
    parser.add_argument("--overrides", default="{}", help="JSON: TrainConfig and model-config fields")
    parser.add_argument("--checkpoint-dir", default=None, help="directory or URI; default <out>/checkpoints")
    return parser.parse_args(argv)


if __name__ == "__main__":
    run(parse_args())
