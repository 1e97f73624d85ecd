"""The tiny specs, batches and checks the model tests share: 3 id fields, 2 dense, a 5-item sequence, 3 scenarios."""

from __future__ import annotations

import contextlib

import pytest
import torch

from training.data import FeatureSpec, synthetic
from training.models import build_model

SPEC = FeatureSpec(
    sparse_fields=["user_id", "item_id", "scenario_id"],
    vocab_sizes=[50, 40, 4],
    dense_fields=["u_ctr", "i_ctr"],
    seq_len=5,
    n_scenarios=3,
    tasks=("click", "conversion"),
)
S, T = SPEC.n_scenarios, len(SPEC.tasks)
CLICK, CONV = 0, 1

# SPEC plus a position field (STAR's auxiliary network reads scenario id + position): the STAR and PEPNet tests'.
POSITION_SPEC = FeatureSpec(
    **{**SPEC.to_dict(), "sparse_fields": [*SPEC.sparse_fields, "position"], "vocab_sizes": [*SPEC.vocab_sizes, 9]}
)
SCENARIO_COL = POSITION_SPEC.sparse_fields.index("scenario_id")


def tiny_batch(n: int = 8, seed: int = 1, spec: FeatureSpec = SPEC) -> dict[str, torch.Tensor]:
    """One batch of `n` synthetic rows."""
    return next(synthetic(spec, n, seed=seed).batches(n, shuffle=False))


def registry_batch(n: int = 4) -> dict[str, torch.Tensor]:
    """The registry-wide contract tests' batch (and MMoE's)."""
    return tiny_batch(n)


def multitask_batch(n: int = 8) -> dict[str, torch.Tensor]:
    """The PLE, ESMM and AITM tests' batch: seed 3."""
    return tiny_batch(n, seed=3)


def position_batch(n: int = 12, seed: int = 1) -> dict[str, torch.Tensor]:
    """The STAR and PEPNet tests' batch, on POSITION_SPEC."""
    return tiny_batch(n, seed, POSITION_SPEC)


def scenario_batch(n: int = 12) -> dict[str, torch.Tensor]:
    """n rows, scenarios 0, 1, 2, 0, 1, 2, … (the scenario field kept consistent)."""
    b = tiny_batch(n, seed=3)
    b["scenario"] = torch.arange(n) % S
    b["sparse"][:, SPEC.sparse_fields.index("scenario_id")] = b["scenario"] + 1
    return b


def scenario_batches() -> list[dict[str, torch.Tensor]]:
    """Interleaved scenarios, a batch of one scenario, and one where scenario 1 is absent."""
    mixed, single, absent = scenario_batch(64), scenario_batch(10), scenario_batch(30)
    single["scenario"][:] = 2
    absent["scenario"] = torch.where(absent["scenario"] == 1, 0, absent["scenario"])
    return [mixed, single, absent]


def seeded_model(name: str, **overrides):
    """The model `name` on SPEC, built from seed 0, in eval mode."""
    torch.manual_seed(0)
    return build_model(name, SPEC, **overrides).eval()


def changed(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per row: does any entry differ by more than float noise?"""
    return ((a - b).abs() > 1e-5).reshape(len(a), -1).any(dim=1)


def refuse(*_args, **_kwargs):
    raise AssertionError("this computation should not run")


def grads(loss: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True))


def is_zero(gs: list[torch.Tensor | None]) -> bool:
    return all(g is None or torch.count_nonzero(g) == 0 for g in gs)


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


class Crash(RuntimeError):
    """A worker dying mid-training (raised by `fit_until_crash`)."""


def fit_until_crash(model, train, valid, cfg, at_forward: int) -> None:
    """`training.trainer.fit` that dies at the `at_forward`-th training forward, after whatever
    checkpoints came before it: a killed worker, for the resume tests."""
    from training.trainer import fit

    calls = [0]

    def crash(module, args):
        calls[0] += module.training
        if calls[0] == at_forward:
            raise Crash

    handle = model.register_forward_pre_hook(crash)
    try:
        with pytest.raises(Crash):
            fit(model, train, valid, cfg)
    finally:
        handle.remove()
