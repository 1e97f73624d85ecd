"""Per-model hyper-parameter files and the overrides that go on top of them."""

from __future__ import annotations

import pytest

from msmt.settings import Settings
from training import hparams
from training.data import default_spec
from training.models import REGISTRY, build_model
from training.trainer import TrainConfig
from training.worker import split_overrides


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_model_has_a_versioned_file_whose_fields_exist(name):
    version, values = hparams.load(name)
    assert version >= 1
    train_cfg, model_fields = split_overrides(Settings(), values)
    assert isinstance(train_cfg, TrainConfig)
    build_model(name, default_spec(4), **model_fields)  # unknown fields raise


def test_overrides_win_over_the_file():
    _, values = hparams.resolve("hinet", {"lr": 0.01, "epochs": 5})
    assert values["lr"] == 0.01 and values["epochs"] == 5
    assert hparams.resolve("hinet", None)[1]["lr"] == hparams.load("hinet")[1]["lr"]


def test_assignments_are_typed():
    parsed = hparams.parse_assignments(["lr=0.001", "tower_dims=[64, 32]", "mixer=mhsa", "bf16=false"])
    assert parsed == {"lr": 0.001, "tower_dims": [64, 32], "mixer": "mhsa", "bf16": False}
    with pytest.raises(ValueError, match="key=value"):
        hparams.parse_assignments(["lr"])
