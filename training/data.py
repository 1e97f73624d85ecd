"""From a training-set table to tensors the models eat, without a per-row Python path.

`encode` turns a pyarrow table (SAMPLES columns + feature columns + `ds`) into a
`TensorData` of dense tensors; `TensorData.batches` gathers each batch where
the split lives (on the GPU when it fits there): an epoch is one permutation
plus one gather per batch, never a per-row Python call or a second copy of the split.

Id encoding (id 0 is reserved everywhere for null / unknown / sequence padding):
- `hashed_fields` and every string field: `1 + splitmix64(id) mod (vocab - 1)`;
  strings are dictionary-encoded first and only the distinct values hashed
  (blake2b), so codes are stable across processes and machines;
- other integer fields (small categoricals such as position or hour): `1 + id` for ids in
  `0 … vocab - 2`; an id outside its declared vocabulary is unknown (0), never wrapped onto
  another id's row. `encoding_report` counts such ids and hash collisions, and training
  stops when they pass the settings' bounds.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import torch

from msmt import contract as contracts
from msmt import storage
from msmt.contract import DERIVED, FROM_DATA, Contract
from msmt.ids import string_digests
from msmt.settings import Settings

log = logging.getLogger("msmt.data")

_BATCH_KEYS = ("sparse", "dense", "seq", "scenario", "labels", "label_mask", "group")


@dataclass
class FeatureSpec:
    """Which columns feed the model and how they are encoded (logged with the model)."""

    sparse_fields: list[str]
    vocab_sizes: list[int]  # table rows per sparse field, row 0 = null / unknown
    dense_fields: list[str]
    seq_field: str | None = "hist_item_ids"  # list<int64> column, newest first; None = no sequence
    seq_len: int = 10
    n_scenarios: int = 1
    tasks: tuple[str, ...] = ("click", "conversion")
    scenario_field: str = "scenario_id"  # int ids 0..n_scenarios-1 (also a sparse field)
    seq_vocab_field: str = "item_id"  # sparse field whose ids and table the sequence shares
    hashed_fields: list[str] = field(default_factory=lambda: ["user_id", "item_id"])
    log1p_fields: list[str] = field(default_factory=list)  # dense counts, squashed by log1p

    def __post_init__(self) -> None:
        self.tasks = tuple(self.tasks)
        if len(self.sparse_fields) != len(self.vocab_sizes):
            raise ValueError(f"{len(self.sparse_fields)} sparse fields but {len(self.vocab_sizes)} vocab sizes")
        if any(v < 2 for v in self.vocab_sizes):
            raise ValueError("every vocab size must be >= 2 (row 0 is reserved)")
        if self.seq_field is not None and self.seq_vocab_field not in self.sparse_fields:
            raise ValueError(f"seq_vocab_field {self.seq_vocab_field!r} is not a sparse field")
        if not self.tasks or self.n_scenarios < 1:
            raise ValueError("need at least one task and one scenario")

    def vocab(self, name: str) -> int:
        return self.vocab_sizes[self.sparse_fields.index(name)]

    def inputs(self) -> list[dict]:
        """Every input of the model with its role and encoding (the run's `feature_spec.json`)."""
        sparse = [{"name": name, "role": "sparse", "rows": rows,
                   "encoding": "hashed" if name in self.hashed_fields else "id (strings hashed)"}
                  for name, rows in zip(self.sparse_fields, self.vocab_sizes, strict=True)]  # fmt: skip
        dense = [{"name": name, "role": "dense", "transform": "log1p" if name in self.log1p_fields else "as is"}
                 for name in self.dense_fields]  # fmt: skip
        seq = [{"name": self.seq_field, "role": "sequence", "length": self.seq_len, "shares": self.seq_vocab_field}]
        return sparse + dense + (seq if self.seq_field is not None else [])

    def to_dict(self) -> dict:
        out = asdict(self)
        out["tasks"] = list(self.tasks)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> FeatureSpec:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def spec_for(
    contract: Contract, n_scenarios: int, data_vocab: dict[str, int] | None = None, id_vocab: int = 2**16
) -> FeatureSpec:
    """The model's inputs under a data contract: the user / item / scenario keys, the contract's sparse,
    dense and sequence columns, `hour`, and every feature view's aggregates, in that order.

    `data_vocab`: the table size of each `vocab = "data"` column (`data_vocab_sizes`). Columns declared
    with `hash_buckets` are hashed (strings always are); the others are ids 0..vocab-2.
    """
    sparse = contract.inputs("sparse")
    sized = {c.name for c in sparse if c.vocab == FROM_DATA}
    if sized - set(data_vocab or {}):
        raise ValueError(f"columns {sorted(sized)} are sized from the data: pass data_vocab (data_vocab_sizes)")
    declared = {c.name: (data_vocab or {}).get(c.name) or c.vocab or c.hash_buckets for c in sparse}
    vocab = {"user_id": id_vocab, "item_id": id_vocab, "scenario_id": n_scenarios + 1, **declared}
    vocab |= {name: size for name, (_, size) in DERIVED.items()}
    dense, counts = [c.name for c in contract.inputs("dense")], []
    for view in contract.features.values():
        for name in view.value_columns:
            dense.append(name)
            if pa.types.is_integer(view.schema.field(name).type):
                counts.append(name)
    sequence = contract.inputs("sequence")
    return FeatureSpec(
        sparse_fields=list(vocab),
        vocab_sizes=list(vocab.values()),
        dense_fields=dense,
        seq_field=sequence[0].name if sequence else None,
        n_scenarios=n_scenarios,
        tasks=contract.tasks,
        hashed_fields=["user_id", "item_id", *(c.name for c in sparse if c.hash_buckets)],
        log1p_fields=counts,
    )


def default_spec(n_scenarios: int, id_vocab: int = 2**16) -> FeatureSpec:
    """The spec of msmt's default contract (the simulator's logs): tests, benchmarks, the GPU machine."""
    return spec_for(contracts.load_cached(contracts.DEFAULT), n_scenarios, id_vocab=id_vocab)


def data_vocab_sizes(contract: Contract, training: pa.Table) -> dict[str, int]:
    """Table rows of each `vocab = "data"` column: its largest id in the training rows, plus one row per
    id and row 0. Ids first seen later are unknown (0), counted by `encoding_report`."""
    names = [c.name for c in contract.inputs("sparse") if c.vocab == FROM_DATA]
    return {name: int(pc.max(_column(training, name)).as_py() or 0) + 2 for name in names}


def training_spec(settings: Settings, uri: str, eval_ds: str) -> FeatureSpec:
    """The spec a training run on `uri` uses: the settings' contract, sized from the days before `eval_ds`."""
    contract = settings.data_contract
    sized = [c.name for c in contract.inputs("sparse") if c.vocab == FROM_DATA]
    training = read_training_set(settings, uri, where=_day() < eval_ds, columns=sized) if sized else None
    sizes = data_vocab_sizes(contract, training) if sized else {}
    return spec_for(contract, len(settings.scenarios), sizes)


@dataclass
class EpochPlan:
    """One epoch's visiting order: batch `s` is rows `order[bounds[s]:bounds[s + 1]]`."""

    order: torch.Tensor | None  # Long (N,) on the CPU; None = the split's own order
    bounds: torch.Tensor  # Long (S + 1,) on the CPU, bounds[0] = 0, bounds[-1] = N

    def __len__(self) -> int:
        return self.bounds.numel() - 1


@dataclass
class TensorData:
    """A whole split as aligned tensors (row i of each is one impression)."""

    sparse: torch.Tensor  # Long (N, F_s)
    dense: torch.Tensor  # Float (N, F_d)
    seq: torch.Tensor  # Long (N, L), 0 = padding
    scenario: torch.Tensor  # Long (N,)
    labels: torch.Tensor  # Float (N, T)
    label_mask: torch.Tensor  # Bool (N, T)
    group: torch.Tensor  # Long (N,), request index: rows shown together

    def __len__(self) -> int:
        return self.sparse.shape[0]

    def _map(self, fn) -> TensorData:
        return TensorData(**{f.name: fn(getattr(self, f.name)) for f in fields(self)})

    @property
    def device(self) -> torch.device:
        return self.sparse.device

    def nbytes(self) -> int:
        """Compact size: the bytes of every tensor (what one copy of the split costs)."""
        return sum(getattr(self, f.name).nbytes for f in fields(self))

    def to(self, device: torch.device | str, non_blocking: bool = False) -> TensorData:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> TensorData:
        """Page-locked host copies, so host-to-device copies can be asynchronous (needs CUDA)."""
        return self._map(lambda t: t.pin_memory())

    def select(self, index_or_mask: torch.Tensor | np.ndarray | slice) -> TensorData:
        """Rows by index, boolean mask or slice (on the data's device)."""
        if isinstance(index_or_mask, np.ndarray):
            index_or_mask = torch.from_numpy(index_or_mask)
        if isinstance(index_or_mask, torch.Tensor):
            index_or_mask = index_or_mask.to(self.sparse.device)
        return self._map(lambda t: t[index_or_mask])

    def shard(self, rank: int, world_size: int) -> TensorData:
        """This rank's rows for data-parallel training: whole requests, split by a hash of the
        request index, so every rank gets an i.i.d. share and the split is the same in every process."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        if world_size == 1:
            return self
        owner = _splitmix64(self.group.cpu().numpy()) % np.uint64(world_size)
        return self.select(torch.from_numpy(np.flatnonzero(owner == np.uint64(rank))))

    def plan(
        self, batch_size: int, shuffle: bool, generator: torch.Generator | None = None, by_request: bool = False
    ) -> EpochPlan:
        """Batch boundaries (and, with `shuffle`, a permutation) for one epoch, drawn on the CPU.

        `by_request`: every request's rows sit in one batch, requests are shuffled as
        units, and a batch takes whole requests until it reaches about `batch_size`
        rows (a batch starts at the first request starting at or past a multiple of
        `batch_size` rows, so it holds at most `batch_size + longest request - 1` rows).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = len(self)
        if not by_request:
            order = torch.randperm(n, generator=generator) if shuffle else None
            return EpochPlan(order, torch.cat([torch.arange(0, n, batch_size), torch.tensor([n])]))
        by_group = torch.sort(self.group.cpu(), stable=True)  # rows of a request become contiguous
        _, counts = torch.unique_consecutive(by_group.values, return_counts=True)  # (G,)
        starts = torch.cumsum(counts, 0) - counts  # (G,) first sorted position of each request
        visit = torch.randperm(len(counts), generator=generator) if shuffle else torch.arange(len(counts))
        counts, starts = counts[visit], starts[visit]  # (G,) in visiting order
        offsets = torch.cumsum(counts, 0) - counts  # (G,) first output position of each request
        within = torch.arange(n) - torch.repeat_interleave(offsets, counts)  # (N,) position inside its request
        order = by_group.indices[torch.repeat_interleave(starts, counts) + within]  # (N,)
        batch_of = torch.div(offsets, batch_size, rounding_mode="floor")  # (G,)
        opens = torch.ones_like(batch_of, dtype=torch.bool)
        opens[1:] = batch_of[1:] != batch_of[:-1]
        return EpochPlan(order, torch.cat([offsets[opens], torch.tensor([n])]))

    def iter_plan(
        self,
        plan: EpochPlan,
        start: int = 0,
        stop: int | None = None,
        device: torch.device | str | None = None,
        pin_memory: bool = False,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Batches `start..stop-1` of `plan`, each gathered where the data lives (slices when unshuffled).

        One gather per batch rather than one permuted copy of the whole split per
        epoch: the same bytes move, but training never holds two copies of the
        split. Data on another device than `device` is gathered on the host,
        optionally pinned, and copied with `non_blocking`, so the copy overlaps the
        host's work on the next batch."""
        stop = len(plan) if stop is None else min(stop, len(plan))
        device = self.device if device is None else torch.device(device)
        bounds = plan.bounds.tolist()
        order = None if plan.order is None else plan.order.to(self.device)
        tensors = {key: getattr(self, key) for key in _BATCH_KEYS}
        pin = pin_memory and device.type == "cuda" and device != self.device
        for s in range(start, stop):
            rows = slice(bounds[s], bounds[s + 1]) if order is None else order[bounds[s] : bounds[s + 1]]
            batch = {key: t[rows] for key, t in tensors.items()}
            if device == self.device:
                yield batch
                continue
            if pin:
                batch = {key: t.pin_memory() for key, t in batch.items()}
            yield {key: t.to(device, non_blocking=pin) for key, t in batch.items()}

    def batches(
        self, batch_size: int, shuffle: bool, generator: torch.Generator | None = None, by_request: bool = False
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Dict batches by slicing; with `shuffle` the split is permuted once per call (per epoch)."""
        return self.iter_plan(self.plan(batch_size, shuffle, generator, by_request))


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """Stateless 64-bit mixer (Steele et al.'s SplitMix64 finaliser), uint64 → uint64, wrapping."""
    z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _hash_ids(values: np.ndarray, valid: np.ndarray, vocab: int) -> np.ndarray:
    """int64 ids → 1..vocab-1 via splitmix64; invalid → 0."""
    codes = (_splitmix64(values.view(np.uint64)) % np.uint64(vocab - 1)).astype(np.int64) + 1
    return np.where(valid, codes, 0)


def _request_groups(column: pa.ChunkedArray) -> np.ndarray:
    """request_id → a non-negative int64 per request (62-bit digest), -1 for a null request."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    digests, indices = string_digests(column.cast(pa.string()))
    groups = (digests >> np.uint64(2)).astype(np.int64)  # < 2^62: room for singleton ids above the max
    return np.where(indices >= 0, groups[np.maximum(indices, 0)], -1)


def _encode_column(column: pa.ChunkedArray | pa.Array, vocab: int, hashed: bool) -> np.ndarray:
    """One sparse column → int64 codes in 0..vocab-1 (see module docstring)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        digests, indices = string_digests(column)
        value_codes = _hash_ids(digests.view(np.int64), np.ones(len(digests), bool), vocab)
        return np.where(indices >= 0, value_codes[np.maximum(indices, 0)], 0)
    if not pa.types.is_integer(column.type):
        raise ValueError(f"sparse column of type {column.type} is neither integer nor string")
    valid = ~column.is_null().to_numpy(zero_copy_only=False)
    values = column.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
    if hashed:
        return _hash_ids(values, valid, vocab)
    return np.where(valid & (values >= 0) & (values < vocab - 1), values + 1, 0)


def encoding_report(table: pa.Table, spec: FeatureSpec) -> dict[str, dict[str, float]]:
    """How faithfully each sparse field encodes `table`: `out_of_vocab`, the share of non-null ids outside
    a declared vocabulary (encoded as unknown), and for hashed fields `collided`, the share of distinct
    values that share their row with another value."""
    report = {}
    for name, vocab in zip(spec.sparse_fields, spec.vocab_sizes, strict=True):
        column = _column(table, name)
        column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        distinct = pc.unique(column.drop_null())
        if pa.types.is_string(column.type) or name in spec.hashed_fields:
            codes = _encode_column(distinct, vocab, hashed=True)
            shared = np.bincount(codes, minlength=vocab)[codes] > 1
            report[name] = {"collided": float(shared.mean()) if len(codes) else 0.0}
        else:
            values = column.drop_null().cast(pa.int64()).to_numpy(zero_copy_only=False)
            outside = (values < 0) | (values >= vocab - 1)
            report[name] = {"out_of_vocab": float(outside.mean()) if len(values) else 0.0}
    return report


def _encode_seq(column: pa.ChunkedArray, seq_len: int, vocab: int) -> np.ndarray:
    """list<int64> → (N, L) hashed item codes, first `seq_len` entries kept, 0-padded (null / negative ids too)."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    out = np.zeros((len(column), seq_len), dtype=np.int64)
    flat = pc.list_flatten(column)
    if len(flat) == 0:
        return out
    rows = pc.list_parent_indices(column).to_numpy(zero_copy_only=False)  # row of each flat value
    lengths = np.bincount(rows, minlength=len(column))
    starts = np.cumsum(lengths) - lengths
    pos = np.arange(len(rows)) - starts[rows]  # position inside its list
    keep = pos < seq_len
    values = flat.cast(pa.int64()).fill_null(-1).to_numpy(zero_copy_only=False)
    codes = _hash_ids(values, values >= 0, vocab)  # null or negative ids are padding
    out[rows[keep], pos[keep]] = codes[keep]
    return out


def _column(table: pa.Table, name: str) -> pa.ChunkedArray:
    if name not in table.column_names:
        raise ValueError(f"training table lacks column {name!r}")
    return table.column(name)


def encode(table: pa.Table, spec: FeatureSpec) -> TensorData:
    """Vectorised table → tensors; nulls become id 0 / value 0, a null or absent label is masked out."""
    n = table.num_rows
    sparse = np.stack(
        [
            _encode_column(_column(table, name), vocab, name in spec.hashed_fields)
            for name, vocab in zip(spec.sparse_fields, spec.vocab_sizes, strict=True)
        ],
        axis=1,
    ) if n else np.zeros((0, len(spec.sparse_fields)), np.int64)  # fmt: skip
    dense = np.zeros((n, len(spec.dense_fields)), dtype=np.float32)
    for j, name in enumerate(spec.dense_fields):
        values = pc.fill_null(_column(table, name).cast(pa.float64()), 0.0).to_numpy()
        dense[:, j] = np.log1p(np.maximum(values, 0.0)) if name in spec.log1p_fields else values
    if spec.seq_field is not None:
        seq = _encode_seq(_column(table, spec.seq_field), spec.seq_len, spec.vocab(spec.seq_vocab_field))
    else:
        seq = np.zeros((n, 0), dtype=np.int64)
    scenario = pc.fill_null(_column(table, spec.scenario_field).cast(pa.int64()), -1).to_numpy()
    if n and (scenario.min() < 0 or scenario.max() >= spec.n_scenarios):
        raise ValueError(f"{spec.scenario_field} outside 0..{spec.n_scenarios - 1}")
    labels = np.zeros((n, len(spec.tasks)), dtype=np.float32)
    label_mask = np.ones((n, len(spec.tasks)), dtype=bool)
    for t, task in enumerate(spec.tasks):
        if task not in table.column_names:  # serving: no labels, nothing to learn from
            label_mask[:, t] = False
            continue
        column = table.column(task)
        label_mask[:, t] = ~column.is_null().to_numpy()
        labels[:, t] = pc.fill_null(column.cast(pa.float32()), 0.0).to_numpy()
    if "request_id" in table.column_names:  # a digest, not a dictionary index: chunks encode alike
        group = _request_groups(table.column("request_id"))
    else:  # every row its own request
        group = np.arange(n, dtype=np.int64)
    return TensorData(
        sparse=torch.from_numpy(sparse),
        dense=torch.from_numpy(dense),
        seq=torch.from_numpy(seq),
        scenario=torch.from_numpy(scenario.astype(np.int64)),
        labels=torch.from_numpy(labels),
        label_mask=torch.from_numpy(label_mask),
        group=torch.from_numpy(group),
    )


def _training_dataset(settings: Settings, uri: str) -> pads.Dataset:
    """A parquet training set; hive directory keys become columns unless the files already
    hold a column of that name (the files' `ds` wins over `ds=…/`)."""
    file_columns = set(storage.dataset(settings, uri).schema.names)
    hive = storage.dataset(settings, uri, partitioning="hive")
    keys = [f for f in hive.partitioning.schema if f.name not in file_columns] if hive.partitioning else []
    return storage.dataset(settings, uri, partitioning=pads.partitioning(pa.schema(keys), flavor="hive"))


def read_training_set(
    settings: Settings, uri: str, where: pc.Expression | None = None, columns: list[str] | None = None
) -> pa.Table:
    """Read a parquet training set (a lake path or URI), optionally only the rows `where` holds and
    some `columns` (both pushed down to the files)."""
    return _training_dataset(settings, uri).to_table(columns, filter=where)


def _day() -> pc.Expression:
    return pc.field("ds").cast(pa.string())


def read_held_out(settings: Settings, uri: str, eval_ds: str) -> pa.Table:
    """The rows of the held-out day `eval_ds` only."""
    table = read_training_set(settings, uri, where=_day() == eval_ds)
    if table.num_rows == 0:
        raise ValueError(f"no rows with ds == {eval_ds!r} in {uri}")
    return table


def rows_per_day(settings: Settings, uri: str) -> dict[str, int]:
    """Rows of each day of a training set, reading its `ds` column only."""
    days = read_training_set(settings, uri, columns=["ds"]).column("ds").cast(pa.string())
    return {row["values"]: row["counts"] for row in pc.value_counts(days).to_pylist()}


def encode_scan(dataset: pads.Dataset, spec: FeatureSpec, where: pc.Expression | None = None) -> TensorData:
    """`encode` of the rows `where` holds, record batch by record batch into tensors allocated once:
    the peak is the tensors plus one batch, never the whole arrow table beside them."""
    out, at = None, 0
    for batch in dataset.to_batches(filter=where, batch_readahead=1, fragment_readahead=1):
        if batch.num_rows == 0:
            continue
        chunk = encode(pa.Table.from_batches([batch]), spec)
        if out is None:
            n = dataset.count_rows(filter=where)
            out = chunk._map(lambda t, n=n: t.new_empty((n, *t.shape[1:])))
        for f in fields(out):
            getattr(out, f.name)[at : at + len(chunk)] = getattr(chunk, f.name)
        at += len(chunk)
    pa.default_memory_pool().release_unused()
    return out if out is not None else encode(dataset.schema.empty_table(), spec)


def load_split(settings: Settings, uri: str, spec: FeatureSpec, eval_ds: str) -> tuple[TensorData, TensorData]:
    """Tensors of the training days (before `eval_ds`) and of the held-out day, as `split_by_day`
    and `encode` would give, read and encoded batch by batch (`encode_scan`): what training holds
    is the compact tensors, not the parquet's arrow tables."""
    dataset = _training_dataset(settings, uri)
    train, held_out = encode_scan(dataset, spec, _day() < eval_ds), encode_scan(dataset, spec, _day() == eval_ds)
    if len(held_out) == 0:
        raise ValueError(f"no rows with ds == {eval_ds!r} in {uri}")
    return train, held_out


def with_unknown_dense(table: pa.Table, spec: FeatureSpec) -> pa.Table:
    """`table` with every dense input it lacks as a null (unknown) column, named in a warning: a file from
    elsewhere, or samples read without the feature store, have no aggregates."""
    absent = [name for name in spec.dense_fields if name not in table.column_names]
    if absent:
        log.warning("no columns %s in the table: they are unknown (null) inputs", absent)
    for name in absent:
        table = table.append_column(name, pa.nulls(table.num_rows, pa.float64()))
    return table


def split_by_day(table: pa.Table, eval_ds: str) -> tuple[pa.Table, pa.Table]:
    """Train on days strictly before `eval_ds`, evaluate on `eval_ds` (later days never train)."""
    days = _column(table, "ds").cast(pa.string())
    eval_table = table.filter(pc.equal(days, eval_ds))
    if eval_table.num_rows == 0:
        raise ValueError(f"no rows with ds == {eval_ds!r}")
    return table.filter(pc.less(days, eval_ds)), eval_table


def synthetic(
    spec: FeatureSpec, n_rows: int, seed: int = 0, rows_per_request: int = 10, world_seed: int = 0
) -> TensorData:
    """Random but learnable tensors for tests and throughput benchmarks (no files needed).

    Labels follow a logistic model of a few ids and dense values, with a
    per-scenario shift, so AUC well above 0.5 is reachable. The model's effects
    come from `world_seed`, the rows from `seed`: two seeds give train / valid of one world.
    """
    world = np.random.default_rng(world_seed)
    seq_vocab = spec.vocab(spec.seq_vocab_field) if spec.seq_field is not None else 2
    item_effect = world.normal(size=seq_vocab)
    first_effect = world.normal(size=spec.vocab_sizes[0])
    rng = np.random.default_rng([world_seed, seed])
    sparse = np.stack([rng.integers(1, v, n_rows) for v in spec.vocab_sizes], axis=1)
    scenario = rng.integers(0, spec.n_scenarios, n_rows)
    if spec.scenario_field in spec.sparse_fields:
        sparse[:, spec.sparse_fields.index(spec.scenario_field)] = scenario + 1
    dense = rng.normal(size=(n_rows, len(spec.dense_fields))).astype(np.float32)
    seq_len = spec.seq_len if spec.seq_field is not None else 0
    seq = rng.integers(0, seq_vocab, (n_rows, seq_len))
    base = first_effect[sparse[:, 0]] + (dense[:, 0] if dense.shape[1] else 0.0) + 0.3 * (scenario - 1)
    if spec.seq_field is not None:
        base = base + item_effect[sparse[:, spec.sparse_fields.index(spec.seq_vocab_field)]]
    labels = np.zeros((n_rows, len(spec.tasks)), dtype=np.float32)
    for t in range(len(spec.tasks)):
        logit = base * (1.0 - 0.3 * t) - 1.0 - t + (0.5 * t * dense[:, 1] if dense.shape[1] > 1 else 0.0)
        labels[:, t] = rng.random(n_rows) < 1 / (1 + np.exp(-logit))
    return TensorData(
        sparse=torch.from_numpy(sparse.astype(np.int64)),
        dense=torch.from_numpy(dense),
        seq=torch.from_numpy(seq.astype(np.int64)),
        scenario=torch.from_numpy(scenario.astype(np.int64)),
        labels=torch.from_numpy(labels),
        label_mask=torch.ones(n_rows, len(spec.tasks), dtype=torch.bool),
        group=torch.from_numpy(np.arange(n_rows) // rows_per_request),
    )
