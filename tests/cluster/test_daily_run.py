"""msmt_daily run by Airflow's scheduler on the suite's services (conftest's cluster), on tiny data.

The unpaused DAG starts yesterday's scheduled run by itself. Redis is killed once the run starts (Spark's
jobs ahead, Feast's publish still to come): the run fails naming Redis, `msmt cluster up` brings Redis
back, the failed tasks are cleared and the scheduler finishes the run. Meanwhile the same day runs on the
local profile over a copy of the same logs (its own home and processes): the same samples and gate matrix.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import time
import urllib.request
from dataclasses import dataclass

import pyarrow.dataset as pds
import pytest
from cluster_support import msmt, secret_values, state

from msmt import lake
from msmt.settings import Settings
from pipeline import scheduler
from pipeline.cluster_demo import (
    LOCAL_TWIN,
    WORLD,
    auc_gap,
    finish_local_day,
    gate_cells,
    judged_alike,
    local_twin,
    start_local_day,
)
from pipeline.orchestration import DAG_ID, ERROR_KEY, logical_date, task_states, task_value
from pipeline.simulate import simulate
from pipeline.steps import plan_day

pytestmark = pytest.mark.cluster

YESTERDAY = (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)).isoformat()
START = lake.shift(YESTERDAY, -6)


@pytest.fixture(scope="module")
def world(cluster):
    """A week of tiny logs in the cluster lake; this process gets the environment a DAG task has."""
    home, env = cluster
    saved = dict(os.environ)
    os.environ.update(env)
    settings = Settings.from_env(env)
    simulate(settings, START, 7, 6_000, seed=3, config=WORLD, progress=False)
    yield home, env, settings
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module")
def local_run(world):
    """Yesterday on the local profile, started before the scheduled run so that the two overlap."""
    home, _, settings = world
    twin = local_twin(settings, home / LOCAL_TWIN)
    shutil.copytree(lake.table(settings, "raw"), lake.table(twin, "raw"))
    process = start_local_day(twin, YESTERDAY)
    yield twin, process
    process.kill()  # a no-op once it ended
    process.wait()


@dataclass
class ScheduledDay:
    """Yesterday's scheduled run: what it did with Redis dead, and after its failed tasks were cleared."""

    run_id: str
    killed_state: str  # the run's state once Redis died
    killed_tasks: dict[str, str]
    error: str  # publish_features' error
    versions_when_failed: int
    samples_when_failed: dict[str, set[tuple]]
    redis_restarted: bool
    state: str  # after the clear


@pytest.fixture(scope="module")
def scheduled(world, local_run) -> ScheduledDay:
    """Unpause msmt_daily; kill Redis as soon as yesterday's scheduled run starts; `cluster up`, clear, finish."""
    home, env, settings = world
    airflow = scheduler.service_env(settings, int(env["AIRFLOW__API__PORT"]))
    scheduler.cli(airflow, "dags", "unpause", DAG_ID)
    deadline = time.monotonic() + 300
    while "running" not in _states(YESTERDAY):
        assert time.monotonic() < deadline, "the scheduler did not start yesterday's run"
        time.sleep(1)
    redis_group = state(home)["pids"]["redis"]
    os.killpg(redis_group, signal.SIGKILL)
    run_id, killed_state = scheduler.wait_for_day(settings, YESTERDAY, "scheduled", timeout_s=1200)
    killed_tasks = task_states(run_id)
    error = task_value(run_id, "publish_features", ERROR_KEY) or ""
    versions = len(_versions(env, settings))
    samples = {ds: _sample_rows(settings, ds) for ds in plan_day(settings, YESTERDAY).feature_days}

    msmt(env, "cluster", "up")
    restarted = state(home)["pids"]["redis"] != redis_group
    scheduler.cli(airflow, "dags", "clear", DAG_ID, "--run-id", run_id, "--only-failed", "--yes")
    cleared_id, final = scheduler.wait_for_day(settings, YESTERDAY, "scheduled", timeout_s=1200)
    assert cleared_id == run_id
    return ScheduledDay(run_id, killed_state, killed_tasks, error, versions, samples, restarted, final)


def _client(env):
    from mlflow import MlflowClient

    uri = env["MSMT_MLFLOW_TRACKING_URI"]
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _versions(env, settings) -> list:
    return _client(env).search_model_versions(f"name='{settings.registered_model}'")


def _sample_rows(settings, ds: str) -> set[tuple]:
    table = pds.dataset(lake.samples(settings, ds), partitioning="hive").to_table()
    return set(zip(*(table[c].to_pylist() for c in ("impression_id", *settings.tasks, "scenario")), strict=True))


def _states(ds: str) -> set[str]:
    """States of the runs of day `ds` (any run type)."""
    from airflow.models import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        found = session.query(DagRun.state).filter(DagRun.dag_id == DAG_ID, DagRun.logical_date == logical_date(ds))
        return {str(getattr(row.state, "value", row.state)) for row in found}


def test_killing_redis_mid_run_names_it_and_nothing_is_registered(world, scheduled):
    _, _, settings = world
    assert scheduled.killed_state == "failed", scheduled.killed_tasks
    assert scheduled.killed_tasks["publish_features"] == "failed", scheduled.killed_tasks
    assert scheduled.killed_tasks["build_samples"] == "success"  # Spark's jobs did not need Redis
    assert f"Redis at {settings.feast_online_store}" in scheduled.error, scheduled.error
    assert "`msmt cluster up` restarts it" in scheduled.error
    assert scheduled.versions_when_failed == 0  # the failed run registered nothing
    assert scheduled.redis_restarted


def test_clearing_after_up_finishes_the_scheduled_run_and_loses_nothing(world, scheduled):
    _, env, settings = world
    assert scheduled.state == "success", task_states(scheduled.run_id)
    assert scheduled.run_id.startswith("scheduled__")
    assert set(task_states(scheduled.run_id).values()) == {"success"}
    assert len(_versions(env, settings)) == 1  # the cleared run's version, and only it
    rows = {ds: _sample_rows(settings, ds) for ds in scheduled.samples_when_failed}
    assert rows == scheduled.samples_when_failed and all(rows.values())  # samples intact


def test_the_model_is_on_the_mlflow_server_as_champion_with_its_artifacts_in_s3(world, scheduled):
    import boto3

    _, env, settings = world
    champion = _client(env).get_registered_model(settings.registered_model).aliases["champion"]
    (version,) = [v for v in _versions(env, settings) if v.version == str(champion)]
    assert str(task_value(scheduled.run_id, "train_model")["version"]) == version.version
    keys = {"aws_access_key_id": env["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"]}
    s3 = boto3.client("s3", endpoint_url=env["MSMT_S3_ENDPOINT_URL"], region_name="us-east-1", **keys)
    listed = s3.get_paginator("list_objects_v2").paginate(Bucket="msmt-mlflow")
    stored = [item["Key"] for page in listed for item in page.get("Contents", [])]
    assert any(f"/{version.run_id}/artifacts/checks/" in key for key in stored), stored[:20]  # the run's artifacts
    assert any(key.endswith("/MLmodel") for key in stored)  # the logged model
    assert not (settings.home / "mlflow" / "artifacts").exists()  # nothing fell back to a local directory


def test_feast_registry_is_in_postgres_and_features_are_online_in_redis(world, scheduled):
    import psycopg
    import redis

    _, env, settings = world
    port = int(settings.airflow_db.rsplit(":", 1)[1].split("/")[0])
    with psycopg.connect(host="127.0.0.1", port=port, user="msmt", dbname="feast", passfile=env["PGPASSFILE"]) as db:
        views = {row[0] for row in db.execute("SELECT feature_view_name FROM feature_views")}
    assert set(settings.data_contract.features) <= views
    host, redis_port = settings.feast_online_store.split(":")
    online = redis.Redis(host, int(redis_port), password=env["REDISCLI_AUTH"])
    keys = list(online.scan_iter(count=1000))
    assert keys and all(key.endswith(b"msmt") for key in keys)  # Feast's keys: entity key + project
    assert all(online.hlen(key) > 0 for key in keys[:50])  # each holds feature values


def test_the_spark_jobs_ran_on_the_standalone_master(world, scheduled):
    home, _, settings = world
    ui = state(home)["ports"]["spark-master-ui"]
    with urllib.request.urlopen(f"http://127.0.0.1:{ui}/json/", timeout=10) as response:
        master = json.loads(response.read())
    jobs = [app for app in master["completedapps"] if app["name"] == "msmt"]  # get_spark's app name
    assert len(jobs) >= 2 and {app["state"] for app in jobs} == {"FINISHED"}, master["completedapps"]
    assert _sample_rows(settings, plan_day(settings, YESTERDAY).sample_ds)  # written by the worker's executors


def test_no_password_in_the_mlflow_runs(world, scheduled):
    home, env, settings = world
    client = _client(env)
    experiment = client.get_experiment_by_name(settings.experiment)
    values = [
        value
        for run in client.search_runs([experiment.experiment_id])
        for value in (*run.data.params.values(), *run.data.tags.values())
    ]
    assert values and not [value for value in values if any(secret in value for secret in secret_values(home))]


def test_the_local_profile_builds_the_same_samples_and_gate_matrix_from_the_same_logs(world, local_run):
    """The same knobs and seed on the local profile (its own home, a copy of the raw logs): Spark in
    `local[2]`, Feast on SQLite files, MLflow on SQLite. Same rows, same cells judged the same way."""
    _, _, settings = world
    twin, process = local_run
    finish_local_day(twin, process)

    plan = plan_day(settings, YESTERDAY)
    assert {ds: _sample_rows(twin, ds) for ds in plan.feature_days} == {
        ds: _sample_rows(settings, ds) for ds in plan.feature_days
    }
    on_cluster, on_local = gate_cells(settings, YESTERDAY), gate_cells(twin, YESTERDAY)
    assert on_cluster.keys() == {(s, t) for s in settings.scenarios for t in settings.tasks}
    assert judged_alike(on_cluster, on_local), (on_cluster, on_local)
    assert auc_gap(on_cluster, on_local) < 0.02  # one seed, the same rows: only the order of float sums may differ
