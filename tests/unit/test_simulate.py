"""The simulator is the pipeline's ground truth: its files must honour the contracts and its world
must be as MSMT-hard as DESIGN.md says."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from msmt import lake
from msmt.schemas import RAW
from msmt.settings import Settings
from pipeline.simulate import (
    FAULTS,
    WORLDS,
    ZOO,
    SimConfig,
    _build_world,
    _simulate_day,
    oracle_auc,
    simulate,
)
from training.evaluate import auc

START = "2024-03-01"
SMALL = SimConfig(n_users=2_000, n_items=500, new_items_per_day=20)


def _run(settings: Settings, days: int = 3, per_day: int = 5_000, seed: int = 7, config: SimConfig = SMALL) -> dict:
    return simulate(settings, START, days, per_day, seed, config, progress=False)


def _read(settings: Settings, name: str) -> pd.DataFrame:
    """Every partition of a raw table, with its `ds` as a string."""
    df = pd.read_parquet(lake.raw(settings, name))
    return df.assign(ds=df["ds"].astype(str))


def _labels(settings: Settings) -> pd.DataFrame:
    """Impressions labelled the way build_samples will: click ∧ a conversion of one of its clicks."""
    imps, clicks, convs = (_read(settings, n) for n in ("impressions", "clicks", "conversions"))
    converted = clicks.loc[clicks["click_id"].isin(convs["click_id"]), "impression_id"]
    return imps.assign(
        click=imps["impression_id"].isin(clicks["impression_id"]).astype(int),
        conversion=imps["impression_id"].isin(converted).astype(int),
    )


def _files(settings: Settings) -> dict[str, bytes]:
    root = Path(lake.table(settings, "raw"))
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.parquet"))}


def test_every_partition_has_exactly_the_contract_schema(settings):
    report = _run(settings)
    for name, schema in RAW.items():
        for ds in lake.days_between(START, 3):
            table = pq.read_table(lake.raw(settings, name, ds) + "/part-0.parquet")
            assert table.schema.equals(schema), (name, ds)
            assert table.num_rows == report["days"][ds][name]


def test_requests_are_ranked_lists_of_one_user_scenario_and_second(settings):
    _run(settings)
    imps = _read(settings, "impressions").dropna(subset=["user_id"])
    clean = imps[imps["scenario"].isin(settings.scenarios) & (imps["position"] >= 0)]
    clean = clean[clean["ts"].dt.strftime("%Y-%m-%d") == clean["ds"]]
    full = clean.groupby("request_id").filter(lambda r: len(r) == SMALL.candidates_per_request)
    per_request = full.groupby("request_id").agg(
        users=("user_id", "nunique"), scenarios=("scenario", "nunique"), ts=("ts", "nunique"), pos=("position", set)
    )
    assert len(per_request) > 0.9 * imps["request_id"].nunique()
    assert (per_request[["users", "scenarios", "ts"]] == 1).all().all()
    assert (per_request["pos"] == set(range(SMALL.candidates_per_request))).all()
    assert imps["impression_id"].is_unique


def test_same_seed_gives_byte_identical_files_and_another_seed_does_not(settings, tmp_path):
    other = settings.with_(home=tmp_path / "again")
    third = settings.with_(home=tmp_path / "third")
    _run(settings, days=2)
    _run(other, days=2)
    _run(third, days=2, seed=8)
    assert _files(settings) == _files(other)
    assert _files(settings) != _files(third)


def test_scenario_shares_follow_the_config_including_the_long_tail(settings):
    _run(settings, per_day=20_000)
    share = _read(settings, "truth")["scenario"].value_counts(normalize=True)
    for name, expected in zip(settings.scenarios, SMALL.scenario_shares, strict=True):
        assert share[name] == pytest.approx(expected, abs=0.03), name
    assert 0.01 < share[settings.scenarios[-1]] < 0.03


def test_conversions_follow_a_click_and_each_event_lands_in_its_own_day(settings):
    report = _run(settings, days=4, per_day=20_000)
    imps, clicks, convs = (_read(settings, n) for n in ("impressions", "clicks", "conversions"))
    for events in (clicks, convs):
        assert (events["ts"].dt.strftime("%Y-%m-%d") == events["ds"]).all()
    valid = convs[convs["click_id"].isin(clicks["click_id"])]
    assert len(valid) == len(convs) - report["malformed"]["conversions"]["missing_click"]
    shown = clicks.merge(imps, on="impression_id", suffixes=("", "_imp"))
    joined = valid.merge(shown, on="click_id", suffixes=("", "_click"))
    assert len(joined) > 0.95 * len(valid), "conversions belong to clicked impressions"
    assert (joined["ts"] > joined["ts_click"]).all()
    assert (joined["ds"] > joined["ds_click"]).any(), "some conversions land days after their click"
    assert (shown["ds"] > shown["ds_imp"]).any(), "some clicks cross midnight"
    assert report["not_landed"]["conversions"] > 0


def test_malformed_counts_per_kind_match_the_files(settings):
    config = SimConfig(n_users=2_000, n_items=500, malformed_rate=0.02)
    report = _run(settings, per_day=20_000, config=config)
    imps, clicks, convs = (_read(settings, n) for n in ("impressions", "clicks", "conversions"))
    shown = clicks.merge(imps[["impression_id", "ts"]], on="impression_id", how="left", suffixes=("", "_imp"))
    found = {
        "impressions": {
            "null_user_id": imps["user_id"].isna().sum(),
            "unknown_scenario": (imps["scenario"] == "unknown_scn").sum(),
            "ts_outside_day": (imps["ts"].dt.strftime("%Y-%m-%d") != imps["ds"]).sum(),
            "negative_position": (imps["position"] < 0).sum(),
        },
        "clicks": {
            "orphan": shown["ts_imp"].isna().sum(),
            "before_impression": (shown["ts"] < shown["ts_imp"]).sum(),
        },
        "conversions": {"missing_click": (~convs["click_id"].isin(clicks["click_id"])).sum()},
    }
    assert report["malformed"] == found
    assert all(n > 0 for kinds in found.values() for n in kinds.values())
    assert set(report["malformed"]) == set(FAULTS)
    for table in ("impressions", "clicks", "conversions"):
        rate = sum(found[table].values()) / report["totals"][table]
        assert rate == pytest.approx(config.malformed_rate, rel=0.5), table


def test_history_is_the_users_earlier_clicks_newest_first_and_empty_for_new_users(settings):
    config = SimConfig(n_users=300, n_items=500, malformed_rate=0.0, hist_len=5)
    _run(settings, config=config)
    imps, clicks = _read(settings, "impressions"), _read(settings, "clicks")
    days = lake.days_between(START, 3)
    assert (imps.loc[imps["ds"] == days[0], "hist_item_ids"].map(len) == 0).all()
    first_clicks = clicks.sort_values("ts").drop_duplicates("impression_id")
    clicked = first_clicks.merge(imps, on="impression_id", suffixes=("", "_imp"))
    clicked = clicked[clicked["ds_imp"] < days[2]].sort_values("ts", ascending=False)
    today = imps[imps["ds"] == days[2]]
    assert today["hist_item_ids"].map(len).between(1, config.hist_len - 1).any()
    for user, rows in today.groupby("user_id"):
        expected = clicked.loc[clicked["user_id"] == user, "item_id"].tolist()[: config.hist_len]
        for hist in rows["hist_item_ids"]:
            assert list(hist) == expected, user


def test_oracle_auc_is_well_above_chance_in_every_cell_and_clicks_follow_p_click(settings):
    _run(settings, per_day=100_000)
    truth, labelled = _read(settings, "truth"), _labels(settings)
    auc = oracle_auc(truth, labelled)
    assert set(auc) == {(s, t) for s in settings.scenarios for t in (*settings.tasks, "cvr")}
    assert all(value > 0.65 for value in auc.values()), auc
    rows = truth.merge(labelled[["impression_id", "click"]], on="impression_id")
    rates = rows.groupby(pd.qcut(rows["p_click"], 5), observed=True)["click"].mean()
    assert rates.is_monotonic_increasing and rates.iloc[-1] > 3 * rates.iloc[0]
    ctr = rows.groupby("scenario")["click"].mean()
    assert ctr.between(0.02, 0.12).all() and ctr.max() > 1.5 * ctr.min(), ctr


def _item_rank_agreement(settings: Settings, heterogeneity: float) -> float:
    """Spearman correlation of the items' mean true click logit between the two big scenarios."""
    config = SimConfig(n_users=2_000, n_items=100, new_items_per_day=0, label_noise=0.0, heterogeneity=heterogeneity)
    simulate(settings, START, 2, 20_000, 3, config, progress=False)
    rows = _read(settings, "truth").merge(_read(settings, "impressions")[["impression_id", "item_id"]])
    rows["logit"] = np.log(rows["p_click"] / (1 - rows["p_click"]))
    per_item = rows.pivot_table(index="item_id", columns="scenario", values="logit", aggfunc="mean")
    first, second = settings.scenarios[:2]
    return per_item[first].corr(per_item[second], method="spearman")


def test_heterogeneity_controls_how_much_scenarios_disagree(settings):
    identical = _item_rank_agreement(settings, 0.0)
    unrelated = _item_rank_agreement(settings.with_(home=settings.home / "h1"), 1.0)
    assert identical > 0.7, identical
    assert unrelated < 0.3, unrelated


def _one_day(config: SimConfig, impressions: int = 30_000):
    """One simulated day of `impressions` rows, in memory (no files)."""
    rng = np.random.default_rng(5)
    world = _build_world(config, 4, rng)
    return _simulate_day(world, config, rng, 0, impressions)


def test_zoo_world_gives_every_user_and_item_hundreds_of_rows_at_the_benchmarks_size():
    day = _one_day(ZOO)
    scale = 1_000_000 / len(day.item)  # bench/zoo_world.py trains on 1M rows
    per_user = np.bincount(day.user, minlength=ZOO.n_users) * scale
    per_item = np.bincount(day.item) * scale
    assert np.median(per_user) >= 250, np.median(per_user)
    assert np.median(per_item) >= 1_000, np.median(per_item)
    default = SimConfig()
    assert 1_000_000 / default.n_users < 60, "the default world has far fewer rows per user"


def test_position_gives_little_away_in_the_zoo_world_and_much_in_the_default_one():
    def position_auc(day, s: int) -> float:
        rows = day.scenario == s
        return auc(day.click[rows], -day.position[rows])

    zoo, default = _one_day(ZOO), _one_day(SimConfig())
    for s in range(3):  # the long-tail scenario of the default world is too small to judge
        assert position_auc(zoo, s) < 0.6, s
        assert position_auc(default, s) > 0.7, s
    assert WORLDS["zoo"] is ZOO and WORLDS["default"] == SimConfig()
