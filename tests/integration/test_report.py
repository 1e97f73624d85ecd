"""The daily HTML report, built from a lake and an MLflow store holding three judged days, opened in
headless Chromium: it renders the gate matrix, the intervals and the history, offline."""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from msmt import lake, storage
from msmt.settings import Settings
from pipeline.cli import app
from pipeline.report import build_report, write_report
from training.gate import GateRules, decide

pytestmark = pytest.mark.integration

HELD_OUT = ("2026-03-03", "2026-03-04", "2026-03-05")  # three judged days; each run day is 2 days later
RUN_DS = lake.shift(HELD_OUT[-1], 2)
ROWS = {"homefeed": 3000, "search": 2000, "detail_page": 1500, "mini_app": 300}  # mini_app: advisory (< 500 rows)
DIGEST = hashlib.blake2b(b"training set", digest_size=16).hexdigest()
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


def _gate_report(settings: Settings, day: int, rng: np.random.Generator) -> dict:
    """A stored gate report as training.promotion writes it: the real `decide` on synthetic scores.

    Day 0 is a first run; on day 2 the challenger is much worse on search / conversion (a failing cell).
    """
    scenario = np.concatenate([np.full(n, i) for i, n in enumerate(ROWS.values())])
    labels = (rng.random((len(scenario), 2)) < [0.2, 0.1]).astype(np.float64)

    def scores(strength: np.ndarray) -> np.ndarray:
        return 1 / (1 + np.exp(-(strength * (labels - 0.5) + rng.normal(0, 1, labels.shape))))

    champion_strength = np.full(labels.shape, 1.5)
    challenger_strength = champion_strength + 0.1 * day
    if day == 2:
        challenger_strength[scenario == 1, 1] = 0.2
    decision = decide(
        scores(challenger_strength),
        None if day == 0 else scores(champion_strength),
        labels,
        np.ones_like(labels),
        scenario,
        np.arange(len(scenario)),
        settings.scenarios,
        settings.tasks,
        GateRules(n_boot=200),
    )
    versions = {"challenger_version": str(day + 1), "champion_version": None if day == 0 else str(day)}
    return {**decision.to_dict(), **versions, "eval_ds": HELD_OUT[day]}


def _check(suite: str, ds: str) -> dict:
    """A stored Great Expectations result in data_checks.suites' shape (`_Run.finish`)."""
    summary = [{"scenario": s, "rows": n * 10, "trailing_rows": n * 9.8, "volume_ratio": 1.02} for s, n in ROWS.items()]
    result = {
        "suite": suite,
        "ds": ds,
        "success": True,
        "failed": [],
        "notes": ["drift not bounded for mini_app: fewer than 1000 rows a day on the trailing days"],
        "statistics": {"evaluated_expectations": 23, "successful_expectations": 23, "unsuccessful_expectations": 0},
        "summary": summary,
        "expectations": [{"batch": suite, "expectation": "expect_table_columns_to_match_set", "kwargs": {},
                          "success": True, "result": {}, "exception": None, "failures": []}],
    }  # fmt: skip
    if suite == "samples":
        result["quarantine"] = [
            {"table": "impressions", "raw_rows": 100_000, "quarantined": 210, "share": 0.0021,
             "reasons": {"bad_position": 60, "null_key": 50, "ts_outside_day": 100}},
            {"table": "clicks", "raw_rows": 7_000, "quarantined": 98, "share": 0.014,
             "reasons": {"duplicate_click": 80, "orphan_click": 18}},
            {"table": "conversions", "raw_rows": 900, "quarantined": 70, "share": 0.0011,
             "reasons": {"after_attribution_window": 69, "no_matching_click": 1}},
        ]  # fmt: skip
    return result


def _train_run(settings: Settings, eval_ds: str) -> str:
    """An MLflow run with what training.train logs for the report: params, tags, the training-set input."""
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    uri = lake.training_set(settings, eval_ds)
    train_days = lake.days_between(lake.shift(eval_ds, -3), 3)
    with mlflow.start_run(run_name=f"mmoe-{lake.shift(eval_ds, 2)}") as run:
        mlflow.set_tags({"msmt.model": "mmoe", "msmt.eval_ds": eval_ds, "msmt.device": "cpu",
                         "msmt.train_workers": "1"})  # fmt: skip
        mlflow.log_params({
            "model": "mmoe", "hparams.version": "1", "model.n_experts": 4, "model.emb_dim": 16,
            "model.expert_dims": "(128, 64)", "train.epochs": 2, "train.lr": 0.002,
            "train_days": ",".join(train_days), "train_rows": 21_000, "eval_ds": eval_ds, "eval_rows": 6_800,
            "training_set_uri": uri, "contract": settings.data_contract.name,
            "contract.digest": settings.data_contract.digest,
        })  # fmt: skip
        mlflow.log_input(MetaDataset(resolve_dataset_source(uri), name="training_set", digest=DIGEST), "training")
    return run.info.run_id


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    """A lake and an MLflow store (file store: seconds, not a SQLite migration) after three judged days."""
    import mlflow

    from training.tracking import configure_mlflow

    home = tmp_path_factory.mktemp("report") / "msmt"
    settings = Settings(home=home, mlflow_tracking_uri=(home / "mlruns").as_uri())
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        configure_mlflow(settings)
        client = mlflow.MlflowClient()
        client.create_registered_model(settings.registered_model)
        rng = np.random.default_rng(0)
        for day, eval_ds in enumerate(HELD_OUT):
            run_id = _train_run(settings, eval_ds)
            version = client.create_model_version(settings.registered_model, f"runs:/{run_id}/model", run_id).version
            report = _gate_report(settings, day, rng) | {"run_id": run_id}
            storage.write_json(settings, lake.gate_report(settings, eval_ds), report)
            if report["passed"]:
                client.set_model_version_tag(settings.registered_model, version, "champion.assigned", "{}")
                client.set_registered_model_alias(settings.registered_model, "champion", version)
        last = lake.shift(HELD_OUT[-1], -3)
        for day in lake.days_between(last, 3 + 1):
            storage.write_json(settings, lake.check_result(settings, "samples", day), _check("samples", day))
        for day in lake.days_between(HELD_OUT[-1], 3):
            digests = {lake.raw(settings, t, day): f"{t}-{day}-digest" for t in lake.RAW_TABLES}  # as check_raw read
            storage.write_json(
                settings, lake.check_result(settings, "raw", day), _check("raw", day) | {"digests": digests}
            )
        yield settings


class _Elements(HTMLParser):
    """The attributes of every element carrying one of `classes` in a DOM, by class."""

    def __init__(self, classes: set[str]) -> None:
        super().__init__()
        self.found: dict[str, list[dict]] = {name: [] for name in classes}

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attributes = dict(attrs)
        for name in set((attributes.get("class") or "").split()) & set(self.found):
            self.found[name].append(attributes)


def _chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail(
            "chromium is not installed: the report test opens the HTML in headless Chromium. "
            "`make test` installs it (as root: apt-get install -y --no-install-recommends chromium)"
        )
    return path


def _open(page: Path, *args: str) -> subprocess.CompletedProcess:
    profile = page.parent / "chromium-profile"
    command = [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)


def test_the_report_renders_in_headless_chromium(judged, tmp_path):
    import mlflow
    from PIL import Image

    uri = write_report(judged, RUN_DS)
    assert uri == lake.report(judged, RUN_DS)
    page = tmp_path / "report.html"
    page.write_bytes(storage.read_bytes(judged, uri))
    html = page.read_text()
    assert "<script" not in html and "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in html  # self-contained: nothing to fetch

    dom = _Elements({"heat-cell", "forest-row", "history-point", "verdict"})
    dom.feed(_open(page, "--dump-dom").stdout)
    cells = {(c["data-scenario"], c["data-task"]): c["data-status"] for c in dom.found["heat-cell"]}
    assert set(cells) == {(s, t) for s in judged.scenarios for t in judged.tasks}
    assert cells["search", "conversion"] == "fail" and cells["mini_app", "click"] == "advisory"
    rows = {r["data-cell"]: r["data-status"] for r in dom.found["forest-row"]}
    assert set(rows) == {f"{s} / {t}" for s in judged.scenarios for t in judged.tasks}
    assert {p["data-day"] for p in dom.found["history-point"]} == set(HELD_OUT)
    assert dom.found["verdict"]

    shot = tmp_path / "report.png"
    _open(page, f"--screenshot={shot}", "--window-size=1280,1800", "--hide-scrollbars")
    image = Image.open(io.BytesIO(shot.read_bytes())).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50, "the screenshot is blank"
    saturated = [rgb for _, rgb in colours if max(rgb) - min(rgb) > 120]
    assert saturated, "no coloured pixel: the heat map and the verdict did not paint"

    run_id = storage.read_json(judged, lake.gate_report(judged, HELD_OUT[-1]))["run_id"]
    logged = mlflow.artifacts.load_text(f"runs:/{run_id}/report/msmt-report-{RUN_DS}.html")
    assert logged == html


def test_the_report_says_what_it_knows_and_what_it_does_not(judged):
    page = build_report(judged, RUN_DS)
    assert "REJECTED · challenger v3 (mmoe) vs champion v2" in page
    assert DIGEST in page and judged.data_contract.digest in page and "n_experts" in page
    assert all(f"{t}-{HELD_OUT[-1]}-digest" in page for t in lake.RAW_TABLES)  # each raw partition's digest
    assert "search/conversion fail" in page and "bad_position 60" in page

    first = build_report(judged, lake.shift(HELD_OUT[0], 2))
    assert "PASSED · challenger v1 (mmoe) vs first run, no champion" in first
    assert "nothing to plot" in first

    stopped = {"plan_day": "success", "check_raw_logs": "failed", "evaluate_model": "upstream_failed"}
    page = build_report(judged, RUN_DS, stopped)
    assert "STOPPED: check_raw_logs failed before a gate decision" in page
    assert "From an earlier run of this day" in page


def test_a_rerun_that_trained_nothing_keeps_the_challengers_report(judged):
    import mlflow

    write_report(judged, RUN_DS)
    write_report(judged, RUN_DS, {"check_raw_logs": "failed", "train_model": "upstream_failed"})
    run_id = storage.read_json(judged, lake.gate_report(judged, HELD_OUT[-1]))["run_id"]
    assert "REJECTED" in mlflow.artifacts.load_text(f"runs:/{run_id}/report/msmt-report-{RUN_DS}.html")
    assert "STOPPED" in Path(lake.report(judged, RUN_DS)).read_text()  # the lake holds the latest run's


def test_msmt_report_writes_it_and_prints_where(judged, monkeypatch):
    monkeypatch.setenv("MSMT_HOME", str(judged.home))
    monkeypatch.setenv("MSMT_MLFLOW_TRACKING_URI", judged.mlflow_tracking_uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    result = CliRunner().invoke(app, ["report", "--ds", RUN_DS])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == lake.report(judged, RUN_DS)


def test_the_experiment_report_renders_in_headless_chromium(tmp_path):
    from pipeline.experiment_report import render
    from pipeline.experiments import verdicts

    def cell(scenario: str, task: str, diff: float) -> dict:
        return {"scenario": scenario, "task": task, "rows": 900, "positives": 90, "diff": diff,
                "ci_low": diff - 0.01, "ci_high": diff + 0.01, "status": "pass", "reason": "ok"}  # fmt: skip

    days = [{"ds": day, "eval_ds": day, "challenger": "models:/x_experiments/1", "baseline": "models:/x/2",
             "run_id": "r", "metric": "auc", "cells": [cell("homefeed", "click", d), cell("search", "click", -d)]}
            for day, d in (("2026-01-05", 0.02), ("2026-01-06", 0.015))]  # fmt: skip
    summary = {"name": "hinet-vs-champion", "model": "hinet", "baseline": {"label": "champion", "version": "2"},
               "days": ["2026-01-05", "2026-01-06"], "parent_run_id": "p", "metric": "auc", "per_day": days,
               "cells": verdicts(days)}  # fmt: skip
    page = tmp_path / "experiment.html"
    page.write_text(render(summary))
    dom = _Elements({"heat-cell", "forest-row"})
    dom.feed(_open(page, "--dump-dom").stdout)
    assert len(dom.found["heat-cell"]) == 4  # 2 cells × 2 days, as Chromium built the DOM
    assert {r["data-cell"]: r["data-status"] for r in dom.found["forest-row"]} == {
        "homefeed / click": "pass",  # better on both days: pooled interval above 0
        "search / click": "fail",  # worse
    }
