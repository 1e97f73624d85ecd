"""Every DAG imports, follows the house rules, and msmt_daily has the data flow's shape."""

from __future__ import annotations

from pathlib import Path

import pytest

from msmt.settings import PROJECT_ROOT
from training.catalog import model_names

DAG_FILES = sorted((PROJECT_ROOT / "dags").glob("*.py"))


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(PROJECT_ROOT / "dags"))


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: str(Path(p).relative_to(PROJECT_ROOT)))
def test_dag_file_imports(dagbag, path):
    assert str(path) not in dagbag.import_errors, dagbag.import_errors.get(str(path))


def test_every_dag_has_tags_owner_and_retries(dagbag):
    assert dagbag.dags
    for dag in dagbag.dags.values():
        assert dag.tags, dag.dag_id
        for t in dag.tasks:
            assert t.owner == "msmt", t.task_id
            not_retried = {"train_model", "promote_model", "plan_experiment", "replay_day"}  # each says why
            assert t.retries >= 2 or t.task_id in not_retried, t.task_id


def test_msmt_daily_follows_the_data_flow(dagbag):
    dag = dagbag.dags["msmt_daily"]
    downstream = {t.task_id: sorted(t.downstream_task_ids) for t in dag.tasks}
    assert downstream == {
        "plan_day": sorted(
            [
                "check_raw_logs",
                "build_samples",
                "build_features",
                "check_samples",
                "publish_features",
                "build_training_set",
                "train_model",
                "evaluate_model",
                "promote_model",
            ]
        ),
        "check_raw_logs": ["build_features", "build_samples"],
        "build_samples": ["check_samples"],
        "build_features": ["publish_features"],
        "check_samples": ["build_training_set"],
        "publish_features": ["build_training_set"],
        "build_training_set": ["evaluate_model", "train_model"],
        "train_model": ["evaluate_model"],
        "evaluate_model": ["promote_model"],
        "promote_model": ["write_report"],
        "write_report": [],  # a teardown: runs however the run ended, never decides its state
    }


def test_model_param_enumerates_the_zoo(dagbag):
    from training.models import REGISTRY

    schema = dagbag.dags["msmt_daily"].params.get_param("model").schema
    assert schema["enum"] == model_names() == sorted(REGISTRY)


def test_unknown_model_is_rejected_by_the_param_schema(dagbag):
    from airflow.sdk.definitions.param import ParamValidationError

    param = dagbag.dags["msmt_daily"].params.get_param("model")
    assert param.resolve("shared_bottom") == "shared_bottom"
    with pytest.raises(ParamValidationError):
        param.resolve("no_such_model")
