"""The `msmt` command line: the same functions as the DAG, behind typed options."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
from typer.testing import CliRunner

from msmt import contract, lake
from msmt.settings import Settings
from pipeline.cli import app

runner = CliRunner()


def test_models_lists_the_zoo():
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    assert "mmoe" in result.stdout and "shared_bottom" in result.stdout


def test_simulate_writes_the_raw_days(tmp_path, monkeypatch):
    monkeypatch.setenv("MSMT_HOME", str(tmp_path))
    args = ["simulate", "--start", "2026-03-01", "--days", "2", "--impressions-per-day", "400", "--seed", "4"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    settings = Settings.from_env()
    assert pq.read_table(lake.raw(settings, "impressions", "2026-03-02")).num_rows == 400


def test_a_bad_date_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MSMT_HOME", str(tmp_path))
    result = runner.invoke(app, ["simulate", "--start", "yesterday", "--days", "1"])
    assert result.exit_code != 0
    assert "yesterday" in str(result.exception) or "yesterday" in result.output


def test_training_without_a_training_set_says_how_to_build_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MSMT_HOME", str(tmp_path))
    for command in (["train", "--ds", "2026-03-09"], ["gate", "--ds", "2026-03-09", "--version", "1"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2, result.output
        assert "no training set for the run of 2026-03-09" in result.output
        assert "msmt run --ds 2026-03-09" in result.output


def test_a_day_before_the_dags_start_is_refused_with_what_to_do(tmp_path, monkeypatch):
    """Imported 2024 logs: Airflow would run no task for a day before msmt_daily's start_date."""
    monkeypatch.setenv("MSMT_HOME", str(tmp_path))
    result = runner.invoke(app, ["run", "--ds", "2024-01-07"])
    assert result.exit_code == 2, result.output
    assert "msmt_daily starts on 2026-01-01" in result.output
    assert "export MSMT_DAG_START=2024-01-07" in result.output
    assert not (tmp_path / "airflow" / "airflow.db").exists()  # refused before any work


def test_a_typo_in_set_is_refused_before_any_work_with_the_valid_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("MSMT_HOME", str(tmp_path))
    for command in (["run", "--ds", "2026-03-09"], ["train", "--ds", "2026-03-09"]):
        result = runner.invoke(app, [*command, "--model", "ple", "--set", "n_expert=4"])
        assert result.exit_code == 2, result.output
        assert "unknown override(s) n_expert for ple" in result.output
        assert "n_shared_experts" in result.output and "lr" in result.output  # the valid keys of both configs
    assert not (tmp_path / "airflow" / "airflow.db").exists()


def test_a_wrongly_typed_override_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("MSMT_HOME", str(tmp_path))
    result = runner.invoke(app, ["run", "--ds", "2026-03-09", "--set", "epochs=two"])
    assert result.exit_code == 2, result.output
    assert "epochs='two'" in result.output and "expected int" in result.output


def test_contract_shows_what_derives_from_the_active_contract_and_refuses_a_bad_one(tmp_path, monkeypatch):
    monkeypatch.setenv("MSMT_CONTRACT", "contracts/aliexpress.toml")  # a shipped one, named from anywhere
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["contract"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout[result.stdout.index("{") :])
    assert len(shown["inputs"]["dense"]) == 63 and "categorical_16" in shown["inputs"]["sparse"]
    assert shown["feature_service"].startswith("ranker_aliexpress_") and shown["inputs"]["sequence"] == []

    bad = tmp_path / "bad.toml"
    bad.write_text(contract.DEFAULT.read_text().replace('role = "item_key"', 'role = "item"'))
    result = runner.invoke(app, ["contract", str(bad)])
    assert result.exit_code == 2
    assert f"contract {bad}: table impressions, column item_id: role 'item'" in result.output


def test_check_raw_names_a_day_that_breaks_the_contract(tmp_path, monkeypatch):
    monkeypatch.setenv("MSMT_HOME", str(tmp_path))
    simulated = runner.invoke(app, ["simulate", "--start", "2026-03-01", "--days", "1", "--impressions-per-day", "300"])
    assert simulated.exit_code == 0, simulated.output
    assert runner.invoke(app, ["check-raw", "--day", "2026-03-01"]).exit_code == 0
    shifted = tmp_path / "shifted.toml"  # the logs say `item_id`, this contract `sku`
    shifted.write_text(contract.DEFAULT.read_text().replace("item_id = {", "sku = {"))
    monkeypatch.setenv("MSMT_CONTRACT", str(shifted))
    result = runner.invoke(app, ["check-raw", "--day", "2026-03-01"])
    assert result.exit_code == 2
    assert "raw impressions ds=2026-03-01: columns differ from the contract: missing sku" in result.output


def test_a_backfill_without_the_scheduler_says_how_to_start_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MSMT_HOME", str(tmp_path))
    result = runner.invoke(app, ["backfill", "--from", "2026-03-08", "--to", "2026-03-09"])
    assert result.exit_code == 2, result.output
    assert f"Airflow's services are not running for {tmp_path}" in result.output and "msmt airflow up" in result.output
