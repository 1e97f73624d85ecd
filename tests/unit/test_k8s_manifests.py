"""infra/k8s and the PyTorchJob validate against the Kubernetes API schemas; broken ones are rejected.

Kubernetes objects: kubernetes-validate's strict schemas (unknown fields are errors) of KUBERNETES_VERSION.
The PyTorchJob: infra/k8s/crds/pytorchjob-v1.schema.json (kubeflow.org/v1, see its $comment), and each
replica's pod template as a Kubernetes PodTemplate. No cluster is involved.
"""

from __future__ import annotations

import copy
import json
import re

import jsonschema
import kubernetes_validate
import pytest
import yaml

from msmt.settings import PROJECT_ROOT, Settings
from pipeline import pods, pytorchjob

# The API the kubernetes Python client here (36.0.3, which builds the KubernetesPodOperator's pod) is
# generated from; kubernetes-validate 1.37.0 ships schemas for 1.25 … 1.37.
KUBERNETES_VERSION = "1.36"
K8S = PROJECT_ROOT / "infra" / "k8s"
MANIFESTS = sorted(K8S.rglob("*.yaml"))
SETTINGS = Settings(profile="cluster", lake_uri="s3://lake/msmt", mlflow_tracking_uri="http://mlflow.msmt.svc:5000")
COMMAND = pods.training_command(SETTINGS, pods.CHECKPOINT_MOUNT)


def validate_k8s(obj: dict) -> None:
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def validate_pytorchjob(job: dict) -> None:
    """The job against the PyTorchJob schema, then every replica's pod template against Kubernetes'."""
    schema = json.loads((K8S / "crds" / "pytorchjob-v1.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(job)
    for replica in job["spec"]["pytorchReplicaSpecs"].values():
        validate_k8s(
            {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": replica["template"]}
        )


def documents(path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def job(nodes: int = 3, gpus: int = 4, settings: Settings = SETTINGS) -> dict:
    name = pytorchjob.job_name("scheduled__2026-01-10T00:00:00+00:00", "2026-01-10", "shared_bottom")
    return pytorchjob.pytorch_job(settings, name=name, nodes=nodes, gpus=gpus, command=COMMAND)


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(PROJECT_ROOT)))
def test_every_manifest_validates(path):
    docs = documents(path)
    assert docs
    for doc in docs:
        validate_k8s(doc)
        assert doc["metadata"].get("namespace", "msmt") == "msmt" and doc["metadata"]["labels"]


def test_the_validator_rejects_a_broken_manifest():
    (pvc,) = documents(K8S / "checkpoints-pvc.yaml")
    validate_k8s(pvc)
    typo = copy.deepcopy(pvc)
    typo["spec"]["accesModes"] = typo["spec"].pop("accessModes")  # strict: an unknown field is an error
    wrong_type = copy.deepcopy(pvc)
    wrong_type["spec"]["accessModes"] = "ReadWriteMany"
    for broken in (typo, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            validate_k8s(broken)


def test_every_service_the_cluster_profile_names_has_a_manifest():
    kinds = {(d["kind"], d["metadata"]["name"]) for p in MANIFESTS for d in documents(p)}
    for workload in ("postgres", "redis", "mlflow", "spark-master", "spark-worker"):
        assert {("Service", workload), ("Deployment", workload), ("StatefulSet", workload)} & kinds, workload
    for component in ("api-server", "scheduler", "dag-processor"):
        assert ("Deployment", f"airflow-{component}") in kinds
    assert ("PersistentVolumeClaim", SETTINGS.train_checkpoint_claim) in kinds
    assert ("Secret", pods.CREDENTIALS_SECRET) in kinds


def test_the_profile_configmap_is_the_cluster_profile():
    env_file = (PROJECT_ROOT / "infra" / "profiles" / "cluster.env").read_text().splitlines()
    profile = dict(line.split("=", 1) for line in env_file if line and not line.startswith("#"))
    (configmap,) = documents(K8S / "profile-configmap.yaml")
    assert configmap["data"] == profile


def test_the_secret_template_holds_no_values_and_is_out_of_the_apply_path():
    path = K8S / "secrets" / "msmt.template.yaml"
    secrets = documents(path)
    assert {s["kind"] for s in secrets} == {"Secret"}
    assert all(value == "" for s in secrets for value in s["stringData"].values())
    assert not [p for p in K8S.glob("*.yaml") if any(d["kind"] == "Secret" for d in documents(p))]


SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|FERNET|ACCESS_KEY", re.IGNORECASE)


def literal_env(obj) -> list[tuple[str, str]]:
    """Every `env` entry with a literal `value` anywhere in a manifest (not `valueFrom`)."""
    if isinstance(obj, list):
        return [pair for item in obj for pair in literal_env(item)]
    if not isinstance(obj, dict):
        return []
    found = [(e["name"], e["value"]) for e in obj.get("env") or [] if "value" in e]
    return found + [pair for key, value in obj.items() if key != "env" for pair in literal_env(value)]


def test_manifests_take_credentials_from_secrets_only():
    literal = [(path.name, name) for path in MANIFESTS for doc in documents(path) for name, _ in literal_env(doc)]
    assert ("postgres.yaml", "POSTGRES_USER") in literal  # the walk finds literal values…
    assert not [(file, name) for file, name in literal if SECRET_NAME.search(name)]  # …and no secret among them


def test_the_pytorchjob_validates_and_runs_the_pods_command_on_every_node():
    rendered = job(nodes=3, gpus=4)
    validate_pytorchjob(rendered)
    spec = rendered["spec"]
    assert rendered["metadata"]["namespace"] == "msmt" and spec["nprocPerNode"] == "4"
    assert spec["elasticPolicy"] | {"rdzvHost": None} == {
        "rdzvBackend": "c10d",
        "rdzvHost": None,
        "rdzvPort": pytorchjob.RDZV_PORT,
        "minReplicas": 3,
        "maxReplicas": 3,
        "maxRestarts": pytorchjob.MAX_RESTARTS,
    }
    assert spec["elasticPolicy"]["rdzvHost"] == f"{rendered['metadata']['name']}-master-0"
    replicas = spec["pytorchReplicaSpecs"]
    assert {k: r["replicas"] for k, r in replicas.items()} == {"Master": 1, "Worker": 2}
    for replica in replicas.values():
        (container,) = replica["template"]["spec"]["containers"]
        assert container["name"] == "pytorch" and container["image"] == SETTINGS.train_image
        assert container["resources"]["limits"] == {"nvidia.com/gpu": "4"}
        assert [*container["command"], *container["args"]] == [a for a in COMMAND if a != "--standalone"]
        assert "--standalone" in COMMAND  # the pod's rendezvous is local; the job's is the operator's
        assert container["envFrom"] == [{"secretRef": {"name": pods.CREDENTIALS_SECRET, "optional": True}}]
        claims = [
            v["persistentVolumeClaim"]["claimName"]
            for v in replica["template"]["spec"]["volumes"]
            if "persistentVolumeClaim" in v
        ]
        assert claims == ["msmt-checkpoints"]
        assert {"name": pods.CHECKPOINT_VOLUME, "mountPath": "/checkpoints"} in container["volumeMounts"]


def test_one_node_is_a_master_alone_and_no_claim_means_no_volume():
    rendered = job(nodes=1, gpus=1, settings=SETTINGS.with_(train_checkpoint_claim=""))
    validate_pytorchjob(rendered)
    (replica,) = rendered["spec"]["pytorchReplicaSpecs"].values()
    assert rendered["spec"]["pytorchReplicaSpecs"].keys() == {"Master"}
    assert [v["name"] for v in replica["template"]["spec"]["volumes"]] == ["dshm"]
    with pytest.raises(ValueError, match="must be >= 1"):
        job(nodes=0)


def _broken(edit) -> dict:
    rendered = job()
    edit(rendered)
    return rendered


@pytest.mark.parametrize(
    "edit",
    [
        lambda j: j["spec"]["pytorchReplicaSpecs"]["Master"].update(replicas=2),  # one master only
        lambda j: j["spec"]["pytorchReplicaSpecs"].update(Chief=j["spec"]["pytorchReplicaSpecs"]["Worker"]),
        lambda j: j["spec"].update(elasticpolicy=j["spec"].pop("elasticPolicy")),  # the API server would prune it
        lambda j: j["spec"]["elasticPolicy"].update(rdzvBackend="zmq"),
        lambda j: j["spec"]["elasticPolicy"].update(nProcPerNode=4),  # deprecated, and set twice
        lambda j: j["spec"]["elasticPolicy"].update(minReplicas="3"),
        lambda j: j["metadata"].update(name="msmt_2026"),  # not a DNS-1035 label
        lambda j: j["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0].update(
            name="trainer"
        ),
        lambda j: j["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"].update(restartpolicy="Never"),
        lambda j: j["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0].update(
            ports=[{"containerPort": "23456"}]
        ),
    ],
    ids=[
        "two-masters",
        "unknown-replica-type",
        "misspelt-field",
        "unknown-rdzv-backend",
        "nproc-twice",
        "string-replicas",
        "bad-name",
        "no-pytorch-container",
        "pod-template-typo",
        "pod-template-wrong-type",
    ],
)
def test_a_broken_pytorchjob_is_rejected(edit):
    with pytest.raises(jsonschema.ValidationError):
        validate_pytorchjob(_broken(edit))


def test_job_names_are_dns_labels_one_per_run_and_model():
    names = {
        pytorchjob.job_name(run, "2026-01-10", model)
        for run in ("scheduled__2026-01-10T00:00:00+00:00", "manual__2026-01-11T08:15:00.123456+00:00")
        for model in ("shared_bottom", "mmoe", "a_very_long_model_name_indeed_for_a_service")
    }
    assert len(names) == 6
    for name in names:
        assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(f"{name}-worker-99") <= 63, name
    assert pytorchjob.job_name("r", "2026-01-10", "ple") == pytorchjob.job_name("r", "2026-01-10", "ple")


def test_job_state_is_the_latest_true_condition():
    conditions = [{"type": "Created", "status": "True"}, {"type": "Running", "status": "False"}]
    assert pytorchjob.job_state({}) is None
    assert pytorchjob.job_state({"status": {"conditions": conditions}}) == "Created"
    conditions.append({"type": "Succeeded", "status": "True"})
    assert pytorchjob.job_state({"status": {"conditions": conditions}}) == "Succeeded"


def test_no_credential_reaches_a_pod_spec(monkeypatch):
    secrets = {"AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI-not-a-key", "POSTGRES_PASSWORD": "hunter2-not-a-password"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MSMT_PROFILE", "cluster")
    settings = Settings.from_env()
    rendered = json.dumps(pytorchjob.pytorch_job(settings, name="msmt-x", nodes=2, gpus=1, command=COMMAND))
    env = pods.pod_env(settings)
    assert not [v for v in secrets.values() if v in rendered or v in env.values()]
    assert not [k for k in env if SECRET_NAME.search(k)]
    with pytest.raises(ValueError, match="MSMT_MLFLOW_TRACKING_URI carry credentials"):
        pods.pod_env(settings.with_(mlflow_tracking_uri="postgresql://msmt:hunter2@postgres:5432/mlflow"))


class _TI:
    def xcom_pull(self, task_ids: str):
        plan = {"ds": "2026-01-10", "sample_ds": "2026-01-08", "model": "ple", "overrides": {"epochs": 3}}
        return {"plan_day": plan, "build_training_set": "s3://lake/ts"}[task_ids]


CONTEXT = {"params": {"gpus": 8, "nodes": 4}, "ti": _TI(), "run_id": "manual__2026-01-10"}


def test_the_rendered_training_pod_validates():
    from kubernetes.client import ApiClient

    operator = pods.training_pod(SETTINGS)
    operator.render_template_fields(CONTEXT)
    pod = ApiClient().sanitize_for_serialization(operator.build_pod_request_obj(dry_run=True))
    validate_k8s(pod)
    (container,) = pod["spec"]["containers"]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "8"}
    assert container["envFrom"] == [{"secretRef": {"name": pods.CREDENTIALS_SECRET, "optional": True}}]
    assert not [name for name, _ in literal_env(pod) if SECRET_NAME.search(name)]


def test_the_rendered_pytorchjob_validates_with_the_runs_params():
    operator = pytorchjob.training_job(SETTINGS)
    operator.render_template_fields(CONTEXT)
    rendered = operator.build_job()
    validate_pytorchjob(rendered)
    assert rendered["metadata"]["name"] == pytorchjob.job_name("manual__2026-01-10", "2026-01-10", "ple")
    assert (
        rendered["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 3 and rendered["spec"]["nprocPerNode"] == "8"
    )
    (container,) = rendered["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"]
    args = container["args"]
    assert "--nproc-per-node=8" in args and json.loads(args[args.index("--overrides") + 1]) == {"epochs": 3}
    assert args[args.index("--out") + 1] == "s3://lake/msmt/training_runs/ds=2026-01-10/ple"
