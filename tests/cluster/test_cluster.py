"""`msmt cluster`'s services one by one, on the suite's cluster (conftest); no mocks.

Run with `make test-cluster` (`pytest -m cluster`): starting PostgreSQL, Redis, moto's S3 server, an
MLflow server, a Spark master and worker and Airflow's services takes ~1.5 min. The last test kills a
service and restarts it; test_shutdown stops everything and looks for leftovers.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
import uuid

import pytest
from cluster_support import msmt, secret_values, state

from pipeline.scheduler import alive

pytestmark = pytest.mark.cluster


def s3_client(env: dict[str, str]):
    import boto3

    keys = {"aws_access_key_id": env["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"]}
    return boto3.client("s3", endpoint_url=env["MSMT_S3_ENDPOINT_URL"], region_name="us-east-1", **keys)


def test_env_points_the_profile_at_the_services(cluster):
    home, env = cluster
    assert env["MSMT_PROFILE"] == "cluster" and env["MSMT_LAKE_URI"] == str(home.resolve() / "lake")
    assert env["MSMT_KUBERNETES"] == "False"  # no Kubernetes here: torchrun trains beside the task
    assert env["MSMT_SPARK_MASTER"].startswith("spark://127.0.0.1:")
    assert "@" in env["MSMT_AIRFLOW_DB_URI"] and ":" not in env["MSMT_AIRFLOW_DB_URI"].split("//")[1].split("@")[0]
    for carrier in ("secrets.env", "pgpass", "redis.conf"):
        assert (home / "cluster" / carrier).stat().st_mode & 0o777 == 0o600, carrier


def test_postgres_answers_with_the_password_only(cluster):
    import psycopg

    _, env = cluster
    port = int(env["MSMT_AIRFLOW_DB_URI"].rsplit(":", 1)[1].split("/")[0])
    connect = {"host": "127.0.0.1", "port": port, "user": "msmt", "dbname": "airflow", "connect_timeout": 5}
    with psycopg.connect(**connect, passfile=env["PGPASSFILE"]) as conn:
        names = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
        assert conn.execute("SHOW server_version_num").fetchone()[0].startswith("15")
    assert {"airflow", "mlflow", "feast"} <= names
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(**connect, password="wrong", passfile="/dev/null")


def test_redis_needs_its_password(cluster):
    import redis

    _, env = cluster
    host, port = env["MSMT_FEAST_ONLINE_STORE"].split(":")
    assert redis.Redis(host, int(port), password=env["REDISCLI_AUTH"]).ping()
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(host, int(port)).ping()


def test_s3_has_a_bucket_per_purpose(cluster):
    _, env = cluster
    s3 = s3_client(env)
    assert {"msmt-lake", "msmt-mlflow"} <= {bucket["Name"] for bucket in s3.list_buckets()["Buckets"]}


def test_mlflow_server_keeps_runs_in_postgres_and_artifacts_in_s3(cluster, tmp_path):
    from mlflow import MlflowClient

    home, env = cluster
    uri = env["MSMT_MLFLOW_TRACKING_URI"]
    request = urllib.request.Request(f"{uri}/api/2.0/mlflow/experiments/create", method="POST",
                                     data=json.dumps({"name": f"cluster-{uuid.uuid4().hex[:8]}"}).encode(),
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as response:
        experiment_id = json.loads(response.read())["experiment_id"]
    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(experiment_id)
    client.log_param(run.info.run_id, "lr", "0.01")
    (tmp_path / "note.txt").write_text("hello")
    client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))  # through the server's proxy
    assert client.get_run(run.info.run_id).data.params == {"lr": "0.01"}
    s3 = s3_client(env)
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket="msmt-mlflow").get("Contents", [])]
    assert any(key.endswith(f"{run.info.run_id}/artifacts/note.txt") for key in keys), keys
    params = [value for found in client.search_runs([experiment_id]) for value in found.data.params.values()]
    assert not any(secret in value for secret in secret_values(home) for value in params)


def test_spark_job_runs_on_the_standalone_master(cluster):
    from pyspark.sql import SparkSession

    _, env = cluster
    spark = (
        SparkSession.builder.master(env["MSMT_SPARK_MASTER"])
        .appName("msmt-cluster-test")
        .config("spark.driver.memory", "512m")
        .config("spark.executor.memory", "512m")
        .config("spark.pyspark.python", env["PYSPARK_PYTHON"])
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    try:
        assert spark.sparkContext.master == env["MSMT_SPARK_MASTER"]
        assert spark.range(1000).selectExpr("sum(id) AS total").first().total == 499500
        assert spark.sparkContext.parallelize(range(10), 2).map(lambda x: x * x).sum() == 285  # Python on executors
    finally:
        spark.stop()


def test_feast_keeps_its_registry_in_postgres_and_reaches_redis(cluster, monkeypatch):
    import psycopg
    from feast.infra.online_stores.redis import RedisOnlineStore

    from feature_repo.definitions import definitions
    from feature_repo.publish import feature_store, store_yaml
    from msmt.settings import Settings

    _, env = cluster
    for key, value in env.items():
        monkeypatch.setenv(key, value)  # REDISCLI_AUTH, PGPASSFILE, AWS_*: what a DAG task inherits
    settings = Settings.from_env()
    assert store_yaml(settings).name == "feature_store.cluster.yaml"
    store = feature_store(settings)
    store.apply(definitions(settings))
    port = int(env["MSMT_AIRFLOW_DB_URI"].rsplit(":", 1)[1].split("/")[0])
    with psycopg.connect(host="127.0.0.1", port=port, user="msmt", dbname="feast", passfile=env["PGPASSFILE"]) as conn:
        assert conn.execute("SELECT count(*) FROM feature_views").fetchone()[0] == len(store.list_feature_views())
    assert RedisOnlineStore()._get_client(store.config.online_store).ping()  # the yaml's password reaches Redis


def test_airflow_api_server_is_healthy_on_postgres(cluster):
    _, env = cluster
    url = f"http://127.0.0.1:{env['AIRFLOW__API__PORT']}/api/v2/monitor/health"
    with urllib.request.urlopen(url, timeout=10) as response:
        health = json.loads(response.read())
    assert health["metadatabase"]["status"] == "healthy" and health["scheduler"]["status"] == "healthy"


def test_doctor_passes_when_up(cluster):
    _, env = cluster
    done = msmt(env, "doctor")
    assert "all 8 checks passed" in done.stdout, done.stdout


def test_doctor_names_a_dead_service_and_up_restarts_only_it(cluster):
    home, env = cluster
    before = state(home)["pids"]
    os.killpg(before["redis"], signal.SIGKILL)
    while alive(before["redis"]):
        time.sleep(0.1)
    done = msmt(env, "doctor", check=False)
    assert done.returncode == 1, done.stdout
    rows = {line.split()[0]: line for line in done.stdout.splitlines() if line and not line.startswith(" ")}
    assert "FAIL" in rows["redis"] and "ok" in rows["postgres"].split()[1], done.stdout
    assert "`msmt cluster up` restarts it" in done.stdout and "redis.log" in done.stdout
    msmt(env, "cluster", "up")
    after = state(home)["pids"]
    assert after["redis"] != before["redis"]
    assert {name: pid for name, pid in after.items() if name != "redis"} == {
        name: pid for name, pid in before.items() if name != "redis"
    }
