"""The daily run as plain functions: what each `msmt_daily` task calls.

A data scientist can run a day from a notebook with the same code path as the
scheduler:

    from pipeline import steps
    settings = Settings.from_env()
    plan = steps.plan_day(settings, "2026-01-08")
    steps.build_samples(settings, plan)

The run for day `ds` builds samples for `ds - attribution_window_days` (labels
have matured by then), trains on the `train_days` sample days before it and
holds that sample day out for the gate.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

from msmt import lake, storage
from msmt.settings import Settings

log = logging.getLogger("msmt.pipeline")


DEFAULT_MODEL = "mmoe"


@dataclass(frozen=True)
class DayPlan:
    """What one run does: the days it reads and writes, and the model it trains.

    Made once by `plan_day` (the DAG's first task) and passed between tasks as
    `to_dict()` / `from_dict()`, so no task rebuilds it or re-merges its overrides.
    """

    ds: str  # the run day: newest raw logs
    sample_ds: str  # labels matured: built, and held out for evaluation
    train_days: tuple[str, ...]  # sample days the challenger learns from
    rebuild: bool = False  # rebuild the training days' samples and features from raw logs (after an upstream fix)
    model: str = DEFAULT_MODEL  # the zoo model the challenger is
    overrides: dict = field(default_factory=dict)  # over training/configs/<model>.json, validated
    promote: bool = True  # move the champion alias on a passing gate

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

    @classmethod
    def from_dict(cls, plan: dict) -> DayPlan:
        return cls(**{**plan, "train_days": tuple(plan["train_days"])})


def plan_day(
    settings: Settings,
    ds: str,
    rebuild: bool = False,
    model: str = DEFAULT_MODEL,
    overrides: dict | None = None,
    promote: bool = True,
) -> DayPlan:
    """The days a run for `ds` reads and writes; the data contract, `model` and its `overrides` are validated
    first, so a wrong one stops the run before any job reads a byte (ContractError names file, table, column)."""
    from training.hparams import check_overrides

    contract = settings.data_contract
    overrides = dict(overrides or {})
    check_overrides(model, overrides)
    sample_ds = lake.shift(ds, -settings.attribution_window_days)
    train_days = tuple(lake.days_between(lake.shift(sample_ds, -settings.train_days), settings.train_days))
    log.info(
        "run %s: samples for %s (attribution window %d d), training on %s, contract %s (%s)",
        ds,
        sample_ds,
        settings.attribution_window_days,
        ", ".join(train_days),
        contract.name,
        contract.source,
    )
    return DayPlan(ds, sample_ds, train_days, rebuild, model, overrides, promote)


def plan_from_params(settings: Settings, ds: str, params: dict, run_type: str = "manual") -> DayPlan:
    """The plan of a run from its DAG params (or the CLI's options): the one place `epochs` joins the overrides.

    Whether a passing gate moves the champion is the run's type's to decide unless `promote` says so:
    the daily schedule promotes, manual runs and backfills (replays of the past) do not.
    """
    epochs = {"epochs": params["epochs"]} if params.get("epochs") else {}
    overrides = {**params.get("overrides", {}), **epochs}
    promote = params.get("promote")
    return plan_day(
        settings,
        ds,
        params.get("rebuild", False),
        params.get("model", DEFAULT_MODEL),
        overrides,
        run_type == "scheduled" if promote is None else bool(promote),
    )


def samples_checked(settings: Settings, day: str) -> bool:
    """A sample day counts as built only once its samples check passed (stored result, success)."""
    uri = lake.check_result(settings, "samples", day)
    return storage.exists(settings, uri) and storage.read_json(settings, uri).get("success") is True


def _to_build(plan: DayPlan, built) -> list[str]:
    """Training days to (re)build, oldest first, then the sample day (always rebuilt)."""
    return [*(d for d in plan.train_days if plan.rebuild or not built(d)), plan.sample_ds]


def samples_to_build(settings: Settings, plan: DayPlan) -> list[str]:
    """The catch-up: training days whose samples never passed their check, then the sample day."""
    return _to_build(plan, lambda day: samples_checked(settings, day))


def features_to_build(settings: Settings, plan: DayPlan) -> list[str]:
    """The catch-up: feature days some view of the contract lacks, then the sample day."""
    views = settings.data_contract.features
    return _to_build(plan, lambda day: all(storage.exists(settings, lake.features(settings, v, day)) for v in views))


def check_raw_logs(settings: Settings, plan: DayPlan) -> dict:
    """Great Expectations on every raw day the sample day reads; stops the run on failure."""
    from data_checks.suites import check_raw

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
    for day in samples_to_build(settings, plan):
        storage.remove(settings, lake.check_result(settings, "samples", day))
        stats[day] = job.run(spark, settings, day)
    return {"built": list(stats), "stats": stats[plan.sample_ds]}


def build_features(settings: Settings, plan: DayPlan) -> dict:
    """Feature days for training and evaluation: missing ones, and the sample day always."""
    from spark_jobs import build_features as job
    from spark_jobs.common import get_spark

    spark = get_spark(settings)
    days = features_to_build(settings, plan)
    for day in days:
        job.run(spark, settings, day)
    return {"built": days}


def check_samples(settings: Settings, plan: DayPlan, built: list[str]) -> dict:
    """Great Expectations on every sample day this run built, oldest first; the first failure stops the run."""
    from data_checks.suites import check_samples as check

    return {day: check(settings, day)["success"] for day in sorted(built or [plan.sample_ds])}


def publish_features(settings: Settings, plan: DayPlan) -> dict:
    from feature_repo import publish as features

    return features.publish(settings, list(plan.feature_days))


def build_training_set(settings: Settings, plan: DayPlan) -> str:
    from feature_repo import publish as features

    return features.build_training_set(settings, list(plan.feature_days), plan.sample_ds)


def train_model(settings: Settings, plan: DayPlan, training_set: str) -> dict:
    """Train and register the challenger; its MLflow run also carries the data checks it was trained after.

    Locally training runs in a torchrun process group (`train_workers` ranks); in the
    cluster profile the training pod has already written its outputs to
    `lake.training_output`, which this reads, logs and registers.
    """
    import mlflow

    from training.train import train_model as train

    trained_dir = lake.training_output(settings, plan.ds, plan.model) if settings.trains_on_kubernetes else None
    trained = train(
        settings,
        training_set,
        plan.sample_ds,
        plan.model,
        plan.overrides,
        run_name=f"{plan.model}-{plan.ds}",
        trained_dir=trained_dir,
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


def promote_model(settings: Settings, plan: DayPlan, decision: dict) -> dict:
    from training.promotion import promote as move_alias

    if not plan.promote:
        log.info("promote=False (experiment or backfill): the champion alias stays where it is")
        return {"promoted": False, "reason": "promotion disabled for this run (promote=false)"}
    return move_alias(settings, decision)


def write_report(settings: Settings, ds: str, run_states: dict[str, str] | None = None) -> str:
    """The run's HTML report, in the lake and on the challenger's MLflow run; its lake URI.

    Takes the run day rather than a plan: it also reports a run whose `plan_day`
    failed. `run_states` (task → state of the same run) lets it tell this run's
    results from those an earlier run of the day left in the lake.
    """
    from pipeline.report import write_report as write

    return write(settings, ds, run_states)
