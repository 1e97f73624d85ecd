"""The zoo in the ZOO world: every model tuned and early-stopped the same way, run model by model, merged.

    OMP_NUM_THREADS=1 .venv/bin/python bench/zoo_tuned.py --models mmoe ple --parallel 2
    .venv/bin/python bench/zoo_tuned.py --report            # merge what the results file holds, no training

One protocol, the same budget for every model (issue 16):
- the world is `bench/zoo_world.py`'s (ZOO config, simulator seed 0, `--rows` training rows): the same
  rows the attainable ceiling and the blind baseline were fit on; those references are computed once
  and kept in the results file;
- tuning: the first seed at each learning rate of `--lrs`, at most `--epochs` epochs with early stopping
  (`--patience`) on the validation day (the last training day, so the model fits on the other two);
  the learning rate with the lowest validation loss is the model's;
- then the other seeds at that learning rate, the same early stopping;
- the held-out day scores every run; a model's figures are its chosen learning rate's seeds.

Every finished run is appended to `--results` (JSON lines) at once, and a run already there is not
repeated: a session runs what it can afford and the next one goes on (the world is deterministic).
The report gives AUC mean ± sd per cell over seeds, the share of the attainable lift (ceiling − blind)
per cell, and the paired difference of each model's mean AUC from MMoE's, seed by seed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from statistics import fmean

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.zoo import Job, record, train_one  # noqa: E402
from bench.zoo_world import make_world, reference_learners  # noqa: E402
from msmt.settings import Settings  # noqa: E402
from pipeline.simulate import WORLDS  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "zoo_world_1m.jsonl"
LRS = (1e-2, 3e-2)  # 2e-3 left MMoE improving at 12 epochs (docs/benchmarks.md)
BASELINE = "mmoe"
BEGIN, END = "<!-- zoo-tuned:begin -->", "<!-- zoo-tuned:end -->"


def cell_name(cell: tuple[str, str]) -> str:
    return f"{cell[0]}/{cell[1]}"


def load(path: Path, world: dict) -> list[dict]:
    """The results recorded for `world`; a file written for another world is refused, not mixed in."""
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    other = {json.dumps(r["world"], sort_keys=True) for r in records} - {json.dumps(world, sort_keys=True)}
    if other:
        raise SystemExit(f"{path} holds results of another world ({', '.join(other)}); pass another --results")
    return records


def append(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as out:
        out.write(json.dumps(record) + "\n")


def runs(records: list[dict], model: str) -> list[dict]:
    return [r for r in records if r["kind"] == "run" and r["model"] == model]


def chosen_lr(records: list[dict], model: str, lrs: tuple[float, ...], tuning_seed: int) -> float | None:
    """The learning rate whose tuning run had the lowest validation loss; None until all of them ran."""
    tuned = {r["lr"]: r["valid_loss"] for r in runs(records, model) if r["seed"] == tuning_seed}
    if not all(lr in tuned for lr in lrs):
        return None
    return min(lrs, key=lambda lr: tuned[lr])


def pending(records: list[dict], models: list[str], lrs: tuple[float, ...], seeds: list[int]) -> list[tuple]:
    """(model, seed, lr) still to run: the tuning runs first, then the chosen learning rate's other seeds."""
    done = {(r["model"], r["seed"], r["lr"]) for r in records if r["kind"] == "run"}
    todo = []
    for model in models:
        lr = chosen_lr(records, model, lrs, seeds[0])
        stage = [(model, seeds[0], x) for x in lrs] if lr is None else [(model, s, lr) for s in seeds[1:]]
        todo += [job for job in stage if job not in done]
    return todo


def _train(job: Job) -> dict:
    started = time.perf_counter()
    result = train_one(job)
    result.update(lr=job.lr, seconds=time.perf_counter() - started)
    return result


def _references(rows: int, sim_seed: int) -> dict[str, dict]:
    """Oracle, ceiling and blind baselines of the world, built afresh (runs in a pool process)."""
    with tempfile.TemporaryDirectory(prefix="msmt-zoo-refs-") as home:
        built = make_world(Path(home), WORLDS["zoo"], rows, sim_seed)
        refs = reference_learners(built, dim=8, max_epochs=10, log=lambda text: print(text, flush=True))["auc"]
        return {"oracle": built["oracle"], **refs}


def run_record(result: dict, world: dict) -> dict:
    return {
        "kind": "run",
        "world": world,
        "model": result["model"],
        "seed": result["seed"],
        "lr": result["lr"],
        "valid_loss": result["valid_loss"],
        "epochs_run": result["epochs_run"],
        "best_epoch": result["best_epoch"],
        "auc": {cell_name(c): v for c, v in result["auc"].items()},
        "params": result["params"],
        "train_rows": result["train_rows"],
        "samples_per_s": result["samples_per_s"],
        "seconds": result["seconds"],
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d"),
    }


# --- report ----------------------------------------------------------------------------------------


def _sd(values: list[float]) -> str:
    return f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""


def report(records: list[dict], cells: list[str], lrs: tuple[float, ...], seeds: list[int]) -> str:
    refs = {r["name"]: r["auc"] for r in records if r["kind"] == "reference"}
    head = ["model", "lr", "seeds", "epochs (best)", *cells, "mean", "Δ mean vs MMoE, paired",
            "lift: worst cell / mean", "samples/s"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in ("oracle", "ceiling", "blind"):
        if name in refs:
            values = [refs[name][c] for c in cells]
            lines.append(
                f"| {name} | | | | " + " | ".join(f"{v:.4f}" for v in values) + f" | {fmean(values):.4f} | | | |"
            )
    chosen = {}
    for model in sorted({r["model"] for r in records if r["kind"] == "run"}):
        lr = chosen_lr(records, model, lrs, seeds[0])
        if lr is not None:
            chosen[model] = {r["seed"]: r for r in runs(records, model) if r["lr"] == lr}
    mean_auc = {
        m: {s: fmean([r["auc"][c] for c in cells]) for s, r in by_seed.items()} for m, by_seed in chosen.items()
    }
    for model in sorted(chosen, key=lambda m: -fmean(mean_auc[m].values())):
        by_seed = chosen[model]
        row = [model, f"{next(iter(by_seed.values()))['lr']:g}", str(len(by_seed))]
        row.append(", ".join(f"{r['epochs_run']} ({r['best_epoch'] + 1 if r['best_epoch'] is not None else '–'})"
                             for r in by_seed.values()))  # fmt: skip
        row += [f"{fmean(v):.4f}{_sd(v)}" for v in ([r["auc"][c] for r in by_seed.values()] for c in cells)]
        row.append(f"{fmean(mean_auc[model].values()):.4f}{_sd(list(mean_auc[model].values()))}")
        paired = sorted(set(by_seed) & set(mean_auc.get(BASELINE, {})))
        diffs = [mean_auc[model][s] - mean_auc[BASELINE][s] for s in paired]
        wins = sum(d > 0 for d in diffs)
        row.append(f"{fmean(diffs):+.4f}{_sd(diffs)} ({wins}/{len(diffs)} seeds above)" if diffs and model != BASELINE
                   else "")  # fmt: skip
        if "ceiling" in refs and "blind" in refs:
            shares = [
                (fmean([r["auc"][c] for r in by_seed.values()]) - refs["blind"][c])
                / (refs["ceiling"][c] - refs["blind"][c])
                for c in cells
            ]
            row.append(f"{min(shares):.0%} / {fmean(shares):.0%}")
        else:
            row.append("")
        row.append(f"{fmean([r['samples_per_s'] for r in by_seed.values()]):,.0f}")
        lines.append("| " + " | ".join(row) + " |")
    untuned = sorted({r["model"] for r in records if r["kind"] == "run"} - set(chosen))
    if untuned:
        lines.append(f"\nTuning not finished (not in the table): {', '.join(untuned)}.")
    return "\n".join(lines)


def main() -> None:
    from training.models import model_names

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=model_names())
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="the first one tunes")
    parser.add_argument("--lrs", type=float, nargs="+", default=list(LRS), help="Adam's learning rates tried")
    parser.add_argument("--epochs", type=int, default=12, help="the most epochs of a run")
    parser.add_argument("--patience", type=int, default=2, help="epochs without a lower validation loss")
    parser.add_argument("--rows", type=int, default=1_000_000, help="training rows of the ZOO world")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--parallel", type=int, default=1, help="trainings at once (one core each)")
    parser.add_argument("--report", action="store_true", help="only merge and print what the results hold")
    parser.add_argument("--record", action="store_true", help="write the table into docs/benchmarks.md")
    args = parser.parse_args()
    if args.patience < 1:
        parser.error("--patience must be at least 1: the learning rate is chosen on the validation loss")
    lrs = tuple(args.lrs)
    world = {"config": "zoo", "rows": args.rows, "sim_seed": 0, "epochs": args.epochs, "patience": args.patience}
    records = load(args.results, world)
    log = lambda text: print(text, flush=True)  # noqa: E731

    settings = Settings(home=Path(tempfile.gettempdir()))  # the world's scenarios and tasks
    cells = [f"{s}/{t}" for s in settings.scenarios for t in settings.tasks]
    if args.report:
        finish(report(records, cells, lrs, args.seeds), args.record)
        return

    def save(record: dict) -> None:
        append(args.results, record)
        records.append(record)

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # the pool's processes: one core each
    with (
        tempfile.TemporaryDirectory(prefix="msmt-zoo-tuned-") as home,
        mp.get_context("spawn").Pool(args.parallel, maxtasksperchild=1) as pool,
    ):
        references = None
        if not any(r["kind"] == "reference" for r in records):
            log("reference learners: once per results file, beside the trainings")
            references = pool.apply_async(_references, (args.rows, world["sim_seed"]))
        built = make_world(Path(home), WORLDS["zoo"], args.rows, world["sim_seed"])
        while todo := pending(records, args.models, lrs, args.seeds):
            log(f"{len(todo)} runs: " + ", ".join(f"{m} seed {s} lr {lr:g}" for m, s, lr in todo))
            jobs = [Job(built["settings"], built["uri"], built["eval_ds"], m, s, args.epochs, args.patience, lr)
                    for m, s, lr in todo]  # fmt: skip
            for result in pool.imap_unordered(_train, jobs):
                save(record := run_record(result, world))
                log(f"  {record['model']} seed {record['seed']} lr {record['lr']:g}: mean AUC "
                    f"{fmean(record['auc'].values()):.4f}, valid loss {record['valid_loss']:.5f}, "
                    f"{record['epochs_run']} epochs in {record['seconds']:.0f} s")  # fmt: skip
        if references is not None:
            for name, auc in references.get().items():
                save(
                    {
                        "kind": "reference",
                        "world": world,
                        "name": name,
                        "auc": {cell_name(c): v for c, v in auc.items()},
                    }
                )
    finish(report(records, cells, lrs, args.seeds), args.record)


def finish(table: str, to_docs: bool) -> None:
    print(table, flush=True)
    if to_docs:
        record(f"{BEGIN}\n{table}\n{END}", BEGIN, END)


if __name__ == "__main__":
    main()
