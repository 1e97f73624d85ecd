"""AliExpress, imported under its shipped contract, reaches the model with every feature: samples (Spark),
aggregates (Spark), Feast's point-in-time training set through the contract's feature service, and the
model's spec — 16 categorical columns, 63 numerical ones, no code written for the dataset."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from feature_repo.publish import build_training_set, publish
from msmt import lake
from pipeline.importers.aliexpress import import_aliexpress
from spark_jobs import build_features, build_samples
from training.data import training_spec
from training.experiment import train_and_score

pytestmark = pytest.mark.integration

START, DAYS = "2024-01-01", ("2024-01-01", "2024-01-02")
HEADER = ["search_id", *(f"categorical_{i}" for i in range(1, 17)), *(f"numerical_{i}" for i in range(1, 64)),
          "click", "conversion"]  # fmt: skip


def _write_country(path, seed: int, searches: int) -> None:
    """Searches of 5 items; clicks follow categorical_10 and numerical_1, so the features carry signal."""
    rng = np.random.default_rng(seed)
    lines = [",".join(HEADER)]
    for search in range(searches):
        user = rng.integers(0, 4, 9)
        for _ in range(5):
            item, numerical = rng.integers(0, 30, 7), rng.normal(size=63)
            p = 1 / (1 + np.exp(-(-2.0 + 2.0 * (item[0] % 3 == 0) + 2.0 * numerical[0])))
            click = int(rng.random() < p)
            conversion = int(click and rng.random() < 0.3)
            values = [search, *user, *item, *(f"{v:.3f}" for v in numerical), click, conversion]
            lines.append(",".join(map(str, values)))
    path.parent.mkdir(parents=True)
    path.write_text("\n".join(lines) + "\n")


def test_every_aliexpress_feature_reaches_the_model(spark, settings, tmp_path):
    for country, seed in (("NL", 1), ("ES", 2)):
        _write_country(tmp_path / f"AliExpress_{country}" / "train.csv", seed, searches=400)
    report = import_aliexpress(settings, [tmp_path / "AliExpress_NL", tmp_path / "AliExpress_ES"], START, len(DAYS),
                               progress=False)  # fmt: skip
    team = settings.with_(contract=report["contract"], scenarios=tuple(report["msmt_scenarios"].split(",")))
    assert team.data_contract.name == "aliexpress"

    for ds in DAYS:
        build_samples.run(spark, team, ds)
        build_features.run(spark, team, ds)
    samples = pq.read_table(lake.samples(team, DAYS[0]))
    assert {f"categorical_{i}" for i in range(1, 17)} | {f"numerical_{i}" for i in range(1, 64)} <= set(
        samples.column_names
    )
    publish(team, list(DAYS))
    uri = build_training_set(team, list(DAYS), DAYS[-1])

    spec = training_spec(team, uri, DAYS[-1])
    assert spec.seq_field is None and "device" not in spec.sparse_fields
    assert [f for f in spec.sparse_fields if f.startswith("categorical_")] == [f"categorical_{i}" for i in range(1, 17)]
    assert [f for f in spec.dense_fields if f.startswith("numerical_")] == [f"numerical_{i}" for i in range(1, 64)]
    assert spec.vocab("categorical_10") == 29 + 2  # sized from the training day: codes 0..29, plus row 0
    assert {"u_ctr", "is_cvr"} <= set(spec.dense_fields)  # the aggregates, through the contract's Feast service

    scored = train_and_score(uri, "mmoe", DAYS[-1], settings=team, overrides={"epochs": 6, "batch_size": 64})
    assert scored.spec.to_dict() == spec.to_dict()  # the notebook call and the pipeline read the same inputs
    clicks = [c for c in scored.cells if c["task"] == "click"]
    assert len(clicks) == 2 and all(c["auc"] > 0.6 for c in clicks), clicks  # the signal in the features is learnt
