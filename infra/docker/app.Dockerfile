# The project image for the cluster profile's services (infra/k8s/: Airflow api-server, scheduler and
# dag-processor, MLflow server, Spark master and workers): the whole lock with its CPU torch, a JRE for
# Spark, and the code including dags/.
#
#   docker build -f infra/docker/app.Dockerfile -t msmt:latest .
#
# The lock names torch==2.13.0+cpu, which is on PyTorch's CPU index, not on PyPI: it is given as an extra
# index. Not built on the development machine: no Docker engine is reachable there (infra/README.md).
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    AIRFLOW_HOME=/app/.airflow

RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless procps \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.lock ./
RUN pip install -r requirements.lock --extra-index-url https://download.pytorch.org/whl/cpu \
    && pip check

# The code runs from /app (PYTHONPATH), where Settings finds contracts/ and training/configs/ beside it.
ENV PYTHONPATH=/app
COPY msmt msmt
COPY contracts contracts
COPY training training
COPY pipeline pipeline
COPY spark_jobs spark_jobs
COPY data_checks data_checks
COPY feature_repo feature_repo
COPY mlflow_project mlflow_project
COPY dags dags
RUN mkdir -p "$AIRFLOW_HOME" && chown 65532:65532 "$AIRFLOW_HOME"

USER 65532:65532
