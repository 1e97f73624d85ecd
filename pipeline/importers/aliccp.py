"""Ali-CCP (Tianchi dataset 408, "Alibaba Click and Conversion Prediction") → msmt raw logs.

Source: Taobao recommendation impressions with click and purchase labels, released with ESMM
(Ma et al., "Entire Space Multi-Task Model", SIGIR 2018, arXiv:1804.07931). Two layouts are read;
`discover` tells them apart by name and first line, and each has its own shipped contract (why: see
their header comments):

- The raw release (contracts/aliccp_raw.toml). Each split (train, test) is a pair of
  comma-separated files without header:

      sample_skeleton_<split>.csv:  sample_id, click, buy, common_feature_index, feature_num, feature_list
      common_features_<split>.csv:  common_feature_index, feature_num, feature_list

  feature_list = `field\\x02feature_id\\x03value` joined by `\\x01`; feature_num is its length. A
  skeleton row holds the per-impression fields (item 205–216, combinations 508–853, context 301); the
  common row with the same index holds the user fields (101 user id, 121–129 profile, 109_14… the
  14-day behaviour lists). Indexes are local to a split, so files are paired by split.
- The processed layout (contracts/aliccp.toml) that torch-rechub and MTReclib-style libraries
  distribute: one CSV per split (ali_ccp_train.csv, ali_ccp_val.csv, ali_ccp_test.csv) with the header
  `click,purchase,101,121,…,853,301,109_14,110_14,127_14,150_14,D109_14,…,D853`: per field its
  label-encoded id, and for eight fields a D column with the id's value.

Mapping:

- Features: a contract column f<field> is the field's id, d<field> its value (101 → f101, D109_14 →
  d109_14). Raw: of a field occurring several times in a row (behaviour lists, 210, combinations)
  the last occurrence gives both, the rule the processed layout was built with, so both layouts
  carry the same information per field; a field in both rows takes the common row's, as there; an
  absent field is null. Processed: the column of that name (`D<field>` for d<field>), which the file
  must have. Fields or columns the contract does not name are reported as not imported.
- scenario = "ccp_<field 301>" (301 is the context field, in the paper "a categorical expression of
  position"; the MSL literature uses it as the scenario, three values in practice). Raw: its
  feature id; processed: its code (ccp_1, ccp_2, ccp_3).
- user_id ← field 101 (raw: of the common row); item_id ← field 205; stable hashes of the id's text.
- request_id: raw, "ccp-<split>-<common_feature_index>" (the rows sharing one user context). The
  processed layout dropped the index: a request is a run of consecutive rows of one known user
  (101 ≠ 0, 0 being "seen < 10 times in train") in a file, "ccp-<file stem>-<its first row>" (exact
  where a file keeps the release's order, as train does; the shuffled val / test give short runs).
  position = row order within the request.
- impression_id: raw "ccp-<split>-<sample_id>"; processed "ccp-<file stem>-<data row number>".
- click = click, conversion = buy / purchase (which implies click; a row with it and no click is malformed).
- One stream for the whole release (scenarios interleave, so each covers every day): the splits /
  files in the order given (a directory: train, val, test, then by name), rows in file order.
- Malformed: wrong field count (bad_column_count), label not 0/1 (bad_label), buy without click
  (conversion_without_click), a value that is not of its column's type (bad_value), no field 101 /
  205 / 301 (missing_user_id (processed) / missing_item_id / missing_scenario); raw only: feature_num
  not matching the list (feature_num_mismatch), an index absent from the common file
  (unknown_common_feature_index), common rows: common_* reasons. Files are streamed; of the raw
  common file only the wanted fields' text per index is kept in memory (as Arrow strings).
- Refused before anything is written (`ImportRefused`): a file whose first line is not of its layout
  (a raw file with a header, an AliExpress CSV, an empty or cut file), a processed CSV without a
  column the contract declares, a path that is neither layout, raw and processed files in one import
  (each has its own contract), a contract column that is not f<field> / d<field>.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv
from tqdm import tqdm

from msmt import contract as contracts
from msmt.settings import Settings
from pipeline.importers import (
    CCP_COMMON_ROW,
    CCP_PROCESSED,
    CCP_SKELETON_ROW,
    LABELS,
    TRUE,
    Batch,
    ImportRefused,
    RawWriter,
    check_csv,
    count_lines,
    csv_blocks,
    csv_inputs,
    first_line,
    first_reason,
    is_in,
    load_contract,
    refuse,
    row_text,
    shape,
    typed,
)

CONTRACT = "aliccp.toml"  # shipped contracts (contracts/): the processed layout's, the raw release's
RAW_CONTRACT = "aliccp_raw.toml"
SKELETON = "sample_skeleton_"
COMMON = "common_features_"
USER_FIELD = "101"
ITEM_FIELD = "205"
SCENARIO_FIELD = "301"
LABEL_COLUMNS = ("click", "purchase")  # the processed layout's labels
PROCESSED_KEYS = (*LABEL_COLUMNS, USER_FIELD, ITEM_FIELD, SCENARIO_FIELD)  # what makes a CSV that layout
BATCH_ROWS = 50_000
BLOCK_SIZE = 64 << 20  # bytes per streamed block of a processed CSV
_COLUMN = re.compile(r"([fd])(\d+(?:_\d+)?)")  # f<field> (its id) / d<field> (its value)
_SPLITS = {"train": 0, "val": 1, "test": 2}

Source = tuple[str, bool]  # (field, whether its value rather than its id)


@dataclass(frozen=True)
class Release:
    """What the paths hold: raw (split, skeleton, common) pairs, or processed CSVs (never both)."""

    pairs: list[tuple[str, Path, Path]]
    processed: list[Path]


@dataclass(frozen=True)
class Common:
    """A raw split's common_features: index → row of `values` (user id text, then each wanted field's text)."""

    rows: dict[str, int]
    values: pa.Table


def discover(paths: Sequence[Path]) -> Release:
    """The raw pairs (a directory: its sample_skeleton_* files) or processed CSVs (by their header)."""
    pairs: list[tuple[str, Path, Path]] = []
    processed: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            skeletons = sorted(path.glob(f"{SKELETON}*.csv"), key=_split_order)
            others = [f for f in sorted(path.glob("*.csv"), key=_split_order) if not f.name.startswith(SKELETON)]
            found = [f for f in others if shape(first_line(f)) == CCP_PROCESSED]
            if not skeletons and not found:
                seen = [f"{f.name} starts with {shape(first_line(f))}" for f in sorted(path.glob("*.csv"))[:3]]
                what = f"no {SKELETON}*.csv nor processed Ali-CCP CSV in it"
                raise refuse(path, what + "".join(f"; {text}" for text in seen))
            processed += found
        elif path.is_file() and shape(first_line(path)) == CCP_PROCESSED:
            processed.append(path)
            continue
        elif path.is_file() and path.name.startswith(SKELETON):
            skeletons = [path]
        elif path.is_file():
            raise refuse(path, f"neither named {SKELETON}<split>.csv nor a processed Ali-CCP CSV; "
                               f"it starts with {shape(first_line(path))}")  # fmt: skip
        else:
            raise FileNotFoundError(f"not a directory or {SKELETON}<split>.csv file: {path}")
        for skeleton in skeletons:
            split = skeleton.stem[len(SKELETON) :]
            common = skeleton.with_name(f"{COMMON}{split}{skeleton.suffix}")
            if not common.exists():
                raise FileNotFoundError(f"{skeleton} has no {common.name} beside it")
            pairs.append((split, skeleton, common))
    if pairs and processed:
        raise ImportRefused(f"{processed[0]} is the processed Ali-CCP layout, {pairs[0][1]} the raw release: "
                            "import one layout at a time (each has its own contract)")  # fmt: skip
    twice = [stem for stem, n in Counter(f.stem for f in processed).items() if n > 1]
    if twice:
        raise ImportRefused(f"more than one {twice[0]}.csv: their ids would collide")
    return Release(pairs, processed)


def check_layout(pairs: Sequence[tuple[str, Path, Path]]) -> None:
    """Refuse a pair whose files do not start with a raw row of their kind: before the lake is touched."""
    for _, skeleton, common in pairs:
        for path, expected in ((skeleton, CCP_SKELETON_ROW), (common, CCP_COMMON_ROW)):
            found = shape(first_line(path))
            if found != expected:
                raise refuse(path, f"its first line should be {expected}; it is {found}")


def sources(inputs: Sequence[contracts.Column], contract: contracts.Contract) -> dict[str, Source]:
    """Contract column → the Ali-CCP field it holds: f<field> its id, d<field> its value."""
    found = {column.name: _COLUMN.fullmatch(column.name) for column in inputs}
    for name, match in found.items():
        if match is None:
            raise ImportRefused(f"contract {contract.source}: table impressions, column {name}: an Ali-CCP column "
                                "is f<field> (the field's id) or d<field> (its value), e.g. f205, d109_14")  # fmt: skip
    return {name: (match.group(2), match.group(1) == "d") for name, match in found.items() if match}


def import_aliccp(
    settings: Settings,
    paths: Sequence[Path],
    start: str,
    days: int,
    scenarios: Sequence[str] | None = None,
    device: str = "unknown",
    contract: str | Path | None = None,
    batch_rows: int = BATCH_ROWS,
    progress: bool = True,
) -> dict:
    """Import Ali-CCP (raw pairs or processed CSVs) into raw partitions for `days` days from `start`.

    `contract`: the data contract to write (default: the layout's, contracts/aliccp.toml for the
    processed CSVs, contracts/aliccp_raw.toml for the raw release). Returns the import report.
    """
    release = discover(paths)
    data_contract = load_contract(settings, contract, CONTRACT if release.processed else RAW_CONTRACT)
    with RawWriter(settings, data_contract, start, days, device=device, scenarios=scenarios) as writer:
        wanted = sources(writer.inputs, data_contract)
        if release.processed:
            _import_processed(writer, release.processed, wanted, batch_rows, progress)
        else:
            _import_raw(writer, release.pairs, wanted, batch_rows, progress)
        return writer.close()


# --- the processed layout --------------------------------------------------------------------------------


def _import_processed(
    writer: RawWriter, files: Sequence[Path], wanted: dict[str, Source], batch_rows: int, progress: bool
) -> None:
    headers = {name: ("D" if value else "") + field for name, (field, value) in wanted.items()}
    for path in files:  # fail before touching the lake
        writer.leave_out(path, check_csv(path, PROCESSED_KEYS, headers, writer.contract))
    sizes = [count_lines(f) - 1 for f in files]
    total = max(sum(sizes), 1)
    offset = 0
    for path, size in zip(files, sizes, strict=True):
        with tqdm(total=size, desc=f"aliccp {path.stem}", unit="row", disable=not progress) as bar:
            for batch in _processed_batches(path, headers, writer, offset, total, batch_rows):
                writer.add(batch)
                bar.update(len(batch))
        offset += size


class _Runs:
    """A processed file's requests: runs of consecutive rows of one known user (field 101 ≠ 0), across batches."""

    def __init__(self) -> None:
        self.user, self.start = np.iinfo(np.int64).min, 0  # the last row's user, its run's first row

    def starts(self, user: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """The first row of each row's run (`rows`: the rows' numbers, increasing)."""
        if not len(rows):
            return rows
        new = (user != np.r_[self.user, user[:-1]]) | (user == 0)
        start = np.maximum.accumulate(np.where(new, rows, self.start))
        self.user, self.start = int(user[-1]), int(start[-1])
        return start


def _processed_batches(
    path: Path,
    headers: dict[str, str],
    writer: RawWriter,
    offset: int,
    total: int,
    batch_rows: int,
) -> Iterator[Batch]:
    """Stream one processed CSV as Batches of at most `batch_rows`; malformed rows go to `writer.reject`."""
    where = path.name

    def on_invalid(row: pv.InvalidRow) -> str:
        writer.reject("bad_column_count", f"{where}:{row.number}: {row.text}")
        return "skip"

    prefix, runs, seen = f"ccp-{path.stem}-", _Runs(), 0
    columns = list(dict.fromkeys([*PROCESSED_KEYS, *headers.values()]))
    for block in csv_blocks(path, columns, BLOCK_SIZE, on_invalid):
        for record in (block.slice(k, batch_rows) for k in range(0, block.num_rows, batch_rows)):
            n = record.num_rows
            number = np.arange(seen, seen + n)
            seen += n
            click_s, buy_s = (record.column(c) for c in LABEL_COLUMNS)
            click, buy = is_in(click_s, TRUE), is_in(buy_s, TRUE)
            (user, bad_user), (item, bad_item), (scenario, bad_scenario) = (
                typed(record.column(field), pa.int64()) for field in (USER_FIELD, ITEM_FIELD, SCENARIO_FIELD)
            )
            inputs, bad_value = csv_inputs(record, writer.inputs, headers)
            reasons = first_reason(
                (~(is_in(click_s, LABELS) & is_in(buy_s, LABELS)), "bad_label"),
                (buy & ~click, "conversion_without_click"),
                (bad_value | bad_user | bad_item | bad_scenario, "bad_value"),
                (user.is_null().to_numpy(zero_copy_only=False), "missing_user_id"),
                (item.is_null().to_numpy(zero_copy_only=False), "missing_item_id"),
                (scenario.is_null().to_numpy(zero_copy_only=False), "missing_scenario"),
            )
            for k in np.flatnonzero(reasons != "").tolist():
                writer.reject(str(reasons[k]), f"{where}:{number[k] + 2}: {row_text(record, k)}")
            good = np.flatnonzero(reasons == "")
            rows = pa.array(good, pa.int64())
            user, item, scenario = user.take(rows), item.take(rows), scenario.take(rows)
            starts = runs.starts(user.to_numpy(zero_copy_only=False), number[good])
            yield Batch(
                impression_id=pa.array([f"{prefix}{k}" for k in number[good].tolist()], pa.string()),
                request_key=pa.array([f"{prefix}{k}" for k in starts.tolist()], pa.string()),
                scenario=pc.binary_join_element_wise("ccp_", scenario.cast(pa.string()), ""),
                user_key=user.cast(pa.string()),
                item_key=item.cast(pa.string()),
                click=click[good],
                conversion=buy[good],
                frac=(offset + number[good]) / total,
                inputs={name: values.take(rows) for name, values in inputs.items()},
            )


# --- the raw release -------------------------------------------------------------------------------------


def _import_raw(
    writer: RawWriter,
    pairs: Sequence[tuple[str, Path, Path]],
    wanted: dict[str, Source],
    batch_rows: int,
    progress: bool,
) -> None:
    check_layout(pairs)
    fields = tuple(wanted.values())
    used = {USER_FIELD, ITEM_FIELD, SCENARIO_FIELD, *(field for field, _ in fields)}
    sizes = [count_lines(skeleton) for _, skeleton, _ in pairs]
    total = max(sum(sizes), 1)
    offset = 0
    for (split, skeleton, common_path), size in zip(pairs, sizes, strict=True):
        seen: set[str] = set()  # fields met in the split's rows
        common = _read_common(common_path, fields, writer, seen, progress)
        writer.leave_out(common_path, sorted(seen - used))
        seen.clear()
        with tqdm(total=size, desc=f"aliccp {split}", unit="row", disable=not progress) as bar:
            for batch in _raw_batches(skeleton, split, common, fields, writer, seen, offset, total, batch_rows):
                writer.add(batch)
                bar.update(len(batch))
        writer.leave_out(skeleton, sorted(seen - used))
        offset += size


def feature_fields(features: str) -> dict[str, tuple[str, str]]:
    """field → (id, value) of a feature_list; a field occurring several times keeps its last occurrence."""
    found = {}
    for feature in features.split("\x01"):
        field, _, rest = feature.partition("\x02")
        found[field] = rest.partition("\x03")[::2]
    return found


def _read_common(path: Path, fields: tuple[Source, ...], writer: RawWriter, seen: set[str], progress: bool) -> Common:
    """common_feature_index → the user's id and the wanted fields' text (Arrow strings: compact)."""
    rows: dict[str, int] = {}
    chunks, pending = [], []
    with open(path, "rb") as f:
        for number, raw in enumerate(tqdm(f, desc=f"common {path.name}", unit="row", disable=not progress), 1):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            parts = line.split(",", 2)
            reason = None
            if len(parts) != 3:
                reason = "common_bad_column_count"
            elif not _feature_num_ok(parts[1], parts[2]):
                reason = "common_feature_num_mismatch"
            elif USER_FIELD not in (found := feature_fields(parts[2])):
                reason = "common_missing_user_id"
            if reason:
                writer.reject(reason, f"{path.name}:{number}: {line}")
                continue
            seen.update(found)
            rows[parts[0]] = len(rows)
            pending.append((found[USER_FIELD][0], *_pick(found, fields)))
            if len(pending) >= BATCH_ROWS:
                chunks.append(_text_table(pending, len(fields)))
                pending = []
    chunks.append(_text_table(pending, len(fields)))
    return Common(rows, pa.concat_tables(chunks))


def _raw_batches(
    path: Path,
    split: str,
    common: Common,
    fields: tuple[Source, ...],
    writer: RawWriter,
    seen: set[str],
    offset: int,
    total: int,
    batch_rows: int,
) -> Iterator[Batch]:
    rows: list[tuple] = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            row, reason = _parse(line, common.rows, fields, seen)
            if reason:
                writer.reject(reason, f"{path.name}:{number + 1}: {line}")
            else:
                rows.append((number + 1, *row, (offset + number) / total))
            if len(rows) >= batch_rows:
                yield _batch(rows, split, common, writer, path.name)
                rows = []
    if rows:
        yield _batch(rows, split, common, writer, path.name)


def _parse(
    line: str, common_rows: dict[str, int], fields: tuple[Source, ...], seen: set[str]
) -> tuple[tuple, str | None]:
    """(sample_id, index, common row, click, buy, item, scenario, *wanted fields' text) or a reason."""
    parts = line.split(",", 5)
    if len(parts) != 6:
        return (), "bad_column_count"
    sample_id, click, buy, index, num, features = parts
    if click not in ("0", "1") or buy not in ("0", "1"):
        return (), "bad_label"
    if buy == "1" and click == "0":
        return (), "conversion_without_click"
    if not _feature_num_ok(num, features):
        return (), "feature_num_mismatch"
    found = feature_fields(features)
    seen.update(found)
    if ITEM_FIELD not in found:
        return (), "missing_item_id"
    if SCENARIO_FIELD not in found:
        return (), "missing_scenario"
    row = common_rows.get(index)
    if row is None:
        return (), "unknown_common_feature_index"
    item, scenario = found[ITEM_FIELD][0], found[SCENARIO_FIELD][0]
    return (sample_id, index, row, click == "1", buy == "1", item, scenario, *_pick(found, fields)), None


def _batch(rows: list[tuple], split: str, common: Common, writer: RawWriter, where: str) -> Batch:
    """Parsed skeleton rows joined with their common rows; a row with a bad value goes to `writer.reject`."""
    number, sample_id, index, common_row, click, buy, item, scenario, *texts, frac = zip(*rows, strict=True)
    prefix = f"ccp-{split}-"
    found = common.values.take(pa.array(common_row, pa.int64()))
    inputs, bad = {}, {}
    for k, column in enumerate(writer.inputs):
        text = pc.coalesce(found.column(k + 1).combine_chunks(), pa.array(texts[k], pa.string()))  # common first
        inputs[column.name], wrong = typed(text, column.arrow_type)
        for j in np.flatnonzero(wrong).tolist():
            bad.setdefault(j, f"{where}:{number[j]}: {column.name} = {text[j].as_py()!r}")
    for example in bad.values():
        writer.reject("bad_value", example)

    def strings(values: Sequence[str], pre: str = "") -> pa.Array:
        return pa.array([pre + v for v in values], pa.string())

    batch = Batch(
        impression_id=strings(sample_id, prefix),
        request_key=strings(index, prefix),
        scenario=strings(scenario, "ccp_"),
        user_key=found.column(0).combine_chunks(),
        item_key=strings(item),
        click=np.array(click, dtype=bool),
        conversion=np.array(buy, dtype=bool),
        frac=np.array(frac, dtype=np.float64),
        inputs=inputs,
    )
    return batch.take(np.setdiff1d(np.arange(len(rows)), list(bad))) if bad else batch


def _pick(found: dict[str, tuple[str, str]], fields: tuple[Source, ...]) -> list[str | None]:
    """Each wanted (field, value?) of a parsed feature_list: the id's or the value's text, None if absent."""
    return [found[field][value] if field in found else None for field, value in fields]


def _text_table(rows: list[tuple], width: int) -> pa.Table:
    columns = list(zip(*rows, strict=True)) if rows else [()] * (width + 1)
    return pa.table({str(k): pa.array(values, pa.string()) for k, values in enumerate(columns)})


def _feature_num_ok(num: str, features: str) -> bool:
    return num.isdigit() and int(num) == (features.count("\x01") + 1 if features else 0)


def _split_order(path: Path) -> tuple[int, str]:
    """train, val, test, then the others, each by name (a split word anywhere in the stem: ali_ccp_val)."""
    words = path.stem.split("_")
    return (min((rank for split, rank in _SPLITS.items() if split in words), default=len(_SPLITS)), path.name)
