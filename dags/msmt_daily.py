"""
### msmt_daily — retrain the multi-scenario, multi-task ranker every day

Logs of day `ds` have landed (`ds` = the run's logical date: the start of its
daily data interval for scheduled runs and backfills, the given date for manual runs).
Labels need `attribution_window_days` to mature, so this run **builds samples
for `ds − window`**, trains the chosen model on the `train_days` sample days
before it and holds the sample day out for the gate.

| step | what | on failure |
|---|---|---|
| `plan_day` | which days are read and written; params validated | run stops (no retry) on a bad override |
| `check_raw_logs` | Great Expectations on the raw days read | run stops (no retry), nothing trained |
| `build_samples` | Spark: join clicks / conversions, quarantine bad rows | retried (idempotent) |
| `build_features` | Spark: user / item aggregates before each day | retried (idempotent) |
| `check_samples` | GX: label rates, volume, quarantine share per scenario and day built | run stops (no retry) |
| `publish_features` | Feast apply + materialise to the online store | retried |
| `build_training_set` | Feast point-in-time join | retried |
| `choose_trainer` | cluster profile only: param `trainer` picks `train_pod` or `train_pytorchjob` | retried |
| `train_pod` | cluster, `trainer: pod`: torchrun on `gpus` GPUs in a pod → weights + metrics | retried (resumes) |
| `train_pytorchjob` | cluster, `trainer: pytorchjob`: a PyTorchJob on `nodes` × `gpus` GPUs | retried (resumes) |
| `train_model` | torchrun workers (local) or the pod's outputs (cluster) → MLflow run + version | not retried |
| `evaluate_model` | champion vs challenger per scenario × task | retried |
| `promote_model` | `champion` moves on a pass: scheduled runs only, unless `promote` says | not retried |
| `write_report` | HTML report → lake `reports/ds=….html` and the challenger's MLflow run | retried; always runs |

`write_report` is a teardown: it runs once every other task is done, whether the gate passed, failed or
was never reached, and Airflow leaves it out of the run's state, so a report can neither turn a failed
run into a success nor fail a run that succeeded (a failed report is a failed task, visible on its own).

All logic lives in `pipeline.steps` (the pod in `pipeline.pods`); tasks only pass the day's plan
(`DayPlan.to_dict` / `from_dict`), URIs and versions. Every task
leaves its error in XCom (`error`) when it fails, and a deterministic failure (`msmt.errors.StopRun`:
a failed check, a bad override, a refused promotion) fails it at once, without retry.
A training day counts as built once its samples check passed; `rebuild` rebuilds the training
days' samples and features from raw logs (after an upstream fix).
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, get_current_context, task
from airflow.timetables.interval import CronDataIntervalTimetable

from msmt.settings import Settings
from pipeline import steps
from pipeline.orchestration import fail_fast
from pipeline.steps import DayPlan
from training.catalog import model_names

SETTINGS = Settings.from_env()  # the profile decides the DAG's shape (a training pod or not), nothing else


@dag(
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=pendulum.parse(SETTINGS.dag_start, tz="UTC"),  # MSMT_DAG_START: imported logs may be older
    catchup=False,
    max_active_runs=1,
    tags=["msmt", "retraining"],
    doc_md=__doc__,
    default_args={"owner": "msmt", "retries": 2, "retry_delay": timedelta(seconds=SETTINGS.retry_delay_s)},
    params={
        "model": Param(steps.DEFAULT_MODEL, type="string", enum=model_names(), description="model of the zoo to train"),
        "epochs": Param(None, type=["null", "integer"], minimum=1, description="override the model's epochs"),
        "overrides": Param(
            {}, type="object", description="trainer / model config fields over training/configs/<model>.json"
        ),
        "promote": Param(
            None,
            type=["null", "boolean"],
            description="move the champion alias on a passing gate; unset: scheduled runs do, manual runs and "
            "backfills do not",
        ),
        "rebuild": Param(
            False, type="boolean", description="rebuild the training days' samples and features from raw logs"
        ),
        "gpus": Param(
            1, type="integer", minimum=1, description="cluster profile: GPUs (= torchrun ranks) of each training node"
        ),
        "trainer": Param(
            "pod",
            type="string",
            enum=["pod", "pytorchjob"],
            description="cluster profile: one GPU pod, or a Kubeflow PyTorchJob over `nodes` nodes",
        ),
        "nodes": Param(2, type="integer", minimum=1, description="cluster profile, trainer pytorchjob: GPU nodes"),
    },
)
def msmt_daily():
    @task
    @fail_fast
    def plan_day() -> dict:
        """#### Which days this run reads and writes; the model and its overrides are checked here"""
        context = get_current_context()
        ds = context["logical_date"].date().isoformat()
        run_type = str(getattr(context["dag_run"].run_type, "value", context["dag_run"].run_type))
        return steps.plan_from_params(Settings.from_env(), ds, context["params"], run_type).to_dict()

    @task
    @fail_fast
    def check_raw_logs(plan: dict) -> dict:
        """#### Great Expectations on the raw logs the sample day reads"""
        return steps.check_raw_logs(Settings.from_env(), DayPlan.from_dict(plan))

    @task
    @fail_fast
    def build_samples(plan: dict, raw_checks: dict) -> dict:
        """#### Spark: scenario-tagged samples of the matured day"""
        return steps.build_samples(Settings.from_env(), DayPlan.from_dict(plan))

    @task
    @fail_fast
    def build_features(plan: dict, raw_checks: dict) -> dict:
        """#### Spark: user / item aggregates as of each day"""
        return steps.build_features(Settings.from_env(), DayPlan.from_dict(plan))

    @task
    @fail_fast
    def check_samples(plan: dict, samples: dict) -> dict:
        """#### Great Expectations on every sample day built, against trailing days"""
        return steps.check_samples(Settings.from_env(), DayPlan.from_dict(plan), samples["built"])

    @task
    @fail_fast
    def publish_features(plan: dict, features: dict) -> dict:
        """#### Feast: apply definitions, materialise to the online store"""
        return steps.publish_features(Settings.from_env(), DayPlan.from_dict(plan))

    @task
    @fail_fast
    def build_training_set(plan: dict, sample_checks: dict, published: dict) -> str:
        """#### Feast point-in-time join of samples and features"""
        return steps.build_training_set(Settings.from_env(), DayPlan.from_dict(plan))

    @task(retries=0)
    @fail_fast
    def train_model(plan: dict, training_set: str) -> dict:
        """#### Train the challenger (or read the training pod's outputs), log it to MLflow, register a version"""
        return steps.train_model(Settings.from_env(), DayPlan.from_dict(plan), training_set)

    @task
    @fail_fast
    def evaluate_model(plan: dict, training_set: str, trained: dict) -> dict:
        """#### Champion vs challenger per scenario × task on the held-out day"""
        return steps.evaluate_model(Settings.from_env(), DayPlan.from_dict(plan), training_set, trained["version"])

    @task(retries=0)
    @fail_fast
    def promote_model(plan: dict, decision: dict) -> dict:
        """#### Move the `champion` alias only if the gate passed (and the run may promote)"""
        return steps.promote_model(Settings.from_env(), DayPlan.from_dict(plan), decision)

    @task
    @fail_fast
    def write_report() -> str:
        """#### The run's HTML report: gate matrix, intervals, history, data checks, lineage"""
        context = get_current_context()
        ti = context["ti"]
        states = ti.get_task_states(dag_id=ti.dag_id, run_ids=[ti.run_id])[ti.run_id]
        return steps.write_report(Settings.from_env(), context["logical_date"].date().isoformat(), states)

    plan = plan_day()
    raw_checks = check_raw_logs(plan)
    samples = build_samples(plan, raw_checks)
    sample_checks = check_samples(plan, samples)
    published = publish_features(plan, build_features(plan, raw_checks))
    training_set = build_training_set(plan, sample_checks, published)
    trained = train_model(plan, training_set)
    if SETTINGS.trains_on_kubernetes:
        from airflow.sdk import TriggerRule

        from pipeline.pods import training_pod
        from pipeline.pytorchjob import TRAINER_TASKS, training_job

        @task.branch
        def choose_trainer() -> str:
            """#### One GPU pod or a multi-node PyTorchJob, as the `trainer` param says"""
            return TRAINER_TASKS[get_current_context()["params"]["trainer"]]

        training_set >> choose_trainer() >> [training_pod(SETTINGS), training_job(SETTINGS)] >> trained
        trained.operator.trigger_rule = TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS  # the trainer not chosen is skipped
    promote_model(plan, evaluate_model(plan, training_set, trained)) >> write_report().as_teardown()


msmt_daily()
