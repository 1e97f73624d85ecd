"""Refusals of `run_daily` that need no Airflow: they come before any work."""

from __future__ import annotations

import pytest

from msmt import locks
from msmt.errors import StopRun
from pipeline import orchestration


def test_a_second_run_of_the_same_day_is_refused_naming_the_first(settings):
    refused = pytest.raises(locks.LockHeld, match=r"msmt_daily run of 2026-03-09 refused: process \d+ on ")
    with locks.hold(settings, "msmt_daily.2026-03-09", "msmt_daily run of 2026-03-09"), refused:
        orchestration.run_daily(settings, "2026-03-09")


def test_another_day_is_not_blocked_by_a_running_day(settings):
    with (
        locks.hold(settings, "msmt_daily.2026-03-09", "msmt_daily run of 2026-03-09"),
        locks.hold(settings, "msmt_daily.2026-03-10", "msmt_daily run of 2026-03-10"),
    ):
        assert (settings.home / "locks" / "msmt_daily.2026-03-10.lock").read_text()  # the holder is written down


def test_a_day_before_the_start_is_an_error_not_an_empty_success(settings):
    with pytest.raises(StopRun, match="MSMT_DAG_START=2025-12-31 or earlier"):
        orchestration.run_daily(settings, "2025-12-31")
