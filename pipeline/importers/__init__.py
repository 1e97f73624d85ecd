"""Importers: public multi-scenario, multi-task datasets → msmt's raw logs, under a data contract.

An adapter (`aliexpress`, `aliccp`) streams a public release, parses its rows into `Batch`es (keys,
labels, a place in time, and the contract's input columns) and hands them to `RawWriter`, which writes
the three raw tables of the contract the import runs with (`--contract`; by default the dataset's own,
shipped in contracts/: aliexpress.toml, aliccp.toml, aliccp_raw.toml) under
`raw/<table>/ds=…/part-<k>.parquet`. The pipeline then reads them under that contract
(`export MSMT_CONTRACT=…`, which the import prints), exactly like simulator logs under the simulator's.
Mapping decisions shared by every adapter (the adapters' docstrings add theirs):

- Columns. The writer fills the key columns by role, under the contract's names, and `position` and
  `device` when the contract declares them. Every other impressions column is an input the adapter
  reads from the release (`RawWriter.inputs`): the release's features reach the model under their own
  names, the contract deciding which, not this code. A column the release lacks is refused before
  anything is written; release columns the contract does not name are listed in the report
  (`not_imported`). Text becomes the contract's type (`typed`): "" is null, an integer may be written
  `12.0`; anything else is a malformed row (bad_value).
- Time. The public files carry no timestamps. Each row gets a synthetic one from its place in its
  stream: `ts = start + frac · days · 24 h`, `frac` = row index / rows of the stream (an adapter
  decides what a stream is: one country's files for AliExpress, the whole release for Ali-CCP, so
  every scenario covers every day; AliExpress places a row by its search's slot in its file, see
  there). Time is monotone in file order, so a release split "along the time sequence" (train,
  then test) keeps its order when the files are given in that order. Every row of a request takes
  the time of the request's first row.
- Position: the 0-based order of the row among the rows of its request seen so far in the stream.
- Ids: user / item / request keys are strings; user_id and item_id are `stable_hash` of them
  (blake2b-64 masked to a non-negative int64: deterministic across processes and machines).
- device: the datasets have none; a constant (`"unknown"` by default) fills it if the contract has one.
- Clicks: one row per impression with click = 1, click_id = "c-" + impression_id, a deterministic
  2–300 s after the impression. Conversions: one per impression with conversion = 1 (which implies
  click; a row with conversion but no click is malformed), conversion_id = "v-" + impression_id,
  a deterministic 1–60 min after the click, value 1.0 (no order value in the data). Both are clamped
  to the last microsecond of the impression's day, so every event lands in its impression's
  partition and well inside any attribution window (never before the event it follows).
- Malformed rows are counted per reason (with a few examples) in the report and skipped, never fatal.
  A wrong input is fatal: a file whose header or first line is not the adapter's layout is refused
  before anything is written (`ImportRefused` says what differs and which layouts are supported),
  and so is a contract the release cannot fill, and an import that yields no impression at all.
- Nothing destroyed before the input is read: the writer stages every partition under
  `<lake>/_staging/import-<token>/` and only when the last row is parsed swaps them in, day by day,
  replacing the `days` partitions of every raw table (and of `truth`, which only the simulator
  writes). An error on the way discards the staging, so the lake stays as it was; a re-run replaces
  the days (idempotent). Import every scenario in one call.
"""

from __future__ import annotations

import csv
import datetime as dt
import re
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv

from msmt import contract as contracts
from msmt import lake, storage
from msmt.errors import StopRun
from msmt.ids import stable_hash
from msmt.settings import PROJECT_ROOT, Settings

DAY_US = 86_400 * 1_000_000
CLICK_DELAY_S = (2, 300)  # click this long after its impression (deterministic per impression)
CONVERSION_DELAY_S = (60, 3600)  # conversion this long after its click
MAX_EXAMPLES = 5  # malformed examples kept per reason
WRITTEN = ("position", "device")  # impressions columns the writer fills itself, when the contract declares them
TEXT_TYPES = ("string", "int32", "int64", "float64")  # what a release's text can become
EVENT_ROLES = {  # the columns of clicks / conversions the writer can fill, by role
    "clicks": ("record_id", "impression_id", "event_time"),
    "conversions": ("record_id", "click_id", "event_time", "value"),
}
LABELS = ("0", "1", "0.0", "1.0")  # a 0/1 label column's text
TRUE = ("1", "1.0")

# what a file's first line can be, in words (`shape`); the error for a wrong file names what it found
CCP_SKELETON_ROW = (
    "a raw Ali-CCP sample_skeleton row (sample_id,click,buy,common_feature_index,feature_num,feature_list)"
)
CCP_COMMON_ROW = "a raw Ali-CCP common_features row (common_feature_index,feature_num,feature_list)"
CCP_PROCESSED = "the processed Ali-CCP CSV header (click,purchase,101,121,…,301,…)"
AE_PROCESSED = "a processed AliExpress CSV header (search_id,categorical_1,…,click,conversion)"
SUPPORTED_LAYOUTS = (
    "the raw Ali-CCP release (msmt import aliccp): sample_skeleton_<split>.csv + common_features_<split>.csv "
    "pairs without header, skeleton rows sample_id,click,buy,common_feature_index,feature_num,feature_list",
    "the processed AliExpress CSVs in MTReclib's layout (msmt import aliexpress): AliExpress_<CC>/train.csv, "
    "test.csv with the header search_id,categorical_1..16,numerical_1..63,click,conversion",
    "the processed Ali-CCP CSVs in torch-rechub's layout (msmt import aliccp): ali_ccp_train.csv, "
    "ali_ccp_val.csv, ali_ccp_test.csv with the header click,purchase,101,…,853,301,109_14,…,D109_14,…,D853",
)
_FEATURE_LIST = re.compile(r"[^,\x01\x02\x03]+\x02")  # a feature_list starts with `field\x02`
_INTEGRAL = r"^([+-]?\d+)\.0*$"  # an integer written as a float: 12.0
_BAD = object()  # a text that is no value of its column's type


class ImportRefused(StopRun, ValueError):
    """The input cannot be imported as given (wrong layout, unreadable, nothing usable): the lake is unchanged."""


def refuse(path: Path | str, problem: str) -> ImportRefused:
    """The error for a file in no layout an adapter reads: what differs, then what is supported."""
    layouts = "; ".join(f"({i}) {text}" for i, text in enumerate(SUPPORTED_LAYOUTS, 1))
    return ImportRefused(f"{path}: {problem}. Supported layouts: {layouts}")


def first_line(path: Path) -> str:
    """The first line of a file (at most 1 MiB of it), without its line break; "" for an empty file."""
    with open(path, "rb") as f:
        return f.readline(1 << 20).decode("utf-8", "replace").rstrip("\r\n")


def shape(line: str) -> str:
    """What a first line is: one of the known layouts' first lines, else its first fields (for the error)."""
    if not line.strip():
        return "an empty line (is the file empty?)"
    names = {field.strip() for field in line.split(",")}
    if {"search_id", "click", "conversion"} <= names:
        return AE_PROCESSED
    if {"click", "purchase", "301"} <= names:
        return CCP_PROCESSED
    row = line.split(",", 5)
    if len(row) == 6 and {row[1], row[2]} <= {"0", "1"} and row[4].isdigit() and _FEATURE_LIST.match(row[5]):
        return CCP_SKELETON_ROW
    row = line.split(",", 2)
    if len(row) == 3 and row[1].isdigit() and _FEATURE_LIST.match(row[2]):
        return CCP_COMMON_ROW
    return f"{line.count(',') + 1} comma-separated fields starting {line[:80]!r}"


def count_lines(path: Path, chunk: int = 1 << 24) -> int:
    """Lines of a file (a last line without newline counts), read in chunks: cheap on multi-GB files."""
    n, last = 0, b"\n"
    with open(path, "rb") as f:
        while block := f.read(chunk):
            n += block.count(b"\n")
            last = block[-1:]
    return n + (last != b"\n")


def load_contract(settings: Settings, path: str | Path | None, shipped: str) -> contracts.Contract:
    """The contract an import writes under: `path` (resolved like MSMT_CONTRACT), else the dataset's own."""
    file = replace(settings, contract=str(path)).contract_file if path else contracts.CONTRACTS_DIR / shipped
    return contracts.load(file)


def adapter_inputs(contract: contracts.Contract) -> tuple[contracts.Column, ...]:
    """The impressions columns an adapter reads from its release: all but the keys and `WRITTEN`.

    A contract with a column nothing can fill (a key role the writer does not produce, a type text
    cannot become) is refused here, before anything is read or written.
    """
    where = f"contract {contract.source}"
    for name, roles in EVENT_ROLES.items():
        for column in contract.tables[name].columns:
            if column.role not in roles:
                raise ImportRefused(f"{where}: table {name}, column {column.name}: an import writes only the "
                                    f"roles {list(roles)} there, not {column.role!r}")  # fmt: skip
    inputs = []
    for column in contract.tables["impressions"].columns:
        if column.role in contracts.REQUIRED_ROLES["impressions"] or column.name in WRITTEN:
            continue
        at = f"{where}: table impressions, column {column.name}"
        if column.role in contracts.KEY_ROLES:
            raise ImportRefused(f"{at}: an import does not write the key role {column.role!r} on impressions")
        if column.type not in TEXT_TYPES:
            raise ImportRefused(f"{at}: an import reads it from text, which cannot become {column.type}")
        inputs.append(column)
    return tuple(inputs)


def typed(values: pa.Array, kind: pa.DataType) -> tuple[pa.Array, np.ndarray]:
    """A release's text column as `kind`, and which rows hold text that is no value of it (bad_value).

    Blank text is null (the embedding's null row; a dense 0.0); an integer may be written `12.0`; a
    float must be finite (a NaN would poison every gradient it touches).
    """
    text = pc.utf8_trim_whitespace(values)
    text = pc.if_else(pc.equal(text, ""), pa.nulls(len(text), pa.string()), text)
    if pa.types.is_integer(kind):
        text = pc.replace_substring_regex(text, _INTEGRAL, r"\1")
    try:
        result, bad = text.cast(kind), np.zeros(len(text), dtype=bool)
    except (pa.ArrowInvalid, OverflowError):  # a few bad texts: find them one by one
        parsed = [_value(v, kind) for v in text.to_pylist()]
        bad = np.fromiter((v is _BAD for v in parsed), dtype=bool, count=len(parsed))
        result = pa.array([None if v is _BAD else v for v in parsed], kind)
    if pa.types.is_floating(kind):
        infinite = pc.fill_null(pc.invert(pc.is_finite(result)), False).to_numpy(zero_copy_only=False)
        if infinite.any():
            bad |= infinite
            result = pc.if_else(pa.array(infinite), pa.nulls(len(result), kind), result)
    return result, bad


def _value(text: str | None, kind: pa.DataType) -> object:
    if text is None:
        return None
    try:
        return pa.scalar(int(text) if pa.types.is_integer(kind) else float(text), kind).as_py()
    except (ValueError, OverflowError, pa.ArrowInvalid):
        return _BAD


# --- CSV layouts (processed AliExpress, processed Ali-CCP) -------------------------------------------------


def check_csv(path: Path, layout: Sequence[str], sources: dict[str, str], contract: contracts.Contract) -> list[str]:
    """Refuse a CSV that cannot be imported, before the lake is touched; return its columns nothing imports.

    `layout`: the columns that make the file what the adapter reads (search id, labels …); `sources`:
    contract column → the CSV column it is read from. Refused: a file without the layout's columns, one
    without a column the contract declares, one with a header and no data row or whose first data row
    does not have the header's number of fields.
    """
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        rows = csv.reader(f)
        header = [name.strip() for name in next(rows, [])]
        row = next(rows, None)
    missing = [c for c in layout if c not in header]
    if missing:
        raise refuse(path, f"missing columns {_listed(missing)}; its first line is {shape(first_line(path))}")
    absent = [src if src == name else f"{src} (for {name})" for name, src in sources.items() if src not in header]
    if absent:
        raise ImportRefused(f"{path}: no column {_listed(absent)}, which contract {contract.source} declares "
                            "on impressions; import a file that has it, or a contract without it")  # fmt: skip
    if row is None:
        raise refuse(path, "a header and no data row (an empty or cut file?)")
    if len(row) != len(header):
        raise refuse(path, f"its first data row has {len(row)} fields, its header {len(header)}")
    used = {*layout, *sources.values()}
    return [c for c in header if c not in used]


def csv_blocks(
    path: Path, columns: Sequence[str], block_size: int, on_invalid: Callable[[pv.InvalidRow], str]
) -> Iterator[pa.RecordBatch]:
    """`columns` of a CSV as text, block by block; a block pyarrow cannot read refuses the file."""
    try:
        yield from pv.open_csv(
            path,
            read_options=pv.ReadOptions(block_size=block_size),
            parse_options=pv.ParseOptions(invalid_row_handler=on_invalid),
            convert_options=pv.ConvertOptions(
                include_columns=list(columns), column_types=dict.fromkeys(columns, pa.string())
            ),
        )
    except pa.ArrowInvalid as error:
        raise ImportRefused(f"{path}: unreadable CSV ({error})") from error


def csv_inputs(
    record: pa.RecordBatch, inputs: Sequence[contracts.Column], sources: dict[str, str]
) -> tuple[dict[str, pa.Array], np.ndarray]:
    """A block's contract input columns, typed (`typed`), and which rows hold a bad value in any of them."""
    values, bad = {}, np.zeros(record.num_rows, dtype=bool)
    for column in inputs:
        values[column.name], wrong = typed(record.column(sources[column.name]), column.arrow_type)
        bad |= wrong
    return values, bad


def is_in(values: pa.Array, allowed: tuple[str, ...]) -> np.ndarray:
    return pc.is_in(pc.utf8_trim_whitespace(values), pa.array(allowed)).to_numpy(zero_copy_only=False)


def first_reason(*checks: tuple[np.ndarray, str]) -> np.ndarray:
    """Per row, the reason of the first check that fails (its mask is set); "" for a good row."""
    reasons = np.full(len(checks[0][0]), "", dtype=object)
    for failed, reason in reversed(checks):
        reasons[failed] = reason
    return reasons


def row_text(record: pa.RecordBatch, k: int) -> str:
    return ",".join(str(record.column(i)[k].as_py()) for i in range(record.num_columns))


def _listed(names: Sequence[str]) -> str:
    return ", ".join(names[:5]) + (f", … ({len(names)} in all)" if len(names) > 5 else "")


# --- the writer -------------------------------------------------------------------------------------


@dataclass
class Batch:
    """Parsed rows of one chunk, all of the same length; keys are strings, labels booleans."""

    impression_id: pa.Array
    request_key: pa.Array
    scenario: pa.Array
    user_key: pa.Array
    item_key: pa.Array
    click: np.ndarray
    conversion: np.ndarray  # implies click
    frac: np.ndarray  # place of the row in its stream, in [0, 1): sets its synthetic day and time
    inputs: dict[str, pa.Array]  # the contract's input columns (`RawWriter.inputs`), of their types

    def __len__(self) -> int:
        return len(self.click)

    def take(self, rows: np.ndarray) -> Batch:
        index = pa.array(rows, pa.int64())

        def pick(value: pa.Array | np.ndarray) -> pa.Array | np.ndarray:
            return value[rows] if isinstance(value, np.ndarray) else value.take(index)

        keys = {name: pick(value) for name, value in vars(self).items() if name != "inputs"}
        return replace(self, **keys, inputs={name: pick(value) for name, value in self.inputs.items()})


class RawWriter:
    """Turns Batches into raw partitions of `contract` for `days` days from `start`; collects the import report.

    Use it as a context manager and end with `close`: batches are staged under
    `<lake>/_staging/import-<token>/`, `close` swaps them into the lake, and leaving the block
    (an error, a refused input) removes the staging, so the lake only ever changes in `close`.
    """

    def __init__(
        self,
        settings: Settings,
        contract: contracts.Contract,
        start: str,
        days: int,
        device: str = "unknown",
        scenarios: Sequence[str] | None = None,
    ) -> None:
        if days < 1:
            raise ValueError("days must be >= 1")
        self.settings = settings
        self.contract = contract
        self.inputs = adapter_inputs(contract)  # what each Batch carries besides keys and labels
        self.days = lake.days_between(start, days)
        self.start_us = int(dt.datetime.fromisoformat(self.days[0]).replace(tzinfo=dt.UTC).timestamp()) * 1_000_000
        self.span_us = days * DAY_US
        self.device = device
        self.selected = tuple(scenarios) if scenarios else None
        self._requests: dict[int, tuple[int, int]] = {}  # request hash → (rows seen, request ts)
        self._parts: Counter[tuple[str, str]] = Counter()  # (table, ds) → files written
        self.counts = {name: Counter() for name in lake.RAW_TABLES}  # per day
        self.per_scenario: dict[str, Counter] = {}
        self.malformed: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self.skipped: Counter[str] = Counter()  # rows of scenarios left out by `scenarios`
        self.not_imported: dict[str, list[str]] = {}  # file → its columns / fields the contract does not name
        self.rows_read = 0
        self.staging = lake.staging(settings, uuid.uuid4().hex)

    def __enter__(self) -> RawWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        storage.remove_prefix(self.settings, self.staging)

    # --- adapters report what they could not parse, and what they leave out ----------------------------
    def reject(self, reason: str, example: str = "") -> None:
        self.malformed[reason] += 1
        self.rows_read += 1
        kept = self.examples.setdefault(reason, [])
        if len(kept) < MAX_EXAMPLES:
            kept.append(example[:300])

    def leave_out(self, path: Path, names: Sequence[str]) -> None:
        """Columns (or fields) of a file that no contract column takes: listed in the report."""
        if names:
            self.not_imported[str(path)] = list(names)

    def add(self, batch: Batch) -> None:
        """Write one batch's impressions, clicks and conversions into their day partitions."""
        self.rows_read += len(batch)
        if not len(batch):
            return
        if self.selected is not None:
            keep = pc.is_in(batch.scenario, pa.array(self.selected, pa.string())).to_numpy(zero_copy_only=False)
            for name, n in Counter(pc.filter(batch.scenario, pc.invert(pa.array(keep))).to_pylist()).items():
                self.skipped[name] += n
            if not keep.all():
                batch = batch.take(np.flatnonzero(keep))
            if not len(batch):
                return
        ts, position = self._place(batch)
        day = (ts - self.start_us) // DAY_US
        imp_hash = stable_hash(batch.impression_id)
        day_end = self.start_us + (day + 1) * DAY_US - 1
        click_ts = np.minimum(ts + _delay(imp_hash, CLICK_DELAY_S), day_end)
        conversion_ts = np.minimum(click_ts + _delay(imp_hash >> 20, CONVERSION_DELAY_S), day_end)
        keys = {
            "impression_id": batch.impression_id,
            "request_id": batch.request_key,
            "event_time": ts,
            "user_key": stable_hash(batch.user_key),
            "item_key": stable_hash(batch.item_key),
            "scenario": batch.scenario,
        }
        written = {
            "position": np.minimum(position, 2**31 - 1),
            "device": pa.array(np.full(len(batch), self.device, dtype=object), pa.string()),
        }
        click_ids = pc.binary_join_element_wise("c-", batch.impression_id, "")
        impressions = self._table("impressions", keys, {**written, **batch.inputs})
        clicks = self._table(
            "clicks", {"record_id": click_ids, "impression_id": batch.impression_id, "event_time": click_ts}
        )
        conversions = self._table(
            "conversions",
            {
                "record_id": pc.binary_join_element_wise("v-", batch.impression_id, ""),
                "click_id": click_ids,
                "event_time": conversion_ts,
                "value": np.ones(len(batch)),
            },
        )
        for d in np.unique(day):
            ds = self.days[int(d)]
            rows = day == d
            self._write("impressions", ds, impressions.filter(pa.array(rows)))
            self._write("clicks", ds, clicks.filter(pa.array(rows & batch.click)))
            self._write("conversions", ds, conversions.filter(pa.array(rows & batch.conversion)))
        labels = pd.DataFrame(
            {"impressions": 1, "clicks": batch.click.astype(int), "conversions": batch.conversion.astype(int)},
            index=batch.scenario.to_numpy(zero_copy_only=False),
        )
        for name, sums in labels.groupby(level=0).sum().iterrows():
            self.per_scenario.setdefault(name, Counter()).update({k: int(v) for k, v in sums.items()})

    def close(self) -> dict:
        """Give every day an (empty if need be) partition of each table, swap them in; return the import report.

        An import without a single impression is refused rather than swapped in: it would replace
        the days' logs with empty partitions, and its input was not what it claimed to be.
        """
        for ds in self.days:
            for name in lake.RAW_TABLES:
                if not self._parts[(name, ds)]:
                    self._write(name, ds, self.contract.raw_schema(name).empty_table(), force=True)
        report = self._report()
        if not report["totals"]["impressions"]:
            raise ImportRefused(
                f"no impression imported from {report['rows_read']} rows read "
                f"(malformed: {report['malformed'] or 'none'}, left out by --scenarios: "
                f"{report['skipped_scenarios'] or 'none'})"
            )
        self._publish()
        return report

    # --- internals -------------------------------------------------------------------------------------
    def _table(self, name: str, by_role: dict, by_name: dict | None = None) -> pa.Table:
        """One raw table of the contract: a key column from `by_role`, any other from `by_name`, cast to its type."""
        table = self.contract.tables[name]
        arrays = []
        for column in table.columns:
            values = by_role[column.role] if column.role in by_role else (by_name or {})[column.name]
            arrow = values if isinstance(values, pa.Array | pa.ChunkedArray) else pa.array(values)
            arrays.append(arrow.cast(column.arrow_type))
        return pa.Table.from_arrays(arrays, schema=table.schema)

    def _report(self) -> dict:
        order = self.selected or sorted(self.per_scenario, key=lambda s: (-self.per_scenario[s]["impressions"], s))
        return {
            "contract": self.contract.source,
            "days": {ds: {name: self.counts[name][ds] for name in self.counts} for ds in self.days},
            "totals": {name: sum(c.values()) for name, c in self.counts.items()},
            "scenarios": {s: dict(self.per_scenario.get(s, Counter())) for s in order},
            "rows_read": self.rows_read,
            "malformed": dict(sorted(self.malformed.items())),
            "malformed_examples": self.examples,
            "skipped_scenarios": dict(sorted(self.skipped.items())),
            "not_imported": self.not_imported,
            "msmt_scenarios": ",".join(order),
        }

    def _publish(self) -> None:
        """Replace each day's raw partitions (and `truth`) by the staged ones, one day at a time.

        Copied through `storage`, so it is the same on a local lake and on S3. Parsing is over by
        then; a failure inside this loop leaves the days before it new, the days after it old, and
        only the day being copied partly replaced.
        """
        for ds in self.days:
            for name in (*lake.RAW_TABLES, "truth"):
                storage.remove_prefix(self.settings, lake.raw(self.settings, name, ds))
            for name in lake.RAW_TABLES:
                for k in range(self._parts[(name, ds)]):
                    data = storage.read_bytes(self.settings, self._staged(name, ds, k))
                    storage.write_bytes(self.settings, f"{lake.raw(self.settings, name, ds)}/part-{k}.parquet", data)
            storage.remove_prefix(self.settings, f"{self.staging}/ds={ds}")

    def _staged(self, name: str, ds: str, k: int) -> str:
        return f"{self.staging}/ds={ds}/{name}/part-{k}.parquet"

    def _place(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        """Synthetic ts (the request's first row's) and position (order within the request) per row."""
        row_ts = self.start_us + np.minimum((batch.frac * self.span_us).astype(np.int64), self.span_us - 1)
        codes, uniques = pd.factorize(stable_hash(batch.request_key))
        first = np.unique(codes, return_index=True)[1]  # first row of each request in this batch
        sizes = np.bincount(codes)
        within = pd.Series(codes).groupby(codes).cumcount().to_numpy()
        base = np.zeros(len(uniques), dtype=np.int64)
        req_ts = row_ts[first]
        for j, key in enumerate(uniques.tolist()):
            seen = self._requests.get(key)
            if seen is not None:
                base[j], req_ts[j] = seen
            self._requests[key] = (int(base[j] + sizes[j]), int(req_ts[j]))
        return req_ts[codes], base[codes] + within

    def _write(self, name: str, ds: str, table: pa.Table, force: bool = False) -> None:
        if not table.num_rows and not force:
            return
        storage.write_parquet(self.settings, self._staged(name, ds, self._parts[(name, ds)]), table)
        self._parts[(name, ds)] += 1
        self.counts[name][ds] += table.num_rows


def _delay(h: np.ndarray, bounds: tuple[int, int]) -> np.ndarray:
    """A deterministic delay in whole seconds within `bounds`, as microseconds."""
    low, high = bounds
    return (low + h % (high - low + 1)) * 1_000_000


def run_hint(report: dict) -> str:
    """What the user runs next: the contract, the scenarios and the DAG's first day to export, the day to run.

    The pipeline must read the imported lake with the contract it was written under (MSMT_CONTRACT).
    The imported days are synthetic and may lie before msmt_daily's default start date, for which
    Airflow would run nothing: MSMT_DAG_START moves it to the first imported day.
    """
    days = list(report["days"])
    contract = Path(report["contract"])
    shown = contract.relative_to(PROJECT_ROOT) if contract.is_relative_to(PROJECT_ROOT) else contract
    exports = (
        f"export MSMT_CONTRACT={shown}\nexport MSMT_SCENARIOS={report['msmt_scenarios']}\n"
        f"export MSMT_DAG_START={days[0]}"
    )
    return f"{exports}\nmsmt run --ds {days[-1]}"
