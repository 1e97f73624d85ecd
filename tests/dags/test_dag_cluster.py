"""In the cluster profile, msmt_daily trains in a GPU pod: resources, image and torchrun command."""

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


class _TI:
    def xcom_pull(self, task_ids: str):
        return {"plan_day": {"ds": "2026-01-10", "sample_ds": "2026-01-08"}, "build_training_set": "s3://lake/ts"}[
            task_ids
        ]


def test_training_pod_requests_gpus_and_runs_the_worker(cluster_dag):
    pod = cluster_dag.get_task("train_pod")
    assert pod.upstream_task_ids == {"build_training_set"} and pod.downstream_task_ids == {"train_model"}
    assert pod.image == "msmt-train:latest" and pod.retries >= 2 and pod.owner == "msmt"
    assert pod.env_vars["MSMT_PROFILE"] == "cluster" and "MSMT_HOME" not in pod.env_vars

    params = {"gpus": 4, "model": "mmoe", "epochs": 3, "promote": True, "overrides": {"n_experts": 8}}
    pod.render_template_fields({"params": params, "ti": _TI()})
    assert pod.container_resources.limits == {"nvidia.com/gpu": "4"}
    assert pod.container_resources.requests["nvidia.com/gpu"] == "4"
    command = [*pod.cmds, *pod.arguments]
    assert command[:5] == ["python", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4"]
    args = dict(zip(command[7::2], command[8::2], strict=True))
    assert command[5:7] == ["-m", "training.worker"]
    assert args["--training-set"] == "s3://lake/ts" and args["--eval-ds"] == "2026-01-08"
    assert args["--model"] == "mmoe" and args["--out"] == "s3://lake/msmt/training_runs/ds=2026-01-10/mmoe"
    assert json.loads(args["--overrides"]) == {"epochs": 3, "n_experts": 8}


def test_the_gpu_count_is_a_dag_param(cluster_dag):
    schema = cluster_dag.params.get_param("gpus").schema
    assert schema["type"] == "integer" and schema["minimum"] == 1
