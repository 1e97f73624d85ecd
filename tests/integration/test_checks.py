"""GX data checks: pass on good data; fail with one readable line per failure, stored before raising."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_checks.suites import DataCheckError, check_raw, check_samples
from msmt import lake, schemas, storage
from msmt.errors import StopRun

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
    partitions = [lake.raw(settings, table, DS) for table in lake.RAW_TABLES]
    assert result["digests"] == {uri: storage.partition_digest(settings, uri) for uri in partitions}  # lineage
    assert {row["scenario"]: row["volume_ratio"] for row in result["summary"]} == dict.fromkeys(settings.scenarios, 1.0)
    assert not result["notes"]


def test_check_raw_fails_readably_on_a_schema_broken_file(settings):
    tables = raw_day(settings, DS)
    broken = tables["impressions"].set_column(3, "user_id", tables["impressions"]["user_id"].cast(pa.string()))
    write(lake.raw(settings, "impressions", DS), broken.rename_columns([*broken.column_names[:-1], "history"]))

    with pytest.raises(DataCheckError) as failure:
        check_raw(settings, DS)

    where = f"raw impressions ds={DS}"
    lines = [
        f"{where}: column user_id is string, not int64",  # the contract's type, named
        f"{where}: columns differ from the contract: missing hist_item_ids; not in the contract history",
    ]
    assert all(line in str(failure.value) for line in lines) and "contracts/simulator.toml" in str(failure.value)
    result = stored(settings, "raw", DS)
    assert not result["success"] and result["failed"] == lines
    assert any("no trailing day found" in note for note in result["notes"])


def test_check_raw_fails_on_a_volume_collapse_in_one_scenario(settings):
    for back in (3, 2, 1):
        raw_day(settings, lake.shift(DS, -back), dict.fromkeys(settings.scenarios, 10))
    raw_day(settings, DS, {**dict.fromkeys(settings.scenarios, 10), "mini_app": 2})

    with pytest.raises(DataCheckError) as failure:
        check_raw(settings, DS)

    line = f"raw impressions ds={DS}: volume of mini_app is 0.2× its trailing mean (2 rows vs 10 a day; bounds 0.5×–2×)"
    assert line in str(failure.value) and stored(settings, "raw", DS)["failed"] == [line]
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


def quarantine_day(settings, ds: str, reasons: dict[str, list[str]]) -> None:
    """quarantine/ds=… laid out as Spark writes it: a `_SUCCESS` marker, one source=<table>/ per table with rows."""
    root = Path(lake.quarantine(settings, ds))
    root.mkdir(parents=True, exist_ok=True)
    (root / "_SUCCESS").touch()
    for source, rows in reasons.items():
        table = pa.table({"record_id": [f"{source}-{i}" for i in range(len(rows))], "reason": rows})
        write(str(root / f"source={source}"), table.append_column("payload", pa.array(["{}"] * len(rows))))


def test_check_samples_passes_then_catches_a_missing_scenario_and_a_ctr_jump(settings):
    scenarios = list(settings.scenarios)
    nxt = lake.shift(DS, 1)
    for ds in (DS, nxt):
        raw_day(settings, ds)
        quarantine_day(settings, ds, {})
    samples_day(settings, DS, [1, 0, 0, 0], scenarios)
    first = check_samples(settings, DS)
    assert first["success"] and "no trailing day found" in first["notes"][0]
    assert {share["table"]: share["share"] for share in first["quarantine"]} == dict.fromkeys(lake.RAW_TABLES, 0.0)

    samples_day(settings, nxt, [1, 1, 1, 1], scenarios[:-1])  # CTR 0.25 -> 1.0 and mini_app gone
    with pytest.raises(DataCheckError) as failure:
        check_samples(settings, nxt)

    where = f"samples ds={nxt}"
    lines = [
        f"{where}: scenario mini_app has 0 rows",
        f"{where}: volume of mini_app is 0× its trailing mean (0 rows vs 4 a day; bounds 0.5×–2×)",
        *[f"{where}: CTR of {s} is 4× its trailing mean (100.00% vs 25.00%; bounds 0.33×–3×)" for s in scenarios[:-1]],
    ]
    assert stored(settings, "samples", nxt)["failed"] == lines
    assert all(line in str(failure.value) for line in lines)


def test_check_samples_bounds_the_quarantined_share_of_each_raw_table(settings):
    raw_day(settings, DS)  # 20 impressions, 10 clicks, 1 conversion
    samples_day(settings, DS, [1, 0, 0, 0], list(settings.scenarios))
    quarantine_day(settings, DS, {"impressions": ["null_key"], "clicks": ["orphan_click"] * 2 + ["duplicate_click"]})

    with pytest.raises(DataCheckError) as failure:
        check_samples(settings, DS)

    line = (
        f"raw clicks ds={DS}: 30.0% of 10 rows quarantined (orphan_click 20.0%, duplicate_click 10.0%),"
        " above MSMT_MAX_QUARANTINE_RATE 5%"
    )
    result = stored(settings, "samples", DS)
    assert result["failed"] == [line] and line in str(failure.value)  # impressions: 5%, at the bound, pass
    assert result["quarantine"][0] == {
        "table": "impressions",
        "raw_rows": 20,
        "quarantined": 1,
        "share": 0.05,
        "reasons": {"null_key": 1},
    }
    assert check_samples(settings.with_(max_quarantine_rate=0.3), DS)["success"]


def test_a_missing_partition_fails_naming_it_and_the_result_is_stored(settings):
    raw_day(settings, DS)
    shutil.rmtree(lake.raw(settings, "clicks", DS))

    with pytest.raises(DataCheckError) as failure:
        check_raw(settings, DS)

    line = f"raw clicks ds={DS}: partition {lake.raw(settings, 'clicks', DS)} has not landed"
    assert isinstance(failure.value, StopRun) and line in str(failure.value)  # no retry: it stops the run
    assert stored(settings, "raw", DS)["failed"] == [line]


@pytest.mark.parametrize("damage", ["cut to half its bytes", "garbage bytes"])
def test_a_file_that_is_not_parquet_fails_naming_it(settings, damage):
    raw_day(settings, DS)
    path = Path(lake.raw(settings, "impressions", DS), "part-0.parquet")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "cut to half its bytes" else b"not parquet" * 100)

    with pytest.raises(DataCheckError) as failure:
        check_raw(settings, DS)

    (line,) = stored(settings, "raw", DS)["failed"]
    assert line.startswith(f"raw impressions ds={DS}: file {path} is not readable parquet (ArrowInvalid: ")
    assert line in str(failure.value)


@pytest.mark.parametrize("emptiness", ["no parquet file", "a parquet file of 0 rows"])
def test_an_empty_partition_fails_clearly(settings, emptiness):
    raw_day(settings, DS)
    uri = lake.raw(settings, "conversions", DS)
    path = Path(uri, "part-0.parquet")
    if emptiness == "no parquet file":
        path.unlink()
    else:
        pq.write_table(schemas.CONVERSIONS.empty_table(), path)

    with pytest.raises(DataCheckError) as failure:
        check_raw(settings, DS)

    line = f"raw conversions ds={DS}: partition {uri} has 0 rows"
    assert stored(settings, "raw", DS)["failed"] == [line] and line in str(failure.value)


def test_an_empty_day_of_a_rare_event_is_a_note_an_empty_day_of_a_common_one_fails(settings):
    """Yesterday: 20 impressions, 10 clicks, 1 conversion. Today no conversion is plausible, no click is not."""
    raw_day(settings, lake.shift(DS, -1))
    raw_day(settings, DS)
    pq.write_table(schemas.CONVERSIONS.empty_table(), Path(lake.raw(settings, "conversions", DS), "part-0.parquet"))
    result = check_raw(settings, DS)
    assert result["success"]
    assert f"raw conversions ds={DS}: 0 rows, plausible for a rare event (1.0 expected)" in result["notes"]

    uri = lake.raw(settings, "clicks", DS)
    pq.write_table(schemas.CLICKS.empty_table(), Path(uri, "part-0.parquet"))
    with pytest.raises(DataCheckError) as failure:
        check_raw(settings, DS)
    line = f"raw clicks ds={DS}: partition {uri} has 0 rows (the trailing days' rate per impression predicts 10)"
    assert stored(settings, "raw", DS)["failed"] == [line] and line in str(failure.value)


def test_row_failures_name_the_column_its_share_and_the_bound(settings):
    impressions = raw_day(settings, DS, dict.fromkeys(settings.scenarios, 25))["impressions"]  # 100 rows
    user_id = pa.array([None] * 12 + list(range(88)), pa.int64())
    scenario = pa.array(["tv"] * 8 + impressions["scenario"].to_pylist()[8:], pa.string())
    broken = impressions.set_column(3, "user_id", user_id).set_column(5, "scenario", scenario)
    write(lake.raw(settings, "impressions", DS), broken)

    with pytest.raises(DataCheckError):
        check_raw(settings, DS)

    where = f"raw impressions ds={DS}"
    assert stored(settings, "raw", DS)["failed"] == [
        f"{where}: column user_id has 12.0% nulls (at most 5% allowed)",
        f"{where}: column scenario has 8.0% values not in {list(settings.scenarios)} (at most 5% allowed), e.g. "
        + str(["tv"] * 5),
    ]
