"""A training worker killed with SIGKILL mid-epoch resumes from its last checkpoint and ends like
an uninterrupted run (same metrics, same weights up to float noise)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_train_and_registry import EVAL_DS, SCENARIOS, write_training_set

from msmt.settings import PROJECT_ROOT
from training import checkpoint
from training.worker import parse_args, read_metrics, read_state_dict, run

pytestmark = pytest.mark.integration

OVERRIDES = {"epochs": 2, "batch_size": 32, "emb_dim": 8, "n_experts": 2, "expert_dims": [32], "checkpoint_every": 10}


def _command(uri: str, out: Path) -> list[str]:
    return [sys.executable, "-m", "training.worker", "--training-set", uri, "--eval-ds", EVAL_DS, "--model", "mmoe",
            "--out", str(out), "--overrides", json.dumps(OVERRIDES)]  # fmt: skip


@pytest.fixture
def job(settings):
    settings = settings.with_(scenarios=SCENARIOS)
    uri = write_training_set(settings, rows_per_day=1500)
    env = {**os.environ, **settings.to_env(), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT_ROOT)}
    return settings, uri, env


def test_killed_worker_resumes_from_its_last_checkpoint(job, tmp_path, monkeypatch):
    settings, uri, env = job
    reference = tmp_path / "reference"  # uninterrupted, in this process (one process start less)
    for key, value in env.items():
        if key.startswith("MSMT_"):
            monkeypatch.setenv(key, value)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run(parse_args(_command(uri, reference)[3:]))
    finally:
        torch.set_num_threads(threads)

    out = tmp_path / "killed"
    ckpt = Path(checkpoint.path_in(out / "checkpoints"))
    proc = subprocess.Popen(_command(uri, out), env=env, cwd=PROJECT_ROOT, stderr=subprocess.PIPE)
    deadline, killed_at = time.monotonic() + 60, None
    while time.monotonic() < deadline and proc.poll() is None:
        if ckpt.exists():
            state = checkpoint.load(settings, str(ckpt))
            if state["step"] >= 20:  # mid-epoch (141 steps / epoch), checkpoints already written
                os.kill(proc.pid, signal.SIGKILL)
                killed_at = (state["epoch"], state["step"])
                break
        time.sleep(0.02)
    proc.wait()
    assert killed_at is not None, "the worker finished (or never checkpointed) before it could be killed"
    assert proc.returncode == -signal.SIGKILL and not (out / "metrics.json").exists()

    subprocess.run(_command(uri, out), env=env, cwd=PROJECT_ROOT, check=True, capture_output=True)
    assert not ckpt.exists()  # spent: a re-run of the day on corrected data must train again
    resumed, expected = read_metrics(settings, str(out)), read_metrics(settings, str(reference))
    assert resumed["resumed_from"]["epoch"] == killed_at[0] and resumed["resumed_from"]["step"] >= killed_at[1]
    assert len(resumed["history"]) == len(expected["history"]) == 2
    for got, want in zip(resumed["history"], expected["history"], strict=True):
        for key in ("train_loss", "valid_loss", "valid_loss_click", "valid_loss_conversion"):
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), key
    weights = read_state_dict(settings, str(out))
    for name, tensor in read_state_dict(settings, str(reference)).items():
        torch.testing.assert_close(weights[name], tensor, rtol=1e-5, atol=1e-6)


def test_worker_arguments_round_trip():
    args = parse_args(["--training-set", "s3://b/ts", "--eval-ds", "2026-01-04", "--model", "mmoe", "--out", "o"])
    assert json.loads(args.overrides) == {} and args.checkpoint_dir is None


def test_discard_removes_a_save_interrupted_by_kill_9(settings, tmp_path):
    directory = tmp_path / "checkpoints"
    checkpoint.save(settings, checkpoint.path_in(directory), {"step": torch.tensor(1)})
    (directory / f".{checkpoint.FILE_NAME}.x1y2.tmp").write_bytes(b"half a checkpoint")  # what SIGKILL leaves
    checkpoint.discard(settings, directory)
    assert not directory.exists()
