"""One self-contained HTML page per daily run: what the gate decided, on what data, with which code and model.

    from pipeline.report import build_report, write_report
    html = build_report(settings, "2026-01-08")   # a notebook: IPython.display.HTML(html)
    uri = write_report(settings, "2026-01-08")    # the lake (lake.report) and the day's challenger MLflow run

The page reads only what the run already recorded: the stored gate reports of
the held-out day and of the days before it (`lake.gate_report`), the stored
data checks (`lake.check_result`), the day's challenger MLflow run (params,
dataset input, tags) and its model version's tags. It inlines its CSS and SVG
charts (pipeline.charts) and loads nothing, so it opens offline, from the lake,
a mail or the MLflow UI alike.

A stored result can be older than the run reporting on it: a re-run that stops
at its raw check leaves the earlier run's gate report in the lake. Given the
run's task states (`run_states`, which the DAG passes), the page says which
stored results this run did not write; without them it still flags a gate
report whose MLflow run is not the day's newest challenger.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import subprocess
from dataclasses import dataclass
from html import escape

from msmt import lake, storage
from msmt.contract import ContractError
from msmt.settings import PROJECT_ROOT, Settings
from pipeline import charts
from pipeline.history import gate_reports, label
from pipeline.orchestration import TASK_ORDER
from pipeline.steps import DayPlan
from training.evaluate import HIGHER_IS_BETTER

log = logging.getLogger("msmt.report")

HISTORY_DAYS = 14  # judged days drawn in each cell's line chart
CHECK_TASKS = {"raw": "check_raw_logs", "samples": "check_samples"}  # the task that stores each suite's result
CHALLENGER, CHAMPION = "#0969da", "#57606a"  # line colours of the two models' AUC over the days
DIFF_SCALE_MAX = 0.05  # the heat map's colour saturates at this |challenger − champion|: a large AUC change


@dataclass(frozen=True)
class Check:
    """One stored data-check result (None: never stored), whether an earlier run of the day stored it,
    and the lake partitions it checked."""

    suite: str
    day: str
    result: dict | None
    earlier: bool
    partitions: tuple[str, ...]


@dataclass(frozen=True)
class Facts:
    """Everything one day's report shows, read once from the lake and MLflow."""

    ds: str  # the run day
    sample_ds: str  # the held-out day the gate judged
    window: int  # attribution window: how far sample_ds lags ds
    gate: dict | None  # stored gate report of sample_ds
    gate_earlier: bool  # … written by an earlier run of the day, not the one reported on
    history: list[dict]  # stored gate reports of the last HISTORY_DAYS judged days up to sample_ds, oldest first
    checks: list[Check]  # raw days the sample day reads, then the sample day
    train_checks: list[Check]  # samples checks of the training days (lineage)
    run: dict | None  # the day's newest challenger MLflow run: id, name, status, params, tags, datasets
    version: dict  # tags and aliases of the challenger's model version ({} without a gate)
    contract: dict  # the data contract's name, version, digest, source; or its error
    code: str  # git commit of the checkout building the report
    run_states: dict[str, str] | None  # this Airflow run's task states; None outside the DAG
    generated: str  # UTC time the page was built


# --- gathering -----------------------------------------------------------------------------------


def gather(settings: Settings, ds: str, run_states: dict[str, str] | None = None) -> Facts:
    """Read what the report shows for the run of day `ds` (`run_states`: that run's task states, if known).

    Does not validate the model or its overrides (`steps.plan_day` does): a report
    must also be written for a run that stopped because they were wrong.
    """
    sample_ds = lake.shift(ds, -settings.attribution_window_days)  # the rule of steps.plan_day
    plan = DayPlan(ds, sample_ds, ())
    states = None if run_states is None else {task: str(state) for task, state in run_states.items()}
    gate = _stored(settings, lake.gate_report(settings, sample_ds))
    run = _challenger_run(settings, sample_ds)
    gate_earlier = gate is not None and (
        (states is not None and states.get("evaluate_model") != "success")
        or (run is not None and gate.get("run_id") != run["run_id"])
    )
    checks = [_check(settings, "raw", day, states) for day in plan.raw_days]
    train_days = run["params"].get("train_days", "").split(",") if run else []
    return Facts(
        ds=ds,
        sample_ds=sample_ds,
        window=settings.attribution_window_days,
        gate=gate,
        gate_earlier=gate_earlier,
        history=_history(settings, sample_ds),
        checks=[*checks, _check(settings, "samples", sample_ds, states)],
        train_checks=[_check(settings, "samples", day, None) for day in train_days if day],
        run=run,
        version=_version(settings, gate),
        contract=_contract(settings),
        code=_code_version(),
        run_states=states,
        generated=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    )


def _stored(settings: Settings, uri: str) -> dict | None:
    return storage.read_json(settings, uri) if storage.exists(settings, uri) else None


def _check(settings: Settings, suite: str, day: str, states: dict[str, str] | None) -> Check:
    """A stored check result; from an earlier run when this run's check task neither passed nor failed."""
    earlier = states is not None and states.get(CHECK_TASKS[suite]) not in ("success", "failed")
    if suite == "raw":
        partitions = tuple(lake.raw(settings, table, day) for table in lake.RAW_TABLES)
    else:
        partitions = (lake.samples(settings, day),)
    return Check(suite, day, _stored(settings, lake.check_result(settings, suite, day)), earlier, partitions)


def _history(settings: Settings, sample_ds: str) -> list[dict]:
    """The stored gate reports of the last HISTORY_DAYS judged days up to `sample_ds`, oldest first."""
    newest = lake.gate_report(settings, sample_ds)
    uris = gate_reports(settings)
    return [storage.read_json(settings, uri) for uri in [u for u in uris if u <= newest][-HISTORY_DAYS:]]


def _challenger_run(settings: Settings, sample_ds: str) -> dict | None:
    """The newest MLflow run that trained a challenger for held-out day `sample_ds`, as plain values."""
    import mlflow

    from training.tracking import configure_mlflow

    configure_mlflow(settings)
    experiment = mlflow.get_experiment_by_name(settings.experiment)
    found = mlflow.MlflowClient().search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`msmt.eval_ds` = '{sample_ds}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not found:
        return None
    run = found[0]
    datasets = [
        {"name": d.dataset.name, "digest": d.dataset.digest, "source": _source_uri(d.dataset.source)}
        for d in run.inputs.dataset_inputs
    ]
    return {
        "run_id": run.info.run_id,
        "name": run.info.run_name,
        "status": run.info.status,
        "started": dt.datetime.fromtimestamp(run.info.start_time / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "params": dict(run.data.params),
        "tags": dict(run.data.tags),
        "datasets": datasets,
    }


def _source_uri(source: str) -> str:
    """MLflow stores a dataset's source as JSON (`{"uri": …}`); the URI, or the raw text."""
    try:
        return str(json.loads(source).get("uri", source))
    except (ValueError, AttributeError):
        return source


def _version(settings: Settings, gate: dict | None) -> dict:
    """Tags and aliases of the gated challenger's model version; {} without a gate or a version."""
    if gate is None:
        return {}
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        version = MlflowClient().get_model_version(settings.registered_model, str(gate["challenger_version"]))
    except MlflowException:
        return {}
    return {"tags": dict(version.tags), "aliases": list(version.aliases)}


def _contract(settings: Settings) -> dict:
    """The data contract's identity, or the error that stopped it loading (the run stopped on it too)."""
    try:
        contract = settings.data_contract
    except ContractError as error:
        return {"error": str(error), "source": str(settings.contract_file)}
    return {"name": contract.name, "version": contract.version, "digest": contract.digest, "source": contract.source}


def _code_version() -> str:
    """The commit of the checkout building the report (`+ local changes` when dirty), or why there is none."""
    try:
        commit = _git("rev-parse", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return commit + (" + local changes" if dirty else "")


def _git(*args: str) -> str:
    done = subprocess.run(["git", "-C", str(PROJECT_ROOT), *args], capture_output=True, text=True, check=True)
    return done.stdout.strip()


# --- rendering -----------------------------------------------------------------------------------

CSS = """
body { font: 14px/1.45 system-ui, "DejaVu Sans", sans-serif; color: #1f2328; margin: 0; background: #f6f8fa; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 32px 48px; background: #fff; }
h1 { font-size: 24px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 32px 0 8px; border-bottom: 1px solid #d0d7de; }
h3 { font-size: 15px; margin: 18px 0 6px; }
.sub, .muted { color: #57606a; } .note { background: #fff8c5; border: 1px solid #d4a72c; padding: 6px 10px; }
.verdict { display: inline-block; font-size: 17px; font-weight: 600; padding: 6px 12px; border-radius: 6px;
  margin: 10px 0; color: #fff; }
.verdict.pass { background: #1a7f37; } .verdict.fail { background: #cf222e; } .verdict.none { background: #6e7781; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; color: #fff;
  background: #6e7781; margin: 2px 4px 2px 0; }
.badge.pass, .badge.success { background: #1a7f37; } .badge.fail, .badge.failed { background: #cf222e; }
.badge.upstream_failed { background: #bc4c00; } .badge.advisory, .badge.skipped { background: #6e7781; }
.badge.running, .badge.up_for_retry, .badge.queued { background: #9a6700; }
table { border-collapse: collapse; margin: 6px 0 12px; font-size: 13px; }
th, td { border: 1px solid #d0d7de; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
code { font: 12px "DejaVu Sans Mono", monospace; background: #f6f8fa; padding: 1px 4px; word-break: break-all; }
ul.failures li { color: #cf222e; }
nav a { margin-right: 14px; } .legend-row { display: flex; gap: 18px; align-items: center; flex-wrap: wrap; }
.swatch { display: inline-block; width: 22px; height: 0; border-top: 3px solid; vertical-align: middle;
  margin-right: 6px; } .swatch.dashed { border-top-style: dashed; }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr)); gap: 6px 12px; }
svg text { font-family: system-ui, "DejaVu Sans", sans-serif; font-size: 12px; fill: #1f2328; }
svg .axis-label { font-size: 13px; font-weight: 600; } svg .tick { font-size: 11px; fill: #57606a; }
svg .cell-value { font-size: 15px; font-weight: 600; } svg .cell-status { font-size: 12px; }
svg .chart-title { font-size: 13px; font-weight: 600; } svg .legend-title { font-size: 12px; }
svg .muted { fill: #8c959f; } svg .forest-note { font-size: 12px; }
"""


def render(facts: Facts) -> str:
    """The page: title and verdict, this run's tasks, gate matrix, forest plot, history, checks, lineage."""
    verdict, tone = _verdict(facts)
    sections = [
        _run_section(facts),
        _gate_section(facts),
        _forest_section(facts),
        _history_section(facts),
        _checks_section(facts),
        _lineage_section(facts),
    ]
    nav = " ".join(
        f'<a href="#{key}">{name}</a>'
        for key, name in (
            ("gate", "gate matrix"),
            ("forest", "intervals"),
            ("history", f"{_metric_name(facts)} over days"),
            ("checks", "data checks"),
            ("lineage", "lineage"),
        )
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>msmt {escape(facts.ds)} · {escape(verdict)}</title><style>{CSS}</style></head>"
        f"<body><main><h1>msmt daily report — run {escape(facts.ds)}</h1>"
        f'<div class="sub">held-out day {escape(facts.sample_ds)} (labels matured {facts.window} days after the run '
        f"day's logs landed) · generated {escape(facts.generated)}</div>"
        f'<div class="verdict {tone}" id="verdict">{escape(verdict)}</div><nav>{nav}</nav>'
        + "".join(sections)
        + "</main></body></html>\n"
    )


def _first_failed(facts: Facts) -> str | None:
    states = facts.run_states or {}
    return next((task for task in TASK_ORDER if states.get(task) == "failed"), None)


def _verdict(facts: Facts) -> tuple[str, str]:
    """The title's verdict in words, and its tone (pass / fail / none)."""
    failed = _first_failed(facts)
    gate = facts.gate
    if gate is None or facts.gate_earlier:
        if failed:
            return f"STOPPED: {failed} failed before a gate decision", "fail"
        return f"NO GATE DECISION for held-out day {facts.sample_ds}", "none"
    model = (facts.run or {}).get("params", {}).get("model", "")
    challenger = f"challenger {label(gate['challenger_version'])}" + (f" ({model})" if model else "")
    champion = "first run, no champion" if gate["first_run"] else f"champion {label(gate['champion_version'])}"
    words = [("PASSED" if gate["passed"] else "REJECTED"), f"{challenger} vs {champion}"]
    if gate["passed"]:
        promoted = "champion.assigned" in facts.version.get("tags", {})
        words.append("promoted to champion" if promoted else "not promoted")
    if failed:
        words.append(f"{failed} failed")
    return " · ".join(words), "pass" if gate["passed"] and not failed else "fail"


def _badge(text: str, tone: str) -> str:
    return f'<span class="badge {escape(tone)}">{escape(text)}</span>'


def _run_section(facts: Facts) -> str:
    """This Airflow run's task states, in flow order (only when the DAG passed them)."""
    if facts.run_states is None:
        return (
            '<section id="run"><h2>This run</h2><p class="muted">Built outside the DAG (CLI or notebook): '
            "the task states of a run are not known here; every result below is the one stored.</p></section>"
        )
    order = {task: i for i, task in enumerate(TASK_ORDER)}
    tasks = sorted((t for t in facts.run_states if t in order), key=order.get)
    badges = "".join(_badge(f"{task}: {facts.run_states[task]}", facts.run_states[task]) for task in tasks)
    return f'<section id="run"><h2>This run</h2><p>{badges}</p></section>'


def _cells(gate: dict) -> tuple[list[str], list[str], dict[tuple[str, str], dict]]:
    """Scenarios and tasks in the gate's order, and its cells by (scenario, task)."""
    scenarios = list(dict.fromkeys(c["scenario"] for c in gate["cells"]))
    tasks = list(dict.fromkeys(c["task"] for c in gate["cells"]))
    return scenarios, tasks, {(c["scenario"], c["task"]): c for c in gate["cells"]}


def _earlier_note(facts: Facts) -> str:
    if not facts.gate_earlier:
        return ""
    state = (facts.run_states or {}).get("evaluate_model")
    why = (
        f"this run's evaluate_model is {state}"
        if state not in (None, "success")
        else ("the day's newest challenger run is " + (facts.run or {}).get("run_id", "another run"))
    )
    return (
        f'<p class="note">From an earlier run of this day ({escape(why)}): the stored decision of MLflow run '
        f"<code>{escape(str(facts.gate.get('run_id')))}</code>, not this run's.</p>"
    )


def _gate_section(facts: Facts) -> str:
    gate = facts.gate
    if gate is None:
        return (
            '<section id="gate"><h2>Gate matrix</h2><p class="muted">No gate report is stored for held-out day '
            f"{escape(facts.sample_ds)}: the run did not reach the gate.</p></section>"
        )
    scenarios, tasks, cells = _cells(gate)
    metric = gate.get("metric", "auc")
    name = metric.upper() if metric == "auc" else metric
    higher = HIGHER_IS_BETTER.get(metric, True)
    if gate["first_run"]:
        low, high = _first_run_scale(gate, metric)
        heat = {key: _first_run_cell(c, low, high, higher) for key, c in cells.items()}
        ticks = {low: f"{low:.2f}", (low + high) / 2: f"{(low + high) / 2:.2f}", high: f"{high:.2f}"}
        floor = gate.get("rules", {}).get("floor")
        marks = {floor: f"floor {floor:g}"} if metric == "auc" and floor is not None and low < floor < high else {}
        palette = charts.SEQUENTIAL if higher else charts.SEQUENTIAL[::-1]
        legend = charts.colour_legend(palette, low, high, ticks, f"challenger {name} (first run: no champion)", marks)
        title = f"challenger {name} per scenario × task (first run)"
    else:
        limit = _diff_limit(gate)
        heat = {key: _diff_cell(c, limit, higher) for key, c in cells.items()}
        tolerance = gate.get("rules", {}).get("max_drop", 0.0)
        worse = -tolerance if higher else tolerance
        ends = (f"{-limit:+.3f}", f"{limit:+.3f}")
        if limit == DIFF_SCALE_MAX:  # saturated: larger differences wear the end colours
            ends = (f"≤ {ends[0]}", f"≥ {ends[1]}")
        ticks = {-limit: ends[0], 0.0: "0", limit: ends[1]}
        marks = {worse: f"tolerance {worse:+g}"}
        palette = charts.DIVERGING if higher else charts.DIVERGING[::-1]
        label = f"challenger − champion {name} (blue: better)"
        legend = charts.colour_legend(palette, -limit, limit, ticks, label, marks)
        title = f"challenger − champion {name} per scenario × task"
    heat_map = charts.heat_map(scenarios, tasks, heat, title)
    reasons = "".join(f"<li>{escape(r)}</li>" for r in gate.get("reasons", []))
    return (
        f'<section id="gate"><h2>Gate matrix</h2>{_earlier_note(facts)}'
        f'<p class="muted">{escape(title)}; hatched: advisory (shown, never failing), outlined: failing. '
        "Hover a cell for its rows, positives and the gate's reason.</p>"
        f"{heat_map}<div>{legend}</div>"
        + (f"<h3>Reasons</h3><ul>{reasons}</ul>" if reasons else "")
        + f"<details><summary>Every cell in numbers</summary>{_cells_table(gate)}</details></section>"
    )


def _first_run_scale(gate: dict, metric: str) -> tuple[float, float]:
    """The colour scale of a first run: 0.5–1 for AUC, else the values' own range."""
    if metric == "auc":
        return 0.5, 1.0
    values = [c["challenger"] for c in gate["cells"] if c["challenger"] is not None] or [0.0, 1.0]
    return min(values), max(max(values), min(values) + 1e-6)


def _first_run_cell(cell: dict, low: float, high: float, higher: bool) -> charts.HeatCell:
    value = cell["challenger"]
    if value is None:
        return charts.HeatCell("#f6f8fa", "n/a", cell["status"], _detail(cell))
    share = (value - low) / (high - low)
    return charts.HeatCell(
        charts.ramp(charts.SEQUENTIAL, share if higher else 1 - share), f"{value:.4f}", cell["status"], _detail(cell)
    )


def _diff_limit(gate: dict) -> float:
    """Half the diverging scale: the largest |diff|, at least twice the tolerated drop (so noise stays pale)
    and at most DIFF_SCALE_MAX (so one collapsed cell does not wash out the others; beyond it, the end colour)."""
    diffs = [abs(c["diff"]) for c in gate["cells"] if c["diff"] is not None and math.isfinite(c["diff"])]
    return min(max([*diffs, 2 * gate.get("rules", {}).get("max_drop", 0.0), 1e-3]), DIFF_SCALE_MAX)


def _diff_cell(cell: dict, limit: float, higher: bool) -> charts.HeatCell:
    diff = cell["diff"]
    if diff is None:
        return charts.HeatCell("#f6f8fa", "n/a", cell["status"], _detail(cell))
    share = 0.5 + diff / (2 * limit)
    return charts.HeatCell(
        charts.ramp(charts.DIVERGING, share if higher else 1 - share), f"{diff:+.4f}", cell["status"], _detail(cell)
    )


def _detail(cell: dict) -> str:
    counts = f"{cell['rows']:,} rows, {cell['positives']:,} positives"
    return f"{cell['scenario']} / {cell['task']}: {counts} — {cell['reason']}"


def _number(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


CELL_COLUMNS = ("scenario", "task", "rows", "positives", "challenger", "champion", "diff [95% CI]", "p",
                "p Holm", "status", "reason")  # fmt: skip


def _interval(cell: dict) -> str:
    """`+0.0023 [-0.0002, +0.0046]`, or a dash without a comparison."""
    if cell["diff"] is None:
        return "–"
    return f"{_number(cell['diff'], True)} [{_number(cell['ci_low'], True)}, {_number(cell['ci_high'], True)}]"


def _cells_table(gate: dict) -> str:
    """The gate's matrix in numbers; p and Holm-adjusted p where the report has them (not before Holm)."""
    rows = []
    for c in gate["cells"]:
        values = (f"{c['rows']:,}", f"{c['positives']:,}", _number(c["challenger"]), _number(c["champion"]),
                  _interval(c), _number(c.get("p_value")), _number(c.get("p_holm")))  # fmt: skip
        cells = "".join(f"<td class='num'>{v}</td>" for v in values)
        rows.append(f"<tr><td>{escape(c['scenario'])}</td><td>{escape(c['task'])}</td>{cells}"
                    f"<td>{_badge(c['status'], c['status'])}</td><td>{escape(c['reason'])}</td></tr>")  # fmt: skip
    header = "".join(f"<th>{escape(h)}</th>" for h in CELL_COLUMNS)
    return f"<table><tr>{header}</tr>{''.join(rows)}</table>"


def _forest_section(facts: Facts) -> str:
    gate = facts.gate
    head = '<section id="forest"><h2>Challenger − champion, with 95% intervals</h2>'
    if gate is None:
        return head + '<p class="muted">No gate decision: nothing to compare.</p></section>'
    if gate["first_run"]:
        return head + (
            '<p class="muted">First run: there is no champion to compare with, so there is nothing to '
            "plot. The gate held each cell to the AUC floor only.</p></section>"
        )
    metric = gate.get("metric", "auc")
    higher = HIGHER_IS_BETTER.get(metric, True)
    rows = [
        charts.ForestRow(
            f"{c['scenario']} / {c['task']}",
            c["diff"],
            c["ci_low"],
            c["ci_high"],
            c["status"],
            f"{_interval(c)} {c['status']}"
            if c["diff"] is not None
            else f"no comparison — {c['status']}: {c['reason']}",
        )
        for c in gate["cells"]
    ]
    tolerance = gate.get("rules", {}).get("max_drop", 0.0)
    plot = charts.forest_plot(rows, tolerance, f"challenger − champion {metric} per cell", worse=-1 if higher else 1)
    legend = "".join(
        f'<span><span class="swatch" style="border-color:{colour}"></span>{status}</span>'
        for status, colour in charts.STATUS_COLOURS.items()
    )
    return (
        head + _earlier_note(facts) + f'<p class="muted">Paired bootstrap over requests on the held-out rows; the '
        f"shaded band is a loss beyond the tolerance ({tolerance:g}). A cell fails only when its loss is both "
        "beyond the tolerance and significant by the gate's test; each cell's reason in the gate matrix says which."
        f'</p><div class="legend-row">{legend}</div>{plot}</section>'
    )


def _history_section(facts: Facts) -> str:
    head = f'<section id="history"><h2>{escape(_metric_name(facts))} over the last judged days</h2>'
    if not facts.history:
        return head + '<p class="muted">No gate report is stored yet.</p></section>'
    days = [report["eval_ds"] for report in facts.history]
    latest = facts.history[-1]
    scenarios, tasks, _ = _cells(latest)
    by_day = [{(c["scenario"], c["task"]): c for c in report["cells"]} for report in facts.history]
    chart_list = []
    for scenario in scenarios:
        for task in tasks:
            cells = [day.get((scenario, task), {}) for day in by_day]
            series = [
                charts.Series("challenger", [c.get("challenger") for c in cells], CHALLENGER),
                charts.Series("champion", [c.get("champion") for c in cells], CHAMPION, dashed=True),
            ]
            chart_list.append(charts.line_chart(days, series, f"{scenario} / {task}", highlight=facts.sample_ds))
    legend = (
        f'<div class="legend-row"><span><span class="swatch" style="border-color:{CHALLENGER}"></span>challenger '
        f'(the day\'s new model)</span><span><span class="swatch dashed" style="border-color:{CHAMPION}"></span>'
        "champion it was judged against</span><span>yellow: the held-out day of this run</span></div>"
    )
    return (
        head + f'<p class="muted">{len(days)} judged day(s), {escape(days[0])} to {escape(days[-1])}, from the stored '
        f'gate reports (x: held-out day).</p>{legend}<div class="charts">{"".join(chart_list)}</div></section>'
    )


def _metric_name(facts: Facts) -> str:
    metric = (facts.gate or (facts.history[-1] if facts.history else {})).get("metric", "auc")
    return metric.upper() if metric == "auc" else metric


SUITE_NAMES = {"raw": "raw logs", "samples": "samples"}


def _check_badge(check: Check) -> str:
    if check.result is None:
        return _badge("not stored", "skipped")
    return _badge("passed", "pass") if check.result.get("success") else _badge("failed", "fail")


def _checks_section(facts: Facts) -> str:
    rows, details = [], []
    for check in facts.checks:
        result = check.result or {}
        stats = result.get("statistics", {})
        met = f"{stats.get('successful_expectations', 0)} of {stats.get('evaluated_expectations', 0)}" if stats else "–"
        earlier = " <span class='muted'>(stored by an earlier run)</span>" if check.earlier and check.result else ""
        rows.append(
            f"<tr><td>{SUITE_NAMES[check.suite]}</td><td>{escape(check.day)}</td>"
            f"<td>{_check_badge(check)}{earlier}</td><td class='num'>{met}</td>"
            f"<td class='num'>{len(result.get('failed', []))}</td></tr>"
        )
        details.append(_check_details(check))
    table = (
        "<table><tr><th>suite</th><th>day</th><th>result</th><th>expectations met</th><th>failures</th></tr>"
        + "".join(rows)
        + "</table>"
    )
    sample = facts.checks[-1].result or {}
    quarantine = _quarantine_table(sample.get("quarantine"))
    return (
        '<section id="checks"><h2>Data checks and quarantine</h2><p class="muted">Great Expectations results stored '
        f"in the lake (<code>checks/&lt;suite&gt;/ds=….json</code>) for the raw days the held-out day reads and for "
        f"its samples.</p>{table}<h3>Quarantine of the held-out day {escape(facts.sample_ds)}</h3>{quarantine}"
        + "".join(details)
        + "</section>"
    )


def _check_details(check: Check) -> str:
    """Failures, notes and per-scenario volumes of one stored check; failures open, the rest folded."""
    result = check.result
    if result is None:
        return ""
    title = f"{SUITE_NAMES[check.suite]} ds={check.day}"
    failed = "".join(f"<li>{escape(line)}</li>" for line in result.get("failed", []))
    notes = "".join(f"<li>{escape(line)}</li>" for line in result.get("notes", []))
    summary = _records_table(result.get("summary", []))
    body = (f'<ul class="failures">{failed}</ul>' if failed else "") + (f"<ul>{notes}</ul>" if notes else "")
    return (
        f"<details{' open' if failed else ''}><summary>{escape(title)}: {len(result.get('failed', []))} failure(s), "
        f"{len(result.get('notes', []))} note(s), per-scenario volume</summary>{body}{summary}</details>"
    )


def _quarantine_table(shares: list[dict] | None) -> str:
    if not shares:
        return '<p class="muted">No quarantine counts stored (the samples check did not get that far).</p>'
    rows = "".join(
        f"<tr><td>{escape(s['table'])}</td><td class='num'>{s['raw_rows']:,}</td>"
        f"<td class='num'>{s['quarantined']:,}</td><td class='num'>{s['share']:.2%}</td>"
        f"<td>{escape(', '.join(f'{reason} {n:,}' for reason, n in s['reasons'].items()) or '–')}</td></tr>"
        for s in shares
    )
    return (
        "<table><tr><th>raw table</th><th>raw rows</th><th>quarantined</th><th>bounded share</th>"
        f"<th>reasons</th></tr>{rows}</table>"
    )


def _records_table(records: list[dict]) -> str:
    """A list of flat records (a check's per-scenario summary) as a table; numbers right-aligned."""
    if not records:
        return ""
    columns = list(dict.fromkeys(key for record in records for key in record))
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_value_cell(record.get(c)) for c in columns) + "</tr>" for record in records)
    return f"<table><tr>{head}</tr>{body}</table>"


def _value_cell(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"<td>{escape('–' if value is None else str(value))}</td>"
    text = f"{value:,}" if isinstance(value, int) or float(value).is_integer() else f"{value:.4g}"
    return f"<td class='num'>{text}</td>"


def _lineage_section(facts: Facts) -> str:
    run = facts.run
    return (
        '<section id="lineage"><h2>Lineage</h2>'
        + _partitions_table(facts)
        + _code_and_contract(facts)
        + (
            _model_table(facts)
            if run
            else f'<p class="muted">No MLflow run trained a challenger for held-out day {escape(facts.sample_ds)}.</p>'
        )
        + "</section>"
    )


def _row(*cells: str) -> str:
    return "<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"


def _partitions_table(facts: Facts) -> str:
    """The inputs: the training set, sample days and raw days, each with the content digest recorded when it
    was read (training for the training set, the data checks for the partitions)."""
    rows = []
    for dataset in (facts.run or {}).get("datasets", []):
        rows.append(
            _row(
                "training set",
                f"<code>{escape(dataset['source'])}</code>",
                f"digest <code>{escape(dataset['digest'])}</code>",
            )
        )
    params = (facts.run or {}).get("params", {})
    if params.get("train_rows"):
        rows.append(_row("training rows", escape(params.get("train_days", "")), f"{int(params['train_rows']):,} rows"))
    if params.get("eval_rows"):
        rows.append(_row("held-out rows", escape(params.get("eval_ds", "")), f"{int(params['eval_rows']):,} rows"))
    for check in [*facts.train_checks, facts.checks[-1], *facts.checks[:-1]]:
        where = "<br>".join(f"<code>{escape(uri)}</code>" for uri in check.partitions)
        digests = (check.result or {}).get("digests", {})  # as the check read them
        read = "<br>".join(f"digest <code>{escape(digests[uri])}</code>" for uri in check.partitions if uri in digests)
        identity = f"{check.suite} check {_check_badge(check)}" + (f"<br>{read}" if read else "")
        rows.append(_row(f"{check.suite} ds={escape(check.day)}", where, identity))
    return (
        "<h3>Input partitions</h3><table><tr><th>input</th><th>where</th><th>identity</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _code_and_contract(facts: Facts) -> str:
    tags = (facts.run or {}).get("tags", {})
    rows = [
        _row(
            "code (git commit)",
            f"<code>{escape(facts.code)}</code> <span class='muted'>(the checkout that built this report)</span>",
        )
    ]
    if "mlflow.source.git.commit" in tags:
        rows.append(_row("code (training run)", f"<code>{escape(tags['mlflow.source.git.commit'])}</code>"))
    contract = facts.contract
    if "error" in contract:
        rows.append(
            _row(
                "data contract",
                f"{_badge('invalid', 'fail')} <code>{escape(contract['source'])}</code>: {escape(contract['error'])}",
            )
        )
    else:
        trained = (facts.run or {}).get("params", {}).get("contract.digest")
        same = (
            ""
            if trained in (None, contract["digest"])
            else (f" {_badge('differs from the training run', 'fail')} (trained under <code>{escape(trained)}</code>)")
        )
        rows.append(
            _row(
                "data contract",
                f"{escape(contract['name'])} v{contract['version']} · digest "
                f"<code>{escape(contract['digest'])}</code>{same} · <code>{escape(contract['source'])}</code>",
            )
        )
    return "<h3>Code and data contract</h3><table>" + "".join(rows) + "</table>"


def _model_table(facts: Facts) -> str:
    """The challenger: its MLflow run, registered version, and the model config it was trained with."""
    run = facts.run
    params, tags = run["params"], run["tags"]
    version = (facts.gate or {}).get("challenger_version") if not facts.gate_earlier else None
    aliases = ", ".join(facts.version.get("aliases", [])) if version else ""
    rows = [
        _row(
            "MLflow run",
            f"<code>{escape(run['run_id'])}</code> {escape(run['name'] or '')} · {escape(run['status'])}"
            f" · started {escape(run['started'])}",
        ),
        _row(
            "model",
            f"{escape(params.get('model', '?'))} · hparams version {escape(params.get('hparams.version', '?'))}"
            f" · device {escape(tags.get('msmt.device', '?'))} × {escape(tags.get('msmt.train_workers', '?'))}",
        ),
    ]
    if version:
        rows.append(
            _row(
                "registered version",
                f"{label(version)}" + (f" · aliases: {escape(aliases)}" if aliases else ""),
            )
        )
    config = sorted((key.removeprefix("model."), value) for key, value in params.items() if key.startswith("model."))
    train = sorted((key.removeprefix("train."), value) for key, value in params.items() if key.startswith("train."))
    return (
        "<h3>Model</h3><table>"
        + "".join(rows)
        + "</table><h3>Model config</h3><table><tr><th>field</th><th>value</th></tr>"
        + "".join(_row(escape(k), f"<code>{escape(v)}</code>") for k, v in config)
        + "</table><details><summary>Trainer config</summary><table>"
        + "".join(_row(escape(k), f"<code>{escape(v)}</code>") for k, v in train)
        + "</table></details>"
    )


# --- writing -------------------------------------------------------------------------------------


def build_report(settings: Settings, ds: str, run_states: dict[str, str] | None = None) -> str:
    """The HTML report of the run for day `ds` (see the module docstring)."""
    return render(gather(settings, ds, run_states))


def write_report(settings: Settings, ds: str, run_states: dict[str, str] | None = None) -> str:
    """Write the report to `lake.report(settings, ds)` and log it to the run's challenger MLflow run; its URI.

    The challenger run is the day's newest, when this run trained it (or, outside
    the DAG, when there is one): a re-run that stopped before training does not
    overwrite the report an earlier run left on its own challenger.
    """
    facts = gather(settings, ds, run_states)
    html = render(facts)
    uri = lake.report(settings, ds)
    storage.write_bytes(settings, uri, html.encode())
    trained_here = run_states is None or str(run_states.get("train_model")) == "success"
    if facts.run is not None and trained_here:
        from mlflow import MlflowClient

        MlflowClient().log_text(facts.run["run_id"], html, f"report/msmt-report-{ds}.html")
    log.info("report of %s -> %s", ds, uri)
    return uri
