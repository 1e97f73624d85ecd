"""Feature publishing and point-in-time training sets through Feast.

`publish` applies the definitions in `feature_repo/` and materialises the
days' rows into the online store; `build_training_set` joins samples to the
feature views as of each sample's event time (Feast's point-in-time join), so a
feature row stamped after an impression never reaches it.

Every lake read and write goes through `msmt.storage`; on an `s3://` lake Feast's
DuckDB offline store reads the feature files through DuckDB's httpfs extension
(installed from its wheel, `duckdb-extension-httpfs`) with the profile's endpoint.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pyarrow as pa

from msmt import lake, storage
from msmt.settings import Settings

log = logging.getLogger("msmt.features")

FEATURE_REPO = Path(__file__).resolve().parent
ENTITY_COLUMNS = ["impression_id", "user_id", "item_id", "scenario_id", "event_timestamp"]


def feast_env(settings: Settings) -> dict[str, str]:
    """The variables the profile's feature_store yaml expands."""
    return {
        "MSMT_FEAST_REGISTRY": settings.feast_registry or str(settings.feast_dir / "registry.db"),
        "MSMT_FEAST_ONLINE_STORE": settings.feast_online_store or str(settings.feast_dir / "online_store.db"),
        "MSMT_HOME": str(settings.home),
        "MSMT_LAKE_URI": settings.lake,
    }


def store_yaml(settings: Settings) -> Path:
    """SQLite files in the home, or (a profile naming a SQL registry) the shared registry and Redis store."""
    return FEATURE_REPO / ("feature_store.cluster.yaml" if settings.feast_registry else "feature_store.yaml")


def feature_store(settings: Settings):
    """A FeatureStore on this profile's registry and online store."""
    from feast import FeatureStore
    from feast.repo_config import load_repo_config

    settings.ensure_dirs()
    saved = {key: os.environ.get(key) for key in feast_env(settings)}
    os.environ.update(feast_env(settings))  # feature_store.yaml expands them; restored right after
    try:
        config = load_repo_config(FEATURE_REPO, store_yaml(settings))
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    _duckdb_reads_the_lake(settings)
    return FeatureStore(repo_path=str(FEATURE_REPO), config=config)


def _duckdb_reads_the_lake(settings: Settings) -> None:
    """Give the DuckDB connection Feast reads through (ibis's default backend) the S3 lake's endpoint and keys."""
    if not storage.is_s3(settings.lake):
        return
    import boto3
    import ibis
    from duckdb_extensions import import_extension

    import_extension("httpfs")  # from the wheel into DuckDB's extension directory: nothing is downloaded
    session = boto3.Session()
    credentials = session.get_credentials()
    if credentials is None:
        raise RuntimeError(f"no AWS credentials for the lake {settings.lake} (AWS_ACCESS_KEY_ID / a profile / a role)")
    keys = credentials.get_frozen_credentials()
    region = session.region_name or "us-east-1"
    options = [f"KEY_ID '{keys.access_key}'", f"SECRET '{keys.secret_key}'", f"REGION '{region}'"]
    if keys.token:
        options.append(f"SESSION_TOKEN '{keys.token}'")
    if settings.s3_endpoint_url:  # MinIO / moto: host:port, path-style URLs
        endpoint = urlparse(settings.s3_endpoint_url)
        options += [f"ENDPOINT '{endpoint.netloc}'", "URL_STYLE 'path'", f"USE_SSL {endpoint.scheme == 'https'}"]
    backend = ibis.get_backend()
    backend.raw_sql("LOAD httpfs")
    backend.raw_sql(f"CREATE OR REPLACE SECRET msmt_lake (TYPE s3, {', '.join(options)})")


class OnlineStoreUnreachable(ConnectionError):
    """The profile's Redis online store did not answer (transient: the task's retries try again)."""


@contextlib.contextmanager
def _naming_the_online_store(settings: Settings) -> Iterator[None]:
    """redis-py's error gives a host:port but not which service that is, nor how to bring it back."""
    if not settings.feast_online_store:
        yield  # SQLite in the home: its errors name the file
        return
    import redis

    try:
        yield
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as error:
        raise OnlineStoreUnreachable(
            f"Feast's online store, Redis at {settings.feast_online_store}, is unreachable ({error}); "
            "on `msmt cluster`, `msmt cluster up` restarts it"
        ) from error


def _day_start(ds_: str) -> dt.datetime:
    return dt.datetime.combine(lake.day(ds_), dt.time(), tzinfo=dt.UTC)


def publish(settings: Settings, days: list[str]) -> dict:
    """Apply the feature definitions and materialise `days` into the online store."""
    from feature_repo.definitions import definitions

    store = feature_store(settings)
    first, last = min(days), max(days)
    with _naming_the_online_store(settings):
        store.apply(definitions(settings))
        store.materialize(_day_start(first), _day_start(last) + dt.timedelta(seconds=1))
    log.info("feast: applied %s and materialised %s … %s", FEATURE_REPO.name, first, last)
    return {"feature_service": settings.data_contract.feature_service, "materialized": [first, last]}


TRAINING_SET_ROW_GROUP = 131_072  # rows per parquet row group of a training set


def read_samples(settings: Settings, days: list[str]) -> pa.Table:
    """Samples of `days` with the string column `ds` (partition columns restored)."""
    tables = []
    for sample_ds in days:
        path = lake.samples(settings, sample_ds)
        if not storage.exists(settings, path):
            raise FileNotFoundError(f"no samples for {sample_ds} at {path}: run build_samples for that day first")
        table = storage.dataset(settings, path, partitioning="hive").to_table()
        table = table.drop_columns([c for c in ("scenario",) if c in table.column_names])
        tables.append(table.append_column("ds", pa.array([sample_ds] * table.num_rows, pa.string())))
    return pa.concat_tables(tables).cast(_with_ds(settings.data_contract.samples_schema))


def _with_ds(schema: pa.Schema) -> pa.Schema:
    return schema.append(pa.field("ds", pa.string()))


def build_training_set(settings: Settings, sample_days: list[str], out_ds: str) -> str:
    """Point-in-time join of the samples of `sample_days` with the contract's feature service.

    Only the entity columns travel through Feast; the full sample rows are
    joined back on `impression_id`. Written to `training_sets/ds=<out_ds>/`.
    """
    views = settings.data_contract.features.values()
    samples = read_samples(settings, sample_days)
    entity_df = samples.select(ENTITY_COLUMNS).to_pandas()
    store = feature_store(settings)
    service = store.get_feature_service(settings.data_contract.feature_service)
    joined = store.get_historical_features(entity_df=entity_df, features=service).to_df()
    feature_fields = [view.schema.field(column) for view in views for column in view.value_columns]
    features = pa.Table.from_pandas(joined[["impression_id", *(f.name for f in feature_fields)]], preserve_index=False)
    features = features.cast(pa.schema([pa.field("impression_id", pa.string()), *feature_fields]))
    # Feast returns one row per entity row; align on impression_id (pyarrow joins can't carry list columns).
    samples, features = samples.sort_by("impression_id"), features.sort_by("impression_id")
    if not samples["impression_id"].equals(features["impression_id"]):
        raise RuntimeError("Feast returned a different set of impressions than it was given")
    table = samples
    for name in features.column_names[1:]:
        table = table.append_column(features.schema.field(name), features[name])
    out = lake.training_set(settings, out_ds)
    storage.remove_prefix(settings, out)
    # Day-major row groups of TRAINING_SET_ROW_GROUP rows: a reader of one day skips the others'
    # groups, and the trainer encodes group by group instead of decoding the whole file at once.
    table = table.sort_by([("ds", "ascending"), ("impression_id", "ascending")])
    storage.write_parquet(settings, f"{out}/part-0.parquet", table, row_group_size=TRAINING_SET_ROW_GROUP)
    coverage = {v.name: 1 - table[v.value_columns[0]].null_count / max(table.num_rows, 1) for v in views}
    log.info("training set %s: %d rows, feature coverage %s", out, table.num_rows, coverage)
    return out
