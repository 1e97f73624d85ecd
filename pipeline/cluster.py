"""`msmt cluster up | down | env`: the cluster profile's services on this machine, on 127.0.0.1 only.

PostgreSQL (Debian's; databases airflow, mlflow, feast, one password-checked user), Redis (Feast's
online store), moto's S3 API server (a bucket for the lake and one for MLflow's artifacts), an MLflow
tracking server (PostgreSQL backend, artifacts proxied to S3), a Spark standalone master with one
worker, and Airflow's api-server / scheduler / dag-processor on PostgreSQL (`pipeline.scheduler`,
LocalExecutor). State lives in `<home>/cluster/`: logs in `logs/`, ports and process groups in
`state.json`, data under `postgres/`, `redis/`, `spark/`. moto keeps objects in memory, so the S3
data (MLflow's artifacts) does not survive `down`; PostgreSQL's and Redis's do, and so does the lake,
a directory of the home on this one machine (see `cluster_settings`).

Spark standalone rather than Spark Connect: the cluster profile runs jobs through spark-submit
against a master URL (SparkSubmitOperator), each job with its own driver and executors, as on a real
cluster; a Connect server is one long-lived driver shared by every client, which would skip the submit
path the DAG takes and run every job's plan in one JVM. pyspark's own distribution ships the master
and worker classes, so nothing is downloaded.

Ports are free loopback ports picked at the first `up` and kept in the state, not fixed defaults:
several homes (the tests, two engineers, a second checkout) run side by side on one machine without
colliding, and a home keeps its ports across down / up, so the exports of `msmt cluster env` stay
valid.

Secrets are generated once (`secrets.token_urlsafe`) into `<home>/cluster/secrets.env` (mode 0600,
inside the git-ignored home) and reach services through files and the environment, never argv:
PostgreSQL checks a SCRAM password that clients read from a pgpass file (PGPASSFILE); Redis reads
`requirepass` from its 0600 config file, clients from REDISCLI_AUTH; the S3 keys travel as AWS_*.
Service URLs, and so msmt's settings, carry no password. Only `msmt cluster env` prints them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from msmt.settings import Settings
from pipeline import scheduler
from pipeline.orchestration import airflow_env
from pipeline.scheduler import ServiceError, alive

log = logging.getLogger("msmt.cluster")

HOST = "127.0.0.1"
DB_USER = "msmt"
DATABASES = ("airflow", "mlflow", "feast")
BUCKETS = {"lake": "msmt-lake", "mlflow": "msmt-mlflow"}
# Started in two waves: the second needs PostgreSQL's databases, S3's buckets or the master.
FIRST = ("postgres", "redis", "s3", "spark-master")
SECOND = ("mlflow", "spark-worker")
SERVICES = (*FIRST, *SECOND)  # Airflow comes last, through pipeline.scheduler; `down` goes in reverse
PORTS = (*SERVICES, "spark-master-ui", "spark-worker-ui", "airflow")
STOP_SIGNAL = {"postgres": signal.SIGINT}  # PostgreSQL's fast shutdown; SIGTERM would wait for clients
SECRET_KEYS = ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


@dataclass(frozen=True)
class Home:
    """Where one home's services keep their state, logs and secrets."""

    root: Path

    @classmethod
    def of(cls, settings: Settings) -> Home:
        return cls(settings.home.resolve() / "cluster")

    state = property(lambda self: self.root / "state.json")
    secrets_file = property(lambda self: self.root / "secrets.env")
    pgpass = property(lambda self: self.root / "pgpass")
    redis_conf = property(lambda self: self.root / "redis.conf")
    logs = property(lambda self: self.root / "logs")
    pg_data = property(lambda self: self.root / "postgres")

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"


# --- state, ports and secrets -------------------------------------------------------------------
def _load(home: Home) -> dict:
    return json.loads(home.state.read_text()) if home.state.exists() else {"ports": {}, "pids": {}}


def _save(home: Home, state: dict) -> None:
    home.state.write_text(json.dumps(state, indent=1))


def _free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports (all held open while picking, so none repeats)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in sockets]


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (mode 0600 from creation, not chmod-ed after)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its old mode through O_CREAT
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def _secrets(home: Home, create: bool = False) -> dict[str, str]:
    if not home.secrets_file.exists():
        if not create:
            raise ServiceError(f"no cluster secrets in {home.root}: run `msmt cluster up` first")
        generated = {key: secrets.token_urlsafe(24) for key in SECRET_KEYS}
        generated["AWS_ACCESS_KEY_ID"] = "MSMT" + secrets.token_hex(8).upper()  # the usual shape of a key id
        _write_private(home.secrets_file, "".join(f"{key}={value}\n" for key, value in generated.items()))
    lines = home.secrets_file.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def _ports(home: Home) -> dict[str, int]:
    ports = _load(home)["ports"]
    if not ports:
        raise ServiceError(f"no cluster in {home.root}: run `msmt cluster up` first")
    return ports


def service_ports(settings: Settings) -> dict[str, int]:
    """This home's service ports (the UIs' included): name -> port."""
    return _ports(Home.of(settings))


def cluster_settings(settings: Settings) -> Settings:
    """The cluster profile on this home's services (no password in any field).

    Two things differ from a real cluster, both for want of what this machine cannot fetch or run:
    the lake is a directory of the home, which the Spark driver and the worker's executors share on
    one machine (Spark's s3a connector, hadoop-aws, comes from Maven Central, unreachable here), and
    training runs beside the task with torchrun (no Kubernetes). MLflow's artifacts do go to S3."""
    home = settings.home.resolve()
    ports = _ports(Home.of(settings))
    db = f"{DB_USER}@{HOST}:{ports['postgres']}"
    return settings.with_(
        profile="cluster",
        home=home,
        lake_uri=str(home / "lake"),
        kubernetes=False,
        s3_endpoint_url=f"http://{HOST}:{ports['s3']}",
        mlflow_tracking_uri=f"http://{HOST}:{ports['mlflow']}",
        spark_master=f"spark://{HOST}:{ports['spark-master']}",
        spark_shuffle_partitions=settings.spark_shuffle_partitions or 4,  # one worker, 2 cores
        airflow_db_uri=f"postgresql+psycopg2://{db}/airflow",
        feast_registry=f"postgresql+psycopg://{db}/feast",
        feast_online_store=f"{HOST}:{ports['redis']}",
    )


PROFILE_KEYS = ("PROFILE", "HOME", "LAKE_URI", "KUBERNETES", "S3_ENDPOINT_URL", "MLFLOW_TRACKING_URI", "SPARK_MASTER",
                "SPARK_SHUFFLE_PARTITIONS", "AIRFLOW_DB_URI", "FEAST_REGISTRY", "FEAST_ONLINE_STORE")  # fmt: skip


def client_env(settings: Settings) -> dict[str, str]:
    """What a shell, a DAG task or a test needs to use the services: the cluster profile's `MSMT_*`
    variables, Airflow's metadata DB and port, and the carriers of the secrets."""
    home = Home.of(settings)
    profile, secret, ports = cluster_settings(settings), _secrets(home), _ports(home)
    variables = profile.to_env()
    return {
        **{f"MSMT_{key}": variables[f"MSMT_{key}"] for key in PROFILE_KEYS},
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": profile.airflow_db,
        # Airflow derives an asyncpg URL from the sync one; psycopg 3 (installed) does async as well.
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": profile.airflow_db.replace("+psycopg2", "+psycopg"),
        **{key: value for key, value in airflow_env(profile).items() if "CONNECT_ARGS" in key},  # PostgreSQL's
        "AIRFLOW__API__PORT": str(ports["airflow"]),
        "PGPASSFILE": str(home.pgpass),
        "REDISCLI_AUTH": secret["REDIS_PASSWORD"],
        "AWS_ACCESS_KEY_ID": secret["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": secret["AWS_SECRET_ACCESS_KEY"],
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": profile.s3_endpoint_url,  # boto3 and the aws CLI
        "MLFLOW_S3_ENDPOINT_URL": profile.s3_endpoint_url,  # MLflow's S3 artifact client
        "PYSPARK_PYTHON": sys.executable,  # the executors' Python: this venv's, with msmt importable
        "SPARK_LOCAL_IP": HOST,
    }


def exports(settings: Settings) -> str:
    """`export` lines for a shell: `eval "$(msmt cluster env)"` (the only place passwords are printed)."""
    return "\n".join(f"export {key}={shlex.quote(value)}" for key, value in sorted(client_env(settings).items()))


# --- the services ------------------------------------------------------------------------------
def _postgres_bin() -> Path:
    """Debian's newest PostgreSQL server binaries, installed with apt-get when missing and running as root."""

    def newest() -> Path | None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parts[-3]))
        return found[-1].parent if found else None

    return newest() or (_apt_install("postgresql") and newest()) or Path("/usr/lib/postgresql")


def _postgres_user() -> dict:
    """Popen arguments that drop root to the `postgres` OS user: PostgreSQL refuses to run as root."""
    if os.geteuid() != 0:
        return {}
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        why = "PostgreSQL refuses to run as root and there is no `postgres` OS user"
        raise ServiceError(f"{why}: create one (useradd --system postgres) or run msmt as a non-root user") from None
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _initdb(home: Home, password: str) -> None:
    """Create the data directory once: UTF-8, SCRAM passwords for every connection, superuser `msmt`."""
    if (home.pg_data / "PG_VERSION").exists():
        return
    as_user = _postgres_user()
    home.pg_data.mkdir(mode=0o700, exist_ok=True)
    pwfile = home.root / ".initdb-password"
    _write_private(pwfile, password + "\n")
    if as_user:
        for path in (home.pg_data, pwfile):
            os.chown(path, as_user["user"], as_user["group"])
    try:
        done = subprocess.run(
            [str(_postgres_bin() / "initdb"), "-D", str(home.pg_data), "-U", DB_USER, f"--pwfile={pwfile}",
             "--auth=scram-sha-256", "-E", "UTF8", "--no-locale"],
            capture_output=True, text=True, cwd=home.root, check=False, **as_user,
        )  # fmt: skip
    finally:
        pwfile.unlink(missing_ok=True)
    if done.returncode:
        shutil.rmtree(home.pg_data, ignore_errors=True)
        raise ServiceError(f"initdb failed (the postgres OS user must be able to enter every directory above "
                           f"{home.pg_data}):\n{done.stderr[-1500:]}")  # fmt: skip


def _redis_server() -> str:
    """Debian's redis-server, installed with apt-get when missing and running as root."""
    return shutil.which("redis-server") or (_apt_install("redis-server") and shutil.which("redis-server")) or ""


def _apt_install(package: str) -> bool:
    """Install a Debian package the way CI does (as root); a clear error saying what to run otherwise."""
    install = f"apt-get install -y --no-install-recommends {package}"
    if os.geteuid() != 0:
        raise ServiceError(f"{package} is not installed; as root: {install}")
    log.info("installing %s (apt-get)", package)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = [*install.split(), "-q"]
    if subprocess.run(command, env=env, capture_output=True, check=False).returncode:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=False)
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode:
            raise ServiceError(f"`{install}` failed:\n{done.stderr[-1500:]}")
    return True


def _spark_class() -> str:
    """pyspark's own distribution: its bin/spark-class starts the master and the worker."""
    spec = importlib.util.find_spec("pyspark")
    return str(Path(next(iter(spec.submodule_search_locations))) / "bin" / "spark-class")


def _command(name: str, home: Home, ports: dict[str, int]) -> list[str]:
    master = f"spark://{HOST}:{ports['spark-master']}"
    database = f"postgresql+psycopg2://{DB_USER}@{HOST}:{ports['postgres']}/mlflow"  # password: PGPASSFILE
    return {
        "postgres": [str(_postgres_bin() / "postgres"), "-D", str(home.pg_data), "-p", str(ports["postgres"]),
                     "-c", f"listen_addresses={HOST}", "-c", "unix_socket_directories="],  # TCP on loopback only
        "redis": [_redis_server(), str(home.redis_conf)],
        "s3": [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(ports["s3"])],
        "spark-master": [_spark_class(), "org.apache.spark.deploy.master.Master", "--host", HOST,
                         "--port", str(ports["spark-master"]), "--webui-port", str(ports["spark-master-ui"])],
        "mlflow": [str(Path(sys.executable).with_name("mlflow")), "server", "--host", HOST,
                   "--port", str(ports["mlflow"]), "--workers", "1", "--backend-store-uri", database,
                   "--artifacts-destination", f"s3://{BUCKETS['mlflow']}/artifacts"],
        "spark-worker": [_spark_class(), "org.apache.spark.deploy.worker.Worker", "--host", HOST,
                         "--port", str(ports["spark-worker"]), "--webui-port", str(ports["spark-worker-ui"]),
                         "--cores", "2", "--memory", "2g", "--work-dir", str(home.root / "spark"), master],
    }[name]  # fmt: skip


def _redis_config(home: Home, port: int, password: str) -> str:
    (home.root / "redis").mkdir(exist_ok=True)
    return (f"bind {HOST}\nport {port}\nprotected-mode yes\nrequirepass {password}\n"
            f"dir {home.root / 'redis'}\ndaemonize no\nlogfile \"\"\n")  # fmt: skip


def _http_json(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return json.loads(response.read() or b"{}")
    except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
        return None


def _answers(name: str, ports: dict[str, int], secret: dict[str, str]) -> bool:
    """Whether the service does its job yet: a query, a PING, an HTTP answer, a registered worker."""
    if name == "postgres":
        import psycopg

        try:
            with psycopg.connect(host=HOST, port=ports["postgres"], user=DB_USER, dbname="postgres",
                                 password=secret["POSTGRES_PASSWORD"], connect_timeout=3) as conn:  # fmt: skip
                return conn.execute("SELECT 1").fetchone() == (1,)
        except psycopg.OperationalError:
            return False
    if name == "redis":
        import redis

        try:
            return redis.Redis(HOST, ports["redis"], password=secret["REDIS_PASSWORD"], socket_timeout=3).ping()
        except redis.exceptions.RedisError:
            return False
    if name == "s3":
        return _http_json(f"http://{HOST}:{ports['s3']}/moto-api/data.json") is not None
    if name == "mlflow":
        try:
            with urllib.request.urlopen(f"http://{HOST}:{ports['mlflow']}/health", timeout=3) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False
    master = _http_json(f"http://{HOST}:{ports['spark-master-ui']}/json/") or {}
    if name == "spark-master":
        return master.get("status") == "ALIVE"
    return master.get("aliveworkers", 0) >= 1  # spark-worker: registered with the master


def _provision(name: str, ports: dict[str, int], secret: dict[str, str]) -> None:
    """Create what the services' users expect (idempotent): the databases, the buckets."""
    if name == "postgres":
        import psycopg
        from psycopg import sql

        with psycopg.connect(host=HOST, port=ports["postgres"], user=DB_USER, dbname="postgres",
                             password=secret["POSTGRES_PASSWORD"], autocommit=True) as conn:  # fmt: skip
            present = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
            for database in DATABASES:
                if database not in present:
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    elif name == "s3":
        import boto3

        s3 = boto3.client("s3", endpoint_url=f"http://{HOST}:{ports['s3']}", region_name="us-east-1",
                          aws_access_key_id=secret["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=secret["AWS_SECRET_ACCESS_KEY"])  # fmt: skip
        present = {bucket["Name"] for bucket in s3.list_buckets().get("Buckets", [])}
        for bucket in BUCKETS.values():
            if bucket not in present:
                s3.create_bucket(Bucket=bucket)


def _start(name: str, home: Home, state: dict, env: dict[str, str]) -> bool:
    """Start `name` in its own process group unless it is running; True when started now."""
    pid = state["pids"].get(name)
    if pid and alive(pid):
        return False
    extra = _postgres_user() if name == "postgres" else {}
    with open(home.log(name), "ab") as out:
        process = subprocess.Popen(_command(name, home, state["ports"]), env=env, stdout=out, cwd=home.root,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                   **extra)  # fmt: skip
    state["pids"][name] = process.pid
    _save(home, state)
    return True


def _await(name: str, home: Home, state: dict, secret: dict[str, str], deadline: float) -> None:
    """Wait until `name` answers; ServiceError naming it and its log if it dies or the deadline passes."""
    pid = state["pids"][name]
    while not _answers(name, state["ports"], secret):
        if not alive(pid) or time.monotonic() > deadline:
            why = "exited" if not alive(pid) else "did not answer in time"
            tail = home.log(name).read_text(errors="replace")[-1500:] if home.log(name).exists() else "(no log)"
            raise ServiceError(f"{name} (port {state['ports'].get(name)}) {why}; `msmt cluster down` stops the "
                               f"rest. {home.log(name)} ends with:\n{tail}")  # fmt: skip
        time.sleep(0.5)


def up(settings: Settings, timeout_s: float = 300) -> dict[str, int]:
    """Start every service not yet running (idempotent: running ones are reused); name -> process group.

    Exports the cluster profile into this process's environment, where Airflow's services inherit it
    (their DAG tasks then find the services and the secrets' carriers)."""
    home = Home.of(settings)
    home.logs.mkdir(parents=True, exist_ok=True)
    home.root.chmod(0o711)  # the postgres OS user enters it for its data dir; nobody else lists it
    home.logs.chmod(0o700)
    secret = _secrets(home, create=True)
    state = _load(home)
    if not state["ports"]:
        state["ports"] = dict(zip(PORTS, _free_ports(len(PORTS)), strict=True))
        _save(home, state)
    ports = state["ports"]
    _write_private(home.pgpass, f"{HOST}:{ports['postgres']}:*:{DB_USER}:{secret['POSTGRES_PASSWORD']}\n")
    _write_private(home.redis_conf, _redis_config(home, ports["redis"], secret["REDIS_PASSWORD"]))
    _initdb(home, secret["POSTGRES_PASSWORD"])
    os.environ.update(client_env(settings))
    env = {
        **os.environ,
        "SPARK_HOME": str(Path(_spark_class()).parent.parent),
        "SPARK_DAEMON_MEMORY": "512m",  # the master's and worker's own JVMs; executors get the worker's 2g
        # One core per application unless it asks for more: a day's two Spark jobs (build_samples and
        # build_features, parallel tasks) run side by side on the 2-core worker instead of one waiting.
        "SPARK_MASTER_OPTS": "-Dspark.deploy.defaultCores=1",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # its GenAI job runners: 7 idle processes msmt never uses
    }
    deadline = time.monotonic() + timeout_s

    def start_and_await(wave: tuple[str, ...], meanwhile=lambda: None) -> None:
        started = [name for name in wave if _start(name, home, state, env)]
        meanwhile()
        for name in wave:
            _await(name, home, state, secret, deadline)
            _provision(name, ports, secret)
            log.info("%s %s on %s:%d", name, "started" if name in started else "reused", HOST, ports[name])

    def airflow() -> None:
        try:
            scheduler.up(cluster_settings(settings), ports["airflow"], deadline - time.monotonic(), unpause=False)
        except subprocess.CalledProcessError as error:  # `airflow db migrate`, run by scheduler.up
            raise ServiceError(f"airflow db migrate failed:\n{(error.stderr or b'').decode()[-1500:]}") from None

    start_and_await(FIRST)
    start_and_await(SECOND, airflow)  # Airflow migrates its DB while MLflow migrates its own
    return running(settings)


def down(settings: Settings, grace_s: float = 20) -> list[str]:
    """Stop every service of this home, Airflow first and PostgreSQL last, by process group; the names stopped."""
    home = Home.of(settings)
    stopped = scheduler.down(settings, grace_s)
    state = _load(home)
    for name in reversed(SERVICES):
        pid = state["pids"].get(name)
        if pid and alive(pid):
            scheduler.stop([pid], grace_s, STOP_SIGNAL.get(name, signal.SIGTERM))
            stopped.append(name)
    if home.state.exists():
        _save(home, {**state, "pids": {}})  # the ports stay: the next `up` reuses them
    return stopped


def running(settings: Settings) -> dict[str, int]:
    """Services of this home that are alive (Airflow's included): name -> process group."""
    state = _load(Home.of(settings))
    ours = {name: pid for name, pid in state["pids"].items() if alive(pid)}
    return {**ours, **scheduler.running(settings)}
