"""One typed settings object: every path, URI and knob the pipeline reads.

Nothing else in msmt reads the environment. Importing this module has no side
effects; `Settings.from_env()` resolves the `MSMT_*` variables and
`settings.ensure_dirs()` creates the project-local state directory.

Profile `local` (the default) keeps all state under `MSMT_HOME` (default
`<repo>/.msmt`, git-ignored): the lake, Airflow home, MLflow DB and artifacts,
the Feast registry and the SQLite online store. Profile `cluster` points the
same fields at S3, a tracking server and a Spark master (see infra/).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Literal

from msmt import contract as contracts

PROJECT_ROOT = Path(__file__).resolve().parent.parent

Profile = Literal["local", "cluster"]

# Scenario names in id order: the id of a scenario is its index here. The last
# one is the long-tail scenario (~2% of traffic in the simulator).
DEFAULT_SCENARIOS = ("homefeed", "search", "detail_page", "mini_app")


@dataclass(frozen=True)
class Settings:
    """Where state lives and how the daily run behaves."""

    # io
    profile: Profile = "local"
    home: Path = PROJECT_ROOT / ".msmt"
    lake_uri: str = ""  # "" -> <home>/lake; "s3://bucket/prefix" for the S3 lake
    mlflow_tracking_uri: str = ""  # "" -> sqlite:///<home>/mlflow/mlflow.db
    s3_endpoint_url: str = ""  # "" -> AWS default; set for MinIO / moto
    spark_master: str = "local[2]"
    spark_driver_memory: str = "4g"
    spark_shuffle_partitions: int = 0  # 0: 4 on local[*] (tiny days), Spark's 200 on a master
    # Service URLs carry no password: secrets reach clients as PGPASSFILE, REDISCLI_AUTH and AWS_* (pipeline/cluster.py)
    airflow_db_uri: str = ""  # "" -> sqlite:///<home>/airflow/airflow.db; cluster: postgresql+psycopg2://msmt@…/airflow
    feast_registry: str = ""  # "" -> <home>/feast/registry.db; cluster: SQL registry postgresql+psycopg://msmt@…/feast
    feast_online_store: str = ""  # "" -> <home>/feast/online_store.db (SQLite); cluster: Redis host:port

    # data
    contract: str = ""  # the data contract file; "" -> contracts/simulator.toml (a relative path: cwd, then repo)
    scenarios: tuple[str, ...] = DEFAULT_SCENARIOS
    attribution_window: int | None = None  # days a conversion may land after its click; None: the contract's
    train_days: int = 3  # sample days the model trains on; the next day is held out
    max_quarantine_rate: float = 0.05  # a day with more malformed raw rows fails check_raw
    max_out_of_vocab_rate: float = 0.01  # training stops when more ids of a sparse field fall outside its vocab
    max_hash_collision_rate: float = 0.5  # … or more distinct values of a hashed field share a row
    drift_min_rows: int = 1000  # scenarios with fewer rows a day are not held to the volume / CTR bounds
    retry_delay_s: int = 300  # Airflow retry delay of the idempotent steps (late data, flaky storage)
    dag_start: str = "2026-01-01"  # msmt_daily's start_date: the first day it can run (imported logs: set earlier)

    # model
    model_name: str = "mmoe"
    registered_model: str = "msmt_ranker"
    experiment: str = "msmt_daily"
    epochs: int = 2
    batch_size: int = 2048
    learning_rate: float = 2e-3
    seed: int = 0
    train_workers: int = 1  # torchrun ranks of the local training step (gloo on CPU, nccl on GPU)
    train_image: str = "msmt-train:latest"  # image of the cluster profile's GPU training pod
    train_namespace: str = "msmt"  # Kubernetes namespace of that pod
    train_checkpoint_claim: str = "msmt-checkpoints"  # its PersistentVolumeClaim for checkpoints; "" = pod's /tmp
    kubernetes: bool = True  # cluster profile trains in a pod / PyTorchJob; False: torchrun beside the task (no k8s)

    # gate
    gate_metric: str = "auc"
    gate_max_drop: float = 0.002  # allowed AUC drop per cell before a significant loss fails it
    gate_floor: float = 0.55  # absolute AUC floor of every gated cell (the only rule on a first run)
    gate_min_rows: int = 500  # cells below this many rows are advisory
    gate_min_positives: int = 25  # …and below this many positives
    gate_bootstrap: int = 200
    gate_advisory_scenarios: tuple[str, ...] = field(default_factory=tuple)
    gate_allow_unjudged: bool = False  # promote a decision in which no cell had enough data to be judged
    gate_alpha: float = 0.05  # family-wise level: Holm across the compared cells (needs bootstrap ≥ cells/alpha − 1)
    gate_block_seesaw: bool = False  # fail on a seesaw (a task significantly up, another in its scenario down)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: object) -> Settings:
        """Build settings from `MSMT_<FIELD>` variables, then explicit overrides."""
        env = dict(os.environ if env is None else env)
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(f"MSMT_{f.name.upper()}")
            if raw is None:
                continue
            values[f.name] = _parse(raw, f.type)
        values.update(overrides)
        return cls(**values)

    def with_(self, **changes: object) -> Settings:
        return replace(self, **changes)

    def to_env(self) -> dict[str, str]:
        """`MSMT_*` variables that rebuild these settings in another process (Airflow tasks, torchrun)."""
        env = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "contract" and value:
                value = self.contract_file  # absolute: the other process may start elsewhere
            if value is None:
                value = ""  # unset: the other process reads "" as None too
            env[f"MSMT_{f.name.upper()}"] = ",".join(value) if isinstance(value, tuple) else str(value)
        return env

    # --- the data contract -------------------------------------------------
    @property
    def contract_file(self) -> Path:
        """The contract's absolute path, so every process (Airflow task, torchrun rank) reads the same file."""
        if not self.contract:
            return contracts.DEFAULT
        path = Path(self.contract).expanduser()
        if path.is_absolute() or path.exists():
            return path.resolve()
        return PROJECT_ROOT / path  # a shipped contract named from anywhere: contracts/aliexpress.toml

    @property
    def data_contract(self) -> contracts.Contract:
        """The loaded, validated contract (read once per process and file version)."""
        return contracts.load_cached(self.contract_file)

    @property
    def attribution_window_days(self) -> int:
        """How long labels take to mature: MSMT_ATTRIBUTION_WINDOW, else the contract's conversion label window."""
        if self.attribution_window is None:
            return self.data_contract.attribution_window_days
        return self.attribution_window

    @property
    def tasks(self) -> tuple[str, ...]:
        """The contract's label events, in the model's output order."""
        return self.data_contract.tasks

    @property
    def trains_on_kubernetes(self) -> bool:
        """The cluster profile's GPU pod or PyTorchJob; `msmt cluster` on one machine has no Kubernetes."""
        return self.profile == "cluster" and self.kubernetes

    # --- derived locations -------------------------------------------------
    @property
    def lake(self) -> str:
        return self.lake_uri or str(self.home / "lake")

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    @property
    def airflow_db(self) -> str:
        """Airflow's metadata DB: SQLite in the home, or the profile's PostgreSQL."""
        return self.airflow_db_uri or f"sqlite:///{self.airflow_home / 'airflow.db'}"

    @property
    def mlflow_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.home / 'mlflow' / 'mlflow.db'}"

    @property
    def mlflow_artifact_root(self) -> str:
        return str(self.home / "mlflow" / "artifacts")

    @property
    def feast_dir(self) -> Path:
        """Per-profile Feast state: registry and SQLite online store."""
        return self.home / "feast"

    @property
    def scenario_ids(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.scenarios)}

    def ensure_dirs(self) -> None:
        for path in (self.home, self.airflow_home, self.home / "mlflow", self.feast_dir):
            path.mkdir(parents=True, exist_ok=True)
        if not self.lake.startswith("s3://"):
            Path(self.lake).mkdir(parents=True, exist_ok=True)


_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _parse(raw: str, annotation: object) -> object:
    """Turn an environment string into the field's type (annotations are strings here)."""
    kind = str(annotation)
    if kind.endswith(" | None"):
        return None if raw == "" else _parse(raw, kind.removesuffix(" | None"))
    if kind == "bool":
        if raw.strip().lower() not in _BOOLS:
            raise ValueError(f"expected one of {sorted(_BOOLS)}, got {raw!r}")
        return _BOOLS[raw.strip().lower()]
    if kind.startswith("tuple"):
        return tuple(item.strip() for item in raw.split(",") if item.strip())
    if kind == "Path":
        return Path(raw)
    if kind == "int":
        return int(raw)
    if kind == "float":
        return float(raw)
    return raw
