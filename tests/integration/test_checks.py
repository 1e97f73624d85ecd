"""GX data checks: pass on good data, fail readably on a broken schema and on a volume collapse."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from msmt import lake, schemas
from spark_jobs.checks import DataCheckError, check_raw, check_samples

pytestmark = pytest.mark.integration

DS = "2026-01-08"


@pytest.fixture
def settings(settings):
    """Tiny days: hold every scenario to the drift bounds, however few its rows."""
    return settings.with_(drift_min_rows=0)


def write(path: str, table: pa.Table) -> None:
    Path(path).mkdir(parents=True, exist_ok=True)
    pq.write_table(table, Path(path) / "part-0.parquet")


def raw_day(settings, ds: str, per_scenario: dict[str, int] | None = None) -> dict[str, pa.Table]:
    """Clean raw logs of one day: `per_scenario` impressions (5 each by default), every other one clicked."""
    counts = per_scenario or dict.fromkeys(settings.scenarios, 5)
    ts = dt.datetime.fromisoformat(ds).replace(hour=12, tzinfo=dt.UTC)
    impressions = [
        {
            "impression_id": f"{ds}-{scenario}-{i}",
            "request_id": "r",
            "ts": ts,
            "user_id": i,
            "item_id": i,
            "scenario": scenario,
            "position": i,
            "device": "ios",
            "user_segment": 0,
            "item_category": 0,
            "item_price_bucket": 0,
            "hist_item_ids": [],
        }
        for scenario, n in counts.items()
        for i in range(n)
    ]
    clicks = [
        {"click_id": f"c{r['impression_id']}", "impression_id": r["impression_id"], "ts": ts} for r in impressions[::2]
    ]
    conversions = [{"conversion_id": "v1", "click_id": clicks[0]["click_id"], "ts": ts, "value": 3.0}]
    tables = {
        "impressions": pa.Table.from_pylist(impressions, schema=schemas.IMPRESSIONS),
        "clicks": pa.Table.from_pylist(clicks, schema=schemas.CLICKS),
        "conversions": pa.Table.from_pylist(conversions, schema=schemas.CONVERSIONS),
    }
    for name, table in tables.items():
        write(lake.raw(settings, name, ds), table)
    return tables


def stored(settings, suite: str, ds: str) -> dict:
    return json.loads(Path(lake.check_result(settings, suite, ds)).read_text())


def test_check_raw_passes_on_good_data_and_stores_the_result(settings):
    for back in (2, 1):
        raw_day(settings, lake.shift(DS, -back))
    raw_day(settings, DS)

    result = check_raw(settings, DS)

    assert result["success"] and result == stored(settings, "raw", DS)
    assert result["statistics"]["unsuccessful_expectations"] == 0
    assert {row["scenario"]: row["volume_ratio"] for row in result["summary"]} == dict.fromkeys(settings.scenarios, 1.0)
    assert not result["notes"]


def test_check_raw_fails_readably_on_a_schema_broken_file(settings):
    tables = raw_day(settings, DS)
    broken = tables["impressions"].set_column(3, "user_id", tables["impressions"]["user_id"].cast(pa.string()))
    write(lake.raw(settings, "impressions", DS), broken.rename_columns([*broken.column_names[:-1], "history"]))

    with pytest.raises(DataCheckError, match="user_id: string") as failure:
        check_raw(settings, DS)

    assert "missing" in str(failure.value) and "hist_item_ids" in str(failure.value)
    assert "impressions: user_id is string, not int64" in str(failure.value)  # the contract's type, named
    result = stored(settings, "raw", DS)
    assert not result["success"] and any("no trailing day found" in note for note in result["notes"])


def test_check_raw_fails_on_a_volume_collapse_in_one_scenario(settings):
    for back in (3, 2, 1):
        raw_day(settings, lake.shift(DS, -back), dict.fromkeys(settings.scenarios, 10))
    raw_day(settings, DS, {**dict.fromkeys(settings.scenarios, 10), "mini_app": 2})

    with pytest.raises(DataCheckError, match="volume_ratio") as failure:
        check_raw(settings, DS)

    assert "0.2" in str(failure.value)
    (row,) = [r for r in stored(settings, "raw", DS)["summary"] if r["scenario"] == "mini_app"]
    assert row["volume_ratio"] == pytest.approx(0.2)

    # The same collapse in a scenario below `drift_min_rows` is reported, not enforced.
    lenient = check_raw(settings.with_(drift_min_rows=11), DS)
    assert lenient["success"] and "mini_app" in lenient["notes"][0]


def samples_day(settings, ds: str, clicks: list[int], scenarios: list[str]) -> None:
    ts = dt.datetime.fromisoformat(ds).replace(hour=3, tzinfo=dt.UTC)
    for sid, scenario in enumerate(scenarios):
        rows = [
            {
                "impression_id": f"{scenario}-{i}",
                "request_id": "r",
                "event_timestamp": ts,
                "user_id": i,
                "item_id": i,
                "scenario_id": settings.scenario_ids[scenario],
                "position": sid,
                "device": "web",
                "hour": 3,
                "user_segment": 0,
                "item_category": 0,
                "item_price_bucket": 0,
                "hist_item_ids": [1],
                "click": c,
                "conversion": c if i == 0 else 0,
            }
            for i, c in enumerate(clicks)
        ]
        write(f"{lake.samples(settings, ds)}/scenario={scenario}", pa.Table.from_pylist(rows, schema=schemas.SAMPLES))


def test_check_samples_passes_then_catches_a_missing_scenario_and_a_ctr_jump(settings):
    scenarios = list(settings.scenarios)
    samples_day(settings, DS, [1, 0, 0, 0], scenarios)
    first = check_samples(settings, DS)
    assert first["success"] and "no trailing day found" in first["notes"][0]

    nxt = lake.shift(DS, 1)
    samples_day(settings, nxt, [1, 1, 1, 1], scenarios[:-1])  # CTR 0.25 -> 1.0 and mini_app gone
    with pytest.raises(DataCheckError) as failure:
        check_samples(settings, nxt)
    message = str(failure.value)
    assert "expect_column_distinct_values_to_contain_set(scenario)" in message and "ctr_ratio" in message
    assert not stored(settings, "samples", nxt)["success"]
