"""`make cluster-demo`: msmt_daily run by Airflow's scheduler on the `msmt cluster` services.

A fresh `msmt cluster up` on the home, a small simulated week, then two days: yesterday as the
scheduled run the unpaused DAG starts by itself, and the day before as an Airflow backfill (allowed to
promote). Spark jobs run on the standalone master, Feast keeps its registry in PostgreSQL and serves
from Redis, MLflow logs to its server (artifacts in S3). The same day then runs on the local profile
over a copy of the same logs, for its wall time and gate matrix. The services stay up for browsing.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from msmt import lake, storage
from msmt.settings import Settings
from pipeline.simulate import SimConfig, simulate

DAYS = 7
# The e2e's tiny world and knobs: a day in minutes on 2 cores, and enough steps for a first model to clear
# the gate's floor (one epoch over one day of 5,000 impressions of the default world did not).
WORLD = SimConfig(n_users=2_000, n_items=500)
TINY = {"epochs": 2, "train_days": 2, "batch_size": 256, "gate_min_rows": 300}
LOCAL_TWIN = "local-profile"  # the local profile's home for the comparison, inside the demo's home


def gate_cells(settings: Settings, ds: str) -> dict[tuple[str, str], dict]:
    """(scenario, task) -> the cell of the gate of day `ds`'s run, from the gate decision in the lake."""
    from pipeline.steps import plan_day

    decision = storage.read_json(settings, lake.gate_report(settings, plan_day(settings, ds).sample_ds))
    return {(cell["scenario"], cell["task"]): cell for cell in decision["cells"]}


def judged_alike(one: dict[tuple[str, str], dict], other: dict[tuple[str, str], dict]) -> bool:
    """Whether two gate matrices have the same cells, each on the same rows and positives with the same status."""

    def judged(cells: dict) -> dict:
        return {key: (c["status"], c["rows"], c["positives"]) for key, c in cells.items()}

    return judged(one) == judged(other)


def auc_gap(one: dict[tuple[str, str], dict], other: dict[tuple[str, str], dict]) -> float:
    """The largest challenger-metric difference over the cells both matrices scored."""
    pairs = [(c["challenger"], other[key]["challenger"]) for key, c in one.items() if key in other]
    return max((abs(a - b) for a, b in pairs if a is not None and b is not None), default=0.0)


def local_twin(settings: Settings, home: Path) -> Settings:
    """The same knobs on the local profile: every service field back to its local default."""
    return settings.with_(profile="local", home=home, lake_uri="", mlflow_tracking_uri="", s3_endpoint_url="",
                          spark_master="local[2]", airflow_db_uri="", feast_registry="", feast_online_store="",
                          kubernetes=True)  # fmt: skip


def start_local_day(settings: Settings, ds: str) -> subprocess.Popen:
    """Start day `ds` on the local profile: `msmt run` in its own process (this one's Airflow is configured
    for PostgreSQL), output kept in `<its home>/local-run.log`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MSMT_", "AIRFLOW"))}
    msmt = str(Path(sys.executable).with_name("msmt"))
    settings.home.mkdir(parents=True, exist_ok=True)
    with open(settings.home / "local-run.log", "wb") as out:
        return subprocess.Popen([msmt, "run", "--ds", ds], env={**env, **settings.to_env()}, stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip


def finish_local_day(settings: Settings, process: subprocess.Popen) -> float:
    """Wait for `start_local_day`'s run; its tasks' wall time from its SQLite metadata DB."""
    if process.wait():
        log = (settings.home / "local-run.log").read_text(errors="replace")
        raise RuntimeError(f"the local profile's run failed (exit {process.returncode}):\n{log[-6000:]}")
    with sqlite3.connect(settings.airflow_db.removeprefix("sqlite:///")) as db:
        query = "SELECT min(start_date), max(end_date) FROM task_instance WHERE dag_id = 'msmt_daily'"
        first, last = db.execute(query).fetchone()  # the twin's home runs this one day only
    return (dt.datetime.fromisoformat(last) - dt.datetime.fromisoformat(first)).total_seconds()


def run_wall_time(run_id: str) -> float:
    """Seconds from a DAG run's first task start to its last task end (the same span on both profiles:
    the test runner stamps its run's start with the logical date)."""
    from airflow.models import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import func

    with create_session() as session:
        first, last = (
            session.query(func.min(TaskInstance.start_date), func.max(TaskInstance.end_date))
            .filter(TaskInstance.run_id == run_id)
            .one()
        )
    return (last - first).total_seconds()


def run_cluster_demo(settings: Settings, impressions_per_day: int, seed: int, compare_local: bool = True) -> dict:
    """Reset the home, `cluster up`, simulate, let the scheduler run two days; print what it did and where."""
    from pipeline import backfill, cluster, orchestration, scheduler
    from pipeline.demo import task_durations
    from pipeline.orchestration import DAG_ID, RunOutcome
    from training.tracking import configure_mlflow

    settings = settings.with_(**TINY)
    yesterday = (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)).isoformat()
    start, day_before = lake.shift(yesterday, -(DAYS - 1)), lake.shift(yesterday, -1)
    timings: dict[str, float] = {}
    began = time.perf_counter()
    cluster.down(settings)  # a fresh home: yesterday must not have a run already, the registry no versions
    shutil.rmtree(settings.home, ignore_errors=True)
    cluster.up(settings)
    timings["cluster up"] = time.perf_counter() - began
    profile = cluster.cluster_settings(settings)
    t0 = time.perf_counter()
    simulate(profile, start, DAYS, impressions_per_day, seed, config=WORLD)
    timings["simulate"] = time.perf_counter() - t0
    if compare_local:
        twin = local_twin(settings, profile.home / LOCAL_TWIN)
        shutil.copytree(lake.table(profile, "raw"), lake.table(twin, "raw"))  # the very same logs

    ports = cluster.service_ports(settings)
    port = ports["airflow"]
    scheduler.cli(scheduler.service_env(profile, port), "dags", "unpause", DAG_ID)
    run_id, state = scheduler.wait_for_day(profile, yesterday, "scheduled")
    runs = {yesterday: ("scheduled", run_id, state)}
    backfill_id = backfill.create(profile, day_before, day_before, {"promote": True}, rebuild=False, port=port)
    (day,) = backfill.follow(profile, backfill_id, on_day=lambda _: None)
    (run_id,) = [run for ds, run, _, _ in backfill.runs(backfill_id) if ds == day_before]
    runs[day_before] = ("backfill", run_id, day.state)

    for ds, (kind, run_id, state) in runs.items():
        timings[f"msmt_daily {ds} ({kind})"] = run_wall_time(run_id)
        print(f"\n=== msmt_daily {ds}: {state} ({kind} run, Airflow's scheduler on the cluster services) ===")
        for task, secs, task_state in task_durations(run_id):
            print(f"  {task:<20} {secs:7.1f} s  {task_state}")
        print(orchestration.run_summary(RunOutcome(ds, run_id, state, orchestration.task_states(run_id))))

    configure_mlflow(profile)
    import mlflow

    aliases = mlflow.MlflowClient().get_registered_model(profile.registered_model).aliases
    print(f"\nchampion: {profile.registered_model}@champion = v{aliases.get('champion', '-')}")

    same_gate = None
    if compare_local:
        timings[f"msmt_daily {yesterday} (local profile)"] = finish_local_day(twin, start_local_day(twin, yesterday))
        local, on_cluster = gate_cells(twin, yesterday), gate_cells(profile, yesterday)
        same_gate = judged_alike(local, on_cluster)
        gap = auc_gap(local, on_cluster)
        print(f"gate matrix of {yesterday}, local profile vs cluster: {'same' if same_gate else 'DIFFERENT'} "
              f"cells, rows, positives and statuses; AUCs within {gap:.4f}")  # fmt: skip

    print('\n=== where the results live (credentials: eval "$(msmt cluster env)") ===')
    print(f"  Airflow UI:       http://127.0.0.1:{port}   (metadata DB {profile.airflow_db})")
    print(f"  MLflow UI:        {profile.mlflow_uri}   (runs in PostgreSQL; model {profile.registered_model})")
    print(f"  MLflow artifacts: s3://{cluster.BUCKETS['mlflow']}/artifacts at {profile.s3_endpoint_url}")
    print(f"  Spark master UI:  http://127.0.0.1:{ports['spark-master-ui']}   (jobs: {profile.spark_master})")
    print(f"  Feast registry:   {profile.feast_registry}")
    print(f"  Feast online:     redis://{profile.feast_online_store}")
    print(f"  lake:             {profile.lake}   (reports: {lake.report(profile, yesterday)})")
    print(f"  service logs:     {cluster.Home.of(settings).logs} and {profile.airflow_home / 'services'}")
    print("  the services keep running: `make cluster-down` stops them")
    print("\n=== wall time ===")
    for step, secs in timings.items():
        print(f"  {step:<42} {secs:7.1f} s")
    print(f"  {'total':<42} {time.perf_counter() - began:7.1f} s")
    return {"states": {ds: state for ds, (_, _, state) in runs.items()}, "timings": timings, "same_gate": same_gate}
