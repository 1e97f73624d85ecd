"""bench/model_cost.py counts a training step's FLOPs per row and times the step, per model."""

from __future__ import annotations

import subprocess
import sys

from msmt.settings import PROJECT_ROOT

BENCH = PROJECT_ROOT / "bench" / "model_cost.py"


def test_a_row_per_model_with_its_flops_and_speed():
    command = [sys.executable, str(BENCH), "--models", "mmoe", "causalint", "--batch-size", "256", "--steps", "2",
               "--warmup", "1"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=PROJECT_ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {line.split("|")[1].strip(): line.split("|")[2:4] for line in done.stdout.splitlines()
            if line.startswith("| mmoe |") or line.startswith("| causalint |")}  # fmt: skip
    assert set(rows) == {"mmoe", "causalint"}
    mflop = {name: float(values[0]) for name, values in rows.items()}
    # CausalInt runs MMoE-sized experts plus its per-scenario towers and extractor: more work per row.
    assert 0 < mflop["mmoe"] < mflop["causalint"]
    assert all(float(values[1].replace(",", "")) > 0 for values in rows.values())
