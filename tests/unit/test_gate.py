"""Gate rules cell by cell and across cells: floors, Holm-corrected drops, seesaws, advisory cells, the matrix."""

from __future__ import annotations

import json

import numpy as np
import pytest

from training.gate import GateDecision, GateRules, decide, holm_adjust

SCENARIOS, TASKS = ["homefeed", "search", "mini_app"], ["click", "conversion"]


def held_out(n: int = 8000, seed: int = 0, tail: int = 200):
    """Labels from a latent signal; the last `tail` rows form a small scenario (mini_app)."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=(n, 2))
    labels = (rng.random((n, 2)) < 1 / (1 + np.exp(-(2 * signal - 1)))).astype(float)
    scenario = np.where(np.arange(n) < n - tail, np.arange(n) % 2, 2)
    return signal, labels, np.ones((n, 2), bool), scenario, np.arange(n) // 8


def model(signal: np.ndarray, noise: float, seed: int) -> np.ndarray:
    z = signal + np.random.default_rng(seed).normal(scale=noise, size=signal.shape)
    return 1 / (1 + np.exp(-z))


def run(challenger, champion, data, **rules) -> GateDecision:
    _, labels, mask, scenario, groups = data
    return decide(challenger, champion, labels, mask, scenario, groups, SCENARIOS, TASKS, GateRules(**rules))


def test_first_run_passes_above_floor_and_fails_below():
    data = held_out()
    good = run(model(data[0], 0.5, 1), None, data)
    assert good.passed and good.first_run
    assert all(c["champion"] is None and c["diff"] is None for c in good.cells)
    assert {c["status"] for c in good.cells if c["scenario"] != "mini_app"} == {"pass"}
    random = run(np.random.default_rng(2).random((8000, 2)), None, data)
    assert not random.passed
    assert any("below the floor" in r for r in random.reasons)


def test_significant_drop_fails_and_names_the_cell():
    data = held_out()
    challenger = model(data[0], 0.5, 1)
    champion = challenger.copy()
    challenger[:, 1] = model(data[0], 2.5, 3)[:, 1]  # conversion got much worse
    decision = run(challenger, champion, data)
    assert not decision.passed and not decision.first_run
    failed = {(c["scenario"], c["task"]) for c in decision.cells if c["status"] == "fail"}
    assert failed == {("homefeed", "conversion"), ("search", "conversion")}
    cell = next(c for c in decision.cells if c["status"] == "fail")
    assert cell["ci_high"] < 0 and cell["diff"] < -0.002
    assert any(r.startswith("homefeed/conversion fail: significant drop") for r in decision.reasons)


def test_small_noise_passes():
    data = held_out()
    decision = run(model(data[0], 0.5, 1), model(data[0], 0.5, 2), data)
    assert decision.passed
    assert all(c["ci_low"] < c["diff"] < c["ci_high"] for c in decision.cells if c["status"] == "pass")


def test_drop_within_tolerance_passes():
    data = held_out()
    challenger = model(data[0], 0.5, 1)
    champion = model(data[0], 0.48, 1)  # slightly better, nearly identical ranking
    assert run(challenger, champion, data, max_drop=0.05).passed


def test_advisory_cells_never_fail():
    data = held_out()
    champion = model(data[0], 0.5, 1)
    challenger = champion.copy()
    tail = data[3] == 2
    challenger[tail] = np.random.default_rng(5).random((int(tail.sum()), 2))  # mini_app collapses: too small
    decision = run(challenger, champion, data)
    assert decision.passed
    assert {c["status"] for c in decision.cells if c["scenario"] == "mini_app"} == {"advisory"}
    assert any("too little data" in r for r in decision.reasons)
    search = data[3] == 1
    challenger[search] = np.random.default_rng(6).random((int(search.sum()), 2))  # a large scenario collapses
    assert not run(challenger, champion, data).passed
    assert run(challenger, champion, data, advisory_scenarios=("search",)).passed


def test_logloss_gate_flips_the_sign():
    data = held_out()
    good, bad = model(data[0], 0.5, 1), model(data[0], 2.5, 3)
    assert not run(bad, good, data, metric="logloss").passed
    assert run(good, bad, data, metric="logloss").passed
    with pytest.raises(ValueError, match="unknown metric"):
        GateRules(metric="f1")


def test_matrix_and_json_round_trip():
    data = held_out()
    decision = run(model(data[0], 0.5, 1), model(data[0], 0.5, 2), data)
    text = decision.format_matrix()
    for c in decision.cells:
        assert any(line.startswith(c["scenario"]) and c["task"] in line and c["status"] in line
                   for line in text.splitlines())  # fmt: skip
    assert text.splitlines()[0] == "gate on auc: PASSED"
    back = GateDecision.from_dict(json.loads(json.dumps(decision.to_dict(), allow_nan=False)))
    assert back == decision
    first = run(model(data[0], 0.5, 1), None, data)
    assert "(first run)" in first.format_matrix() and json.dumps(first.to_dict(), allow_nan=False)


UNJUDGED = (
    "no cell had enough data to be judged (need 500 rows and 25 positives per cell); "
    "set MSMT_GATE_ALLOW_UNJUDGED=true to promote anyway"
)


def test_a_decision_without_a_judged_cell_fails_unless_allowed():
    data = held_out(n=400, tail=40)  # every cell below min_rows: all advisory
    good = model(data[0], 0.5, 1)
    for champion in (None, model(data[0], 0.5, 2)):
        decision = run(good, champion, data)
        assert {c["status"] for c in decision.cells} == {"advisory"}
        assert not decision.passed and decision.reasons[-1] == UNJUDGED
        assert "gate on auc: FAILED" in decision.format_matrix()
        allowed = run(good, champion, data, allow_unjudged=True)
        assert allowed.passed and allowed.reasons[-1].endswith("passing anyway because MSMT_GATE_ALLOW_UNJUDGED=true")
    _, labels, mask, scenario, groups = data
    no_positives = decide(good, None, np.zeros_like(labels), mask, scenario, groups, SCENARIOS, TASKS, GateRules())
    assert all(c["challenger"] is None for c in no_positives.cells)  # no evaluable cell at all
    assert not no_positives.passed and no_positives.reasons[-1] == UNJUDGED


def test_allow_unjudged_keeps_the_floor_wherever_a_cell_has_data():
    data = held_out(n=400, tail=40)
    inverted = 1 - model(data[0], 0.5, 1)  # AUC far below the floor on every cell
    decision = run(inverted, None, data, allow_unjudged=True)
    assert not decision.passed
    assert {c["status"] for c in decision.cells} == {"fail"}
    cell = decision.cells[0]
    assert cell["reason"] == (
        f"challenger AUC {cell['challenger']:.4f} is below the floor 0.5500 (too little data to compare, "
        f"{cell['rows']} rows, {cell['positives']} positives; need 500 and 25; "
        "with allow_unjudged the floor still holds)"
    )
    assert run(inverted, None, data, allow_unjudged=True, advisory_scenarios=tuple(SCENARIOS)).passed  # by choice
    _, labels, mask, scenario, groups = data
    rules = GateRules(allow_unjudged=True)
    undefined = decide(inverted, None, np.zeros_like(labels), mask, scenario, groups, SCENARIOS, TASKS, rules)
    assert undefined.passed and {c["status"] for c in undefined.cells} == {"advisory"}  # no AUC: nothing to floor
    big = held_out()
    small_tail = big[3] == 2
    challenger = model(big[0], 0.5, 1)
    challenger[small_tail] = 1 - challenger[small_tail]  # only the small scenario collapses
    assert run(challenger, None, big).passed  # without allow_unjudged a small cell stays advisory
    assert not run(challenger, None, big, allow_unjudged=True).passed


def test_holm_adjusts_by_rank_and_steps_down():
    adjusted = holm_adjust([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])  # 3·0.01, max(0.03, 2·0.03), 2·0.03, 4·0.005
    assert list(adjusted <= 0.05) == [True, False, False, True]  # per cell at 0.05 all four would be rejected
    assert holm_adjust([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert len(holm_adjust([])) == 0
    with pytest.raises(ValueError, match="alpha"):
        GateRules(alpha=0.0)


EIGHT = ["homefeed", "search", "detail_page", "mini_app"]  # 4 scenarios × 2 tasks: the default family of 8


def marginal_family(degrade: tuple[int, int] | None = None) -> GateDecision:
    """8 cells of 2,000 rows; the challenger is the champion plus a little noise, so every cell loses a
    little AUC. With `degrade` = (scenario id, task) that cell's challenger loses most of its signal."""
    n = 8000
    signal, labels, mask, _, groups = held_out(n, seed=1, tail=0)
    rng = np.random.default_rng(101)
    champion = signal + rng.normal(scale=0.5, size=signal.shape)
    challenger = champion + rng.normal(scale=0.15, size=signal.shape)
    scenario = np.arange(n) % 4
    if degrade is not None:
        rows = scenario == degrade[0]
        challenger[rows, degrade[1]] = signal[rows, degrade[1]] + rng.normal(scale=2.5, size=int(rows.sum()))
    probs = [1 / (1 + np.exp(-z)) for z in (challenger, champion)]
    return decide(*probs, labels, mask, scenario, groups, EIGHT, TASKS, GateRules())


def test_holm_rejects_fewer_marginal_drops_than_per_cell_testing():
    decision = marginal_family()
    assert all(c["diff"] < 0 for c in decision.cells)  # every cell lost a little
    per_cell = [c for c in decision.cells if c["ci_high"] < 0 and c["diff"] < -0.002]  # the earlier rule
    at_alpha = [c for c in decision.cells if c["p_value"] <= 0.05 and c["diff"] < -0.002]  # alpha, uncorrected
    assert len(per_cell) >= 2 and len(at_alpha) >= len(per_cell)
    assert decision.passed
    assert not any(c["holm_rejected"] for c in decision.cells)
    assert {c["status"] for c in decision.cells} == {"pass"}
    assert all(c["p_holm"] >= c["p_value"] for c in decision.cells)


def test_holm_still_rejects_a_clearly_degraded_cell_among_marginal_ones():
    decision = marginal_family(degrade=(2, 1))
    failed = [(c["scenario"], c["task"]) for c in decision.cells if c["status"] == "fail"]
    assert failed == [("detail_page", "conversion")] and not decision.passed
    cell = next(c for c in decision.cells if c["status"] == "fail")
    assert cell["p_value"] == pytest.approx(1 / 201) and cell["p_holm"] == pytest.approx(8 / 201)
    assert cell["reason"].startswith("significant drop: diff") and "Holm-adjusted 0.0398 ≤ alpha 0.05" in cell["reason"]
    assert not rejected_at(decision, 0.01)  # 8/201 > 0.01: a stricter family level keeps it


def rejected_at(decision: GateDecision, alpha: float) -> bool:
    """Whether any cell of `decision` would be rejected at family level `alpha`."""
    return any(c["p_holm"] <= alpha for c in decision.cells if c["p_holm"] is not None)


def test_p_values_lie_in_zero_one_and_only_compared_cells_are_corrected():
    data = held_out()
    challenger, champion = model(data[0], 0.5, 1), model(data[0], 0.5, 2)
    for decision in (run(challenger, champion, data), run(champion, challenger, data, metric="logloss")):
        compared = [c for c in decision.cells if c["scenario"] != "mini_app"]
        assert all(0 < c["p_value"] <= 1 and c["p_value"] <= c["p_holm"] <= 1 for c in compared)
        assert all(isinstance(c["holm_rejected"], bool) for c in compared)
        small = [c for c in decision.cells if c["scenario"] == "mini_app"]  # advisory: outside the family
        assert all(c["p_holm"] is None and c["holm_rejected"] is None for c in small)
    same = run(challenger, challenger, data)
    assert {c["p_value"] for c in same.cells} == {1.0}  # identical models: no resample shows a loss
    first = run(challenger, None, data)
    assert all(c["p_value"] is None and c["p_holm"] is None for c in first.cells)


def test_too_few_resamples_for_the_family_are_reported():
    data = held_out()
    challenger = model(data[0], 0.5, 1)
    champion = challenger.copy()
    challenger[:, 1] = model(data[0], 2.5, 3)[:, 1]  # a drop 200 resamples find in 4 compared cells
    coarse = run(challenger, champion, data, n_boot=20)  # p ≥ 1/21 > 0.05 / 4
    assert coarse.passed  # the significance rule cannot reject with 20 resamples …
    assert coarse.reasons[-1] == (
        "no cell can be found significantly worse: 20 resamples give p ≥ 0.0476, above alpha / 4 cells = 0.0125; "
        "set MSMT_GATE_BOOTSTRAP to at least 79"
    )  # … and says so
    assert not run(challenger, champion, data).passed
    assert not any(r.startswith("no cell can be found") for r in run(challenger, champion, data).reasons)


def seesaw_models(data) -> tuple[np.ndarray, np.ndarray]:
    """Champion, and a challenger with a better click model and a worse conversion model."""
    champion = model(data[0], 1.0, 1)
    challenger = np.stack([model(data[0], 0.3, 2)[:, 0], model(data[0], 2.5, 3)[:, 1]], axis=1)
    return challenger, champion


def test_a_seesaw_is_flagged_and_blocks_only_when_configured():
    data = held_out()
    challenger, champion = seesaw_models(data)
    flagged = run(challenger, champion, data, max_drop=0.5)  # the conversion loss alone is tolerated here
    assert flagged.passed
    assert [(s["scenario"], s["up"], s["down"]) for s in flagged.seesaws] == [
        ("homefeed", "click", "conversion"),
        ("search", "click", "conversion"),
    ]  # mini_app is advisory: not judged for seesaws either
    assert flagged.seesaws[0]["reason"].startswith("seesaw in homefeed: click +")
    assert flagged.seesaws[0]["reason"].endswith("flagged only (MSMT_GATE_BLOCK_SEESAW=true would block it)")
    assert f"- {flagged.seesaws[0]['reason']}" in flagged.format_matrix().splitlines()
    blocked = run(challenger, champion, data, max_drop=0.5, block_seesaw=True)
    assert not blocked.passed and {c["status"] for c in blocked.cells} <= {"pass", "advisory"}
    assert any("seesaw in search: click" in r and "blocks the promotion" in r for r in blocked.reasons)
    by_logloss = run(challenger, champion, data, max_drop=5.0, metric="logloss")  # lower is better: same sides
    assert [(s["up"], s["down"]) for s in by_logloss.seesaws] == [("click", "conversion")] * 2
    both_worse = run(model(data[0], 2.5, 4), champion, data, max_drop=0.5, block_seesaw=True)
    assert both_worse.seesaws == [] and both_worse.passed


OLD_REPORT = {  # gate/ds=….json as written before Holm and seesaws: no p keys, no `seesaws`, no alpha
    "passed": False,
    "first_run": False,
    "cells": [
        {"scenario": "homefeed", "task": "click", "rows": 9000, "positives": 3100, "challenger": 0.7712,
         "champion": 0.7798, "diff": -0.0086, "ci_low": -0.0121, "ci_high": -0.0049, "status": "fail",
         "reason": "significant drop: diff -0.0086 [-0.0121, -0.0049] is wholly worse and beyond the tolerance 0.002"},
        {"scenario": "mini_app", "task": "click", "rows": 120, "positives": 9, "challenger": 0.7, "champion": 0.69,
         "diff": 0.01, "ci_low": -0.05, "ci_high": 0.07, "status": "advisory",
         "reason": "too little data to judge (120 rows, 9 positives; need 500 and 25)"},
    ],
    "reasons": ["homefeed/click fail: significant drop: diff -0.0086 [-0.0121, -0.0049] is wholly worse"],
    "metric": "auc",
    "rules": {"metric": "auc", "max_drop": 0.002, "floor": 0.55, "min_rows": 500, "min_positives": 25,
              "advisory_scenarios": [], "allow_unjudged": False, "n_boot": 200, "seed": 0},
    "challenger_version": "7",
    "champion_version": "6",
    "eval_ds": "2026-01-05",
    "run_id": "abc",
}  # fmt: skip


def test_reports_stored_before_holm_still_load_and_print():
    old = GateDecision.from_dict(json.loads(json.dumps(OLD_REPORT)))
    assert not old.passed and old.seesaws == [] and old.cells[0]["diff"] == -0.0086
    lines = old.format_matrix().splitlines()
    assert lines[0] == "gate on auc: FAILED"
    assert lines[1].split() == ["scenario", "task", "rows", "pos", "challenger", "champion", "diff", "[95%", "CI]",
                                "p", "p", "Holm", "status"]  # fmt: skip
    assert lines[2].split()[-3:] == ["-", "-", "fail"]  # no p recorded: shown as "-"
    assert lines[-1].startswith("- homefeed/click fail")
