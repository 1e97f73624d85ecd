"""The cluster profile's training pod: the same torchrun command as a local run, on `gpus` GPUs.

Built here, not in the DAG file, so it is importable and tested on its own. Everything
run-specific comes from the `plan_day` XCom (day, sample day, model, the overrides merged
once there) and the `gpus` param through Airflow templates, rendered at run time. The pod
writes to `lake.training_output`, where `train_model` reads, logs and registers.
pipeline.pytorchjob reuses the command, environment and volumes for several nodes.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from msmt import lake
from msmt.settings import Settings
from training.worker import worker_command

if TYPE_CHECKING:
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

CHECKPOINT_MOUNT = "/checkpoints"  # where the training pod mounts its checkpoint claim
CHECKPOINT_VOLUME = "checkpoints"
CREDENTIALS_SECRET = "msmt-s3"  # S3 / MLflow credentials, env from a Secret (infra/k8s/secrets/msmt.template.yaml)
CPU_REQUEST, MEMORY_REQUEST = "8", "32Gi"  # a host share for data loading beside each node's GPUs
PLAN = "ti.xcom_pull(task_ids='plan_day')"  # the run's DayPlan as a dict (pipeline.steps.DayPlan.to_dict)
GPUS = "{{ params.gpus }}"
_URI_CREDENTIALS = re.compile(r"://[^/@\s]*:[^/@\s]*@")  # scheme://user:password@host


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


def pod_env(settings: Settings) -> dict[str, str]:
    """The profile's `MSMT_*` variables for a training container; credentials stay in `CREDENTIALS_SECRET`.

    A pod spec is stored in the API server and shown by `kubectl get -o yaml`, so a URI
    with a password in it (`postgresql://user:pw@…`) is refused here rather than shipped.
    """
    env = {k: v for k, v in settings.to_env().items() if k != "MSMT_HOME"}  # the scheduler's home is not the pod's
    leaked = sorted(k for k, v in env.items() if _URI_CREDENTIALS.search(v))
    if leaked:
        raise ValueError(f"{', '.join(leaked)} carry credentials: put them in the Secret {CREDENTIALS_SECRET!r}")
    return env


def training_pod(settings: Settings, task_id: str = "train_pod") -> KubernetesPodOperator:
    """A KubernetesPodOperator running `training_command` with `gpus` GPUs and the profile's environment."""
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from kubernetes.client import models as k8s

    claim = settings.train_checkpoint_claim
    volumes, mounts = [], []
    if claim:
        source = k8s.V1PersistentVolumeClaimVolumeSource(claim_name=claim)
        volumes = [k8s.V1Volume(name=CHECKPOINT_VOLUME, persistent_volume_claim=source)]
        mounts = [k8s.V1VolumeMount(name=CHECKPOINT_VOLUME, mount_path=CHECKPOINT_MOUNT)]
    command = training_command(settings, CHECKPOINT_MOUNT if claim else "/tmp")
    return KubernetesPodOperator(
        task_id=task_id,
        name="msmt-train",
        namespace=settings.train_namespace,
        image=settings.train_image,
        cmds=command[:1],
        arguments=command[1:],
        env_vars=pod_env(settings),
        env_from=[k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=CREDENTIALS_SECRET, optional=True))],
        container_resources=k8s.V1ResourceRequirements(
            requests={"nvidia.com/gpu": GPUS, "cpu": CPU_REQUEST, "memory": MEMORY_REQUEST},
            limits={"nvidia.com/gpu": GPUS},
        ),
        volumes=volumes,
        volume_mounts=mounts,
        on_finish_action="delete_succeeded_pod",
        get_logs=True,
        doc_md="#### Train the challenger on GPUs (torchrun in a Kubernetes pod)",
    )
