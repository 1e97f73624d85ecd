"""msmt_daily run by Airflow's scheduler on the suite's services (conftest's cluster), on tiny data.

Yesterday runs as the scheduled run the unpaused DAG starts by itself; the day before is triggered, Redis
is killed during its run, and its failed tasks are cleared once `msmt cluster up` brought Redis back.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import time
import urllib.request

import pyarrow.dataset as pds
import pytest
from cluster_support import msmt, secret_values, state

from msmt import lake
from msmt.settings import Settings
from pipeline import scheduler
from pipeline.cluster_demo import WORLD
from pipeline.orchestration import DAG_ID, ERROR_KEY, task_states, task_value
from pipeline.simulate import simulate
from pipeline.steps import plan_day

pytestmark = pytest.mark.cluster

YESTERDAY = (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)).isoformat()
START, DAY_BEFORE = lake.shift(YESTERDAY, -6), lake.shift(YESTERDAY, -1)


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
def scheduled(world) -> tuple[str, str]:
    """Unpause msmt_daily: the scheduler runs yesterday by itself; (run id, final state)."""
    _, env, settings = world
    scheduler.cli(scheduler.service_env(settings, int(env["AIRFLOW__API__PORT"])), "dags", "unpause", DAG_ID)
    return scheduler.wait_for_day(settings, YESTERDAY, "scheduled", timeout_s=600)


def _client(env):
    from mlflow import MlflowClient

    uri = env["MSMT_MLFLOW_TRACKING_URI"]
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _versions(env, settings) -> list:
    return _client(env).search_model_versions(f"name='{settings.registered_model}'")


def _sample_rows(settings, ds: str) -> set[tuple]:
    table = pds.dataset(lake.samples(settings, ds), partitioning="hive").to_table()
    return set(zip(*(table[c].to_pylist() for c in ("impression_id", *settings.tasks, "scenario")), strict=True))


def test_the_scheduler_runs_yesterday_on_the_services(scheduled):
    run_id, run_state = scheduled
    assert run_id.startswith("scheduled__") and run_state == "success", task_states(run_id)
    assert set(task_states(run_id).values()) == {"success"}


def test_the_model_is_on_the_mlflow_server_as_champion_with_its_artifacts_in_s3(world, scheduled):
    import boto3

    _, env, settings = world
    champion = _client(env).get_registered_model(settings.registered_model).aliases["champion"]
    (version,) = [v for v in _versions(env, settings) if v.version == str(champion)]
    assert str(task_value(scheduled[0], "train_model")["version"]) == version.version
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


def test_killing_redis_mid_run_names_it_and_clearing_after_up_loses_nothing(world, scheduled):
    """The day before, triggered by hand; Redis is killed once it runs (Spark's jobs ahead, Feast's publish
    still to come). After `msmt cluster up` the failed tasks are cleared and the scheduler finishes the run."""
    home, env, settings = world
    airflow = scheduler.service_env(settings, int(env["AIRFLOW__API__PORT"]))
    versions = len(_versions(env, settings))
    scheduler.cli(airflow, "dags", "trigger", DAG_ID, "--logical-date", DAY_BEFORE, "--conf", '{"promote": true}')
    deadline = time.monotonic() + 300
    while "running" not in _states(DAY_BEFORE):
        assert time.monotonic() < deadline, "the triggered run did not start"
        time.sleep(1)
    redis_group = state(home)["pids"]["redis"]
    os.killpg(redis_group, signal.SIGKILL)
    run_id, run_state = scheduler.wait_for_day(settings, DAY_BEFORE, "manual", timeout_s=600)
    assert run_state == "failed" and task_states(run_id)["publish_features"] == "failed", task_states(run_id)
    error = task_value(run_id, "publish_features", ERROR_KEY)
    assert f"Redis at {settings.feast_online_store}" in error and "`msmt cluster up` restarts it" in error, error
    assert len(_versions(env, settings)) == versions  # nothing registered by the failed run
    built = plan_day(settings, DAY_BEFORE).feature_days
    rows = {ds: _sample_rows(settings, ds) for ds in built}

    msmt(env, "cluster", "up")
    assert state(home)["pids"]["redis"] != redis_group
    scheduler.cli(airflow, "dags", "clear", DAG_ID, "--run-id", run_id, "--only-failed", "--yes")
    assert scheduler.wait_for_day(settings, DAY_BEFORE, "manual", timeout_s=600) == (run_id, "success")
    assert len(_versions(env, settings)) == versions + 1  # the re-run's version, and only it
    assert {ds: _sample_rows(settings, ds) for ds in built} == rows and all(rows.values())  # samples intact


def _states(ds: str) -> set[str]:
    """States of the runs of day `ds` (any run type)."""
    from airflow.models import DagRun
    from airflow.utils.session import create_session

    from pipeline.orchestration import logical_date

    with create_session() as session:
        found = session.query(DagRun.state).filter(DagRun.dag_id == DAG_ID, DagRun.logical_date == logical_date(ds))
        return {str(getattr(row.state, "value", row.state)) for row in found}
