"""Importers turn small files in the public releases' formats into raw logs that honour their contracts."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from msmt import contract, lake
from msmt.errors import StopRun
from msmt.ids import stable_hash
from msmt.settings import Settings
from pipeline.importers import aliccp, typed
from pipeline.importers.aliccp import import_aliccp
from pipeline.importers.aliexpress import AliExpressLayout, import_aliexpress
from pipeline.importers.cli import import_app

START = "2024-05-01"
DAYS = 3
TABLES = lake.RAW_TABLES
AE = contract.load(contract.CONTRACTS_DIR / "aliexpress.toml")
CCP = contract.load(contract.CONTRACTS_DIR / "aliccp.toml")
CCP_RAW = contract.load(contract.CONTRACTS_DIR / "aliccp_raw.toml")


def _raw(settings: Settings, name: str, under: contract.Contract) -> pd.DataFrame:
    """Every file of every day of a raw table, checked against the contract's schema, with its `ds`."""
    frames = []
    for ds in lake.days_between(START, DAYS):
        files = sorted(Path(lake.raw(settings, name, ds)).glob("*.parquet"))
        assert files, (name, ds)  # every day has every table, empty or not
        for f in files:
            table = pq.read_table(f)
            assert table.schema.equals(under.raw_schema(name)), (name, ds, f.name)
            frames.append(table.to_pandas().assign(ds=ds))
    return pd.concat(frames, ignore_index=True)


def _lake_bytes(settings: Settings) -> dict[str, bytes]:
    """Every file under the lake, by path: what a refused import must leave exactly as it was."""
    root = Path(settings.lake)
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file()}


def _assert_refused_with_layouts(error: StopRun) -> None:
    """The refusal names the supported layouts, so the user knows what to bring instead."""
    message = str(error)
    assert "Supported layouts: (1) the raw Ali-CCP release" in message
    assert "sample_skeleton_<split>.csv + common_features_<split>.csv" in message
    assert "(2) the processed AliExpress CSVs" in message and "search_id,categorical_1..16" in message
    assert "(3) the processed Ali-CCP CSVs" in message and "click,purchase,101," in message


def _snapshot(settings: Settings, under: contract.Contract) -> dict[str, pd.DataFrame]:
    frames = {name: _raw(settings, name, under) for name in TABLES}
    return {name: f.sort_values(f.columns[0]).reset_index(drop=True) for name, f in frames.items()}


def _with_columns(path: Path, base: contract.Contract, lines: str) -> Path:
    """A copy of a shipped contract with `lines` added to its impressions columns."""
    text = Path(base.source).read_text()
    path.write_text(text.replace("\n[tables.clicks]", f"{lines}\n\n[tables.clicks]", 1))
    return path


@pytest.mark.parametrize("name", ["aliexpress.toml", "aliccp.toml", "aliccp_raw.toml"])
def test_the_shipped_contracts_load_and_keep_every_feature(name):
    under = contract.load(contract.CONTRACTS_DIR / name)
    inputs = {c.name: c for c in under.inputs()}
    if name == "aliexpress.toml":
        wanted = [f"categorical_{i}" for i in range(1, 17)] + [f"numerical_{i}" for i in range(1, 64)]
        sparse = [inputs[f"categorical_{i}"] for i in range(1, 17)]
    else:
        fields = [field for field in CCP_HEADER[2:] if not field.startswith("D") and field != "301"]
        wanted = [f"f{field}" for field in fields] + [f"d{field[1:]}" for field in CCP_HEADER if field.startswith("D")]
        sparse = [inputs[f"f{field}"] for field in fields]
    assert set(wanted) <= set(inputs) and not {"device", "user_segment", "item_category"} & set(inputs)
    assert all(inputs[column].role == ("dense" if column[0] in "nd" else "sparse") for column in wanted)
    # small codes get their own rows (sized from the data); the raw release's global ids are hashed
    if name == "aliccp_raw.toml":
        assert all(c.hash_buckets > 1 and not c.vocab for c in sparse)
    else:
        assert all(c.vocab == contract.FROM_DATA for c in sparse)
    assert under.tasks == ("click", "conversion") and len(under.features) == 4


def test_text_becomes_the_contract_type_or_a_bad_value():
    """Blank is null, an integer may be written 12.0, padding is ignored; other text and non-finite floats are bad."""
    text = pa.array(["7", " 12.0 ", "", "+4", "x", "1.5", "3000000000", None])
    values, bad = typed(text, pa.int32())
    assert values.to_pylist() == [7, 12, None, 4, None, None, None, None]
    assert bad.tolist() == [False, False, False, False, True, True, True, False]
    values, bad = typed(pa.array(["0.25", "1e3", "nan", "-inf", "", "12,5"]), pa.float64())
    assert values.to_pylist() == [0.25, 1000.0, None, None, None, None]
    assert bad.tolist() == [False, False, True, True, False, True]


# --- AliExpress ---------------------------------------------------------------------------------------

AE_HEADER = [
    "search_id",
    *(f"categorical_{i}" for i in range(1, 17)),
    *(f"numerical_{i}" for i in range(1, 64)),
    "click",
    "conversion",
]


def _ae_rows(seed: int, n_search: int) -> list[list[str]]:
    """Searches of 4–6 items, ~20% clicks, ~30% of clicks converting; every feature varies."""
    rng = np.random.default_rng(seed)
    rows = []
    for search in range(n_search):
        user = [str(v) for v in rng.integers(0, 3, 9)]
        for _ in range(int(rng.integers(4, 7))):
            item = [str(v) for v in rng.integers(0, 20, 7)]
            numerical = [f"{v:.4f}" for v in rng.normal(size=63)]
            click = int(rng.random() < 0.2)
            conversion = int(click and rng.random() < 0.3)
            rows.append([str(seed * 1000 + search), *user, *item, *numerical, str(click), str(conversion)])
    return rows


def _write_csv(path: Path, rows: list[list[str]], extra_lines: tuple[str, ...] = (), header=AE_HEADER) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(header), *(",".join(r) for r in rows), *extra_lines]
    path.write_text("\n".join(lines) + "\n")


def _ae_line(search: str, click: str, conversion: str, numerical_5: str = "0.5") -> str:
    return ",".join([search, *["1"] * 16, *["0.5"] * 4, numerical_5, *["0.5"] * 58, click, conversion])


@pytest.fixture
def aliexpress(tmp_path) -> dict:
    """NL train + test and ES train; NL test carries one line of each malformed kind."""
    files = {
        "nl_train": (tmp_path / "AliExpress_NL" / "train.csv", _ae_rows(1, 30)),
        "nl_test": (tmp_path / "AliExpress_NL" / "test.csv", _ae_rows(2, 10)),
        "es_train": (tmp_path / "AliExpress_ES" / "train.csv", _ae_rows(3, 20)),
    }
    bad = (
        "999,1,2,3",  # too few fields
        _ae_line("998", "2", "0"),  # label 2 (raw-release coding) is not 0/1
        _ae_line("997", "0", "1"),  # conversion without click
        _ae_line("996", "0", "0", numerical_5="n/a"),  # not a number
    )
    for key, (path, rows) in files.items():
        _write_csv(path, rows, bad if key == "nl_test" else ())
    return {"root": tmp_path, "files": files}


def _import_ae(settings: Settings, root: Path, **kw) -> dict:
    paths = [root / "AliExpress_NL", root / "AliExpress_ES"]
    return import_aliexpress(settings, paths, START, DAYS, progress=False, **kw)


def _ae_truth(files: dict) -> pd.DataFrame:
    """The fixture's well-formed rows as text, by the impression id the importer gives them."""
    rows = []
    for key, (_, lines) in files.items():
        country, split = key.split("_")
        rows += [[f"ae-{country}-{split}-{k}", country, split, *row] for k, row in enumerate(lines)]
    return pd.DataFrame(rows, columns=["impression_id", "country", "split", *AE_HEADER])


def test_aliexpress_partitions_follow_the_contract_and_the_labels(settings, aliexpress):
    report = _import_ae(settings, aliexpress["root"])
    imps, clicks, convs = (_raw(settings, name, AE) for name in TABLES)
    truth = _ae_truth(aliexpress["files"]).astype({"click": int, "conversion": int})
    # one impression per well-formed row, one click per click label, one conversion per conversion label
    assert sorted(imps["impression_id"]) == sorted(truth["impression_id"])
    assert sorted(clicks["impression_id"]) == sorted(truth.loc[truth["click"] == 1, "impression_id"])
    converted = truth.loc[truth["conversion"] == 1, "impression_id"]
    assert sorted(convs["click_id"]) == sorted("c-" + converted)
    assert report["totals"] == {
        "impressions": len(truth),
        "clicks": truth["click"].sum(),
        "conversions": len(converted),
    }
    # scenario = country of the directory; request = country + file + search id
    merged = imps.merge(truth, on="impression_id", suffixes=("", "_src"))
    assert (merged["scenario"] == merged["country"]).all()
    assert (
        merged["request_id"] == "ae-" + merged["scenario"] + "-" + merged["split"] + "-" + merged["search_id"]
    ).all()
    assert report["msmt_scenarios"] == "nl,es"  # largest first
    assert report["contract"] == str(contract.CONTRACTS_DIR / "aliexpress.toml") and report["not_imported"] == {}
    # pseudo-ids: same user features → same user in a country; no simulator proxies, no device
    assert imps["user_id"].min() >= 0 and (imps.groupby("request_id")["user_id"].nunique() == 1).all()
    assert not {"device", "user_segment", "item_category", "item_price_bucket", "hist_item_ids"} & set(imps)


def test_aliexpress_keeps_every_categorical_and_numerical_column_with_its_values(settings, aliexpress):
    _import_ae(settings, aliexpress["root"])
    imps = _raw(settings, "impressions", AE)
    truth = _ae_truth(aliexpress["files"])
    merged = imps.merge(truth, on="impression_id", suffixes=("", "_src"), validate="one_to_one")
    assert len(merged) == len(truth)
    features = AE_HEADER[1:-2]
    assert len(features) == 79 and set(features) <= set(imps)
    for name in features:
        kind = int if name.startswith("categorical") else float
        assert (merged[name] == merged[f"{name}_src"].map(kind)).all(), name


def test_aliexpress_time_and_positions_are_a_valid_log(settings, aliexpress):
    _import_ae(settings, aliexpress["root"])
    imps, clicks, convs = (_raw(settings, name, AE) for name in TABLES)
    for frame in (imps, clicks, convs):  # every event inside its partition's day
        assert (frame["ts"].dt.strftime("%Y-%m-%d") == frame["ds"]).all()
    # each scenario spans every day; train rows come before test rows
    assert (imps.groupby("scenario")["ds"].nunique() == DAYS).all()
    nl = imps[imps["scenario"] == "nl"]
    assert (
        nl.loc[nl["impression_id"].str.contains("-train-"), "ts"].max()
        <= nl.loc[nl["impression_id"].str.contains("-test-"), "ts"].min()
    )
    # a request is one moment, its rows ranked 0..n-1 in file order
    by_request = imps.assign(row=imps["impression_id"].str.rsplit("-", n=1).str[1].astype(int))
    for _, rows in by_request.groupby("request_id"):
        assert rows["ts"].nunique() == 1
        assert list(rows.sort_values("row")["position"]) == list(range(len(rows)))
    # click after its impression, conversion after its click, both well inside the attribution window
    c = clicks.merge(imps[["impression_id", "ts"]], on="impression_id", suffixes=("", "_imp"))
    assert (c["ts"] >= c["ts_imp"]).all() and (c["ts"] - c["ts_imp"] <= pd.Timedelta(minutes=5)).all()
    v = convs.merge(clicks[["click_id", "ts"]], on="click_id", suffixes=("", "_click"))
    assert len(v) == len(convs) and (v["ts"] >= v["ts_click"]).all()
    assert (v["ts"] - v["ts_click"] <= pd.Timedelta(hours=1)).all()


def test_aliexpress_malformed_lines_are_counted_not_fatal(settings, aliexpress):
    report = _import_ae(settings, aliexpress["root"])
    assert report["malformed"] == {
        "bad_column_count": 1,
        "bad_label": 1,
        "bad_value": 1,
        "conversion_without_click": 1,
    }
    assert all(report["malformed_examples"][reason] for reason in report["malformed"])
    assert "n/a" in report["malformed_examples"]["bad_value"][0]
    assert report["rows_read"] == report["totals"]["impressions"] + 4


def test_aliexpress_import_is_deterministic_and_a_rerun_replaces_it(tmp_path, aliexpress):
    first, second = (Settings(home=tmp_path / name) for name in ("a", "b"))
    _import_ae(first, aliexpress["root"])
    _import_ae(second, aliexpress["root"])
    _import_ae(second, aliexpress["root"])  # re-run on the same lake: replaced, not appended
    a, b = _snapshot(first, AE), _snapshot(second, AE)
    for name in TABLES:
        pd.testing.assert_frame_equal(a[name], b[name])


def test_aliexpress_scenarios_option_selects_and_orders(settings, aliexpress):
    report = _import_ae(settings, aliexpress["root"], scenarios=("es",))
    assert set(_raw(settings, "impressions", AE)["scenario"]) == {"es"}
    assert report["msmt_scenarios"] == "es" and report["skipped_scenarios"]["nl"] > 0


def test_aliexpress_needs_a_country(settings, tmp_path):
    _write_csv(tmp_path / "data" / "train.csv", _ae_rows(1, 2))
    with pytest.raises(ValueError, match="country"):
        import_aliexpress(settings, [tmp_path / "data"], START, DAYS, progress=False)
    report = import_aliexpress(settings, [tmp_path / "data"], START, DAYS, scenario="xx", progress=False)
    assert report["msmt_scenarios"] == "xx"
    (tmp_path / "data" / "train.csv").write_text("search_id,click\n1,0\n")
    with pytest.raises(ValueError, match="missing columns"):  # checked before the lake is touched
        import_aliexpress(settings, [tmp_path / "data"], START, DAYS, scenario="xx", progress=False)
    assert len(_raw(settings, "impressions", AE)) == report["totals"]["impressions"]


def test_aliexpress_contract_decides_the_columns(settings, aliexpress, tmp_path):
    """A column the file lacks is refused (file and column named, lake unchanged); one the contract lacks
    is reported; `device` is written only where the contract declares it."""
    _import_ae(settings, aliexpress["root"])
    before = _lake_bytes(settings)
    wider = _with_columns(tmp_path / "wider.toml", AE, '\nnumerical_64 = { type = "float64", role = "dense" }')
    with pytest.raises(StopRun) as refused:
        _import_ae(settings, aliexpress["root"], contract=wider)
    train = aliexpress["root"] / "AliExpress_NL" / "train.csv"
    assert str(refused.value).startswith(f"{train}: no column numerical_64, which contract {wider} declares")
    assert _lake_bytes(settings) == before

    path = tmp_path / "extra" / "AliExpress_NL" / "train.csv"
    _write_csv(path, [[*row, "7"] for row in _ae_rows(4, 5)], header=[*AE_HEADER, "numerical_64"])
    device = _with_columns(
        tmp_path / "device.toml", AE, '\ndevice = { type = "string", role = "sparse", hash_buckets = 8 }'
    )
    report = import_aliexpress(settings, [path.parent], START, DAYS, device="web", contract=device, progress=False)
    assert report["not_imported"] == {str(path): ["numerical_64"]}
    assert report["contract"] == str(device)
    assert set(_raw(settings, "impressions", contract.load(device))["device"]) == {"web"}


def _published_like(root: Path, scattered: bool) -> dict[str, int]:
    """Train + test shaped like the published processed files: search ids re-encoded per split (small ints,
    the same numbers in both files, in no order), 1-11 rows a search, a few hundred rows a file; `scattered`
    shuffles a file's rows so a search's rows are spread over it. Returns the rows per file."""
    rng = np.random.default_rng(7)
    sizes = {}
    numerical = ["0.5"] * 63
    for split, n_search in (("train", 50), ("test", 40)):
        rows = []
        for search in rng.permutation(n_search):
            user = [str(v) for v in rng.integers(0, 5, 9)]
            for _ in range(int(rng.integers(1, 12))):
                item = [str(v) for v in rng.integers(0, 30, 7)]
                rows.append([str(search), *user, *item, *numerical, str(int(rng.random() < 0.2)), "0"])
        if scattered:
            rows = [rows[k] for k in rng.permutation(len(rows))]
        _write_csv(root / "AliExpress_NL" / f"{split}.csv", rows)
        sizes[split] = len(rows)
    return sizes


@pytest.mark.parametrize("scattered", [False, True], ids=["contiguous", "scattered"])
def test_aliexpress_days_get_a_fair_share_when_search_ids_repeat_across_files(settings, tmp_path, scattered):
    sizes = _published_like(tmp_path, scattered)
    days = 7
    report = import_aliexpress(settings, [tmp_path / "AliExpress_NL"], START, days, progress=False)
    per_day = [counts["impressions"] for counts in report["days"].values()]
    fair = sum(sizes.values()) / days
    assert sum(per_day) == sum(sizes.values()) and 300 <= sum(per_day) <= 700
    # before: day 1 had 24% (contiguous) or 85% (scattered) of the rows, and the last days none
    assert all(0.5 * fair <= n <= 1.5 * fair for n in per_day), per_day
    # a search id of train.csv and the same number in test.csv are two requests
    frames = []
    for ds in report["days"]:
        frames += [pq.read_table(f).to_pandas() for f in Path(lake.raw(settings, "impressions", ds)).glob("*.parquet")]
    imps = pd.concat(frames, ignore_index=True)
    imps["file"] = imps["impression_id"].str.split("-").str[2]
    assert (imps.groupby("request_id")["file"].nunique() == 1).all()
    assert imps["request_id"].nunique() == 50 + 40
    assert (imps.groupby("request_id")["ts"].nunique() == 1).all()  # a request is still one moment


@pytest.mark.parametrize(
    ("content", "found"),
    [
        ("search_id,categorical_1,click\n1,2,0\n", "missing columns categorical_2, categorical_3"),
        (
            "",
            "missing columns search_id, categorical_1, categorical_2, categorical_3, categorical_4, … (19 in all); "
            "its first line is an empty line (is the file empty?)",
        ),
        (",".join(AE_HEADER) + "\n", "a header and no data row (an empty or cut file?)"),
        (",".join(AE_HEADER) + "\n1,2,3\n", "its first data row has 3 fields, its header 82"),
    ],
    ids=["other-header", "empty", "header-only", "cut-row"],
)
def test_aliexpress_wrong_file_is_refused_and_the_lake_is_unchanged(settings, aliexpress, content, found):
    _import_ae(settings, aliexpress["root"])
    before = _lake_bytes(settings)
    bad = aliexpress["root"] / "bad" / "AliExpress_NL"
    bad.mkdir(parents=True)
    (bad / "train.csv").write_text(content)
    with pytest.raises(StopRun, match=r"train\.csv: ") as refused:
        import_aliexpress(settings, [bad], START, DAYS, progress=False)
    assert found in str(refused.value)
    _assert_refused_with_layouts(refused.value)
    assert _lake_bytes(settings) == before


def test_aliexpress_failure_half_way_leaves_the_lake_unchanged(settings, aliexpress):
    """Blocks already parsed are staged, not written: a file unreadable after them leaves the old days."""
    _import_ae(settings, aliexpress["root"])
    before = _lake_bytes(settings)
    path = aliexpress["root"] / "late" / "AliExpress_NL" / "train.csv"
    _write_csv(path, _ae_rows(5, 40))
    with open(path, "ab") as f:
        f.write(b"1," + b"1," * 15 + b"\xff\xfe," + b"0.5," * 63 + b"0,0\n")  # invalid UTF-8 in the last row
    layout = AliExpressLayout(block_size=1 << 12)  # many blocks: the bad one comes after good ones
    with pytest.raises(StopRun, match=r"unreadable CSV .*invalid UTF8"):
        import_aliexpress(settings, [path.parent], START, DAYS, layout=layout, progress=False)
    assert _lake_bytes(settings) == before


def test_aliexpress_refuses_two_files_of_one_name_in_a_scenario(settings, aliexpress):
    """Ids are keyed by scenario and file name: two train.csv of one country would share them."""
    nl = aliexpress["root"] / "AliExpress_NL"
    with pytest.raises(StopRun, match=r"scenario nl has more than one train\.csv: their ids would collide"):
        import_aliexpress(settings, [nl, nl / "train.csv"], START, DAYS, progress=False)
    assert not Path(settings.lake, "raw").exists()


def test_aliexpress_import_of_nothing_is_refused(settings, aliexpress):
    """No impression (here every scenario left out) would replace good days by empty ones: refused."""
    _import_ae(settings, aliexpress["root"])
    before = _lake_bytes(settings)
    left_out = r"\(malformed: \{'bad_column_count': 1, .*\}, left out by --scenarios: \{'es': \d+, 'nl': \d+\}\)"
    with pytest.raises(StopRun, match=r"no impression imported from \d+ rows read " + left_out):
        _import_ae(settings, aliexpress["root"], scenarios=("fr",))
    assert _lake_bytes(settings) == before


# --- Ali-CCP, the raw release ---------------------------------------------------------------------------


def _features(items: list[tuple[str, ...]]) -> str:
    """A feature_list of (field, id) or (field, id, value) items; the value defaults to 1.0."""
    return "\x01".join(f"{item[0]}\x02{item[1]}\x03{item[2] if len(item) > 2 else 1.0}" for item in items)


def _write_aliccp(root: Path, split: str, seed: int, n_users: int) -> list[dict]:
    """A split of `n_users` common rows with 3–5 samples each, scenario in {11, 22, 33}; returns the samples."""
    rng = np.random.default_rng(seed)
    common, skeleton, samples = [], [], []
    for u in range(n_users):
        index = f"{split}{u:04x}"
        feats = [("101", str(500 + u)), ("122", str(u % 3)), ("109_14", "7", "0.5"), ("109_14", "8", "2.5")]
        common.append(f"{index},{len(feats)},{_features(feats)}")
        for _ in range(int(rng.integers(3, 6))):
            sid = len(samples) + 1
            click = int(rng.random() < 0.3)
            buy = int(click and rng.random() < 0.4)
            scenario = str(rng.choice(["11", "22", "33"]))
            item = str(int(rng.integers(9000, 9020)))
            feats = [("205", item), ("206", str(int(item) % 4)), ("216", "3"), ("301", scenario), ("853", "1", "0.25"),
                     ("999", "5")]  # fmt: skip
            skeleton.append(f"{sid},{click},{buy},{index},{len(feats)},{_features(feats)}")
            samples.append({"impression_id": f"ccp-{split}-{sid}", "user": str(500 + u), "item": item,
                            "scenario": f"ccp_{scenario}", "request_id": f"ccp-{split}-{index}",
                            "click": click, "conversion": buy, "f122": u % 3, "f206": int(item) % 4})  # fmt: skip
    if split == "train":  # one line of each malformed kind
        ok = _features([("205", "1"), ("301", "11")])
        common.append("badrow,1")
        skeleton += [
            "901,1,0",
            f"902,0,1,{split}0000,2,{ok}",  # buy without click
            f"903,7,0,{split}0000,2,{ok}",
            f"904,0,0,{split}0000,3,{ok}",  # says 3 features, has 2
            f"905,0,0,{split}0000,1,{_features([('205', '1')])}",
            f"906,0,0,nosuchindex,2,{ok}",
            f"907,0,0,{split}0000,3,{_features([('205', '1'), ('206', 'x'), ('301', '11')])}",  # not an id
        ]
    (root / f"common_features_{split}.csv").write_text("\n".join(common) + "\n")
    (root / f"sample_skeleton_{split}.csv").write_text("\n".join(skeleton) + "\n")
    return samples


def test_aliccp_maps_fields_labels_and_scenarios(settings, tmp_path):
    samples = pd.DataFrame(_write_aliccp(tmp_path, "train", 0, 12) + _write_aliccp(tmp_path, "test", 1, 6))
    report = import_aliccp(settings, [tmp_path], START, DAYS, batch_rows=16, progress=False)
    imps, clicks, convs = (_raw(settings, name, CCP_RAW) for name in TABLES)
    merged = imps.merge(samples, on="impression_id", suffixes=("", "_src"), validate="one_to_one")
    assert len(merged) == len(samples) == len(imps)
    assert (merged["scenario"] == merged["scenario_src"]).all() and (
        merged["request_id"] == merged["request_id_src"]
    ).all()
    assert (merged["user_id"] == stable_hash(merged["user"].tolist())).all()  # field 101 of the common row
    assert (merged["item_id"] == stable_hash(merged["item"].tolist())).all()  # field 205
    assert sorted(clicks["impression_id"]) == sorted(samples.loc[samples["click"] == 1, "impression_id"])
    assert sorted(convs["click_id"]) == sorted("c-" + samples.loc[samples["conversion"] == 1, "impression_id"])
    assert set(report["msmt_scenarios"].split(",")) == {"ccp_11", "ccp_22", "ccp_33"}
    assert report["malformed"] == {
        "bad_column_count": 1,
        "bad_label": 1,
        "bad_value": 1,
        "common_bad_column_count": 1,
        "conversion_without_click": 1,
        "feature_num_mismatch": 1,
        "missing_scenario": 1,
        "unknown_common_feature_index": 1,
    }
    assert report["contract"] == str(contract.CONTRACTS_DIR / "aliccp_raw.toml")
    assert report["not_imported"] == {str(tmp_path / f"sample_skeleton_{s}.csv"): ["999"] for s in ("train", "test")}
    # every field becomes columns: ids (f…) from either row, values (d…); several occurrences: the last
    assert (merged["f101"] == merged["user"].astype(int)).all() and (merged["f205"] == merged["item"].astype(int)).all()
    assert (merged["f122"] == merged["f122_src"]).all() and (merged["f206"] == merged["f206_src"]).all()
    assert (merged["f109_14"] == 8).all() and (merged["d109_14"] == 2.5).all()
    assert (merged["f853"] == 1).all() and (merged["d853"] == 0.25).all()
    assert merged["f121"].isna().all() and merged["d508"].isna().all()  # absent fields are null
    # positions rank each request's rows in file order, across batch boundaries (batch_rows=16)
    order = merged.assign(sid=merged["impression_id"].str.rsplit("-", n=1).str[1].astype(int))
    for _, rows in order.groupby("request_id"):
        assert list(rows.sort_values("sid")["position"]) == list(range(len(rows)))
        assert rows["ts"].nunique() == 1
    # one stream: every scenario on every day, test after train
    assert (imps.groupby("scenario")["ds"].nunique() == DAYS).all()
    assert (
        imps.loc[imps["request_id"].str.startswith("ccp-train"), "ts"].max()
        <= imps.loc[imps["request_id"].str.startswith("ccp-test"), "ts"].min()
    )


def test_aliccp_is_deterministic(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _write_aliccp(data, "train", 0, 8)
    runs = []
    for name, rows in (("a", 5), ("b", 1000)):  # batching does not change the output
        s = Settings(home=tmp_path / name)
        import_aliccp(s, [data / "sample_skeleton_train.csv"], START, DAYS, batch_rows=rows, progress=False)
        runs.append(_snapshot(s, CCP_RAW))
    for name in TABLES:
        pd.testing.assert_frame_equal(runs[0][name], runs[1][name])


CCP_HEADER_LINE = (  # the processed layout's header, as torch-rechub's ali_ccp_*.csv have it
    "click,purchase,101,121,122,124,125,126,127,128,129,205,206,207,210,216,508,509,702,853,301,"
    "109_14,110_14,127_14,150_14,D109_14,D110_14,D127_14,D150_14,D508,D509,D702,D853"
)
CCP_HEADER = CCP_HEADER_LINE.split(",")


@pytest.mark.parametrize(
    ("name", "content", "found"),
    [
        (
            "sample_skeleton_train.csv",
            ",".join(CCP_HEADER) + "\n" + ",".join(["0"] * 33) + "\n",
            "it is the processed Ali-CCP CSV header (click,purchase,101,121,…,301,…)",
        ),
        (
            "sample_skeleton_train.csv",
            ",".join(AE_HEADER) + "\n",
            "it is a processed AliExpress CSV header",
        ),
        ("sample_skeleton_train.csv", "", "it is an empty line (is the file empty?)"),
        ("sample_skeleton_train.csv", "1,0,0,trai", "it is 4 comma-separated fields starting '1,0,0,trai'"),
        (
            "common_features_train.csv",
            "1,0,0,train0000,1," + "205\x029000\x031.0" + "\n",
            "should be a raw Ali-CCP common_features row (common_feature_index,feature_num,feature_list); "
            "it is a raw Ali-CCP sample_skeleton row",
        ),
    ],
    ids=["processed-aliccp", "aliexpress", "empty", "cut", "skeleton-as-common"],
)
def test_aliccp_wrong_file_is_refused_and_the_lake_is_unchanged(settings, tmp_path, name, content, found):
    good = tmp_path / "good"
    good.mkdir()
    _write_aliccp(good, "train", 0, 6)
    import_aliccp(settings, [good], START, DAYS, progress=False)
    before = _lake_bytes(settings)
    bad = tmp_path / "bad"
    bad.mkdir()
    _write_aliccp(bad, "train", 1, 6)
    (bad / name).write_text(content)
    with pytest.raises(StopRun, match=re.escape(f"{name}: its first line should be")) as refused:
        import_aliccp(settings, [bad], START, DAYS, progress=False)
    assert found in str(refused.value)
    _assert_refused_with_layouts(refused.value)
    assert _lake_bytes(settings) == before


def test_aliccp_failure_half_way_leaves_the_lake_unchanged(settings, tmp_path, monkeypatch):
    """Batches written before a failure are staged, not swapped in: the old days stay whole."""
    _write_aliccp(tmp_path, "train", 0, 12)
    import_aliccp(settings, [tmp_path], START, DAYS, batch_rows=8, progress=False)
    before = _lake_bytes(settings)
    batch = aliccp._batch
    calls = []

    def fails_on_the_third(*args):
        calls.append(args[1])
        if len(calls) == 3:
            raise OSError("disk gone")
        return batch(*args)

    monkeypatch.setattr(aliccp, "_batch", fails_on_the_third)
    with pytest.raises(OSError, match="disk gone"):
        import_aliccp(settings, [tmp_path], START, DAYS, batch_rows=8, progress=False)
    assert len(calls) == 3 and _lake_bytes(settings) == before


# --- Ali-CCP, the processed layout ----------------------------------------------------------------------


def _write_processed(path: Path, seed: int, n_users: int, extra: tuple[str, ...] = ()) -> pd.DataFrame:
    """A processed CSV: users' rows in runs of 2–4 (user 0, the rare users' code, in every fourth run), then
    `extra` lines; returns the rows as text with the impression and request ids the importer gives them."""
    rng = np.random.default_rng(seed)
    rows, requests = [], []
    for u in range(n_users):
        user = "0" if u % 4 == 3 else str(u + 1)
        for k in range(int(rng.integers(2, 5))):
            click = int(rng.random() < 0.3)
            values = {field: str(int(rng.integers(1, 40))) for field in CCP_HEADER[3:25]}
            values |= {f: f"{rng.random():.4f}" for f in CCP_HEADER[25:]}
            values |= {"click": str(click), "purchase": str(int(click and rng.random() < 0.4)), "101": user}
            values["301"] = str(int(rng.integers(1, 4)))
            requests.append(len(rows) if k == 0 or user == "0" else requests[-1])
            rows.append([values[field] for field in CCP_HEADER])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([",".join(CCP_HEADER), *(",".join(r) for r in rows), *extra]) + "\n")
    frame = pd.DataFrame(rows, columns=CCP_HEADER)
    frame["impression_id"] = [f"ccp-{path.stem}-{k}" for k in range(len(rows))]
    frame["request_id"] = [f"ccp-{path.stem}-{k}" for k in requests]
    return frame


def test_aliccp_processed_layout_imports_every_column(settings, tmp_path):
    bad = (
        "0,0,1,2",  # too few fields
        ",".join(["0", "1", *["1"] * 31]),  # purchase without click
        ",".join(["1", "0", "1", *["1"] * 8, "", *["1"] * 21]),  # no item (205)
        ",".join(["0", "0", "1", *["1"] * 9, "x", *["1"] * 20]),  # 206 is not an id
    )
    truth = pd.concat(
        [
            _write_processed(tmp_path / "ali_ccp_train.csv", 0, 12, bad),
            _write_processed(tmp_path / "ali_ccp_test.csv", 1, 6),
        ]
    )
    report = import_aliccp(settings, [tmp_path], START, DAYS, batch_rows=7, progress=False)
    imps, clicks, convs = (_raw(settings, name, CCP) for name in TABLES)
    merged = imps.merge(truth, on="impression_id", suffixes=("", "_src"), validate="one_to_one")
    assert len(merged) == len(truth) == len(imps)
    assert report["contract"] == str(contract.CONTRACTS_DIR / "aliccp.toml") and report["not_imported"] == {}
    assert report["malformed"] == {
        "bad_column_count": 1,
        "bad_value": 1,
        "conversion_without_click": 1,
        "missing_item_id": 1,
    }
    # scenario from 301, keys from 101 / 205, labels from click / purchase
    assert (merged["scenario"] == "ccp_" + merged["301"]).all()
    assert set(report["msmt_scenarios"].split(",")) == {"ccp_1", "ccp_2", "ccp_3"}
    assert (merged["user_id"] == stable_hash(merged["101"].tolist())).all()
    assert (merged["item_id"] == stable_hash(merged["205"].tolist())).all()
    assert sorted(clicks["impression_id"]) == sorted(truth.loc[truth["click"] == "1", "impression_id"])
    assert sorted(convs["click_id"]) == sorted("c-" + truth.loc[truth["purchase"] == "1", "impression_id"])
    # every sparse field an int under f<field>, every D column a float under d<field>; 301 is the scenario
    for field in CCP_HEADER[2:]:
        if field.startswith("D"):
            assert (merged[f"d{field[1:]}"] == merged[field].astype(float)).all(), field
        elif field != "301":
            assert (merged[f"f{field}"] == merged[field].astype(int)).all(), field
    assert "f301" not in imps
    # a request: a run of one known user's rows in a file (across batches of 7); user 0's rows stand alone
    assert (merged["request_id"] == merged["request_id_src"]).all()
    order = merged.assign(row=merged["impression_id"].str.rsplit("-", n=1).str[1].astype(int))
    for _, rows in order.groupby("request_id"):
        assert list(rows.sort_values("row")["position"]) == list(range(len(rows)))
        assert rows["ts"].nunique() == 1
    assert (imps.groupby("scenario")["ds"].nunique() == DAYS).all()
    train = imps["impression_id"].str.startswith("ccp-ali_ccp_train-")
    assert imps.loc[train, "ts"].max() <= imps.loc[~train, "ts"].min()  # a directory: train before test


def test_aliccp_layout_is_told_by_the_header_and_refused_when_unknown_or_mixed(settings, tmp_path):
    """A processed CSV is found by its header, whatever its name; a path in neither layout, or both
    layouts in one import, is refused before anything is written."""
    data = _write_processed(tmp_path / "mine.csv", 0, 4)
    report = import_aliccp(settings, [tmp_path / "mine.csv"], START, DAYS, progress=False)
    assert report["totals"]["impressions"] == len(data)
    before = _lake_bytes(settings)
    raw = tmp_path / "raw"
    raw.mkdir()
    _write_aliccp(raw, "train", 0, 2)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.csv").write_text("a,b\n1,2\n")
    for paths, what in (
        ([tmp_path / "mine.csv", raw], "is the processed Ali-CCP layout, "),
        ([tmp_path / "other"], "no sample_skeleton_*.csv nor processed Ali-CCP CSV in it; notes.csv starts with"),
        ([tmp_path / "other" / "notes.csv"], "neither named sample_skeleton_<split>.csv nor a processed Ali-CCP CSV"),
    ):
        with pytest.raises(StopRun, match=re.escape(what)):
            import_aliccp(settings, paths, START, DAYS, progress=False)
    assert _lake_bytes(settings) == before


def test_aliccp_processed_file_without_a_contract_column_is_refused(settings, tmp_path):
    """The file and the column are named; nothing is written."""
    path = tmp_path / "ali_ccp_train.csv"
    frame = _write_processed(path, 0, 4)
    kept = [c for c in CCP_HEADER if c != "D853"]
    path.write_text("\n".join([",".join(kept), *(",".join(r) for r in frame[kept].to_numpy())]) + "\n")
    with pytest.raises(StopRun) as refused:
        import_aliccp(settings, [path], START, DAYS, progress=False)
    assert str(refused.value).startswith(f"{path}: no column D853 (for d853), which contract ")
    assert not Path(settings.lake, "raw").exists()


# --- the command line -------------------------------------------------------------------------------------


def test_cli_prints_the_contract_and_scenarios_to_export(tmp_path, monkeypatch):
    _write_aliccp(tmp_path, "train", 0, 4)
    monkeypatch.setenv("MSMT_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(
        import_app, ["aliccp", str(tmp_path), "--start", START, "--days", "2", "--scenarios", "ccp_22,ccp_11"]
    )
    assert result.exit_code == 0, result.output
    last = (dt.date.fromisoformat(START) + dt.timedelta(days=1)).isoformat()
    assert "export MSMT_SCENARIOS=ccp_22,ccp_11" in result.output and f"msmt run --ds {last}" in result.output
    assert f"export MSMT_DAG_START={START}" in result.output  # imported days may lie before the DAG's start
    assert "export MSMT_CONTRACT=contracts/aliccp_raw.toml" in result.output  # the lake's contract
    home = Settings(home=tmp_path / "home")
    assert Path(lake.raw(home, "impressions", START)).exists()


def test_cli_refuses_a_wrong_file_with_a_message_and_leaves_the_lake(tmp_path, monkeypatch):
    for name in ("good", "bad"):
        (tmp_path / name).mkdir()
    _write_aliccp(tmp_path / "good", "train", 0, 4)
    monkeypatch.setenv("MSMT_HOME", str(tmp_path / "home"))
    runner = CliRunner()
    assert runner.invoke(import_app, ["aliccp", str(tmp_path / "good"), "--start", START, "--days", "2"]).exit_code == 0
    home = Settings(home=tmp_path / "home")
    before = _lake_bytes(home)
    _write_aliccp(tmp_path / "bad", "train", 1, 4)
    (tmp_path / "bad" / "sample_skeleton_train.csv").write_text(",".join(CCP_HEADER) + "\n")
    result = runner.invoke(import_app, ["aliccp", str(tmp_path / "bad"), "--start", START, "--days", "2"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and "it is the processed Ali-CCP CSV header" in result.stderr
    assert result.stderr.endswith("\nthe lake is unchanged\n")
    assert "Traceback" not in result.output and "MSMT_SCENARIOS" not in result.output
    assert _lake_bytes(home) == before
