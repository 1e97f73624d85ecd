"""`msmt doctor`: is every piece of the active profile there and usable? A table of what is wrong and the fix.

The checks read the active profile (settings and environment: what a DAG task sees), not the state of
`msmt cluster`, so they hold for services started elsewhere too; where this home runs the services, a
fix names the service's log. Local profile: the home, the SQLite DBs, Java, the DAG. Cluster profile:
PostgreSQL (credentials, version, databases), Redis (password, version), S3 (credentials, buckets),
the MLflow server, the Spark master and its workers, Airflow's api-server, scheduler and
dag-processor, and the DAG. A check's failure is a finding, never a crash of the doctor.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import socket
import sqlite3
import stat
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from urllib.parse import urlparse

from msmt.settings import PROJECT_ROOT, Settings
from pipeline import cluster

SET_PROFILE = 'eval "$(msmt cluster env)" (after `msmt cluster up`)'


@dataclass(frozen=True)
class Check:
    """One row of the table: what was checked, whether it holds, what was found, how to fix it."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


class Problem(Exception):
    """What a probe found wrong, with the fix."""

    def __init__(self, what: str, fix: str) -> None:
        super().__init__(what)
        self.what, self.fix = what, fix


def check(settings: Settings) -> list[Check]:
    probes = LOCAL if settings.profile == "local" else CLUSTER
    return [_run(name, service, probe, settings) for name, service, probe in probes]


def table(checks: list[Check]) -> str:
    width = max(len(item.name) for item in checks) + 2
    lines = []
    for item in checks:
        lines.append(f"{item.name:<{width}}{'ok' if item.ok else 'FAIL':<6}{item.detail}")
        if item.fix:
            lines.append(f"{'':<{width + 6}}fix: {item.fix}")
    failed = sum(not item.ok for item in checks)
    lines.append(f"{failed} of {len(checks)} checks failed" if failed else f"all {len(checks)} checks passed")
    return "\n".join(lines)


def _run(name: str, service: str, probe: Callable[[Settings], str], settings: Settings) -> Check:
    try:
        return Check(name, True, probe(settings))
    except Problem as problem:
        return Check(name, False, problem.what, problem.fix)
    except Exception as error:  # a probe's own failure is a finding too
        return Check(name, False, f"{type(error).__name__}: {error}".splitlines()[0][:300], _restart(settings, service))


def _restart(settings: Settings, service: str) -> str:
    """The fix of a service that does not answer; with its log when this home runs it."""
    home = cluster.Home.of(settings)
    if not home.state.exists():
        return f"start the {service} service the profile points at, or {SET_PROFILE}"
    logs = settings.airflow_home / "services" if service == "airflow" else home.log(service)
    if service in cluster.running(settings):
        return f"it runs but does not answer: see {logs}; `msmt cluster down && msmt cluster up`"
    return f"`msmt cluster up` restarts it (log: {logs})"


def _endpoint(url: str, variable: str) -> tuple[str, int]:
    parsed = urlparse(url if "://" in url else f"tcp://{url}")
    if not parsed.hostname or not parsed.port:
        raise Problem(f"{variable}={url!r} names no host:port", SET_PROFILE)
    return parsed.hostname, parsed.port


# --- local profile ----------------------------------------------------------------------------
def _home(settings: Settings) -> str:
    settings.ensure_dirs()
    places = [settings.home] + ([] if settings.lake.startswith("s3://") else [Path(settings.lake)])
    for place in places:
        try:
            with tempfile.TemporaryFile(dir=place):
                pass
        except OSError as error:
            raise Problem(f"{place} is not writable: {error.strerror}", f"chmod u+w {place} or set MSMT_HOME") from None
    return f"{settings.home} writable"


def _sqlite(settings: Settings) -> str:
    found = []
    for what, uri in (("airflow", settings.airflow_db), ("mlflow", settings.mlflow_uri)):
        path = Path(uri.removeprefix("sqlite:///"))
        if not uri.startswith("sqlite:///") or not path.exists():
            found.append(f"{what}: not created yet (the first run creates it)")
            continue
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
            verdict = db.execute("PRAGMA quick_check").fetchone()[0]
        if verdict != "ok":
            raise Problem(
                f"{path} is damaged: {verdict}", f"move it aside; `msmt demo` (or a run) recreates {what}'s DB"
            )
        found.append(f"{what}: {path.name} ok")
    return "; ".join(found)


def _java(settings: Settings) -> str:
    java = shutil.which("java")
    if java is None:
        raise Problem(
            "no java on PATH (Spark needs Java 17)",
            "apt-get install -y --no-install-recommends openjdk-17-jre-headless",
        )
    done = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30, check=False)
    return (done.stderr or done.stdout).splitlines()[0]


def _dag(settings: Settings) -> str:
    """Every file in dags/ imports under this profile (as the dag-processor parses it), msmt_daily among them."""
    from pipeline import orchestration

    os.environ.update(orchestration.airflow_env(settings))  # before Airflow's first import reads its config
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags"))
    if bag.import_errors:
        errors = "; ".join(f"{Path(f).name}: {e.strip().splitlines()[-1]}" for f, e in bag.import_errors.items())
        raise Problem(f"DAG import errors: {errors}"[:500], "`airflow dags list-import-errors` shows the tracebacks")
    if orchestration.DAG_ID not in bag.dags:
        raise Problem(f"no {orchestration.DAG_ID} in dags/", "restore dags/msmt_daily.py")
    dags = ", ".join(f"{dag_id} ({len(dag.tasks)} tasks)" for dag_id, dag in sorted(bag.dags.items()))
    return f"{dags}; Airflow {version('apache-airflow')}"


# --- cluster profile --------------------------------------------------------------------------
def _postgres(settings: Settings) -> str:
    import psycopg
    from sqlalchemy.engine import make_url

    if settings.airflow_db.startswith("sqlite"):
        raise Problem("MSMT_AIRFLOW_DB_URI is not set: Airflow would run on SQLite", SET_PROFILE)
    url = make_url(settings.airflow_db)
    passfile = os.environ.get("PGPASSFILE", "")
    if not (url.password or os.environ.get("PGPASSWORD") or passfile):
        raise Problem("no PostgreSQL password (PGPASSFILE / PGPASSWORD)", SET_PROFILE)
    if passfile:
        if not Path(passfile).exists():
            raise Problem(f"PGPASSFILE={passfile} does not exist", SET_PROFILE)
        if Path(passfile).stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise Problem(f"libpq ignores {passfile}: others can read it", f"chmod 600 {passfile}")
    if not os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC") and not importlib.util.find_spec("asyncpg"):
        async_url = settings.airflow_db.replace("+psycopg2", "+psycopg")
        raise Problem(
            "Airflow would derive an asyncpg URL (not installed)",
            f"export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC={async_url}",
        )
    wanted = {url.database}
    if settings.feast_registry.startswith("postgresql"):
        wanted.add(make_url(settings.feast_registry).database)
    if cluster.Home.of(settings).state.exists():
        wanted.update(cluster.DATABASES)  # this home's cluster: MLflow's database too
    try:
        with psycopg.connect(host=url.host, port=url.port, user=url.username, dbname=url.database,
                             password=url.password, connect_timeout=3) as conn:  # fmt: skip
            server = conn.execute("SHOW server_version").fetchone()[0]
            present = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
    except psycopg.OperationalError as error:
        what = str(error).strip().splitlines()[-1][:200]
        raise Problem(f"cannot connect to {url.host}:{url.port}: {what}", _restart(settings, "postgres")) from None
    _all_present(wanted, present, f"PostgreSQL {server}: no database {{}}")
    return f"PostgreSQL {server} at {url.host}:{url.port}; databases {', '.join(sorted(wanted))}"


def _all_present(wanted: set[str], present: set[str], problem: str) -> None:
    """A Problem naming what is missing (`problem` with `{}` for the names): `msmt cluster up` creates it."""
    missing = sorted(wanted - present)
    if missing:
        raise Problem(problem.format(", ".join(missing)), "`msmt cluster up` creates them")


def _redis(settings: Settings) -> str:
    import redis

    if not settings.feast_online_store:
        raise Problem("MSMT_FEAST_ONLINE_STORE is not set: Feast would use SQLite", SET_PROFILE)
    host, port = _endpoint(settings.feast_online_store.split(",")[0], "MSMT_FEAST_ONLINE_STORE")
    password = os.environ.get("REDISCLI_AUTH")
    if not password:
        raise Problem("no Redis password (REDISCLI_AUTH)", SET_PROFILE)
    client = redis.Redis(host, port, password=password, socket_timeout=3, socket_connect_timeout=3)
    try:
        server = client.info("server")["redis_version"]
    except redis.exceptions.AuthenticationError:
        raise Problem(f"Redis at {host}:{port} refuses the password in REDISCLI_AUTH", SET_PROFILE) from None
    except redis.exceptions.ConnectionError as error:
        raise Problem(f"Redis unreachable at {host}:{port}: {error}", _restart(settings, "redis")) from None
    return f"Redis {server} at {host}:{port}, password accepted"


def _s3(settings: Settings) -> str:
    import boto3
    import botocore.exceptions

    lake_on_s3, ours = settings.lake.startswith("s3://"), cluster.Home.of(settings).state.exists()
    if not lake_on_s3 and not ours:  # `msmt cluster` on one machine keeps the lake in its home, S3 for MLflow
        raise Problem(f"the lake {settings.lake} is not on S3 (MSMT_LAKE_URI)", SET_PROFILE)
    session = boto3.Session()
    if session.get_credentials() is None:
        raise Problem("no S3 credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)", SET_PROFILE)
    endpoint = settings.s3_endpoint_url or None
    wanted = {urlparse(settings.lake).netloc} if lake_on_s3 else set()
    if ours:
        wanted.update(cluster.BUCKETS.values())  # this home's cluster: MLflow's artifact bucket too
    try:
        listed = session.client("s3", endpoint_url=endpoint, region_name=session.region_name or "us-east-1")
        present = {bucket["Name"] for bucket in listed.list_buckets().get("Buckets", [])}
    except (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectionError):
        raise Problem(f"S3 API unreachable at {endpoint}", _restart(settings, "s3")) from None
    _all_present(wanted, present, f"no bucket {{}} at {endpoint or 'AWS'}")
    return f"S3 API at {endpoint or 'AWS'}; buckets {', '.join(sorted(wanted))}"


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read()


def _mlflow(settings: Settings) -> str:
    uri = settings.mlflow_uri
    if not uri.startswith("http"):
        raise Problem(
            f"MLflow runs on {uri.split(':')[0]}, not a tracking server (MSMT_MLFLOW_TRACKING_URI)", SET_PROFILE
        )
    try:
        _get(f"{uri}/health")
        server = _get(f"{uri}/version").decode().strip()
    except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
        raise Problem(f"MLflow server unreachable at {uri}: {error}", _restart(settings, "mlflow")) from None
    return f"MLflow {server} at {uri}"


def _spark(settings: Settings) -> str:
    if not settings.spark_master.startswith("spark://"):
        raise Problem(f"Spark runs {settings.spark_master}, not on a master (MSMT_SPARK_MASTER)", SET_PROFILE)
    host, port = _endpoint(settings.spark_master, "MSMT_SPARK_MASTER")
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as error:
        raise Problem(
            f"Spark master unreachable at {host}:{port}: {error.strerror}", _restart(settings, "spark-master")
        ) from None
    detail = f"master {settings.spark_master} (pyspark {version('pyspark')})"
    home = cluster.Home.of(settings)
    ui = json.loads(home.state.read_text())["ports"].get("spark-master-ui") if home.state.exists() else None
    if ui:  # this home's master: its web UI says how many workers are registered
        workers = json.loads(_get(f"http://{cluster.HOST}:{ui}/json/")).get("aliveworkers", 0)
        if not workers:
            raise Problem(f"{detail}: no worker registered", _restart(settings, "spark-worker"))
        detail += f", {workers} worker(s)"
    return detail


def _airflow(settings: Settings) -> str:
    from pipeline import scheduler

    state = settings.airflow_home / "services.json"
    if not state.exists():
        raise Problem("Airflow's services are not running for this home", "`msmt cluster up`")
    port = json.loads(state.read_text())["port"]
    try:
        health = json.loads(_get(f"http://127.0.0.1:{port}/api/v2/monitor/health"))
    except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
        raise Problem(f"api-server unreachable on port {port}: {error}", _restart(settings, "airflow")) from None
    parts = ("metadatabase", "scheduler", "dag_processor")
    sick = [part for part in parts if (health.get(part) or {}).get("status") != "healthy"]
    down = sorted(set(scheduler.SERVICES) - set(scheduler.running(settings)))
    if sick or down:
        what = f"unhealthy: {', '.join(sick)}" if sick else f"not running: {', '.join(down)}"
        raise Problem(what, _restart(settings, "airflow"))
    return f"Airflow {version('apache-airflow')} api-server on 127.0.0.1:{port}; {', '.join(parts)} healthy"


Probe = tuple[str, str, Callable[[Settings], str]]  # row name, service (for the fix), probe
LOCAL: tuple[Probe, ...] = (
    ("home", "home", _home),
    ("sqlite", "sqlite", _sqlite),
    ("java", "java", _java),
    ("dag", "dag", _dag),
)
CLUSTER: tuple[Probe, ...] = (
    ("postgres", "postgres", _postgres),
    ("redis", "redis", _redis),
    ("s3", "s3", _s3),
    ("mlflow", "mlflow", _mlflow),
    ("spark", "spark-master", _spark),
    ("java", "java", _java),
    ("airflow", "airflow", _airflow),
    ("dag", "dag", _dag),
)
