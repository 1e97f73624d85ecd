"""Feature publishing and point-in-time training sets through Feast.

`publish` applies the definitions in `feature_repo/` and materialises the
days' rows into the online store; `build_training_set` joins samples to the
feature views as of each sample's event time (Feast's point-in-time join), so a
feature row stamped after an impression never reaches it.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from msmt import lake, schemas
from msmt.settings import PROJECT_ROOT, Settings

log = logging.getLogger("msmt.features")

FEATURE_REPO = PROJECT_ROOT / "feature_repo"
ENTITY_COLUMNS = ["impression_id", "user_id", "item_id", "scenario_id", "event_timestamp"]


def feast_env(settings: Settings) -> dict[str, str]:
    """The variables `feature_repo/feature_store.yaml` expands for this profile."""
    return {
        "MSMT_FEAST_REGISTRY": str(settings.feast_dir / "registry.db"),
        "MSMT_FEAST_ONLINE_STORE": str(settings.feast_dir / "online_store.db"),
        "MSMT_HOME": str(settings.home),
        "MSMT_LAKE_URI": settings.lake,
    }


def feature_store(settings: Settings):
    """A FeatureStore on this profile's registry and online store."""
    from feast import FeatureStore
    from feast.repo_config import load_repo_config

    settings.ensure_dirs()
    saved = {key: os.environ.get(key) for key in feast_env(settings)}
    os.environ.update(feast_env(settings))  # feature_store.yaml expands them; restored right after
    try:
        config = load_repo_config(FEATURE_REPO, FEATURE_REPO / "feature_store.yaml")
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return FeatureStore(repo_path=str(FEATURE_REPO), config=config)


def _day_start(ds_: str) -> dt.datetime:
    return dt.datetime.combine(lake.day(ds_), dt.time(), tzinfo=dt.UTC)


def publish(settings: Settings, days: list[str]) -> dict:
    """Apply the feature definitions and materialise `days` into the online store."""
    from feature_repo.definitions import definitions

    store = feature_store(settings)
    store.apply(definitions(settings))
    first, last = min(days), max(days)
    store.materialize(_day_start(first), _day_start(last) + dt.timedelta(seconds=1))
    log.info("feast: applied %s and materialised %s … %s", FEATURE_REPO.name, first, last)
    return {"feature_service": "ranker_v1", "materialized": [first, last]}


TRAINING_SET_ROW_GROUP = 131_072  # rows per parquet row group of a training set


def read_samples(settings: Settings, days: list[str]) -> pa.Table:
    """Samples of `days` with the string column `ds` (partition columns restored)."""
    tables = []
    for sample_ds in days:
        path = lake.samples(settings, sample_ds)
        if not Path(path).exists():
            raise FileNotFoundError(f"no samples for {sample_ds} at {path}: run build_samples for that day first")
        table = ds.dataset(path, format="parquet", partitioning="hive").to_table()
        table = table.drop_columns([c for c in ("scenario",) if c in table.column_names])
        tables.append(table.append_column("ds", pa.array([sample_ds] * table.num_rows, pa.string())))
    return pa.concat_tables(tables).cast(_with_ds(schemas.SAMPLES))


def _with_ds(schema: pa.Schema) -> pa.Schema:
    return schema.append(pa.field("ds", pa.string()))


def build_training_set(settings: Settings, sample_days: list[str], out_ds: str) -> str:
    """Point-in-time join of the samples of `sample_days` with the `ranker_v1` features.

    Only the entity columns travel through Feast; the full sample rows are
    joined back on `impression_id`. Written to `training_sets/ds=<out_ds>/`.
    """
    from feature_repo.definitions import FEATURE_SERVICE

    samples = read_samples(settings, sample_days)
    entity_df = samples.select(ENTITY_COLUMNS).to_pandas()
    store = feature_store(settings)
    job = store.get_historical_features(entity_df=entity_df, features=store.get_feature_service(FEATURE_SERVICE))
    joined = job.to_df()
    feature_cols = [c for view in schemas.FEATURES for c in schemas.feature_columns(view)]
    features = pa.Table.from_pandas(joined[["impression_id", *feature_cols]], preserve_index=False)
    features = features.cast(
        pa.schema(
            [pa.field("impression_id", pa.string())]
            + [schemas.FEATURES[v].field(c) for v in schemas.FEATURES for c in schemas.feature_columns(v)]
        )
    )
    # Feast returns one row per entity row; align on impression_id (pyarrow joins can't carry list columns).
    samples, features = samples.sort_by("impression_id"), features.sort_by("impression_id")
    if not samples["impression_id"].equals(features["impression_id"]):
        raise RuntimeError("Feast returned a different set of impressions than it was given")
    table = samples
    for name in features.column_names[1:]:
        table = table.append_column(features.schema.field(name), features[name])
    out = lake.training_set(settings, out_ds)
    shutil.rmtree(out, ignore_errors=True)
    Path(out).mkdir(parents=True)
    # Day-major row groups of TRAINING_SET_ROW_GROUP rows: a reader of one day skips the others'
    # groups, and the trainer encodes group by group instead of decoding the whole file at once.
    table = table.sort_by([("ds", "ascending"), ("impression_id", "ascending")])
    pq.write_table(table, f"{out}/part-0.parquet", row_group_size=TRAINING_SET_ROW_GROUP)
    coverage = {c: 1 - table[c].null_count / max(table.num_rows, 1) for c in ("u_ctr", "i_ctr", "us_ctr", "is_ctr")}
    log.info("training set %s: %d rows, feature coverage %s", out, table.num_rows, coverage)
    return out
