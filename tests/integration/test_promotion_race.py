"""promote's guards on a real MLflow registry (SQLite under a temp home): a version moves to `champion`
only when its own gate tags confirm the decision, and only one of two promotions released together wins.

Versions here have no model behind them: promote reads and writes aliases and tags only, so the
registry entries are made directly and tagged the way training.train and evaluate_and_gate tag them.
"""

from __future__ import annotations

import multiprocessing

import pytest
from mlflow import MlflowClient

from msmt.errors import StopRun
from msmt.settings import Settings
from training.promotion import PromotionError, current_champion, promote
from training.tracking import configure_mlflow

pytestmark = pytest.mark.integration

EVAL_DS = "2026-01-04"


@pytest.fixture
def registry(settings: Settings, tmp_path) -> Settings:
    """MLflow pointed at the temp home, the registered model created, a stand-in artifact to register."""
    configure_mlflow(settings)
    MlflowClient().create_registered_model(settings.registered_model)
    (tmp_path / "model").mkdir()
    return settings


def register(settings: Settings, source, **gate: str) -> str:
    """A new version tagged as training.train tags it (`gate.decision=pending`), then with `gate`'s tags."""
    client, name = MlflowClient(), settings.registered_model
    tags = {"status": "challenger", "gate.decision": "pending"}
    version = str(client.create_model_version(name, str(source), tags=tags).version)
    for key, value in gate.items():
        client.set_model_version_tag(name, version, f"gate.{key}", value)
    return version


def gated(settings: Settings, source, champion: str | None, eval_ds: str = EVAL_DS, verdict: str = "pass") -> str:
    """A version whose gate ran on `eval_ds` against `champion`, tagged as evaluate_and_gate tags it."""
    return register(settings, source, decision=verdict, eval_ds=eval_ds, champion_version=champion or "none")


def passing(version: str, champion: str | None, eval_ds: str = EVAL_DS) -> dict:
    """The decision dict evaluate_and_gate returns for a pass (the fields promote reads)."""
    return {"passed": True, "challenger_version": version, "champion_version": champion, "eval_ds": eval_ds}


def test_promote_refuses_a_version_whose_gate_did_not_run(registry, tmp_path):
    source = tmp_path / "model"
    pending = register(registry, source)
    with pytest.raises(PromotionError) as refused:
        promote(registry, passing(pending, None), actor="test")  # a forged (or hand-written) decision
    assert str(refused.value) == (
        f"v{pending} has no passing gate for this decision: its tags say gate.decision=pending, "
        f"gate.eval_ds=missing, gate.champion_version=missing, the decision claims pass on {EVAL_DS} against none; "
        f"run the gate (evaluate_model) on v{pending} against the current champion first"
    )
    assert isinstance(refused.value, StopRun)  # deterministic: the DAG does not retry it
    assert current_champion(registry) is None
    legacy = str(MlflowClient().create_model_version(registry.registered_model, str(source)).version)  # no tags
    with pytest.raises(PromotionError, match=r"its tags say gate\.decision=missing"):
        promote(registry, passing(legacy, None))
    assert current_champion(registry) is None


def test_promote_refuses_a_decision_its_tags_do_not_confirm(registry, tmp_path):
    source = tmp_path / "model"
    v1 = gated(registry, source, None)
    assert promote(registry, passing(v1, None), actor="test")["promoted"]
    failed = gated(registry, source, v1, verdict="fail")
    with pytest.raises(PromotionError, match=f"its tags say gate.decision=fail, gate.eval_ds={EVAL_DS}"):
        promote(registry, passing(failed, v1))
    other_day = gated(registry, source, v1, eval_ds="2026-01-05")
    with pytest.raises(PromotionError, match=r"gate\.eval_ds=2026-01-05, .* claims pass on 2026-01-04 against v1"):
        promote(registry, passing(other_day, v1))
    good = gated(registry, source, v1)
    with pytest.raises(PromotionError, match=f"gate.champion_version={v1}, .* against none"):
        promote(registry, passing(good, None))  # claims a first run, but the gate compared with v1
    assert current_champion(registry) == v1
    assert promote(registry, passing(good, v1), actor="test")["previous_champion"] == v1
    assert current_champion(registry) == good


def _contend(settings: Settings, inbox, start, results) -> None:
    """One contender in its own process: per decision it is handed, wait until the other is ready, then promote."""
    current_champion(settings)  # the MLflow store is built before the start, so both reach the registry at once
    while (decision := inbox.get(timeout=300)) is not None:
        start.wait(timeout=120)
        try:
            results.put((decision["challenger_version"], "promoted", promote(settings, decision, actor="racer")))
        except PromotionError as refused:
            results.put((decision["challenger_version"], "refused", str(refused)))
        except Exception as error:  # reported, not raised: the parent would only see a missing result
            results.put((decision["challenger_version"], "error", repr(error)))


ROUNDS = 3  # each round starts from the last one's winner; without the lock, both usually win at least one


def test_two_promotions_released_together_one_wins(registry, tmp_path):
    source = tmp_path / "model"
    champion = gated(registry, source, None)
    promote(registry, passing(champion, None), actor="test")
    client, name = MlflowClient(), registry.registered_model

    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no MLflow client state shared
    start, results, inboxes = ctx.Barrier(2), ctx.Queue(), [ctx.Queue(), ctx.Queue()]
    racers = [ctx.Process(target=_contend, args=(registry, inbox, start, results)) for inbox in inboxes]
    for racer in racers:
        racer.start()
    try:
        for _ in range(ROUNDS):
            pair = gated(registry, source, champion), gated(registry, source, champion)  # both pass against it
            for inbox, version in zip(inboxes, pair, strict=True):
                inbox.put(passing(version, champion))
            outcomes = {}
            for _ in pair:
                version, kind, detail = results.get(timeout=300)
                outcomes[version] = (kind, detail)
            assert sorted(kind for kind, _ in outcomes.values()) == ["promoted", "refused"], outcomes
            winner = next(version for version, (kind, _) in outcomes.items() if kind == "promoted")
            loser = pair[1] if winner == pair[0] else pair[0]
            assert outcomes[winner][1]["previous_champion"] == champion
            assert outcomes[loser][1] == (
                f"stale decision: v{loser} was compared with champion v{champion}, but champion is now v{winner}; "
                "re-run the gate against the current champion"
            )
            assert current_champion(registry) == winner
            assert str(client.get_model_version_by_alias(name, "previous_champion").version) == champion
            assert client.get_model_version(name, loser).tags["status"] == "challenger"  # untouched
            champion = winner
    finally:
        for inbox in inboxes:
            inbox.put(None)
        for racer in racers:
            racer.join(timeout=60)
    assert [racer.exitcode for racer in racers] == [0, 0]
