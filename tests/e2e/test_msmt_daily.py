"""The real `msmt_daily` DAG on tiny data for consecutive days: day 1 through Airflow's test runner, day 2
(yesterday) through Airflow's own services — the scheduler runs it as the daily schedule would, and a
scheduler-managed backfill is tried — then re-runs and broken days through the test runner again."""

from __future__ import annotations

import datetime as dt
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import pyarrow.dataset as pds
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from msmt import lake
from pipeline import orchestration, scheduler
from pipeline.cli import app
from pipeline.orchestration import DAG_ID, task_value
from pipeline.simulate import SimConfig, simulate
from pipeline.steps import plan_day
from training.tracking import configure_mlflow

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

YESTERDAY = (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)).isoformat()
START = lake.shift(YESTERDAY, -6)  # day 2 is yesterday: the interval the unpaused DAG's schedule runs first
DAY1, DAY2, BROKEN_DAY = lake.shift(START, 5), lake.shift(START, 6), lake.shift(START, 7)


@pytest.fixture(scope="module")
def world(session_settings):
    """Eight days of tiny logs; the runs need the environment Airflow was configured with."""
    saved = dict(os.environ)
    settings = session_settings.with_(gate_min_rows=300, epochs=2, batch_size=256, train_days=2)
    simulate(settings, START, 8, 6_000, seed=3, config=SimConfig(n_users=2_000, n_items=500), progress=False)
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
    """(outcome, sample rows, model version): read at once, a later re-run of the day replaces the run."""
    outcome = orchestration.run_daily(world, DAY1)
    version = str((task_value(outcome.run_id, "train_model") or {}).get("version"))
    return outcome, _sample_rows(world, plan_day(world, DAY1).sample_ds), version


@dataclass
class ScheduledDay:
    """What Airflow's services did while they were up: yesterday's scheduled run, an experiment over days
    never built (`msmt experiment` sends it to the running scheduler) and a failing backfill."""

    run_id: str
    state: str
    version: str  # the model version it trained (a later test-runner re-run of the day replaces its XComs)
    pids: dict[str, int]
    experiment: str  # `msmt experiment`'s output
    experiment_exit: int
    backfill: str  # the first `msmt backfill`'s output
    backfill_exit: int
    backfill_again: str  # the same backfill, re-created
    backfill_again_exit: int
    scheduler_log: str
    stopped: list[str]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def day2(world, day1) -> ScheduledDay:
    """Airflow's api-server, scheduler and dag-processor run day 2 as the daily schedule, then a backfill
    of two days without logs; the services are stopped before any later test-runner run shares their DB."""
    port = _free_port()
    pids = scheduler.up(world, port)
    try:
        run_id, state = scheduler.wait_for_day(world, DAY2, "scheduled", timeout_s=900)
        version = str((task_value(run_id, "train_model") or {}).get("version"))
        runner, env = CliRunner(), world.to_env()
        never_built = lake.shift(START, -3)
        experiment = runner.invoke(app, ["experiment", "--model", "mmoe", "--from", never_built, "--to", never_built,
                                         "--baseline", "model=shared_bottom"], env=env)  # fmt: skip
        no_logs = ["backfill", "--from", lake.shift(START, -3), "--to", lake.shift(START, -2)]  # the services' port
        first, again = runner.invoke(app, no_logs, env=env), runner.invoke(app, no_logs, env=env)
        scheduler_log = (world.airflow_home / "services" / "scheduler.log").read_text()
    finally:
        stopped = scheduler.down(world)
    return ScheduledDay(run_id, state, version, pids, experiment.output, experiment.exit_code, first.output,
                        first.exit_code, again.output, again.exit_code, scheduler_log, stopped)  # fmt: skip


def test_day1_accounts_for_every_impression_and_crowns_a_champion(world, day1):
    outcome, rows, _ = day1
    assert outcome.state == "success", outcome.tasks
    sample_ds = plan_day(world, DAY1).sample_ds
    raw = pq.read_table(lake.raw(world, "impressions", sample_ds)).num_rows
    quarantined = pds.dataset(lake.quarantine(world, sample_ds), partitioning="hive").to_table()
    from_impressions = quarantined.filter(pds.field("source") == "impressions").num_rows
    assert from_impressions > 0  # the simulator injects malformed rows
    assert len(rows) + from_impressions == raw
    assert _alias(world, "champion") is not None, orchestration.run_summary(outcome)
    assert f"PROMOTED v{_alias(world, 'champion')} to champion" in orchestration.run_summary(outcome)


def test_the_scheduler_runs_day2_and_its_run_type_lets_the_gate_promote(world, day2):
    assert day2.state == "success", day2.run_id
    assert day2.stopped == sorted(scheduler.SERVICES) and not scheduler.running(world)
    assert not any(scheduler.alive(pid) for pid in day2.pids.values())  # every process group is gone, children too
    assert task_value(day2.run_id, "plan_day")["promote"]  # a scheduled run may move the champion, by its run type
    decision, promotion = task_value(day2.run_id, "evaluate_model"), task_value(day2.run_id, "promote_model")
    assert not decision["first_run"] and len(decision["cells"]) == len(world.scenarios) * len(world.tasks)
    assert promotion["promoted"] == decision["passed"]  # the gate alone decides, nothing else held it back


def test_a_backfill_stops_at_its_first_failed_day_and_a_rerun_creates_nothing(day2):
    first_day = lake.shift(START, -3)  # no logs landed for this day
    assert day2.backfill_exit == 1, day2.backfill
    assert f"{first_day}: failed, gate -" in day2.backfill  # stopped at check_raw_logs, before any gate
    table = day2.backfill[day2.backfill.index("day  ") :]
    assert first_day in table and "failed" in table
    assert day2.backfill_again_exit == 0 and "nothing to do" in day2.backfill_again, day2.backfill_again
    assert DAG_ID in day2.scheduler_log


def test_day2_logs_the_full_gate_matrix(world, day2):
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
    _, rows_before, _ = day1
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


def test_an_experiment_replays_a_day_against_a_version_and_promotes_nothing(world, day1, day2):
    import mlflow

    from pipeline.experiments import ExperimentError, plan, registry_name

    with pytest.raises(ExperimentError, match=f"v{day2.version} was trained on {plan_day(world, DAY1).sample_ds}"):
        plan(world, "shared_bottom", DAY1, DAY1, baseline=f"version={day2.version}")  # day 1's held-out day
    client = _client(world)
    champion = _alias(world, "champion")
    day1_version = day1[2]
    args = ["experiment", "--model", "shared_bottom", "--from", DAY2, "--to", DAY2, "--set", "epochs=1",
            "--baseline", f"version={day1_version}", "--name", "sb"]  # fmt: skip
    result = CliRunner().invoke(app, args, env=world.to_env())  # the services are down: Airflow's test runner
    assert result.exit_code == 0, result.output
    assert all(f"{s}  " in result.output for s in world.scenarios)
    assert f"shared_bottom vs version={day1_version}" in result.output
    assert _alias(world, "champion") == champion  # nothing promoted
    html = Path(lake.experiment_report(world, "sb")).read_text()
    assert all(f'data-cell="{s} / {t}"' in html for s in world.scenarios for t in world.tasks)
    assert html.count('class="heat-cell"') == len(world.scenarios) * len(world.tasks)  # every cell of its day

    versions = client.search_model_versions(f"name='{world.registered_model}'")
    assert not any(client.get_run(v.run_id).data.tags.get("msmt.experiment") for v in versions)  # none beside it
    assert len(client.search_model_versions(f"name='{registry_name(world)}'")) == 1  # the day's challenger
    (parent,) = mlflow.search_runs(filter_string="tags.`msmt.experiment` = 'sb' and tags.`msmt.kind` = 'experiment'",
                                   search_all_experiments=True, output_format="list")  # fmt: skip
    assert parent.info.status == "FINISHED"
    assert parent.data.params["baseline.version"] == day1_version
    children = mlflow.search_runs(filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                                  search_all_experiments=True, output_format="list")  # fmt: skip
    assert [c.data.tags["msmt.eval_ds"] for c in children] == [plan_day(world, DAY2).sample_ds]
    summary = mlflow.artifacts.load_dict(f"runs:/{parent.info.run_id}/experiment/summary.json")
    assert {(c["scenario"], c["task"]) for c in summary["cells"]} == {
        (s, t) for s in world.scenarios for t in world.tasks
    }
    assert all(c["wins"] + c["losses"] + c["ties"] == c["days"] <= 1 for c in summary["cells"])


def test_the_scheduler_stops_an_experiment_over_days_never_built_in_its_first_task_saying_how_to_build_them(day2):
    assert day2.experiment_exit == 1 and "plan_experiment failed" in day2.experiment, day2.experiment
    assert "were never built and checked" in day2.experiment and "msmt backfill --from" in day2.experiment
