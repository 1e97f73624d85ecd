"""The end of the cluster suite: `msmt cluster down` stops every process, and no generated password is
in any file the services, the DAG's tasks or the lake left in the home."""

from __future__ import annotations

import json

import pytest
from cluster_support import msmt, secret_values, state

from pipeline.scheduler import alive

pytestmark = pytest.mark.cluster


def test_down_leaves_no_process(cluster):
    home, env = cluster
    groups = [
        *state(home)["pids"].values(),
        *json.loads((home / "airflow" / "services.json").read_text())["pids"].values(),
    ]
    msmt(env, "cluster", "down")
    assert [group for group in groups if alive(group)] == []
    assert not (home / "airflow" / "services.json").exists() and state(home)["pids"] == {}


def test_no_password_in_any_log(cluster):
    home, _ = cluster
    carriers = {home / "cluster" / name for name in ("secrets.env", "pgpass", "redis.conf")}
    needles = [value.encode() for value in secret_values(home)]
    leaked = [
        path
        for path in home.rglob("*")
        if path.is_file() and path not in carriers and any(needle in path.read_bytes() for needle in needles)
    ]  # the data directories too: PostgreSQL keeps a SCRAM hash, never the password
    assert leaked == []
    assert list((home / "cluster" / "logs").glob("*.log"))  # the logs were looked at
    assert list((home / "airflow" / "logs").rglob("*.log"))  # …and the DAG tasks' logs
