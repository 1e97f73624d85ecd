"""AUC, logloss, per-cell metrics and the grouped paired bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from training.evaluate import auc, cell_metrics, group_weights, logloss, paired_bootstrap


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.random(500) + 0.3 * y, 1)  # rounding makes many ties
    assert auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert auc(y, np.ones(500)) == pytest.approx(0.5)


def test_auc_is_nan_with_one_class():
    assert np.isnan(auc(np.ones(10), np.random.default_rng(0).random(10)))
    assert np.isnan(auc(np.array([]), np.array([])))


def test_logloss_matches_sklearn():
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 2, 300), rng.random(300)
    assert logloss(y, p) == pytest.approx(log_loss(y, p), rel=1e-9)


def test_cell_metrics_one_row_per_scenario_and_task():
    rng = np.random.default_rng(0)
    n = 1000
    labels = rng.integers(0, 2, (n, 2)).astype(float)
    probs, scenario = rng.random((n, 2)), rng.integers(0, 3, n)
    mask = np.ones((n, 2), bool)
    mask[:100, 1] = False
    cells = cell_metrics(probs, labels, mask, scenario, ["a", "b", "c"], ["click", "conversion"])
    assert [(c["scenario"], c["task"]) for c in cells][:3] == [("a", "click"), ("a", "conversion"), ("b", "click")]
    assert len(cells) == 6
    a_conv = cells[1]
    rows = (scenario == 0) & mask[:, 1]
    assert a_conv["rows"] == rows.sum() and a_conv["positives"] == labels[rows, 1].sum()
    assert a_conv["auc"] == pytest.approx(roc_auc_score(labels[rows, 1], probs[rows, 1]))


def scores(n: int, gap: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Labels, a better and a worse score (the better one sees more of the signal), request groups."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=n)
    y = (rng.random(n) < 1 / (1 + np.exp(-2 * signal))).astype(float)
    better = signal + rng.normal(scale=0.5, size=n)
    worse = signal + rng.normal(scale=0.5 + gap, size=n)
    return y, better, worse, np.arange(n) // 10


def test_bootstrap_excludes_zero_when_one_model_is_clearly_better():
    y, better, worse, groups = scores(20_000, 1.5, 0)
    diff, lo, hi, p_worse = paired_bootstrap(y, better, worse, groups, n_boot=200, seed=0)
    assert diff == pytest.approx(auc(y, better) - auc(y, worse))
    assert 0 < lo < diff < hi
    assert p_worse == 1.0  # "better is worse": every resample disagrees, k = B
    assert paired_bootstrap(y, worse, better, groups, n_boot=200, seed=0).p_worse == pytest.approx(1 / 201)


def test_bootstrap_interval_covers_the_true_diff():
    """Over many independent samples the 95% interval covers the population diff most of the time."""
    y, better, worse, groups = scores(400_000, 0.3, 99)
    truth = auc(y, better) - auc(y, worse)  # population stand-in
    covered = 0
    for seed in range(20):
        y, better, worse, groups = scores(4000, 0.3, seed)
        _, lo, hi, _ = paired_bootstrap(y, better, worse, groups, n_boot=200, seed=seed)
        covered += lo <= truth <= hi
    assert covered >= 16


def test_same_model_interval_contains_zero():
    y, better, _, groups = scores(5000, 0.0, 1)
    assert paired_bootstrap(y, better, better, groups, n_boot=50) == (0.0, 0.0, 0.0, 1.0)  # ties: not worse
    contains_zero, p_values = 0, []
    for seed in range(20):  # two equally good models: 0 inside the 95% interval ~19 times in 20
        y, a, b, groups = scores(5000, 0.0, seed)
        _, lo, hi, p_worse = paired_bootstrap(y, a, b, groups, n_boot=200, seed=seed)
        contains_zero += lo < 0 < hi
        p_values.append(p_worse)
    assert contains_zero >= 17
    assert all(1 / 201 <= p <= 1 for p in p_values)
    assert sum(p <= 0.05 for p in p_values) <= 3  # a one-sided 5% test of equal models: ~1 in 20


def test_grouped_resampling_keeps_groups_together():
    groups = np.repeat([7, 3, 9, 1], [5, 2, 4, 1])
    weights = group_weights(groups, 300, np.random.default_rng(0))
    assert weights.shape == (300, 12)
    for g in np.unique(groups):
        block = weights[:, groups == g]
        assert (block == block[:, :1]).all()  # every row of a request counts the same
    assert (weights[:, [0, 5, 7, 11]].sum(1) == 4).all()  # 4 requests drawn each time


def test_bootstrap_on_logloss_and_unknown_metric():
    y, better, worse, groups = scores(20_000, 1.0, 3)
    p_better, p_worse = 1 / (1 + np.exp(-2 * better)), 1 / (1 + np.exp(-worse))
    diff, lo, hi, p = paired_bootstrap(y, p_better, p_worse, groups, n_boot=200, metric="logloss")
    assert diff == pytest.approx(logloss(y, p_better) - logloss(y, p_worse)) and lo <= diff <= hi
    assert diff < 0 and hi < 0  # lower logloss is better: the better model's drop is significant
    assert p == 1.0  # ... and not worse: "worse" follows the metric's direction
    reverse = paired_bootstrap(y, p_worse, p_better, groups, n_boot=200, metric="logloss")
    assert reverse.p_worse == pytest.approx(1 / 201)
    with pytest.raises(ValueError, match="unknown metric"):
        paired_bootstrap(y, better, worse, groups, metric="f1")
