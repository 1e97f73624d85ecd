"""PLE: a task ignores other tasks' last-level experts, the shared gate mixes every expert, task gates are convex."""

from __future__ import annotations

import pytest
import torch
from tiny import CLICK, CONV, SPEC
from tiny import multitask_batch as batch

from training.models import build_model


def ple(n_levels: int):
    return build_model(
        "ple", SPEC, emb_dim=4, n_levels=n_levels, n_specific_experts=2, n_shared_experts=3, expert_dims=(8,)
    ).eval()


def set_experts(level, index: list[int], value: float) -> None:
    """Make the given experts of a level output the constant `value` (> 0 survives the ReLU, 0 = off)."""
    with torch.no_grad():
        for w in level.experts.weights:
            w[index] = 0.0
        for b in level.experts.biases:
            b[index] = value


def expert_ids(level, task: int | None) -> list[int]:
    """Indices of one task's specific experts, or (task=None) of the shared ones."""
    m_t, T = level.m_t, level.n_tasks
    return list(range(task * m_t, (task + 1) * m_t)) if task is not None else list(range(T * m_t, level.n_experts))


@pytest.mark.parametrize("n_levels", [1, 2])
def test_ple_task_output_ignores_other_tasks_experts_at_the_last_level(n_levels):
    model, b = ple(n_levels), batch()
    before = model(b)
    set_experts(model.levels[-1], expert_ids(model.levels[-1], CONV), 0.0)  # conversion's own experts off
    after = model(b)
    assert torch.equal(after[:, CLICK], before[:, CLICK])  # click's gate never selects them
    assert not torch.allclose(after[:, CONV], before[:, CONV])  # conversion's gate does


def test_ple_shared_gate_of_a_non_final_level_mixes_every_expert():
    model, b = ple(2), batch()
    first = model.levels[0]
    x = model.embedding.flat(b)
    out_before, logits_before = first(x), model(b)
    set_experts(first, expert_ids(first, CONV), 0.0)
    out_after, logits_after = first(x), model(b)
    assert torch.equal(out_after[:, CLICK], out_before[:, CLICK])  # click's task gate: own + shared only
    assert not torch.allclose(out_after[:, -1], out_before[:, -1])  # the shared gate reads conversion's experts
    assert not torch.allclose(logits_after[:, CLICK], logits_before[:, CLICK])  # … and feeds click at level 2
    assert model.levels[-1].shared_gate is None and first.shared_gate is not None


def test_ple_task_gate_is_a_convex_combination_of_own_and_shared_experts():
    model, b = ple(1), batch()
    level = model.levels[0]
    x = model.embedding.flat(b)
    set_experts(level, expert_ids(level, CLICK) + expert_ids(level, None), 0.7)  # click's selection: all 0.7
    set_experts(level, expert_ids(level, CONV), 5.0)  # outside click's selection
    out = level(x)  # (B, T+1, D)
    assert torch.allclose(out[:, CLICK], torch.full_like(out[:, CLICK], 0.7), atol=1e-6)  # weights sum to 1
    assert (out[:, CONV] > 0.7 + 1e-3).all() and (out[:, CONV] < 5.0).all()  # conversion mixes 0.7 and 5
    task_gates, shared_gate = level.gates(x.unsqueeze(1).expand(-1, 3, -1))
    assert task_gates.shape == (8, 2, 2 + 3) and shared_gate is None  # m_t + m_s per task; CGC has no shared gate
    assert (task_gates >= 0).all() and torch.allclose(task_gates.sum(-1), torch.ones(8, 2))


def test_ple_bad_config():
    with pytest.raises(ValueError, match="n_levels"):
        build_model("ple", SPEC, n_levels=0)
    with pytest.raises(ValueError, match="at least one"):
        build_model("ple", SPEC, n_specific_experts=0, n_shared_experts=0)
