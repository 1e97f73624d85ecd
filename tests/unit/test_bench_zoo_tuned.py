"""bench/zoo_tuned.py tunes each model on the validation day, trains the other seeds at its choice,
keeps every run in its results file and never repeats one."""

from __future__ import annotations

import json
import subprocess
import sys

from bench import zoo_tuned
from msmt.settings import PROJECT_ROOT

BENCH = PROJECT_ROOT / "bench" / "zoo_tuned.py"
TINY = ["--rows", "3000", "--epochs", "2", "--patience", "1", "--lrs", "0.05", "--seeds", "0"]
CELLS = ["homefeed/click", "homefeed/conversion"]


def _run(results, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(BENCH), *TINY, "--results", str(results), *extra]
    return subprocess.run(command, capture_output=True, text=True, check=False, cwd=PROJECT_ROOT)


def test_a_run_and_the_world_references_are_kept_and_never_repeated(tmp_path):
    results = tmp_path / "zoo.jsonl"
    first = _run(results, "--models", "shared_bottom")
    assert first.returncode == 0, first.stderr[-3000:]
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert {r["name"] for r in records if r["kind"] == "reference"} == {
        "oracle", "ceiling", "blind", "scenario-blind ceiling", "task-blind (p_click for both)"
    }  # fmt: skip
    (run,) = [r for r in records if r["kind"] == "run"]
    assert (run["model"], run["seed"], run["lr"]) == ("shared_bottom", 0, 0.05)
    assert len(run["auc"]) == 8 and 1 <= run["epochs_run"] <= 2 and run["valid_loss"] > 0

    again = _run(results, "--models", "shared_bottom")
    assert again.returncode == 0, again.stderr[-3000:]
    assert " runs: " not in again.stdout, "a run already in the results file is never repeated"
    assert len(results.read_text().splitlines()) == len(records)
    assert any(line.startswith("| shared_bottom | 0.05 | 1 |") for line in again.stdout.splitlines())


def _run_record(model: str, seed: int, lr: float, valid_loss: float, auc: float) -> dict:
    return {"kind": "run", "model": model, "seed": seed, "lr": lr, "valid_loss": valid_loss, "epochs_run": 3,
            "best_epoch": 1, "auc": dict.fromkeys(CELLS, auc), "samples_per_s": 1000.0}  # fmt: skip


def test_the_lower_validation_loss_chooses_the_lr_of_the_other_seeds():
    lrs, seeds = (0.01, 0.03), [0, 1, 2]
    records = [_run_record("ple", 0, 0.01, 0.50, 0.70)]
    assert zoo_tuned.pending(records, ["ple"], lrs, seeds) == [("ple", 0, 0.03)], "tuning comes first"
    records.append(_run_record("ple", 0, 0.03, 0.40, 0.72))
    assert zoo_tuned.chosen_lr(records, "ple", lrs, 0) == 0.03
    assert zoo_tuned.pending(records, ["ple"], lrs, seeds) == [("ple", 1, 0.03), ("ple", 2, 0.03)]


def test_the_report_compares_each_model_with_mmoe_seed_by_seed():
    lrs, seeds = (0.01,), [0, 1]
    records = [
        _run_record("mmoe", 0, 0.01, 0.4, 0.70),
        _run_record("mmoe", 1, 0.01, 0.4, 0.71),
        _run_record("ple", 0, 0.01, 0.4, 0.72),
        _run_record("ple", 1, 0.01, 0.4, 0.70),
        {"kind": "reference", "name": "ceiling", "auc": dict.fromkeys(CELLS, 0.80)},
        {"kind": "reference", "name": "blind", "auc": dict.fromkeys(CELLS, 0.60)},
    ]
    lines = zoo_tuned.report(records, CELLS, lrs, seeds).splitlines()
    ple = next(line for line in lines if line.startswith("| ple |")).split(" | ")
    assert "+0.0050 ± 0.0212 (1/2 seeds above)" in ple, "paired: +0.02 on seed 0, −0.01 on seed 1"
    assert "55% / 55%" in ple, "(0.71 − 0.60) / (0.80 − 0.60) of the attainable lift in every cell"


def test_results_of_another_world_are_refused_not_mixed(tmp_path):
    results = tmp_path / "zoo.jsonl"
    world = {"config": "zoo", "rows": 999, "sim_seed": 0, "epochs": 2, "patience": 1}
    results.write_text(json.dumps({"kind": "reference", "world": world, "name": "oracle", "auc": {}}) + "\n")
    done = _run(results, "--report")
    assert done.returncode != 0
    assert "another world" in done.stderr
