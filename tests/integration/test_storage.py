"""The lake's object I/O on the local disk and on a real S3 API server (moto) on loopback."""

from __future__ import annotations

import pyarrow as pa
import pytest

from msmt import storage

pytestmark = pytest.mark.integration


def test_round_trip_list_and_overwrite(lake_settings):
    root = f"{lake_settings.lake}/checks/raw"
    table = pa.table({"user_id": [1, 2, 3], "scenario": ["a", "b", "a"]})
    storage.write_parquet(lake_settings, f"{root}/ds=2026-01-01/part-0.parquet", table)
    storage.write_json(lake_settings, f"{root}/ds=2026-01-02.json", {"success": False})

    assert storage.read_parquet(lake_settings, f"{root}/ds=2026-01-01/part-0.parquet").equals(table)
    assert storage.read_json(lake_settings, f"{root}/ds=2026-01-02.json") == {"success": False}
    assert [uri.rsplit("/", 2)[-2:] for uri in storage.list_keys(lake_settings, root)] == [
        ["ds=2026-01-01", "part-0.parquet"],
        ["raw", "ds=2026-01-02.json"],
    ]

    storage.remove_prefix(lake_settings, f"{root}/ds=2026-01-01")
    assert not storage.exists(lake_settings, f"{root}/ds=2026-01-01")
    assert storage.exists(lake_settings, f"{root}/ds=2026-01-02.json")


def test_missing_object_is_an_error(lake_settings):
    with pytest.raises(FileNotFoundError, match=r"nope\.json"):
        storage.read_bytes(lake_settings, f"{lake_settings.lake}/nope.json")


def test_simulator_writes_the_lake_through_storage(lake_settings):
    from msmt import lake
    from pipeline.simulate import SimConfig, simulate

    report = simulate(
        lake_settings, "2026-01-01", 2, 500, seed=1, config=SimConfig(n_users=200, n_items=50), progress=False
    )
    uri = f"{lake.raw(lake_settings, 'impressions', '2026-01-02')}/part-0.parquet"
    assert storage.read_parquet(lake_settings, uri).num_rows == report["days"]["2026-01-02"]["impressions"]


@pytest.mark.parametrize("rebuild", [False, True])
def test_the_catch_up_sees_what_the_lake_holds(lake_settings, rebuild):
    """Days already built (and checked) are skipped on S3 as on disk; `rebuild` takes them all again."""
    from msmt import lake, schemas
    from pipeline import steps

    plan = steps.plan_day(lake_settings, "2026-01-10", rebuild)
    first, second, third = plan.train_days
    storage.write_json(lake_settings, lake.check_result(lake_settings, "samples", first), {"success": True})
    storage.write_json(lake_settings, lake.check_result(lake_settings, "samples", second), {"success": False})
    part = pa.table({"user_id": [1]})
    for view, day in [*((v, third) for v in schemas.FEATURES), ("user_stats", first)]:  # first: one view only
        storage.write_parquet(lake_settings, f"{lake.features(lake_settings, view, day)}/part-0.parquet", part)

    everything = [*plan.train_days, plan.sample_ds]
    assert steps.samples_to_build(lake_settings, plan) == (everything if rebuild else [second, third, plan.sample_ds])
    assert steps.features_to_build(lake_settings, plan) == (everything if rebuild else [first, second, plan.sample_ds])


def test_a_relative_local_lake_lists_keys_as_it_is_spelled(settings, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    storage.write_json(settings, "rel/lake/checks/ds=1.json", {"success": True})
    assert storage.list_keys(settings, "rel/lake") == ["rel/lake/checks/ds=1.json"]
    assert storage.exists(settings, "rel/lake/checks") and not storage.exists(settings, "rel/other")
