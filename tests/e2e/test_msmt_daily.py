"""The real `msmt_daily` DAG, run by Airflow's test runner for consecutive days on tiny data."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.dataset as pds
import pyarrow.parquet as pq
import pytest

from msmt import lake
from pipeline import orchestration
from pipeline.simulate import SimConfig, simulate
from pipeline.steps import plan_day
from training.tracking import configure_mlflow

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

START = "2026-02-01"
DAY1, DAY2, BROKEN_DAY = lake.shift(START, 5), lake.shift(START, 6), lake.shift(START, 7)


@pytest.fixture(scope="module")
def world(session_settings):
    """Eight days of tiny logs; the runs need the environment Airflow was configured with."""
    saved = dict(os.environ)
    settings = session_settings.with_(gate_min_rows=300, epochs=3, batch_size=256, train_days=2)
    simulate(settings, START, 8, 10_000, seed=3, config=SimConfig(n_users=2_000, n_items=500), progress=False)
    yield settings
    os.environ.clear()
    os.environ.update(saved)


def _client(settings):
    import mlflow

    configure_mlflow(settings)
    return mlflow.MlflowClient()


def _alias(settings, name: str) -> str | None:
    aliases = _client(settings).get_registered_model(settings.registered_model).aliases
    return None if name not in aliases else str(aliases[name])


def _sample_rows(settings, ds: str) -> set[tuple]:
    table = pds.dataset(lake.samples(settings, ds), partitioning="hive").to_table()
    return set(zip(*(table[c].to_pylist() for c in ("impression_id", "click", "conversion", "scenario")), strict=True))


@pytest.fixture(scope="module")
def day1(world):
    outcome = orchestration.run_daily(world, DAY1)
    return outcome, _sample_rows(world, plan_day(world, DAY1).sample_ds)


@pytest.fixture(scope="module")
def day2(world, day1):
    return orchestration.run_daily(world, DAY2)


def test_day1_accounts_for_every_impression_and_crowns_a_champion(world, day1):
    outcome, rows = day1
    assert outcome.state == "success", outcome.tasks
    sample_ds = plan_day(world, DAY1).sample_ds
    raw = pq.read_table(lake.raw(world, "impressions", sample_ds)).num_rows
    quarantined = pds.dataset(lake.quarantine(world, sample_ds), partitioning="hive").to_table()
    from_impressions = quarantined.filter(pds.field("source") == "impressions").num_rows
    assert from_impressions > 0  # the simulator injects malformed rows
    assert len(rows) + from_impressions == raw
    assert _alias(world, "champion") is not None, orchestration.run_summary(outcome)
    assert f"PROMOTED v{_alias(world, 'champion')} to champion" in orchestration.run_summary(outcome)


def test_day2_logs_the_full_gate_matrix(world, day2):
    assert day2.state == "success", day2.tasks
    client = _client(world)
    version = client.get_model_version(
        world.registered_model,
        max(int(v.version) for v in client.search_model_versions(f"name='{world.registered_model}'")),
    )
    assert version.tags["gate.champion_version"] != "None"  # compared against day 1's champion
    import mlflow

    decision = mlflow.artifacts.load_dict(f"runs:/{version.run_id}/gate/decision.json")
    cells = {(c["scenario"], c["task"]) for c in decision["cells"]}
    assert cells == {(s, t) for s in world.scenarios for t in world.tasks}
    assert decision["champion_version"] == version.tags["gate.champion_version"]
    metrics = client.get_run(version.run_id).data.metrics
    assert "gate.passed" in metrics and "gate.diff.homefeed.click" in metrics
    sample_ds = plan_day(world, DAY2).sample_ds
    check = mlflow.artifacts.load_dict(f"runs:/{version.run_id}/checks/samples/ds={sample_ds}.json")
    assert check["success"] and check["ds"] == sample_ds  # the data checks travel with the model
    assert Path(lake.gate_report(world, plan_day(world, DAY2).sample_ds)).exists()
    assert all(f'data-scenario="{s}"' in Path(lake.report(world, DAY2)).read_text() for s in world.scenarios)


def test_rerunning_day1_is_idempotent_and_keeps_aliases_sound(world, day1, day2):
    _, rows_before = day1
    assert orchestration.run_daily(world, DAY1).state == "success"
    assert _sample_rows(world, plan_day(world, DAY1).sample_ds) == rows_before
    champion = _alias(world, "champion")
    client = _client(world)
    assert client.get_model_version(world.registered_model, champion).tags["gate.passed"] == "true"
    assert _alias(world, "previous_champion") not in (None, champion)


def test_schema_broken_day_stops_before_training(world, day2):
    champion_before = _alias(world, "champion")
    versions_before = len(_client(world).search_model_versions(f"name='{world.registered_model}'"))
    path = Path(lake.raw(world, "impressions", BROKEN_DAY), "part-0.parquet")
    table = pq.read_table(path)
    pq.write_table(table.rename_columns(["uid" if c == "user_id" else c for c in table.column_names]), path)

    outcome = orchestration.run_daily(world, BROKEN_DAY)
    assert outcome.state == "failed"
    assert outcome.tasks["check_raw_logs"] == "failed"
    assert outcome.tasks["train_model"] == "upstream_failed"
    assert _alias(world, "champion") == champion_before
    assert len(_client(world).search_model_versions(f"name='{world.registered_model}'")) == versions_before


def _tries(run_id: str, task_id: str) -> int:
    from airflow.models import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        return session.query(TaskInstance.try_number).filter_by(run_id=run_id, task_id=task_id).scalar()


def test_a_corrupt_file_stops_a_rerun_at_once_and_its_summary_is_its_own(world, day2):
    """A re-run of a day that once passed the gate: its stored gate report must not speak for this run."""
    champion_before = _alias(world, "champion")
    path = Path(lake.raw(world, "clicks", DAY2), "part-0.parquet")
    original = path.read_bytes()
    path.write_bytes(original[: len(original) // 2])  # truncated mid-upload
    try:
        outcome = orchestration.run_daily(world, DAY2)
    finally:
        path.write_bytes(original)
    assert outcome.state == "failed" and outcome.failed_task == "check_raw_logs", outcome.tasks
    assert _tries(outcome.run_id, "check_raw_logs") == 1  # deterministic: no retry
    summary = orchestration.run_summary(outcome)
    assert "stopped before the gate: check_raw_logs failed" in summary and str(path) in summary
    assert "PROMOTED" not in summary and "decision" not in summary
    assert Path(lake.gate_report(world, plan_day(world, DAY2).sample_ds)).exists()  # the earlier run's report
    assert _alias(world, "champion") == champion_before


def test_a_bad_override_stops_the_run_in_plan_day(world, day2):
    outcome = orchestration.run_daily(world, DAY2, {"overrides": {"n_expertz": 4}})
    assert outcome.failed_task == "plan_day" and outcome.tasks["check_raw_logs"] == "upstream_failed"
    assert _tries(outcome.run_id, "plan_day") == 1
    summary = orchestration.run_summary(outcome)
    assert "unknown override(s) n_expertz for mmoe" in summary and "n_experts" in summary


def test_a_wrong_contract_stops_the_run_in_plan_day_naming_file_table_and_column(world, day2, tmp_path):
    from msmt import contract

    wrong = tmp_path / "wrong.toml"
    wrong.write_text(contract.DEFAULT.read_text().replace('entities = ["item", "scenario"]', 'entities = ["shop"]'))
    outcome = orchestration.run_daily(world.with_(contract=str(wrong)), DAY2)
    assert outcome.failed_task == "plan_day" and outcome.tasks["check_raw_logs"] == "upstream_failed"
    assert _tries(outcome.run_id, "plan_day") == 1  # a contract is deterministic: no retry
    summary = orchestration.run_summary(outcome)
    assert f"contract {wrong}: feature view item_scenario_stats: entities ['shop']" in summary
