"""A team's own logs: a contract with its own key names, task names and input columns drives the raw
check, the samples job, the samples check and the model's inputs, with no code changed."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_checks.suites import check_raw, check_samples
from feature_repo.publish import read_samples
from msmt import contract, lake
from spark_jobs import build_samples
from training.experiment import train_and_score

pytestmark = pytest.mark.integration

DAYS = ("2026-03-02", "2026-03-03")
SCENARIOS = ("app", "web")

# The simulator's contract, edited the way a team would: its own names for the request and the event
# time, its own task names, a shop id sized from the data and a basket value; no history, no proxies.
EDITS = {
    "request_id = {": "search_id = {",
    'ts = { type = "timestamp", role = "event_time" }\nuser_id': (
        'logged_at = { type = "timestamp", role = "event_time" }\nuser_id'
    ),
    "[labels.click]": "[labels.tap]",
    "[labels.conversion]": "[labels.purchase]",
}
DROPPED = ("user_segment", "item_category", "item_price_bucket", "hist_item_ids")
ADDED = (
    'shop_id = { type = "int64", role = "sparse", vocab = "data" }\n'
    'basket_value = { type = "float64", role = "dense", min = 0 }\n'
)


@pytest.fixture
def team(tmp_path, settings):
    text = contract.DEFAULT.read_text()
    for old, new in EDITS.items():
        assert old in text
        text = text.replace(old, new, 1)
    lines = [line for line in text.splitlines(keepends=True) if not line.startswith(DROPPED)]
    text = "".join(lines).replace("\n[tables.clicks]", f"{ADDED}\n[tables.clicks]", 1)
    path = tmp_path / "team.toml"
    path.write_text(text)
    return settings.with_(contract=str(path), scenarios=SCENARIOS, drift_min_rows=10**6)


def _write(settings, table: str, ds: str, rows: list[dict]) -> None:
    path = Path(lake.raw(settings, table, ds))
    path.mkdir(parents=True, exist_ok=True)
    schema = settings.data_contract.raw_schema(table)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path / "part-0.parquet")


def _day(settings, ds: str, n: int = 60) -> None:
    """n impressions: every third tapped, every ninth bought; shop 1..5, basket value grows with the shop."""
    start = dt.datetime.fromisoformat(ds).replace(hour=8, tzinfo=dt.UTC)
    impressions, taps, purchases = [], [], []
    for i in range(n):
        ts = start + dt.timedelta(minutes=i)
        shop = 1 + i % 5
        impressions.append({
            "impression_id": f"{ds}-i{i}", "search_id": f"{ds}-s{i // 6}", "logged_at": ts, "user_id": i % 7,
            "item_id": 100 + i % 11, "scenario": SCENARIOS[i % 2], "position": i % 6, "device": "ios",
            "shop_id": shop, "basket_value": 10.0 * shop,
        })  # fmt: skip
        if i % 3 == 0:
            taps.append({"click_id": f"{ds}-c{i}", "impression_id": f"{ds}-i{i}", "ts": ts + dt.timedelta(seconds=30)})
        if i % 9 == 0:
            purchases.append({"conversion_id": f"{ds}-v{i}", "click_id": f"{ds}-c{i}",
                              "ts": ts + dt.timedelta(minutes=5), "value": 1.0})  # fmt: skip
    bad = dict(impressions[1], impression_id=f"{ds}-bad", basket_value=-1.0)  # outside the declared range
    _write(settings, "impressions", ds, [*impressions, bad])
    _write(settings, "clicks", ds, taps)
    _write(settings, "conversions", ds, purchases)


def test_a_teams_contract_reaches_samples_checks_and_the_model(spark, team):
    for ds in DAYS:
        _day(team, ds)
    for ds in DAYS:
        assert check_raw(team, ds)["success"]
        stats = build_samples.run(spark, team, ds)
        assert stats["samples"] == 60 and stats["quarantine"]["impressions"] == {"bad_basket_value": 1}
        assert stats["scenarios"]["app"]["clicks"] == 10  # i = 0, 6, 12 … tapped: the contract's first task
        assert check_samples(team, ds)["success"]

    samples = read_samples(team, list(DAYS))
    assert samples.schema.names == [*team.data_contract.samples_schema.names, "ds"]
    assert {"search_id", "logged_at", "user_segment", "click"}.isdisjoint(samples.schema.names)
    assert {"shop_id", "basket_value", "tap", "purchase"} <= set(samples.schema.names)
    assert samples.column("request_id").to_pylist()[0].startswith(DAYS[0])  # search_id, read by its role
    assert sum(samples.column("purchase").to_pylist()) == 2 * 7  # i = 0, 9, … 54 bought, on each day

    quarantined = pq.read_table(lake.quarantine(team, DAYS[0])).to_pylist()
    assert [row["reason"] for row in quarantined] == ["bad_basket_value"]
    assert {"search_id", "logged_at"} <= set(json.loads(quarantined[0]["payload"]))  # the team's own names

    scored = train_and_score(samples, "mmoe", DAYS[1], settings=team, overrides={"epochs": 1, "batch_size": 32})
    spec = scored.spec
    assert spec.tasks == ("tap", "purchase") and spec.seq_field is None
    assert spec.vocab("shop_id") == 5 + 2  # ids 1..5 seen in training, plus row 0
    assert "basket_value" in spec.dense_fields and "position" in spec.sparse_fields
    assert {c["task"] for c in scored.cells} == {"tap", "purchase"}
    assert len(scored.cells) == len(SCENARIOS) * 2
