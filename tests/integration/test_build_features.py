"""build_features: hand-computed smoothing, and nothing on or after day D enters day D's features."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.testing import assertDataFrameEqual

from msmt import lake, schemas
from spark_jobs import build_features
from spark_jobs.common import spark_schema

pytestmark = pytest.mark.integration

D = "2026-01-10"
D1 = lake.shift(D, -1)


def at(ds: str, hour: int) -> dt.datetime:
    return dt.datetime.fromisoformat(ds).replace(hour=hour, tzinfo=dt.UTC)


def write_raw(settings, name: str, ds: str, rows: list[dict], part: str = "0") -> None:
    path = Path(lake.raw(settings, name, ds))
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schemas.RAW[name]), path / f"part-{part}.parquet")


def impression(impression_id, ts, user_id, item_id, scenario) -> dict:
    return {
        "impression_id": impression_id,
        "request_id": "r",
        "ts": ts,
        "user_id": user_id,
        "item_id": item_id,
        "scenario": scenario,
        "position": 0,
        "device": "web",
        "user_segment": 0,
        "item_category": 0,
        "item_price_bucket": 0,
        "hist_item_ids": [],
    }


def click(click_id, impression_id, ts) -> dict:
    return {"click_id": click_id, "impression_id": impression_id, "ts": ts}


def conversion(conversion_id, click_id, ts) -> dict:
    return {"conversion_id": conversion_id, "click_id": click_id, "ts": ts, "value": 1.0}


def write_history(settings) -> None:
    """Day D-1: user 1 sees item 100 three times on homefeed (1 click, clicked twice, 1 conversion);
    user 2 sees item 200 twice on search (1 click); plus one malformed impression."""
    write_raw(
        settings,
        "impressions",
        D1,
        [
            impression("a", at(D1, 8), 1, 100, "homefeed"),
            impression("b", at(D1, 9), 1, 100, "homefeed"),
            impression("c", at(D1, 10), 1, 100, "homefeed"),
            impression("d", at(D1, 11), 2, 200, "search"),
            impression("e", at(D1, 12), 2, 200, "search"),
            impression("x", at(D1, 12), 2, 200, "unknown"),  # quarantined: not counted
        ],
    )
    write_raw(
        settings,
        "clicks",
        D1,
        [click("ka", "a", at(D1, 8)), click("ka2", "a", at(D1, 9)), click("kd", "d", at(D1, 11))],
    )
    write_raw(settings, "conversions", D1, [conversion("va", "ka", at(D1, 20))])


def read_view(spark, settings, view: str):
    return spark.read.parquet(lake.features(settings, view, D))


def test_smoothed_rates_match_hand_computation(spark, settings):
    write_history(settings)
    stats = build_features.run(spark, settings, D)

    # window: 5 impressions, 2 clicks, 1 conversion -> ctr0 = 0.4, cvr0 = 0.5; K = M = 20
    assert (stats["ctr_prior"], stats["cvr_prior"]) == (0.4, 0.5)
    stamp = dt.datetime(2026, 1, 10)  # 00:00 UTC, read back as the session's UTC wall clock
    expected = spark.createDataFrame(
        [(1, 3, 1, 1, 9 / 23, 11 / 21, stamp, stamp), (2, 2, 1, 0, 9 / 22, 10 / 21, stamp, stamp)],
        schema=spark_schema(schemas.FEATURES["user_stats"]),
    )
    assertDataFrameEqual(read_view(spark, settings, "user_stats"), expected)
    # per scenario, shrink towards the scenario's rate: homefeed ctr0 = 1/3, cvr0 = 1; search 1/2, 0
    scenario = read_view(spark, settings, "item_scenario_stats").orderBy("item_id").collect()
    assert [(r.item_id, r.scenario_id, r.is_impressions) for r in scenario] == [(100, 0, 3), (200, 1, 2)]
    assert scenario[0].is_ctr == pytest.approx((1 + 20 / 3) / 23) and scenario[0].is_cvr == pytest.approx(1.0)
    assert scenario[1].is_ctr == pytest.approx(11 / 22) and scenario[1].is_cvr == 0.0
    written = pq.read_schema(next(Path(lake.features(settings, "item_scenario_stats", D)).glob("*.parquet")))
    assert [(f.name, f.type) for f in written] == [(f.name, f.type) for f in schemas.FEATURES["item_scenario_stats"]]


def test_nothing_on_or_after_the_day_enters_its_features(spark, settings):
    write_history(settings)
    build_features.run(spark, settings, D)
    before = {view: read_view(spark, settings, view).collect() for view in schemas.FEATURES}

    # late labels of D-1's impressions and new traffic, all on or after D
    write_raw(settings, "impressions", D, [impression("f", at(D, 1), 1, 100, "homefeed")])
    write_raw(settings, "impressions", lake.shift(D, 1), [impression("g", at(D, 1), 3, 300, "search")])
    write_raw(settings, "clicks", D, [click("kb", "b", at(D, 0)), click("kf", "f", at(D, 2))])
    write_raw(settings, "clicks", D1, [click("kc", "c", at(D, 0))], part="late")  # ts on D in D-1's partition
    write_raw(settings, "conversions", D, [conversion("vd", "kd", at(D, 1))])
    build_features.run(spark, settings, D)

    for view, rows in before.items():
        assertDataFrameEqual(read_view(spark, settings, view), rows)


def test_each_view_aggregates_its_own_window_from_the_contract(spark, settings, tmp_path):
    """user_stats over 1 day, item_stats over 7: an impression three days back counts for the item only."""
    from msmt import contract

    text = contract.DEFAULT.read_text().replace('prefix = "u"\nwindow_days = 7', 'prefix = "u"\nwindow_days = 1')
    (tmp_path / "short.toml").write_text(text)
    short = settings.with_(contract=str(tmp_path / "short.toml"))
    write_history(short)
    d3 = lake.shift(D, -3)
    write_raw(short, "impressions", d3, [impression("old", at(d3, 8), 1, 100, "homefeed")])
    stats = build_features.run(spark, short, D)
    assert stats["window"] == [lake.shift(D, -7), D1]  # the longest view's days are read
    users = {r.user_id: r.u_impressions for r in spark.read.parquet(lake.features(short, "user_stats", D)).collect()}
    items = {r.item_id: r.i_impressions for r in spark.read.parquet(lake.features(short, "item_stats", D)).collect()}
    assert users[1] == 3 and items[100] == 4  # D-1's three for the user; the item's window reaches D-3
