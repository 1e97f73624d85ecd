"""In the cluster profile, msmt_daily trains in a GPU pod or a PyTorchJob: resources, image and torchrun command."""

from __future__ import annotations

import json

import pytest

from msmt.settings import PROJECT_ROOT


@pytest.fixture(scope="module")
def cluster_dag():
    from airflow.dag_processing.dagbag import DagBag

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MSMT_PROFILE", "cluster")
        mp.setenv("MSMT_LAKE_URI", "s3://lake/msmt")
        bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags" / "msmt_daily.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags["msmt_daily"]


PLAN = {"ds": "2026-01-10", "sample_ds": "2026-01-08", "model": "mmoe", "overrides": {"epochs": 3, "n_experts": 8}}


class _TI:
    def xcom_pull(self, task_ids: str):
        return {"plan_day": PLAN, "build_training_set": "s3://lake/ts"}[task_ids]


def test_training_pod_requests_gpus_and_runs_the_worker(cluster_dag):
    pod = cluster_dag.get_task("train_pod")
    assert pod.upstream_task_ids == {"choose_trainer"} and pod.downstream_task_ids == {"train_model"}
    assert pod.image == "msmt-train:latest" and pod.retries >= 2 and pod.owner == "msmt"
    assert pod.env_vars["MSMT_PROFILE"] == "cluster" and "MSMT_HOME" not in pod.env_vars

    params = {"gpus": 4, "model": "ple", "epochs": 9, "promote": True, "overrides": {}}  # the plan wins: merged once
    run_id = "scheduled__2026-01-10T00:00:00+00:00"
    pod.render_template_fields({"params": params, "ti": _TI(), "run_id": run_id})
    assert pod.container_resources.limits == {"nvidia.com/gpu": "4"}
    assert pod.container_resources.requests["nvidia.com/gpu"] == "4"
    command = [*pod.cmds, *pod.arguments]
    assert command[:5] == ["python", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4"]
    args = dict(zip(command[7::2], command[8::2], strict=True))
    assert command[5:7] == ["-m", "training.worker"]
    assert args["--training-set"] == "s3://lake/ts" and args["--eval-ds"] == "2026-01-08"
    assert args["--model"] == "mmoe" and args["--out"] == "s3://lake/msmt/training_runs/ds=2026-01-10/mmoe"
    assert json.loads(args["--overrides"]) == {"epochs": 3, "n_experts": 8}
    checkpoint_dir = command[command.index("--checkpoint-dir") + 1]
    assert checkpoint_dir == f"/checkpoints/msmt-checkpoints/{run_id}/2026-01-10/mmoe"  # same on a retry


def test_training_pod_keeps_checkpoints_on_its_claim(cluster_dag):
    pod = cluster_dag.get_task("train_pod")
    (volume,) = pod.volumes
    (mount,) = pod.volume_mounts
    assert volume.persistent_volume_claim.claim_name == "msmt-checkpoints"
    assert mount.name == volume.name and mount.mount_path == "/checkpoints"


def test_the_gpu_count_is_a_dag_param(cluster_dag):
    schema = cluster_dag.params.get_param("gpus").schema
    assert schema["type"] == "integer" and schema["minimum"] == 1


def test_the_claim_the_pod_mounts_is_the_one_infra_creates(cluster_dag):
    import yaml

    manifest = yaml.safe_load((PROJECT_ROOT / "infra" / "k8s" / "checkpoints-pvc.yaml").read_text())
    pod = cluster_dag.get_task("train_pod")
    assert manifest["kind"] == "PersistentVolumeClaim"
    assert manifest["metadata"]["name"] == pod.volumes[0].persistent_volume_claim.claim_name
    assert manifest["metadata"]["namespace"] == pod.namespace


def test_the_pod_is_built_by_an_importable_function_outside_any_dag():
    from msmt.settings import Settings
    from pipeline.pods import training_pod

    pod = training_pod(Settings(profile="cluster", lake_uri="s3://other/lake", train_checkpoint_claim=""))
    pod.render_template_fields({"params": {"gpus": 2}, "ti": _TI(), "run_id": "manual__1"})
    command = [*pod.cmds, *pod.arguments]
    assert not pod.volumes and command[command.index("--checkpoint-dir") + 1].startswith("/tmp/msmt-checkpoints/")
    assert command[command.index("--out") + 1] == "s3://other/lake/training_runs/ds=2026-01-10/mmoe"
    assert json.loads(command[command.index("--overrides") + 1]) == PLAN["overrides"]


def test_the_trainer_param_picks_the_pod_or_the_pytorchjob(cluster_dag):
    from pipeline.pytorchjob import TRAINER_TASKS

    trainer, nodes = cluster_dag.params.get_param("trainer"), cluster_dag.params.get_param("nodes")
    from airflow.sdk.definitions.param import ParamValidationError

    assert trainer.value == "pod" and trainer.resolve("pytorchjob") == "pytorchjob"
    with pytest.raises(ParamValidationError):
        trainer.resolve("mpijob")
    assert trainer.schema["enum"] == list(TRAINER_TASKS) and nodes.schema["minimum"] == 1
    branch = cluster_dag.get_task("choose_trainer")
    assert branch.upstream_task_ids == {"build_training_set"}
    assert branch.downstream_task_ids == set(TRAINER_TASKS.values())
    for task_id in TRAINER_TASKS.values():
        assert cluster_dag.get_task(task_id).downstream_task_ids == {"train_model"}
    # the trainer not chosen is skipped; train_model runs after the other, and not after a failure
    assert cluster_dag.get_task("train_model").trigger_rule == "none_failed_min_one_success"


def test_the_pytorchjob_task_runs_the_pods_command_on_nodes_times_gpus(cluster_dag):
    job_task = cluster_dag.get_task("train_pytorchjob")
    assert job_task.retries >= 2 and job_task.owner == "msmt" and job_task.custom_resource_definition
    params = {"gpus": 2, "nodes": 3, "trainer": "pytorchjob"}
    job_task.render_template_fields({"params": params, "ti": _TI(), "run_id": "manual__1"})
    job = job_task.build_job()
    assert job["metadata"]["namespace"] == "msmt" and job["spec"]["elasticPolicy"]["maxReplicas"] == 3
    (container,) = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"]
    command = [*container["command"], *container["args"]]
    assert command[:4] == ["python", "-m", "torch.distributed.run", "--nproc-per-node=2"]
    assert command[command.index("--checkpoint-dir") + 1] == "/checkpoints/msmt-checkpoints/manual__1/2026-01-10/mmoe"
