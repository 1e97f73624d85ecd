"""Several GPU nodes: the training pod's torchrun worker as a Kubeflow training-operator `PyTorchJob`.

`pytorch_job` builds the custom object (kubeflow.org/v1) as a plain dict: one `Master` and
`nodes - 1` `Worker` replicas, each a pod with `gpus` GPUs running `pipeline.pods.training_command`
(training/worker.py's `worker_command`) without `--standalone`, so torchrun joins the job-wide
c10d rendezvous the operator describes in each pod's `PET_*` variables (elasticPolicy). The
worker picks NCCL on CUDA. Image, namespace, environment, credentials Secret and checkpoint
claim come from the Settings profile, exactly as for the single pod.

`PyTorchJobOperator` creates it from the DAG and waits for it; `training_job` is the task.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Sequence

import yaml
from airflow.providers.cncf.kubernetes.operators.resource import KubernetesCreateResourceOperator

from msmt.settings import Settings
from pipeline.pods import (
    CHECKPOINT_MOUNT,
    CHECKPOINT_VOLUME,
    CPU_REQUEST,
    CREDENTIALS_SECRET,
    GPUS,
    MEMORY_REQUEST,
    PLAN,
    pod_env,
    training_command,
)

GROUP, VERSION, PLURAL, KIND = "kubeflow.org", "v1", "pytorchjobs", "PyTorchJob"
CONTAINER = "pytorch"  # the training-operator requires a container of this name in every replica
MASTER_PORT = 23456  # the operator's MASTER_PORT comes from the port named "pytorchjob-port"
RDZV_PORT = 29400  # torchrun's c10d rendezvous store, served by the master pod
MAX_RESTARTS = 3  # torchrun restarts of the whole worker group (each resumes from the checkpoint)
BACKOFF_LIMIT = 2  # pod restarts before the operator marks the job Failed
TTL_S = 24 * 3600  # finished jobs (and their logs) stay a day for inspection
NODES = "{{ params.nodes }}"
TRAINER_TASKS = {"pod": "train_pod", "pytorchjob": "train_pytorchjob"}  # DAG param `trainer` → task id


def job_name(run_id: str, ds: str, model: str) -> str:
    """The job's DNS-1035 name: one per run and model, so a retry finds the job it started.

    Kept under 40 characters: the operator names each replica's Service `<job>-worker-<i>`,
    which must stay a 63-character label.
    """
    digest = hashlib.sha1(run_id.encode()).hexdigest()[:8]
    slug = re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")[:16].rstrip("-")
    return f"msmt-{ds.replace('-', '')}-{slug}-{digest}"


def pytorch_job(settings: Settings, *, name: str, nodes: int, gpus: int, command: list[str]) -> dict:
    """The PyTorchJob training on `nodes` nodes of `gpus` GPUs each (torchrun world size nodes × gpus).

    `minReplicas = maxReplicas = nodes`: the rendezvous waits for every node, because the
    trainer shards the data and sizes its batches by the world it starts with; a node lost
    mid-run restarts the group (up to MAX_RESTARTS), which resumes from the checkpoint.
    `nprocPerNode` is set on the spec, not as the elasticPolicy's `nProcPerNode`, which the
    operator deprecates since v1.7 (and rejects when both are set).
    """
    if nodes < 1 or gpus < 1:
        raise ValueError(f"nodes and gpus must be >= 1, got {nodes} and {gpus}")
    command = [arg for arg in command if arg != "--standalone"]  # rendezvous: the operator's PET_* variables
    gpu = {"nvidia.com/gpu": str(gpus)}
    mounts = [{"name": "dshm", "mountPath": "/dev/shm"}]  # NCCL's buffers outgrow the runtime's 64 MiB default
    volumes = [{"name": "dshm", "emptyDir": {"medium": "Memory"}}]
    if settings.train_checkpoint_claim:
        mounts.append({"name": CHECKPOINT_VOLUME, "mountPath": CHECKPOINT_MOUNT})
        claim = {"claimName": settings.train_checkpoint_claim}
        volumes.append({"name": CHECKPOINT_VOLUME, "persistentVolumeClaim": claim})
    container = {
        "name": CONTAINER,
        "image": settings.train_image,
        "command": command[:1],
        "args": command[1:],
        "env": [{"name": k, "value": v} for k, v in pod_env(settings).items()],
        "envFrom": [{"secretRef": {"name": CREDENTIALS_SECRET, "optional": True}}],
        "ports": [{"name": "pytorchjob-port", "containerPort": MASTER_PORT}],
        "resources": {"requests": {**gpu, "cpu": CPU_REQUEST, "memory": MEMORY_REQUEST}, "limits": gpu},
        "volumeMounts": mounts,
    }
    labels = {"app.kubernetes.io/part-of": "msmt", "app.kubernetes.io/component": "training"}
    template = {"metadata": {"labels": labels}, "spec": {"containers": [container], "volumes": volumes}}
    replicas = {"Master": 1, "Worker": nodes - 1}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": name, "namespace": settings.train_namespace, "labels": labels},
        "spec": {
            "nprocPerNode": str(gpus),
            "elasticPolicy": {
                "rdzvBackend": "c10d",
                "rdzvHost": f"{name}-master-0",  # the master's Service (the operator's default is worker-0)
                "rdzvPort": RDZV_PORT,
                "minReplicas": nodes,
                "maxReplicas": nodes,
                "maxRestarts": MAX_RESTARTS,
            },
            "runPolicy": {"cleanPodPolicy": "Running", "backoffLimit": BACKOFF_LIMIT, "ttlSecondsAfterFinished": TTL_S},
            "pytorchReplicaSpecs": {
                kind: {"replicas": n, "restartPolicy": "OnFailure", "template": template}
                for kind, n in replicas.items()
                if n
            },
        },
    }


def job_state(job: dict) -> str | None:
    """The job's current condition (Created, Running, Restarting, Suspended, Succeeded, Failed); None before any."""
    current = [c["type"] for c in job.get("status", {}).get("conditions") or [] if c.get("status") == "True"]
    return current[-1] if current else None


class PyTorchJobOperator(KubernetesCreateResourceOperator):
    """Create the run's PyTorchJob, wait until it succeeds or fails, reattach to it on a retry.

    Why this operator: the cncf.kubernetes provider (10.25) has no PyTorchJob operator.
    KubernetesCreateResourceOperator creates any custom object but returns once it is created,
    so `train_model` would read outputs not yet written; KubernetesJobOperator runs batch/v1
    Jobs and SparkKubernetesOperator SparkApplications only; a KubernetesPodOperator running
    `kubectl apply` + `kubectl wait` would need an image with kubectl and cluster RBAC for the
    pod. This subclass keeps the provider's connection, hook and create call and adds the wait.
    The job's name is fixed by run, day and model (`job_name`): a retry awaits a job still
    running instead of starting a second one on the same checkpoint directory, and deletes and
    recreates a failed one, which resumes from its checkpoint. Killing the task deletes the job.
    """

    template_fields: Sequence[str] = (
        *KubernetesCreateResourceOperator.template_fields,
        "name_parts",
        "nodes",
        "gpus",
        "command",
    )

    def __init__(
        self,
        *,
        settings: Settings,
        name_parts: list[str],
        nodes: int | str,
        gpus: int | str,
        command: list[str],
        poll_interval_s: float = 30,
        **kwargs,
    ) -> None:
        super().__init__(namespace=settings.train_namespace, custom_resource_definition=True, **kwargs)
        self.settings = settings
        self.name_parts = name_parts  # run id, day, model: templates rendered at run time
        self.nodes, self.gpus, self.command = nodes, gpus, command
        self.poll_interval_s = poll_interval_s

    def build_job(self) -> dict:
        """The job of this try, from the rendered template fields."""
        name = job_name(*self.name_parts)
        return pytorch_job(self.settings, name=name, nodes=int(self.nodes), gpus=int(self.gpus), command=self.command)

    def execute(self, context) -> None:
        job = self.build_job()
        name = job["metadata"]["name"]
        state = self._state(name)
        if state == "Failed":
            self.log.info("PyTorchJob %s failed in an earlier try: deleting it to start again", name)
            self._delete(name)
            while self._state(name) != "absent":
                time.sleep(1)
        if state in ("absent", "Failed"):
            self.yaml_conf = yaml.safe_dump(job)
            super().execute(context)  # the provider's create path
        else:
            self.log.info("PyTorchJob %s exists (%s): waiting for it", name, state or "no condition yet")
        while (state := self._state(name)) not in ("Succeeded", "Failed", "absent"):
            time.sleep(self.poll_interval_s)
        if state != "Succeeded":
            namespace = self.get_namespace()
            raise RuntimeError(f"PyTorchJob {name} ended {state}: kubectl -n {namespace} describe pytorchjob {name}")

    def on_kill(self) -> None:
        self._delete(self.build_job()["metadata"]["name"])

    def _state(self, name: str) -> str | None:
        """`job_state` of the named job, "absent" when there is none."""
        from kubernetes.client.exceptions import ApiException

        try:
            return job_state(self.hook.get_custom_object(GROUP, VERSION, PLURAL, name, self.get_namespace()))
        except ApiException as error:
            if error.status == 404:
                return "absent"
            raise

    def _delete(self, name: str) -> None:
        namespace = self.get_namespace()
        self.hook.delete_custom_object(GROUP, VERSION, PLURAL, name, namespace, propagation_policy="Foreground")


def training_job(settings: Settings, task_id: str = TRAINER_TASKS["pytorchjob"]) -> PyTorchJobOperator:
    """The DAG task: a PyTorchJob of `nodes` × `gpus` GPUs running the training pod's command."""
    command = training_command(settings, CHECKPOINT_MOUNT if settings.train_checkpoint_claim else "/tmp")
    return PyTorchJobOperator(
        task_id=task_id,
        settings=settings,
        name_parts=["{{ run_id }}", f"{{{{ {PLAN}['ds'] }}}}", f"{{{{ {PLAN}['model'] }}}}"],
        nodes=NODES,
        gpus=GPUS,
        command=command,
        doc_md="#### Train the challenger on several GPU nodes (a Kubeflow PyTorchJob running torchrun)",
    )
