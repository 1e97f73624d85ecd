"""Errors that stop a run at once: re-running the same input cannot fix them.

Airflow retries a failed task by default (late data, a flaky store); for these
errors a retry only wastes the retry delay and buries the message, so the DAG
turns every `StopRun` into a task failure without retry (`pipeline.orchestration.fail_fast`).
"""

from __future__ import annotations


class StopRun(RuntimeError):
    """A deterministic failure: bad input, a failed check, a refused decision. The message says what and where."""
