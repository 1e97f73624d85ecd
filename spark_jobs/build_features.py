"""Build the user / item aggregate features of one day, as of 00:00 UTC of that day.

    spark-submit spark_jobs/build_features.py --ds 2026-01-08

Day D's features summarise, per view, the raw logs of the view's `window_days` days
strictly before D (partitions D-window … D-1, declared in the data contract), cleaned with the same rules as
the samples (spark_jobs.common): impressions, clicks (deduplicated per
impression) and conversions (on those clicks, inside the attribution window,
with ts before D). Nothing on or after D enters them, so joining day D's
samples to them point-in-time leaks no label.

Rates are smoothed towards the longest window's rate (of the scenario, for the
per-scenario views) so that a key with few impressions does not get an extreme
CTR: ctr = (clicks + K·ctr₀) / (impressions + K), cvr = (conversions + M·cvr₀) / (clicks + M).
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Iterable, Sequence

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from msmt import lake
from msmt.contract import FeatureView
from msmt.settings import Settings
from spark_jobs.common import (
    flag_raw,
    labelled_impressions,
    read_raw,
    spark_uri,
    submit,
)

log = logging.getLogger("msmt.build_features")

CTR_PRIOR_IMPRESSIONS = 20  # K: a key needs ~20 impressions before its own CTR dominates
CVR_PRIOR_CLICKS = 20  # M: the same for conversions per click


def window_days(settings: Settings, feature_ds: str) -> list[str]:
    """The raw partitions day `feature_ds` aggregates: the longest view's window, strictly before it."""
    longest = max(view.window_days for view in settings.data_contract.features.values())
    return lake.days_between(lake.shift(feature_ds, -longest), longest)


def extract(spark: SparkSession, settings: Settings, feature_ds: str) -> dict[str, DataFrame]:
    """Raw logs of the window; missing days (before the first log) read as empty."""
    days = window_days(settings, feature_ds)
    return {name: read_raw(spark, settings, name, days) for name in ("impressions", "clicks", "conversions")}


def label_window(raw: dict[str, DataFrame], settings: Settings) -> DataFrame:
    """Usable impressions of the window with their 0/1 click and conversion labels (whatever the contract
    names its tasks) and `scenario_id`."""
    flagged = flag_raw(raw, settings)
    ids = F.create_map(*[F.lit(x) for pair in settings.scenario_ids.items() for x in pair])
    click, conversion = settings.tasks
    labelled = labelled_impressions(
        flagged["impressions"], flagged["clicks"], flagged["conversions"], settings.data_contract
    )
    return labelled.select(
        "ds",
        "user_id",
        "item_id",
        F.element_at(ids, F.col("scenario")).cast("long").alias("scenario_id"),
        F.col(click).alias("click"),
        F.col(conversion).alias("conversion"),
    )


def prior_rates(labelled: DataFrame) -> dict[int | None, tuple[float, float]]:
    """(ctr₀, cvr₀) of the whole window (key None) and of each scenario id."""
    totals = labelled.rollup("scenario_id").agg(
        F.count("*").alias("impressions"), F.sum("click").alias("clicks"), F.sum("conversion").alias("conversions")
    )
    return {
        row["scenario_id"]: (
            row["clicks"] / row["impressions"],
            row["conversions"] / row["clicks"] if row["clicks"] else 0.0,
        )
        for row in totals.collect()
    }


def aggregate(
    labelled: DataFrame, view: FeatureView, ctr_prior: Column, cvr_prior: Column, feature_ds: str
) -> DataFrame:
    """The view's statistics per key over its own window, stamped 00:00 UTC of `feature_ds` (its contract layout)."""
    stamp = F.lit(feature_ds).cast("timestamp")  # session time zone is UTC
    keys = view.key_columns
    in_window = labelled.where(F.col("ds") >= lake.shift(feature_ds, -view.window_days))
    counts = in_window.groupBy(*keys).agg(
        F.count("*").alias("impressions"),
        F.sum("click").cast("long").alias("clicks"),
        F.sum("conversion").cast("long").alias("conversions"),
    )
    statistics = {
        "impressions": F.col("impressions"),
        "clicks": F.col("clicks"),
        "conversions": F.col("conversions"),
        "ctr": (F.col("clicks") + CTR_PRIOR_IMPRESSIONS * ctr_prior) / (F.col("impressions") + CTR_PRIOR_IMPRESSIONS),
        "cvr": (F.col("conversions") + CVR_PRIOR_CLICKS * cvr_prior) / (F.col("clicks") + CVR_PRIOR_CLICKS),
    }
    values = [statistics[name].alias(column) for name, column in zip(view.statistics, view.value_columns, strict=True)]
    return counts.select(*keys, *values, stamp.alias("event_timestamp"), stamp.alias("created_timestamp"))


def transform(
    labelled: DataFrame, priors: dict[int | None, tuple[float, float]], feature_ds: str, views: Iterable[FeatureView]
) -> dict[str, DataFrame]:
    """The contract's feature views of `feature_ds`: overall views shrink to the window's rate, per-scenario
    ones to their scenario's."""
    overall_ctr, overall_cvr = priors.get(None, (0.0, 0.0))
    by_scenario = {sid: rates for sid, rates in priors.items() if sid is not None}
    ctr_map = _literal_map({sid: ctr for sid, (ctr, _) in by_scenario.items()})
    cvr_map = _literal_map({sid: cvr for sid, (_, cvr) in by_scenario.items()})
    out = {}
    for view in views:
        if "scenario" in view.entities:
            ctr_prior = F.element_at(ctr_map, F.col("scenario_id"))
            cvr_prior = F.element_at(cvr_map, F.col("scenario_id"))
        else:
            ctr_prior, cvr_prior = F.lit(overall_ctr), F.lit(overall_cvr)
        out[view.name] = aggregate(labelled, view, ctr_prior, cvr_prior, feature_ds)
    return out


def _literal_map(values: dict[int, float]) -> Column:
    """A scenario_id -> rate map column (typed, so an empty window still resolves)."""
    return F.create_map(*[F.lit(x) for pair in values.items() for x in pair]).cast("map<bigint,double>")


def load(views: dict[str, DataFrame], settings: Settings, feature_ds: str) -> dict[str, int]:
    """Overwrite features/<view>/ds=feature_ds of each view, sorted by key within files; returns rows written."""
    rows = {}
    for view, frame in views.items():
        uri = spark_uri(lake.features(settings, view, feature_ds))
        frame.sortWithinPartitions(*settings.data_contract.features[view].key_columns).write.mode("overwrite").parquet(
            uri
        )
        rows[view] = frame.sparkSession.read.parquet(uri).count()  # footers only
    return rows


def run(spark: SparkSession, settings: Settings, feature_ds: str) -> dict:
    """Build features/<view>/ds=feature_ds for every view; return rows per view, the priors and timings."""
    start = time.perf_counter()
    days = window_days(settings, feature_ds)
    log.info("building features as of %s 00:00 UTC from raw days %s..%s", feature_ds, days[0], days[-1])
    labelled = label_window(extract(spark, settings, feature_ds), settings).cache()
    priors = prior_rates(labelled)
    views = settings.data_contract.features.values()
    rows = load(transform(labelled, priors, feature_ds, views), settings, feature_ds)
    impressions = labelled.count()
    labelled.unpersist()
    seconds = time.perf_counter() - start
    stats = {
        "feature_ds": feature_ds,
        "window": [days[0], days[-1]],
        "impressions": impressions,
        "ctr_prior": priors.get(None, (0.0, 0.0))[0],
        "cvr_prior": priors.get(None, (0.0, 0.0))[1],
        "rows": rows,
        "seconds": round(seconds, 3),
        "rows_per_s": round(impressions / seconds, 1),
    }
    log.info("features ds=%s from %d impressions: %s rows, %.1f s", feature_ds, impressions, rows, seconds)
    return stats


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ds", required=True, help="feature day YYYY-MM-DD: aggregates of the days before it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return submit(run, Settings.from_env(), args.ds, app_name="msmt-build-features")


if __name__ == "__main__":
    main()
