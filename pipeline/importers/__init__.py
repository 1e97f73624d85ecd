"""Importers: public multi-scenario, multi-task datasets → msmt's raw logs.

An adapter (`aliexpress`, `aliccp`) streams a public release, parses its rows into `Batch`es of plain
strings and labels, and hands them to `RawWriter`, which turns them into the three raw tables of
`msmt.schemas` (IMPRESSIONS, CLICKS, CONVERSIONS) under `raw/<table>/ds=…/part-<k>.parquet`. The
rest of the pipeline (`msmt run`) then reads them exactly like simulator logs. Mapping decisions
shared by every adapter (the adapters' docstrings add theirs):

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
- Proxies: user_segment / item_category / item_price_bucket are `stable_hash(key) mod` the
  simulator's vocabularies (`SimConfig`: 16 / 40 / 10), so imported and simulated logs share shapes.
- device: the datasets have none; a constant (`"unknown"` by default) fills the required column.
- hist_item_ids: empty (neither release carries item-level behaviour sequences).
- Clicks: one row per impression with click = 1, click_id = "c-" + impression_id, a deterministic
  2–300 s after the impression. Conversions: one per impression with conversion = 1 (which implies
  click; a row with conversion but no click is malformed), conversion_id = "v-" + impression_id,
  a deterministic 1–60 min after the click, value 1.0 (no order value in the data). Both are clamped
  to the last microsecond of the impression's day, so every event lands in its impression's
  partition and well inside any attribution window (never before the event it follows).
- Malformed rows are counted per reason (with a few examples) in the report and skipped, never fatal.
  A wrong input is fatal: a file whose header or first line is not the adapter's layout is refused
  before anything is written (`ImportRefused` says what differs and which layouts are supported),
  and so is an import that yields no impression at all.
- Nothing destroyed before the input is read: the writer stages every partition under
  `<lake>/_staging/import-<token>/` and only when the last row is parsed swaps them in, day by day,
  replacing the `days` partitions of every raw table (and of `truth`, which only the simulator
  writes). An error on the way discards the staging, so the lake stays as it was; a re-run replaces
  the days (idempotent). Import every scenario in one call.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from msmt import lake, storage
from msmt.errors import StopRun
from msmt.ids import stable_hash
from msmt.schemas import CLICKS, CONVERSIONS, IMPRESSIONS
from msmt.settings import Settings

log = logging.getLogger("msmt.importers")

DAY_US = 86_400 * 1_000_000
# the simulator's proxy vocabularies (SimConfig defaults), so imported logs look like simulated ones
N_USER_SEGMENTS = 16
N_ITEM_CATEGORIES = 40
N_PRICE_BUCKETS = 10
CLICK_DELAY_S = (2, 300)  # click this long after its impression (deterministic per impression)
CONVERSION_DELAY_S = (60, 3600)  # conversion this long after its click
MAX_EXAMPLES = 5  # malformed examples kept per reason

# what a file's first line can be, in words (`shape`); the error for a wrong file names what it found
CCP_SKELETON_ROW = (
    "a raw Ali-CCP sample_skeleton row (sample_id,click,buy,common_feature_index,feature_num,feature_list)"
)
CCP_COMMON_ROW = "a raw Ali-CCP common_features row (common_feature_index,feature_num,feature_list)"
CCP_PROCESSED = "the processed Ali-CCP CSV header (click,purchase,101,121,…,301,…), a layout not supported yet"
AE_PROCESSED = "a processed AliExpress CSV header (search_id,categorical_1,…,click,conversion)"
SUPPORTED_LAYOUTS = (
    "the raw Ali-CCP release (msmt import aliccp): sample_skeleton_<split>.csv + common_features_<split>.csv "
    "pairs without header, skeleton rows sample_id,click,buy,common_feature_index,feature_num,feature_list",
    "the processed AliExpress CSVs in MTReclib's layout (msmt import aliexpress): AliExpress_<CC>/train.csv, "
    "test.csv with the header search_id,categorical_1..16,numerical_1..63,click,conversion",
)
_FEATURE_LIST = re.compile(r"[^,\x01\x02\x03]+\x02")  # a feature_list starts with `field\x02`


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


def bucket(values: pa.Array | Sequence[str], n: int) -> np.ndarray:
    """Strings → int32 bucket in 0..n-1 (stable_hash mod n)."""
    return (stable_hash(values) % n).astype(np.int32)


def count_lines(path: Path, chunk: int = 1 << 24) -> int:
    """Lines of a file (a last line without newline counts), read in chunks: cheap on multi-GB files."""
    n, last = 0, b"\n"
    with open(path, "rb") as f:
        while block := f.read(chunk):
            n += block.count(b"\n")
            last = block[-1:]
    return n + (last != b"\n")


@dataclass
class Batch:
    """Parsed rows of one chunk, all of the same length; keys are strings, labels booleans."""

    impression_id: pa.Array
    request_key: pa.Array
    scenario: pa.Array
    user_key: pa.Array
    item_key: pa.Array
    segment_key: pa.Array  # → user_segment
    category_key: pa.Array  # → item_category
    price_key: pa.Array  # → item_price_bucket
    click: np.ndarray
    conversion: np.ndarray  # implies click
    frac: np.ndarray  # place of the row in its stream, in [0, 1): sets its synthetic day and time

    def __len__(self) -> int:
        return len(self.click)


class RawWriter:
    """Turns Batches into raw partitions for `days` days from `start`; collects the import report.

    Use it as a context manager and end with `close`: batches are staged under
    `<lake>/_staging/import-<token>/`, `close` swaps them into the lake, and leaving the block
    (an error, a refused input) removes the staging, so the lake only ever changes in `close`.
    """

    def __init__(
        self,
        settings: Settings,
        start: str,
        days: int,
        device: str = "unknown",
        scenarios: Sequence[str] | None = None,
    ) -> None:
        if days < 1:
            raise ValueError("days must be >= 1")
        self.settings = settings
        self.days = lake.days_between(start, days)
        self.start_us = int(dt.datetime.fromisoformat(self.days[0]).replace(tzinfo=dt.UTC).timestamp()) * 1_000_000
        self.span_us = days * DAY_US
        self.device = device
        self.selected = tuple(scenarios) if scenarios else None
        self._requests: dict[int, tuple[int, int]] = {}  # request hash → (rows seen, request ts)
        self._parts: Counter[tuple[str, str]] = Counter()  # (table, ds) → files written
        self.counts = {name: Counter() for name in ("impressions", "clicks", "conversions")}  # per day
        self.per_scenario: dict[str, Counter] = {}
        self.malformed: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self.skipped: Counter[str] = Counter()  # rows of scenarios left out by `scenarios`
        self.rows_read = 0
        self.staging = lake.staging(settings, uuid.uuid4().hex)

    def __enter__(self) -> RawWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        storage.remove_prefix(self.settings, self.staging)

    # --- adapters report what they could not parse ---------------------------------------------------
    def reject(self, reason: str, example: str = "") -> None:
        self.malformed[reason] += 1
        self.rows_read += 1
        kept = self.examples.setdefault(reason, [])
        if len(kept) < MAX_EXAMPLES:
            kept.append(example[:300])

    def add(self, batch: Batch) -> None:
        """Write one batch's impressions, clicks and conversions into their day partitions."""
        self.rows_read += len(batch)
        if not len(batch):
            return
        scenario = batch.scenario
        if self.selected is not None:
            keep = pc.is_in(scenario, pa.array(self.selected, pa.string())).to_numpy(zero_copy_only=False)
            for name, n in Counter(pc.filter(scenario, pc.invert(pa.array(keep))).to_pylist()).items():
                self.skipped[name] += n
            if not keep.all():
                batch = _take(batch, np.flatnonzero(keep))
                scenario = batch.scenario
            if not len(batch):
                return
        ts, position = self._place(batch)
        day = (ts - self.start_us) // DAY_US
        imp_hash = stable_hash(batch.impression_id)
        day_end = self.start_us + (day + 1) * DAY_US - 1
        click_ts = np.minimum(ts + _delay(imp_hash, CLICK_DELAY_S), day_end)
        conversion_ts = np.minimum(click_ts + _delay(imp_hash >> 20, CONVERSION_DELAY_S), day_end)
        columns = {
            "impression_id": batch.impression_id,
            "request_id": batch.request_key,
            "ts": pa.array(ts, IMPRESSIONS.field("ts").type),
            "user_id": pa.array(stable_hash(batch.user_key), pa.int64()),
            "item_id": pa.array(stable_hash(batch.item_key), pa.int64()),
            "scenario": scenario,
            "position": pa.array(np.minimum(position, 2**31 - 1), pa.int32()),
            "device": pa.array(np.full(len(batch), self.device, dtype=object), pa.string()),
            "user_segment": pa.array(bucket(batch.segment_key, N_USER_SEGMENTS), pa.int32()),
            "item_category": pa.array(bucket(batch.category_key, N_ITEM_CATEGORIES), pa.int32()),
            "item_price_bucket": pa.array(bucket(batch.price_key, N_PRICE_BUCKETS), pa.int32()),
            "hist_item_ids": pa.ListArray.from_arrays(
                pa.array(np.zeros(len(batch) + 1, dtype=np.int32)), pa.array([], pa.int64())
            ),
        }
        impressions = pa.Table.from_pydict(columns, schema=IMPRESSIONS)
        click_ids = pc.binary_join_element_wise("c-", batch.impression_id, "")
        clicks = pa.Table.from_pydict(
            {
                "click_id": click_ids,
                "impression_id": batch.impression_id,
                "ts": pa.array(click_ts, CLICKS.field("ts").type),
            },
            schema=CLICKS,
        )
        conversions = pa.Table.from_pydict(
            {
                "conversion_id": pc.binary_join_element_wise("v-", batch.impression_id, ""),
                "click_id": click_ids,
                "ts": pa.array(conversion_ts, CONVERSIONS.field("ts").type),
                "value": pa.array(np.ones(len(batch)), pa.float64()),
            },
            schema=CONVERSIONS,
        )
        for d in np.unique(day):
            ds = self.days[int(d)]
            rows = day == d
            self._write("impressions", ds, impressions.filter(pa.array(rows)))
            self._write("clicks", ds, clicks.filter(pa.array(rows & batch.click)))
            self._write("conversions", ds, conversions.filter(pa.array(rows & batch.conversion)))
        labels = pd.DataFrame(
            {"impressions": 1, "clicks": batch.click.astype(int), "conversions": batch.conversion.astype(int)},
            index=scenario.to_numpy(zero_copy_only=False),
        )
        for name, sums in labels.groupby(level=0).sum().iterrows():
            self.per_scenario.setdefault(name, Counter()).update({k: int(v) for k, v in sums.items()})

    def close(self) -> dict:
        """Give every day an (empty if need be) partition of each table, swap them in; return the import report.

        An import without a single impression is refused rather than swapped in: it would replace
        the days' logs with empty partitions, and its input was not what it claimed to be.
        """
        for ds in self.days:
            for name, schema in (("impressions", IMPRESSIONS), ("clicks", CLICKS), ("conversions", CONVERSIONS)):
                if not self._parts[(name, ds)]:
                    self._write(name, ds, schema.empty_table(), force=True)
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
    def _report(self) -> dict:
        order = self.selected or sorted(self.per_scenario, key=lambda s: (-self.per_scenario[s]["impressions"], s))
        return {
            "days": {ds: {name: self.counts[name][ds] for name in self.counts} for ds in self.days},
            "totals": {name: sum(c.values()) for name, c in self.counts.items()},
            "scenarios": {s: dict(self.per_scenario.get(s, Counter())) for s in order},
            "rows_read": self.rows_read,
            "malformed": dict(sorted(self.malformed.items())),
            "malformed_examples": self.examples,
            "skipped_scenarios": dict(sorted(self.skipped.items())),
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


def _take(batch: Batch, rows: np.ndarray) -> Batch:
    index = pa.array(rows, pa.int64())
    return Batch(
        **{
            name: (value[rows] if isinstance(value, np.ndarray) else value.take(index))
            for name, value in vars(batch).items()
        }
    )


def run_hint(report: dict) -> str:
    """What the user runs next: the scenarios and the DAG's first day to export, and the day to run.

    The imported days are synthetic and may lie before msmt_daily's default start date, for which
    Airflow would run nothing: MSMT_DAG_START moves it to the first imported day.
    """
    days = list(report["days"])
    exports = f"export MSMT_SCENARIOS={report['msmt_scenarios']}\nexport MSMT_DAG_START={days[0]}"
    return f"{exports}\nmsmt run --ds {days[-1]}"
