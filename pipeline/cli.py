"""`msmt`: one command per step, the same functions the DAG calls."""

from __future__ import annotations

import json
import logging
from typing import Annotated

import typer

from msmt.errors import StopRun
from msmt.settings import Settings
from pipeline.importers.cli import import_app

app = typer.Typer(
    help="msmt: daily retraining of multi-scenario, multi-task ranking models.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # a traceback must not print settings (credentials) or tensors
)
app.add_typer(import_app, name="import", help="Turn public datasets (AliExpress, Ali-CCP) into msmt's raw logs.")

Day = Annotated[str, typer.Option("--ds", help="run day YYYY-MM-DD (logs of this day have landed)")]
Assignments = Annotated[
    list[str] | None,
    typer.Option("--set", help="trainer / model config field, e.g. --set lr=0.001 --set n_experts=8 (repeatable)"),
]


def _overrides(assignments: list[str] | None) -> dict:
    from training.hparams import parse_assignments

    return parse_assignments(assignments or [])


def _settings() -> Settings:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return Settings.from_env()


def _stopped(error: StopRun) -> typer.Exit:
    """A deterministic failure: its message, exit code 2 (no traceback: the message says what and where)."""
    typer.echo(f"error: {error}", err=True)
    return typer.Exit(code=2)


def _training_set(settings: Settings, plan) -> str:
    """The run's training set, or exit 2 saying how to build it."""
    from msmt import lake, storage

    uri = lake.training_set(settings, plan.sample_ds)
    if not storage.exists(settings, uri):
        typer.echo(f"error: no training set for the run of {plan.ds} at {uri}; build it first with "
                   f"`msmt run --ds {plan.ds}` (or the msmt_daily DAG)", err=True)  # fmt: skip
        raise typer.Exit(code=2)
    return uri


@app.command()
def simulate(
    start: Annotated[str, typer.Option(help="first day YYYY-MM-DD")],
    days: Annotated[int, typer.Option(help="number of days")] = 7,
    impressions_per_day: Annotated[int, typer.Option(help="impressions per day")] = 200_000,
    seed: Annotated[int, typer.Option(help="random seed (same seed, same logs)")] = 0,
    malformed_rate: Annotated[float, typer.Option(help="share of malformed rows per raw table")] = 0.002,
) -> None:
    """Write simulated raw impressions, clicks, conversions (and true probabilities) to the lake."""
    from pipeline.simulate import SimConfig
    from pipeline.simulate import simulate as run

    counts = run(_settings(), start, days, impressions_per_day, seed, SimConfig(malformed_rate=malformed_rate))
    typer.echo(json.dumps(counts, indent=1, default=str))


@app.command()
def run(
    ds: Day,
    model: Annotated[str, typer.Option(help="model of the zoo (msmt models)")] = "mmoe",
    promote: Annotated[bool, typer.Option(help="move the champion alias on a passing gate")] = True,
    rebuild: Annotated[bool, typer.Option(help="rebuild the training days' samples and features from raw")] = False,
    assignments: Assignments = None,
) -> None:
    """Run the real msmt_daily DAG for one day, in-process (Airflow's test runner).

    Exit code: 0 the run succeeded, 1 a task failed (the summary says which and why),
    2 refused before it started (bad override, a day before MSMT_DAG_START, the day already running).
    """
    from pipeline import orchestration, steps

    settings = _settings()
    params = {"model": model, "promote": promote, "rebuild": rebuild, "overrides": _overrides(assignments)}
    try:
        steps.plan_from_params(settings, ds, params)  # a bad override fails here, before any work
        outcome = orchestration.run_daily(settings, ds, params)
    except StopRun as refused:
        raise _stopped(refused) from refused
    typer.echo(orchestration.run_summary(outcome))
    if outcome.state != "success":
        raise typer.Exit(code=1)


airflow_app = typer.Typer(help="Airflow 3's api-server, scheduler and dag-processor for this profile.")
app.add_typer(airflow_app, name="airflow")
Port = Annotated[int, typer.Option(help="the api-server's port")]


@airflow_app.command("up")
def airflow_up(port: Port = 8080) -> None:
    """Start the services (LocalExecutor, the profile's metadata DB) and unpause msmt_daily: the schedule runs."""
    from pipeline import scheduler

    try:
        pids = scheduler.up(_settings(), port)
    except StopRun as error:
        raise _stopped(error) from None
    typer.echo(f"airflow up on http://127.0.0.1:{port}: {pids}; `msmt airflow down` stops it")


@airflow_app.command("down")
def airflow_down() -> None:
    """Stop the services this profile started (by process group)."""
    from pipeline import scheduler

    stopped = scheduler.down(_settings())
    typer.echo(f"stopped: {', '.join(stopped) or 'nothing was running'}")


cluster_app = typer.Typer(
    help="The cluster profile's services on 127.0.0.1: PostgreSQL, Redis, S3, MLflow, Spark, Airflow."
)
app.add_typer(cluster_app, name="cluster")


@cluster_app.command("up")
def cluster_up(timeout: Annotated[int, typer.Option(help="seconds to wait for every service")] = 300) -> None:
    """Start the services not yet running under MSMT_HOME (running ones are reused); each must answer."""
    from pipeline import cluster

    try:
        groups = cluster.up(_settings(), timeout)
    except StopRun as error:
        raise _stopped(error) from None
    typer.echo(f'up: {json.dumps(groups)}; point msmt at them with: eval "$(msmt cluster env)"')


@cluster_app.command("down")
def cluster_down() -> None:
    """Stop this home's services, Airflow first, by process group (data and ports are kept)."""
    from pipeline import cluster

    stopped = cluster.down(_settings())
    typer.echo(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@cluster_app.command("env")
def cluster_env() -> None:
    """Print `export` lines (passwords included) that point msmt's cluster profile at the services."""
    from pipeline import cluster

    try:
        typer.echo(cluster.exports(Settings.from_env()))
    except StopRun as error:
        raise _stopped(error) from None


@cluster_app.command("demo")
def cluster_demo(
    impressions_per_day: Annotated[int, typer.Option(help="impressions per simulated day")] = 6_000,
    seed: Annotated[int, typer.Option(help="simulator seed")] = 0,
    compare_local: Annotated[bool, typer.Option(help="also run yesterday on the local profile")] = True,
) -> None:
    """From an empty MSMT_HOME: `cluster up`, a simulated week, msmt_daily for two days run by the scheduler."""
    from pipeline.cluster_demo import run_cluster_demo

    try:
        result = run_cluster_demo(_settings(), impressions_per_day, seed, compare_local)
    except StopRun as error:
        raise _stopped(error) from None
    if any(state != "success" for state in result["states"].values()):
        raise typer.Exit(code=1)


@app.command()
def doctor() -> None:
    """Check the active profile's pieces (services, credentials, buckets, databases, the DAG); exit 1 if any fails."""
    from pipeline.doctor import check, table

    checks = check(Settings.from_env())
    typer.echo(table(checks))
    if not all(item.ok for item in checks):
        raise typer.Exit(code=1)


@app.command()
def backfill(
    first: Annotated[str, typer.Option("--from", help="first run day YYYY-MM-DD")],
    last: Annotated[str, typer.Option("--to", help="last run day YYYY-MM-DD (inclusive)")],
    model: Annotated[str, typer.Option(help="model of the zoo (msmt models)")] = "mmoe",
    promote: Annotated[bool, typer.Option(help="move the champion on passing days (a backfill does not)")] = False,
    rebuild: Annotated[bool, typer.Option(help="reprocess the days' samples and features from raw logs")] = False,
    keep_going: Annotated[bool, typer.Option(help="carry on after a failed day")] = False,
    port: Annotated[int | None, typer.Option(help="the api-server's port (default: the running services')")] = None,
    assignments: Assignments = None,
) -> None:
    """Backfill msmt_daily over past days through Airflow's scheduler, one day at a time, with a summary.

    Needs the services (`msmt airflow up`). Days that already have a run are reused unless --rebuild.
    """
    from pipeline import backfill as backfills
    from pipeline import scheduler, steps

    settings = _settings()
    params = {"model": model, "promote": promote, "overrides": _overrides(assignments)}
    try:
        steps.plan_from_params(settings, first, params)  # a bad model or override fails here, before Airflow
        backfill_id = backfills.create(settings, first, last, params, rebuild, port or scheduler.service_port(settings))

        def progress(day: backfills.DayResult) -> None:
            typer.echo(f"{day.ds}: {day.state}, gate {day.verdict}, champion {day.champion}")

        results = backfills.follow(settings, backfill_id, progress, stop_on_failure=not keep_going)
    except StopRun as error:
        raise _stopped(error) from None
    if not results:
        typer.echo(f"nothing to do: every day {first} … {last} already has a run (--rebuild re-runs them)")
        return
    typer.echo(backfills.summary(results))
    if any(day.state != "success" for day in results):
        raise typer.Exit(code=1)


@app.command()
def experiment(
    model: Annotated[str, typer.Option(help="the challenger: a model of the zoo")],
    first: Annotated[str, typer.Option("--from", help="first run day replayed, YYYY-MM-DD")],
    last: Annotated[str, typer.Option("--to", help="last run day replayed, YYYY-MM-DD")],
    baseline: Annotated[str, typer.Option(help="champion, version=N or model=NAME")] = "champion",
    name: Annotated[str | None, typer.Option(help="the experiment's name (default: from the rest)")] = None,
    assignments: Assignments = None,
) -> None:
    """Replay MODEL over past run days against a baseline, as a run of the msmt_experiment DAG: a verdict
    per scenario × task across days, an MLflow parent run with a child per day; nothing is promoted.

    The run goes to Airflow's scheduler when `msmt airflow up` runs for this home, else to the in-process
    test runner. Exit code: 0 the experiment ran (whatever the verdicts), 1 a task failed, 2 refused.
    """
    import datetime as dt

    from pipeline import experiments, orchestration, scheduler

    settings = _settings()
    conf = {"model": model, "from": first, "to": last, "baseline": baseline, "name": name,
            "overrides": _overrides(assignments)}  # fmt: skip
    dag_id = orchestration.EXPERIMENT_DAG_ID
    try:
        experiments.Baseline.parse(baseline)
        if len(scheduler.running(settings)) == len(scheduler.SERVICES):
            run_id, runner = f"experiment__{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}", "the scheduler"
            scheduler.trigger(settings, dag_id, conf, run_id)
        else:
            run_id, runner = orchestration.run_experiment(settings, conf).run_id, "in-process test runner"
    except StopRun as refused:
        raise _stopped(refused) from refused
    summary = orchestration.task_value(run_id, "summarize", dag_id=dag_id)
    if summary is None:
        failed = orchestration.failed_task(run_id, dag_id) or "a task"
        error = orchestration.task_value(run_id, failed, orchestration.ERROR_KEY, dag_id) or "see its log"
        typer.echo(f"experiment stopped: {failed} failed\n  {error}", err=True)
        raise typer.Exit(code=1)
    where = f"MLflow parent run {summary['parent_run_id']}; Airflow {dag_id} run {run_id} ({runner})"
    typer.echo(f"{experiments.table(summary)}\nreport: {summary['report']}\n{where}")


@app.command()
def contract(
    path: Annotated[str | None, typer.Argument(help="a contract file (default: MSMT_CONTRACT's)")] = None,
) -> None:
    """Validate a data contract and print what derives from it: tables, the model's inputs, the Feast service."""
    from msmt.contract import load

    settings = _settings()
    try:
        loaded = load(path) if path else settings.data_contract
    except StopRun as error:
        raise _stopped(error) from None
    inputs = {role: [c.name for c in loaded.inputs(role)] for role in ("sparse", "dense", "sequence")}
    summary = {
        "contract": loaded.source,
        "digest": loaded.digest,
        "tables": {name: loaded.raw_schema(name).names for name in loaded.tables},
        "tasks": list(loaded.tasks),
        "inputs": inputs,
        "feature_views": {name: view.value_columns for name, view in loaded.features.items()},
        "feature_service": loaded.feature_service,
        "samples": loaded.samples_schema.names,
    }
    typer.echo(json.dumps(summary, indent=1))


@app.command("check-raw")
def check_raw(
    day: Annotated[str, typer.Option("--day", help="raw partition YYYY-MM-DD to check against the contract")],
) -> None:
    """Great Expectations on one day of raw logs (the contract's types, keys, ranges): what a run checks first."""
    from data_checks.suites import check_raw as check

    try:
        result = check(_settings(), day)
    except StopRun as error:
        raise _stopped(error) from None
    typer.echo(f"raw logs of {day} match the contract ({len(result['expectations'])} expectations)")


@app.command()
def samples(ds: Day) -> None:
    """Build the samples of the matured day `ds - attribution window` (Spark)."""
    from pipeline import steps

    settings = _settings()
    typer.echo(json.dumps(steps.build_samples(settings, steps.plan_day(settings, ds)), indent=1, default=str))


@app.command()
def features(ds: Day) -> None:
    """Build the feature days a run for `ds` needs (Spark) and publish them to Feast."""
    from pipeline import steps

    settings = _settings()
    plan = steps.plan_day(settings, ds)
    steps.build_features(settings, plan)
    typer.echo(json.dumps(steps.publish_features(settings, plan), default=str))


@app.command()
def train(
    ds: Day,
    model: Annotated[str, typer.Option(help="model of the zoo (msmt models)")] = "mmoe",
    epochs: Annotated[int | None, typer.Option(help="override the number of epochs")] = None,
    assignments: Assignments = None,
) -> None:
    """Train a challenger on the run's training set (built by `msmt run` or the DAG) and gate it.

    Exit code: 0 the gate passed, 1 it failed, 2 no training set for that day.
    """
    from pipeline import steps

    settings = _settings()
    params = {"model": model, "epochs": epochs, "overrides": _overrides(assignments)}
    try:
        plan = steps.plan_from_params(settings, ds, params)
    except StopRun as refused:
        raise _stopped(refused) from refused
    training_set = _training_set(settings, plan)
    trained = steps.train_model(settings, plan, training_set)
    decision = steps.evaluate_model(settings, plan, training_set, trained["version"])
    verdict = "passed" if decision["passed"] else "failed"
    typer.echo(f"version {trained['version']} (run {trained['run_id']}): gate {verdict}")
    raise typer.Exit(code=0 if decision["passed"] else 1)


@app.command()
def gate(
    ds: Day,
    version: Annotated[str, typer.Option(help="registered model version of the challenger")],
) -> None:
    """Score a challenger version against the champion on the run's held-out day.

    Exit code: 0 the gate passed, 1 it failed, 2 no training set for that day or a bad override.
    """
    from pipeline import steps

    settings = _settings()
    plan = steps.plan_day(settings, ds)
    decision = steps.evaluate_model(settings, plan, _training_set(settings, plan), version)
    raise typer.Exit(code=0 if decision["passed"] else 1)


@app.command()
def promote(ds: Day) -> None:
    """Apply the stored gate decision of the run for `ds` (compare-and-set on the champion alias)."""
    from msmt import lake, storage
    from pipeline import steps

    settings = _settings()
    plan = steps.plan_day(settings, ds)
    decision = storage.read_json(settings, lake.gate_report(settings, plan.sample_ds))
    typer.echo(json.dumps(steps.promote_model(settings, plan, decision), indent=1, default=str))


@app.command()
def rollback() -> None:
    """Point `champion` back at the previous champion."""
    from training.promotion import rollback as restore

    typer.echo(json.dumps(restore(_settings()), indent=1, default=str))


@app.command()
def history() -> None:
    """The champion, the previous champion and every alias move (who, when, why)."""
    from pipeline.history import history_lines

    typer.echo("\n".join(history_lines(_settings())))


@app.command()
def status(last: Annotated[int, typer.Option(help="how many judged days")] = 14) -> None:
    """Each judged day's gate verdict: challenger, champion, cells passed / failed / advisory."""
    from pipeline.history import status_lines

    typer.echo("\n".join(status_lines(_settings(), last)))


@app.command()
def report(ds: Day) -> None:
    """Write the HTML report of the run for `ds` to the lake (and the day's challenger MLflow run); print where."""
    from pipeline import steps

    typer.echo(steps.write_report(_settings(), ds))


@app.command()
def models() -> None:
    """List the model zoo."""
    from training.models import REGISTRY

    for name, entry in sorted(REGISTRY.items()):
        typer.echo(f"{name:<16} {entry.description}")


@app.command()
def env() -> None:
    """Print the exports that point Airflow and MLflow at this profile (for their UIs)."""
    from pipeline.orchestration import airflow_env

    for key, value in sorted(airflow_env(Settings.from_env()).items()):
        typer.echo(f"export {key}={value}")


@app.command()
def demo(
    days: Annotated[int, typer.Option(help="days of logs to simulate")] = 7,
    impressions_per_day: Annotated[int, typer.Option(help="impressions per day")] = 200_000,
    seed: Annotated[int, typer.Option(help="simulator seed")] = 0,
    reset: Annotated[bool, typer.Option(help="start from an empty MSMT_HOME")] = True,
) -> None:
    """Simulate a week and run msmt_daily for its last two days."""
    from pipeline.demo import run_demo

    result = run_demo(_settings(), days, impressions_per_day, seed, reset)
    if any(state != "success" for state in result["states"].values()):
        raise typer.Exit(code=1)
