"""Every registered model: shapes, gradients, bad input, determinism."""

from __future__ import annotations

import pytest
import torch
from tiny import SPEC
from tiny import registry_batch as batch

from training.models import REGISTRY, build_model, model_names


def test_registry_lists_every_model():
    assert model_names() == sorted(REGISTRY) and {"mmoe", "shared_bottom"} <= set(REGISTRY)
    assert all(entry.description for entry in REGISTRY.values())
    with pytest.raises(ValueError, match="unknown model"):
        build_model("nope", SPEC)
    with pytest.raises(ValueError, match="no config field"):
        build_model("mmoe", SPEC, n_layers=3)


@pytest.mark.parametrize("name", model_names())
def test_output_shape_and_backward(name):
    model = build_model(name, SPEC, emb_dim=4)
    logits = model(batch())
    assert logits.shape == (4, len(SPEC.tasks))
    extra = model.extra_losses(batch(), logits)
    assert all(value.dim() == 0 and torch.isfinite(value) for value in extra.values())
    (logits.sum() + sum(extra.values())).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", model_names())
def test_wrong_field_count_is_a_value_error(name):
    model = build_model(name, SPEC)
    bad = batch()
    bad["sparse"] = bad["sparse"][:, :2]
    with pytest.raises(ValueError, match="sparse"):
        model(bad)
    bad = batch()
    bad["dense"] = torch.zeros(4, 5)
    with pytest.raises(ValueError, match="dense"):
        model(bad)


@pytest.mark.parametrize("name", model_names())
def test_bad_config_is_a_value_error(name):
    with pytest.raises(ValueError):
        build_model(name, SPEC, emb_dim=0)


@pytest.mark.parametrize("name", model_names())
def test_seeded_build_is_deterministic(name):
    outs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_model(name, SPEC).eval()
        outs.append(model(batch()))
    assert torch.equal(outs[0], outs[1])
    torch.manual_seed(1)
    assert not torch.equal(build_model(name, SPEC).eval()(batch()), outs[0])
