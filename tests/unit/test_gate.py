"""Gate rules cell by cell: floors, significant drops, noise, advisory cells, the printed matrix."""

from __future__ import annotations

import json

import numpy as np
import pytest

from training.gate import GateDecision, GateRules, decide

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
