"""Encoding a training-set table into tensors, reading it back, splitting by day."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from msmt import schemas
from msmt.settings import Settings
from training.data import (
    FeatureSpec,
    TensorData,
    default_spec,
    encode,
    encoding_report,
    load_split,
    read_held_out,
    read_training_set,
    rows_per_day,
    split_by_day,
)

TASKS = ("click", "conversion")
ROOT = Path(__file__).resolve().parents[2]


def training_table(n: int = 6, seed: int = 0) -> pa.Table:
    """A small training set with every SAMPLES and feature column, some nulls, two days."""
    rng = np.random.default_rng(seed)
    columns: dict[str, pa.Array] = {}
    for f in schemas.SAMPLES:
        if f.name == "hist_item_ids":
            values = [[int(i) for i in rng.integers(1, 100, rng.integers(0, 14))] for _ in range(n)]
            values[0] = None
        elif pa.types.is_string(f.type):
            values = [f"{f.name}-{i // 2}" for i in range(n)]
            if f.name == "device":
                values = [["ios", "android", "web"][i % 3] for i in range(n)]
        elif pa.types.is_timestamp(f.type):
            values = [0] * n
        elif f.name == "scenario_id":
            values = [i % 4 for i in range(n)]
        else:
            values = [int(v) for v in rng.integers(0, 2 if f.name in TASKS else 50, n)]
        columns[f.name] = pa.array(values, type=f.type)
    for view, view_schema in schemas.FEATURES.items():
        for name in schemas.feature_columns(view):
            values = [None if i == 1 else (i * 3 if pa.types.is_integer(view_schema.field(name).type) else 0.1 * i)
                      for i in range(n)]  # fmt: skip
            columns[name] = pa.array(values, type=view_schema.field(name).type)
    columns["ds"] = pa.array(["2024-01-01" if i < n // 2 else "2024-01-02" for i in range(n)])
    return pa.table(columns)


@pytest.fixture
def spec() -> FeatureSpec:
    return default_spec(4)


def test_default_spec_covers_contract(spec):
    assert spec.sparse_fields[:3] == ["user_id", "item_id", "scenario_id"]
    assert len(spec.dense_fields) == sum(len(schemas.feature_columns(v)) for v in schemas.FEATURES) == 20
    assert "u_impressions" in spec.log1p_fields and "u_ctr" not in spec.log1p_fields
    assert FeatureSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_encode_shapes_ranges_and_nulls(spec):
    table = training_table()
    data = encode(table, spec)
    n = table.num_rows
    assert data.sparse.shape == (n, 9) and data.sparse.dtype == torch.long
    assert data.dense.shape == (n, 20) and data.seq.shape == (n, 10)
    assert data.labels.shape == (n, 2) and bool(data.label_mask.all())
    assert (data.sparse >= 0).all() and (data.sparse < torch.tensor(spec.vocab_sizes)).all()
    assert torch.equal(data.scenario, torch.tensor([i % 4 for i in range(n)]))
    assert torch.equal(data.sparse[:, 2], data.scenario + 1)  # small ints are the identity, shifted past 0
    assert bool((data.dense[1] == 0).all())  # null features → 0
    assert data.dense[2, 0] == pytest.approx(np.log1p(6.0))  # counts → log1p
    assert data.seq[0].sum() == 0  # null history → all padding
    first, second, third = data.group[0::2].tolist()  # request_id-0, -1, -2: two rows each
    assert torch.equal(data.group, torch.tensor([first, first, second, second, third, third]))
    assert len({first, second, third}) == 3 and min(first, second, third) >= 0


def test_an_id_outside_its_vocabulary_is_unknown_never_another_ids_row(spec):
    rows = spec.vocab("position")  # ids 0 .. rows-2 are the identity shifted past 0
    table = training_table()
    table = table.set_column(
        table.schema.get_field_index("position"),
        "position",
        pa.array([0, rows - 2, rows - 1, rows + 5, -1, None], pa.int32()),
    )
    assert encode(table, spec).sparse[:, spec.sparse_fields.index("position")].tolist() == [1, rows - 1, 0, 0, 0, 0]
    report = encoding_report(table, spec)
    assert report["position"]["out_of_vocab"] == pytest.approx(3 / 5)  # of the non-null ids
    assert report["user_segment"]["out_of_vocab"] == 0.0 and 0.0 <= report["user_id"]["collided"] < 1.0


def test_colliding_hashed_ids_are_counted():
    tiny = FeatureSpec(sparse_fields=["user_id", "item_id"], vocab_sizes=[3, 1000], dense_fields=[], seq_field=None)
    table = pa.table({"user_id": pa.array(range(50), pa.int64()), "item_id": pa.array([7] * 50, pa.int64())})
    report = encoding_report(table, tiny)
    assert report["user_id"]["collided"] == 1.0  # 50 ids in 2 rows: every one shares
    assert report["item_id"]["collided"] == 0.0  # one distinct id alone in its row


def test_encoding_in_pieces_gives_the_same_tensors(spec):
    """Every column is encoded row by row (ids hashed, requests digested), so chunks agree."""
    table = training_table(n=12, seed=4)
    whole = encode(table, spec)
    pieces = [encode(table.slice(start, 5), spec) for start in range(0, 12, 5)]
    for name in ("sparse", "dense", "seq", "scenario", "labels", "label_mask", "group"):
        assert torch.equal(torch.cat([getattr(p, name) for p in pieces]), getattr(whole, name)), name


def test_sequence_shares_item_hash_and_truncates(spec):
    table = training_table().slice(0, 2)
    table = table.set_column(table.schema.get_field_index("hist_item_ids"), "hist_item_ids",
                             pa.array([list(range(1, 15)), [7]], pa.list_(pa.int64())))  # fmt: skip
    table = table.set_column(table.schema.get_field_index("item_id"), "item_id", pa.array([7, 1], pa.int64()))
    data = encode(table, spec)
    assert int((data.seq[0] > 0).sum()) == 10 and int((data.seq[1] > 0).sum()) == 1
    assert data.seq[1, 0] == data.sparse[0, 1]  # item 7 has one code in both places
    assert data.seq[0, 0] == data.sparse[1, 1]  # newest-first order kept


def test_hashing_is_stable_across_processes(spec):
    """Ids must not depend on PYTHONHASHSEED (Python's hash()) or the process."""
    script = (
        "from tests.unit.test_data import training_table; from training.data import default_spec, encode;"
        "print(encode(training_table(), default_spec(4)).sparse.sum(0).tolist())"
    )
    env = {"PYTHONHASHSEED": "123"}  # this process has a random one
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env, cwd=ROOT
    ).stdout
    assert out == f"{encode(training_table(), spec).sparse.sum(0).tolist()}\n"


def test_devices_do_not_collide(spec):
    data = encode(training_table(), spec)
    assert len(set(data.sparse[:3, 4].tolist())) == 3


def test_null_label_is_masked(spec):
    table = training_table()
    idx = table.schema.get_field_index("conversion")
    table = table.set_column(idx, "conversion", pa.array([None, 1, 0, 0, 1, 0], pa.int32()))
    data = encode(table, spec)
    assert data.label_mask[:, 1].tolist() == [False, True, True, True, True, True]
    assert bool(data.label_mask[:, 0].all()) and data.labels[0, 1] == 0
    serving = encode(table.drop_columns(["click", "conversion"]), spec)
    assert not serving.label_mask.any() and torch.equal(serving.sparse, data.sparse)


def test_missing_column_is_a_clear_error(spec):
    with pytest.raises(ValueError, match="u_ctr"):
        encode(training_table().drop_columns(["u_ctr"]), spec)


def test_batches_slice_everything_once(spec):
    data = encode(training_table(), spec)
    batches = list(data.batches(4, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert [len(b["sparse"]) for b in batches] == [4, 2]
    assert set(batches[0]) == {"sparse", "dense", "seq", "scenario", "labels", "label_mask", "group"}
    seen = torch.cat([b["scenario"] for b in batches]).sort().values
    assert torch.equal(seen, data.scenario.sort().values)
    again = list(data.batches(4, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(batches[0]["sparse"], again[0]["sparse"])
    plain = next(data.batches(6, shuffle=False))
    assert torch.equal(plain["sparse"], data.sparse)


def test_select_and_to(spec):
    data = encode(training_table(), spec)
    part = data.select(data.scenario == 1)
    assert isinstance(part, TensorData) and len(part) == 2 and bool((part.scenario == 1).all())
    assert len(data.select(np.array([0, 5]))) == 2
    assert data.to("cpu").sparse.device.type == "cpu"


def test_read_and_split_by_day(tmp_path):
    table = training_table()
    root = tmp_path / "training_sets" / "ds=2024-01-03"
    root.mkdir(parents=True)
    pq.write_table(table, root / "part-0.parquet")
    for path in (root, tmp_path / "training_sets"):
        back = read_training_set(Settings(), str(path))
        assert back.num_rows == table.num_rows
        assert sorted(set(back.column("ds").to_pylist())) == ["2024-01-01", "2024-01-02"]  # the files' ds wins
    train, held_out = split_by_day(back, "2024-01-02")
    assert train.num_rows == 3 and held_out.num_rows == 3
    assert set(train.column("ds").to_pylist()) == {"2024-01-01"}
    with pytest.raises(ValueError, match="no rows"):
        split_by_day(back, "2030-01-01")

    # From the files: the same split, read day by day (filters pushed down), tables not kept.
    assert rows_per_day(Settings(), str(root)) == {"2024-01-01": 3, "2024-01-02": 3}
    assert read_held_out(Settings(), str(root), "2024-01-02").equals(held_out)
    spec = default_spec(4)
    pq.write_table(training_table(n=8, seed=5), root / "part-1.parquet")  # a second file: order across files
    back = read_training_set(Settings(), str(root))
    train, held_out = split_by_day(back, "2024-01-02")
    train_data, held_out_data = load_split(Settings(), str(root), spec, "2024-01-02")
    for got, want in ((train_data, encode(train, spec)), (held_out_data, encode(held_out, spec))):
        assert len(got) == len(want) and all(
            torch.equal(getattr(got, f.name), getattr(want, f.name)) for f in fields(got)
        )
    with pytest.raises(ValueError, match="no rows"):
        load_split(Settings(), str(root), spec, "2030-01-01")


def test_training_stops_when_an_encoding_loses_more_than_the_settings_allow():
    from training.train import EncodingError, check_encoding

    settings = Settings(max_out_of_vocab_rate=0.01, max_hash_collision_rate=0.5)
    check_encoding(settings, {"position": {"out_of_vocab": 0.01}, "user_id": {"collided": 0.5}}, "set")  # at the bounds
    lossy = {"position": {"out_of_vocab": 0.02}, "user_id": {"collided": 0.6}}
    with pytest.raises(EncodingError, match=r"^set: position: 2\.0% of its ids are outside .*; user_id: 60\.0% of"):
        check_encoding(settings, lossy, "set")
