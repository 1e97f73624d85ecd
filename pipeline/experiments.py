"""`msmt experiment`: replay a challenger over past days against a baseline, and never promote.

    from pipeline import experiments
    exp = experiments.plan(settings, "hinet", "2026-01-05", "2026-01-08", baseline="model=mmoe")
    days = [experiments.replay_day(settings, exp, ds) for ds in exp["days"]]
    summary = experiments.summarize(settings, exp, days)   # verdict per scenario × task across days

The `msmt_experiment` DAG runs exactly these three steps (one mapped task per day), so every
experiment is a DAG run in Airflow, with its conf. In MLflow it is a parent run (tags
`msmt.kind=experiment`, `msmt.experiment=<name>`) with one child run per day (and per day one
baseline child when the baseline is another model). Replayed models register under
`<registered_model>_experiments`: the champion's registered model never sees them.

Each day compares challenger and baseline on that day's held-out rows with the gate's paired
bootstrap (`training.gate.decide`, the profile's rules). Across days a cell's daily differences are
pooled by inverse variance (each day's standard error read off its 95% interval; the days are
independent samples): the pooled interval decides the verdict — `better` above 0, `worse` below,
`tie` across — beside the count of days won, lost and tied.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from msmt import lake, storage
from msmt.errors import StopRun
from msmt.settings import Settings
from pipeline import steps
from pipeline.steps import plan_day, samples_checked

log = logging.getLogger("msmt.experiments")

KIND_TAG, NAME_TAG = "msmt.kind", "msmt.experiment"
Z95 = 1.959964  # a 95% normal interval's half-width in standard errors


class ExperimentError(StopRun):
    """An experiment that cannot run as asked (unknown baseline, days not built); the message says what to do."""


@dataclass(frozen=True)
class Baseline:
    """What the challenger is compared with: the champion as the experiment starts, a registered
    version, or another zoo model trained on the same days."""

    kind: str  # champion | version | model
    value: str = ""

    @classmethod
    def parse(cls, text: str) -> Baseline:
        kind, _, value = text.partition("=")
        if (kind == "champion" and not value) or (kind in ("version", "model") and value):
            return cls(kind, value)
        raise ExperimentError(f"baseline {text!r}: use champion, version=N or model=NAME")

    @property
    def label(self) -> str:
        return self.kind if self.kind == "champion" else f"{self.kind}={self.value}"


def registry_name(settings: Settings) -> str:
    """Where replayed models register: beside the champion's registered model, never in it."""
    return f"{settings.registered_model}_experiments"


def plan(
    settings: Settings,
    model: str,
    first: str,
    last: str,
    overrides: dict | None = None,
    baseline: str = "champion",
    name: str | None = None,
) -> dict:
    """Check everything a replay needs before any training, then open the experiment's parent MLflow run.

    The days' samples must have been built and checked (a daily run or `msmt backfill` did that):
    an experiment compares models on data, it does not make the data."""
    import mlflow

    from training.catalog import model_names
    from training.hparams import check_overrides
    from training.promotion import current_champion, trained_on_held_out
    from training.tracking import configure_mlflow

    if first > last:
        raise ExperimentError(f"--from {first} is after --to {last}")
    chosen = Baseline.parse(baseline)
    for candidate in (model, chosen.value if chosen.kind == "model" else model):
        if candidate not in model_names():
            raise ExperimentError(f"unknown model {candidate!r}; the zoo has {', '.join(model_names())}")
    check_overrides(model, overrides or {})
    days = lake.days_between(first, (lake.day(last) - lake.day(first)).days + 1)
    plans = [plan_day(settings, ds, model=model, overrides=overrides, promote=False) for ds in days]
    missing = sorted({d for p in plans for d in p.feature_days if not samples_checked(settings, d)})
    if missing:
        raise ExperimentError(
            f"samples of {', '.join(missing)} were never built and checked; build them first: "
            f"msmt backfill --from {lake.shift(missing[0], settings.attribution_window_days)} "
            f"--to {lake.shift(missing[-1], settings.attribution_window_days)}"
        )
    configure_mlflow(settings)
    version = _baseline_version(settings, chosen, current_champion(settings))
    client = mlflow.MlflowClient()
    seen = trained_on_held_out(client, settings.registered_model, version, [p.sample_ds for p in plans])
    if seen:
        raise ExperimentError(
            f"baseline {chosen.label}: {seen}; replay days after its training, or compare with "
            "--baseline model=NAME (trained on each day's own past, as the challenger is)"
        )
    name = name or f"{model}-vs-{chosen.label}-{first}..{last}"
    tags = {KIND_TAG: "experiment", NAME_TAG: name, "msmt.model": model, "msmt.baseline": chosen.label}
    experiment_id = mlflow.set_experiment(settings.experiment).experiment_id
    run = client.create_run(experiment_id, run_name=f"experiment {name}", tags=tags)
    params = {"model": model, "baseline": chosen.label, "baseline.version": version or "-", "from": first, "to": last}
    for key, value in {**params, **{f"override.{k}": v for k, v in (overrides or {}).items()}}.items():
        client.log_param(run.info.run_id, key, value)
    log.info("experiment %s: %s over %s..%s against %s (MLflow run %s)", name, model, first, last, chosen.label,
             run.info.run_id)  # fmt: skip
    return {
        "name": name,
        "parent_run_id": run.info.run_id,
        "model": model,
        "overrides": dict(overrides or {}),
        "days": days,
        "baseline": {**asdict(chosen), "label": chosen.label, "version": version},
    }


def _baseline_version(settings: Settings, baseline: Baseline, champion: str | None) -> str | None:
    """The registered version a champion / version baseline scores with (a model baseline trains its own)."""
    import mlflow

    if baseline.kind == "model":
        return None
    if baseline.kind == "champion":
        if champion is None:
            raise ExperimentError(
                f"{settings.registered_model} has no champion yet: compare with --baseline model=mmoe or version=N"
            )
        return champion
    try:
        mlflow.MlflowClient().get_model_version(settings.registered_model, baseline.value)
    except mlflow.exceptions.MlflowException:
        raise ExperimentError(f"{settings.registered_model} has no version {baseline.value}") from None
    return baseline.value


def replay_day(settings: Settings, experiment: dict, ds: str) -> dict:
    """Train the challenger for run day `ds` as that day's daily run would, and compare it with the
    baseline on the day's held-out rows; both MLflow runs are children of the experiment's run."""
    import mlflow

    from training.data import read_held_out
    from training.gate import decide
    from training.promotion import gate_rules, score_model
    from training.train import train_model

    name, parent = experiment["name"], experiment["parent_run_id"]
    day = plan_day(settings, ds, model=experiment["model"], overrides=experiment["overrides"], promote=False)
    training_set = steps.build_training_set(settings, day)
    tags = {NAME_TAG: name, KIND_TAG: "replay"}

    def train(model: str, overrides: dict, role: str) -> dict:
        return train_model(settings, training_set, day.sample_ds, model, overrides, run_name=f"{name} {ds} {role}",
                           registered_model=registry_name(settings), parent_run_id=parent,
                           tags={**tags, "msmt.role": role})  # fmt: skip

    challenger = train(day.model, day.overrides, "challenger")
    baseline = experiment["baseline"]
    if baseline["kind"] == "model":
        baseline_uri = train(baseline["value"], {}, "baseline")["model_uri"]
    else:
        baseline_uri = f"models:/{settings.registered_model}/{baseline['version']}"
    held_out = read_held_out(settings, training_set, day.sample_ds)
    challenger_probs, data = score_model(challenger["model_uri"], held_out)
    baseline_probs = score_model(baseline_uri, held_out)[0]
    arrays = (data.labels.numpy(), data.label_mask.numpy(), data.scenario.numpy(), data.group.numpy())
    decision = decide(challenger_probs, baseline_probs, *arrays, settings.scenarios, settings.tasks,
                      gate_rules(settings))  # fmt: skip
    result = {
        "ds": ds,
        "eval_ds": day.sample_ds,
        "challenger": challenger["model_uri"],
        "baseline": baseline_uri,
        "run_id": challenger["run_id"],
        "metric": decision.metric,
        "cells": decision.cells,
    }
    mlflow.MlflowClient().log_dict(challenger["run_id"], result, "experiment/comparison.json")
    print(f"experiment {name}, day {ds} (held out {day.sample_ds}) against {baseline_uri}\n{decision.format_matrix()}")
    return result


def pooled(diffs: Sequence[tuple[float, float, float]]) -> tuple[float, float, float]:
    """Inverse-variance pooling of independent days' (diff, low, high): the pooled diff and its 95% interval.

    A day whose interval has no width (identical scores) weighs as much as the narrowest other day."""
    ses = [(high - low) / (2 * Z95) for _, low, high in diffs]
    floor = min((se for se in ses if se > 0), default=1.0)
    weights = [1 / max(se, floor) ** 2 for se in ses]
    total = sum(weights)
    mean = sum(w * d for w, (d, _, _) in zip(weights, diffs, strict=True)) / total
    half = Z95 / math.sqrt(total)
    return mean, mean - half, mean + half


def verdicts(days: Sequence[dict], higher_is_better: bool = True) -> list[dict]:
    """Per scenario × task across `days` (replay_day results): days won / lost / tied (the day's paired
    interval above / below / across 0), the pooled difference with its interval, and the verdict."""
    sign = 1 if higher_is_better else -1
    cells: dict[tuple[str, str], list[dict]] = {}
    for day in days:
        for cell in day["cells"]:
            cells.setdefault((cell["scenario"], cell["task"]), []).append({**cell, "ds": day["ds"]})
    out = []
    for (scenario, task), per_day in cells.items():
        compared = [c for c in per_day if c["diff"] is not None and c["ci_low"] is not None]
        gains = [_gain(c["ci_low"], c["ci_high"], sign) for c in compared]
        wins, losses = sum(low > 0 for low, _ in gains), sum(high < 0 for _, high in gains)
        row = {"scenario": scenario, "task": task, "days": len(compared), "wins": wins, "losses": losses,
               "ties": len(compared) - wins - losses, "diff": None, "low": None, "high": None}  # fmt: skip
        if compared:
            row["diff"], row["low"], row["high"] = pooled([(c["diff"], c["ci_low"], c["ci_high"]) for c in compared])
            gain_low, gain_high = _gain(row["low"], row["high"], sign)
            row["verdict"] = "better" if gain_low > 0 else "worse" if gain_high < 0 else "tie"
        else:
            row["verdict"] = "not compared"
        out.append(row)
    return out


def _gain(low: float, high: float, sign: int) -> tuple[float, float]:
    """An interval of challenger − baseline as the challenger's gain (positive = better, whatever the metric)."""
    return tuple(sorted((sign * low, sign * high)))


def summarize(settings: Settings, experiment: dict, days: Sequence[dict]) -> dict:
    """The verdicts across days on the parent MLflow run (table, metrics, HTML report) and in the lake."""
    import mlflow

    from pipeline.experiment_report import render
    from training.evaluate import HIGHER_IS_BETTER

    if not days:
        raise ExperimentError(f"experiment {experiment['name']} replayed no day")
    days = sorted(days, key=lambda d: d["ds"])
    metric = days[0]["metric"]
    summary = {**experiment, "metric": metric, "per_day": list(days), "cells": verdicts(days, HIGHER_IS_BETTER[metric])}
    client, run_id = mlflow.MlflowClient(), experiment["parent_run_id"]
    client.log_dict(run_id, summary, "experiment/summary.json")
    for cell in summary["cells"]:
        key = f"{cell['scenario']}.{cell['task']}"
        if cell["diff"] is not None:
            client.log_metric(run_id, f"pooled_diff.{key}", cell["diff"])
        client.set_tag(run_id, f"verdict.{key}", cell["verdict"])
    html = render(summary)
    uri = lake.experiment_report(settings, experiment["name"])
    storage.write_bytes(settings, uri, html.encode())
    client.log_text(run_id, html, "experiment/report.html")
    client.set_terminated(run_id, "FINISHED")
    summary["report"] = uri
    print(table(summary))
    return summary


def table(summary: dict) -> str:
    """The verdicts as the terminal shows them."""
    header = ("scenario", "task", "days", "won", "lost", "tied", f"pooled {summary['metric']} diff [95% CI]", "verdict")
    rows = [
        (c["scenario"], c["task"], str(c["days"]), str(c["wins"]), str(c["losses"]), str(c["ties"]),
         "-" if c["diff"] is None else f"{c['diff']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}]", c["verdict"])
        for c in summary["cells"]
    ]  # fmt: skip
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    title = f"experiment {summary['name']}: {summary['model']} vs {summary['baseline']['label']}"
    lines = [title, *("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in (header, *rows))]
    return "\n".join(lines)
