"""Great Expectations checks of one day of raw logs (`check_raw`) and of samples (`check_samples`).

A day is small, so each check reads it with pyarrow into pandas and validates
it with GX suites built in code on an ephemeral context. Four kinds of
expectation: schema (column set and types, so a broken file fails here with a
readable message instead of deep inside a Spark job), nulls on keys (raw logs
may hold up to `max_quarantine_rate` malformed rows, samples none), value
ranges, and per-scenario volume and CTR against the trailing days that exist.

The result (success, every expectation's outcome, statistics) is stored at
lake.check_result(settings, suite, ds) before a failure raises DataCheckError.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections.abc import Sequence

import pandas as pd
import pyarrow as pa

from msmt import lake, schemas, storage
from msmt.settings import Settings

log = logging.getLogger("msmt.checks")

TRAILING_DAYS = 7  # drift is measured against the mean of up to this many earlier days
VOLUME_RATIO = (0.5, 2.0)  # today's rows / trailing mean, per scenario
CTR_RATIO = (0.33, 3.0)  # today's CTR / trailing mean CTR, per scenario
RAW_KEYS = {
    "impressions": ("impression_id", "request_id", "ts", "user_id", "item_id", "scenario"),
    "clicks": ("click_id", "impression_id", "ts"),
    "conversions": ("conversion_id", "click_id", "ts"),
}
SAMPLE_KEYS = ("impression_id", "request_id", "event_timestamp", "user_id", "item_id", "scenario_id", "position")
SAMPLES_WITH_PARTITION = schemas.SAMPLES.append(pa.field("scenario", pa.string()))


class DataCheckError(RuntimeError):
    """A data check failed; the message lists the failed expectations, the stored result has the details."""


# --- reading ---------------------------------------------------------------------------------------


def _type_name(kind: pa.DataType) -> str:
    """Type spelled without list field names (Spark writes `element`, pyarrow `item`)."""
    return f"list<{_type_name(kind.value_type)}>" if pa.types.is_list(kind) else str(kind)


def read_day(
    settings: Settings, uri: str, columns: Sequence[str] | None = None
) -> tuple[pa.Table, dict[str, str]] | None:
    """All parquet files under `uri` (hive `k=v` directories become string columns), or None if absent.

    Returns the table and the observed type of each column. A column whose type
    differs between files is left out of the table and reported as `a | b`, so a
    schema-broken file fails the schema expectation instead of crashing the read.
    """
    root = uri.rstrip("/")
    if not storage.exists(settings, root):
        return None
    files = [
        key
        for key in storage.list_keys(settings, root)
        if key.endswith(".parquet") and not any(part.startswith(("_", ".")) for part in key[len(root) :].split("/"))
    ]
    tables = []
    for path in files:
        table = storage.read_parquet(settings, path)
        if columns is not None:
            table = table.select([c for c in columns if c in table.column_names])
        for part in path[len(root) :].strip("/").split("/")[:-1]:
            key, _, value = part.partition("=")
            table = table.append_column(key, pa.array([value] * table.num_rows, pa.string()))
        tables.append(table)
    observed: dict[str, set[str]] = {}
    for table in tables:
        for field in table.schema:
            observed.setdefault(field.name, set()).add(_type_name(field.type))
    conflicting = [name for name, kinds in observed.items() if len(kinds) > 1]
    tables = [t.drop_columns([c for c in conflicting if c in t.column_names]) for t in tables]
    table = pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({})
    return table, {name: " | ".join(sorted(kinds)) for name, kinds in observed.items()}


# --- validation ------------------------------------------------------------------------------------


class _Run:
    """One GX ephemeral context collecting the outcomes of every batch validated for one check."""

    def __init__(self, suite: str, ds: str) -> None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
        logging.getLogger("great_expectations").setLevel(logging.ERROR)
        self.gx = gx
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        self.source = self.context.data_sources.add_pandas("msmt")
        self.suite, self.ds = suite, ds
        self.outcomes: list[dict] = []
        self.notes: list[str] = []

    def validate(self, batch: str, frame: pd.DataFrame, expectations: list) -> None:
        """Validate `frame` against `expectations` and record each outcome under the batch name."""
        name = f"{self.suite}_{batch}"
        batch_definition = self.source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
        suite = self.context.suites.add(self.gx.ExpectationSuite(name=name, expectations=expectations))
        definition = self.context.validation_definitions.add(
            self.gx.ValidationDefinition(name=name, data=batch_definition, suite=suite)
        )
        result = definition.run(batch_parameters={"dataframe": frame}, result_format="SUMMARY")
        for outcome in result.results:
            described = outcome.to_json_dict()
            self.outcomes.append(
                {
                    "batch": batch,
                    "expectation": described["expectation_config"]["type"],
                    "kwargs": {k: v for k, v in described["expectation_config"]["kwargs"].items() if k != "batch_id"},
                    "success": bool(described["success"]),
                    "result": described.get("result") or {},
                    "exception": (described.get("exception_info") or {}).get("exception_message"),
                }
            )

    def fail(self, batch: str, expectation: str, observed: str) -> None:
        """Record a failure found before GX could run (a partition that has not landed)."""
        self.outcomes.append(
            {
                "batch": batch,
                "expectation": expectation,
                "kwargs": {},
                "success": False,
                "result": {"observed_value": observed},
            }
        )

    def finish(self, settings: Settings, summary: pd.DataFrame | None) -> dict:
        """Store the result JSON; raise DataCheckError listing the failures after storing it."""
        failed = [_describe(o) for o in self.outcomes if not o["success"]]
        result = {
            "suite": self.suite,
            "ds": self.ds,
            "success": not failed,
            "failed": failed,
            "notes": self.notes,
            "statistics": {
                "evaluated_expectations": len(self.outcomes),
                "successful_expectations": len(self.outcomes) - len(failed),
                "unsuccessful_expectations": len(failed),
            },
            "summary": [] if summary is None else json.loads(summary.to_json(orient="records")),
            "expectations": self.outcomes,
        }
        uri = lake.check_result(settings, self.suite, self.ds)
        storage.write_json(settings, uri, result)
        log.info(
            "check %s ds=%s: %s (%d expectations) -> %s",
            self.suite,
            self.ds,
            result["success"],
            len(self.outcomes),
            uri,
        )
        if failed:
            notes = "".join(f"\n  note: {note}" for note in self.notes)
            raise DataCheckError(f"check_{self.suite} ds={self.ds} failed:\n  " + "\n  ".join(failed) + notes)
        return result


def _describe(outcome: dict) -> str:
    """One readable line per failed expectation: what was expected of which column, and what was seen."""
    kwargs = outcome["kwargs"]
    target = kwargs.get("column") or ",".join(filter(None, (kwargs.get("column_A"), kwargs.get("column_B"))))
    result = outcome["result"]
    seen = outcome["exception"] or result.get("details", {}).get("mismatched") or result.get("observed_value")
    if seen is None and "unexpected_percent" in result:
        seen = f"{result['unexpected_percent']:.2f}% unexpected, e.g. {result.get('partial_unexpected_list', [])[:5]}"
    return f"{outcome['batch']}: {outcome['expectation']}({target}) -> {seen}"


TYPE_HINT = (
    " (the contract is msmt/schemas.py; pandas writes ns timestamps and int64 / float64 numbers:"
    " pyarrow's `table.cast(contract)` before writing converts what converts losslessly)"
)


def _schema_expectations(gxe, expected: pa.Schema) -> tuple[list, list]:
    """Column set on the data; `name: type` of every column against the contract on a schema frame."""
    on_data = [gxe.ExpectTableColumnsToMatchSet(column_set=list(expected.names), exact_match=True)]
    on_schema = [
        gxe.ExpectColumnValuesToBeInSet(
            column="column_type", value_set=[f"{f.name}: {_type_name(f.type)}" for f in expected]
        )
    ]
    return on_data, on_schema


def _intact(observed: dict[str, str], expected: pa.Schema) -> set[str]:
    """Columns present with their contract type: only those get value expectations."""
    return {f.name for f in expected if observed.get(f.name) == _type_name(f.type)}


def _validate_table(
    run: _Run, name: str, loaded: tuple[pa.Table, dict[str, str]], expected: pa.Schema, value_expectations
) -> pd.DataFrame:
    """Schema expectations, then `value_expectations(intact columns)` on the columns that passed them."""
    gxe = run.gx.expectations
    table, observed = loaded
    differs = [f"{f.name} is {observed[f.name]}, not {_type_name(f.type)}" for f in expected
               if f.name in observed and observed[f.name] != _type_name(f.type)]  # fmt: skip
    if differs:
        run.notes.append(f"{name}: " + "; ".join(differs) + TYPE_HINT)
    on_data, on_schema = _schema_expectations(gxe, expected)
    frame = table.to_pandas()
    run.validate(f"{name}_schema", pd.DataFrame({"column_type": [f"{c}: {t}" for c, t in observed.items()]}), on_schema)
    run.validate(name, frame, on_data + value_expectations(gxe, _intact(observed, expected)))
    return frame


def _day_bounds(ds: str) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime.combine(lake.day(ds), dt.time(), tzinfo=dt.UTC)
    return start, start + dt.timedelta(days=1)


def _drift(run: _Run, summary: pd.DataFrame, trailing: list[str], with_ctr: bool, min_rows: int) -> None:
    """Per-scenario ratios to the trailing mean; skipped (and said so) when no trailing day exists.

    Scenarios averaging fewer than `min_rows` rows a day are reported but not
    bounded: a ratio of a few hundred rows swings by chance alone.
    """
    if not trailing:
        run.notes.append("no trailing day found: volume and rate drift expectations skipped")
        return
    small = summary["trailing_rows"] < min_rows
    if small.any():
        names = ", ".join(summary.loc[small, "scenario"])
        run.notes.append(f"drift not bounded for {names}: fewer than {min_rows} rows a day on the trailing days")
        summary = summary[~small]
    gxe = run.gx.expectations
    expectations = [
        gxe.ExpectColumnValuesToBeBetween(column="volume_ratio", min_value=VOLUME_RATIO[0], max_value=VOLUME_RATIO[1])
    ]
    if with_ctr:
        expectations.append(
            gxe.ExpectColumnValuesToBeBetween(column="ctr_ratio", min_value=CTR_RATIO[0], max_value=CTR_RATIO[1])
        )
    run.validate("per_scenario", summary, expectations)


def _trailing(settings: Settings, table: str, ds: str, columns: Sequence[str]) -> dict[str, pd.DataFrame]:
    """The earlier days of `table` that exist (up to TRAILING_DAYS), only `columns`."""
    days = lake.days_between(lake.shift(ds, -TRAILING_DAYS), TRAILING_DAYS)
    found = {}
    for day in days:
        uri = lake.samples(settings, day) if table == "samples" else lake.raw(settings, table, day)
        loaded = read_day(settings, uri, columns)
        if loaded is not None and set(columns) <= set(loaded[0].column_names):
            found[day] = loaded[0].to_pandas()
    return found


def _summary(
    today: pd.DataFrame, trailing: dict[str, pd.DataFrame], scenarios: Sequence[str], label: str | None
) -> pd.DataFrame:
    """Rows (and CTR) per configured scenario today and as a trailing mean, with their ratios."""

    def per_day(frame: pd.DataFrame) -> pd.DataFrame:
        grouped = frame.groupby("scenario")
        out = pd.DataFrame({"rows": grouped.size()}).reindex(list(scenarios), fill_value=0)
        if label:
            out["ctr"] = grouped[label].mean().reindex(list(scenarios))
        return out

    now = per_day(today)
    summary = pd.DataFrame({"scenario": list(scenarios), "rows": now["rows"].to_numpy()})
    if trailing:
        history = pd.concat([per_day(frame) for frame in trailing.values()])
        mean = history.groupby(level=0).mean().reindex(list(scenarios))
        summary["trailing_rows"] = mean["rows"].to_numpy()
        summary["volume_ratio"] = (
            summary["rows"] / summary["trailing_rows"].where(summary["trailing_rows"] > 0)
        ).to_numpy()
        if label:
            summary["ctr"] = now["ctr"].to_numpy()
            summary["trailing_ctr"] = mean["ctr"].to_numpy()
            summary["ctr_ratio"] = summary["ctr"] / summary["trailing_ctr"].where(summary["trailing_ctr"] > 0)
    return summary


# --- the two checks --------------------------------------------------------------------------------


def check_raw(settings: Settings, ds: str) -> dict:
    """Validate raw impressions, clicks and conversions of day `ds`; returns the stored result dict.

    Raises DataCheckError (after storing the result) when a partition is missing
    or an expectation fails.
    """
    run = _Run("raw", ds)
    start, end = _day_bounds(ds)
    mostly = 1 - settings.max_quarantine_rate
    impressions = None
    for name in lake.RAW_TABLES:
        loaded = read_day(settings, lake.raw(settings, name, ds))
        if loaded is None:
            run.fail(name, "partition_exists", f"missing: {lake.raw(settings, name, ds)}")
            continue

        def values(gxe, intact: set[str], name: str = name) -> list:
            checks = [gxe.ExpectColumnValuesToNotBeNull(column=c, mostly=mostly) for c in RAW_KEYS[name] if c in intact]
            if "ts" in intact:
                checks.append(
                    gxe.ExpectColumnValuesToBeBetween(
                        column="ts", min_value=start, max_value=end, strict_max=True, mostly=mostly
                    )
                )
            if name == "impressions" and "position" in intact:
                checks.append(gxe.ExpectColumnValuesToBeBetween(column="position", min_value=0, mostly=mostly))
            if name == "impressions" and "scenario" in intact:
                checks.append(
                    gxe.ExpectColumnValuesToBeInSet(
                        column="scenario", value_set=list(settings.scenarios), mostly=mostly
                    )
                )
            if name == "conversions" and "value" in intact:
                checks.append(gxe.ExpectColumnValuesToBeBetween(column="value", min_value=0, mostly=mostly))
            return checks

        frame = _validate_table(run, name, loaded, schemas.RAW[name], values)
        if name == "impressions" and "scenario" in frame:
            impressions = frame
    summary = None
    if impressions is not None:
        trailing = _trailing(settings, "impressions", ds, ["scenario"])
        summary = _summary(impressions, trailing, settings.scenarios, label=None)
        _drift(run, summary, sorted(trailing), with_ctr=False, min_rows=settings.drift_min_rows)
    return run.finish(settings, summary)


def check_samples(settings: Settings, sample_ds: str) -> dict:
    """Validate samples of `sample_ds`: schema, keys, labels, every scenario present, drift vs trailing days.

    Returns the stored result dict; raises DataCheckError (after storing it) on failure.
    """
    run = _Run("samples", sample_ds)
    start, end = _day_bounds(sample_ds)
    loaded = read_day(settings, lake.samples(settings, sample_ds))
    if loaded is None:
        run.fail("samples", "partition_exists", f"missing: {lake.samples(settings, sample_ds)}")
        return run.finish(settings, None)
    ids = list(settings.scenario_ids.values())

    def values(gxe, intact: set[str]) -> list:
        checks = [gxe.ExpectColumnValuesToNotBeNull(column=c) for c in SAMPLE_KEYS if c in intact]
        ranges = {
            "click": gxe.ExpectColumnValuesToBeInSet(column="click", value_set=[0, 1]),
            "conversion": gxe.ExpectColumnValuesToBeInSet(column="conversion", value_set=[0, 1]),
            "position": gxe.ExpectColumnValuesToBeBetween(column="position", min_value=0),
            "hour": gxe.ExpectColumnValuesToBeBetween(column="hour", min_value=0, max_value=23),
            "scenario_id": gxe.ExpectColumnValuesToBeInSet(column="scenario_id", value_set=ids),
            "impression_id": gxe.ExpectColumnValuesToBeUnique(column="impression_id"),
            "event_timestamp": gxe.ExpectColumnValuesToBeBetween(
                column="event_timestamp", min_value=start, max_value=end, strict_max=True
            ),
            "scenario": gxe.ExpectColumnDistinctValuesToContainSet(
                column="scenario", value_set=list(settings.scenarios)
            ),
        }
        checks += [check for column, check in ranges.items() if column in intact]
        if {"click", "conversion"} <= intact:
            checks.append(
                gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="click", column_B="conversion", or_equal=True)
            )
        return checks

    frame = _validate_table(run, "samples", loaded, SAMPLES_WITH_PARTITION, values)
    summary = None
    if {"scenario", "click"} <= set(frame.columns):
        trailing = _trailing(settings, "samples", sample_ds, ["scenario", "click"])
        summary = _summary(frame, trailing, settings.scenarios, label="click")
        _drift(run, summary, sorted(trailing), with_ctr=True, min_rows=settings.drift_min_rows)
    return run.finish(settings, summary)
