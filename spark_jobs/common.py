"""Spark session, raw-log readers and the row-validation rules shared by every job.

The quarantine rules live here, once: build_samples writes what they reject to
the quarantine table, build_features drops the same rows, so a sample and a
feature never disagree about which raw rows count.

Each `flag_*` function is DataFrame in, DataFrame out: it keeps the raw columns
(plus the partition day `ds`) and adds `reason`, null for a usable row and the
first rule the row breaks otherwise. Impressions are judged twice: on their own
(`flag_impressions`), then against their flagged clicks (`flag_clicked_before_shown`).
"""

from __future__ import annotations

import json
import logging
import operator
from collections.abc import Callable, Iterable, Sequence
from functools import reduce
from pathlib import Path
from urllib.parse import urlparse

import pyarrow as pa
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from msmt import lake, schemas
from msmt.contract import CANONICAL, REQUIRED_ROLES, Contract
from msmt.settings import Settings

log = logging.getLogger("msmt.spark")

SECONDS_PER_DAY = 86_400
# Columns without which a row cannot be joined, as read (key roles renamed, see read_raw).
KEYS = {table: [CANONICAL[table][role] for role in roles] for table, roles in REQUIRED_ROLES.items()}
RECORD_IDS = {"impressions": "impression_id", "clicks": "click_id", "conversions": "conversion_id"}


class MissingPartitionError(FileNotFoundError):
    """A raw partition the job cannot run without has not landed."""


# Runtime SQL settings every job relies on, applied to a reused session too.
SQL_CONF = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.sources.partitionOverwriteMode": "dynamic",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",  # Feast and pyarrow need us, not INT96
}


def submit(job: Callable[[SparkSession, Settings, str], dict], settings: Settings, ds: str, app_name: str) -> dict:
    """Run one job for one day as `spark-submit` does: own session, stopped after, stats printed."""
    spark = get_spark(settings, app_name=app_name)
    try:
        stats = job(spark, settings, lake.day(ds).isoformat())
    finally:
        spark.stop()
    print(json.dumps(stats, indent=2))
    return stats


def get_spark(settings: Settings, app_name: str = "msmt") -> SparkSession:
    """The active session, or a new one configured from settings; UTC and microsecond timestamps either way."""
    spark = SparkSession.getActiveSession()
    if spark is None:
        builder = SparkSession.builder.appName(app_name).master(settings.spark_master)
        for key, value in spark_conf(settings).items():
            builder = builder.config(key, value)
        spark = builder.getOrCreate()
        spark.sparkContext.setLogLevel("ERROR")
    for key, value in SQL_CONF.items():
        spark.conf.set(key, value)
    return spark


def spark_conf(settings: Settings) -> dict[str, str]:
    """A new session's configuration, rendered from the profile (kept apart from `get_spark` so it is
    testable without a JVM).

    An `s3://` lake adds Hadoop's s3a connector: hadoop-aws of the Hadoop pyspark ships (resolved from
    Maven by `spark.jars.packages`), path-style requests to a MinIO / moto endpoint. Keys never go in
    here: s3a's default credential chain reads AWS_* from the environment (driver and executors) or the
    instance's role."""
    conf = {
        "spark.driver.memory": settings.spark_driver_memory,
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
    }
    partitions = settings.spark_shuffle_partitions or (4 if settings.spark_master.startswith("local") else 0)
    if partitions:
        conf["spark.sql.shuffle.partitions"] = str(partitions)  # tiny days: 200 is all overhead
    if settings.lake.startswith("s3://"):
        conf["spark.jars.packages"] = f"org.apache.hadoop:hadoop-aws:{hadoop_version()}"
    if settings.lake.startswith("s3://") and settings.s3_endpoint_url:
        endpoint = urlparse(settings.s3_endpoint_url)
        conf |= {
            "spark.hadoop.fs.s3a.endpoint": settings.s3_endpoint_url,
            "spark.hadoop.fs.s3a.endpoint.region": "us-east-1",  # any region: the endpoint is not AWS's
            "spark.hadoop.fs.s3a.path.style.access": "true",  # bucket in the path: no per-bucket DNS name
            "spark.hadoop.fs.s3a.connection.ssl.enabled": str(endpoint.scheme == "https").lower(),
        }
    return conf


def hadoop_version() -> str:
    """The Hadoop version bundled with pyspark (hadoop-aws must match it exactly)."""
    import pyspark

    jars = Path(pyspark.__file__).parent / "jars"
    found = sorted(jars.glob("hadoop-client-api-*.jar"))
    if not found:
        raise FileNotFoundError(f"no hadoop-client-api jar in {jars}: cannot pick the matching hadoop-aws")
    return found[-1].name.removeprefix("hadoop-client-api-").removesuffix(".jar")


def spark_uri(uri: str) -> str:
    """Hadoop reads S3 through the s3a connector; the lake names it s3://."""
    return "s3a://" + uri.removeprefix("s3://") if uri.startswith("s3://") else uri


def spark_schema(schema: pa.Schema) -> T.StructType:
    """The Spark mirror of a pyarrow contract in msmt.schemas."""
    return T.StructType([T.StructField(f.name, _spark_type(f.type), True) for f in schema])


_SPARK_TYPES = {
    pa.string(): T.StringType(),
    pa.int64(): T.LongType(),
    pa.int32(): T.IntegerType(),
    pa.float64(): T.DoubleType(),
    schemas.TS: T.TimestampType(),
}


def _spark_type(kind: pa.DataType) -> T.DataType:
    if pa.types.is_list(kind):
        return T.ArrayType(_spark_type(kind.value_type), True)
    return _SPARK_TYPES[kind]


def path_exists(spark: SparkSession, uri: str) -> bool:
    """Existence through Hadoop's FileSystem, so local dirs and s3a behave alike."""
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(spark_uri(uri))
    return path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()).exists(path)


def read_raw(
    spark: SparkSession, settings: Settings, name: str, days: Iterable[str], required: Sequence[str] = ()
) -> DataFrame:
    """Raw table `name` over `days`, with the partition day as column `ds`, its key columns named by
    role (`Contract.canonical_names`: the jobs' vocabulary, whatever the team calls them).

    A missing day in `required` raises MissingPartitionError; any other missing day
    (history before the first log, conversions not landed yet) reads as empty.
    """
    schema = spark_schema(settings.data_contract.raw_schema(name))
    frames, missing = [], []
    for ds in days:
        uri = lake.raw(settings, name, ds)
        if not path_exists(spark, uri):
            if ds in required:
                raise MissingPartitionError(f"raw/{name} for ds={ds} has not landed: {uri}")
            missing.append(ds)
            continue
        frames.append(spark.read.schema(schema).parquet(spark_uri(uri)).withColumn("ds", F.lit(ds)))
    if missing:
        log.warning("raw/%s: no partition for %s, read as empty", name, ", ".join(missing))
    out = spark.createDataFrame([], schema.add("ds", T.StringType())) if not frames else frames[0]
    for frame in frames[1:]:
        out = out.unionByName(frame)
    return out.withColumnsRenamed(settings.data_contract.canonical_names(name))


def _first_failure(*rules: tuple[Column, str]) -> Column:
    """The reason of the first rule that holds, else null."""
    expr = F.lit(None).cast("string")
    for condition, reason in reversed(rules):
        expr = F.when(condition, F.lit(reason)).otherwise(expr)
    return expr


def _any_null(columns: Sequence[str]) -> Column:
    return reduce(operator.or_, [F.col(c).isNull() for c in columns])


def _outside_day(ts: str = "ts") -> Column:
    return F.to_date(F.col(ts)) != F.to_date(F.col("ds"))


def _after(later: str, earlier: str, days: int) -> Column:
    return F.col(later) > F.col(earlier) + F.expr(f"INTERVAL {days} DAYS")


def _keep_first(df: DataFrame, key: str, order: Sequence[str | Column], reason: str) -> DataFrame:
    """Flag every usable row but the first per `key` (by `order`) with `reason`."""
    rank = F.row_number().over(Window.partitionBy(key, F.col("reason").isNull()).orderBy(*order))
    return df.withColumn(
        "reason", F.when(F.col("reason").isNull() & (rank > 1), F.lit(reason)).otherwise(F.col("reason"))
    )


def flag_impressions(impressions: DataFrame, scenarios: Sequence[str], contract: Contract) -> DataFrame:
    """Rules: null_key, unknown_scenario, ts_outside_day, bad_<column> (a value outside the range the
    contract declares for it; a null is an unknown value, not a bad one), duplicate_impression (first kept).

    One more rule needs the flagged clicks: flag_clicked_before_shown.
    """
    out_of_range = [
        ((F.col(c.name) < c.min if c.min is not None else F.lit(False))
         | (F.col(c.name) > c.max if c.max is not None else F.lit(False)), f"bad_{c.name}")
        for c in contract.inputs() if c.min is not None or c.max is not None
    ]  # fmt: skip
    flagged = impressions.withColumn(
        "reason",
        _first_failure(
            (_any_null(KEYS["impressions"]), "null_key"),
            (~F.col("scenario").isin(list(scenarios)), "unknown_scenario"),
            (_outside_day(), "ts_outside_day"),
            *out_of_range,
        ),
    )
    # ts first: the earliest copy counts; the row's JSON last: a total order, so re-runs keep the same copy
    columns = [c for c in impressions.columns if c != "ds"]
    order = ("ts", "ds", "request_id", "user_id", "item_id", F.to_json(F.struct(*columns)))
    return _keep_first(flagged, "impression_id", order, "duplicate_impression")


def flag_clicks(clicks: DataFrame, impressions: DataFrame, window_days: int) -> DataFrame:
    """Rules: null_key, ts_outside_day, orphan_click, click_before_impression, after_attribution_window,
    duplicate_click (the first click on an impression counts, later ones are set aside).

    `impressions` are usable impressions; adds their `impression_ts`. A click of day p
    needs the impressions of p-1..p+1: one stamped just before its impression across
    midnight is click_before_impression, and only with day p+1 read is it not an orphan.
    """
    shown = impressions.select("impression_id", F.col("ts").alias("impression_ts"))
    flagged = clicks.join(shown, "impression_id", "left").withColumn(
        "reason",
        _first_failure(
            (_any_null(KEYS["clicks"]), "null_key"),
            (_outside_day(), "ts_outside_day"),
            (F.col("impression_ts").isNull(), "orphan_click"),
            (F.col("ts") < F.col("impression_ts"), "click_before_impression"),
            (_after("ts", "impression_ts", window_days), "after_attribution_window"),
        ),
    )
    return _keep_first(flagged, "impression_id", ("ts", "click_id"), "duplicate_click")


def flag_clicked_before_shown(impressions: DataFrame, clicks: DataFrame) -> DataFrame:
    """Rule: clicked_before_shown, a usable impression whose only clicks are stamped before it.

    Such a click says the impression was clicked but the clocks disagree on when:
    a 0 label would be a false negative and a 1 would trust a broken clock, so the
    impression is set aside with its reason. `clicks` are flagged clicks; an
    impression with one counted click stays usable (its early clicks are the odd ones).
    """
    early = clicks.where(F.col("reason") == "click_before_impression").select("impression_id")
    early_only = (
        early.join(usable(clicks).select("impression_id"), "impression_id", "left_anti")
        .distinct()
        .withColumn("early_only", F.lit(True))
    )
    unlabellable = F.col("reason").isNull() & F.col("early_only")
    flagged = impressions.join(early_only, "impression_id", "left")
    return flagged.withColumn(
        "reason", F.when(unlabellable, F.lit("clicked_before_shown")).otherwise(F.col("reason"))
    ).drop("early_only")


def flag_conversions(conversions: DataFrame, clicks: DataFrame, window_days: int) -> DataFrame:
    """Rules: null_key, ts_outside_day, no_matching_click, conversion_before_click, after_attribution_window.

    `clicks` are flagged clicks: a conversion may follow any genuine click, a
    duplicate one included (the impression was clicked either way). Adds the
    click's `impression_id` and `click_ts`.
    """
    genuine = (
        clicks.where(F.col("reason").isNull() | (F.col("reason") == "duplicate_click"))
        .groupBy("click_id")
        .agg(F.min("ts").alias("click_ts"), F.min("impression_id").alias("impression_id"))
    )
    flagged = conversions.join(genuine, "click_id", "left").withColumn(
        "reason",
        _first_failure(
            (_any_null(KEYS["conversions"]), "null_key"),
            (_outside_day(), "ts_outside_day"),
            (F.col("click_ts").isNull(), "no_matching_click"),
            (F.col("ts") < F.col("click_ts"), "conversion_before_click"),
            (_after("ts", "click_ts", window_days), "after_attribution_window"),
        ),
    )
    return flagged


def flag_raw(raw: dict[str, DataFrame], settings: Settings) -> dict[str, DataFrame]:
    """Apply the quarantine rules to every raw table (adds `reason`): the one order both jobs use."""
    window_days = settings.attribution_window_days
    impressions = flag_impressions(raw["impressions"], settings.scenarios, settings.data_contract)
    clicks = flag_clicks(raw["clicks"], usable(impressions), window_days)
    impressions = flag_clicked_before_shown(impressions, clicks)
    conversions = flag_conversions(raw["conversions"], clicks, window_days)
    return {"impressions": impressions, "clicks": clicks, "conversions": conversions}


def usable(flagged: DataFrame) -> DataFrame:
    return flagged.where(F.col("reason").isNull())


def quarantine_rows(flagged: DataFrame, source: str, ds: str, contract: Contract) -> DataFrame:
    """Rows of partition `ds` that broke a rule, as schemas.QUARANTINE (payload = the raw row as JSON,
    under the contract's own column names)."""
    raw_columns = [F.col(read).alias(raw) for raw, read in contract.canonical_names(source).items()]
    payload = F.to_json(
        F.struct(*raw_columns),
        {"ignoreNullFields": "false", "timestampFormat": "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX"},
    )
    return flagged.where((F.col("ds") == ds) & F.col("reason").isNotNull()).select(
        F.lit(source).alias("source"),
        F.col(RECORD_IDS[source]).alias("record_id"),
        F.col("reason"),
        payload.alias("payload"),
    )


def labelled_impressions(
    impressions: DataFrame, clicks: DataFrame, conversions: DataFrame, contract: Contract
) -> DataFrame:
    """Usable impressions with a 0/1 column per task: the click, then its conversion (which implies the click).

    `clicks` and `conversions` are flagged frames; only usable rows label.
    """
    click, conversion = contract.tasks
    clicked = usable(clicks).select("impression_id", F.lit(1).alias("_clicked"))
    converted = usable(conversions).select("impression_id").distinct().withColumn("_converted", F.lit(1))
    clicked_flag = F.coalesce(F.col("_clicked"), F.lit(0))
    return (
        usable(impressions)
        .join(clicked, "impression_id", "left")
        .join(converted, "impression_id", "left")
        .select(
            *[F.col(c) for c in contract.canonical_names("impressions").values()],
            F.col("ds"),
            clicked_flag.cast("int").alias(click),
            (clicked_flag * F.coalesce(F.col("_converted"), F.lit(0))).cast("int").alias(conversion),
        )
    )


def count_by(df: DataFrame, *columns: str) -> dict[tuple, int]:
    """Small group-by counts collected to the driver."""
    return {tuple(row[c] for c in columns): row["count"] for row in df.groupBy(*columns).count().collect()}
