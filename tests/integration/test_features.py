"""Feast publishing and point-in-time training sets on the real local provider, lake local and on S3."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

from feature_repo import publish as features
from msmt import lake, schemas, storage

pytestmark = pytest.mark.integration

DAY = "2026-03-02"


def _ts(day: str, hour: int) -> dt.datetime:
    return dt.datetime.fromisoformat(f"{day}T{hour:02d}:00:00+00:00")


def _write_samples(settings, day: str, rows: list[dict]) -> None:
    base = {name: 0 for name in schemas.SAMPLES.names}
    full = [{**base, "device": "ios", "hist_item_ids": [], "request_id": r["impression_id"], **r} for r in rows]
    out = f"{lake.samples(settings, day)}/scenario=homefeed/part-0.parquet"
    storage.write_parquet(settings, out, pa.Table.from_pylist(full, schemas.SAMPLES))


def _write_features(settings, view: str, day: str, rows: list[dict], stamp: dt.datetime | None = None) -> None:
    schema = schemas.FEATURES[view]
    stamp = stamp or _ts(day, 0)
    full = [{**{c: 0 for c in schema.names}, "event_timestamp": stamp, "created_timestamp": stamp, **r} for r in rows]
    out = f"{lake.features(settings, view, day)}/part-{stamp.hour}.parquet"
    storage.write_parquet(settings, out, pa.Table.from_pylist(full, schema))


def _publish(settings):
    """Day DAY's features for user 1 / item 7 (u_clicks = 10) and a later row (u_clicks = 99)."""
    _write_samples(
        settings,
        DAY,
        [
            {"impression_id": "a", "user_id": 1, "item_id": 7, "event_timestamp": _ts(DAY, 9)},
            {"impression_id": "b", "user_id": 1, "item_id": 7, "event_timestamp": _ts(DAY, 15)},
            {"impression_id": "c", "user_id": 2, "item_id": 7, "event_timestamp": _ts(DAY, 9)},
        ],
    )
    for view in schemas.FEATURES:
        keys = {"user_id": 1, "item_id": 7, "scenario_id": 0}
        cols = schemas.feature_columns(view)
        _write_features(settings, view, DAY, [{**keys, cols[1]: 10, cols[3]: 0.1}])
    # A row stamped at noon of the same day: visible to the 15:00 sample, never to the 09:00 one.
    _write_features(settings, "user_stats", DAY, [{"user_id": 1, "u_clicks": 99, "u_ctr": 0.9}], stamp=_ts(DAY, 12))
    features.publish(settings, [DAY])
    return settings


@pytest.fixture
def published(settings):
    return _publish(settings)


def _training_set_rows(settings) -> dict[str, dict]:
    out = features.build_training_set(settings, [DAY], DAY)
    return {r["impression_id"]: r for r in storage.dataset(settings, out).to_table().to_pylist()}


def test_training_set_is_point_in_time(published):
    _assert_point_in_time(_training_set_rows(published))


def _assert_point_in_time(rows: dict[str, dict]) -> None:
    assert set(rows) == {"a", "b", "c"}
    assert rows["a"]["u_clicks"] == 10  # the noon row is in a's future: no leakage
    assert rows["b"]["u_clicks"] == 99  # and in b's past
    assert rows["c"]["u_clicks"] is None  # unknown user: a null, not another user's value
    assert rows["c"]["i_clicks"] == 10 and rows["a"]["is_ctr"] == pytest.approx(0.1)
    assert rows["a"]["ds"] == DAY


def test_online_store_serves_the_materialised_day(published):
    store = features.feature_store(published)
    online = store.get_online_features(features=["user_stats:u_clicks"], entity_rows=[{"user_id": 1}]).to_dict()
    # materialised up to 00:00 of the day: the day's row, not the later noon row
    assert online["u_clicks"] == [10]


def test_missing_sample_day_is_a_clear_error(published):
    with pytest.raises(FileNotFoundError, match="run build_samples"):
        features.build_training_set(published, ["2026-03-01"], DAY)


def test_publishing_and_the_training_set_work_with_the_lake_on_s3(s3_settings):
    """Feast's DuckDB store reads the S3 lake (httpfs): the same point-in-time rows, written to the bucket."""
    _assert_point_in_time(_training_set_rows(_publish(s3_settings)))
    assert storage.list_keys(s3_settings, lake.training_set(s3_settings, DAY))
    store = features.feature_store(s3_settings)
    online = store.get_online_features(features=["user_stats:u_clicks"], entity_rows=[{"user_id": 1}]).to_dict()
    assert online["u_clicks"] == [10]  # materialised from the bucket
