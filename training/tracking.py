"""MLflow wiring of a profile: where runs, artifacts and the registry live (explicit, never on import)."""

from __future__ import annotations

import os
from pathlib import Path

from msmt import lake
from msmt.settings import Settings


def configure_mlflow(settings: Settings) -> None:
    """Point MLflow at this profile's tracking store and experiment, creating the experiment once."""
    import mlflow

    settings.ensure_dirs()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    mlflow.set_tracking_uri(settings.mlflow_uri)
    mlflow.set_registry_uri(settings.mlflow_uri)
    if mlflow.get_experiment_by_name(settings.experiment) is None:
        mlflow.create_experiment(settings.experiment, artifact_location=artifact_location(settings))
    mlflow.set_experiment(settings.experiment)


def artifact_location(settings: Settings) -> str | None:
    """The lake on S3 (cluster profile) keeps the artifacts beside the data; a tracking server with a local
    lake (`msmt cluster` on one machine) keeps them where the server proxies them (its S3 bucket); else a
    local directory."""
    if settings.profile == "cluster" and settings.lake.startswith("s3://"):
        return lake.mlflow_artifacts(settings)
    if settings.mlflow_uri.startswith(("http://", "https://")):
        return None
    return Path(settings.mlflow_artifact_root, settings.experiment).as_uri()
