"""`make demo`: a week of simulated logs, then two real `msmt_daily` runs.

Prints each day's gate matrix and decision, the wall time of every task and
where the results live.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from msmt import lake
from msmt.settings import Settings

DEMO_START = "2026-01-01"


def task_durations(ds: str) -> list[tuple[str, float, str]]:
    """(task, seconds, state) of the `msmt_daily` run for `ds`, from Airflow's metadata DB."""
    from airflow.models import DagRun, TaskInstance
    from airflow.utils.session import create_session

    from msmt.orchestration import DAG_ID, logical_date

    with create_session() as session:
        run = (
            session.query(DagRun)
            .filter(DagRun.dag_id == DAG_ID, DagRun.logical_date == logical_date(ds))
            .order_by(DagRun.id.desc())
            .first()
        )
        tis = session.query(TaskInstance).filter(TaskInstance.run_id == run.run_id).all()
        rows = [(ti.task_id, ti.duration or 0.0, str(ti.state), ti.start_date) for ti in tis]
    return [(task, secs, state) for task, secs, state, _ in sorted(rows, key=lambda r: (r[3] is None, r[3]))]


def gate_summary(settings: Settings, ds: str) -> str:
    from msmt.pipeline import plan_day
    from training.gate import GateDecision

    path = Path(lake.gate_report(settings, plan_day(settings, ds).sample_ds))
    if not path.exists():
        return f"no gate decision for {ds} (the run stopped before the gate)"
    decision = GateDecision.from_dict(json.loads(path.read_text()))
    verdict = "PROMOTED" if decision.passed else "REJECTED"
    return "\n".join([decision.format_matrix(), f"decision: {verdict}", *[f"  - {r}" for r in decision.reasons]])


def run_demo(settings: Settings, days: int, impressions_per_day: int, seed: int, reset: bool = True) -> dict:
    from msmt import orchestration
    from msmt.simulate import simulate

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
        states[ds] = orchestration.run_daily(settings, ds)
        timings[f"msmt_daily {ds}"] = time.perf_counter() - t0
        print(f"\n=== msmt_daily {ds}: {states[ds]} ===")
        for task, secs, state in task_durations(ds):
            print(f"  {task:<20} {secs:7.1f} s  {state}")
        print(gate_summary(settings, ds))
    print("\n=== where the results live ===")
    print(f"  lake:            {settings.lake}")
    print(f"  MLflow:          {settings.mlflow_uri}   (make mlflow-ui)")
    print(f"  Airflow home:    {settings.airflow_home}   (make airflow-ui)")
    print(f"  Feast registry:  {settings.feast_dir}")
    print("\n=== wall time ===")
    for step, secs in timings.items():
        print(f"  {step:<24} {secs:7.1f} s")
    print(f"  {'total':<24} {time.perf_counter() - started:7.1f} s")
    return {"states": states, "timings": timings}
