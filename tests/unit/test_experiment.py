"""The data scientist's one call: train and score a zoo model on a table, no pipeline around it."""

from __future__ import annotations

import pytest
from test_data import training_table

from training.experiment import train_and_score
from training.hparams import OverrideError


def test_one_call_trains_with_the_pipelines_precedence_and_scores_every_cell(settings):
    table = training_table(n=400)  # days 2024-01-01 (train) and 2024-01-02 (held out)
    result = train_and_score(table, "mmoe", "2024-01-02", overrides={"epochs": 2, "n_experts": 2}, settings=settings)
    assert len(result.fitted.history) == 2 and result.model.config.n_experts == 2  # overrides over the file
    assert "valid_loss" in result.fitted.history[-1]  # the held-out day's loss is reported per epoch
    assert {(c["scenario"], c["task"]) for c in result.cells} == {
        (s, t) for s in settings.scenarios for t in settings.tasks
    }
    assert sum(c["rows"] for c in result.cells if c["task"] == "click") == 200  # the held-out day only
    assert not result.model.training


def test_a_bad_override_or_an_empty_side_is_refused(settings):
    table = training_table(n=40)
    with pytest.raises(OverrideError, match="n_expert"):
        train_and_score(table, "mmoe", "2024-01-02", overrides={"n_expert": 2}, settings=settings)
    with pytest.raises(ValueError, match="no rows with ds == '2030-01-01'"):
        train_and_score(table, "mmoe", "2030-01-01", settings=settings)
    with pytest.raises(ValueError, match="no training rows before 2024-01-01"):
        train_and_score(table, "mmoe", "2024-01-01", settings=settings)
