"""Shared fixtures: one Spark session per test session, settings on a temp home."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import pytest

from msmt.orchestration import airflow_env
from msmt.settings import Settings

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
