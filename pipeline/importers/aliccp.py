"""Ali-CCP (Tianchi dataset 408, "Alibaba Click and Conversion Prediction") → msmt raw logs.

Source: Taobao recommendation impressions with click and purchase labels, released with ESMM
(Ma et al., "Entire Space Multi-Task Model", SIGIR 2018, arXiv:1804.07931). Each split (train,
test) is a pair of comma-separated files without header:

    sample_skeleton_<split>.csv:  sample_id, click, buy, common_feature_index, feature_num, feature_list
    common_features_<split>.csv:  common_feature_index, feature_num, feature_list

feature_list = `field\\x02feature_id\\x03value` joined by `\\x01`; feature_num is its length. A
skeleton row holds the per-impression fields (item 205–216, combinations 508–853, context 301); the
common row with the same index holds the user fields (101 user id, 121–129 profile, 109_14… the
14-day behaviour lists). Indexes are local to a split, so files are paired by split. Mapping:

- scenario = "ccp_<feature_id of field 301>" (301 is the context field, in the paper "a categorical
  expression of position"; the MSL literature uses it as the scenario, three values in practice).
- user_id ← field 101 of the common row; item_id ← field 205; both stable hashes of the feature id.
- user_segment ← field 122 (user profile group id), item_category ← field 206 (item category id),
  item_price_bucket ← field 216 (brand id: the release has no price), each hashed into the
  simulator's vocabulary; a missing field hashes the empty key. Other fields are not imported.
- request_id = "ccp-<split>-<common_feature_index>" (the rows sharing one user context);
  position = row order within it; impression_id = "ccp-<split>-<sample_id>".
- click = click, conversion = buy (buy implies click; a row with buy and no click is malformed).
- One stream for the whole release (scenarios interleave, so each covers every day): the splits in
  the order given (train before test, as in the release), rows in file order.
- Malformed: wrong field count (bad_column_count), label not 0/1 (bad_label), buy without click
  (conversion_without_click), feature_num not matching the list (feature_num_mismatch), no field
  205 / 301 (missing_item_id / missing_scenario), an index absent from the common file
  (unknown_common_feature_index); common rows: common_* reasons. Both files are streamed line by
  line; only (user id, segment) per common index is kept in memory.
- Refused before anything is written (`ImportRefused`): a file whose first line is not a raw row of
  its kind (a header, the processed Ali-CCP CSV `click,purchase,101,…`, an AliExpress CSV, an
  empty or cut file); a path that is not a sample_skeleton_<split>.csv or a directory holding one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from msmt.settings import Settings
from pipeline.importers import (
    CCP_COMMON_ROW,
    CCP_SKELETON_ROW,
    Batch,
    RawWriter,
    count_lines,
    first_line,
    refuse,
    shape,
)

SKELETON = "sample_skeleton_"
COMMON = "common_features_"
USER_FIELD = "101"
SEGMENT_FIELD = "122"
ITEM_FIELD = "205"
CATEGORY_FIELD = "206"
PRICE_FIELD = "216"
SCENARIO_FIELD = "301"
BATCH_ROWS = 200_000


def discover(paths: Sequence[Path]) -> list[tuple[str, Path, Path]]:
    """(split, skeleton, common) per split: a directory gives its pairs (train, test, then by name)."""
    pairs = []
    for path in map(Path, paths):
        if path.is_dir():
            skeletons = sorted(path.glob(f"{SKELETON}*.csv"), key=_split_order)
            if not skeletons:
                found = [f"{f.name} starts with {shape(first_line(f))}" for f in sorted(path.glob("*.csv"))[:3]]
                raise refuse(path, f"no {SKELETON}*.csv in it" + "".join(f"; {text}" for text in found))
        elif path.is_file() and path.name.startswith(SKELETON):
            skeletons = [path]
        elif path.is_file():
            raise refuse(path, f"not named {SKELETON}<split>.csv; it starts with {shape(first_line(path))}")
        else:
            raise FileNotFoundError(f"not a directory or {SKELETON}<split>.csv file: {path}")
        for skeleton in skeletons:
            split = skeleton.stem[len(SKELETON) :]
            common = skeleton.with_name(f"{COMMON}{split}{skeleton.suffix}")
            if not common.exists():
                raise FileNotFoundError(f"{skeleton} has no {common.name} beside it")
            pairs.append((split, skeleton, common))
    return pairs


def check_layout(pairs: Sequence[tuple[str, Path, Path]]) -> None:
    """Refuse a pair whose files do not start with a raw row of their kind: before the lake is touched."""
    for _, skeleton, common in pairs:
        for path, expected in ((skeleton, CCP_SKELETON_ROW), (common, CCP_COMMON_ROW)):
            found = shape(first_line(path))
            if found != expected:
                raise refuse(path, f"its first line should be {expected}; it is {found}")


def import_aliccp(
    settings: Settings,
    paths: Sequence[Path],
    start: str,
    days: int,
    scenarios: Sequence[str] | None = None,
    device: str = "unknown",
    batch_rows: int = BATCH_ROWS,
    progress: bool = True,
) -> dict:
    """Import Ali-CCP splits into raw partitions for `days` days from `start`; returns the report."""
    pairs = discover(paths)
    check_layout(pairs)
    sizes = [count_lines(skeleton) for _, skeleton, _ in pairs]
    total = max(sum(sizes), 1)
    offset = 0
    with RawWriter(settings, start, days, device=device, scenarios=scenarios) as writer:
        for (split, skeleton, common), size in zip(pairs, sizes, strict=True):
            users = _read_common(common, writer, progress)
            with tqdm(total=size, desc=f"aliccp {split}", unit="row", disable=not progress) as bar:
                for batch in _batches(skeleton, split, users, writer, offset, total, batch_rows):
                    writer.add(batch)
                    bar.update(len(batch))
            offset += size
        return writer.close()


def first_feature(features: str, field: str) -> str | None:
    """feature_id of the first `field` in a feature_list, None if absent."""
    if features.startswith(f"{field}\x02"):
        at = len(field) + 1
    else:
        at = features.find(f"\x01{field}\x02")
        if at < 0:
            return None
        at += len(field) + 2
    end = features.find("\x03", at)
    return features[at:end] if end >= 0 else None


def _read_common(path: Path, writer: RawWriter, progress: bool) -> dict[str, tuple[str, str]]:
    """common_feature_index → (user feature id, segment feature id)."""
    users: dict[str, tuple[str, str]] = {}
    with open(path, "rb") as f:
        for number, raw in enumerate(tqdm(f, desc=f"common {path.name}", unit="row", disable=not progress), 1):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            parts = line.split(",", 2)
            reason = None
            if len(parts) != 3:
                reason = "common_bad_column_count"
            elif not _feature_num_ok(parts[1], parts[2]):
                reason = "common_feature_num_mismatch"
            elif (user := first_feature(parts[2], USER_FIELD)) is None:
                reason = "common_missing_user_id"
            if reason:
                writer.reject(reason, f"{path.name}:{number}: {line}")
                continue
            users[parts[0]] = (user, first_feature(parts[2], SEGMENT_FIELD) or "")
    return users


def _batches(
    path: Path,
    split: str,
    users: dict[str, tuple[str, str]],
    writer: RawWriter,
    offset: int,
    total: int,
    batch_rows: int,
) -> Iterator[Batch]:
    rows: list[tuple] = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            row, reason = _parse(line, users)
            if reason:
                writer.reject(reason, f"{path.name}:{number + 1}: {line}")
            else:
                rows.append((*row, (offset + number) / total))
            if len(rows) >= batch_rows:
                yield _batch(rows, split)
                rows = []
    if rows:
        yield _batch(rows, split)


def _parse(line: str, users: dict[str, tuple[str, str]]) -> tuple[tuple, str | None]:
    """(sample_id, index, click, buy, user, segment, item, category, price, scenario) or a reason."""
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
    item = first_feature(features, ITEM_FIELD)
    if item is None:
        return (), "missing_item_id"
    scenario = first_feature(features, SCENARIO_FIELD)
    if scenario is None:
        return (), "missing_scenario"
    user = users.get(index)
    if user is None:
        return (), "unknown_common_feature_index"
    category = first_feature(features, CATEGORY_FIELD) or ""
    price = first_feature(features, PRICE_FIELD) or ""
    return (sample_id, index, click == "1", buy == "1", *user, item, category, price, scenario), None


def _batch(rows: list[tuple], split: str) -> Batch:
    sample_id, index, click, buy, user, segment, item, category, price, scenario, frac = zip(*rows, strict=True)
    prefix = f"ccp-{split}-"

    def strings(values: Sequence[str], pre: str = "") -> pa.Array:
        return pa.array([pre + v for v in values], pa.string())

    return Batch(
        impression_id=strings(sample_id, prefix),
        request_key=strings(index, prefix),
        scenario=strings(scenario, "ccp_"),
        user_key=strings(user),
        item_key=strings(item),
        segment_key=strings(segment),
        category_key=strings(category),
        price_key=strings(price),
        click=np.array(click, dtype=bool),
        conversion=np.array(buy, dtype=bool),
        frac=np.array(frac, dtype=np.float64),
    )


def _feature_num_ok(num: str, features: str) -> bool:
    return num.isdigit() and int(num) == (features.count("\x01") + 1 if features else 0)


def _split_order(path: Path) -> tuple[int, str]:
    split = path.stem[len(SKELETON) :]
    return ({"train": 0, "test": 1}.get(split, 2), split)
