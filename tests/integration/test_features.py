"""Feast publishing and point-in-time training sets on the real local provider."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from msmt import features, lake, schemas

pytestmark = pytest.mark.integration

DAY = "2026-03-02"


def _ts(day: str, hour: int) -> dt.datetime:
    return dt.datetime.fromisoformat(f"{day}T{hour:02d}:00:00+00:00")


def _write_samples(settings, day: str, rows: list[dict]) -> None:
    base = {name: 0 for name in schemas.SAMPLES.names}
    full = [{**base, "device": "ios", "hist_item_ids": [], "request_id": r["impression_id"], **r} for r in rows]
    out = Path(lake.samples(settings, day), "scenario=homefeed")
    out.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(full, schemas.SAMPLES), out / "part-0.parquet")


def _write_features(settings, view: str, day: str, rows: list[dict], stamp: dt.datetime | None = None) -> None:
    schema = schemas.FEATURES[view]
    stamp = stamp or _ts(day, 0)
    full = [{**{c: 0 for c in schema.names}, "event_timestamp": stamp, "created_timestamp": stamp, **r} for r in rows]
    out = Path(lake.features(settings, view, day))
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(full, schema), out / f"part-{stamp.hour}.parquet")


@pytest.fixture
def published(settings):
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


def test_training_set_is_point_in_time(published):
    out = features.build_training_set(published, [DAY], DAY)
    rows = {r["impression_id"]: r for r in pq.read_table(out).to_pylist()}
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
