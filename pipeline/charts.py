"""Hand-written SVG for the daily report: a heat map, a forest plot, a small line chart, a colour legend.

Each function returns one `<svg>` element as a string, to be inlined in an HTML
page: no script, no font or stylesheet to fetch, so the report opens the same
offline, attached to an e-mail or from an MLflow artifact. Text stays text
(selectable, searchable, and readable by a test through the DOM), and the parts
a reader or a test looks for carry a class and `data-*` attributes
(`heat-cell`, `forest-row`, `history-point`). Styling beyond geometry and colour
(fonts, sizes) comes from the page's CSS.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

# Colours of a cell's gate status, shared with the page's badges (report.STATUS_CSS).
STATUS_COLOURS = {"pass": "#1a7f37", "fail": "#cf222e", "advisory": "#6e7781"}
# ColorBrewer RdBu (11 classes, red = worse, blue = better): readable by the commonest colour blindness.
DIVERGING = ("#67001f", "#b2182b", "#d6604d", "#f4a582", "#fddbc7", "#f7f7f7",
             "#d1e5f0", "#92c5de", "#4393c3", "#2166ac", "#053061")  # fmt: skip
# ColorBrewer YlGnBu (9 classes) for a value on its own scale (a first run's challenger AUC).
SEQUENTIAL = ("#ffffd9", "#edf8b1", "#c7e9b4", "#7fcdbb", "#41b6c4", "#1d91c0", "#225ea8", "#253494", "#081d58")


def _rgb(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def ramp(palette: Sequence[str], share: float) -> str:
    """The colour at `share` (0…1, clipped) along `palette`, interpolated linearly in RGB."""
    share = min(max(share, 0.0), 1.0) * (len(palette) - 1)
    low = min(int(share), len(palette) - 2)
    start, end, t = _rgb(palette[low]), _rgb(palette[low + 1]), share - low
    return "#" + "".join(f"{round(a + (b - a) * t):02x}" for a, b in zip(start, end, strict=True))


def ink(fill: str) -> str:
    """Black or white text, whichever reads better on `fill` (relative luminance)."""
    red, green, blue = (c / 255 for c in _rgb(fill))
    return "#000" if 0.2126 * red + 0.7152 * green + 0.0722 * blue > 0.45 else "#fff"


def _number(value: float) -> str:
    """Coordinates with two decimals: enough for a screen, short enough to read the SVG."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _text(x: float, y: float, content: str, anchor: str = "start", css: str = "", extra: str = "") -> str:
    cls = f' class="{css}"' if css else ""
    return f'<text x="{_number(x)}" y="{_number(y)}" text-anchor="{anchor}"{cls}{extra}>{escape(content)}</text>'


def _fill(colour: str) -> str:
    """A text colour as an inline style: it must win over the page's CSS, which a `fill` attribute does not."""
    return f' style="fill:{colour}"'


def _svg(width: float, height: float, label: str, body: Sequence[str], css: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="{css}" width="{_number(width)}" height="{_number(height)}" '
        f'viewBox="0 0 {_number(width)} {_number(height)}" role="img" aria-label="{escape(label)}">'
        f"<title>{escape(label)}</title>{''.join(body)}</svg>"
    )


# --- heat map ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeatCell:
    """One scenario × task cell: its fill, the value written in it, its gate status and a tooltip."""

    fill: str
    value: str  # e.g. "+0.0023" or "0.7960"
    status: str  # pass / fail / advisory
    detail: str  # the tooltip: rows, positives, interval, the gate's reason


CELL_W, CELL_H, ROW_LABEL_W, HEADER_H = 140, 58, 120, 28
HATCH = (
    '<defs><pattern id="advisory-hatch" width="8" height="8" patternUnits="userSpaceOnUse" '
    'patternTransform="rotate(45)"><line x1="0" y1="0" x2="0" y2="8" stroke="#57606a" stroke-width="1.5" '
    'stroke-opacity="0.45"/></pattern></defs>'
)


def heat_map(rows: Sequence[str], columns: Sequence[str], cells: dict[tuple[str, str], HeatCell], label: str) -> str:
    """Rows × columns of filled cells, each with its value and status written in it.

    Advisory cells are hatched and failing cells outlined, so the status reads
    without colour too. A missing cell is drawn empty ("no cell").
    """
    width, height = ROW_LABEL_W + CELL_W * len(columns) + 2, HEADER_H + CELL_H * len(rows) + 2
    body = [HATCH]
    for j, column in enumerate(columns):
        body.append(_text(ROW_LABEL_W + CELL_W * (j + 0.5), HEADER_H - 9, column, "middle", "axis-label"))
    for i, row in enumerate(rows):
        y = HEADER_H + CELL_H * i
        body.append(_text(ROW_LABEL_W - 10, y + CELL_H / 2 + 4, row, "end", "axis-label"))
        for j, column in enumerate(columns):
            x, cell = ROW_LABEL_W + CELL_W * j, cells.get((row, column))
            body.append(_heat_cell(x, y, row, column, cell))
    return _svg(width, height, label, body, "heat-map")


def _heat_cell(x: float, y: float, row: str, column: str, cell: HeatCell | None) -> str:
    data = f'data-scenario="{escape(row)}" data-task="{escape(column)}"'
    box = f'x="{_number(x + 1)}" y="{_number(y + 1)}" width="{CELL_W - 2}" height="{CELL_H - 2}" rx="3"'
    if cell is None:
        return (f'<g class="heat-cell" {data} data-status="none"><rect {box} fill="#fff" stroke="#d0d7de"/>'
                f"{_text(x + CELL_W / 2, y + CELL_H / 2 + 4, 'no cell', 'middle', 'muted')}</g>")  # fmt: skip
    colour = ink(cell.fill)
    outline = ' stroke="#24292f" stroke-width="3"' if cell.status == "fail" else ' stroke="#fff"'
    hatch = f'<rect {box} fill="url(#advisory-hatch)"/>' if cell.status == "advisory" else ""
    return (
        f'<g class="heat-cell" {data} data-status="{escape(cell.status)}"><title>{escape(cell.detail)}</title>'
        f'<rect {box} fill="{cell.fill}"{outline}/>{hatch}'
        + _text(x + CELL_W / 2, y + CELL_H / 2 - 2, cell.value, "middle", "cell-value", _fill(colour))
        + _text(x + CELL_W / 2, y + CELL_H / 2 + 15, cell.status, "middle", "cell-status", _fill(colour))
        + "</g>"
    )


def colour_legend(
    palette: Sequence[str],
    low: float,
    high: float,
    ticks: dict[float, str],
    label: str,
    marks: dict[float, str] | None = None,
) -> str:
    """A horizontal colour bar from `low` to `high` with labelled `ticks` (value → text) under it, and
    `marks` (a threshold: the tolerance, the floor) on a second row, so their labels never collide."""
    width, bar_x, bar_w = 480, 40, 400
    gradient = "legend-" + "".join(c if c.isalnum() else "-" for c in label)
    stops = "".join(
        f'<stop offset="{_number(100 * i / (len(palette) - 1))}%" stop-color="{colour}"/>'
        for i, colour in enumerate(palette)
    )
    body = [
        f'<defs><linearGradient id="{gradient}">{stops}</linearGradient></defs>',
        _text(bar_x, 12, label, css="legend-title"),
        f'<rect x="{bar_x}" y="18" width="{bar_w}" height="12" fill="url(#{gradient})" stroke="#8c959f"/>',
    ]
    for value, text in ticks.items():
        x = bar_x + bar_w * (value - low) / (high - low)
        body.append(f'<line x1="{_number(x)}" y1="30" x2="{_number(x)}" y2="35" stroke="#57606a"/>')
        body.append(_text(x, 47, text, "middle", "tick"))
    for value, text in (marks or {}).items():
        x = bar_x + bar_w * (value - low) / (high - low)
        body.append(f'<line x1="{_number(x)}" y1="16" x2="{_number(x)}" y2="52" stroke="#24292f"/>')
        body.append(_text(x, 64, text, "middle", "tick"))
    return _svg(width, 70, label, body, "colour-legend")


# --- forest plot -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ForestRow:
    """One cell's challenger − champion difference and its 95% interval (all None: nothing to compare)."""

    label: str  # "scenario / task"
    diff: float | None
    low: float | None
    high: float | None
    status: str
    note: str  # written at the right: the interval in numbers, or why there is none


FOREST_LABEL_W, FOREST_PLOT_W, FOREST_NOTE_W, FOREST_ROW_H, FOREST_AXIS_H = 210, 420, 320, 24, 34
FOREST_PAD = 28  # room for the end ticks' labels inside the plot's columns


def forest_plot(rows: Sequence[ForestRow], tolerance: float, label: str, worse: int = -1) -> str:
    """Point and 95% interval per row on one symmetric axis around 0, the tolerated loss shaded.

    `worse` is the side of 0 where the challenger loses (-1 for AUC, +1 for
    logloss); the shaded band there is a loss larger than the gate tolerates, and
    a cell fails when its point lies in it and its whole interval on that side.
    """
    values = [abs(v) for r in rows for v in (r.diff, r.low, r.high) if v is not None and math.isfinite(v)]
    limit = _nice(max([*values, 2 * tolerance, 1e-3]) * 1.1)
    height = FOREST_AXIS_H + FOREST_ROW_H * len(rows) + 8
    width = FOREST_LABEL_W + FOREST_PLOT_W + FOREST_NOTE_W

    def x_of(value: float) -> float:
        return FOREST_LABEL_W + FOREST_PAD + (FOREST_PLOT_W - 2 * FOREST_PAD) * (value + limit) / (2 * limit)

    bottom = height - 6
    band = sorted((x_of(worse * tolerance), x_of(worse * limit)))
    body = [
        f'<rect x="{_number(band[0])}" y="{FOREST_AXIS_H - 4}" width="{_number(band[1] - band[0])}" '
        f'height="{_number(bottom - FOREST_AXIS_H + 4)}" fill="#ffebe9"><title>a loss beyond the tolerance '
        f"({tolerance:g})</title></rect>"
    ]
    for value in (-limit, -limit / 2, 0.0, limit / 2, limit):
        x = x_of(value)
        stroke = 'stroke="#57606a"' if value == 0 else 'stroke="#d0d7de" stroke-dasharray="3 3"'
        body.append(f'<line x1="{_number(x)}" y1="{FOREST_AXIS_H - 4}" x2="{_number(x)}" y2="{bottom}" {stroke}/>')
        body.append(_text(x, FOREST_AXIS_H - 10, f"{value:+.3f}" if value else "0", "middle", "tick"))
    body.append(_text(FOREST_LABEL_W + FOREST_PLOT_W + 12, FOREST_AXIS_H - 10, "diff [95% CI]", css="axis-label"))
    for i, row in enumerate(rows):
        y = FOREST_AXIS_H + FOREST_ROW_H * i + FOREST_ROW_H / 2
        body.append(_forest_row(row, y, x_of))
    return _svg(width, height, label, body, "forest-plot")


def _forest_row(row: ForestRow, y: float, x_of) -> str:
    colour = STATUS_COLOURS.get(row.status, "#57606a")
    parts = [
        f'<g class="forest-row" data-cell="{escape(row.label)}" data-status="{escape(row.status)}">',
        _text(FOREST_LABEL_W - 10, y + 4, row.label, "end", "axis-label"),
    ]
    if None not in (row.diff, row.low, row.high):
        low, high, mid = x_of(row.low), x_of(row.high), x_of(row.diff)
        parts.append(f'<line x1="{_number(low)}" y1="{_number(y)}" x2="{_number(high)}" y2="{_number(y)}" '
                     f'stroke="{colour}" stroke-width="2"/>')  # fmt: skip
        for end in (low, high):
            parts.append(f'<line x1="{_number(end)}" y1="{_number(y - 5)}" x2="{_number(end)}" '
                         f'y2="{_number(y + 5)}" stroke="{colour}" stroke-width="2"/>')  # fmt: skip
        parts.append(f'<rect x="{_number(mid - 5)}" y="{_number(y - 5)}" width="10" height="10" fill="{colour}"/>')
    note_x = FOREST_LABEL_W + FOREST_PLOT_W + 12
    parts.append(_text(note_x, y + 4, row.note, css="forest-note", extra=_fill(colour)))
    parts.append("</g>")
    return "".join(parts)


def _nice(value: float) -> float:
    """The next 1, 2, 2.5 or 5 × 10^k at or above `value`: axis limits a reader can read."""
    exponent = 10 ** math.floor(math.log10(value))
    return next(step * exponent for step in (1, 2, 2.5, 5, 10) if step * exponent >= value)


# --- line chart --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Series:
    """One line: a value per day (None: no value that day), drawn in `colour`, dashed or not."""

    name: str
    values: Sequence[float | None]
    colour: str
    dashed: bool = False


LINE_W, LINE_H, LINE_LEFT, LINE_RIGHT, LINE_TOP, LINE_BOTTOM = 300, 170, 48, 22, 26, 30


def line_chart(days: Sequence[str], series: Sequence[Series], title: str, highlight: str | None = None) -> str:
    """Values per day, one line per series, the y axis fitted to the values; `highlight` marks one day.

    A day without a value breaks its line (a gap, never a line drawn across it).
    Days are labelled by month-day; the first, the last and `highlight` always are.
    """
    points = [v for s in series for v in s.values if v is not None and math.isfinite(v)]
    low, high = (min(points), max(points)) if points else (0.5, 1.0)
    span = max(high - low, 0.02)
    low, high = low - span * 0.15, high + span * 0.15
    plot_w, plot_h = LINE_W - LINE_LEFT - LINE_RIGHT, LINE_H - LINE_TOP - LINE_BOTTOM

    def x_of(i: int) -> float:
        return LINE_LEFT + (plot_w * i / (len(days) - 1) if len(days) > 1 else plot_w / 2)

    def y_of(value: float) -> float:
        return LINE_TOP + plot_h * (high - value) / (high - low)

    body = [_text(LINE_LEFT, 15, title, css="chart-title")]
    for value in (low + span * 0.15, (low + high) / 2, high - span * 0.15):
        y = y_of(value)
        body.append(f'<line x1="{LINE_LEFT}" y1="{_number(y)}" x2="{LINE_W - LINE_RIGHT}" y2="{_number(y)}" '
                    'stroke="#eaeef2"/>')  # fmt: skip
        body.append(_text(LINE_LEFT - 5, y + 4, f"{value:.3f}", "end", "tick"))
    labelled = _labelled_days(days, highlight)
    for i, day in enumerate(days):
        if day == highlight:
            body.append(f'<rect x="{_number(x_of(i) - 7)}" y="{LINE_TOP}" width="14" height="{plot_h}" '
                        'fill="#fff8c5"/>')  # fmt: skip
        if i in labelled:
            body.append(_text(x_of(i), LINE_H - 12, day[5:], "middle", "tick"))
    body.append(f'<rect x="{LINE_LEFT}" y="{LINE_TOP}" width="{plot_w}" height="{plot_h}" fill="none" '
                'stroke="#d0d7de"/>')  # fmt: skip
    for s in series:
        body.extend(_polyline(s, days, x_of, y_of))
    return _svg(LINE_W, LINE_H, title, body, "line-chart")


def _labelled_days(days: Sequence[str], highlight: str | None) -> set[int]:
    """Indices of the days to label: about five, evenly spread, plus the ends and the highlighted day."""
    step = max(1, math.ceil(len(days) / 5))
    return {*range(0, len(days), step), len(days) - 1, *(i for i, d in enumerate(days) if d == highlight)}


def _polyline(series: Series, days: Sequence[str], x_of, y_of) -> list[str]:
    """The series as runs of consecutive defined values, one `<polyline>` each, plus a dot per value."""
    dash = ' stroke-dasharray="5 3"' if series.dashed else ""
    runs: list[list[tuple[float, float]]] = [[]]
    dots = []
    for i, value in enumerate(series.values):
        if value is None or not math.isfinite(value):
            runs.append([])
            continue
        point = (x_of(i), y_of(value))
        runs[-1].append(point)
        dots.append(
            f'<circle class="history-point" data-series="{escape(series.name)}" data-day="{escape(days[i])}" '
            f'cx="{_number(point[0])}" cy="{_number(point[1])}" r="3" fill="{series.colour}">'
            f"<title>{escape(f'{series.name} {days[i]}: {value:.4f}')}</title></circle>"
        )
    lines = [
        f'<polyline points="{" ".join(f"{_number(x)},{_number(y)}" for x, y in run)}" fill="none" '
        f'stroke="{series.colour}" stroke-width="2"{dash}/>'
        for run in runs
        if len(run) > 1
    ]
    return lines + dots
