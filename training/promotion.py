"""Registry operations around the gate: judge a challenger, move aliases, roll back.

Aliases of `settings.registered_model` are the only promotion state:
`champion` is what serves, `previous_champion` is one command away
(`rollback`). Versions also carry a `status` tag (challenger → rejected,
champion, retired, rolled_back) for people browsing the registry. Every alias
move is audited twice: a registered-model tag `alias_history.<UTC stamp>.<alias>`
and a model-version tag `<alias>.assigned`, each holding JSON {alias, from,
to, by, at, why}.

`promote` trusts the registry, not the decision dict it is handed: the
challenger version's own tags must say its gate ran and passed for that decision
(`gate.decision=pass`, same `gate.eval_ds` and `gate.champion_version`). A new
version is tagged `gate.decision=pending` at registration (training.train), so an
ungated version is visibly so and cannot be promoted by a forged or stale dict.

`promote` is compare-and-set: the alias moves only if `champion` is still the
version the challenger was compared with, so a stale decision (another run
promoted, or someone rolled back, meanwhile) cannot overwrite a newer champion.
MLflow has no conditional alias update, so the read, the check and the moves run
under the `champion` lock (msmt.locks), as does `rollback`: two promotions
released together serialise, and the second finds the champion moved. That lock
spans the processes sharing `MSMT_HOME`; a profile whose promotions run on
several machines needs the lock in a shared service.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pyarrow as pa
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from msmt import lake, locks, storage
from msmt.errors import StopRun
from msmt.settings import Settings
from training.data import TensorData, encode, read_held_out
from training.gate import GateRules, decide
from training.pyfunc import load_ranker
from training.scoring import predict
from training.tracking import configure_mlflow

CHAMPION = "champion"
PREVIOUS = "previous_champion"
LOCK = "champion"
LOCK_WAIT_S = 60.0  # an alias move takes well under a second; a minute covers a slow registry, not a hung one


class PromotionError(StopRun):
    """An alias move refused: ungated version, stale decision, or nothing to roll back to."""


def evaluate_and_gate(settings: Settings, training_set_uri: str, eval_ds: str, challenger_version: str) -> dict:
    """Score the challenger and the current champion on the same `eval_ds` rows and decide.

    Logs the matrix, the decision and per-cell diffs to the challenger's run, tags
    the version, writes `lake.gate_report(settings, eval_ds)`, and returns the
    decision dict plus `challenger_version`, `champion_version` (None on a first
    run), `eval_ds` and `run_id`: exactly what `promote` needs.
    """
    configure_mlflow(settings)
    client = MlflowClient()
    name = settings.registered_model
    challenger_version = str(challenger_version)
    run_id = client.get_model_version(name, challenger_version).run_id
    champion_version = _alias_version(client, name, CHAMPION)
    eval_table = read_held_out(settings, training_set_uri, eval_ds)

    challenger_probs, data = score_model(f"models:/{name}/{challenger_version}", eval_table)
    champion_probs = (
        None if champion_version is None else score_model(f"models:/{name}/{champion_version}", eval_table)[0]
    )
    rules = gate_rules(settings)
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
    seen = trained_on_held_out(client, name, champion_version, [eval_ds])
    if seen:
        decision = replace(decision, passed=False, reasons=[seen, *decision.reasons])
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


def gate_rules(settings: Settings) -> GateRules:
    """The profile's gate: the daily promotion and an experiment's comparisons judge alike."""
    return GateRules(
        metric=settings.gate_metric,
        max_drop=settings.gate_max_drop,
        floor=settings.gate_floor,
        min_rows=settings.gate_min_rows,
        min_positives=settings.gate_min_positives,
        advisory_scenarios=settings.gate_advisory_scenarios,
        allow_unjudged=settings.gate_allow_unjudged,
        alpha=settings.gate_alpha,
        block_seesaw=settings.gate_block_seesaw,
        n_boot=settings.gate_bootstrap,
    )


def promote(settings: Settings, decision: dict, actor: str | None = None) -> dict:
    """Point `champion` at the challenger if the decision passed, the version's gate tags confirm it,
    and the decision is not stale.

    The old champion becomes `previous_champion`. Re-running on a decision that
    was already applied is a no-op (Airflow retries are safe). Raises
    `PromotionError` when the version's tags do not say its gate passed for this
    decision, or when `champion` moved since the gate compared against it; and
    `msmt.locks.LockHeld` when another alias move holds the lock past `LOCK_WAIT_S`.
    """
    configure_mlflow(settings)
    client = MlflowClient()
    name = settings.registered_model
    challenger, compared_with = str(decision["challenger_version"]), decision["champion_version"]
    if not decision["passed"]:
        current = _alias_version(client, name, CHAMPION)
        return {"promoted": False, "champion": current, "reason": f"gate failed for v{challenger}"}
    with locks.hold(settings, LOCK, f"promotion of v{challenger}", wait_s=LOCK_WAIT_S):
        _check_gate_tags(client, name, decision)
        current = _alias_version(client, name, CHAMPION)
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


def _check_gate_tags(client: MlflowClient, name: str, decision: dict) -> None:
    """Refuse unless the version's own tags record a passing gate for this very decision.

    The decision dict travels through XCom, files and people's hands; the tags are
    written by `evaluate_and_gate` next to the version itself, so a version whose
    gate never ran (`gate.decision=pending`), failed, or ran for another day or
    against another champion is not promoted on the strength of a dict.
    """
    version = str(decision["challenger_version"])
    tags = client.get_model_version(name, version).tags
    recorded = {key: tags.get(f"gate.{key}", "missing") for key in ("decision", "eval_ds", "champion_version")}
    compared_with = decision["champion_version"]
    claimed = {"decision": "pass", "eval_ds": str(decision.get("eval_ds")),
               "champion_version": "none" if compared_with is None else str(compared_with)}  # fmt: skip
    if recorded != claimed:
        said = ", ".join(f"gate.{key}={value}" for key, value in recorded.items())
        raise PromotionError(
            f"v{version} has no passing gate for this decision: its tags say {said}, the decision claims "
            f"pass on {claimed['eval_ds']} against {_label(compared_with)}; "
            f"run the gate (evaluate_model) on v{version} against the current champion first"
        )


def rollback(settings: Settings, actor: str | None = None, reason: str = "manual rollback") -> dict:
    """`champion` ← `previous_champion`; the alias `previous_champion` is then cleared (one level of undo)."""
    configure_mlflow(settings)
    client = MlflowClient()
    name = settings.registered_model
    with locks.hold(settings, LOCK, f"rollback of {name}", wait_s=LOCK_WAIT_S):
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
    configure_mlflow(settings)
    return _alias_version(MlflowClient(), settings.registered_model, CHAMPION)


def alias_history(settings: Settings) -> list[dict]:
    """Every audited alias move of the registered model, oldest first."""
    configure_mlflow(settings)
    tags = _registered_model(MlflowClient(), settings.registered_model).get("tags", {})
    return [json.loads(tags[key]) for key in sorted(tags) if key.startswith("alias_history.")]


def trained_on_held_out(client: MlflowClient, name: str, version: str | None, eval_days: list[str]) -> str:
    """Why version `version` cannot be judged on the held-out rows of `eval_days` ('' when it can).

    A version trained on `eval_ds` has seen those rows: beside it, any challenger looks worse. That is
    the case of a backfill into the past while the champion was trained on later days, and of a replay
    of past days against today's champion. Its run's `train_days` param names the days it fit on."""
    if version is None:
        return ""
    run_id = client.get_model_version(name, version).run_id
    train_days = client.get_run(run_id).data.params.get("train_days", "").split(",")
    eval_ds = next((day for day in eval_days if day in train_days), None)
    if eval_ds is None:
        return ""
    return (
        f"v{version} was trained on {eval_ds} ({', '.join(train_days)}), the day whose held-out rows judge "
        f"this comparison: it has seen them, so no comparison with it there is fair"
    )


def score_model(model_uri: str, table: pa.Table) -> tuple[np.ndarray, TensorData]:
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
