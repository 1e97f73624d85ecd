"""Column contracts between the steps (pyarrow types; Spark mirrors them).

Timestamps are UTC microseconds: Spark and Feast both need `us`, pandas would
write `ns` and Feast then fails with a misleading "Unable to find table".
"""

from __future__ import annotations

import pyarrow as pa

TS = pa.timestamp("us", tz="UTC")

IMPRESSIONS = pa.schema(
    [
        ("impression_id", pa.string()),
        ("request_id", pa.string()),  # candidates shown together in one response
        ("ts", TS),
        ("user_id", pa.int64()),
        ("item_id", pa.int64()),
        ("scenario", pa.string()),
        ("position", pa.int32()),  # 0-based slot in the response
        ("device", pa.string()),  # ios | android | web
        ("user_segment", pa.int32()),  # noisy observable proxy of the user's latent vector
        ("item_category", pa.int32()),
        ("item_price_bucket", pa.int32()),
        ("hist_item_ids", pa.list_(pa.int64())),  # user's last clicked items before ts, newest first
    ]
)

CLICKS = pa.schema(
    [
        ("click_id", pa.string()),
        ("impression_id", pa.string()),
        ("ts", TS),
    ]
)

CONVERSIONS = pa.schema(
    [
        ("conversion_id", pa.string()),
        ("click_id", pa.string()),
        ("ts", TS),  # may be days after the click: partitioned by its own day
        ("value", pa.float64()),
    ]
)

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
RAW_KEYS = {
    "impressions": ("impression_id", "request_id", "ts", "user_id", "item_id", "scenario"),
    "clicks": ("click_id", "impression_id", "ts"),
    "conversions": ("conversion_id", "click_id", "ts"),
}
RECORD_IDS = {"impressions": "impression_id", "clicks": "click_id", "conversions": "conversion_id"}

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
_FEATURE_TIMES = [("event_timestamp", TS), ("created_timestamp", TS)]
_COUNTS_AND_RATES = [
    ("impressions", pa.int64()),
    ("clicks", pa.int64()),
    ("conversions", pa.int64()),
    ("ctr", pa.float64()),  # smoothed towards the global rate
    ("cvr", pa.float64()),  # conversions per click, smoothed
]


def _feature_schema(prefix: str, keys: list[tuple[str, pa.DataType]]) -> pa.Schema:
    return pa.schema(keys + [(f"{prefix}_{name}", kind) for name, kind in _COUNTS_AND_RATES] + _FEATURE_TIMES)


FEATURES = {
    "user_stats": _feature_schema("u", [("user_id", pa.int64())]),
    "item_stats": _feature_schema("i", [("item_id", pa.int64())]),
    "user_scenario_stats": _feature_schema("us", [("user_id", pa.int64()), ("scenario_id", pa.int64())]),
    "item_scenario_stats": _feature_schema("is", [("item_id", pa.int64()), ("scenario_id", pa.int64())]),
}


def feature_columns(view: str) -> list[str]:
    """The value columns of a feature view (keys and timestamps excluded)."""
    skip = {"user_id", "item_id", "scenario_id", "event_timestamp", "created_timestamp"}
    return [name for name in FEATURES[view].names if name not in skip]
