"""Train every model of the zoo on the same simulated logs and compare them cell by cell.

    .venv/bin/python bench/zoo.py --impressions-per-day 350000 --seeds 0 1 2 --record

Builds the data with the pipeline's own steps (simulator → Spark samples and
features → Feast point-in-time training set), trains each model on the
`train_days` sample days and scores the held-out day: per scenario × task AUC
(mean ± spread over seeds), the oracle AUC of each cell from the simulator's true
probabilities, parameter count, training samples per second and peak memory.
Each (model, seed) trains in a fresh process so its peak memory is its own.
`--record` rewrites the zoo section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.dataset as pds

from msmt import lake
from msmt.settings import PROJECT_ROOT, Settings
from pipeline import steps
from pipeline.simulate import WORLDS, SimConfig, oracle_auc, simulate

START = "2026-01-01"
DOC = PROJECT_ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- zoo:begin -->", "<!-- zoo:end -->"


def prepare(settings: Settings, impressions_per_day: int, config: SimConfig | None = None) -> tuple[str, str, dict]:
    """Simulate (the default world unless `config`), then build samples, features and the training set
    exactly as msmt_daily does."""
    days = settings.train_days + settings.attribution_window_days + 1
    simulate(settings, START, days, impressions_per_day, seed=0, config=config)
    plan = steps.plan_day(settings, lake.shift(START, days - 1))
    steps.build_samples(settings, plan)
    steps.build_features(settings, plan)
    steps.publish_features(settings, plan)
    training_set = steps.build_training_set(settings, plan)
    truth = pds.dataset(lake.raw(settings, "truth", plan.sample_ds)).to_table().to_pandas()
    labels = pds.dataset(training_set).to_table(columns=["impression_id", "click", "conversion", "ds"]).to_pandas()
    oracle = oracle_auc(truth, labels[labels["ds"] == plan.sample_ds])
    return training_set, plan.sample_ds, oracle


def _own_peak_rss() -> int:
    """This process's peak RSS in bytes (`VmHWM`; `ru_maxrss` would carry the spawning parent's over exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass(frozen=True)
class Job:
    """One (model, seed) training of the zoo benchmark and its budget."""

    settings: Settings
    training_set: str
    eval_ds: str
    model: str
    seed: int
    epochs: int  # with patience: the most
    patience: int = 0  # > 0: early stopping on the last training day
    lr: float = 2e-3
    weight_decay: float = 0.0  # Adam's L2 on every parameter, id tables included


def train_one(job: Job) -> dict:
    """One (model, seed): fit on the train days, score the held-out day (runs in its own process).

    With `patience` > 0 the last training day is the validation day: training stops once its loss has
    not improved for `patience` epochs (at most `epochs`) and keeps the best epoch's weights; the model
    then fits on one day fewer."""
    settings, training_set, eval_ds, name, seed = job.settings, job.training_set, job.eval_ds, job.model, job.seed
    import torch

    from training.data import default_spec, encode, read_training_set, split_by_day
    from training.evaluate import score_cells
    from training.models import build_model
    from training.trainer import TrainConfig, fit

    train_table, eval_table = split_by_day(read_training_set(settings, training_set), eval_ds)
    spec = default_spec(len(settings.scenarios))
    valid = None
    if job.patience:
        last_day = max(train_table.column("ds").cast("string").to_pylist())
        train_table, valid_table = split_by_day(train_table, last_day)
        valid = encode(valid_table, spec)
    train, held_out = encode(train_table, spec), encode(eval_table, spec)
    torch.manual_seed(seed)
    model = build_model(name, spec)
    config = TrainConfig(epochs=job.epochs, batch_size=2048, lr=job.lr, weight_decay=job.weight_decay, seed=seed,
                         patience=job.patience)  # fmt: skip
    fitted = fit(model, train, valid, config)
    cells = score_cells(model, held_out, settings.scenarios, settings.tasks)
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else _own_peak_rss()
    return {
        "model": name,
        "seed": seed,
        "params": sum(p.numel() for p in model.parameters()),
        "samples_per_s": fitted.samples_per_s,
        "peak_bytes": peak,
        "train_rows": len(train),
        "epochs_run": len(fitted.history),
        "best_epoch": fitted.best_epoch,
        "valid_loss": min((h["valid_loss"] for h in fitted.history if "valid_loss" in h), default=None),
        "auc": {(c["scenario"], c["task"]): c["auc"] for c in cells},
    }


def table(results: list[dict], oracle: dict, cells: list[tuple[str, str]]) -> str:
    """Markdown: one row per model, AUC mean ± spread (max − min over seeds) per cell."""
    by_model: dict[str, list[dict]] = {}
    for r in results:
        by_model.setdefault(r["model"], []).append(r)
    head = ["model", *[f"{s}/{t}" for s, t in cells], "mean", "params", "samples/s", "peak MiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines.append(
        "| oracle | "
        + " | ".join(f"{oracle[c]:.4f}" for c in cells)
        + f" | {np.nanmean([oracle[c] for c in cells]):.4f} | | | |"
    )
    for name, runs in sorted(
        by_model.items(), key=lambda kv: -np.nanmean([np.nanmean(list(r["auc"].values())) for r in kv[1]])
    ):
        row = [name]
        for c in cells:
            values = [r["auc"][c] for r in runs]
            spread = f" ± {(max(values) - min(values)) / 2:.4f}" if len(values) > 1 else ""
            row.append(f"{statistics.fmean(values):.4f}{spread}")
        row.append(f"{np.nanmean([np.nanmean(list(r['auc'].values())) for r in runs]):.4f}")
        row += [
            f"{runs[0]['params']:,}",
            f"{statistics.fmean(r['samples_per_s'] for r in runs):,.0f}",
            f"{max(r['peak_bytes'] for r in runs) / 2**20:,.0f}",
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def record(text: str, begin: str = BEGIN, end: str = END) -> None:
    """Put `text` (which starts with `begin` and ends with `end`) in place of that section of docs/benchmarks.md."""
    doc = DOC.read_text()
    if begin in doc:
        doc = doc[: doc.index(begin)] + text + doc[doc.index(end) + len(end) :]
    else:
        doc = doc.rstrip("\n") + "\n\n" + text + "\n"
    DOC.write_text(doc)


def main() -> None:
    from training.models import model_names

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impressions-per-day", type=int, default=350_000)
    parser.add_argument("--world", choices=sorted(WORLDS), default="default", help="pipeline.simulate.WORLDS")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=2, help="epochs (with --patience: the most)")
    parser.add_argument("--patience", type=int, default=0, help="early stopping on the last training day")
    parser.add_argument("--lr", type=float, default=2e-3, help="Adam's learning rate, every model")
    parser.add_argument("--models", nargs="+", default=model_names())
    parser.add_argument("--record", action="store_true", help="write the table into docs/benchmarks.md")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="msmt-zoo-") as home:
        settings = Settings.from_env(home=Path(home))
        started = time.perf_counter()
        training_set, eval_ds, oracle = prepare(settings, args.impressions_per_day, WORLDS[args.world])
        print(f"data ready in {time.perf_counter() - started:.0f} s: {training_set}")
        cells = [(s, t) for s in settings.scenarios for t in settings.tasks]
        jobs = [Job(settings, training_set, eval_ds, m, seed, args.epochs, args.patience, args.lr)
                for m in args.models for seed in args.seeds]  # fmt: skip
        results = []
        with mp.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
            for result in pool.imap(train_one, jobs):
                print(
                    f"{result['model']:<14} seed {result['seed']}: mean AUC "
                    f"{np.nanmean(list(result['auc'].values())):.4f}, {result['samples_per_s']:,.0f} samples/s"
                )
                results.append(result)
    text = table(results, oracle, cells)
    machine = f"{platform.machine()}, {mp.cpu_count()} cores, torch CPU"
    summary = (
        f"{BEGIN}\n## Model zoo (`bench/zoo.py`)\n"
        f"`.venv/bin/python bench/zoo.py --world {args.world} --impressions-per-day {args.impressions_per_day} --seeds "
        f"{' '.join(map(str, args.seeds))} --epochs {args.epochs}` — {results[0]['train_rows']:,} training rows "
        f"({settings.train_days} days), held-out day {eval_ds}; {machine}; measured {time.strftime('%Y-%m-%d')}.\n"
        f"AUC per scenario/task cell (± half the range over seeds), oracle = AUC of the simulator's true "
        f"probabilities.\n\n{text}\n{END}"
    )
    print(summary)
    if args.record:
        record(summary)


if __name__ == "__main__":
    main()
