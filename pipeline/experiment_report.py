"""One self-contained HTML page per experiment: the challenger − baseline difference per cell and day as a heat
map, the pooled difference per cell as a forest plot, and the days won / lost / tied.

    from pipeline.experiment_report import render
    html = render(summary)   # pipeline.experiments.summarize's result; a notebook: IPython.display.HTML(html)

Same CSS and SVG charts as the daily report (pipeline.report, pipeline.charts): it loads nothing.
"""

from __future__ import annotations

from html import escape

from pipeline import charts
from pipeline.report import CSS, DIFF_SCALE_MAX
from training.evaluate import HIGHER_IS_BETTER

VERDICT_STATUS = {"better": "pass", "worse": "fail", "tie": "tie", "not compared": "advisory"}  # the charts' styling


def render(summary: dict) -> str:
    """The page of `summary`: verdict counts, heat map (cells × days), forest plot (pooled), per-day links."""
    metric = summary["metric"]
    higher = HIGHER_IS_BETTER.get(metric, True)
    counts = {v: sum(c["verdict"] == v for c in summary["cells"]) for v in ("better", "worse", "tie")}
    verdict = ", ".join(f"{n} {v}" for v, n in counts.items())
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>msmt experiment {escape(summary['name'])}</title><style>{CSS}</style></head>"
        f"<body><main><h1>msmt experiment — {escape(summary['name'])}</h1>"
        f'<div class="sub">{escape(summary["model"])} against {escape(summary["baseline"]["label"])}'
        f"{_baseline_version(summary)} · run days {escape(summary['days'][0])} … {escape(summary['days'][-1])} · "
        f"nothing promoted · MLflow run {escape(summary['parent_run_id'])}</div>"
        f'<div class="verdict" id="verdict">cells: {escape(verdict)}</div>'
        + _days_section(summary, higher)
        + _pooled_section(summary, higher)
        + _table_section(summary)
        + "</main></body></html>\n"
    )


def _baseline_version(summary: dict) -> str:
    version = summary["baseline"].get("version")
    return f" (v{escape(str(version))})" if version else ""


def _label(cell: dict) -> str:
    return f"{cell['scenario']} / {cell['task']}"


def _days_section(summary: dict, higher: bool) -> str:
    rows = [_label(c) for c in summary["cells"]]
    columns = [day["ds"] for day in summary["per_day"]]
    cells = {}
    for day in summary["per_day"]:
        for cell in day["cells"]:
            cells[(_label(cell), day["ds"])] = _heat_cell(cell, higher)
    plot = charts.heat_map(rows, columns, cells, f"challenger − baseline {summary['metric']} per cell and day")
    return (
        f'<section id="days"><h2>Challenger − baseline per day ({escape(summary["metric"])})</h2>'
        '<p class="muted">Each column is one replayed run day, scored on its held-out rows; a cell reads won when '
        "the day's paired 95% interval lies above 0, lost below, tied across.</p>"
        f"{plot}</section>"
    )


def _heat_cell(cell: dict, higher: bool) -> charts.HeatCell:
    if cell["diff"] is None or cell["ci_low"] is None:
        return charts.HeatCell("#f6f8fa", "n/a", "advisory", f"{_label(cell)}: {cell['reason']}")
    gain_low, gain_high = sorted(v if higher else -v for v in (cell["ci_low"], cell["ci_high"]))
    status = "won" if gain_low > 0 else "lost" if gain_high < 0 else "tied"
    share = min(max(0.5 + cell["diff"] / (2 * DIFF_SCALE_MAX), 0.0), 1.0)
    detail = (f"{_label(cell)}: {cell['rows']:,} rows, {cell['positives']:,} positives, "
              f"diff {cell['diff']:+.4f} [{cell['ci_low']:+.4f}, {cell['ci_high']:+.4f}]")  # fmt: skip
    fill = charts.ramp(charts.DIVERGING, share if higher else 1 - share)
    return charts.HeatCell(fill, f"{cell['diff']:+.4f}", {"won": "pass", "lost": "fail"}.get(status, status), detail)


def _pooled_section(summary: dict, higher: bool) -> str:
    rows = [
        charts.ForestRow(
            _label(c),
            c["diff"],
            c["low"],
            c["high"],
            VERDICT_STATUS[c["verdict"]],
            f"{_pooled_text(c)} {c['verdict']}",
        )
        for c in summary["cells"]
    ]
    plot = charts.forest_plot(rows, 0.0, f"pooled challenger − baseline {summary['metric']}", worse=-1 if higher else 1)
    return (
        '<section id="pooled"><h2>Across days: pooled difference, 95% interval</h2>'
        '<p class="muted">Daily differences pooled by inverse variance (each day\'s standard error from its paired '
        "bootstrap interval): better when the interval lies above 0, worse below, tie across.</p>"
        f"{plot}</section>"
    )


def _pooled_text(cell: dict) -> str:
    if cell["diff"] is None:
        return "not compared"
    return f"{cell['diff']:+.4f} [{cell['low']:+.4f}, {cell['high']:+.4f}]"


def _table_section(summary: dict) -> str:
    head = "".join(f"<th>{h}</th>" for h in ("cell", "days", "won", "lost", "tied", "pooled diff", "verdict"))
    body = "".join(
        f'<tr data-verdict="{escape(c["verdict"])}"><td>{escape(_label(c))}</td><td>{c["days"]}</td>'
        f"<td>{c['wins']}</td><td>{c['losses']}</td><td>{c['ties']}</td>"
        f"<td>{_pooled_text(c)}</td>"
        f"<td>{escape(c['verdict'])}</td></tr>"
        for c in summary["cells"]
    )
    runs = "".join(
        f"<li>{escape(d['ds'])} (held out {escape(d['eval_ds'])}): challenger {escape(d['challenger'])}, "
        f"baseline {escape(d['baseline'])}, MLflow run {escape(d['run_id'])}</li>"
        for d in summary["per_day"]
    )
    return (
        f'<section id="verdicts"><h2>Verdicts</h2><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
        f"<h3>Replayed days</h3><ul>{runs}</ul></section>"
    )
