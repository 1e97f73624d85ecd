"""Train → registry → gate → promote → rollback on real MLflow (SQLite under a temp home).

The training set is synthetic but follows docs/CONTRACTS.md "Training set" column
for column; labels follow two feature columns, so a trained model clears the
gate's floor and an untrained one (lr=0) falls far below the champion.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient

from msmt import lake, schemas, storage
from msmt.settings import Settings
from pipeline.history import history_lines, status_lines
from training.promotion import (
    PromotionError,
    alias_history,
    current_champion,
    evaluate_and_gate,
    promote,
    rollback,
)
from training.pyfunc import load_ranker
from training.tracking import configure_mlflow
from training.train import train_model

pytestmark = pytest.mark.integration

SCENARIOS = ("homefeed", "search", "mini_app")  # mini_app: ~3% of rows, so its cells are advisory
DAYS = ("2026-01-01", "2026-01-02", "2026-01-03", "2026-01-04")
EVAL_DS = DAYS[-1]
FAST = {"epochs": 3, "batch_size": 512, "lr": 5e-3, "emb_dim": 8, "n_experts": 2, "expert_dims": (32,)}


def write_training_set(settings: Settings, rows_per_day: int = 3000, seed: int = 0) -> str:
    """One parquet file under training_sets/ds=<eval day>/ with every contract column."""
    rng = np.random.default_rng(seed)
    n = rows_per_day * len(DAYS)
    click_signal, buy_signal = rng.normal(size=n), rng.normal(size=n)
    category = rng.integers(0, 10, n)
    p_click = 1 / (1 + np.exp(-(3.0 * click_signal + 1.5 * (category % 2) - 1.2)))
    click = rng.random(n) < p_click
    conversion = click & (rng.random(n) < 1 / (1 + np.exp(-(3.0 * buy_signal - 0.5))))
    columns = {
        "impression_id": [f"imp{i}" for i in range(n)],
        "request_id": [f"req{i // 10}" for i in range(n)],
        "event_timestamp": np.repeat(np.array(DAYS, dtype="datetime64[us]"), rows_per_day),
        "user_id": rng.integers(1, 5000, n),
        "item_id": rng.integers(1, 2000, n),
        "scenario_id": rng.choice(len(SCENARIOS), n, p=[0.52, 0.45, 0.03]),
        "position": rng.integers(0, 10, n),
        "device": rng.choice(["ios", "android", "web"], n),
        "hour": rng.integers(0, 24, n),
        "user_segment": rng.integers(0, 8, n),
        "item_category": category,
        "item_price_bucket": rng.integers(0, 5, n),
        "hist_item_ids": [list(rng.integers(1, 2000, k)) for k in rng.integers(0, 6, n)],
        "click": click,
        "conversion": conversion,
    }
    fields = list(schemas.SAMPLES)
    for view, view_schema in schemas.FEATURES.items():
        for name in schemas.feature_columns(view):
            kind = view_schema.field(name).type
            fields.append(pa.field(name, kind))
            values = rng.integers(0, 50, n) if pa.types.is_integer(kind) else rng.normal(size=n)
            columns[name] = np.where(rng.random(n) < 0.05, None, values)  # unseen users / items: null
    columns["u_ctr"], columns["i_cvr"] = click_signal, buy_signal
    fields.append(pa.field("ds", pa.string()))
    columns["ds"] = np.repeat(DAYS, rows_per_day)
    table = pa.Table.from_pydict(
        {f.name: pa.array(columns[f.name], from_pandas=True).cast(f.type) for f in fields}, pa.schema(fields)
    )
    uri = lake.training_set(settings, EVAL_DS)
    Path(uri).mkdir(parents=True)
    pq.write_table(table, f"{uri}/part-0.parquet")
    return uri


@pytest.fixture
def env(settings: Settings) -> tuple[Settings, str]:
    """Settings with a long-tail scenario, MLflow pointed at the temp home (before any client exists)."""
    s = settings.with_(scenarios=SCENARIOS)
    configure_mlflow(s)
    return s, write_training_set(s)


def test_train_model_logs_a_registered_challenger(env, caplog):
    settings, uri = env
    with caplog.at_level(logging.INFO, logger="msmt.training"):
        result = train_model(settings, uri, EVAL_DS, overrides=FAST)
    progress = [r.getMessage() for r in caplog.records if r.name == "msmt.training"]  # forwarded from the worker
    epochs = FAST["epochs"]
    assert progress[0].startswith("mmoe: ") and "training rows" in progress[0]
    assert [m.split(":")[0] for m in progress[1:]] == [f"epoch {e}/{epochs}" for e in range(1, epochs + 1)]

    client = MlflowClient()
    run = client.get_run(result["run_id"])
    assert run.data.params["model"] == "mmoe"
    assert run.data.params["train_days"] == ",".join(DAYS[:-1])
    assert run.data.params["eval_ds"] == EVAL_DS
    assert run.data.params["train.lr"] == "0.005"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == list(range(3))
    for cell in ("homefeed.click", "homefeed.conversion", "search.click", "search.conversion"):
        assert run.data.metrics[f"auc.{cell}"] > 0.7, cell
        assert f"logloss.{cell}" in run.data.metrics
    assert result["metrics"]["auc.homefeed.click"] == run.data.metrics["auc.homefeed.click"]
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.digest == storage.partition_digest(settings, uri)
    assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "training"
    assert {a.path for a in client.list_artifacts(run.info.run_id, "eval")} >= {"eval/auc_by_cell.png"}
    card = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/feature_spec.json")
    assert card["contract"]["digest"] == run.data.params["contract.digest"] == schemas.CONTRACT.digest
    roles = {i["name"]: i["role"] for i in card["inputs"]}
    assert roles["device"] == "sparse" and roles["u_ctr"] == "dense" and roles["hist_item_ids"] == "sequence"

    version = client.get_model_version(settings.registered_model, result["version"])
    assert version.run_id == run.info.run_id
    assert version.tags["status"] == "challenger" and version.tags["eval_ds"] == EVAL_DS
    assert version.tags["gate.decision"] == "pending"  # visibly ungated until evaluate_and_gate runs
    assert run.data.tags["msmt.pid"] == str(os.getpid()) and run.data.tags["msmt.host"] == socket.gethostname()
    assert "msmt.resumed_from" not in run.data.tags  # a fresh start
    checkpoints = Path(run.data.tags["msmt.checkpoint_dir"])  # in the profile's home, not /tmp; spent on success
    assert checkpoints.parent == settings.home / "checkpoints" / EVAL_DS and not checkpoints.parent.exists()
    assert result["model_uri"] == f"models:/{settings.registered_model}/{result['version']}"

    pyfunc = mlflow.pyfunc.load_model(result["model_uri"])
    assert "hist_item_ids" in pyfunc.metadata.get_input_schema().input_names()
    flavor = pyfunc.metadata.flavors["python_function"]  # logged as code: nothing to unpickle on load
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model" and "python_model" not in flavor
    rows = pq.read_table(uri).slice(0, 64).to_pandas()  # extra columns (labels, timestamps) are ignored
    rows.loc[0, "u_ctr"] = None  # a feature never computed for a new user
    predictions = pyfunc.predict(rows)
    assert list(predictions.columns) == ["p_click", "p_conversion"]
    assert len(predictions) == 64 and predictions.notna().all().all()
    assert ((predictions > 0) & (predictions < 1)).all().all()
    model, spec = load_ranker(result["model_uri"])
    assert spec.n_scenarios == len(SCENARIOS) and not model.training
    _loads_with_its_own_code_only(result["model_uri"], rows.head(4), predictions.head(4))


# Run with `python -S`: site-packages on the path without its .pth files, so the editable
# install of this repository is invisible and only the ranker's own `code/` can be imported.
_OUTSIDE_THE_REPO = """
import json, sys
site_packages, model_dir, rows = sys.argv[1:]
sys.path.append(site_packages)
import mlflow, pandas as pd
ranker = mlflow.pyfunc.load_model(model_dir)
import training.pyfunc
for name in ("training.train", "training.trainer", "pipeline.cli"):
    try:
        __import__(name)
        raise SystemExit(f"{name} was importable beside the ranker")
    except ModuleNotFoundError:
        pass
out = ranker.predict(pd.read_parquet(rows))
print(json.dumps({"module": training.pyfunc.__file__, "p": out.to_numpy().tolist()}))
"""


def _loads_with_its_own_code_only(model_uri: str, rows, expected) -> None:
    """The ranker's `code/` is the model and its scoring (MODEL_CODE), and that alone loads and scores it."""
    import subprocess
    import sys
    import sysconfig

    from training.pyfunc import MODEL_CODE

    local = Path(mlflow.artifacts.download_artifacts(model_uri))
    rows.to_parquet(local / "rows.parquet")
    shipped = {str(p.relative_to(local / "code")) for p in (local / "code").rglob("*.py")}
    expected_files = {e for e in MODEL_CODE if e.endswith(".py")}
    assert expected_files <= shipped and all(s.startswith(("training/models/", "msmt/")) or s in expected_files
                                             for s in shipped), sorted(shipped)  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-S", "-c", _OUTSIDE_THE_REPO, sysconfig.get_paths()["purelib"], str(local),
         str(local / "rows.parquet")],
        capture_output=True, text=True, cwd=local, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["module"].startswith(str(local / "code"))
    np.testing.assert_allclose(result["p"], expected.to_numpy(), rtol=1e-6)


def test_gate_promotes_refuses_and_rolls_back(env, capsys):
    settings, uri = env
    name = settings.registered_model
    client = MlflowClient()

    v1 = train_model(settings, uri, EVAL_DS, overrides={**FAST, "epochs": 1})["version"]  # undertrained: beatable
    first = evaluate_and_gate(settings, uri, EVAL_DS, v1)
    assert first["passed"] and first["first_run"] and first["champion_version"] is None
    assert "gate on auc: PASSED (first run)" in capsys.readouterr().out
    assert json.loads(Path(lake.gate_report(settings, EVAL_DS)).read_text())["challenger_version"] == v1
    assert promote(settings, first, actor="test")["promoted"]
    assert current_champion(settings) == v1

    v2 = train_model(settings, uri, EVAL_DS, overrides={**FAST, "seed": 1})["version"]
    v3 = train_model(settings, uri, EVAL_DS, overrides={**FAST, "seed": 2})["version"]
    bad = train_model(settings, uri, EVAL_DS, overrides={**FAST, "lr": 0.0}, run_name="untrained")["version"]
    second, third = (evaluate_and_gate(settings, uri, EVAL_DS, v) for v in (v2, v3))
    assert second["passed"] and second["champion_version"] == v1, second["reasons"]
    assert client.get_model_version(name, v2).tags["gate.decision"] == "pass"
    assert third["passed"] and third["champion_version"] == v1, third["reasons"]
    mini_app = [c for c in second["cells"] if c["scenario"] == "mini_app"]
    assert {c["status"] for c in mini_app} == {"advisory"}

    failed = evaluate_and_gate(settings, uri, EVAL_DS, bad)
    assert not failed["passed"] and any(" fail: " in r for r in failed["reasons"])
    assert promote(settings, failed) == {"promoted": False, "champion": v1, "reason": f"gate failed for v{bad}"}
    assert current_champion(settings) == v1
    bad_version = client.get_model_version(name, bad)
    assert bad_version.tags["gate.passed"] == "false" and bad_version.tags["status"] == "rejected"
    assert client.get_metric_history(bad_version.run_id, "gate.passed")[-1].value == 0.0
    assert {a.path for a in client.list_artifacts(bad_version.run_id, "gate")} >= {"gate/matrix.json"}

    moved = promote(settings, second, actor="test")
    assert moved["promoted"] and moved["previous_champion"] == v1
    assert str(client.get_model_version_by_alias(name, "previous_champion").version) == v1
    assert promote(settings, second)["promoted"] is False  # a retried task is a no-op
    with pytest.raises(PromotionError, match="stale decision"):
        promote(settings, third)  # judged against v1, but v2 is champion now
    assert current_champion(settings) == v2

    undone = rollback(settings, actor="test", reason="bad online metrics")
    assert undone["champion"] == v1 and undone["rolled_back"] == v2
    assert current_champion(settings) == v1
    assert client.get_model_version(name, v2).tags["status"] == "rolled_back"
    with pytest.raises(PromotionError, match="nothing to roll back"):
        rollback(settings)
    history = alias_history(settings)
    assert [(h["alias"], h["to"]) for h in history] == [
        ("champion", v1),
        ("previous_champion", v1),
        ("champion", v2),
        ("champion", v1),
        ("previous_champion", None),
    ]
    assert history[-2]["by"] == "test" and "bad online metrics" in history[-2]["why"]

    told = history_lines(settings)  # `msmt history`
    assert told[0] == f"{name}: champion v{v1}, previous_champion none" and len(told) == 2 + len(history)
    assert f"v{v2} → v{v1}" in told[-2] and "rollback: bad online metrics" in told[-2]
    header, day = status_lines(settings)  # `msmt status`: the one held-out day these gates judged
    assert header.startswith("held-out day") and day.split()[0] == EVAL_DS and day.split()[1] in {"passed", "rejected"}

    seen = evaluate_and_gate(settings, uri, DAYS[-2], v2)  # champion v1 trained on that day: it knows the rows
    assert not seen["passed"] and seen["reasons"][0].startswith(f"v{v1} was trained on {DAYS[-2]}"), seen["reasons"]
    assert client.get_model_version(name, v2).tags["gate.decision"] == "fail"


def test_history_and_status_say_when_nothing_happened_yet(settings):
    assert history_lines(settings) == [f"{settings.registered_model}: no alias has moved yet (no promotion)"]
    assert status_lines(settings) == ["no day has been judged yet (no gate report in the lake)"]
