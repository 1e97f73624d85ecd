"""The data contract: the simulator's is the default, and a wrong contract stops at load, named."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pytest

from msmt import contract, schemas
from msmt.contract import ContractError


def test_the_default_contract_is_the_simulators_layout():
    default = contract.load()
    assert default.name == "simulator" and default.tasks == ("click", "conversion")
    assert default.raw_keys["impressions"] == ("impression_id", "request_id", "ts", "user_id", "item_id", "scenario")
    assert default.raw_keys["conversions"] == ("conversion_id", "click_id", "ts")  # `value` is no key
    assert default.record_ids == {"impressions": "impression_id", "clicks": "click_id", "conversions": "conversion_id"}
    assert default.raw_schema("impressions").field("hist_item_ids").type == pa.list_(pa.int64())
    assert (default.column("impressions", "position").min, default.column("conversions", "value").min) == (0, 0)
    view = default.features["user_scenario_stats"]
    assert view.key_columns == ("user_id", "scenario_id")
    assert view.schema.names == ["user_id", "scenario_id", "us_impressions", "us_clicks", "us_conversions",
                                 "us_ctr", "us_cvr", "event_timestamp", "created_timestamp"]  # fmt: skip
    assert schemas.IMPRESSIONS.equals(default.raw_schema("impressions")) and schemas.CONTRACT.digest == default.digest


def test_the_windows_are_the_contracts(tmp_path):
    default = contract.load()
    assert default.attribution_window_days == 2 and {v.window_days for v in default.features.values()} == {7}
    text = contract.DEFAULT.read_text().replace("window_days = 2", "window_days = 3")
    text = text.replace('prefix = "us"\nwindow_days = 7', 'prefix = "us"\nwindow_days = 28')
    mine = _write(tmp_path, text)
    assert mine.attribution_window_days == 3 and mine.features["user_scenario_stats"].window_days == 28


def test_a_view_with_fewer_statistics_has_only_those_columns(tmp_path):
    text = contract.DEFAULT.read_text().replace('prefix = "u"\n', 'prefix = "u"\nstatistics = ["clicks", "ctr"]\n')
    trimmed = _write(tmp_path, text)
    assert trimmed.features["user_stats"].value_columns == ["u_clicks", "u_ctr"]
    assert trimmed.digest != contract.load().digest  # a model records which contract it was trained under


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("user_id = { type = \"int64\", role = \"user_key\" }", 'user_id = { type = "int46", role = "user_key" }'),
         "table impressions, column user_id: type 'int46'"),
        (('role = "sparse", vocab = 65, min = 0,', 'role = "sparse", min = 0,'),
         "table impressions, column position: a sparse column needs `vocab`"),
        (('scenario = { type = "string", role = "scenario",', 'scenario = { type = "string", role = "value",'),
         "table impressions needs exactly one column with role 'scenario'"),
        (('role = "sparse", hash_buckets = 1024,', 'role = "sparse", vocab = 9,'),
         "table impressions, column device: a sparse string column is hashed"),
        (('role = "sparse", vocab = 65, min = 0,', 'role = "sparse", vocab = 65, hash_buckets = 9, min = 0,'),
         "table impressions, column position: declare `vocab` or `hash_buckets`, not both"),
        (('vocab = 1025 }', 'vocab = "lots" }'),
         "table impressions, column item_category: a sparse column needs `vocab`"),
        (('hist_item_ids = { type = "list<int64>"', 'hour = { type = "list<int64>"'),
         "table impressions, column hour: the name is taken in the samples"),
        (('role = "sparse", hash_buckets = 1024,', 'role = "dense", hash_buckets = 1024,'),
         "table impressions, column device: a dense column must be numeric"),
        (('window_days = 2', 'window_days = -1'),
         "label 'conversion': window_days (a whole number of days >= 0)"),
        (('prefix = "u"\nwindow_days = 7', 'prefix = "u"\nwindow_days = 0'),
         "feature view user_stats: window_days must be a whole number of days >= 1"),
        (('prefix = "i"\n', 'prefix = "i"\nwindow = 3\n'),
         "feature view item_stats: unknown field(s) ['window']"),
        (('[labels.click]\ntable = "clicks"\n[labels.conversion]\ntable = "conversions"\nwindow_days = 2\n',
          '[labels.conversion]\ntable = "conversions"\nwindow_days = 2\n[labels.click]\ntable = "clicks"\n'),
         "labels must be two tasks, the clicks table's then the conversions table's"),
        (('entities = ["item", "scenario"]', 'entities = ["item", "shop"]'),
         "feature view item_scenario_stats: entities ['item', 'shop']"),
        (('[labels.click]\ntable = "clicks"', '[labels.click]\ntable = "taps"'),
         "label 'click' names table 'taps'"),
        (('device = { type = "string", role = "sparse",', 'device = { type = "string", role = "sparse", min = 0,'),
         "table impressions, column device: min on a string column"),
    ],
)  # fmt: skip
def test_a_wrong_contract_is_refused_naming_file_table_and_column(tmp_path, edit, message):
    old, new = edit
    text = contract.DEFAULT.read_text()
    assert old in text
    with pytest.raises(ContractError, match=re.escape(message)) as refused:
        _write(tmp_path, text.replace(old, new, 1))
    assert str(tmp_path / "mine.toml") in str(refused.value)


def test_a_column_added_to_the_contract_reaches_the_samples_and_the_model(tmp_path):
    """One line in the contract, no code: the samples carry the column and the model's spec reads it."""
    text = contract.DEFAULT.read_text().replace(
        "[tables.clicks]",
        'basket_value = { type = "float64", role = "dense" }\n'
        'shop_id = { type = "int64", role = "sparse", vocab = "data" }\n\n[tables.clicks]',
    )
    mine = _write(tmp_path, text)
    assert {"basket_value", "shop_id"} <= set(mine.samples_schema.names)
    assert mine.samples_schema.names[-3:] == ["hour", "click", "conversion"]

    from training.data import spec_for

    with pytest.raises(ValueError, match="shop_id"):  # sized from the data: the training rows must say how
        spec_for(mine, 4)
    spec = spec_for(mine, 4, data_vocab={"shop_id": 51})
    assert spec.vocab("shop_id") == 51 and "basket_value" in spec.dense_fields
    assert spec.inputs()[spec.sparse_fields.index("shop_id")]["rows"] == 51  # what feature_spec.json records
    assert mine.feature_service != contract.load().feature_service  # a new contract, a new Feast service


def test_key_columns_are_read_by_role_whatever_their_names(tmp_path):
    """A team's `search_id` is the jobs' request_id; the payload of a quarantined row keeps the team's name."""
    text = contract.DEFAULT.read_text().replace("request_id = {", "search_id = {").replace("ts = {", "logged_at = {", 1)
    mine = _write(tmp_path, text)
    names = mine.canonical_names("impressions")
    assert names["search_id"] == "request_id" and names["logged_at"] == "ts" and names["position"] == "position"
    assert mine.samples_schema.names[:6] == list(contract.SAMPLE_KEYS)


def test_a_file_that_is_not_toml_is_refused(tmp_path):
    with pytest.raises(ContractError, match="cannot be read as TOML"):
        _write(tmp_path, "name = [unclosed")


def _write(tmp_path: Path, text: str) -> contract.Contract:
    path = tmp_path / "mine.toml"
    path.write_text(text)
    return contract.load(path)
