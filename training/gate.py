"""Promotion gate: the challenger must not be significantly worse than the champion in any
(scenario, task) cell that has enough data to judge, and at least one cell must have it (numpy only).

Per gated cell (higher-is-better metric; logloss is handled with the sign flipped):
- first run (no champion): fail if challenger < `floor`;
- otherwise fail if challenger < `floor`, or if Holm's procedure finds the cell significantly
  worse at family-wise level `alpha` **and** the point drop exceeds `max_drop` (significant and
  material; either alone is noise or a negligible loss).
Cells with fewer than `min_rows` rows or `min_positives` positives, listed in
`advisory_scenarios`, or with an undefined metric are advisory: shown, never failing.
`floor` applies to AUC only (a floor on logloss would be meaningless).

Significance is judged across the cells, not per cell: testing each of m independent
equal-quality cells at level a rejects at least one with probability 1 − (1 − a)^m, 18% for
8 cells under the earlier per-cell rule (a 95% interval wholly below 0 is a one-sided 2.5%
test). Each compared cell (gated, not a first run, both metrics defined) gets a one-sided p of
"challenger worse" from its paired, request-grouped bootstrap (`evaluate.paired_bootstrap`),
and Holm's step-down rule over those m cells keeps the chance of rejecting any equal-quality
cell at or below `alpha` whatever the cells' dependence, while still failing a clearly
degraded one. B resamples cannot give p below
1/(B + 1), so Holm can reject nothing when that exceeds alpha/m; the decision then says so
(raise `n_boot` to at least m/alpha − 1: 199 for 10 cells at 0.05).

A seesaw is one task significantly better (95% CI wholly above 0) while another task of the
same scenario is significantly worse (wholly below 0): a model trading one objective for
another, which a per-cell tolerance can let through. Seesaws are flagged on the decision and,
with `block_seesaw`, fail it.

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
    alpha: float = 0.05  # family-wise level of Holm's procedure across the compared cells
    block_seesaw: bool = False  # fail a decision with a seesaw (default: flag it only)
    n_boot: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        self.advisory_scenarios = tuple(self.advisory_scenarios)
        if self.metric not in HIGHER_IS_BETTER:
            raise ValueError(f"unknown metric {self.metric!r}; known: {sorted(HIGHER_IS_BETTER)}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must lie in (0, 1), got {self.alpha}")


@dataclass
class GateDecision:
    passed: bool
    first_run: bool
    # scenario, task, rows, positives, challenger, champion, diff, ci_low, ci_high, p_value, p_holm,
    # holm_rejected, status, reason (reports stored before Holm lack the p keys)
    cells: list[dict]
    reasons: list[str]
    metric: str = "auc"
    rules: dict = field(default_factory=dict)
    seesaws: list[dict] = field(default_factory=list)  # scenario, up, down (task names), reason

    def to_dict(self) -> dict:
        """JSON-ready (undefined numbers are None)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> GateDecision:
        """Rebuild from `to_dict()` output; extra keys (a stored report's versions, run id) are ignored."""
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})

    def format_matrix(self) -> str:
        """Scenario × task table: challenger, champion, diff [95% CI], p and Holm-adjusted p, status."""

        def num(value: float | None, signed: bool = False) -> str:
            return "-" if value is None else f"{value:+.4f}" if signed else f"{value:.4f}"

        header = ("scenario", "task", "rows", "pos", "challenger", "champion", "diff [95% CI]", "p", "p Holm", "status")
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
                num(c.get("p_value")),
                num(c.get("p_holm")),
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
    cells = []
    for s_id, s_name in enumerate(scenario_names):
        for t, task in enumerate(tasks):
            rows = (scenario == s_id) & mask[:, t].astype(bool)
            y = labels[rows, t].astype(np.float64)
            new = np.asarray(challenger_probs)[rows, t]
            cell = {"scenario": s_name, "task": task, "rows": int(rows.sum()), "positives": int((y > 0.5).sum())}
            cell["challenger"] = _clean(metric_value(rules.metric, y, new))
            cell.update(champion=None, diff=None, ci_low=None, ci_high=None, p_value=None)
            if not first_run:
                old = np.asarray(champion_probs)[rows, t]
                diff, lo, hi, p = paired_bootstrap(y, new, old, groups[rows], rules.n_boot, rules.seed, rules.metric)
                cell.update(
                    champion=_clean(metric_value(rules.metric, y, old)),
                    diff=_clean(diff), ci_low=_clean(lo), ci_high=_clean(hi), p_value=_clean(p),
                )  # fmt: skip
            cell.update(p_holm=None, holm_rejected=None)
            cells.append(cell)
    family = [c for c in cells if _compared(c, rules, first_run)]
    for cell, p_holm in zip(family, holm_adjust([c["p_value"] for c in family]), strict=True):
        cell["p_holm"], cell["holm_rejected"] = float(p_holm), bool(p_holm <= rules.alpha)
    reasons = []
    for cell in cells:
        cell["status"], cell["reason"] = _judge(cell, rules, sign, first_run)
        if cell["status"] != "pass":
            reasons.append(f"{cell['scenario']}/{cell['task']} {cell['status']}: {cell['reason']}")
    if family and 1 / (rules.n_boot + 1) > rules.alpha / len(family):
        reasons.append(_too_few_resamples(rules, len(family)))
    seesaws = _seesaws(family, sign, rules.block_seesaw)
    reasons += [s["reason"] for s in seesaws]
    judged = any(c["status"] in ("pass", "fail") for c in cells)
    if not judged:
        reasons.append(_unjudged_reason(rules))
    passed = (
        all(c["status"] != "fail" for c in cells)
        and (judged or rules.allow_unjudged)
        and not (rules.block_seesaw and seesaws)
    )
    rules_dict = asdict(rules) | {"advisory_scenarios": list(rules.advisory_scenarios)}  # as JSON gives it back
    return GateDecision(passed, first_run, cells, reasons, rules.metric, rules_dict, seesaws)


def _compared(cell: dict, rules: GateRules, first_run: bool) -> bool:
    """Whether the cell joins the family Holm corrects for: gated, enough data, both metrics and p defined."""
    return (
        not first_run
        and cell["scenario"] not in rules.advisory_scenarios
        and cell["rows"] >= rules.min_rows
        and cell["positives"] >= rules.min_positives
        and cell["challenger"] is not None
        and cell["diff"] is not None
        and cell["p_value"] is not None
    )


def holm_adjust(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values, in the input's order: a cell is rejected at level alpha
    when its adjusted p ≤ alpha.

    Of m p-values sorted ascending, the i-th (from 0) becomes the running max of min(1, (m − i) p):
    adjusted p ≤ alpha is Holm's "reject while p_(i) ≤ alpha / (m − i)", and the running max is
    its step-down (once one cell is kept, no larger p is rejected).
    """
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (len(p) - np.arange(len(p))) * p[order])  # (m,) in ascending-p order
    adjusted = np.empty_like(p)
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted


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
    if cell["p_holm"] is None:
        return "advisory", f"champion {name} undefined on these rows"
    interval = f"diff {cell['diff']:+.4f} [{cell['ci_low']:+.4f}, {cell['ci_high']:+.4f}]"
    test = f"p {cell['p_value']:.4f}, Holm-adjusted {cell['p_holm']:.4f}"
    if cell["holm_rejected"] and sign * cell["diff"] < -rules.max_drop:
        return "fail", (
            f"significant drop: {interval}, {test} ≤ alpha {rules.alpha} and beyond the tolerance {rules.max_drop}"
        )
    return "pass", f"{interval}, {test}: within tolerance"


def _seesaws(family: list[dict], sign: float, block: bool) -> list[dict]:
    """Each (scenario, task up, task down) of compared cells whose 95% CIs lie on opposite sides of 0."""

    def gain_bounds(c: dict) -> tuple[float, float]:
        low, high = sorted((sign * c["ci_low"], sign * c["ci_high"]))
        return low, high

    def shown(c: dict) -> str:
        return f"{c['task']} {c['diff']:+.4f} [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}]"

    policy = (
        "blocks the promotion (MSMT_GATE_BLOCK_SEESAW=true)"
        if block
        else "flagged only (MSMT_GATE_BLOCK_SEESAW=true would block it)"
    )
    seesaws = []
    for up in family:
        for down in family:
            if up["scenario"] == down["scenario"] and gain_bounds(up)[0] > 0 and gain_bounds(down)[1] < 0:
                reason = f"seesaw in {up['scenario']}: {shown(up)} is better while {shown(down)} is worse; {policy}"
                seesaws.append({"scenario": up["scenario"], "up": up["task"], "down": down["task"], "reason": reason})
    return seesaws


def _too_few_resamples(rules: GateRules, m: int) -> str:
    """Why the significance rule cannot reject any cell: the bootstrap's p resolution exceeds Holm's first threshold."""
    need = math.ceil(m / rules.alpha) - 1
    return (
        f"no cell can be found significantly worse: {rules.n_boot} resamples give p ≥ {1 / (rules.n_boot + 1):.4f}, "
        f"above alpha / {m} cells = {rules.alpha / m:.4f}; set MSMT_GATE_BOOTSTRAP to at least {need}"
    )


def _unjudged_reason(rules: GateRules) -> str:
    """Why a decision without a single judged cell fails (or, with allow_unjudged, passes)."""
    need = f"need {rules.min_rows} rows and {rules.min_positives} positives per cell"
    missing = f"no cell had enough data to be judged ({need})"
    if rules.allow_unjudged:
        return f"{missing}; passing anyway because MSMT_GATE_ALLOW_UNJUDGED=true"
    return f"{missing}; set MSMT_GATE_ALLOW_UNJUDGED=true to promote anyway"
