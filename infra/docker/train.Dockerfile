# The GPU training image (MSMT_TRAIN_IMAGE): the cluster profile's training pod and PyTorchJob replicas
# run `python -m torch.distributed.run … -m training.worker` in it (pipeline/pods.py, pipeline/pytorchjob.py).
#
#   docker build -f infra/docker/train.Dockerfile -t msmt-train:latest .
#
# torch: requirements.lock pins torch==2.13.0+cpu, the CPU wheel the development machines install from
# pip's find-links. A GPU image needs the CUDA build of the same release instead, so it is installed first
# from PyTorch's CUDA index (its wheels bring the CUDA runtime, cuDNN and NCCL as nvidia-* wheels; the host
# only needs the NVIDIA driver and container toolkit), and the lock is then installed *without* its torch
# line, so pip neither replaces the CUDA build nor goes looking for a +cpu wheel it cannot find. pip check
# then proves the rest of the lock agrees with the CUDA torch's own dependencies.
# Not built on the development machine: no Docker engine is reachable there (infra/README.md).
FROM python:3.11-slim-bookworm

ARG TORCH_VERSION=2.13.0
# The CUDA flavour of PyTorch's wheel index; pick the newest one your nodes' driver supports.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}" \
    && python -c "import torch; assert torch.version.cuda, 'not a CUDA build'; print(torch.__version__, torch.version.cuda)"

COPY requirements.lock ./
RUN grep -v '^torch==' requirements.lock > requirements-no-torch.txt \
    && pip install -r requirements-no-torch.txt \
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
RUN python -c "import torch, training.worker; print('torch', torch.__version__)"

# Checkpoints go to the claim mounted at /checkpoints; nothing in the image is written at run time.
USER 65532:65532
ENTRYPOINT []
CMD ["python", "-m", "training.worker", "--help"]
