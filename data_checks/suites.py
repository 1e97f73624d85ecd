"""Great Expectations checks of one day of raw logs (`check_raw`) and of samples (`check_samples`).

A day is small, so each check reads it with pyarrow into pandas and validates
it with GX suites built in code on an ephemeral context. Five kinds of
expectation: schema (column set and types, so a broken file fails here with a
readable message instead of deep inside a Spark job), nulls on keys (raw logs
may hold up to `max_quarantine_rate` malformed rows, samples none), value
ranges, per-scenario volume and CTR against the trailing days that exist, and
(samples) the share of each raw table that build_samples had to quarantine.

A partition that has not landed, holds no row or has a file that is not
parquet fails its check without GX, named. Every failure becomes one readable
line naming the table, day, column or scenario and what was seen; the result
(success, those lines, every expectation's outcome, statistics) is stored at
lake.check_result(settings, suite, ds) before a failure raises DataCheckError.
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from msmt import contract, lake, storage
from msmt.errors import StopRun
from msmt.settings import Settings

log = logging.getLogger("msmt.checks")

TRAILING_DAYS = 7  # drift is measured against the mean of up to this many earlier days
VOLUME_RATIO = (0.5, 2.0)  # today's rows / trailing mean, per scenario
CTR_RATIO = (0.33, 3.0)  # today's CTR / trailing mean CTR, per scenario
# Quarantined for arriving after the attribution window: the window is a choice, late conversions
# are normal (the simulator's are ~7% of a day's), so they are counted in the result, not bounded.
UNBOUNDED_REASONS = frozenset({"after_attribution_window"})
MIN_EXPECTED_ROWS = 10  # an empty clicks / conversions day fails when at least this many rows were expected
TOP_REASONS = 3  # reasons named in a failed quarantine bound
CONTRACT_GAPS = (("missing", "missing"), ("unexpected", "not in the contract"))  # GX's mismatch keys, in words


class DataCheckError(StopRun):
    """A data check failed; the message has one line per failure, the stored result has the details."""


class UnreadableParquetError(ValueError):
    """A file of a partition is not readable parquet (truncated, foreign bytes); names the file."""

    def __init__(self, path: str, error: Exception) -> None:
        self.path, self.reason = path, f"{type(error).__name__}: {error}"
        super().__init__(f"{path}: {self.reason}")

    def line(self, where: str) -> str:
        """The failure as a check reports it, `where` being the table and day."""
        return f"{where}: file {self.path} is not readable parquet ({self.reason})"


# --- reading ---------------------------------------------------------------------------------------


def _type_name(kind: pa.DataType) -> str:
    """Type spelled without list field names (Spark writes `element`, pyarrow `item`)."""
    return f"list<{_type_name(kind.value_type)}>" if pa.types.is_list(kind) else str(kind)


def _parquet_files(settings: Settings, root: str) -> list[str]:
    """The data files under `root`: `*.parquet`, skipping `_`/`.` entries (Spark's markers, temp dirs)."""
    return [
        key
        for key in storage.list_keys(settings, root)
        if key.endswith(".parquet") and not any(part.startswith(("_", ".")) for part in key[len(root) :].split("/"))
    ]


def _parse(settings: Settings, path: str, read: Callable = pq.read_table):
    """`read` (a table, or just the metadata) of one lake file; a file that is not parquet raises naming it."""
    try:
        return read(io.BytesIO(storage.read_bytes(settings, path)))
    except (pa.ArrowException, OSError) as error:  # ArrowInvalid: no footer; OSError: corrupt pages
        raise UnreadableParquetError(path, error) from error


def _row_count(settings: Settings, uri: str) -> int:
    """Rows of a partition from the parquet footers alone (0 when it is absent)."""
    root = uri.rstrip("/")
    return sum(_parse(settings, path, pq.read_metadata).num_rows for path in _parquet_files(settings, root))


def read_day(
    settings: Settings, uri: str, columns: Sequence[str] | None = None
) -> tuple[pa.Table, dict[str, str]] | None:
    """All parquet files under `uri` (hive `k=v` directories become string columns), or None if absent.

    Returns the table and the observed type of each column. A column whose type
    differs between files is left out of the table and reported as `a | b`, so a
    schema-broken file fails the schema expectation instead of crashing the read.
    A file that is not parquet raises UnreadableParquetError naming it.
    """
    root = uri.rstrip("/")
    if not storage.exists(settings, root):
        return None
    tables = []
    for path in _parquet_files(settings, root):
        table = _parse(settings, path)
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

Explain = Callable[[dict], list[str]]  # a failed outcome -> its readable lines


class _Run:
    """One GX ephemeral context collecting the outcomes of every batch validated for one check."""

    def __init__(self, suite: str, ds: str, contract_source: str) -> None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
        logging.getLogger("great_expectations").setLevel(logging.ERROR)
        self.gx = gx
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        self.source = self.context.data_sources.add_pandas("msmt")
        self.suite, self.ds = suite, ds
        self.contract_source = contract_source  # named when a column's type differs from it
        self.outcomes: list[dict] = []
        self.notes: list[str] = []
        self.sections: dict[str, object] = {}  # extra result keys (the quarantine shares)

    def validate(self, batch: str, frame: pd.DataFrame, expectations: list, explain: Explain) -> None:
        """Validate `frame` against `expectations`; record each outcome, with `explain`'s lines if it failed."""
        name = f"{self.suite}_{batch}"
        batch_definition = self.source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
        suite = self.context.suites.add(self.gx.ExpectationSuite(name=name, expectations=expectations))
        definition = self.context.validation_definitions.add(
            self.gx.ValidationDefinition(name=name, data=batch_definition, suite=suite)
        )
        result = definition.run(batch_parameters={"dataframe": frame}, result_format="SUMMARY")
        for outcome in result.results:
            described = outcome.to_json_dict()
            record = {
                "batch": batch,
                "expectation": described["expectation_config"]["type"],
                "kwargs": {k: v for k, v in described["expectation_config"]["kwargs"].items() if k != "batch_id"},
                "success": bool(described["success"]),
                "result": described.get("result") or {},
                "exception": (described.get("exception_info") or {}).get("exception_message"),
            }
            record["failures"] = [] if record["success"] else explain(record) or [_describe(record)]
            self.outcomes.append(record)

    def fail(self, batch: str, expectation: str, failure: str) -> None:
        """Record a failure found before GX could run (a partition missing, empty or unreadable)."""
        self.outcomes.append(
            {
                "batch": batch,
                "expectation": expectation,
                "kwargs": {},
                "success": False,
                "result": {"observed_value": failure},
                "exception": None,
                "failures": [failure],
            }
        )

    def finish(self, settings: Settings, summary: pd.DataFrame | None) -> dict:
        """Store the result JSON; raise DataCheckError with one line per failure after storing it."""
        unsuccessful = [o for o in self.outcomes if not o["success"]]
        failed = [line for outcome in unsuccessful for line in outcome["failures"]]
        result = {
            "suite": self.suite,
            "ds": self.ds,
            "success": not unsuccessful,
            "failed": failed,
            "notes": self.notes,
            "statistics": {
                "evaluated_expectations": len(self.outcomes),
                "successful_expectations": len(self.outcomes) - len(unsuccessful),
                "unsuccessful_expectations": len(unsuccessful),
            },
            "summary": [] if summary is None else json.loads(summary.to_json(orient="records")),
            **self.sections,
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
        if unsuccessful:
            notes = "".join(f"\n  note: {note}" for note in self.notes)
            raise DataCheckError(f"check_{self.suite} ds={self.ds} failed:\n  " + "\n  ".join(failed) + notes)
        return result


def _describe(outcome: dict) -> str:
    """The fallback line: expectation, column and what was seen (or why GX could not evaluate it)."""
    kwargs = outcome["kwargs"]
    target = kwargs.get("column") or ",".join(filter(None, (kwargs.get("column_A"), kwargs.get("column_B"))))
    result = outcome["result"]
    seen = outcome["exception"] or result.get("details", {}).get("mismatched") or result.get("observed_value")
    if seen is None and "unexpected_percent" in result:
        seen = f"{result['unexpected_percent']:.2f}% unexpected, e.g. {result.get('partial_unexpected_list', [])[:5]}"
    return f"{outcome['batch']}: {outcome['expectation']}({target}) -> {seen}"


def _percent(share: float) -> str:
    """0.05 -> '5%', 0.025 -> '2.5%' (a setting spelled as it was set)."""
    return f"{100 * share:g}%"


def _times(ratio: float) -> str:
    """A ratio to a trailing mean, two decimals at most: 9.9×, 0.21×, 2×, 0×."""
    return f"{round(ratio, 2):g}×"


def _bounds(kwargs: dict) -> str:
    """Where the values that broke a between-expectation lie, in words."""
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    if low is not None and high is not None:
        return f"outside [{low}, {high}{')' if kwargs.get('strict_max') else ']'}"
    return f"below {low}" if high is None else f"above {high}"


def _column_failures(where: str) -> Explain:
    """Lines for the row expectations of one table: which column broke which rule, how often, examples."""

    def explain(outcome: dict) -> list[str]:
        kind, kwargs, result = outcome["expectation"], outcome["kwargs"], outcome["result"]
        if outcome["exception"]:
            return [f"{where}: {_describe(outcome)}"]
        column, share = kwargs.get("column"), f"{result.get('unexpected_percent', 0.0):.1f}%"
        allowed = f"at most {_percent(1 - kwargs['mostly'])} allowed" if kwargs.get("mostly") else "none allowed"
        examples = f", e.g. {result.get('partial_unexpected_list', [])[:5]}"
        if kind == "expect_column_values_to_not_be_null":
            return [f"{where}: column {column} has {share} nulls ({allowed})"]
        if kind == "expect_column_values_to_be_between":
            return [f"{where}: column {column} has {share} values {_bounds(kwargs)} ({allowed}){examples}"]
        if kind == "expect_column_values_to_be_in_set":
            return [f"{where}: column {column} has {share} values not in {kwargs['value_set']} ({allowed}){examples}"]
        if kind == "expect_column_values_to_be_unique":
            return [f"{where}: column {column} has {result['unexpected_count']} rows with a repeated value{examples}"]
        if kind == "expect_column_distinct_values_to_contain_set":
            return [f"{where}: {column} {value} has 0 rows" for value in sorted(result.get("partial_missing_list", []))]
        if kind == "expect_column_pair_values_a_to_be_greater_than_b":
            column_a, column_b = kwargs["column_A"], kwargs["column_B"]
            return [f"{where}: {result['unexpected_count']} rows have {column_a} below {column_b}{examples}"]
        if kind == "expect_table_columns_to_match_set":
            mismatched = result.get("details", {}).get("mismatched", {})
            parts = [f"{label} {', '.join(mismatched[key])}" for key, label in CONTRACT_GAPS if mismatched.get(key)]
            return [f"{where}: columns differ from the contract: " + "; ".join(parts)]
        return []

    return explain


TYPE_HINT = (
    "pandas writes ns timestamps and int64 / float64 numbers: pyarrow's "
    "`table.cast(settings.data_contract.raw_schema(table))` before writing converts what converts losslessly"
)


def _schema_expectations(gxe, expected: pa.Schema) -> tuple[list, list]:
    """Column set on the data; `name: type` of every contract column against the contract on a schema frame."""
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
    run: _Run,
    name: str,
    where: str,
    loaded: tuple[pa.Table, dict[str, str]],
    expected: pa.Schema,
    value_expectations,
) -> pd.DataFrame:
    """Schema expectations, then `value_expectations(intact columns)` on the columns that passed them.

    Types are checked for the contract's columns only: a column outside the
    contract is the column-set expectation's failure, said once.
    """
    gxe = run.gx.expectations
    table, observed = loaded
    typed = {column: kind for column, kind in observed.items() if column in expected.names}
    differs = [f"{where}: column {c} is {kind}, not {_type_name(expected.field(c).type)}"
               for c, kind in typed.items() if kind != _type_name(expected.field(c).type)]  # fmt: skip
    if differs:
        run.notes.append(f"{where}: the contract is {run.contract_source}; {TYPE_HINT}")
    on_data, on_schema = _schema_expectations(gxe, expected)
    frame = table.to_pandas()
    schema_frame = pd.DataFrame({"column_type": [f"{c}: {t}" for c, t in typed.items()]})
    run.validate(f"{name}_schema", schema_frame, on_schema, lambda _: differs)
    run.validate(name, frame, on_data + value_expectations(gxe, _intact(observed, expected)), _column_failures(where))
    return frame


def _load(
    settings: Settings, run: _Run, batch: str, where: str, uri: str, expected_rows: Callable[[], float] | None = None
) -> tuple[pa.Table, dict[str, str]] | None:
    """read_day, or None after recording why there is nothing to validate: not landed, not parquet, no row.

    `expected_rows`: how many rows the day should hold; an empty partition where fewer than
    MIN_EXPECTED_ROWS were expected (a quiet day of a rare event) is a note, not a failure.
    """
    try:
        loaded = read_day(settings, uri)
    except UnreadableParquetError as bad:
        run.fail(batch, "files_are_parquet", bad.line(where))
        return None
    if loaded is None:
        run.fail(batch, "partition_exists", f"{where}: partition {uri} has not landed")
        return None
    if loaded[0].num_rows == 0:
        expected = expected_rows() if expected_rows else math.inf
        if expected < MIN_EXPECTED_ROWS:
            run.notes.append(f"{where}: 0 rows, plausible for a rare event ({expected:.1f} expected)")
        else:
            run.fail(batch, "partition_has_rows", f"{where}: partition {uri} has 0 rows" + _expected(expected))
        return None
    run.sections.setdefault("digests", {})[uri] = storage.partition_digest(settings, uri)  # lineage: what was read
    return loaded


def _expected(rows: float) -> str:
    return "" if math.isinf(rows) else f" (the trailing days' rate per impression predicts {rows:,.0f})"


def _expected_rows(settings: Settings, name: str, ds: str) -> float:
    """Rows of raw `name` on `ds` predicted from today's impressions and the trailing days' ratio of the two.

    No trailing day with both tables: nothing to predict from, so an empty day can't be judged quiet (inf).
    """
    days = [d for d in lake.days_between(lake.shift(ds, -TRAILING_DAYS), TRAILING_DAYS)
            if all(storage.exists(settings, lake.raw(settings, t, d)) for t in ("impressions", name))]  # fmt: skip
    try:
        shown = sum(_row_count(settings, lake.raw(settings, "impressions", d)) for d in days)
        if not shown:
            return math.inf
        rate = sum(_row_count(settings, lake.raw(settings, name, d)) for d in days) / shown
        return rate * _row_count(settings, lake.raw(settings, "impressions", ds))
    except UnreadableParquetError:  # reported by the table's own expectations
        return math.inf


def _day_bounds(ds: str) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime.combine(lake.day(ds), dt.time(), tzinfo=dt.UTC)
    return start, start + dt.timedelta(days=1)


def _drift_failures(where: str, summary: pd.DataFrame) -> Explain:
    """Lines for the per-scenario ratios: which scenario moved how far from its trailing mean."""

    def explain(outcome: dict) -> list[str]:
        column = outcome["kwargs"]["column"]
        low, high = VOLUME_RATIO if column == "volume_ratio" else CTR_RATIO
        bounds = f"bounds {_times(low)}–{_times(high)}"
        lines = []
        for row in summary[(summary[column] < low) | (summary[column] > high)].itertuples():
            if column == "volume_ratio":
                what, ratio, seen = "volume", row.volume_ratio, f"{row.rows:,} rows vs {row.trailing_rows:,.0f} a day"
            else:
                what, ratio, seen = "CTR", row.ctr_ratio, f"{row.ctr:.2%} vs {row.trailing_ctr:.2%}"
            lines.append(f"{where}: {what} of {row.scenario} is {_times(ratio)} its trailing mean ({seen}; {bounds})")
        return lines

    return explain


def _drift(run: _Run, where: str, summary: pd.DataFrame, trailing: list[str], with_ctr: bool, min_rows: int) -> None:
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
    run.validate("per_scenario", summary, expectations, _drift_failures(where, summary))


def _trailing(run: _Run, settings: Settings, table: str, ds: str, columns: Sequence[str]) -> dict[str, pd.DataFrame]:
    """The earlier days of `table` that exist and read (up to TRAILING_DAYS), only `columns`.

    An unreadable earlier day is left out with a note: it fails its own check, not today's.
    """
    days = lake.days_between(lake.shift(ds, -TRAILING_DAYS), TRAILING_DAYS)
    found = {}
    for day in days:
        uri = lake.samples(settings, day) if table == "samples" else lake.raw(settings, table, day)
        try:
            loaded = read_day(settings, uri, columns)
        except UnreadableParquetError as bad:
            run.notes.append(f"trailing day {day} of {table} left out: {bad}")
            continue
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


# --- quarantine ------------------------------------------------------------------------------------


def _quarantine_shares(settings: Settings, sample_ds: str, quarantine: pd.DataFrame) -> list[dict]:
    """Per raw table of the sample day: its rows, rows quarantined per reason, and the bounded share.

    The share counts every reason but UNBOUNDED_REASONS, over the table's raw rows
    of the day (read from the parquet footers).
    """
    counts = Counter(zip(quarantine["source"], quarantine["reason"], strict=True)) if len(quarantine) else Counter()
    shares = []
    for table in lake.RAW_TABLES:
        rows = _row_count(settings, lake.raw(settings, table, sample_ds))
        reasons = {reason: n for (source, reason), n in sorted(counts.items()) if source == table}
        bounded = sum(n for reason, n in reasons.items() if reason not in UNBOUNDED_REASONS)
        shares.append(
            {
                "table": table,
                "raw_rows": rows,
                "quarantined": sum(reasons.values()),
                "share": bounded / rows if rows else 0.0,
                "reasons": reasons,
            }
        )
    return shares


def _quarantine_failures(sample_ds: str, shares: list[dict], rate: float) -> Explain:
    """Lines for a table above the bound: its share of the day's rows and the reasons that filled it."""
    by_table = {share["table"]: share for share in shares}

    def explain(outcome: dict) -> list[str]:
        share = by_table[outcome["kwargs"]["column"]]
        bounded = {r: n for r, n in share["reasons"].items() if r not in UNBOUNDED_REASONS}
        top = sorted(bounded.items(), key=lambda item: (-item[1], item[0]))[:TOP_REASONS]
        reasons = ", ".join(f"{reason} {n / share['raw_rows']:.1%}" for reason, n in top)
        return [
            f"raw {share['table']} ds={sample_ds}: {share['share']:.1%} of {share['raw_rows']:,} rows quarantined"
            f" ({reasons}), above MSMT_MAX_QUARANTINE_RATE {_percent(rate)}"
        ]

    return explain


def _check_quarantine(settings: Settings, run: _Run, sample_ds: str) -> None:
    """Bound each raw table's quarantined share of the sample day: a high share is a broken upstream.

    build_samples writes quarantine/ds=<sample day>/source=<table>/ with the
    samples; its absence means they were not built together.
    """
    where, uri = f"quarantine ds={sample_ds}", lake.quarantine(settings, sample_ds)
    try:
        loaded = read_day(settings, uri, ["reason"])
        if loaded is None:
            run.fail("quarantine", "partition_exists", f"{where}: partition {uri} has not landed")
            return
        shares = _quarantine_shares(settings, sample_ds, loaded[0].to_pandas())
    except UnreadableParquetError as bad:
        run.fail("quarantine", "files_are_parquet", bad.line(where))
        return
    run.sections["quarantine"] = shares
    rate = settings.max_quarantine_rate
    gxe = run.gx.expectations
    run.validate(
        "quarantine",
        pd.DataFrame({share["table"]: [share["share"]] for share in shares}),
        [gxe.ExpectColumnValuesToBeBetween(column=share["table"], min_value=0, max_value=rate) for share in shares],
        _quarantine_failures(sample_ds, shares, rate),
    )


# --- the two checks --------------------------------------------------------------------------------


def check_raw(settings: Settings, ds: str) -> dict:
    """Validate raw impressions, clicks and conversions of day `ds`; returns the stored result dict.

    Raises DataCheckError (after storing the result) when a partition is missing,
    empty or unreadable, or an expectation fails.
    """
    run = _Run("raw", ds, settings.data_contract.source)
    start, end = _day_bounds(ds)
    mostly = 1 - settings.max_quarantine_rate
    impressions = None
    for name in lake.RAW_TABLES:
        where = f"raw {name} ds={ds}"
        expected = None if name == "impressions" else functools.partial(_expected_rows, settings, name, ds)
        loaded = _load(settings, run, name, where, lake.raw(settings, name, ds), expected)
        if loaded is None:
            continue

        def values(gxe, intact: set[str], table: contract.Table = settings.data_contract.tables[name]) -> list:
            """The contract's rules for one raw table: keys present, times inside the day, declared ranges."""
            checks = []
            for c in (c for c in table.columns if c.name in intact):
                if c.name in table.keys:
                    checks.append(gxe.ExpectColumnValuesToNotBeNull(column=c.name, mostly=mostly))
                if c.role == "event_time":
                    day = {"min_value": start, "max_value": end, "strict_max": True}
                    checks.append(gxe.ExpectColumnValuesToBeBetween(column=c.name, mostly=mostly, **day))
                if c.role == "scenario":
                    allowed = list(settings.scenarios)
                    checks.append(gxe.ExpectColumnValuesToBeInSet(column=c.name, value_set=allowed, mostly=mostly))
                if c.min is not None or c.max is not None:
                    bounds = {"min_value": c.min, "max_value": c.max}
                    checks.append(gxe.ExpectColumnValuesToBeBetween(column=c.name, mostly=mostly, **bounds))
            return checks

        frame = _validate_table(run, name, where, loaded, settings.data_contract.raw_schema(name), values)
        if name == "impressions" and "scenario" in frame:
            impressions = frame
    summary = None
    if impressions is not None:
        trailing = _trailing(run, settings, "impressions", ds, ["scenario"])
        summary = _summary(impressions, trailing, settings.scenarios, label=None)
        where = f"raw impressions ds={ds}"
        _drift(run, where, summary, sorted(trailing), with_ctr=False, min_rows=settings.drift_min_rows)
    return run.finish(settings, summary)


def check_samples(settings: Settings, sample_ds: str) -> dict:
    """Validate samples of `sample_ds`: schema, keys, labels, every scenario present, drift vs trailing days,
    and each raw table's quarantined share of the day.

    Returns the stored result dict; raises DataCheckError (after storing it) on failure.
    """
    run = _Run("samples", sample_ds, settings.data_contract.source)
    start, end = _day_bounds(sample_ds)
    where = f"samples ds={sample_ds}"
    ids = list(settings.scenario_ids.values())

    layout = settings.data_contract
    click, conversion = layout.tasks

    def values(gxe, intact: set[str]) -> list:
        checks = [gxe.ExpectColumnValuesToNotBeNull(column=c) for c in contract.SAMPLE_KEYS if c in intact]
        ranges = {
            **{task: gxe.ExpectColumnValuesToBeInSet(column=task, value_set=[0, 1]) for task in layout.tasks},
            **{c.name: gxe.ExpectColumnValuesToBeBetween(column=c.name, min_value=c.min, max_value=c.max)
               for c in layout.inputs() if c.min is not None or c.max is not None},
            "hour": gxe.ExpectColumnValuesToBeBetween(column="hour", min_value=0, max_value=23),
            "scenario_id": gxe.ExpectColumnValuesToBeInSet(column="scenario_id", value_set=ids),
            "impression_id": gxe.ExpectColumnValuesToBeUnique(column="impression_id"),
            "event_timestamp": gxe.ExpectColumnValuesToBeBetween(
                column="event_timestamp", min_value=start, max_value=end, strict_max=True
            ),
            "scenario": gxe.ExpectColumnDistinctValuesToContainSet(
                column="scenario", value_set=list(settings.scenarios)
            ),
        }  # fmt: skip
        checks += [check for column, check in ranges.items() if column in intact]
        if {click, conversion} <= intact:
            checks.append(
                gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A=click, column_B=conversion, or_equal=True)
            )
        return checks

    summary = None
    loaded = _load(settings, run, "samples", where, lake.samples(settings, sample_ds))
    if loaded is not None:
        expected = layout.samples_schema.append(pa.field("scenario", pa.string()))  # the partition column
        frame = _validate_table(run, "samples", where, loaded, expected, values)
        if {"scenario", click} <= set(frame.columns):
            trailing = _trailing(run, settings, "samples", sample_ds, ["scenario", click])
            summary = _summary(frame, trailing, settings.scenarios, label=click)
            _drift(run, where, summary, sorted(trailing), with_ctr=True, min_rows=settings.drift_min_rows)
    _check_quarantine(settings, run, sample_ds)
    return run.finish(settings, summary)
