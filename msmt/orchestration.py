"""Run the real `msmt_daily` DAG in-process on the profile's SQLite metadata DB.

Airflow reads its configuration when first imported, so `airflow_env()` must
be in `os.environ` before any `import airflow`; `prepare()` does that and
migrates the metadata DB. The same variables let `airflow standalone` open the
UI on the demo's results (see README).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import subprocess
import sys
from pathlib import Path

from msmt.settings import PROJECT_ROOT, Settings

log = logging.getLogger("msmt.orchestration")

DAG_ID = "msmt_daily"


def airflow_env(settings: Settings) -> dict[str, str]:
    home = settings.airflow_home
    return {
        **settings.to_env(),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
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


def load_dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags"))
    if bag.import_errors:
        raise RuntimeError(f"DAG import errors: {bag.import_errors}")
    return bag.dags[DAG_ID]


def logical_date(ds: str) -> dt.datetime:
    """The run for day `ds` covers the data interval [ds 00:00, ds+1 00:00) UTC."""
    return dt.datetime.combine(dt.date.fromisoformat(ds), dt.time(), tzinfo=dt.UTC)


def run_daily(settings: Settings, ds: str, conf: dict | None = None) -> str:
    """One `msmt_daily` run for day `ds` through Airflow's own test runner; returns its state."""
    prepare(settings)
    dag = load_dag()
    run = dag.test(logical_date=logical_date(ds), run_conf=conf or {})
    state = str(getattr(run.state, "value", run.state))
    log.info("msmt_daily %s finished: %s", ds, state)
    return state
