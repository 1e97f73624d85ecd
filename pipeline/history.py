"""What happened, in words: the champion's history (`msmt history`) and each day's verdict (`msmt status`).

Both read what the pipeline already records — the registry's audited alias moves
(`training.promotion.alias_history`) and the gate reports in the lake — so they
answer "who moved the champion, when and why" and "what did each day decide"
without opening the MLflow UI.
"""

from __future__ import annotations

from collections import Counter

from msmt import lake, storage
from msmt.settings import Settings


def history_lines(settings: Settings) -> list[str]:
    """The champion, the previous champion and every alias move, oldest first, with the gate it rests on."""
    from training.promotion import CHAMPION, PREVIOUS, alias_history

    moves = alias_history(settings)
    if not moves:
        return [f"{settings.registered_model}: no alias has moved yet (no promotion)"]
    now = {}
    for move in moves:
        now[move["alias"]] = move["to"]
    lines = [
        f"{settings.registered_model}: {CHAMPION} {label(now.get(CHAMPION))}, {PREVIOUS} {label(now.get(PREVIOUS))}",
        f"{'when (UTC)':<20} {'alias':<18} {'move':<12} {'by':<12} why",
    ]
    for move in moves:
        change = f"{label(move['from'])} → {label(move['to'])}"
        lines.append(f"{move['at'][:19]:<20} {move['alias']:<18} {change:<12} {move['by']:<12} {move['why']}")
    return lines


def status_lines(settings: Settings, last: int = 14) -> list[str]:
    """The gate verdict of each of the `last` judged days: challenger, champion, cells passed / failed / advisory."""
    reports = gate_reports(settings)
    if not reports:
        return ["no day has been judged yet (no gate report in the lake)"]
    lines = [f"{'held-out day':<13} {'verdict':<9} {'challenger':<11} {'champion':<9} cells"]
    for uri in reports[-last:]:
        report = storage.read_json(settings, uri)
        counts = Counter(cell["status"] for cell in report["cells"])
        cells = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        verdict = "passed" if report["passed"] else "rejected"
        champion = "first run" if report["first_run"] else label(report["champion_version"])
        lines.append(
            f"{report['eval_ds']:<13} {verdict:<9} {label(report['challenger_version']):<11} {champion:<9} {cells}"
        )
    return lines


def gate_reports(settings: Settings) -> list[str]:
    """The lake's stored gate reports, oldest held-out day first (`gate/ds=….json` sorts by day)."""
    return [uri for uri in storage.list_keys(settings, lake.table(settings, "gate")) if uri.endswith(".json")]


def label(version: str | None) -> str:
    """A registry version as people write it: v7, or none."""
    return "none" if version is None else f"v{version}"
