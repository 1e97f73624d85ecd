"""Column layouts between the steps (pyarrow types; Spark mirrors them), the raw ones and the
feature views from the data contract (`msmt.contract`), the samples' and quarantine's fixed here.

Timestamps are UTC microseconds: Spark and Feast both need `us`, pandas would
write `ns` and Feast then fails with a misleading "Unable to find table".
"""

from __future__ import annotations

import pyarrow as pa

from msmt import contract

CONTRACT = contract.load()  # the default contract: the simulator's logs (contracts/simulator.toml)
TS = contract.TS

IMPRESSIONS = CONTRACT.raw_schema("impressions")
CLICKS = CONTRACT.raw_schema("clicks")
CONVERSIONS = CONTRACT.raw_schema("conversions")

# Simulator only: the true probabilities behind each impression's labels.
TRUTH = pa.schema(
    [
        ("impression_id", pa.string()),
        ("scenario", pa.string()),
        ("p_click", pa.float64()),
        ("p_conversion", pa.float64()),  # p(click and conversion) on the impression space
    ]
)

RAW = {"impressions": IMPRESSIONS, "clicks": CLICKS, "conversions": CONVERSIONS, "truth": TRUTH}
# Columns without which a raw row cannot be joined (null → quarantined / counted by the checks).
RAW_KEYS = CONTRACT.raw_keys
RECORD_IDS = CONTRACT.record_ids

# One row per impression of the sample day, written under samples/ds=…/scenario=…/.
SAMPLES = pa.schema(
    [
        ("impression_id", pa.string()),
        ("request_id", pa.string()),
        ("event_timestamp", TS),
        ("user_id", pa.int64()),
        ("item_id", pa.int64()),
        ("scenario_id", pa.int64()),
        ("position", pa.int32()),
        ("device", pa.string()),
        ("hour", pa.int32()),
        ("user_segment", pa.int32()),
        ("item_category", pa.int32()),
        ("item_price_bucket", pa.int32()),
        ("hist_item_ids", pa.list_(pa.int64())),
        ("click", pa.int32()),
        ("conversion", pa.int32()),  # click and a conversion inside the attribution window
    ]
)

# Malformed rows of any raw table, with the reason they were set aside.
SAMPLE_KEYS = ("impression_id", "request_id", "event_timestamp", "user_id", "item_id", "scenario_id", "position")

QUARANTINE = pa.schema(
    [
        ("source", pa.string()),  # impressions | clicks | conversions
        ("record_id", pa.string()),  # impression_id / click_id / conversion_id (may be null)
        ("reason", pa.string()),
        ("payload", pa.string()),  # the raw row as JSON, so nothing is lost
    ]
)

# Feature tables: one row per key and day, stamped 00:00 UTC of that day and
# computed only from logs strictly before it.
FEATURES = {name: view.schema for name, view in CONTRACT.features.items()}


def feature_columns(view: str) -> list[str]:
    """The value columns of a feature view (keys and timestamps excluded)."""
    return CONTRACT.features[view].value_columns
