"""The tiny feature spec the model tests share: 3 id fields, 2 dense, a 5-item sequence, 3 scenarios."""

from __future__ import annotations

import contextlib

import pytest
import torch

from training.data import FeatureSpec, synthetic

SPEC = FeatureSpec(
    sparse_fields=["user_id", "item_id", "scenario_id"],
    vocab_sizes=[50, 40, 4],
    dense_fields=["u_ctr", "i_ctr"],
    seq_len=5,
    n_scenarios=3,
    tasks=("click", "conversion"),
)


def tiny_batch(n: int, seed: int = 1, spec: FeatureSpec = SPEC) -> dict[str, torch.Tensor]:
    """One batch of `n` synthetic rows."""
    return next(synthetic(spec, n, seed=seed).batches(n, shuffle=False))


@contextlib.contextmanager
def no_host_sync():
    """Fails on the Python-level ways a step waits for the device: .item(), .tolist(), bool/int/float of a
    tensor, unique and nonzero (data-dependent sizes). A CPU stand-in for a CUDA sync check."""

    def refuse(*_args, **_kwargs):
        raise AssertionError("host sync")

    with pytest.MonkeyPatch.context() as patch:
        for name in ("item", "tolist", "__bool__", "__int__", "__float__", "unique", "nonzero"):
            patch.setattr(torch.Tensor, name, refuse)
        for name in ("unique", "nonzero", "bincount"):
            patch.setattr(torch, name, refuse)
        yield
