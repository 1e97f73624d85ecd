"""Airflow's real services run msmt: the scheduler runs yesterday's scheduled day end to end and promotes
(scheduled runs do), and a scheduler-managed backfill stops at its first failed day and is not re-created."""

from __future__ import annotations

import datetime as dt
import os
import socket

import pytest
from typer.testing import CliRunner

from msmt import lake
from pipeline import scheduler
from pipeline.cli import app
from pipeline.orchestration import DAG_ID, task_value
from pipeline.simulate import simulate

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

YESTERDAY = (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)).isoformat()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def services(session_settings):
    """Tiny logs up to yesterday, a registry of its own, and the three services on a free port."""
    saved = dict(os.environ)
    settings = session_settings.with_(
        registered_model="msmt_ranker_scheduled", experiment="msmt_scheduled", train_days=1, epochs=1,
        gate_min_rows=300, retry_delay_s=5,
    )  # fmt: skip
    simulate(settings, lake.shift(YESTERDAY, -4), 5, 3_000, seed=5, progress=False)
    port = _free_port()
    pids = scheduler.up(settings, port)
    yield settings, port, pids
    stopped = scheduler.down(settings)
    os.environ.clear()
    os.environ.update(saved)
    assert stopped == sorted(scheduler.SERVICES) and not scheduler.running(settings)
    assert not any(scheduler.alive(pid) for pid in pids.values())  # every process group is gone, children too


def test_the_scheduler_runs_yesterday_end_to_end_and_promotes(services):
    settings, _, pids = services
    assert sorted(pids) == sorted(scheduler.SERVICES) and scheduler.running(settings) == pids
    run_id, state = scheduler.wait_for_day(settings, YESTERDAY, "scheduled", timeout_s=900)
    assert state == "success", run_id
    assert task_value(run_id, "plan_day")["promote"]  # a scheduled run may move the champion, by its run type
    decision, promotion = task_value(run_id, "evaluate_model"), task_value(run_id, "promote_model")
    assert decision["first_run"] and len(decision["cells"]) == len(settings.scenarios) * len(settings.tasks)
    assert promotion["promoted"] == decision["passed"]  # the gate alone decides, nothing else held it back


def test_a_backfill_stops_at_its_first_failed_day_and_a_rerun_creates_nothing(services):
    settings, port, _ = services
    first, last = lake.shift(YESTERDAY, -9), lake.shift(YESTERDAY, -8)  # no logs landed for these days
    runner = CliRunner()
    env = settings.to_env()
    args = ["backfill", "--from", first, "--to", last, "--port", str(port)]
    result = runner.invoke(app, args, env=env)
    assert result.exit_code == 1, result.output
    assert f"{first}: failed, gate -" in result.output  # stopped at check_raw_logs, before any gate
    table = result.output[result.output.index("day  ") :]
    assert first in table and "failed" in table
    again = runner.invoke(app, args, env=env)
    assert again.exit_code == 0 and "nothing to do" in again.output, again.output
    assert DAG_ID in (settings.airflow_home / "services" / "scheduler.log").read_text()
