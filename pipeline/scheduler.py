"""Airflow 3's own services for msmt: the api-server, the scheduler and the dag-processor, on the
profile's metadata DB with the LocalExecutor, so the daily schedule and backfills run msmt for real.

`up` starts each service in its own process group (logs under `<airflow home>/services/`, process
ids in `services.json`), waits until the api-server answers and the DAG is parsed, and unpauses
msmt_daily; `down` stops them by process group (SIGTERM, then SIGKILL). `wait_for_day` follows a day's
run in the metadata DB until it ends. The demo keeps the in-process test runner
(`orchestration.run_daily`), which needs no service and says so.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path

from msmt.errors import StopRun
from msmt.settings import Settings
from pipeline import orchestration
from pipeline.orchestration import DAG_ID, EXPERIMENT_DAG_ID, airflow_env, prepare

log = logging.getLogger("msmt.scheduler")

SERVICES = ("api-server", "scheduler", "dag-processor")
# The LocalExecutor's tasks log to files the api-server reads itself: no log server listening on every interface.
ARGS = {"scheduler": ("--skip-serve-logs",)}
DEFAULT_PORT = 8080
FINISHED = ("success", "failed")


class ServiceError(StopRun):
    """A service did not come up (or a run did not end) in time; the message names it and its log."""


def _airflow() -> str:
    return str(Path(sys.executable).with_name("airflow"))


def _state_file(settings: Settings) -> Path:
    return settings.airflow_home / "services.json"


def service_env(settings: Settings, port: int) -> dict[str, str]:
    """The variables every service and CLI call shares: msmt's Airflow env, the LocalExecutor, the port."""
    return {
        **os.environ,
        **airflow_env(settings),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "10",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",  # unpaused by `up`, on purpose, once parsed
    }


def running(settings: Settings) -> dict[str, int]:
    """Services this profile started that are still alive: name -> process group id."""
    path = _state_file(settings)
    if not path.exists():
        return {}
    return {name: pid for name, pid in json.loads(path.read_text())["pids"].items() if alive(pid)}


def alive(group: int) -> bool:
    """Whether any live process of the group is left (its leader reaped first when it is our own child).

    Zombies do not count: a PID 1 that never reaps (a container's) keeps the orphaned services of an
    earlier `up` as zombies after they exit, and `killpg(group, 0)` still finds those."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(group, os.WNOHANG)
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    if not Path("/proc/self").exists():
        return True  # no procfs (macOS): trust killpg
    return any(_live_member(stat, group) for stat in Path("/proc").glob("[0-9]*/stat"))


def _live_member(stat: Path, group: int) -> bool:
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, pgrp, …
    except (OSError, IndexError):
        return False  # gone meanwhile
    return int(fields[2]) == group and fields[0] != "Z"


def up(settings: Settings, port: int = DEFAULT_PORT, timeout_s: float = 240, unpause: bool = True) -> dict[str, int]:
    """Start the three services (idempotent: running ones are kept) and unpause msmt_daily (if `unpause`)."""
    if len(running(settings)) == len(SERVICES):
        log.info("airflow services already up: %s", running(settings))
        return running(settings)
    down(settings)  # a half-started set: start clean
    prepare(settings)
    env = service_env(settings, port)
    logs = settings.airflow_home / "services"
    logs.mkdir(parents=True, exist_ok=True)
    pids = {}
    for name in SERVICES:
        with open(logs / f"{name}.log", "ab") as out:
            process = subprocess.Popen([_airflow(), name, *ARGS.get(name, ())], env=env, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        pids[name] = process.pid
    _state_file(settings).write_text(json.dumps({"port": port, "pids": pids}))
    deadline = time.monotonic() + timeout_s
    try:
        _wait(lambda: _answers(port), deadline, f"the api-server on port {port}", logs / "api-server.log")
        _wait(_parsed, deadline, f"{DAG_ID} and {EXPERIMENT_DAG_ID} parsed", logs / "dag-processor.log")
    except ServiceError:
        down(settings)
        raise
    cli(env, "dags", "unpause", EXPERIMENT_DAG_ID)  # unscheduled: runs only when someone triggers an experiment
    if unpause:
        cli(env, "dags", "unpause", DAG_ID)
    log.info("airflow services up on http://127.0.0.1:%d (logs in %s): %s", port, logs, pids)
    return pids


def down(settings: Settings, grace_s: float = 20) -> list[str]:
    """Stop every service this profile started, by process group, and return once every process of
    those groups is gone (SIGTERM, SIGKILL past `grace_s`); returns the names stopped."""
    started = running(settings)
    stop(started.values(), grace_s)
    _state_file(settings).unlink(missing_ok=True)
    return sorted(started)


def stop(groups: Iterable[int], grace_s: float = 20, sig: int = signal.SIGTERM) -> None:
    """Send `sig` to each process group, SIGKILL what is left after `grace_s`; return once all are gone."""
    groups = list(groups)
    for pid in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)
    if not _gone(groups, grace_s):
        for pid in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        if not _gone(groups, grace_s):
            raise ServiceError(f"process groups {sorted(groups)} survived SIGKILL")


def _gone(groups, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while any(alive(group) for group in groups):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def wait_for_day(settings: Settings, ds: str, run_type: str = "scheduled", timeout_s: float = 900) -> tuple[str, str]:
    """(run id, final state) of the `run_type` run of day `ds` (its logical date), polled in the metadata DB.

    Airflow 3 names a scheduled run after the end of its interval (`scheduled__<ds + 1>T00:00…`), so the
    run is found by its logical date, not by a guessed id. ServiceError past the timeout."""
    from airflow.models import DagRun
    from airflow.utils.session import create_session

    os.environ.update(airflow_env(settings))
    logical = orchestration.logical_date(ds)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with create_session() as session:
            run = (
                session.query(DagRun.run_id, DagRun.state)
                .filter(DagRun.dag_id == DAG_ID, DagRun.logical_date == logical, DagRun.run_type == run_type)
                .one_or_none()
            )
        if run is not None and str(getattr(run.state, "value", run.state)) in FINISHED:
            return run.run_id, str(getattr(run.state, "value", run.state))
        time.sleep(3)
    raise ServiceError(f"no {run_type} run of {DAG_ID} for {ds} finished within {timeout_s:.0f} s")


def service_port(settings: Settings) -> int:
    """The api-server's port of this home's running services; ServiceError when they are not running."""
    if SERVICES[0] not in running(settings):
        raise ServiceError(f"Airflow's services are not running for {settings.home}: start them with `msmt airflow up`")
    return int(json.loads(_state_file(settings).read_text())["port"])


def trigger(settings: Settings, dag_id: str, conf: dict, run_id: str, timeout_s: float = 3600) -> str:
    """Trigger `dag_id` with `conf` on the running services (no logical date) and wait for the run's final state."""
    from airflow.models import DagRun
    from airflow.utils.session import create_session

    port = service_port(settings)
    cli(service_env(settings, port), "dags", "trigger", dag_id, "--run-id", run_id, "--conf", json.dumps(conf))
    os.environ.update(airflow_env(settings))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with create_session() as session:
            state = session.query(DagRun.state).filter(DagRun.dag_id == dag_id, DagRun.run_id == run_id).scalar()
        if str(getattr(state, "value", state)) in FINISHED:
            return str(getattr(state, "value", state))
        time.sleep(3)
    raise ServiceError(f"{dag_id} run {run_id} did not finish within {timeout_s:.0f} s")


def cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([_airflow(), *args], env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise ServiceError(f"airflow {' '.join(args)} failed: {done.stderr.strip()[-2000:]}")
    return done.stdout


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _parsed() -> bool:
    """The dag-processor has serialised both DAGs into the metadata DB (what the scheduler schedules from)."""
    from airflow.models import DagModel
    from airflow.utils.session import create_session

    with create_session() as session:
        return session.query(DagModel).filter(DagModel.dag_id.in_((DAG_ID, EXPERIMENT_DAG_ID))).count() == 2


def _wait(ready, deadline: float, what: str, log_file: Path) -> None:
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(2)
    tail = log_file.read_text(errors="replace")[-1500:] if log_file.exists() else "(no log)"
    raise ServiceError(f"{what} not ready in time; {log_file} ends with:\n{tail}")
