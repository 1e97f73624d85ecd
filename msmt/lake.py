"""Lake layout: one function per table, every path keyed by day (`ds`).

    raw/impressions/ds=YYYY-MM-DD/        raw logs as they land (simulator or importers)
    raw/clicks/ds=…/  raw/conversions/ds=…/
    raw/truth/ds=…/                       simulator only: true p(click), p(conversion)
    samples/ds=…/scenario=…/              joined, labelled impressions (build_samples)
    quarantine/ds=…/source=…/             malformed rows with a reason (build_samples)
    features/<view>/ds=…/                 aggregates as of 00:00 of ds (build_features)
    training_sets/ds=…/                   point-in-time training set of one run (Feast)
    training_runs/ds=…/<model>/           a training pod's weights and metrics (cluster profile)
    checks/<suite>/ds=….json              Great Expectations results
    gate/ds=….json                        gate decisions
    reports/ds=….html                     the run's HTML report (pipeline.report), keyed by run day
    _staging/import-<token>/              an import being parsed, swapped in day by day when complete
    mlflow-artifacts/<experiment>/        MLflow artifacts (cluster profile, lake on S3)

Every writer overwrites exactly its own partition, which is what makes a
re-run of a day idempotent.
"""

from __future__ import annotations

import datetime as dt

from msmt.settings import Settings

RAW_TABLES = ("impressions", "clicks", "conversions")


def day(ds: str | dt.date) -> dt.date:
    """Parse `YYYY-MM-DD` (or pass a date through)."""
    return ds if isinstance(ds, dt.date) else dt.date.fromisoformat(ds)


def days_between(start: str | dt.date, n: int) -> list[str]:
    first = day(start)
    return [(first + dt.timedelta(days=i)).isoformat() for i in range(n)]


def shift(ds: str | dt.date, days: int) -> str:
    return (day(ds) + dt.timedelta(days=days)).isoformat()


def table(settings: Settings, name: str) -> str:
    """Root of a table, e.g. `<lake>/raw/impressions`."""
    return f"{settings.lake.rstrip('/')}/{name}"


def raw(settings: Settings, name: str, ds: str | None = None) -> str:
    root = table(settings, f"raw/{name}")
    return root if ds is None else f"{root}/ds={ds}"


def samples(settings: Settings, ds: str | None = None) -> str:
    root = table(settings, "samples")
    return root if ds is None else f"{root}/ds={ds}"


def quarantine(settings: Settings, ds: str | None = None) -> str:
    root = table(settings, "quarantine")
    return root if ds is None else f"{root}/ds={ds}"


def features(settings: Settings, view: str, ds: str | None = None) -> str:
    root = table(settings, f"features/{view}")
    return root if ds is None else f"{root}/ds={ds}"


def training_set(settings: Settings, ds: str) -> str:
    return f"{table(settings, 'training_sets')}/ds={ds}"


def check_result(settings: Settings, suite: str, ds: str) -> str:
    return f"{table(settings, f'checks/{suite}')}/ds={ds}.json"


def experiment_report(settings: Settings, name: str) -> str:
    """The HTML report of experiment `name` (`msmt experiment`): its verdicts across the replayed days."""
    return f"{table(settings, 'reports')}/experiments/{name}.html"


def gate_report(settings: Settings, ds: str) -> str:
    return f"{table(settings, 'gate')}/ds={ds}.json"


def report(settings: Settings, ds: str) -> str:
    """The self-contained HTML report of the run for day `ds` (the run day, not its held-out day)."""
    return f"{table(settings, 'reports')}/ds={ds}.html"


def training_output(settings: Settings, ds: str, model: str) -> str:
    """Where a training pod writes the weights and metrics of run day `ds` (per model)."""
    return f"{table(settings, 'training_runs')}/ds={ds}/{model}"


def staging(settings: Settings, token: str) -> str:
    """An import's private area until it swaps its days into `raw/`."""
    return table(settings, f"_staging/import-{token}")


def mlflow_artifacts(settings: Settings) -> str:
    """MLflow's artifact root when the lake is on S3 (cluster profile)."""
    return f"{table(settings, 'mlflow-artifacts')}/{settings.experiment}"
