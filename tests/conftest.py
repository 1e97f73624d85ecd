"""Shared fixtures: one Spark session per test session, settings on a temp home."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import uuid
from pathlib import Path

import pytest

from msmt.settings import Settings
from pipeline.orchestration import airflow_env

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
logging.getLogger("py4j").setLevel(logging.WARNING)  # its atexit log lines would hit a closed stream

# Airflow reads its configuration on first import, so the whole test session
# shares one Airflow home (and metadata DB), set before anything imports it.
SESSION_HOME = Path(tempfile.mkdtemp(prefix="msmt-tests-"))
os.environ.update(airflow_env(Settings(home=SESSION_HOME)))


@pytest.fixture
def settings(tmp_path) -> Settings:
    """Settings whose whole state (lake, MLflow, Feast, Airflow) lives in a fresh temp dir."""
    s = Settings(home=tmp_path / "msmt", spark_master="local[2]", spark_driver_memory="2g")
    s.ensure_dirs()
    return s


@pytest.fixture(scope="session")
def session_settings() -> Settings:
    """Settings on the session's home: the one whose Airflow home Airflow was configured with."""
    s = Settings.from_env(home=SESSION_HOME, spark_driver_memory="2g")
    s.ensure_dirs()
    return s


@pytest.fixture(scope="session")
def spark():
    """One local Spark session shared by every test (start-up costs ~10 s)."""
    from spark_jobs.common import get_spark

    session = get_spark(Settings(spark_driver_memory="2g"), app_name="msmt-tests")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 API server (moto) on loopback for the whole session."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_settings(settings, s3_endpoint, monkeypatch) -> Settings:
    """`settings` with the lake in a fresh bucket on the loopback S3 server."""
    from msmt import storage

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    bucket = f"lake-{uuid.uuid4().hex[:12]}"
    s3 = settings.with_(lake_uri=f"s3://{bucket}/msmt", s3_endpoint_url=s3_endpoint)
    storage.make_bucket(s3, bucket)
    return s3


@pytest.fixture(params=["local", "s3"])
def lake_settings(request) -> Settings:
    """The same test on the local lake and on the S3 lake."""
    return request.getfixturevalue("settings" if request.param == "local" else "s3_settings")
