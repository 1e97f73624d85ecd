"""Column layouts of msmt's default contract (the simulator's logs), and the tables no contract shapes.

The pipeline reads every layout from the active contract (`settings.data_contract`); the constants
here are that contract's when it is the default one: what `msmt simulate` writes and what the
tests build rows with. The quarantine and the simulator's `truth` table are msmt's own.

Timestamps are UTC microseconds: Spark and Feast both need `us`, pandas would
write `ns` and Feast then fails with a misleading "Unable to find table".
"""

from __future__ import annotations

import pyarrow as pa

from msmt import contract

CONTRACT = contract.load_cached(contract.DEFAULT)  # contracts/simulator.toml
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

# One row per impression of the sample day, written under samples/ds=…/scenario=…/.
SAMPLES = CONTRACT.samples_schema

# Malformed rows of any raw table, with the reason they were set aside.
QUARANTINE = pa.schema(
    [
        ("source", pa.string()),  # impressions | clicks | conversions
        ("record_id", pa.string()),  # impression_id / click_id / conversion_id (may be null)
        ("reason", pa.string()),
        ("payload", pa.string()),  # the raw row as JSON, under the contract's column names, so nothing is lost
    ]
)

# Feature tables: one row per key and day, stamped 00:00 UTC of that day and
# computed only from logs strictly before it.
FEATURES = {name: view.schema for name, view in CONTRACT.features.items()}


def feature_columns(view: str) -> list[str]:
    """The value columns of a feature view (keys and timestamps excluded)."""
    return CONTRACT.features[view].value_columns
