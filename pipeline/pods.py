"""The cluster profile's training pod: the same torchrun command as a local run, on `gpus` GPUs.

Built here, not in the DAG file, so it is importable and tested on its own. Everything
run-specific comes from the `plan_day` XCom (day, sample day, model, the overrides merged
once there) and the `gpus` param through Airflow templates, rendered at run time. The pod
writes to `lake.training_output`, where `train_model` reads, logs and registers.
"""

from __future__ import annotations

from msmt import lake
from msmt.settings import Settings
from training.worker import worker_command

CHECKPOINT_MOUNT = "/checkpoints"  # where the training pod mounts its checkpoint claim
PLAN = "ti.xcom_pull(task_ids='plan_day')"  # the run's DayPlan as a dict (pipeline.steps.DayPlan.to_dict)
GPUS = "{{ params.gpus }}"


def _plan(field: str) -> str:
    return f"{{{{ {PLAN}['{field}'] }}}}"


def training_command(settings: Settings, checkpoint_root: str) -> list[str]:
    """The worker's torchrun command line, templated on the run's plan.

    Checkpoints go one directory per run, day and model under `checkpoint_root`, so a
    retried pod (same run id) resumes where the failed one stopped.
    """
    day, model = _plan("ds"), _plan("model")
    command = worker_command(
        training_set="{{ ti.xcom_pull(task_ids='build_training_set') }}",
        eval_ds=_plan("sample_ds"),
        model=model,
        out=lake.training_output(settings, day, model),
        workers=GPUS,
        checkpoint_dir=f"{checkpoint_root}/msmt-checkpoints/{{{{ run_id }}}}/{day}/{model}",
    )
    command[command.index("--overrides") + 1] = f"{{{{ {PLAN}['overrides'] | tojson }}}}"
    return command


def training_pod(settings: Settings, task_id: str = "train_pod"):
    """A KubernetesPodOperator running `training_command` with `gpus` GPUs and the profile's environment."""
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from kubernetes.client import models as k8s

    claim = settings.train_checkpoint_claim
    volumes, mounts = [], []
    if claim:
        source = k8s.V1PersistentVolumeClaimVolumeSource(claim_name=claim)
        volumes = [k8s.V1Volume(name="checkpoints", persistent_volume_claim=source)]
        mounts = [k8s.V1VolumeMount(name="checkpoints", mount_path=CHECKPOINT_MOUNT)]
    command = training_command(settings, CHECKPOINT_MOUNT if claim else "/tmp")
    env = {k: v for k, v in settings.to_env().items() if k != "MSMT_HOME"}  # the scheduler's home is not the pod's
    return KubernetesPodOperator(
        task_id=task_id,
        name="msmt-train",
        namespace=settings.train_namespace,
        image=settings.train_image,
        cmds=command[:1],
        arguments=command[1:],
        env_vars=env,
        env_from=[k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name="msmt-s3", optional=True))],
        container_resources=k8s.V1ResourceRequirements(
            requests={"nvidia.com/gpu": GPUS, "cpu": "8", "memory": "32Gi"},
            limits={"nvidia.com/gpu": GPUS},
        ),
        volumes=volumes,
        volume_mounts=mounts,
        on_finish_action="delete_succeeded_pod",
        get_logs=True,
        doc_md="#### Train the challenger on GPUs (torchrun in a Kubernetes pod)",
    )
