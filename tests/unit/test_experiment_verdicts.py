"""An experiment's verdicts across days: baselines parsed, days counted, differences pooled, the page drawn."""

from __future__ import annotations

import math

import pytest

from pipeline.experiment_report import render
from pipeline.experiments import Baseline, ExperimentError, pooled, table, verdicts


def _cell(scenario: str, task: str, diff: float | None, low: float | None = None, high: float | None = None) -> dict:
    return {"scenario": scenario, "task": task, "rows": 1000, "positives": 100, "diff": diff, "ci_low": low,
            "ci_high": high, "status": "pass", "reason": "within tolerance"}  # fmt: skip


def _day(ds: str, *cells: dict) -> dict:
    return {"ds": ds, "eval_ds": ds, "challenger": "models:/x/1", "baseline": "models:/y/1", "run_id": "r",
            "metric": "auc", "cells": list(cells)}  # fmt: skip


@pytest.mark.parametrize(
    ("text", "kind", "value", "label"),
    [("champion", "champion", "", "champion"), ("version=7", "version", "7", "version=7"),
     ("model=mmoe", "model", "mmoe", "model=mmoe")],
)  # fmt: skip
def test_baselines_parse(text, kind, value, label):
    baseline = Baseline.parse(text)
    assert (baseline.kind, baseline.value, baseline.label) == (kind, value, label)


@pytest.mark.parametrize("text", ["champ", "version=", "model", "champion=3", "tag=x"])
def test_a_wrong_baseline_is_refused_with_the_forms_it_takes(text):
    with pytest.raises(ExperimentError, match="champion, version=N or model=NAME"):
        Baseline.parse(text)


def test_pooling_weights_days_by_the_inverse_of_their_variance():
    # two days: +0.01 with se 0.001, +0.03 with se 0.003 -> weights 9:1
    z = 1.959964
    diff, low, high = pooled([(0.01, 0.01 - z * 0.001, 0.01 + z * 0.001), (0.03, 0.03 - z * 0.003, 0.03 + z * 0.003)])
    assert diff == pytest.approx((9 * 0.01 + 0.03) / 10)
    se = 1 / math.sqrt(1 / 0.001**2 + 1 / 0.003**2)
    assert (low, high) == (pytest.approx(diff - z * se), pytest.approx(diff + z * se))


def test_a_zero_width_day_weighs_like_the_narrowest_other_day():
    diff, low, high = pooled([(0.0, 0.0, 0.0), (0.02, 0.01, 0.03)])
    assert diff == pytest.approx(0.01) and low < diff < high


def test_days_are_won_lost_and_tied_by_their_intervals_and_pooled_into_a_verdict():
    days = [
        _day("d1", _cell("a", "click", 0.02, 0.01, 0.03), _cell("a", "conversion", -0.02, -0.03, -0.01)),
        _day("d2", _cell("a", "click", 0.01, -0.01, 0.03), _cell("a", "conversion", -0.03, -0.05, -0.01)),
        _day("d3", _cell("a", "click", 0.03, 0.02, 0.04), _cell("a", "conversion", None)),
    ]
    click, conversion = verdicts(days)
    assert (click["days"], click["wins"], click["losses"], click["ties"]) == (3, 2, 0, 1)
    assert click["verdict"] == "better" and click["low"] > 0
    assert (conversion["days"], conversion["wins"], conversion["losses"]) == (2, 0, 2)  # the day without a diff
    assert conversion["verdict"] == "worse" and conversion["high"] < 0


def test_a_lower_is_better_metric_turns_wins_into_losses():
    days = [_day("d1", _cell("a", "click", 0.02, 0.01, 0.03))]
    (cell,) = verdicts(days, higher_is_better=False)
    assert (cell["wins"], cell["losses"], cell["verdict"]) == (0, 1, "worse")


def test_an_interval_across_zero_is_a_tie_and_a_cell_never_compared_says_so():
    days = [_day("d1", _cell("a", "click", 0.001, -0.01, 0.012), _cell("b", "click", None))]
    tie, never = verdicts(days)
    assert tie["verdict"] == "tie" and tie["ties"] == 1
    assert never["verdict"] == "not compared" and never["diff"] is None and never["days"] == 0


def test_the_report_draws_every_cell_and_day_and_the_table_prints_the_verdicts():
    first = _day("2026-01-05", _cell("a", "click", 0.02, 0.01, 0.03), _cell("b", "click", None))
    second = _day("2026-01-06", _cell("a", "click", -0.01, -0.02, 0.0), _cell("b", "click", 0.0, -0.01, 0.01))
    days = [first, second]
    summary = {"name": "hinet-vs-champion", "model": "hinet", "baseline": {"label": "champion", "version": "3"},
               "days": ["2026-01-05", "2026-01-06"], "parent_run_id": "abc", "metric": "auc", "per_day": days,
               "cells": verdicts(days)}  # fmt: skip
    html = render(summary)
    assert html.count('class="heat-cell"') == 4  # 2 cells × 2 days
    assert 'data-cell="a / click"' in html and 'data-cell="b / click"' in html  # forest rows
    assert "(v3)" in html and "nothing promoted" in html and "<script" not in html
    printed = table(summary)
    assert "hinet vs champion" in printed and printed.count("\n") == 3
