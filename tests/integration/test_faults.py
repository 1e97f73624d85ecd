"""Faults injected into a simulated week, one table: each case stops the run with a message naming what
and where, or quarantines with a reason and goes on; no row is lost either way.

Each case copies a clean base lake (raw logs, the training day already built and checked), breaks the
run's sample day, then runs the DAG's data steps in the DAG's order through the same `pipeline.steps`
functions its tasks call: check_raw_logs → build_samples → check_samples. The e2e tests show the DAG
itself stopping on such a stop (failed task, no retry, champion untouched).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds
import pyarrow.parquet as pq
import pytest

from msmt import lake
from msmt.errors import StopRun
from pipeline import steps
from pipeline.simulate import SimConfig, simulate

pytestmark = pytest.mark.integration

START, RUN_DAY = "2026-03-01", "2026-03-07"  # sample day 2026-03-05, training day 2026-03-04


@dataclass(frozen=True)
class Fault:
    name: str
    inject: Callable  # (settings, sample_ds) -> None, breaks the lake in place
    stops_at: str | None = None  # step that must stop the run, None = the data reaches training
    message: str = ""  # regex the stop's message must match
    reasons: tuple[str, ...] = ()  # quarantine reasons the case must produce (at least one row each)


def _path(settings, table: str, ds: str) -> Path:
    return Path(lake.raw(settings, table, ds), "part-0.parquet")


def _edit(table: str, change: Callable[[pa.Table, np.random.Generator], pa.Table]) -> Callable:
    """A fault that rewrites raw `table` of the sample day with `change(table, rng)`."""

    def inject(settings, ds: str) -> None:
        path = _path(settings, table, ds)
        pq.write_table(change(pq.read_table(path), np.random.default_rng(7)), path)

    return inject


def _set_share(column: str, share: float, value) -> Callable:
    """Set `column` to `value` (None = null) on a random `share` of the rows."""

    def change(table: pa.Table, rng: np.random.Generator) -> pa.Table:
        hit = rng.random(table.num_rows) < share
        kind = table.schema.field(column).type
        replaced = pc.if_else(pa.array(hit), pa.scalar(value, kind), table[column])
        return table.set_column(table.schema.get_field_index(column), column, replaced)

    return change


def _retype(column: str, kind: pa.DataType) -> Callable:
    def change(table: pa.Table, rng) -> pa.Table:
        return table.set_column(table.schema.get_field_index(column), column, table[column].cast(kind))

    return change


def _scale_scenario(scenario: str, factor: float) -> Callable:
    """Keep a `factor` share of one scenario's impressions, or repeat them with new ids (factor > 1)."""

    def change(table: pa.Table, rng) -> pa.Table:
        mine = pc.equal(table["scenario"], scenario)
        others, rows = table.filter(pc.invert(mine)), table.filter(mine)
        if factor < 1:
            return pa.concat_tables([others, rows.slice(0, int(rows.num_rows * factor))])
        copies = [rows] + [
            rows.set_column(0, "impression_id", pc.binary_join_element_wise(rows["impression_id"], f"x{k}", ""))
            for k in range(1, int(factor))
        ]
        return pa.concat_tables([others, *copies])

    return change


def _duplicate(share: float) -> Callable:
    def change(table: pa.Table, rng) -> pa.Table:
        return pa.concat_tables([table, table.filter(pa.array(rng.random(table.num_rows) < share))])

    return change


def _orphan_conversions(share: float) -> Callable:
    return _set_share("click_id", share, "click-that-never-happened")


def _click_before_impression(table: pa.Table, rng) -> pa.Table:
    """Stamp some clicks half an hour earlier: most land before their impression (clock skew between loggers)."""
    hit = pa.array(rng.random(table.num_rows) < 0.01)
    earlier = pc.subtract(table["ts"], pa.scalar(1_800_000_000, pa.duration("us")))
    return table.set_column(table.schema.get_field_index("ts"), "ts", pc.if_else(hit, earlier, table["ts"]))


def _malformed_below_the_bound(settings, ds: str) -> None:
    """0.5% null user ids, 0.5% unknown scenarios, 1% duplicated impressions, 1% of clicks before their
    impression: together a normal day's share of bad rows (the clicks of quarantined impressions become
    orphans, so the clicks' share adds up), each quarantined with its reason, and the run goes on."""
    rng = np.random.default_rng(7)
    path = _path(settings, "impressions", ds)
    impressions = _set_share("user_id", 0.005, None)(pq.read_table(path), rng)
    impressions = _set_share("scenario", 0.005, "tv")(impressions, rng)
    pq.write_table(_duplicate(0.01)(impressions, rng), path)
    _edit("clicks", _click_before_impression)(settings, ds)


def _truncate(settings, ds: str) -> None:
    path = _path(settings, "clicks", ds)
    path.write_bytes(path.read_bytes()[:200])


def _remove_partition(table: str) -> Callable:
    return lambda settings, ds: shutil.rmtree(lake.raw(settings, table, ds))


def _empty(table: str) -> Callable:
    return _edit(table, lambda t, rng: t.slice(0, 0))


CASES = [
    Fault("clean day", lambda settings, ds: None),
    Fault("wrong type", _edit("impressions", _retype("user_id", pa.float64())), "check_raw_logs",
          r"impressions.*ds=2026-03-05.*user_id is double, not int64|ds=2026-03-05.*impressions.*user_id is double"),
    Fault("missing column", _edit("impressions", lambda t, rng: t.drop_columns(["device"])), "check_raw_logs",
          r"impressions.*device"),
    Fault("20% null user ids", _edit("impressions", _set_share("user_id", 0.2, None)), "check_raw_logs",
          r"impressions.*user_id.*null"),
    Fault("30% unknown scenario", _edit("impressions", _set_share("scenario", 0.3, "tv")), "check_raw_logs",
          r"impressions.*scenario"),
    Fault("malformed rows below the bound", _malformed_below_the_bound,
          reasons=("null_key", "unknown_scenario", "duplicate_impression", "click_before_impression",
                   "clicked_before_shown")),
    Fault("45% orphan conversions", _edit("conversions", _orphan_conversions(0.45)), "check_samples",
          r"conversions ds=2026-03-05: .*% of .* rows quarantined .*no_matching_click"),
    Fault("10x homefeed volume", _edit("impressions", _scale_scenario("homefeed", 10)), "check_raw_logs",
          r"volume of homefeed is \d+\.\d+× its trailing mean"),
    Fault("0.1x homefeed volume", _edit("impressions", _scale_scenario("homefeed", 0.1)), "check_raw_logs",
          r"volume of homefeed is 0\.\d+× its trailing mean"),
    Fault("empty partition", _empty("clicks"), "check_raw_logs", r"clicks ds=2026-03-05.*0 rows"),
    Fault("missing partition", _remove_partition("conversions"), "check_raw_logs",
          r"conversions ds=2026-03-05.*not landed"),
    Fault("truncated file", _truncate, "check_raw_logs", r"clicks ds=2026-03-05.*part-0\.parquet"),
]  # fmt: skip


@pytest.fixture(scope="module")
def base(tmp_path_factory, spark):
    """A clean week and its training day built and checked, to be copied by every case."""
    from msmt.settings import Settings

    home = tmp_path_factory.mktemp("faults") / "msmt"
    settings = Settings(home=home, train_days=1, drift_min_rows=500, spark_driver_memory="2g")
    config = SimConfig(n_users=2_000, n_items=500, malformed_rate=0.0)
    simulate(settings, START, 7, 4_000, seed=5, config=config, progress=False)
    train_day = steps.plan_day(settings, RUN_DAY).train_days[0]
    plan = steps.DayPlan(ds=lake.shift(train_day, 2), sample_ds=train_day, train_days=())  # that day alone
    steps.check_raw_logs(settings, plan)
    steps.check_samples(settings, plan, steps.build_samples(settings, plan)["built"])
    return settings


def _run_data_steps(settings) -> tuple[str | None, str]:
    """The DAG's data steps in order; (the step that stopped, its message) or (None, "")."""
    plan = steps.plan_day(settings, RUN_DAY)
    step = "check_raw_logs"
    try:
        steps.check_raw_logs(settings, plan)
        step = "build_samples"
        built = steps.build_samples(settings, plan)["built"]
        step = "check_samples"
        steps.check_samples(settings, plan, built)
    except StopRun as stopped:
        return step, str(stopped)
    return None, ""


def _rows(uri: str) -> pa.Table:
    return pds.dataset(uri, partitioning="hive").to_table() if Path(uri).exists() else pa.table({})


@pytest.mark.parametrize("fault", CASES, ids=[case.name for case in CASES])
def test_fault(fault: Fault, base, tmp_path):
    settings = base.with_(home=tmp_path / "msmt")
    shutil.copytree(base.home, settings.home)
    sample_ds = steps.plan_day(settings, RUN_DAY).sample_ds
    fault.inject(settings, sample_ds)

    stopped_at, message = _run_data_steps(settings)

    assert stopped_at == fault.stops_at, message
    if fault.stops_at:
        assert re.search(fault.message, message, re.DOTALL), message
        suite = "raw" if fault.stops_at == "check_raw_logs" else "samples"
        failed = lake.check_result(settings, suite, sample_ds)
        assert Path(failed).exists()  # the check's result is stored, failures and all
        assert not steps.samples_checked(settings, sample_ds)  # nothing downstream may take the day as built
        return
    assert steps.samples_checked(settings, sample_ds)
    raw = pq.read_table(lake.raw(settings, "impressions", sample_ds))
    samples = _rows(lake.samples(settings, sample_ds))
    quarantine = _rows(lake.quarantine(settings, sample_ds))
    from_impressions = quarantine.filter(pc.equal(quarantine["source"], "impressions")) if quarantine else quarantine
    assert samples.num_rows + from_impressions.num_rows == raw.num_rows  # every raw impression accounted for
    if fault.reasons:
        assert set(fault.reasons) <= set(quarantine["reason"].to_pylist())
    else:
        assert from_impressions.num_rows == 0  # a clean day keeps every impression
