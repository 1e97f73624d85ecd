"""`make demo`: a week of simulated logs, then two real `msmt_daily` runs.

Prints each day's gate matrix and decision, the wall time of every task and
where the results live.
"""

from __future__ import annotations

import os
import shutil
import time

from msmt import lake
from msmt.settings import Settings

DEMO_START = "2026-01-01"


def task_durations(run_id: str) -> list[tuple[str, float, str]]:
    """(task, seconds, state) of one `msmt_daily` run, in the order the tasks started."""
    from airflow.models import TaskInstance
    from airflow.utils.session import create_session

    from pipeline.orchestration import DAG_ID

    with create_session() as session:
        tis = session.query(TaskInstance).filter(TaskInstance.dag_id == DAG_ID, TaskInstance.run_id == run_id).all()
        rows = [(ti.task_id, ti.duration or 0.0, str(ti.state), ti.start_date) for ti in tis]
    return [(task, secs, state) for task, secs, state, _ in sorted(rows, key=lambda r: (r[3] is None, r[3]))]


def run_demo(settings: Settings, days: int, impressions_per_day: int, seed: int, reset: bool = True) -> dict:
    from pipeline import orchestration
    from pipeline.simulate import simulate

    # Task logs stay in the metadata DB and the Airflow UI; the console gets the summaries.
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    if reset and settings.home.exists():
        shutil.rmtree(settings.home)
    settings.ensure_dirs()
    timings: dict[str, float] = {}
    started = time.perf_counter()
    simulate(settings, DEMO_START, days, impressions_per_day, seed)
    timings["simulate"] = time.perf_counter() - started

    run_days = [lake.shift(DEMO_START, days - 2), lake.shift(DEMO_START, days - 1)]
    states = {}
    for ds in run_days:
        t0 = time.perf_counter()
        outcome = orchestration.run_daily(settings, ds)
        states[ds] = outcome.state
        timings[f"msmt_daily {ds}"] = time.perf_counter() - t0
        print(f"\n=== msmt_daily {ds}: {outcome.state} (Airflow's in-process test runner, dag.test) ===")
        for task, secs, state in task_durations(outcome.run_id):
            print(f"  {task:<20} {secs:7.1f} s  {state}")
        print(orchestration.run_summary(outcome))
    print("\n=== where the results live ===")
    print(f"  lake:            {settings.lake}")
    print(f"  MLflow:          {settings.mlflow_uri}   (make mlflow-ui)")
    print(f"  Airflow home:    {settings.airflow_home}   (make airflow-ui)")
    print(f"  Feast registry:  {settings.feast_dir}")
    print(f"  reports:         {lake.report(settings, run_days[-1])}   (open in a browser; one per run day)")
    print("\n=== wall time ===")
    for step, secs in timings.items():
        print(f"  {step:<24} {secs:7.1f} s")
    print(f"  {'total':<24} {time.perf_counter() - started:7.1f} s")
    return {"states": states, "timings": timings}
