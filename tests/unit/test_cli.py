"""The `msmt` command line: the same functions as the DAG, behind typed options."""

from __future__ import annotations

import pyarrow.parquet as pq
from typer.testing import CliRunner

from msmt import lake
from msmt.cli import app
from msmt.settings import Settings

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
