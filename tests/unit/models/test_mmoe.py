"""MMoE mechanisms: each task's gate is a distribution over the experts, and n_experts must be >= 1."""

from __future__ import annotations

import pytest
import torch
from tiny import SPEC
from tiny import registry_batch as batch

from training.models import build_model


def test_mmoe_gates_are_distributions():
    model = build_model("mmoe", SPEC, n_experts=3)
    gates = model.gates(model.embedding.flat(batch()))
    assert gates.shape == (4, 2, 3)
    assert torch.allclose(gates.sum(-1), torch.ones(4, 2))
    with pytest.raises(ValueError, match="n_experts"):
        build_model("mmoe", SPEC, n_experts=0)
