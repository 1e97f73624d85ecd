"""The training worker with the lake on S3 (a real S3 API server, moto, on loopback): it reads the
training set, checkpoints, writes model.pt / metrics.json and resumes, all through s3:// URIs."""

from __future__ import annotations

import pytest
import torch
from test_train_and_registry import EVAL_DS, SCENARIOS, write_training_set

from msmt import lake, storage
from training import checkpoint
from training.worker import parse_args, read_metrics, read_state_dict, run

pytestmark = pytest.mark.integration

OVERRIDES = '{"epochs": 1, "batch_size": 250, "emb_dim": 4, "n_experts": 2, "expert_dims": [16], "checkpoint_every": 2}'


class _Interrupted(RuntimeError):
    pass


@pytest.fixture
def s3_lake(settings, s3_settings, monkeypatch):
    """The S3 lake's settings, in the environment the worker reads, and a small training set there
    (`write_training_set`'s table, copied through storage)."""
    local, s3 = settings.with_(scenarios=SCENARIOS), s3_settings.with_(scenarios=SCENARIOS)
    table = storage.read_parquet(local, f"{write_training_set(local, rows_per_day=500)}/part-0.parquet")
    uri = lake.training_set(s3, EVAL_DS)
    storage.write_parquet(s3, f"{uri}/part-0.parquet", table)
    for key, value in s3.to_env().items():  # what the worker's Settings.from_env() finds
        monkeypatch.setenv(key, value)
    return s3, uri


def _worker(uri: str, out: str):
    return run(parse_args(["--training-set", uri, "--eval-ds", EVAL_DS, "--model", "mmoe", "--out", out,
                           "--overrides", OVERRIDES]))  # fmt: skip


def test_worker_trains_checkpoints_and_resumes_on_s3(s3_lake, monkeypatch):
    settings, uri = s3_lake
    reference = f"{settings.lake}/runs/reference"
    _worker(uri, reference)  # uninterrupted

    out = f"{settings.lake}/runs/interrupted"
    ckpt = checkpoint.path_in(f"{out}/checkpoints")  # the default: under --out, on S3 too
    real_save, saved = checkpoint.save, []

    def save_then_interrupt(settings_, path, state):
        real_save(settings_, path, state)
        saved.append((path, state["epoch"], state["step"], storage.exists(settings, path)))
        if (state["epoch"], state["step"]) == (0, 4):  # mid-epoch (6 steps)
            raise _Interrupted

    with monkeypatch.context() as patch, pytest.raises(_Interrupted):
        patch.setattr(checkpoint, "save", save_then_interrupt)
        _worker(uri, out)
    assert saved == [(ckpt, 0, 2, True), (ckpt, 0, 4, True)]  # on S3 as soon as written
    assert not storage.exists(settings, f"{out}/metrics.json")

    _worker(uri, out)
    resumed, expected = read_metrics(settings, out), read_metrics(settings, reference)
    assert resumed["resumed_from"] == {"epoch": 0, "step": 4}
    assert not storage.exists(settings, ckpt) and storage.list_keys(settings, f"{out}/checkpoints") == []  # spent
    assert len(resumed["history"]) == len(expected["history"]) == 1
    for got, want in zip(resumed["history"], expected["history"], strict=True):
        for key in ("train_loss", "valid_loss", "valid_loss_click", "valid_loss_conversion"):
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), key
    weights = read_state_dict(settings, out)
    for name, tensor in read_state_dict(settings, reference).items():
        torch.testing.assert_close(weights[name], tensor, rtol=1e-5, atol=1e-6)
