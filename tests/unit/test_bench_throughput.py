"""bench/train_throughput.py runs end to end on tiny sizes and samples GPU utilisation while training."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time

import torch

from msmt.settings import PROJECT_ROOT

BENCH = PROJECT_ROOT / "bench" / "train_throughput.py"


def _bench_module():
    spec = importlib.util.spec_from_file_location("train_throughput", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_benchmark_prints_a_row_per_configuration():
    command = [sys.executable, str(BENCH), "--models", "mmoe", "--workers", "1", "--rows", "3000",
               "--max-steps", "3", "--batch-size", "256", "--precisions", "fp32"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=PROJECT_ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split("|")[1:-1] for line in done.stdout.splitlines() if line.startswith("| mmoe |")]
    assert [row[2].strip() for row in rows] == ["fp32"]
    for row in rows:
        rates = [float(cell.replace(",", "")) for cell in row[3:6]]  # msmt, per-row tensors, per-row columns
        assert all(rate > 0 for rate in rates)
        assert row[6].strip() == f"{rates[0] / rates[1]:.1f}× / {rates[0] / rates[2]:.1f}×"


def test_bf16_is_measured_beside_fp32_only_where_it_is_native():
    choose = _bench_module().bf16_choices
    assert choose("auto", native_bf16=True) == [False, True] and choose("auto", native_bf16=False) == [False]
    assert choose("bf16", native_bf16=False) == [True] and choose("fp32,bf16", native_bf16=False) == [False, True]


def test_gpu_utilisation_is_the_mean_of_samples_taken_while_the_block_runs():
    class Scripted(_bench_module().GpuSampler):
        readings = iter([40.0, 60.0])

        def _read(self):
            return next(self.readings, None)  # None: the source went away, sampling stops

    with Scripted(torch.device("cuda"), every=0.01) as gpu:
        time.sleep(0.2)
    assert gpu.samples == [40.0, 60.0] and gpu.mean == 50.0
    with _bench_module().GpuSampler(torch.device("cpu")) as cpu:
        pass
    assert cpu.mean is None and cpu.samples == []
