"""Registry operations around the gate: judge a challenger, move aliases, roll back.

Aliases of `settings.registered_model` are the only promotion state:
`champion` is what serves, `previous_champion` is one command away
(`rollback`). Versions also carry a `status` tag (challenger → rejected,
champion, retired, rolled_back) for people browsing the registry. Every alias
move is audited twice: a registered-model tag `alias_history.<UTC stamp>.<alias>`
and a model-version tag `<alias>.assigned`, each holding JSON {alias, from,
to, by, at, why}.

`promote` is compare-and-set: the alias moves only if `champion` is still the
version the challenger was compared with, so a stale decision (another run
promoted, or someone rolled back, meanwhile) cannot overwrite a newer champion.
MLflow has no conditional alias update, so the check and the move are two
calls; the DAG's `max_active_runs=1` keeps that window to concurrent humans.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json

import numpy as np
import pandas as pd
import pyarrow as pa
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from msmt import lake, storage
from msmt.settings import Settings
from training.data import TensorData, encode, read_held_out
from training.gate import GateRules, decide
from training.pyfunc import load_ranker
from training.trainer import predict

CHAMPION = "champion"
PREVIOUS = "previous_champion"


class PromotionError(RuntimeError):
    """An alias move refused: stale decision, or nothing to roll back to."""


def evaluate_and_gate(settings: Settings, training_set_uri: str, eval_ds: str, challenger_version: str) -> dict:
    """Score the challenger and the current champion on the same `eval_ds` rows and decide.

    Logs the matrix, the decision and per-cell diffs to the challenger's run, tags
    the version, writes `lake.gate_report(settings, eval_ds)`, and returns the
    decision dict plus `challenger_version`, `champion_version` (None on a first
    run), `eval_ds` and `run_id`: exactly what `promote` needs.
    """
    settings.configure_mlflow()
    client = MlflowClient()
    name = settings.registered_model
    challenger_version = str(challenger_version)
    run_id = client.get_model_version(name, challenger_version).run_id
    champion_version = _alias_version(client, name, CHAMPION)
    eval_table = read_held_out(training_set_uri, eval_ds)

    challenger_probs, data = _score(f"models:/{name}/{challenger_version}", eval_table)
    champion_probs = None if champion_version is None else _score(f"models:/{name}/{champion_version}", eval_table)[0]
    rules = GateRules(
        metric=settings.gate_metric,
        max_drop=settings.gate_max_drop,
        floor=settings.gate_floor,
        min_rows=settings.gate_min_rows,
        min_positives=settings.gate_min_positives,
        advisory_scenarios=settings.gate_advisory_scenarios,
        n_boot=settings.gate_bootstrap,
    )
    decision = decide(
        challenger_probs,
        champion_probs,
        data.labels.numpy(),
        data.label_mask.numpy(),
        data.scenario.numpy(),
        data.group.numpy(),
        settings.scenarios,
        settings.tasks,
        rules,
    )
    matrix = decision.format_matrix()
    print(f"gate: challenger v{challenger_version} vs champion {_label(champion_version)} on {eval_ds}\n{matrix}")
    report = {
        **decision.to_dict(),
        "challenger_version": challenger_version,
        "champion_version": champion_version,
        "eval_ds": eval_ds,
        "run_id": run_id,
    }

    client.log_dict(run_id, report, "gate/decision.json")
    client.log_text(run_id, matrix, "gate/matrix.txt")
    matrix_table = pd.DataFrame(decision.cells).to_dict(orient="split", index=False)  # log_table's layout
    client.log_dict(run_id, matrix_table, "gate/matrix.json")  # log_table would append on a re-run
    stamp = _now_ms()
    metrics = [Metric("gate.passed", float(decision.passed), stamp, 0)] + [
        Metric(f"gate.diff.{c['scenario']}.{c['task']}", c["diff"], stamp, 0)
        for c in decision.cells
        if c["diff"] is not None
    ]
    client.log_batch(run_id, metrics=metrics)
    for key, value in {
        "gate.passed": str(decision.passed).lower(),
        "gate.decision": "pass" if decision.passed else "fail",
        "gate.champion_version": champion_version or "none",
        "gate.eval_ds": eval_ds,
        "gate.reasons": "; ".join(decision.reasons) or "none",
    }.items():
        client.set_model_version_tag(name, challenger_version, key, value)
    if not decision.passed:
        client.set_model_version_tag(name, challenger_version, "status", "rejected")
    storage.write_json(settings, lake.gate_report(settings, eval_ds), report)
    return report


def promote(settings: Settings, decision: dict, actor: str | None = None) -> dict:
    """Point `champion` at the challenger if the decision passed and is not stale.

    The old champion becomes `previous_champion`. Re-running on a decision that
    was already applied is a no-op (Airflow retries are safe). Raises
    `PromotionError` when `champion` moved since the gate compared against it.
    """
    settings.configure_mlflow()
    client = MlflowClient()
    name = settings.registered_model
    challenger, compared_with = str(decision["challenger_version"]), decision["champion_version"]
    current = _alias_version(client, name, CHAMPION)
    if not decision["passed"]:
        return {"promoted": False, "champion": current, "reason": f"gate failed for v{challenger}"}
    if current == challenger:
        return {"promoted": False, "champion": current, "reason": f"v{challenger} is already the champion"}
    if current != compared_with:
        raise PromotionError(
            f"stale decision: v{challenger} was compared with champion {_label(compared_with)}, "
            f"but champion is now {_label(current)}; re-run the gate against the current champion"
        )
    actor = actor or getpass.getuser()
    why = f"gate passed on {decision.get('eval_ds')} against {_label(compared_with)}"
    moves = []
    if current is not None:
        moves.append(_move_alias(client, name, PREVIOUS, current, actor, f"replaced by v{challenger}"))
        client.set_model_version_tag(name, current, "status", "retired")
    moves.append(_move_alias(client, name, CHAMPION, challenger, actor, why))
    client.set_model_version_tag(name, challenger, "status", "champion")
    return {"promoted": True, "champion": challenger, "previous_champion": current, "reason": why, "moves": moves}


def rollback(settings: Settings, actor: str | None = None, reason: str = "manual rollback") -> dict:
    """`champion` ← `previous_champion`; the alias `previous_champion` is then cleared (one level of undo)."""
    settings.configure_mlflow()
    client = MlflowClient()
    name = settings.registered_model
    previous = _alias_version(client, name, PREVIOUS)
    if previous is None:
        raise PromotionError(f"{name} has no {PREVIOUS} alias: nothing to roll back to")
    actor = actor or getpass.getuser()
    current = _alias_version(client, name, CHAMPION)
    moves = [
        _move_alias(client, name, CHAMPION, previous, actor, f"rollback: {reason}"),
        _move_alias(client, name, PREVIOUS, None, actor, f"rollback: {reason}"),
    ]
    client.set_model_version_tag(name, previous, "status", "champion")
    if current is not None:
        client.set_model_version_tag(name, current, "status", "rolled_back")
        client.set_model_version_tag(name, current, "rolled_back", json.dumps(moves[0]))
    return {"champion": previous, "rolled_back": current, "moves": moves}


def current_champion(settings: Settings) -> str | None:
    """The version behind `champion`, or None before the first promotion."""
    settings.configure_mlflow()
    return _alias_version(MlflowClient(), settings.registered_model, CHAMPION)


def alias_history(settings: Settings) -> list[dict]:
    """Every audited alias move of the registered model, oldest first."""
    settings.configure_mlflow()
    tags = _registered_model(MlflowClient(), settings.registered_model).get("tags", {})
    return [json.loads(tags[key]) for key in sorted(tags) if key.startswith("alias_history.")]


def _score(model_uri: str, table: pa.Table) -> tuple[np.ndarray, TensorData]:
    """Probabilities `(N, T)` of a registered ranker, encoded with that ranker's own spec."""
    model, spec = load_ranker(model_uri)
    data = encode(table, spec)
    return predict(model, data), data


def _alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    """Read from the model's alias map: a missing alias is INVALID_PARAMETER_VALUE, not "not found"."""
    version = _registered_model(client, name).get("aliases", {}).get(alias)
    return None if version is None else str(version)


def _registered_model(client: MlflowClient, name: str) -> dict:
    """Aliases and tags of the registered model; empty before its first version exists."""
    try:
        model = client.get_registered_model(name)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise
    return {"aliases": model.aliases, "tags": model.tags}


def _move_alias(client: MlflowClient, name: str, alias: str, version: str | None, actor: str, why: str) -> dict:
    """Set (or, with `version=None`, delete) an alias and audit the move."""
    now = dt.datetime.now(dt.UTC)
    event = {"alias": alias, "from": _alias_version(client, name, alias), "to": version, "by": actor,
             "at": now.isoformat(), "why": why}  # fmt: skip
    if version is None:
        client.delete_registered_model_alias(name, alias)
    else:
        client.set_registered_model_alias(name, alias, version)
        client.set_model_version_tag(name, version, f"{alias}.assigned", json.dumps(event))
    client.set_registered_model_tag(name, f"alias_history.{now:%Y%m%dT%H%M%S%f}Z.{alias}", json.dumps(event))
    return event


def _label(version: str | None) -> str:
    return "none" if version is None else f"v{version}"


def _now_ms() -> int:
    return int(dt.datetime.now(dt.UTC).timestamp() * 1000)
