"""`msmt backfill`: Airflow 3's scheduler-managed backfill of msmt_daily, followed day by day.

The backfill is Airflow's own (`airflow backfill create`): the scheduler runs its days in date order,
one at a time (`max_active_runs=1`), as runs of type `backfill`, which do not move the champion unless
`promote` is set. Re-running a backfill creates no run for a day that already has one
(reprocess behaviour `none`); `rebuild` re-runs every day (`completed`) with `rebuild=true`, so the
days' samples and features are rebuilt from raw logs. `follow` prints each day as it ends and stops
the backfill at the first failed day (Airflow's cancel: the backfill is paused, its queued days fail).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from msmt.settings import Settings
from pipeline.orchestration import DAG_ID, airflow_env, task_value
from pipeline.scheduler import FINISHED, ServiceError, cli, service_env

log = logging.getLogger("msmt.backfill")


@dataclass(frozen=True)
class DayResult:
    """One backfilled day as the summary shows it."""

    ds: str
    state: str
    verdict: str  # the gate's: PASSED / FAILED / "-" when the run stopped before it
    champion: str  # the champion after the day ("-" before any)


# SQLite refuses a transaction that must upgrade its read lock while the scheduler writes ("database is
# locked" at once, whatever the busy timeout); Airflow then removes the partial backfill so that it can be
# retried. PostgreSQL never gets here.
LOCK_TRIES = 4


def create(settings: Settings, first: str, last: str, conf: dict, rebuild: bool, port: int) -> int:
    """Ask Airflow for a backfill of `first`..`last` (run days, inclusive); its id."""
    from airflow.models.backfill import Backfill
    from airflow.utils.session import create_session

    reprocess = "completed" if rebuild else "none"
    conf = {**conf, "rebuild": rebuild}
    args = ["backfill", "create", "--dag-id", DAG_ID, "--from-date", first, "--to-date", last, "--max-active-runs",
            "1", "--reprocess-behavior", reprocess, "--dag-run-conf", json.dumps(conf)]  # fmt: skip
    for attempt in range(1, LOCK_TRIES + 1):
        try:
            cli(service_env(settings, port), *args)
            break
        except ServiceError as error:
            if "database is locked" not in str(error) or attempt == LOCK_TRIES:
                raise
            log.warning("backfill create met a locked SQLite metadata DB (try %d of %d); retrying", attempt, LOCK_TRIES)
            time.sleep(2 * attempt)
    with create_session() as session:
        return session.query(Backfill.id).filter(Backfill.dag_id == DAG_ID).order_by(Backfill.id.desc()).first()[0]


def runs(backfill_id: int) -> list[tuple[str, str | None, str | None, str | None]]:
    """(day, run id, state, why no run) of every day of the backfill, in date order; a day Airflow did
    not create a run for (one exists already) has no run id and says why."""
    from airflow.models import DagRun
    from airflow.models.backfill import BackfillDagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = (
            session.query(BackfillDagRun.logical_date, DagRun.run_id, DagRun.state, BackfillDagRun.exception_reason)
            .outerjoin(DagRun, BackfillDagRun.dag_run_id == DagRun.id)
            .filter(BackfillDagRun.backfill_id == backfill_id)
            .order_by(BackfillDagRun.logical_date)
            .all()
        )
    return [(day.date().isoformat(), run_id, None if state is None else str(getattr(state, "value", state)), why)
            for day, run_id, state, why in rows]  # fmt: skip


def result(ds: str, run_id: str, state: str) -> DayResult:
    """The summary row of a finished day: its gate verdict and the champion after it, from its XComs."""
    decision = task_value(run_id, "evaluate_model")
    promotion = task_value(run_id, "promote_model") or {}
    verdict = "-" if decision is None else ("PASSED" if decision.get("passed") else "FAILED")
    champion = promotion.get("champion") or (decision or {}).get("champion_version")
    return DayResult(ds, state, verdict, f"v{champion}" if champion else "-")


def follow(
    settings: Settings, backfill_id: int, on_day: Callable[[DayResult], None], stop_on_failure: bool = True,
    timeout_s: float = 3600,
) -> list[DayResult]:  # fmt: skip
    """Wait for every day of the backfill, reporting each as it ends; cancel it at the first failure."""
    import os

    os.environ.update(airflow_env(settings))
    done: dict[str, DayResult] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        days = [(ds, run_id, state) for ds, run_id, state, _ in runs(backfill_id) if run_id is not None]
        for ds, run_id, state in days:
            if state in FINISHED and ds not in done:
                done[ds] = result(ds, run_id, state)
                on_day(done[ds])
                if state == "failed" and stop_on_failure:
                    cancel(backfill_id)
                    return list(done.values())
        if len(done) == len(days):  # every day with a run has ended (none: every day had one already)
            return list(done.values())
        time.sleep(3)
    raise ServiceError(f"backfill {backfill_id} did not finish within {timeout_s:.0f} s")


def cancel(backfill_id: int) -> None:
    """Airflow's cancel: pause the backfill and fail its queued days, so nothing after a failed day runs."""
    from airflow.models.backfill import Backfill, BackfillDagRun
    from airflow.models.dagrun import DagRun
    from airflow.utils import timezone
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState

    with create_session() as session:
        backfill = session.get(Backfill, backfill_id)
        backfill.is_paused = True
        session.commit()
        queued = session.query(DagRun).join(BackfillDagRun, BackfillDagRun.dag_run_id == DagRun.id)
        for run in queued.filter(BackfillDagRun.backfill_id == backfill_id, DagRun.state == DagRunState.QUEUED):
            run.state = DagRunState.FAILED
        backfill.completed_at = timezone.utcnow()
    log.info("backfill %d cancelled after a failed day", backfill_id)


def summary(results: list[DayResult]) -> str:
    """The table printed at the end: day, state, gate verdict, champion after."""
    header = ("day", "state", "gate", "champion after")
    rows = [(r.ds, r.state, r.verdict, r.champion) for r in results]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
                     for row in [header, *rows])  # fmt: skip
