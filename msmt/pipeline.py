"""The daily run as plain functions: what each `msmt_daily` task calls.

A data scientist can run a day from a notebook with the same code path as the
scheduler:

    from msmt import pipeline
    settings = Settings.from_env()
    plan = pipeline.plan_day(settings, "2026-01-08")
    pipeline.build_samples(settings, plan)

The run for day `ds` builds samples for `ds - attribution_window_days` (labels
have matured by then), trains on the `train_days` sample days before it and
holds that sample day out for the gate.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from msmt import lake, storage
from msmt.settings import Settings

log = logging.getLogger("msmt.pipeline")


@dataclass(frozen=True)
class DayPlan:
    """Which days one run reads and writes."""

    ds: str  # the run day: newest raw logs
    sample_ds: str  # labels matured: built, and held out for evaluation
    train_days: tuple[str, ...]  # sample days the challenger learns from
    rebuild: bool = False  # rebuild the training days' samples and features from raw logs (after an upstream fix)

    @property
    def feature_days(self) -> tuple[str, ...]:
        return (*self.train_days, self.sample_ds)

    @property
    def raw_days(self) -> tuple[str, ...]:
        """Raw partitions the sample day reads: its clicks and conversions land up to `ds`."""
        window = (lake.day(self.ds) - lake.day(self.sample_ds)).days
        return tuple(lake.days_between(self.sample_ds, window + 1))

    def to_dict(self) -> dict:
        return {**asdict(self), "train_days": list(self.train_days)}


def plan_day(
    settings: Settings, ds: str, rebuild: bool = False, model: str | None = None, overrides: dict | None = None
) -> DayPlan:
    """The days a run for `ds` reads and writes; with `model`, its `overrides` are validated first (before any work)."""
    if model is not None:
        from training.hparams import check_overrides

        check_overrides(model, overrides or {})
    sample_ds = lake.shift(ds, -settings.attribution_window_days)
    train_days = tuple(lake.days_between(lake.shift(sample_ds, -settings.train_days), settings.train_days))
    log.info(
        "run %s: samples for %s (attribution window %d d), training on %s",
        ds,
        sample_ds,
        settings.attribution_window_days,
        ", ".join(train_days),
    )
    return DayPlan(ds=ds, sample_ds=sample_ds, train_days=train_days, rebuild=rebuild)


def samples_checked(settings: Settings, day: str) -> bool:
    """A sample day counts as built only once its samples check passed (stored result, success)."""
    uri = lake.check_result(settings, "samples", day)
    return storage.exists(settings, uri) and storage.read_json(settings, uri).get("success") is True


def _to_build(plan: DayPlan, built) -> list[str]:
    """Training days to (re)build, oldest first, then the sample day (always rebuilt)."""
    return [*(d for d in plan.train_days if plan.rebuild or not built(d)), plan.sample_ds]


def check_raw_logs(settings: Settings, plan: DayPlan) -> dict:
    """Great Expectations on every raw day the sample day reads; stops the run on failure."""
    from spark_jobs.checks import check_raw

    return {d: check_raw(settings, d)["success"] for d in plan.raw_days}


def build_samples(settings: Settings, plan: DayPlan) -> dict:
    """Build the sample day (always, idempotently) and every training day not built and checked yet.

    A day's stored samples check is removed before the day is rebuilt: until
    `check_samples` passes on the new partition, the day does not count as built.
    """
    from spark_jobs import build_samples as job
    from spark_jobs.common import get_spark

    spark = get_spark(settings)
    stats = {}
    for day in _to_build(plan, lambda d: samples_checked(settings, d)):
        storage.remove(settings, lake.check_result(settings, "samples", day))
        stats[day] = job.run(spark, settings, day)
    return {"built": list(stats), "stats": stats[plan.sample_ds]}


def build_features(settings: Settings, plan: DayPlan) -> dict:
    """Feature days for training and evaluation: missing ones, and the sample day always."""
    from spark_jobs import build_features as job
    from spark_jobs.common import get_spark

    spark = get_spark(settings)
    days = _to_build(plan, lambda d: storage.exists(settings, lake.features(settings, "user_stats", d)))
    for day in days:
        job.run(spark, settings, day)
    return {"built": days}


def check_samples(settings: Settings, plan: DayPlan, built: list[str]) -> dict:
    """Great Expectations on every sample day this run built, oldest first; the first failure stops the run."""
    from spark_jobs.checks import check_samples as check

    return {day: check(settings, day)["success"] for day in sorted(built or [plan.sample_ds])}


def publish_features(settings: Settings, plan: DayPlan) -> dict:
    from msmt import features

    return features.publish(settings, list(plan.feature_days))


def build_training_set(settings: Settings, plan: DayPlan) -> str:
    from msmt import features

    return features.build_training_set(settings, list(plan.feature_days), plan.sample_ds)


def training_output(settings: Settings, ds: str, model: str) -> str:
    """Where a training pod writes the model state and metrics of run day `ds` (lake-relative, per model)."""
    return f"{settings.lake.rstrip('/')}/training_runs/ds={ds}/{model}"


def train_model(
    settings: Settings,
    plan: DayPlan,
    training_set: str,
    model: str,
    overrides: dict | None,
    trained_dir: str | None = None,
) -> dict:
    """Train and register the challenger; its MLflow run also carries the data checks it was trained after.

    Training runs in a torchrun process group (`train_workers` ranks) here, unless a
    training pod already wrote its outputs to `trained_dir` (cluster profile).
    """
    import mlflow

    from training.train import train_model as train

    trained = train(
        settings, training_set, plan.sample_ds, model, overrides, run_name=f"{model}-{plan.ds}", trained_dir=trained_dir
    )
    client = mlflow.MlflowClient()
    checks = [("raw", d) for d in plan.raw_days] + [("samples", plan.sample_ds)]
    for suite, day in checks:
        uri = lake.check_result(settings, suite, day)
        if storage.exists(settings, uri):
            client.log_dict(trained["run_id"], storage.read_json(settings, uri), f"checks/{suite}/ds={day}.json")
    return trained


def evaluate_model(settings: Settings, plan: DayPlan, training_set: str, version: str) -> dict:
    from training.promotion import evaluate_and_gate

    return evaluate_and_gate(settings, training_set, plan.sample_ds, version)


def promote_model(settings: Settings, decision: dict, promote: bool) -> dict:
    from training.promotion import promote as move_alias

    if not promote:
        log.info("promote=False (experiment or backfill): the champion alias stays where it is")
        return {"promoted": False, "reason": "promotion disabled for this run (promote=false)"}
    return move_alias(settings, decision)
