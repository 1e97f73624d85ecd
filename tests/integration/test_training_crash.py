"""kill -9 of the train_model process mid-epoch (torchrun and its worker follow it), then a re-run of
the day: the MLflow run the dead process left RUNNING is marked FAILED, the new run resumes from the checkpoint
kept under the profile's home, and that checkpoint is gone once the re-run succeeded."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import mlflow
import psutil
import pytest
from mlflow import MlflowClient
from test_train_and_registry import EVAL_DS, SCENARIOS, write_training_set

from msmt.settings import PROJECT_ROOT
from training import checkpoint
from training.tracking import configure_mlflow
from training.train import HOST_TAG, PID_TAG, train_model

pytestmark = pytest.mark.integration

OVERRIDES = {"epochs": 2, "batch_size": 32, "emb_dim": 8, "n_experts": 2, "expert_dims": [32], "checkpoint_every": 10}
TRAIN = (  # the train_model task, as its own process
    "import json, sys\n"
    "from msmt.settings import Settings\n"
    "from training.train import train_model\n"
    "train_model(Settings.from_env(), sys.argv[1], sys.argv[2], 'mmoe', json.loads(sys.argv[3]))\n"
)


@pytest.fixture
def day(settings):
    settings = settings.with_(scenarios=SCENARIOS)
    configure_mlflow(settings)
    uri = write_training_set(settings, rows_per_day=1500)
    env = {**os.environ, **settings.to_env(), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT_ROOT)}
    return settings, uri, env


def kill_mid_epoch(settings, uri: str, env: dict, log_path) -> tuple[int, tuple[int, int]]:
    """Start training in a process, SIGKILL that process alone once a mid-epoch checkpoint exists.

    Its torchrun and workers (in sessions of their own) must not train on as orphans, writing the
    checkpoint the re-run resumes from: they go too. Returns the killed pid and the checkpoint's (epoch, step).
    """
    days = settings.home / "checkpoints" / EVAL_DS
    with open(log_path, "w") as log_file:
        command = [sys.executable, "-c", TRAIN, uri, EVAL_DS, json.dumps(OVERRIDES)]
        proc = subprocess.Popen(command, env=env, cwd=PROJECT_ROOT, stdout=log_file, stderr=subprocess.STDOUT)
    deadline, killed_at = time.monotonic() + 600, None  # a bound on a shared machine, not a measurement
    while time.monotonic() < deadline and proc.poll() is None:
        saved = next(days.glob("mmoe-*/last.pt"), None) if days.exists() else None
        if saved is not None:
            state = checkpoint.load(settings, str(saved))
            if state["epoch"] == 0 and state["step"] >= 20:  # mid-epoch (141 steps / epoch)
                descendants = psutil.Process(proc.pid).children(recursive=True)
                proc.kill()
                killed_at = (state["epoch"], state["step"])
                break
        time.sleep(0.02)
    proc.wait()
    assert killed_at is not None, f"training ended (or never checkpointed) before the kill:\n{log_path.read_text()}"
    assert proc.returncode == -signal.SIGKILL
    _, orphans = psutil.wait_procs(descendants, timeout=120)  # a bound on a shared machine, not a measurement
    assert not orphans, f"still running after their launcher was killed: {orphans}"
    return proc.pid, killed_at


def test_a_rerun_after_kill_9_fails_the_dead_run_and_resumes(day, tmp_path, caplog):
    settings, uri, env = day
    dead_pid, (epoch, step) = kill_mid_epoch(settings, uri, env, tmp_path / "killed.log")
    client = MlflowClient()
    (stale,) = mlflow.search_runs(
        experiment_names=[settings.experiment], filter_string="attributes.status = 'RUNNING'", output_format="list"
    )
    assert stale.data.tags[PID_TAG] == str(dead_pid) and stale.data.tags["msmt.eval_ds"] == EVAL_DS
    experiment_id = stale.info.experiment_id
    host = socket.gethostname()
    alive = client.create_run(experiment_id, tags={"msmt.eval_ds": EVAL_DS, HOST_TAG: host, PID_TAG: str(os.getpid())})
    elsewhere = client.create_run(experiment_id, tags={"msmt.eval_ds": EVAL_DS, HOST_TAG: "other-host", PID_TAG: "1"})

    with caplog.at_level(logging.INFO, logger="msmt.training"):
        result = train_model(settings, uri, EVAL_DS, "mmoe", OVERRIDES)

    failed = client.get_run(stale.info.run_id)
    assert failed.info.status == "FAILED"
    assert failed.data.tags["msmt.failed_because"] == (
        f"process {dead_pid} on {host} died while the run was RUNNING; found by a re-run of {EVAL_DS}"
    )
    for untouched in (alive, elsewhere):  # a live process's run, and a pid that means nothing on this host
        assert client.get_run(untouched.info.run_id).info.status == "RUNNING"
        client.set_terminated(untouched.info.run_id)

    rerun = client.get_run(result["run_id"])
    assert rerun.info.status == "FINISHED"
    resumed = json.loads(rerun.data.tags["msmt.resumed_from"])
    assert resumed["epoch"] == epoch and resumed["step"] >= step  # not from epoch 1, step 0
    checkpoints = rerun.data.tags["msmt.checkpoint_dir"]
    assert checkpoints == stale.data.tags["msmt.checkpoint_dir"]  # the same day and model find the same directory
    progress = [r.getMessage() for r in caplog.records if r.name == "msmt.training"]
    assert f"resuming from {checkpoint.path_in(checkpoints)}" in progress
    assert [m.step for m in client.get_metric_history(rerun.info.run_id, "train_loss")] == [0, 1]
    assert not (settings.home / "checkpoints" / EVAL_DS).exists()  # spent once the re-run succeeded
