"""The tiny feature spec the model tests share: 3 id fields, 2 dense, a 5-item sequence, 3 scenarios."""

from __future__ import annotations

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
