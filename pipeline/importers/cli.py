"""`msmt import …`: load a public dataset into the raw lake (mounted by pipeline/cli.py)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from msmt.errors import StopRun
from msmt.settings import Settings

import_app = typer.Typer(help="Import a public MSMT dataset into the raw lake.", no_args_is_help=True)

Paths = Annotated[list[Path], typer.Argument(help="files or directories of the release", exists=True)]
Start = Annotated[str, typer.Option(help="first synthetic day YYYY-MM-DD (the datasets have no timestamps)")]
Days = Annotated[int, typer.Option(help="consecutive days to spread the rows over")]
Scenarios = Annotated[
    str | None,
    typer.Option(help="comma-separated scenarios to keep, in id order (default: all, largest first)"),
]
Device = Annotated[
    str,
    typer.Option(help="device written on every impression if the contract has a `device` column (the data has none)"),
]
Contract = Annotated[
    Path | None,
    typer.Option(help="data contract to write the raw tables under (default: the dataset's own, in contracts/)"),
]


def _split(value: str | None) -> tuple[str, ...] | None:
    return tuple(s.strip() for s in value.split(",") if s.strip()) if value else None


@contextmanager
def _refusal_exits() -> Iterator[None]:
    """A refused input (wrong layout, nothing imported) prints why and exits 1: a message, not a traceback."""
    try:
        yield
    except StopRun as refused:
        typer.echo(f"error: {refused}\nthe lake is unchanged", err=True)
        raise typer.Exit(code=1) from None


def _finish(report: dict) -> None:
    from pipeline.importers import run_hint

    typer.echo(json.dumps(report, indent=1, default=str))
    typer.echo(f"\n# point the pipeline at the imported contract and scenarios, then run it:\n{run_hint(report)}")


def _settings() -> Settings:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return Settings.from_env()


@import_app.command()
def aliexpress(
    paths: Paths,
    start: Start,
    days: Days = 7,
    scenario: Annotated[
        str | None, typer.Option(help="scenario of every path (default: the CC of an AliExpress_<CC> path)")
    ] = None,
    scenarios: Scenarios = None,
    device: Device = "unknown",
    contract: Contract = None,
    user_columns: Annotated[
        str | None, typer.Option(help="comma-separated columns whose values make the pseudo-user id")
    ] = None,
    item_columns: Annotated[
        str | None, typer.Option(help="comma-separated columns whose values make the pseudo-item id")
    ] = None,
) -> None:
    """AliExpress (Tianchi 74690) train.csv / test.csv per country: one scenario per country."""
    from pipeline.importers.aliexpress import AliExpressLayout, import_aliexpress

    layout = AliExpressLayout()
    if user_columns:
        layout = AliExpressLayout(**{**vars(layout), "user_columns": _split(user_columns)})
    if item_columns:
        layout = AliExpressLayout(**{**vars(layout), "item_columns": _split(item_columns)})
    settings, keep = _settings(), _split(scenarios)
    with _refusal_exits():
        report = import_aliexpress(
            settings,
            paths,
            start,
            days,
            scenario=scenario,
            scenarios=keep,
            device=device,
            layout=layout,
            contract=contract,
        )
    _finish(report)


@import_app.command()
def aliccp(
    paths: Paths,
    start: Start,
    days: Days = 7,
    scenarios: Scenarios = None,
    device: Device = "unknown",
    contract: Contract = None,
) -> None:
    """Ali-CCP (Tianchi 408): the raw sample_skeleton_* + common_features_* pairs, or the processed
    ali_ccp_*.csv (told apart by their first line); field 301 is the scenario."""
    from pipeline.importers.aliccp import import_aliccp

    with _refusal_exits():
        report = import_aliccp(
            _settings(), paths, start, days, scenarios=_split(scenarios), device=device, contract=contract
        )
    _finish(report)
