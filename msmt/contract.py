"""A dataset's data contract: one TOML file declares the raw tables, the role of each column,
the label events and the feature aggregates; msmt derives the rest from it.

The simulator's logs are just the default contract (`contracts/simulator.toml`). From a
contract come the raw schemas the checks enforce (`raw_schema`), the columns a row cannot be
joined without (`raw_keys`), each table's record id, the label tables in task order and the
feature views (`feature_views`: keys, value columns, timestamps). TOML is read by the
standard library, so a contract loads wherever msmt's floor does (the GPU machine included).

A contract that cannot be right — a missing role, an unknown type, a feature whose entity
has no key column — raises `ContractError` at load, naming the file, table and column,
before any job reads a byte.
"""

from __future__ import annotations

import functools
import hashlib
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from msmt.errors import StopRun

CONTRACTS_DIR = Path(__file__).resolve().parent.parent / "contracts"
DEFAULT = CONTRACTS_DIR / "simulator.toml"

TS = pa.timestamp("us", tz="UTC")  # Spark and Feast need µs; pandas writes ns unless cast
TYPES = {
    "string": pa.string(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float64": pa.float64(),
    "timestamp": TS,
    "list<int64>": pa.list_(pa.int64()),
}
# What a column is for. Key roles are the ones a row cannot be joined without.
KEY_ROLES = ("impression_id", "record_id", "request_id", "click_id", "event_time", "user_key", "item_key", "scenario")
ROLES = (*KEY_ROLES, "sparse", "dense", "sequence", "value")
REQUIRED_ROLES = {
    "impressions": ("impression_id", "request_id", "event_time", "user_key", "item_key", "scenario"),
    "clicks": ("record_id", "impression_id", "event_time"),
    "conversions": ("record_id", "click_id", "event_time"),
}
# The name a key role's column takes once read, whatever the contract calls it: the Spark jobs
# and the samples speak this vocabulary, so a team's `search_id` is the jobs' `request_id`.
CANONICAL = {
    "impressions": {
        "impression_id": "impression_id",
        "request_id": "request_id",
        "event_time": "ts",
        "user_key": "user_id",
        "item_key": "item_id",
        "scenario": "scenario",
    },
    "clicks": {"record_id": "click_id", "impression_id": "impression_id", "event_time": "ts"},
    "conversions": {"record_id": "conversion_id", "click_id": "click_id", "event_time": "ts", "value": "value"},
}
# Roles whose columns reach the model, under their own names.
INPUT_ROLES = ("sparse", "dense", "sequence")
FROM_DATA = "data"  # `vocab = "data"`: sized from the training days' largest id (feature_spec.json records it)
# The samples' column of each feature entity (build_samples writes them).
ENTITY_KEYS = {
    "user": ("user_id", pa.int64()),
    "item": ("item_id", pa.int64()),
    "scenario": ("scenario_id", pa.int64()),
}
# The samples: these keys, then the contract's input columns (own names), the derived ones, the labels.
SAMPLE_KEYS = {
    "impression_id": pa.string(),
    "request_id": pa.string(),
    "event_timestamp": TS,
    "user_id": pa.int64(),
    "item_id": pa.int64(),
    "scenario_id": pa.int64(),
}
DERIVED = {"hour": (pa.int32(), 25)}  # hour of the event time (UTC): type, vocab
STATISTICS = {
    "impressions": pa.int64(),
    "clicks": pa.int64(),  # distinct clicked impressions
    "conversions": pa.int64(),  # attributed to those clicks
    "ctr": pa.float64(),  # smoothed towards the window's rate
    "cvr": pa.float64(),  # conversions per click, smoothed
}
DEFAULT_ATTRIBUTION_WINDOW = 2  # days, when the conversion label does not say
FEATURE_TIMES = (("event_timestamp", TS), ("created_timestamp", TS))


class ContractError(StopRun):
    """The contract file is wrong; the message names the file, table and column."""


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # a key of TYPES
    role: str  # one of ROLES
    doc: str = ""
    vocab: int | str = 0  # sparse integers: ids 0..vocab-2 get their own row (0 = null); or FROM_DATA
    hash_buckets: int = 0  # sparse strings / unbounded ids: hashed into this many rows
    min: float | None = None  # declared range of a numeric column (the raw check enforces it)
    max: float | None = None

    @property
    def arrow_type(self) -> pa.DataType:
        return TYPES[self.type]


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    doc: str = ""

    @property
    def schema(self) -> pa.Schema:
        return pa.schema([(c.name, c.arrow_type) for c in self.columns])

    def with_role(self, role: str) -> Column:
        return next(c for c in self.columns if c.role == role)

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.role in KEY_ROLES)


@dataclass(frozen=True)
class FeatureView:
    """Aggregates per entity key and day (`<prefix>_<statistic>`), stamped 00:00 UTC of the day."""

    name: str
    entities: tuple[str, ...]
    prefix: str
    statistics: tuple[str, ...] = tuple(STATISTICS)
    window_days: int = 7  # the trailing days it aggregates, strictly before its day

    @property
    def key_columns(self) -> tuple[str, ...]:
        return tuple(ENTITY_KEYS[e][0] for e in self.entities)

    @property
    def value_columns(self) -> list[str]:
        return [f"{self.prefix}_{s}" for s in self.statistics]

    @property
    def schema(self) -> pa.Schema:
        keys = [ENTITY_KEYS[e] for e in self.entities]
        values = [(f"{self.prefix}_{s}", STATISTICS[s]) for s in self.statistics]
        return pa.schema([*keys, *values, *FEATURE_TIMES])


@dataclass(frozen=True)
class Contract:
    name: str
    version: int
    tables: dict[str, Table]
    labels: dict[str, str]  # task -> the raw table whose rows are its events, in the model's task order
    features: dict[str, FeatureView]
    attribution_window_days: int  # a conversion counts this many days after its click (a click, after its impression)
    source: str  # the file it was read from
    digest: str  # sha256 of that file's bytes: what a model was trained under

    def raw_schema(self, table: str) -> pa.Schema:
        return self.tables[table].schema

    @property
    def raw_keys(self) -> dict[str, tuple[str, ...]]:
        return {name: table.keys for name, table in self.tables.items()}

    @property
    def record_ids(self) -> dict[str, str]:
        """The column that identifies a row of each raw table (quarantine names rows by it)."""
        ids = {"impressions": self.tables["impressions"].with_role("impression_id").name}
        return ids | {name: self.tables[name].with_role("record_id").name for name in ("clicks", "conversions")}

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.labels)

    @property
    def feature_service(self) -> str:
        """The Feast feature service of this contract version: a changed contract is a new service, never
        an old one silently changing shape under a registered model."""
        return f"ranker_{self.name}_{self.digest[:12]}"

    def inputs(self, *roles: str) -> tuple[Column, ...]:
        """The impressions' columns that feed the model (`roles`: some of INPUT_ROLES), in declared order."""
        return tuple(c for c in self.tables["impressions"].columns if c.role in (roles or INPUT_ROLES))

    @property
    def samples_schema(self) -> pa.Schema:
        """One row per impression: keys, the input columns, the derived columns, a 0/1 int per task."""
        return pa.schema(
            [
                *SAMPLE_KEYS.items(),
                *((c.name, c.arrow_type) for c in self.inputs()),
                *((name, kind) for name, (kind, _) in DERIVED.items()),
                *((task, pa.int32()) for task in self.tasks),
            ]
        )

    def canonical_names(self, table: str) -> dict[str, str]:
        """Raw column name -> the name the jobs read it by (key roles renamed, other columns as they are)."""
        roles = CANONICAL[table]
        return {c.name: roles.get(c.role, c.name) for c in self.tables[table].columns}

    def column(self, table: str, name: str) -> Column:
        return next(c for c in self.tables[table].columns if c.name == name)


def load_cached(path: Path) -> Contract:
    """`load`, once per file and modification time: settings ask for the contract often."""
    stat = path.stat() if path.exists() else None
    return _load_version(path, stat.st_mtime_ns if stat else None)


@functools.lru_cache(maxsize=16)
def _load_version(path: Path, _mtime_ns: int | None) -> Contract:
    return load(path)


def load(path: str | Path = DEFAULT) -> Contract:
    """Read and validate a contract file; ContractError names what is wrong and where."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        document = tomllib.loads(raw.decode())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ContractError(f"contract {path}: cannot be read as TOML ({error})") from error
    where = f"contract {path}"
    tables = {name: _table(where, name, spec) for name, spec in _section(where, document, "tables").items()}
    for name, roles in REQUIRED_ROLES.items():
        if name not in tables:
            raise ContractError(f"{where}: no table {name!r} (tables: {sorted(tables)})")
        present = [c.role for c in tables[name].columns]
        for role in roles:
            if present.count(role) != 1:
                raise ContractError(f"{where}: table {name} needs exactly one column with role {role!r}")
    labels, window = {}, DEFAULT_ATTRIBUTION_WINDOW
    for task, spec in _section(where, document, "labels").items():
        unknown = set(spec) - {"table", "window_days", "doc"}
        if unknown:
            raise ContractError(f"{where}: label {task!r}: unknown field(s) {sorted(unknown)}")
        if spec.get("table") not in tables:
            named = spec.get("table")
            raise ContractError(f"{where}: label {task!r} names table {named!r}, not one of {sorted(tables)}")
        labels[task] = spec["table"]
        if "window_days" in spec:
            if spec["table"] != "conversions" or not _count(spec["window_days"]):
                raise ContractError(f"{where}: label {task!r}: window_days (a whole number of days >= 0) "
                                    "belongs to the conversions table's label")  # fmt: skip
            window = spec["window_days"]
    if list(labels.values()) != ["clicks", "conversions"]:
        raise ContractError(f"{where}: labels must be two tasks, the clicks table's then the conversions "
                            f"table's (a conversion follows a click); got {labels}")  # fmt: skip
    _check_names(where, tables, tuple(labels))
    features = {name: _view(where, name, spec) for name, spec in _section(where, document, "features").items()}
    return Contract(
        name=str(document.get("name", path.stem)),
        version=int(document.get("version", 1)),
        tables=tables,
        labels=labels,
        features=features,
        attribution_window_days=window,
        source=str(path),
        digest=hashlib.sha256(raw).hexdigest(),
    )


def _section(where: str, document: dict, key: str) -> dict:
    section = document.get(key)
    if not isinstance(section, dict) or not section:
        raise ContractError(f"{where}: no [{key}] section")
    return section


def _table(where: str, name: str, spec: dict) -> Table:
    columns = []
    for column, fields in spec.get("columns", {}).items():
        at = f"{where}: table {name}, column {column}"
        unknown = set(fields) - {"type", "role", "doc", "vocab", "hash_buckets", "min", "max"}
        if unknown:
            raise ContractError(f"{at}: unknown field(s) {sorted(unknown)}")
        if fields.get("type") not in TYPES:
            raise ContractError(f"{at}: type {fields.get('type')!r} is not one of {list(TYPES)}")
        if fields.get("role") not in ROLES:
            raise ContractError(f"{at}: role {fields.get('role')!r} is not one of {list(ROLES)}")
        if fields["role"] == "sparse":
            _check_sparse(at, fields)
        if fields["role"] == "dense" and fields["type"] not in ("int32", "int64", "float64"):
            raise ContractError(f"{at}: a dense column must be numeric, not {fields['type']}")
        if fields["role"] == "sequence" and fields["type"] != "list<int64>":
            raise ContractError(f"{at}: a sequence column must be list<int64> (item ids, newest first)")
        bounded = {"min", "max"} & set(fields)
        if bounded and not pa.types.is_integer(TYPES[fields["type"]]) and fields["type"] != "float64":
            raise ContractError(
                f"{at}: {'/'.join(sorted(bounded))} on a {fields['type']} column; only numbers have ranges"
            )
        columns.append(Column(name=column, **fields))
    if not columns:
        raise ContractError(f"{where}: table {name} declares no columns")
    return Table(name=name, columns=tuple(columns), doc=spec.get("doc", ""))


def _check_sparse(at: str, fields: dict) -> None:
    """A sparse column says how its values find their embedding row: a vocabulary or hashing."""
    vocab, buckets = fields.get("vocab", 0), fields.get("hash_buckets", 0)
    integer = pa.types.is_integer(TYPES[fields["type"]])
    if vocab and buckets:
        raise ContractError(f"{at}: declare `vocab` or `hash_buckets`, not both")
    if buckets:
        if not (isinstance(buckets, int) and buckets > 1):
            raise ContractError(f"{at}: hash_buckets must be an integer > 1, got {buckets!r}")
        return
    if not integer:
        raise ContractError(f"{at}: a sparse {fields['type']} column is hashed: declare `hash_buckets` (> 1)")
    if vocab == FROM_DATA or (isinstance(vocab, int) and not isinstance(vocab, bool) and vocab > 1):
        return
    raise ContractError(
        f"{at}: a sparse column needs `vocab` (ids 0..vocab-2, or {FROM_DATA!r}: sized from the training days) "
        f"or `hash_buckets` (> 1), got vocab={vocab!r}"
    )


def _check_names(where: str, tables: dict[str, Table], tasks: tuple[str, ...]) -> None:
    """An input column may not take a name the samples already use for a key, a label or a derived column."""
    taken = {*CANONICAL["impressions"].values(), *SAMPLE_KEYS, *DERIVED, *tasks, "ds"}
    impressions = tables["impressions"]
    for column in impressions.columns:
        if column.role in INPUT_ROLES and column.name in taken:
            raise ContractError(
                f"{where}: table impressions, column {column.name}: the name is taken in the samples "
                f"({sorted(taken)}); rename the column"
            )
    sequences = [c.name for c in impressions.columns if c.role == "sequence"]
    if len(sequences) > 1:
        raise ContractError(f"{where}: table impressions declares {len(sequences)} sequences {sequences}; "
                            "the models read one")  # fmt: skip
    for name, table in tables.items():
        misplaced = [c.name for c in table.columns if c.role in INPUT_ROLES] if name != "impressions" else []
        if misplaced:
            raise ContractError(f"{where}: table {name}, column {misplaced[0]}: model inputs live on impressions")


def _view(where: str, name: str, spec: dict) -> FeatureView:
    at = f"{where}: feature view {name}"
    unknown = set(spec) - {"entities", "prefix", "statistics", "window_days", "doc"}
    if unknown:
        raise ContractError(f"{at}: unknown field(s) {sorted(unknown)}")
    entities = tuple(spec.get("entities", ()))
    if not entities or set(entities) - set(ENTITY_KEYS):
        raise ContractError(f"{at}: entities {list(entities)} must be a non-empty subset of {list(ENTITY_KEYS)}")
    statistics = tuple(spec.get("statistics", STATISTICS))
    if set(statistics) - set(STATISTICS):
        raise ContractError(f"{at}: statistics {sorted(set(statistics) - set(STATISTICS))} are not computed; "
                            f"choose from {list(STATISTICS)}")  # fmt: skip
    if not spec.get("prefix"):
        raise ContractError(f"{at}: needs a column `prefix`")
    window = spec.get("window_days", FeatureView.window_days)
    if not _count(window) or window < 1:
        raise ContractError(f"{at}: window_days must be a whole number of days >= 1, got {window!r}")
    return FeatureView(name=name, entities=entities, prefix=spec["prefix"], statistics=statistics, window_days=window)


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
