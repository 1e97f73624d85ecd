"""Feast objects of msmt, built from Settings so every profile shares one definition.

Lineage order as in Feast's templates: entities → sources → feature views →
feature service. Feature tables are written by `spark_jobs.build_features`: one
row per key and day, stamped 00:00 UTC and computed only from logs strictly
before that instant, so a point-in-time join can never leak the future.
"""

from __future__ import annotations

from datetime import timedelta

import pyarrow as pa
from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.data_format import ParquetFormat
from feast.types import Float64, Int64, PrimitiveFeastType

from msmt import lake
from msmt.settings import Settings

# A day's aggregates stay usable for two days: a late features job falls back
# to yesterday's values instead of nulls, anything older counts as missing.
FEATURE_TTL = timedelta(days=2)

_DESCRIPTIONS = {
    "impressions": "impressions in the trailing window",
    "clicks": "distinct clicked impressions in the trailing window",
    "conversions": "conversions attributed to those clicks, landed before the day",
    "ctr": "clicks / impressions, smoothed towards the window's global CTR",
    "cvr": "conversions / clicks, smoothed towards the window's global CVR",
}


def _feast_type(kind: pa.DataType) -> PrimitiveFeastType:
    return Int64 if pa.types.is_integer(kind) else Float64


def definitions(settings: Settings) -> list[object]:
    """Every Feast object msmt registers, pointing at this profile's lake."""
    # Entities: who or what a feature row describes.
    user = Entity(
        name="user", join_keys=["user_id"], value_type=ValueType.INT64, description="a person seeing impressions"
    )
    item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.INT64, description="a rankable item")
    scenario = Entity(
        name="scenario", join_keys=["scenario_id"], value_type=ValueType.INT64, description="surface / tab / country"
    )
    entities = {"user": user, "item": item, "scenario": scenario}

    contract = settings.data_contract
    views = []
    for view, spec in contract.features.items():  # declared in the data contract
        source = FileSource(
            name=f"{view}_source",
            path=f"{lake.features(settings, view)}/ds=*/*.parquet",  # every day's partition
            file_format=ParquetFormat(),
            timestamp_field="event_timestamp",
            s3_endpoint_override=settings.s3_endpoint_url or None,
            description=f"{view} parquet written daily by spark_jobs.build_features",
        )
        views.append(
            FeatureView(
                name=view,
                entities=[entities[key] for key in spec.entities],
                ttl=FEATURE_TTL,
                schema=[
                    Field(
                        name=column, dtype=_feast_type(spec.schema.field(column).type), description=_DESCRIPTIONS[stat]
                    )
                    for stat, column in zip(spec.statistics, spec.value_columns, strict=True)
                ],
                online=True,
                source=source,
                tags={"owner": "msmt", "grain": "daily"},
            )
        )
    # The model contract: the trainer and the online scorer fetch exactly these.
    service = FeatureService(
        name=contract.feature_service,
        features=views,
        tags={"owner": "msmt", "contract": contract.name, "contract.digest": contract.digest},
        description=f"the ranker's features under contract {contract.source}",
    )
    return [*entities.values(), *views, service]
