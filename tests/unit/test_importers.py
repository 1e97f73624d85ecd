"""Importers turn small files in the public releases' formats into raw logs that honour the contracts."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from msmt import lake
from msmt.errors import StopRun
from msmt.ids import stable_hash
from msmt.schemas import CLICKS, CONVERSIONS, IMPRESSIONS
from msmt.settings import Settings
from pipeline.importers import N_ITEM_CATEGORIES, N_USER_SEGMENTS, aliccp
from pipeline.importers.aliccp import import_aliccp
from pipeline.importers.aliexpress import AliExpressLayout, import_aliexpress
from pipeline.importers.cli import import_app

START = "2024-05-01"
DAYS = 3
SCHEMAS = {"impressions": IMPRESSIONS, "clicks": CLICKS, "conversions": CONVERSIONS}


def _raw(settings: Settings, name: str) -> pd.DataFrame:
    """Every file of every day of a raw table, schema-checked, with its `ds`."""
    frames = []
    for ds in lake.days_between(START, DAYS):
        files = sorted(Path(lake.raw(settings, name, ds)).glob("*.parquet"))
        assert files, (name, ds)  # every day has every table, empty or not
        for f in files:
            table = pq.read_table(f)
            assert table.schema.equals(SCHEMAS[name]), (name, ds, f.name)
            frames.append(table.to_pandas().assign(ds=ds))
    return pd.concat(frames, ignore_index=True)


def _lake_bytes(settings: Settings) -> dict[str, bytes]:
    """Every file under the lake, by path: what a refused import must leave exactly as it was."""
    root = Path(settings.lake)
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file()}


def _assert_refused_with_layouts(error: StopRun) -> None:
    """The refusal names both supported layouts, so the user knows what to bring instead."""
    message = str(error)
    assert "Supported layouts: (1) the raw Ali-CCP release" in message
    assert "sample_skeleton_<split>.csv + common_features_<split>.csv" in message
    assert "(2) the processed AliExpress CSVs" in message and "search_id,categorical_1..16" in message


def _snapshot(settings: Settings) -> dict[str, pd.DataFrame]:
    return {
        name: _raw(settings, name).sort_values(_raw(settings, name).columns[0]).reset_index(drop=True)
        for name in SCHEMAS
    }


# --- AliExpress ---------------------------------------------------------------------------------------

AE_HEADER = [
    "search_id",
    *(f"categorical_{i}" for i in range(1, 17)),
    "numerical_1",
    "numerical_2",
    "click",
    "conversion",
]


def _ae_rows(seed: int, n_search: int) -> list[list[str]]:
    """Searches of 4–6 items, ~20% clicks, ~30% of clicks converting."""
    rng = np.random.default_rng(seed)
    rows = []
    for search in range(n_search):
        user = [str(v) for v in rng.integers(0, 3, 9)]
        for _ in range(int(rng.integers(4, 7))):
            item = [str(v) for v in rng.integers(0, 20, 7)]
            click = int(rng.random() < 0.2)
            conversion = int(click and rng.random() < 0.3)
            rows.append([str(seed * 1000 + search), *user, *item, "0.5", "1.5", str(click), str(conversion)])
    return rows


def _write_csv(path: Path, rows: list[list[str]], extra_lines: tuple[str, ...] = ()) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(AE_HEADER), *(",".join(r) for r in rows), *extra_lines]
    path.write_text("\n".join(lines) + "\n")


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
        ",".join(["998", *["1"] * 16, "0.5", "1.5", "2", "0"]),  # label 2 (raw-release coding) is not 0/1
        ",".join(["997", *["1"] * 16, "0.5", "1.5", "0", "1"]),  # conversion without click
    )
    for key, (path, rows) in files.items():
        _write_csv(path, rows, bad if key == "nl_test" else ())
    return {"root": tmp_path, "files": files}


def _import_ae(settings: Settings, root: Path, **kw) -> dict:
    paths = [root / "AliExpress_NL", root / "AliExpress_ES"]
    return import_aliexpress(settings, paths, START, DAYS, progress=False, **kw)


def test_aliexpress_partitions_follow_the_contract_and_the_labels(settings, aliexpress):
    report = _import_ae(settings, aliexpress["root"])
    imps, clicks, convs = (_raw(settings, name) for name in SCHEMAS)
    expected = []
    for key, (_, rows) in aliexpress["files"].items():
        country, split = key.split("_")
        for k, row in enumerate(rows):
            expected.append((f"ae-{country}-{split}-{k}", country, split, row[0], int(row[-2]), int(row[-1])))
    truth = pd.DataFrame(expected, columns=["impression_id", "scenario", "split", "search_id", "click", "conversion"])
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
    assert (merged["scenario"] == merged["scenario_src"]).all()
    assert (
        merged["request_id"] == "ae-" + merged["scenario"] + "-" + merged["split"] + "-" + merged["search_id"]
    ).all()
    assert report["msmt_scenarios"] == "nl,es"  # largest first
    # pseudo-ids: same user features → same user in a country; proxies inside the simulator's vocabularies
    assert imps["user_id"].min() >= 0 and imps["user_segment"].between(0, N_USER_SEGMENTS - 1).all()
    assert imps["item_category"].between(0, N_ITEM_CATEGORIES - 1).all()
    assert (imps.groupby("request_id")["user_id"].nunique() == 1).all()
    assert set(imps["device"]) == {"unknown"} and (imps["hist_item_ids"].map(len) == 0).all()


def test_aliexpress_time_and_positions_are_a_valid_log(settings, aliexpress):
    _import_ae(settings, aliexpress["root"])
    imps, clicks, convs = (_raw(settings, name) for name in SCHEMAS)
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
    assert report["malformed"] == {"bad_column_count": 1, "bad_label": 1, "conversion_without_click": 1}
    assert all(report["malformed_examples"][reason] for reason in report["malformed"])
    assert report["rows_read"] == report["totals"]["impressions"] + 3


def test_aliexpress_import_is_deterministic_and_a_rerun_replaces_it(tmp_path, aliexpress):
    first, second = (Settings(home=tmp_path / name) for name in ("a", "b"))
    _import_ae(first, aliexpress["root"])
    _import_ae(second, aliexpress["root"])
    _import_ae(second, aliexpress["root"])  # re-run on the same lake: replaced, not appended
    a, b = _snapshot(first), _snapshot(second)
    for name in SCHEMAS:
        pd.testing.assert_frame_equal(a[name], b[name])


def test_aliexpress_scenarios_option_selects_and_orders(settings, aliexpress):
    report = _import_ae(settings, aliexpress["root"], scenarios=("es",))
    assert set(_raw(settings, "impressions")["scenario"]) == {"es"}
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
    assert len(_raw(settings, "impressions")) == report["totals"]["impressions"]


def _published_like(root: Path, scattered: bool) -> dict[str, int]:
    """Train + test shaped like the published processed files: search ids re-encoded per split (small ints,
    the same numbers in both files, in no order), 1-11 rows a search, a few hundred rows a file; `scattered`
    shuffles a file's rows so a search's rows are spread over it. Returns the rows per file."""
    rng = np.random.default_rng(7)
    sizes = {}
    for split, n_search in (("train", 50), ("test", 40)):
        rows = []
        for search in rng.permutation(n_search):
            user = [str(v) for v in rng.integers(0, 5, 9)]
            for _ in range(int(rng.integers(1, 12))):
                item = [str(v) for v in rng.integers(0, 30, 7)]
                rows.append([str(search), *user, *item, "0.5", "1.5", str(int(rng.random() < 0.2)), "0"])
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
        (",".join(AE_HEADER) + "\n1,2,3\n", "its first data row has 3 fields, its header 21"),
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
        f.write(b"1," + b"1," * 15 + b"\xff\xfe,0.5,1.5,0,0\n")  # invalid UTF-8 in the last row
    layout = AliExpressLayout(block_size=1 << 10)  # many blocks: the bad one comes after good ones
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


# --- Ali-CCP -------------------------------------------------------------------------------------------


def _features(pairs: list[tuple[str, str]]) -> str:
    return "\x01".join(f"{field}\x02{fid}\x03{1.0}" for field, fid in pairs)


def _write_aliccp(root: Path, split: str, seed: int, n_users: int) -> list[dict]:
    """A split of `n_users` common rows with 3–5 samples each, scenario in {11, 22, 33}; returns the samples."""
    rng = np.random.default_rng(seed)
    common, skeleton, samples = [], [], []
    for u in range(n_users):
        index = f"{split}{u:04x}"
        feats = [("101", str(500 + u)), ("122", str(u % 3)), ("109_14", "7"), ("109_14", "8")]
        common.append(f"{index},{len(feats)},{_features(feats)}")
        for _ in range(int(rng.integers(3, 6))):
            sid = len(samples) + 1
            click = int(rng.random() < 0.3)
            buy = int(click and rng.random() < 0.4)
            scenario = str(rng.choice(["11", "22", "33"]))
            item = str(int(rng.integers(9000, 9020)))
            feats = [("205", item), ("206", str(int(item) % 4)), ("216", "3"), ("301", scenario), ("853", "1")]
            skeleton.append(f"{sid},{click},{buy},{index},{len(feats)},{_features(feats)}")
            samples.append({"impression_id": f"ccp-{split}-{sid}", "user": str(500 + u), "item": item,
                            "scenario": f"ccp_{scenario}", "request_id": f"ccp-{split}-{index}",
                            "click": click, "conversion": buy})  # fmt: skip
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
        ]
    (root / f"common_features_{split}.csv").write_text("\n".join(common) + "\n")
    (root / f"sample_skeleton_{split}.csv").write_text("\n".join(skeleton) + "\n")
    return samples


def test_aliccp_maps_fields_labels_and_scenarios(settings, tmp_path):
    samples = pd.DataFrame(_write_aliccp(tmp_path, "train", 0, 12) + _write_aliccp(tmp_path, "test", 1, 6))
    report = import_aliccp(settings, [tmp_path], START, DAYS, batch_rows=16, progress=False)
    imps, clicks, convs = (_raw(settings, name) for name in SCHEMAS)
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
        "common_bad_column_count": 1,
        "conversion_without_click": 1,
        "feature_num_mismatch": 1,
        "missing_scenario": 1,
        "unknown_common_feature_index": 1,
    }
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
        runs.append(_snapshot(s))
    for name in SCHEMAS:
        pd.testing.assert_frame_equal(runs[0][name], runs[1][name])


CCP_PROCESSED_HEADER = "click,purchase,101,121,122,124,125,126,127,128,129,205,206,207,210,216,508,509,702,853,301"


@pytest.mark.parametrize(
    ("name", "content", "found"),
    [
        (
            "sample_skeleton_train.csv",
            CCP_PROCESSED_HEADER + "\n0,0,1,1,1,1,1,0,1,1,1,0,1,1,1,0,1,0,0,0,1\n",
            "it is the processed Ali-CCP CSV header (click,purchase,101,121,…,301,…), a layout not supported yet",
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


def test_aliccp_processed_csv_is_refused_by_name(settings, tmp_path):
    """The processed release (ali_ccp_train.csv …) is named as such: not supported yet, the raw pair is."""
    (tmp_path / "ali_ccp_train.csv").write_text(CCP_PROCESSED_HEADER + "\n")
    processed = "the processed Ali-CCP CSV header (click,purchase,101,121,…,301,…), a layout not supported yet"
    for path, what in (
        (tmp_path, f"no sample_skeleton_*.csv in it; ali_ccp_train.csv starts with {processed}"),
        (tmp_path / "ali_ccp_train.csv", f"not named sample_skeleton_<split>.csv; it starts with {processed}"),
    ):
        with pytest.raises(StopRun) as refused:
            import_aliccp(settings, [path], START, DAYS, progress=False)
        assert f"{path}: {what}. " in str(refused.value)
        _assert_refused_with_layouts(refused.value)
    assert not any(Path(settings.lake).rglob("*.parquet"))


def test_aliccp_failure_half_way_leaves_the_lake_unchanged(settings, tmp_path, monkeypatch):
    """Batches written before a failure are staged, not swapped in: the old days stay whole."""
    _write_aliccp(tmp_path, "train", 0, 12)
    import_aliccp(settings, [tmp_path], START, DAYS, batch_rows=8, progress=False)
    before = _lake_bytes(settings)
    batch = aliccp._batch
    calls = []

    def fails_on_the_third(rows, split):
        calls.append(split)
        if len(calls) == 3:
            raise OSError("disk gone")
        return batch(rows, split)

    monkeypatch.setattr(aliccp, "_batch", fails_on_the_third)
    with pytest.raises(OSError, match="disk gone"):
        import_aliccp(settings, [tmp_path], START, DAYS, batch_rows=8, progress=False)
    assert len(calls) == 3 and _lake_bytes(settings) == before


def test_cli_prints_the_scenarios_to_export(tmp_path, monkeypatch):
    _write_aliccp(tmp_path, "train", 0, 4)
    monkeypatch.setenv("MSMT_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(
        import_app, ["aliccp", str(tmp_path), "--start", START, "--days", "2", "--scenarios", "ccp_22,ccp_11"]
    )
    assert result.exit_code == 0, result.output
    last = (dt.date.fromisoformat(START) + dt.timedelta(days=1)).isoformat()
    assert "export MSMT_SCENARIOS=ccp_22,ccp_11" in result.output and f"msmt run --ds {last}" in result.output
    assert f"export MSMT_DAG_START={START}" in result.output  # imported days may lie before the DAG's start
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
    (tmp_path / "bad" / "sample_skeleton_train.csv").write_text(CCP_PROCESSED_HEADER + "\n")
    result = runner.invoke(import_app, ["aliccp", str(tmp_path / "bad"), "--start", START, "--days", "2"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and "a layout not supported yet" in result.stderr
    assert result.stderr.endswith("\nthe lake is unchanged\n")
    assert "Traceback" not in result.output and "MSMT_SCENARIOS" not in result.output
    assert _lake_bytes(home) == before
