"""Build one day of labelled, scenario-tagged training samples from the raw logs.

    spark-submit spark_jobs/build_samples.py --ds 2026-01-08          # run day: samples of ds - window
    spark-submit spark_jobs/build_samples.py --sample-ds 2026-01-06   # one sample day (backfills)

Labels mature: a click may land the day after its impression and a conversion
up to `attribution_window_days` after its click, so the run for day `ds` builds
the samples of `ds - attribution_window_days`, the last day whose labels are final.

Samples of day sd are the valid impressions of raw partition sd; `click` = a
valid click within the window (click partitions sd..sd+1, duplicates counted
once); `conversion` = clicked and a valid conversion within the window of that
click (conversion partitions sd..sd+window). An impression whose only clicks are
stamped before it is no sample: its label is unknowable (clicked_before_shown).
Every raw row of partition sd is either used or written to quarantine/ds=sd/source=…
with its reason (rules in spark_jobs.common), so samples + quarantined impressions =
raw impressions. Extract, transform and load are separate so each can be tested
and reused; re-running a day overwrites exactly that day.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from msmt import lake
from msmt.contract import Contract
from msmt.settings import Settings
from spark_jobs.common import (
    count_by,
    flag_raw,
    labelled_impressions,
    quarantine_rows,
    read_raw,
    spark_uri,
    submit,
)

log = logging.getLogger("msmt.build_samples")


def sample_day(run_ds: str, settings: Settings) -> str:
    """The day whose labels have matured by `run_ds`: run_ds - attribution_window_days."""
    return lake.shift(run_ds, -settings.attribution_window_days)


def extract(spark: SparkSession, settings: Settings, sample_ds: str) -> dict[str, DataFrame]:
    """Raw logs around `sample_ds`: enough history to judge the day's clicks and conversions, and the
    later days its labels can land in. Partition sample_ds of each table is required.

    Impressions sd-w-1..sd+1 and clicks sd-w-1..sd+1: a click of day p is judged against impressions
    of p-1..p+1 (a click of sd stamped before its impression of sd+1 is click_before_impression, not
    an orphan) and earlier clicks, and conversions of day sd look back at clicks of sd-w..sd.
    """
    window = settings.attribution_window_days
    first = lake.shift(sample_ds, -window - 1)
    return {
        "impressions": read_raw(spark, settings, "impressions", lake.days_between(first, window + 3), [sample_ds]),
        "clicks": read_raw(spark, settings, "clicks", lake.days_between(first, window + 3), [sample_ds]),
        "conversions": read_raw(spark, settings, "conversions", lake.days_between(sample_ds, window + 1), [sample_ds]),
    }


def to_samples(flagged: dict[str, DataFrame], sample_ds: str, settings: Settings) -> DataFrame:
    """Labelled impressions of `sample_ds` in the contract's samples layout (`Contract.samples_schema`: keys,
    the input columns under their own names, `hour`, a label per task), plus the partition column `scenario`."""
    contract = settings.data_contract
    ids = F.create_map(*[F.lit(x) for pair in settings.scenario_ids.items() for x in pair])
    labelled = labelled_impressions(
        flagged["impressions"].where(F.col("ds") == sample_ds), flagged["clicks"], flagged["conversions"], contract
    )
    keys = {
        "impression_id": F.col("impression_id"),
        "request_id": F.col("request_id"),
        "event_timestamp": F.col("ts"),
        "user_id": F.col("user_id"),
        "item_id": F.col("item_id"),
        "scenario_id": F.element_at(ids, F.col("scenario")).cast("long"),
        "hour": F.hour("ts").cast("int"),
    }
    layout = [keys.get(field.name, F.col(field.name)).alias(field.name) for field in contract.samples_schema]
    return labelled.select(*layout, F.col("scenario"))


def to_quarantine(flagged: dict[str, DataFrame], sample_ds: str, contract: Contract) -> DataFrame:
    """Rejected rows of partition `sample_ds` of every raw table (schemas.QUARANTINE)."""
    parts = [quarantine_rows(frame, source, sample_ds, contract) for source, frame in flagged.items()]
    return parts[0].unionByName(parts[1]).unionByName(parts[2])


def load(samples: DataFrame, quarantine: DataFrame, settings: Settings, sample_ds: str) -> None:
    """Overwrite the whole ds= directory of both tables (static mode: a stale scenario does not survive)."""
    (
        samples.repartition("scenario")
        .sortWithinPartitions("impression_id")
        .write.mode("overwrite")
        .option("partitionOverwriteMode", "static")
        .partitionBy("scenario")
        .parquet(spark_uri(lake.samples(settings, sample_ds)))
    )
    (
        quarantine.repartition("source")
        .sortWithinPartitions("reason", "record_id")
        .write.mode("overwrite")
        .option("partitionOverwriteMode", "static")
        .partitionBy("source")
        .parquet(spark_uri(lake.quarantine(settings, sample_ds)))
    )


def summarize(flagged: dict[str, DataFrame], samples: DataFrame, sample_ds: str, tasks: Sequence[str]) -> dict:
    """Counts of partition `sample_ds`: raw rows, quarantine reasons and samples per scenario with label rates."""
    raw: dict[str, int] = {}
    quarantined: dict[str, dict[str, int]] = {}
    for source, frame in flagged.items():
        by_reason = count_by(frame.where(F.col("ds") == sample_ds), "reason")
        raw[source] = sum(by_reason.values())
        quarantined[source] = {reason: n for (reason,), n in sorted(by_reason.items(), key=str) if reason}
    per_scenario = {
        row["scenario"]: {"rows": row["rows"], "clicks": row["clicks"], "conversions": row["conversions"]}
        for row in samples.groupBy("scenario")
        .agg(F.count("*").alias("rows"), F.sum(tasks[0]).alias("clicks"), F.sum(tasks[1]).alias("conversions"))
        .collect()
    }
    for cell in per_scenario.values():
        cell["ctr"] = cell["clicks"] / cell["rows"]
        cell["cvr"] = cell["conversions"] / cell["clicks"] if cell["clicks"] else None
    rows = sum(cell["rows"] for cell in per_scenario.values())
    clicks = sum(cell["clicks"] for cell in per_scenario.values())
    return {
        "sample_ds": sample_ds,
        "raw": raw,
        "quarantine": quarantined,
        "samples": rows,
        "ctr": clicks / rows if rows else None,
        "ctcvr": sum(cell["conversions"] for cell in per_scenario.values()) / rows if rows else None,
        "scenarios": dict(sorted(per_scenario.items())),
    }


def run(spark: SparkSession, settings: Settings, sample_ds: str) -> dict:
    """Build samples/ds=sample_ds and quarantine/ds=sample_ds; return the day's counts (see summarize)."""
    start = time.perf_counter()
    window = settings.attribution_window_days
    log.info(
        "building samples of %s (labels of later days are read up to %s)", sample_ds, lake.shift(sample_ds, window)
    )
    flagged = {
        source: frame.cache() for source, frame in flag_raw(extract(spark, settings, sample_ds), settings).items()
    }
    samples = to_samples(flagged, sample_ds, settings).cache()
    load(samples, to_quarantine(flagged, sample_ds, settings.data_contract), settings, sample_ds)
    stats = summarize(flagged, samples, sample_ds, settings.tasks)
    for frame in (samples, *flagged.values()):
        frame.unpersist()
    seconds = time.perf_counter() - start
    stats["seconds"] = round(seconds, 3)
    stats["rows_per_s"] = round(stats["raw"]["impressions"] / seconds, 1)
    log.info(
        "samples ds=%s: %d of %d raw impressions kept, ctr %s, quarantine %s, %.1f s (%.0f rows/s)",
        sample_ds,
        stats["samples"],
        stats["raw"]["impressions"],
        stats["ctr"],
        stats["quarantine"],
        seconds,
        stats["rows_per_s"],
    )
    return stats


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    day = parser.add_mutually_exclusive_group(required=True)
    day.add_argument("--ds", help="run day YYYY-MM-DD: builds the samples of ds - attribution_window_days")
    day.add_argument("--sample-ds", help="sample day YYYY-MM-DD to build directly (backfills)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = Settings.from_env()
    sample_ds = args.sample_ds or sample_day(args.ds, settings)
    if args.ds:
        log.info(
            "run day %s builds samples of %s: conversions land up to %d days after the click",
            args.ds,
            sample_ds,
            settings.attribution_window_days,
        )
    return submit(run, settings, sample_ds, app_name="msmt-build-samples")


if __name__ == "__main__":
    main()
