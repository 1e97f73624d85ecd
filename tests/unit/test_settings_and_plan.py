"""Settings from the environment, and which days one run reads and writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from msmt.settings import Settings
from pipeline.steps import DayPlan, plan_day, plan_from_params
from training.catalog import model_names


def test_settings_round_trip_through_the_environment():
    settings = Settings(home=Path("/tmp/x"), scenarios=("a", "b"), gate_max_drop=0.01, epochs=5)
    assert Settings.from_env(settings.to_env()) == settings


def test_environment_overrides_defaults_and_explicit_overrides_win():
    env = {"MSMT_ATTRIBUTION_WINDOW": "3", "MSMT_SCENARIOS": "x, y", "MSMT_HOME": "/data/msmt"}
    settings = Settings.from_env(env, epochs=9)
    assert settings.attribution_window_days == 3
    assert settings.scenarios == ("x", "y") and settings.scenario_ids == {"x": 0, "y": 1}
    assert settings.lake == "/data/msmt/lake" and settings.epochs == 9


def test_every_piece_of_state_lives_under_home(tmp_path):
    settings = Settings(home=tmp_path)
    inside = [settings.lake, settings.airflow_home, settings.mlflow_artifact_root, settings.feast_dir]
    assert all(str(path).startswith(str(tmp_path)) for path in inside)
    assert settings.mlflow_uri == f"sqlite:///{tmp_path}/mlflow/mlflow.db"


@pytest.mark.parametrize(("window", "train_days"), [(2, 3), (3, 1)])
def test_a_run_builds_the_matured_day_and_trains_on_the_days_before(window, train_days):
    plan = plan_day(Settings(attribution_window=window, train_days=train_days), "2026-01-10")
    assert plan.sample_ds == f"2026-01-{10 - window:02d}"
    assert plan.train_days == tuple(f"2026-01-{10 - window - k:02d}" for k in range(train_days, 0, -1))
    assert plan.feature_days == (*plan.train_days, plan.sample_ds)
    assert plan.raw_days[0] == plan.sample_ds and plan.raw_days[-1] == "2026-01-10"


def test_a_plan_from_params_merges_epochs_once_and_round_trips_through_a_dict():
    params = {"model": "ple", "epochs": 4, "overrides": {"lr": 0.01}, "promote": False, "rebuild": True, "gpus": 2}
    plan = plan_from_params(Settings(), "2026-01-10", params)
    assert (plan.model, plan.overrides, plan.promote, plan.rebuild) == ("ple", {"lr": 0.01, "epochs": 4}, False, True)
    assert DayPlan.from_dict(plan.to_dict()) == plan
    assert plan_from_params(Settings(), "2026-01-10", {}).overrides == {}  # defaults: the model's file alone


def test_the_dag_enumerates_every_registered_model_without_importing_torch():
    from training.models import REGISTRY

    assert model_names() == sorted(REGISTRY)


def test_the_run_type_decides_promotion_unless_the_params_say():
    settings, day = Settings(), "2026-01-10"
    assert plan_from_params(settings, day, {}, run_type="scheduled").promote
    assert not plan_from_params(settings, day, {}, run_type="backfill").promote
    assert not plan_from_params(settings, day, {"promote": None}, run_type="manual").promote
    assert plan_from_params(settings, day, {"promote": True}, run_type="backfill").promote
    assert not plan_from_params(settings, day, {"promote": False}, run_type="scheduled").promote


def test_the_contract_comes_from_msmt_contract_and_travels_as_an_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env({"MSMT_CONTRACT": "contracts/aliexpress.toml"})  # not here: the repo's
    assert settings.data_contract.name == "aliexpress" and settings.contract_file.is_absolute()
    assert Settings.from_env(settings.to_env()).data_contract.digest == settings.data_contract.digest
    assert settings.tasks == ("click", "conversion") and Settings().data_contract.name == "simulator"
    assert Settings().attribution_window_days == 2 == Settings().data_contract.attribution_window_days
    assert Settings(attribution_window=0).attribution_window_days == 0  # the setting overrides the contract
