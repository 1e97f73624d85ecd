"""Run the real `msmt_daily` DAG in-process on the profile's SQLite metadata DB, and say how it ended.

Airflow reads its configuration when first imported, so `airflow_env()` must
be in `os.environ` before any `import airflow`; `prepare()` does that and
migrates the metadata DB. The same variables let `airflow standalone` open the
UI on the demo's results (see README).

A run's summary is read from that run only (its task states and XComs), never
from files a previous run of the day left behind.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from msmt import locks
from msmt.errors import StopRun
from msmt.settings import PROJECT_ROOT, Settings

log = logging.getLogger("msmt.orchestration")

DAG_ID = "msmt_daily"
EXPERIMENT_DAG_ID = "msmt_experiment"
ERROR_KEY = "error"  # XCom key under which a failed task leaves its error for the run's summary
TASK_ORDER = ("plan_day", "check_raw_logs", "build_samples", "build_features", "check_samples", "publish_features",
              "build_training_set", "train_pod", "train_model", "evaluate_model", "promote_model")  # fmt: skip


class NothingRan(StopRun):
    """A run that executed no task: an error, never a success."""


# Seconds an Airflow connection waits for SQLite's write lock (pysqlite's default is 5). The scheduler, its
# task processes, the api-server and the CLI share one file; on 2 busy cores a backfill's insert waited
# longer than 5 s, failed with "database is locked", and the scheduler then died on the rolled-back rows.
SQLITE_CONNECT_ARGS = {"timeout": 60}
SERVER_CONNECT_ARGS: dict = {}  # PostgreSQL: the driver's own defaults (psycopg refuses "timeout")


def airflow_env(settings: Settings) -> dict[str, str]:
    home = settings.airflow_home
    args = "SQLITE_CONNECT_ARGS" if settings.airflow_db.startswith("sqlite") else "SERVER_CONNECT_ARGS"
    return {
        # always set: a process that prepared the local profile first must not carry its args to PostgreSQL
        **{f"AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS{end}": f"{__name__}.{args}" for end in ("", "_ASYNC")},
        **settings.to_env(),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": settings.airflow_db,
        "AIRFLOW__CORE__PARALLELISM": "2",  # 2 cores: keep `airflow standalone` small
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
        "SPARK_LOCAL_IP": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"),
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }


def prepare(settings: Settings) -> None:
    """Export the Airflow / msmt environment and migrate the metadata DB (idempotent)."""
    settings.ensure_dirs()
    env = airflow_env(settings)
    os.environ.update(env)
    airflow = Path(sys.executable).with_name("airflow")
    subprocess.run(
        [str(airflow), "db", "migrate"],
        env={**os.environ},
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def load_dag(dag_id: str = DAG_ID):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags"))
    if bag.import_errors:
        raise RuntimeError(f"DAG import errors: {bag.import_errors}")
    return bag.dags[dag_id]


def logical_date(ds: str) -> dt.datetime:
    """The run for day `ds` covers the data interval [ds 00:00, ds+1 00:00) UTC."""
    return dt.datetime.combine(dt.date.fromisoformat(ds), dt.time(), tzinfo=dt.UTC)


def fail_fast(task_function: Callable) -> Callable:
    """Wrap a task body: leave its error in XCom for the run's summary; a `StopRun` fails without retry.

    A StopRun (failed check, bad override, refused promotion) is deterministic: a
    retry would only wait `retry_delay_s` to fail the same way.
    """

    @functools.wraps(task_function)
    def guarded(*args, **kwargs):
        try:
            return task_function(*args, **kwargs)
        except Exception as error:
            from airflow.sdk import get_current_context
            from airflow.sdk.exceptions import AirflowFailException

            get_current_context()["ti"].xcom_push(ERROR_KEY, f"{type(error).__name__}: {error}")
            if isinstance(error, StopRun):
                raise AirflowFailException(str(error)) from error
            raise

    return guarded


@dataclass(frozen=True)
class RunOutcome:
    """How one `msmt_daily` run ended: its state and each task's state, in flow order."""

    ds: str
    run_id: str
    state: str
    tasks: dict[str, str]

    @property
    def failed_task(self) -> str | None:
        return next((task for task, state in self.tasks.items() if state == "failed"), None)


def run_daily(settings: Settings, ds: str, conf: dict | None = None) -> RunOutcome:
    """One `msmt_daily` run for day `ds` through Airflow's own test runner, standing in for the daily
    schedule: a passing gate promotes unless `conf` says `promote: false` (the test runner's runs are
    manual ones, which by themselves do not promote).

    Refused (StopRun) for a day before the DAG's start and while another process
    runs the same day; a run in which no task executed is an error too.
    """
    if ds < settings.dag_start:
        raise NothingRan(
            f"msmt_daily starts on {settings.dag_start} (MSMT_DAG_START), so Airflow would run no task for {ds}; "
            f"for logs older than that (imported datasets), export MSMT_DAG_START={ds} or earlier and run again"
        )
    with locks.hold(settings, f"{DAG_ID}.{ds}", f"msmt_daily run of {ds}"):
        prepare(settings)
        run = load_dag().test(logical_date=logical_date(ds), run_conf={"promote": True, **(conf or {})})
    outcome = RunOutcome(ds, run.run_id, str(getattr(run.state, "value", run.state)), task_states(run.run_id))
    log.info("msmt_daily %s finished: %s", ds, outcome.state)
    return _ran(outcome, f"msmt_daily for {ds}")


def run_experiment(settings: Settings, conf: dict) -> RunOutcome:
    """One `msmt_experiment` run (conf: model, from, to, baseline, …) through Airflow's test runner.

    Its run has no logical date: experiments of the same days never collide with each other or with
    the daily runs. A failed mapped day fails its task; the outcome lists each task's worst state."""
    prepare(settings)
    run = load_dag(EXPERIMENT_DAG_ID).test(logical_date=None, run_conf=conf)
    state = str(getattr(run.state, "value", run.state))
    outcome = RunOutcome(f"{conf.get('from')}..{conf.get('to')}", run.run_id, state,
                         task_states(run.run_id, EXPERIMENT_DAG_ID))  # fmt: skip
    log.info("msmt_experiment %s finished: %s", outcome.ds, outcome.state)
    return _ran(outcome, f"msmt_experiment {outcome.ds}")


def _ran(outcome: RunOutcome, what: str) -> RunOutcome:
    """The outcome, or NothingRan when no task of the run executed: a run that did nothing is an error."""
    if not any(state not in ("None", "removed", "skipped", "upstream_failed") for state in outcome.tasks.values()):
        raise NothingRan(f"{what} executed no task (task states: {outcome.tasks or 'none'})")
    return outcome


def task_states(run_id: str, dag_id: str = DAG_ID) -> dict[str, str]:
    """State of each task of the run, in the DAG's flow order (a mapped task: its failed state if any)."""
    from airflow.models import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        query = session.query(TaskInstance.task_id, TaskInstance.state)
        rows = query.filter(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id)
        states: dict[str, str] = {}
        for task, state in rows:
            if states.get(task) != "failed":
                states[task] = str(getattr(state, "value", state))
    order = {task: i for i, task in enumerate(TASK_ORDER)}
    return dict(sorted(states.items(), key=lambda item: order.get(item[0], len(order))))


def failed_task(run_id: str, dag_id: str = DAG_ID) -> str | None:
    """The first failed task of a run, in flow order."""
    return next((task for task, state in task_states(run_id, dag_id).items() if state == "failed"), None)


def task_value(run_id: str, task_id: str, key: str = "return_value", dag_id: str = DAG_ID):
    """An XCom of one task of the run (None when it left none)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = (
            session.query(XComModel.value)
            .filter(XComModel.dag_id == dag_id, XComModel.run_id == run_id)
            .filter(XComModel.task_id == task_id, XComModel.key == key)
            .first()
        )
    return None if row is None else row[0]


def run_summary(outcome: RunOutcome) -> str:
    """What this run decided, or where and why it stopped before the gate."""
    from training.gate import GateDecision

    decision = task_value(outcome.run_id, "evaluate_model")
    if decision is None:
        failed = outcome.failed_task
        if failed is None:
            return f"run {outcome.ds} ({outcome.state}) stopped before the gate; task states: {outcome.tasks}"
        error = task_value(outcome.run_id, failed, ERROR_KEY) or "no error recorded; see the task's log"
        return f"run {outcome.ds} stopped before the gate: {failed} failed\n  {error}"
    gate = GateDecision.from_dict(decision)
    promotion = task_value(outcome.run_id, "promote_model") or {}
    if promotion.get("promoted"):
        verdict = f"PROMOTED v{decision['challenger_version']} to champion"
    elif gate.passed:
        verdict = f"PASSED, not promoted: {promotion.get('reason') or 'promote_model did not run'}"
    else:
        verdict = f"REJECTED v{decision['challenger_version']}"
    return "\n".join([gate.format_matrix(), f"decision: {verdict}", *[f"  - {r}" for r in gate.reasons]])
