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
| `train_pod` | cluster profile only: torchrun on `gpus` GPUs in a pod → weights + metrics | retried (resumes) |
| `train_model` | torchrun workers (local) or the pod's outputs (cluster) → MLflow run + version | not retried |
| `evaluate_model` | champion vs challenger per scenario × task | retried |
| `promote_model` | `champion` alias moves only on pass | not retried |

All logic lives in `msmt.pipeline`; tasks only pass day plans, URIs and versions. Every task
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

from msmt.catalog import model_names
from msmt.orchestration import fail_fast

CHECKPOINT_MOUNT = "/checkpoints"  # where the training pod mounts its checkpoint claim


def _settings():
    from msmt.settings import Settings

    return Settings.from_env()


def _train_pod(settings):
    """Cluster profile: the training worker in a GPU pod, the same torchrun command as a local run.

    Plan, training set and model come from XCom / params at run time; the pod writes to
    `pipeline.training_output`, where `train_model` reads, logs and registers. Checkpoints go
    to the claim `MSMT_TRAIN_CHECKPOINT_CLAIM`, one directory per run, day and model, so a
    retried pod resumes where the failed one stopped.
    """
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from kubernetes.client import models as k8s

    from msmt.pipeline import training_output
    from training.worker import worker_command

    gpus = "{{ params.gpus }}"
    day = "{{ ti.xcom_pull(task_ids='plan_day')['ds'] }}"
    claim = settings.train_checkpoint_claim
    volumes, mounts = [], []
    if claim:
        source = k8s.V1PersistentVolumeClaimVolumeSource(claim_name=claim)
        volumes = [k8s.V1Volume(name="checkpoints", persistent_volume_claim=source)]
        mounts = [k8s.V1VolumeMount(name="checkpoints", mount_path=CHECKPOINT_MOUNT)]
    checkpoint_root = CHECKPOINT_MOUNT if claim else "/tmp"
    checkpoints = f"{checkpoint_root}/msmt-checkpoints/{{{{ run_id }}}}/{day}/{{{{ params.model }}}}"
    command = worker_command(
        training_set="{{ ti.xcom_pull(task_ids='build_training_set') }}",
        eval_ds="{{ ti.xcom_pull(task_ids='plan_day')['sample_ds'] }}",
        model="{{ params.model }}",
        out=training_output(settings, day, "{{ params.model }}"),
        workers=gpus,
        checkpoint_dir=checkpoints,
    )
    overrides = "{{ dict(params.overrides, **({'epochs': params.epochs} if params.epochs else {})) | tojson }}"
    command[command.index("--overrides") + 1] = overrides
    env = {k: v for k, v in settings.to_env().items() if k != "MSMT_HOME"}  # the scheduler's home is not the pod's
    return KubernetesPodOperator(
        task_id="train_pod",
        name="msmt-train",
        namespace=settings.train_namespace,
        image=settings.train_image,
        cmds=command[:1],
        arguments=command[1:],
        env_vars=env,
        env_from=[k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name="msmt-s3", optional=True))],
        container_resources=k8s.V1ResourceRequirements(
            requests={"nvidia.com/gpu": gpus, "cpu": "8", "memory": "32Gi"},
            limits={"nvidia.com/gpu": gpus},
        ),
        volumes=volumes,
        volume_mounts=mounts,
        on_finish_action="delete_succeeded_pod",
        get_logs=True,
        doc_md="#### Train the challenger on GPUs (torchrun in a Kubernetes pod)",
    )


def _overrides(params) -> dict:
    """The `overrides` param, with `epochs` folded in when set."""
    return {**params["overrides"], **({"epochs": params["epochs"]} if params.get("epochs") else {})}


def _plan(plan: dict):
    from msmt.pipeline import DayPlan

    return DayPlan(**{**plan, "train_days": tuple(plan["train_days"])})


@dag(
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=pendulum.parse(_settings().dag_start, tz="UTC"),  # MSMT_DAG_START: imported logs may be older
    catchup=False,
    max_active_runs=1,
    tags=["msmt", "retraining"],
    doc_md=__doc__,
    default_args={"owner": "msmt", "retries": 2, "retry_delay": timedelta(seconds=_settings().retry_delay_s)},
    params={
        "model": Param("mmoe", type="string", enum=model_names(), description="model of the zoo to train"),
        "epochs": Param(None, type=["null", "integer"], minimum=1, description="override the model's epochs"),
        "overrides": Param(
            {}, type="object", description="trainer / model config fields over training/configs/<model>.json"
        ),
        "promote": Param(True, type="boolean", description="move the champion alias on a passing gate"),
        "rebuild": Param(
            False, type="boolean", description="rebuild the training days' samples and features from raw logs"
        ),
        "gpus": Param(
            1, type="integer", minimum=1, description="cluster profile: GPUs (= torchrun ranks) of the training pod"
        ),
    },
)
def msmt_daily():
    @task
    @fail_fast
    def plan_day() -> dict:
        """#### Which days this run reads and writes; the model and its overrides are checked here"""
        from msmt.pipeline import plan_day as plan

        context = get_current_context()
        params, ds = context["params"], context["logical_date"].date().isoformat()
        return plan(_settings(), ds, params["rebuild"], params["model"], _overrides(params)).to_dict()

    @task
    @fail_fast
    def check_raw_logs(plan: dict) -> dict:
        """#### Great Expectations on the raw logs the sample day reads"""
        from msmt import pipeline

        return pipeline.check_raw_logs(_settings(), _plan(plan))

    @task
    @fail_fast
    def build_samples(plan: dict, raw_checks: dict) -> dict:
        """#### Spark: scenario-tagged samples of the matured day"""
        from msmt import pipeline

        return pipeline.build_samples(_settings(), _plan(plan))

    @task
    @fail_fast
    def build_features(plan: dict, raw_checks: dict) -> dict:
        """#### Spark: user / item aggregates as of each day"""
        from msmt import pipeline

        return pipeline.build_features(_settings(), _plan(plan))

    @task
    @fail_fast
    def check_samples(plan: dict, samples: dict) -> dict:
        """#### Great Expectations on every sample day built, against trailing days"""
        from msmt import pipeline

        return pipeline.check_samples(_settings(), _plan(plan), samples["built"])

    @task
    @fail_fast
    def publish_features(plan: dict, features: dict) -> dict:
        """#### Feast: apply definitions, materialise to the online store"""
        from msmt import pipeline

        return pipeline.publish_features(_settings(), _plan(plan))

    @task
    @fail_fast
    def build_training_set(plan: dict, sample_checks: dict, published: dict) -> str:
        """#### Feast point-in-time join of samples and features"""
        from msmt import pipeline

        return pipeline.build_training_set(_settings(), _plan(plan))

    @task(retries=0)
    @fail_fast
    def train_model(plan: dict, training_set: str) -> dict:
        """#### Train the challenger (or read the training pod's outputs), log it to MLflow, register a version"""
        from msmt import pipeline

        settings, params = _settings(), get_current_context()["params"]
        overrides = _overrides(params)
        trained_dir = (
            pipeline.training_output(settings, plan["ds"], params["model"]) if settings.profile == "cluster" else None
        )
        return pipeline.train_model(settings, _plan(plan), training_set, params["model"], overrides, trained_dir)

    @task
    @fail_fast
    def evaluate_model(plan: dict, training_set: str, trained: dict) -> dict:
        """#### Champion vs challenger per scenario × task on the held-out day"""
        from msmt import pipeline

        return pipeline.evaluate_model(_settings(), _plan(plan), training_set, trained["version"])

    @task(retries=0)
    @fail_fast
    def promote_model(decision: dict) -> dict:
        """#### Move the `champion` alias only if the gate passed"""
        from msmt import pipeline

        return pipeline.promote_model(_settings(), decision, get_current_context()["params"]["promote"])

    plan = plan_day()
    raw_checks = check_raw_logs(plan)
    samples = build_samples(plan, raw_checks)
    sample_checks = check_samples(plan, samples)
    published = publish_features(plan, build_features(plan, raw_checks))
    training_set = build_training_set(plan, sample_checks, published)
    trained = train_model(plan, training_set)
    if _settings().profile == "cluster":
        training_set >> _train_pod(_settings()) >> trained
    promote_model(evaluate_model(plan, training_set, trained))


msmt_daily()
