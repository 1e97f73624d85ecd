"""build_samples on hand-made raw partitions: labels, every quarantine reason, accounting, idempotent re-runs;
on simulated days: the quarantine share check_samples bounds."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.testing import assertDataFrameEqual

from data_checks.suites import DataCheckError, check_samples
from msmt import lake, schemas
from pipeline.simulate import SimConfig, simulate
from spark_jobs import build_samples
from spark_jobs.common import MissingPartitionError

pytestmark = pytest.mark.integration

SD = "2026-01-05"


def at(ds: str, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime.fromisoformat(ds).replace(hour=hour, minute=minute, tzinfo=dt.UTC)


def write_raw(settings, name: str, ds: str, rows: list[dict]) -> None:
    path = Path(lake.raw(settings, name, ds))
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schemas.RAW[name]), path / "part-0.parquet")


def impression(impression_id, ts, scenario="homefeed", user_id=1, position=0) -> dict:
    return {
        "impression_id": impression_id,
        "request_id": f"r-{impression_id}",
        "ts": ts,
        "user_id": user_id,
        "item_id": 100,
        "scenario": scenario,
        "position": position,
        "device": "ios",
        "user_segment": 1,
        "item_category": 2,
        "item_price_bucket": 3,
        "hist_item_ids": [7, 8],
    }


def click(click_id, impression_id, ts) -> dict:
    return {"click_id": click_id, "impression_id": impression_id, "ts": ts}


def conversion(conversion_id, click_id, ts) -> dict:
    return {"conversion_id": conversion_id, "click_id": click_id, "ts": ts, "value": 9.5}


def write_day(settings) -> None:
    """Sample day SD (window 2) with one raw row per label case and per quarantine reason."""
    d = lambda n: lake.shift(SD, n)  # noqa: E731
    write_raw(settings, "impressions", d(-3), [impression("i0", at(d(-3), 22))])
    write_raw(settings, "impressions", d(-1), [impression("p1", at(d(-1), 20))])
    write_raw(
        settings,
        "impressions",
        SD,
        [
            impression("i1", at(SD, 10)),  # duplicate click -> click counted once, converted
            impression("i2", at(SD, 11), "search"),  # clicked, conversion after the window
            impression("i3", at(SD, 12), "detail_page"),  # only a click before it -> clicked_before_shown
            impression("i4", at(SD, 12), "mini_app"),  # clicked, converted the same day
            impression("i5", at(SD, 23, 30)),  # clicked the next day, converted two days later
            impression("i1", at(SD, 14)),  # duplicate_impression
            impression("i6", at(SD, 10), user_id=None),  # null_key
            impression("i7", at(SD, 10), "tv"),  # unknown_scenario
            impression("i8", at(d(-1), 23)),  # ts_outside_day
            impression("i9", at(SD, 10), position=-1),  # bad_position
        ],
    )
    write_raw(settings, "clicks", d(-3), [click("c0", "i0", at(d(-3), 23))])
    write_raw(
        settings,
        "clicks",
        SD,
        [
            click("c1", "i1", at(SD, 10, 5)),
            click("c1b", "i1", at(SD, 10, 6)),  # duplicate_click
            click("c2", "i2", at(SD, 11, 30)),
            click("c4", "i4", at(SD, 12, 10)),
            click("c11", "p1", at(SD, 1)),  # used by yesterday's impression: not quarantined
            click("c9", "nope", at(SD, 12)),  # orphan_click
            click("c10", "i3", at(SD, 9)),  # click_before_impression
        ],
    )
    write_raw(settings, "clicks", d(1), [click("c5", "i5", at(d(1), 1))])
    write_raw(
        settings,
        "conversions",
        SD,
        [
            conversion("v4", "c4", at(SD, 13)),
            conversion("v9", "cX", at(SD, 13)),  # no_matching_click
            conversion("v10", "c1", at(SD, 10)),  # conversion_before_click
            conversion("v0", "c0", at(SD, 0, 30)),  # after_attribution_window (click three days ago)
        ],
    )
    write_raw(settings, "conversions", d(1), [conversion("v1", "c1", at(d(1), 8))])
    write_raw(
        settings,
        "conversions",
        d(2),
        [
            conversion("v2", "c2", at(d(2), 12)),  # 2 days 30 min after its click: outside the window
            conversion("v5", "c5", at(d(2), 9)),  # 1 day 8 h after its click: inside
        ],
    )


def test_sample_day_lags_run_day_by_the_attribution_window(settings):
    assert build_samples.sample_day("2026-01-08", settings) == "2026-01-06"


def test_labels_quarantine_and_accounting(spark, settings):
    write_day(settings)
    stats = build_samples.run(spark, settings, SD)

    samples = spark.read.parquet(lake.samples(settings, SD))
    expected = spark.createDataFrame(
        [
            ("i1", "homefeed", 0, 10, 1, 1),
            ("i2", "search", 1, 11, 1, 0),
            ("i4", "mini_app", 3, 12, 1, 1),
            ("i5", "homefeed", 0, 23, 1, 1),
        ],
        "impression_id string, scenario string, scenario_id long, hour int, click int, conversion int",
    )
    assertDataFrameEqual(samples.select(*expected.columns), expected)
    written = pq.read_schema(next(Path(lake.samples(settings, SD), "scenario=homefeed").glob("*.parquet")))
    assert [(f.name, f.type) for f in written] == [(f.name, f.type) for f in schemas.SAMPLES]

    quarantine = spark.read.parquet(lake.quarantine(settings, SD))
    expected_q = spark.createDataFrame(
        [
            ("impressions", "i1", "duplicate_impression"),
            ("impressions", "i6", "null_key"),
            ("impressions", "i7", "unknown_scenario"),
            ("impressions", "i8", "ts_outside_day"),
            ("impressions", "i9", "bad_position"),
            ("impressions", "i3", "clicked_before_shown"),
            ("clicks", "c1b", "duplicate_click"),
            ("clicks", "c9", "orphan_click"),
            ("clicks", "c10", "click_before_impression"),
            ("conversions", "v9", "no_matching_click"),
            ("conversions", "v10", "conversion_before_click"),
            ("conversions", "v0", "after_attribution_window"),
        ],
        "source string, record_id string, reason string",
    )
    assertDataFrameEqual(quarantine.select("source", "record_id", "reason"), expected_q)
    null_key = quarantine.where("reason = 'null_key'").first()
    assert '"user_id":null' in null_key.payload and '"impression_id":"i6"' in null_key.payload

    # every raw impression of the day is either a sample or quarantined
    n_quarantined = quarantine.where("source = 'impressions'").count()
    assert samples.count() + n_quarantined == stats["raw"]["impressions"] == 10
    assert stats["raw"] == {"impressions": 10, "clicks": 7, "conversions": 4}
    assert stats["quarantine"]["clicks"] == {"click_before_impression": 1, "duplicate_click": 1, "orphan_click": 1}
    assert stats["scenarios"]["homefeed"] == {"rows": 2, "clicks": 2, "conversions": 2, "ctr": 1.0, "cvr": 1.0}
    assert stats["samples"] == 4 and stats["ctr"] == pytest.approx(1.0)


def test_rerun_overwrites_exactly_that_day(spark, settings):
    write_day(settings)
    build_samples.run(spark, settings, SD)
    first = spark.read.parquet(lake.samples(settings, SD)).collect()
    other_day = Path(lake.samples(settings, lake.shift(SD, -1)), "scenario=homefeed")
    other_day.mkdir(parents=True)
    stale = Path(lake.samples(settings, SD), "scenario=retired")
    stale.mkdir()
    (stale / "part-0.parquet").write_bytes(b"stale")

    build_samples.run(spark, settings, SD)

    again = spark.read.parquet(lake.samples(settings, SD))
    assertDataFrameEqual(again, first)
    assert again.select("impression_id").distinct().count() == len(first)
    assert not stale.exists() and other_day.exists()


def test_missing_day_is_a_clear_error(spark, settings):
    with pytest.raises(MissingPartitionError, match="raw/impressions for ds=2026-01-05"):
        build_samples.run(spark, settings, SD)


def test_a_click_stamped_before_its_next_day_impression_is_named_and_that_impression_is_no_negative(spark, settings):
    """Click at 23:59 of SD, its impression at 00:01 of SD+1: the clock is broken, the label unknown."""
    nxt = lake.shift(SD, 1)
    write_raw(settings, "impressions", SD, [impression("a", at(SD, 10))])
    write_raw(settings, "clicks", SD, [click("early", "j1", at(SD, 23, 59))])
    write_raw(settings, "impressions", nxt, [impression("j1", at(nxt, 0, 1)), impression("b", at(nxt, 12))])
    for name in ("clicks", "conversions"):
        write_raw(settings, name, nxt, [])
    write_raw(settings, "conversions", SD, [])

    assert build_samples.run(spark, settings, SD)["quarantine"]["clicks"] == {"click_before_impression": 1}
    stats = build_samples.run(spark, settings, nxt)

    samples = spark.read.parquet(lake.samples(settings, nxt))
    assert [(r.impression_id, r.click) for r in samples.collect()] == [("b", 0)]
    quarantined = spark.read.parquet(lake.quarantine(settings, nxt)).where("source = 'impressions'")
    assert [(r.record_id, r.reason) for r in quarantined.collect()] == [("j1", "clicked_before_shown")]
    assert samples.count() + quarantined.count() == stats["raw"]["impressions"] == 2


def test_simulated_days_stay_under_the_quarantine_bound_and_a_broken_upstream_does_not(spark, settings):
    """The e2e test's tiny world: a normal day passes with margin; 45% of conversions losing their click fails."""
    simulate(settings, "2026-01-01", 5, 10_000, seed=3, config=SimConfig(n_users=2_000, n_items=500), progress=False)
    sd = "2026-01-04"  # the first day with conversions landing after the window: quarantined, not bounded
    build_samples.run(spark, settings, sd)
    shares = {share["table"]: share for share in check_samples(settings, sd)["quarantine"]}
    assert shares["conversions"]["reasons"]["after_attribution_window"] > 0
    assert all(share["share"] < settings.max_quarantine_rate / 2 for share in shares.values())

    path = Path(lake.raw(settings, "conversions", sd), "part-0.parquet")
    conversions = pq.read_table(path)
    lost = [f"lost-{i}" if i % 20 < 9 else c for i, c in enumerate(conversions["click_id"].to_pylist())]
    pq.write_table(conversions.set_column(1, "click_id", pa.array(lost, pa.string())), path)
    stats = build_samples.run(spark, settings, sd)
    with pytest.raises(DataCheckError) as failure:
        check_samples(settings, sd)

    raw, unmatched = stats["raw"]["conversions"], stats["quarantine"]["conversions"]["no_matching_click"]
    assert unmatched / raw > 0.44
    prefix = f"raw conversions ds={sd}: "
    (line,) = [line for line in str(failure.value).splitlines() if line.strip().startswith(prefix)]
    assert f"of {raw:,} rows quarantined (no_matching_click {unmatched / raw:.1%}" in line
    assert line.endswith("above MSMT_MAX_QUARANTINE_RATE 5%")
