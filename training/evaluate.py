"""Per (scenario, task) metrics and the paired, request-grouped bootstrap the gate relies on.

numpy only, so it runs wherever the model does. Rows of one request share the
user, the context and each other's competition, so they are resampled together:
the bootstrap draws requests, and every row counts as many times as its request.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

HIGHER_IS_BETTER = {"auc": True, "logloss": False}
_EPS = 1e-7


def _tie_groups(s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort order of `s`, and start / size of each run of equal scores in that order."""
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    return order, starts, np.diff(np.r_[starts, len(s)])


def _weighted_auc(y: np.ndarray, s: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC under row weights `(R, N)` (R resamples at once), ties counted 1/2 → `(R,)`.

    Sorting and tie detection happen once; each resample is a few reductions over
    its weights: AUC = Σ_v P_v (N_<v + N_v / 2) / (P · N), v the distinct scores.
    """
    order, starts, _ = _tie_groups(s)
    w = weights[:, order]  # (R, N)
    pos = y[order] > 0.5  # (N,)
    p_at = np.add.reduceat(np.where(pos, w, 0.0), starts, axis=1)  # (R, U)
    n_at = np.add.reduceat(np.where(pos, 0.0, w), starts, axis=1)  # (R, U)
    n_below = np.cumsum(n_at, axis=1) - n_at  # (R, U)
    denom = p_at.sum(1) * n_at.sum(1)  # (R,)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (p_at * (n_below + 0.5 * n_at)).sum(1) / denom, np.nan)


def auc(y: np.ndarray, s: np.ndarray) -> float:
    """ROC AUC from ranks, ties averaged (= Mann-Whitney U / n1 n0); nan when one class is absent."""
    y, s = np.asarray(y, dtype=np.float64), np.asarray(s, dtype=np.float64)
    if len(y) == 0:
        return float("nan")
    return float(_weighted_auc(y, s, np.ones((1, len(y))))[0])


def _row_logloss(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1 - _EPS)
    return -(y * np.log(p) + (1 - y) * np.log1p(-p))


def logloss(y: np.ndarray, p: np.ndarray) -> float:
    """Mean binary cross-entropy of probabilities (clipped to [1e-7, 1 - 1e-7]); nan when empty."""
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    return float(_row_logloss(y, p).mean()) if len(y) else float("nan")


def metric_value(metric: str, y: np.ndarray, s: np.ndarray) -> float:
    if metric == "auc":
        return auc(y, s)
    if metric == "logloss":
        return logloss(y, s)
    raise ValueError(f"unknown metric {metric!r}; known: {sorted(HIGHER_IS_BETTER)}")


def cell_metrics(
    probs: np.ndarray,
    labels: np.ndarray,
    mask: np.ndarray,
    scenario: np.ndarray,
    scenario_names: Sequence[str],
    tasks: Sequence[str],
) -> list[dict]:
    """One dict per (scenario, task): rows, positives, auc, logloss over that scenario's unmasked rows."""
    probs, labels, mask, scenario = map(np.asarray, (probs, labels, mask, scenario))
    cells = []
    for s_id, s_name in enumerate(scenario_names):
        in_scenario = scenario == s_id
        for t, task in enumerate(tasks):
            rows = in_scenario & mask[:, t].astype(bool)
            y, p = labels[rows, t], probs[rows, t]
            cells.append(
                {
                    "scenario": s_name,
                    "task": task,
                    "rows": int(rows.sum()),
                    "positives": int((y > 0.5).sum()),
                    "auc": auc(y, p),
                    "logloss": logloss(y, p),
                }
            )
    return cells


def group_weights(groups: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Row multiplicities `(n_boot, N)`: draw as many groups as there are, with replacement."""
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    n_groups = int(inverse.max()) + 1 if len(inverse) else 0
    counts = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_boot)  # (n_boot, G)
    return counts[:, inverse].astype(np.float64)  # (n_boot, N)


def _weighted_metric(metric: str, y: np.ndarray, s: np.ndarray, weights: np.ndarray) -> np.ndarray:
    if metric == "auc":
        return _weighted_auc(y, s, weights)
    if metric == "logloss":
        return weights @ _row_logloss(y, s) / weights.sum(1)
    raise ValueError(f"unknown metric {metric!r}; known: {sorted(HIGHER_IS_BETTER)}")


class PairedBootstrap(NamedTuple):
    """metric(new) − metric(old), its 95% percentile interval and the one-sided p of "new is worse"."""

    diff: float
    ci_low: float
    ci_high: float
    p_worse: float


def paired_bootstrap(
    y: np.ndarray,
    s_new: np.ndarray,
    s_old: np.ndarray,
    groups: np.ndarray,
    n_boot: int = 200,
    seed: int = 0,
    metric: str = "auc",
) -> PairedBootstrap:
    """metric(new) − metric(old) on all rows, with a 95% percentile interval from `n_boot`
    request-level resamples shared by both models (paired). nan when undefined.

    `p_worse` reads the same resamples as a one-sided test of "new is worse than old":
    (k + 1) / (B + 1), k of the B resamples in which new is at least as good. The +1 keeps
    p above 0, since B resamples cannot show an effect rarer than 1 in B + 1; a
    multiple-comparison correction divides α by the number of cells, so p = 0 would
    pass any threshold however many cells share it.
    """
    y, s_new, s_old = (np.asarray(a, dtype=np.float64) for a in (y, s_new, s_old))
    diff = metric_value(metric, y, s_new) - metric_value(metric, y, s_old)
    undefined = PairedBootstrap(diff, float("nan"), float("nan"), float("nan"))
    if len(y) == 0 or n_boot < 1:
        return undefined
    weights = group_weights(groups, n_boot, np.random.default_rng(seed))
    diffs = _weighted_metric(metric, y, s_new, weights) - _weighted_metric(metric, y, s_old, weights)
    diffs = diffs[np.isfinite(diffs)]  # a resample with a single class has no AUC
    if len(diffs) == 0:
        return undefined
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    at_least_as_good = diffs >= 0 if HIGHER_IS_BETTER[metric] else diffs <= 0
    p_worse = (int(at_least_as_good.sum()) + 1) / (len(diffs) + 1)
    return PairedBootstrap(diff, float(lo), float(hi), p_worse)


def score_cells(model, data, scenario_names, tasks) -> list[dict]:
    """Per scenario × task rows, positives, AUC and logloss of `model` on `data` (see cell_metrics)."""
    from training.scoring import predict  # torch only when scoring: the gate's statistics stay numpy

    probs = predict(model, data)
    return cell_metrics(
        probs, data.labels.numpy(), data.label_mask.numpy(), data.scenario.numpy(), scenario_names, tasks
    )
