"""Promotion gate: the challenger must not be significantly worse than the champion in any
(scenario, task) cell that has enough data to judge, and at least one cell must have it (numpy only).

Per gated cell (higher-is-better metric; logloss is handled with the sign flipped):
- first run (no champion): fail if challenger < `floor`;
- otherwise fail if challenger < `floor`, or if the paired, request-grouped 95% CI of
  challenger − champion lies wholly below 0 **and** the point drop exceeds `max_drop`
  (significant and material; either alone is noise or a negligible loss).
Cells with fewer than `min_rows` rows or `min_positives` positives, listed in
`advisory_scenarios`, or with an undefined metric are advisory: shown, never failing.
`floor` applies to AUC only (a floor on logloss would be meaningless).

A decision in which no cell was judged (pass or fail) does not pass: on a few hundred
rows every cell is advisory, and "nothing failed" then says nothing about the model
(challengers with AUC 0.35–0.47 became champion that way). `allow_unjudged`
(MSMT_GATE_ALLOW_UNJUDGED) lets such a decision pass, but keeps the floor wherever a
cell has data: a cell too small to compare fails when its challenger AUC is defined
and below `floor`. Scenarios listed in `advisory_scenarios` stay advisory either way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from training.evaluate import HIGHER_IS_BETTER, metric_value, paired_bootstrap


@dataclass
class GateRules:
    metric: str = "auc"
    max_drop: float = 0.002  # tolerated loss of the metric per cell
    floor: float = 0.55  # absolute minimum AUC of a gated cell
    min_rows: int = 500
    min_positives: int = 25
    advisory_scenarios: tuple[str, ...] = ()
    allow_unjudged: bool = False  # pass a decision with no judged cell (the floor still holds where there is data)
    n_boot: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        self.advisory_scenarios = tuple(self.advisory_scenarios)
        if self.metric not in HIGHER_IS_BETTER:
            raise ValueError(f"unknown metric {self.metric!r}; known: {sorted(HIGHER_IS_BETTER)}")


@dataclass
class GateDecision:
    passed: bool
    first_run: bool
    cells: list[dict]  # scenario, task, rows, positives, challenger, champion, diff, ci_low, ci_high, status, reason
    reasons: list[str]
    metric: str = "auc"
    rules: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready (undefined numbers are None)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> GateDecision:
        """Rebuild from `to_dict()` output; extra keys (a stored report's versions, run id) are ignored."""
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})

    def format_matrix(self) -> str:
        """Scenario × task table: challenger, champion, diff [95% CI], status."""

        def num(value: float | None, signed: bool = False) -> str:
            return "-" if value is None else f"{value:+.4f}" if signed else f"{value:.4f}"

        header = ("scenario", "task", "rows", "pos", "challenger", "champion", "diff [95% CI]", "status")
        rows = [
            (
                c["scenario"],
                c["task"],
                str(c["rows"]),
                str(c["positives"]),
                num(c["challenger"]),
                num(c["champion"]),
                "-"
                if c["diff"] is None
                else f"{num(c['diff'], True)} [{num(c['ci_low'], True)}, {num(c['ci_high'], True)}]",
                c["status"],
            )
            for c in self.cells
        ]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        verdict = ("PASSED" if self.passed else "FAILED") + (" (first run)" if self.first_run else "")
        lines = [
            f"gate on {self.metric}: {verdict}",
            "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)),
            *("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows),
        ]
        return "\n".join(line.rstrip() for line in [*lines, *(f"- {r}" for r in self.reasons)])


def _clean(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def decide(
    challenger_probs: np.ndarray,
    champion_probs: np.ndarray | None,
    labels: np.ndarray,
    mask: np.ndarray,
    scenario: np.ndarray,
    groups: np.ndarray,
    scenario_names: Sequence[str],
    tasks: Sequence[str],
    rules: GateRules,
) -> GateDecision:
    """Score both models on the same held-out rows, cell by cell, and apply `rules`."""
    labels, mask, scenario, groups = map(np.asarray, (labels, mask, scenario, groups))
    first_run = champion_probs is None
    sign = 1.0 if HIGHER_IS_BETTER[rules.metric] else -1.0  # gain = sign * (challenger − champion)
    cells, reasons = [], []
    for s_id, s_name in enumerate(scenario_names):
        for t, task in enumerate(tasks):
            rows = (scenario == s_id) & mask[:, t].astype(bool)
            y = labels[rows, t].astype(np.float64)
            new = np.asarray(challenger_probs)[rows, t]
            cell = {"scenario": s_name, "task": task, "rows": int(rows.sum()), "positives": int((y > 0.5).sum())}
            cell["challenger"] = _clean(metric_value(rules.metric, y, new))
            cell.update(champion=None, diff=None, ci_low=None, ci_high=None)
            if not first_run:
                old = np.asarray(champion_probs)[rows, t]
                diff, lo, hi = paired_bootstrap(y, new, old, groups[rows], rules.n_boot, rules.seed, rules.metric)
                cell.update(
                    champion=_clean(metric_value(rules.metric, y, old)),
                    diff=_clean(diff), ci_low=_clean(lo), ci_high=_clean(hi),
                )  # fmt: skip
            cell["status"], cell["reason"] = _judge(cell, rules, sign, first_run)
            if cell["status"] != "pass":
                reasons.append(f"{s_name}/{task} {cell['status']}: {cell['reason']}")
            cells.append(cell)
    judged = any(c["status"] in ("pass", "fail") for c in cells)
    if not judged:
        reasons.append(_unjudged_reason(rules))
    passed = all(c["status"] != "fail" for c in cells) and (judged or rules.allow_unjudged)
    rules_dict = asdict(rules) | {"advisory_scenarios": list(rules.advisory_scenarios)}  # as JSON gives it back
    return GateDecision(passed, first_run, cells, reasons, rules.metric, rules_dict)


def _judge(cell: dict, rules: GateRules, sign: float, first_run: bool) -> tuple[str, str]:
    """(status, reason in words) of one cell."""
    name = rules.metric.upper() if rules.metric == "auc" else rules.metric
    if cell["scenario"] in rules.advisory_scenarios:
        return "advisory", "scenario is advisory by configuration"
    below_floor = rules.metric == "auc" and cell["challenger"] is not None and cell["challenger"] < rules.floor
    under = f"challenger {name} {cell['challenger']:.4f} is below the floor {rules.floor:.4f}" if below_floor else ""
    if cell["rows"] < rules.min_rows or cell["positives"] < rules.min_positives:
        data = f"{cell['rows']} rows, {cell['positives']} positives; need {rules.min_rows} and {rules.min_positives}"
        if below_floor and rules.allow_unjudged:
            return "fail", f"{under} (too little data to compare, {data}; with allow_unjudged the floor still holds)"
        return "advisory", f"too little data to judge ({data})"
    if cell["challenger"] is None:
        return "advisory", f"{name} undefined on these rows (a single label class)"
    if below_floor:
        return "fail", under
    if first_run:
        return "pass", "first run: above the floor"
    if cell["diff"] is None or cell["ci_low"] is None:
        return "advisory", f"champion {name} undefined on these rows"
    gain, gain_hi = sign * cell["diff"], max(sign * cell["ci_low"], sign * cell["ci_high"])
    interval = f"diff {cell['diff']:+.4f} [{cell['ci_low']:+.4f}, {cell['ci_high']:+.4f}]"
    if gain_hi < 0 and gain < -rules.max_drop:
        return "fail", f"significant drop: {interval} is wholly worse and beyond the tolerance {rules.max_drop}"
    return "pass", f"{interval} within tolerance"


def _unjudged_reason(rules: GateRules) -> str:
    """Why a decision without a single judged cell fails (or, with allow_unjudged, passes)."""
    need = f"need {rules.min_rows} rows and {rules.min_positives} positives per cell"
    missing = f"no cell had enough data to be judged ({need})"
    if rules.allow_unjudged:
        return f"{missing}; passing anyway because MSMT_GATE_ALLOW_UNJUDGED=true"
    return f"{missing}; set MSMT_GATE_ALLOW_UNJUDGED=true to promote anyway"
