"""AliExpress (Tianchi dataset 74690, "AliExpress Searching System Dataset") → msmt raw logs.

Source: traffic logs of AliExpress search in five countries, released as one file set per country
(Li et al., "Improving multi-scenario learning to rank in e-commerce by exploiting task relationships
in the label space", CIKM 2020). The original zips split each country into user/query features (one
row per search result page) and item features + a 0/1/2 label (browse / click / purchase), joined
on the search id. What this importer reads is the widely used processed layout of that release
(MTReclib `data/preprocess.py`, also distributed ready-made as `AliExpress_<CC>/{train,test}.csv`),
one CSV per split with a header:

    search_id, categorical_1 … categorical_16, numerical_1 … numerical_63, click, conversion

where search_id is the original search (page) id, categorical_1..9 come from the user/query file
(its columns 2–8, 32, 33), categorical_10..16 from the item file (its columns 19, 34, 35, 36, 40,
41, 42), numerical_1..23 from the user/query file, numerical_24..63 from the item file, and click /
conversion are 0/1 (label 1 → click; 2 → click and conversion). Assumptions and mapping:

- Features: each input column of the contract (by default contracts/aliexpress.toml: every
  categorical and numerical column) is read from the CSV column of the same name, typed as the
  contract declares, so the model sees all of them. Columns are found by name: a contract column
  the file lacks refuses the import; a file column no contract column names is reported as not imported.
- scenario = the country, lower case (`nl`, `es`, `fr`, `us`, `ru`), read from an `AliExpress_<CC>`
  (or `aliexpress_<cc>`) component of the path, or given with `scenario=`.
- A stream (for synthetic time, see `pipeline.importers`) is one country's files in the order given; a
  directory contributes train.csv then test.csv (the release splits them along time), else its
  *.csv sorted by name. Within a file, searches are laid end to end in order of first appearance,
  each taking as many row slots as it has rows; a search's time is its first slot. A search whose
  rows are scattered over the file thus takes one place in time, not its first row's, and every
  day gets its share of the rows (± one search). A first pass over each file (its search_id column
  only) counts the rows per search; it also reads every row before any is written.
- request_id = "ae-<cc>-<file stem>-<search_id>"; position = row order within the search. The file
  is part of the key because the processed files re-encode search ids per split (small integers,
  the same numbers in train.csv and test.csv): keyed by id alone, a test search joined the train
  search of the same number and took its time, which piled the test rows onto the first days.
- The release has no user or item id. user_id = stable hash of the country and the user/query
  categorical columns (`user_columns`, default categorical_1..9): a pseudo-user, i.e. a profile
  cluster. item_id = stable hash of the country and the item categorical columns (`item_columns`,
  default categorical_10..16): a pseudo-item. Pass other column lists if you know better ones.
- impression_id = "ae-<cc>-<file stem>-<data row number>".
- Malformed: a line with the wrong number of fields (bad_column_count), an empty search_id
  (missing_search_id), a label other than 0/1 (bad_label), conversion without click
  (conversion_without_click), a feature that is not a number (bad_value). The CSV is streamed in
  blocks with pyarrow, never loaded whole.
- Refused before anything is written (`ImportRefused`): a file without the layout's columns (an
  empty file, another release) or without a column the contract declares, with a header and no data
  row, or whose first data row does not have the header's number of fields; two files of one scenario
  with the same name (their ids would collide). A CSV pyarrow cannot read half-way (e.g. invalid
  UTF-8) is refused when met, and nothing is swapped into the lake.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv
from tqdm import tqdm

from msmt.settings import Settings
from pipeline.importers import (
    LABELS,
    TRUE,
    Batch,
    ImportRefused,
    RawWriter,
    check_csv,
    csv_blocks,
    csv_inputs,
    first_reason,
    is_in,
    load_contract,
    row_text,
)

CONTRACT = "aliexpress.toml"  # the shipped contract (contracts/)
_COUNTRY = re.compile(r"aliexpress_([a-z]{2})(?![a-z])", re.IGNORECASE)


@dataclass(frozen=True)
class AliExpressLayout:
    """Which CSV columns make the keys and labels (defaults: MTReclib's processed layout)."""

    request_column: str = "search_id"
    user_columns: tuple[str, ...] = tuple(f"categorical_{i}" for i in range(1, 10))
    item_columns: tuple[str, ...] = tuple(f"categorical_{i}" for i in range(10, 17))
    click_column: str = "click"
    conversion_column: str = "conversion"
    block_size: int = 64 << 20  # bytes per streamed CSV block

    @property
    def columns(self) -> list[str]:
        wanted = [
            self.request_column,
            *self.user_columns,
            *self.item_columns,
            self.click_column,
            self.conversion_column,
        ]
        return list(dict.fromkeys(wanted))


@dataclass(frozen=True)
class SearchSlots:
    """One file's searches laid end to end in order of first appearance: where each starts, in rows."""

    searches: pd.Index
    start: np.ndarray
    rows: int

    def of(self, search: pa.Array) -> np.ndarray:
        """Start slot of each row's search (every search of the file was counted)."""
        return self.start[self.searches.get_indexer(search.to_numpy(zero_copy_only=False))]


def scenario_of(path: Path) -> str | None:
    """Country code of an `AliExpress_<CC>` path component, lower case; None if there is none."""
    for part in reversed(path.resolve().parts):
        found = _COUNTRY.search(part)
        if found:
            return found.group(1).lower()
    return None


def discover(paths: Sequence[Path], scenario: str | None = None) -> dict[str, list[Path]]:
    """CSV files per scenario, in stream order (directories: train.csv, test.csv, else *.csv)."""
    streams: dict[str, list[Path]] = {}
    for path in map(Path, paths):
        if path.is_dir():
            named = [path / "train.csv", path / "test.csv"]
            files = [f for f in named if f.exists()] or sorted(path.glob("*.csv"))
        elif path.exists():
            files = [path]
        else:
            raise FileNotFoundError(f"no such file or directory: {path}")
        if not files:
            raise FileNotFoundError(f"no CSV file in {path}")
        name = scenario or scenario_of(path)
        if name is None:
            raise ImportRefused(f"cannot tell the country of {path}: name it AliExpress_<CC> or pass a scenario")
        streams.setdefault(name, []).extend(files)
    for name, files in streams.items():
        twice = [stem for stem, n in Counter(f.stem for f in files).items() if n > 1]
        if twice:
            raise ImportRefused(f"scenario {name} has more than one {twice[0]}.csv: their ids would collide")
    return streams


def import_aliexpress(
    settings: Settings,
    paths: Sequence[Path],
    start: str,
    days: int,
    scenario: str | None = None,
    scenarios: Sequence[str] | None = None,
    device: str = "unknown",
    layout: AliExpressLayout | None = None,
    contract: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Import AliExpress CSVs into raw partitions for `days` days from `start`; returns the report.

    `contract`: the data contract to write (default contracts/aliexpress.toml).
    """
    layout = layout or AliExpressLayout()
    streams = discover(paths, scenario)
    data_contract = load_contract(settings, contract, CONTRACT)
    with RawWriter(settings, data_contract, start, days, device=device, scenarios=scenarios) as writer:
        sources = {column.name: column.name for column in writer.inputs}
        for path in (f for files in streams.values() for f in files):  # fail before touching the lake
            writer.leave_out(path, check_csv(path, layout.columns, sources, data_contract))
        for name, files in streams.items():
            slots = [count_searches(f, layout) for f in files]
            total = max(sum(s.rows for s in slots), 1)
            offset = 0
            with tqdm(total=total, desc=f"aliexpress {name}", unit="row", disable=not progress) as bar:
                for path, file_slots in zip(files, slots, strict=True):
                    for batch in _batches(path, name, layout, writer, file_slots, offset, total):
                        writer.add(batch)
                        bar.update(len(batch))
                    offset += file_slots.rows
        return writer.close()


def count_searches(path: Path, layout: AliExpressLayout) -> SearchSlots:
    """Rows per search of one file, searches in order of first appearance (malformed lines skipped here)."""
    rows: dict[str, int] = {}
    for record in csv_blocks(path, [layout.request_column], layout.block_size, lambda _: "skip"):
        codes, searches = pd.factorize(_search(record, layout).to_numpy(zero_copy_only=False))
        for search, n in zip(searches.tolist(), np.bincount(codes).tolist(), strict=True):
            rows[search] = rows.get(search, 0) + n
    sizes = np.fromiter(rows.values(), dtype=np.int64, count=len(rows))
    return SearchSlots(pd.Index(list(rows), dtype=object), np.cumsum(sizes) - sizes, int(sizes.sum()))


def _batches(
    path: Path,
    scenario: str,
    layout: AliExpressLayout,
    writer: RawWriter,
    slots: SearchSlots,
    offset: int,
    total: int,
) -> Iterator[Batch]:
    """Stream one CSV as Batches; malformed rows go to `writer.reject`."""
    where = f"{path.name}"

    def on_invalid(row: pv.InvalidRow) -> str:
        writer.reject("bad_column_count", f"{where}:{row.number}: {row.text}")
        return "skip"

    sources = {column.name: column.name for column in writer.inputs}
    columns = list(dict.fromkeys([*layout.columns, *sources]))
    seen = 0  # well-formed data rows so far: numbers the impressions
    prefix = f"ae-{scenario}-{path.stem}-"
    for record in csv_blocks(path, columns, layout.block_size, on_invalid):
        n = record.num_rows
        if not n:
            continue
        first, seen = seen, seen + n
        index = np.arange(first, first + n)
        click_s, conv_s = record.column(layout.click_column), record.column(layout.conversion_column)
        request = _search(record, layout)
        click, conversion = is_in(click_s, TRUE), is_in(conv_s, TRUE)
        inputs, bad_value = csv_inputs(record, writer.inputs, sources)
        reasons = first_reason(
            (~pc.greater(pc.utf8_length(request), 0).to_numpy(zero_copy_only=False), "missing_search_id"),
            (~(is_in(click_s, LABELS) & is_in(conv_s, LABELS)), "bad_label"),
            (conversion & ~click, "conversion_without_click"),
            (bad_value, "bad_value"),
        )
        for k in np.flatnonzero(reasons != "").tolist():
            writer.reject(str(reasons[k]), f"{where}:{index[k] + 2}: {row_text(record, k)}")
        batch = Batch(
            impression_id=pa.array([f"{prefix}{k}" for k in index.tolist()], pa.string()),
            request_key=pc.binary_join_element_wise(prefix, request, ""),
            scenario=pa.array(np.full(n, scenario, dtype=object), pa.string()),
            user_key=_joined(record, scenario, layout.user_columns),
            item_key=_joined(record, scenario, layout.item_columns),
            click=click,
            conversion=conversion,
            frac=(offset + slots.of(request)) / total,
            inputs=inputs,
        )
        good = np.flatnonzero(reasons == "")
        yield batch if len(good) == n else batch.take(good)


def _search(record: pa.RecordBatch, layout: AliExpressLayout) -> pa.Array:
    """The search id of each row, trimmed: what keys the request (with the file) and its time slot."""
    return pc.utf8_trim_whitespace(record.column(layout.request_column))


def _joined(record: pa.RecordBatch, scenario: str, columns: Sequence[str]) -> pa.Array:
    """`<scenario>|c1|c2|…` per row: the key of a pseudo-user / pseudo-item."""
    parts = [pa.array(np.full(record.num_rows, scenario, dtype=object), pa.string())]
    parts += [record.column(c) for c in columns]
    return pc.binary_join_element_wise(*parts, "|")
