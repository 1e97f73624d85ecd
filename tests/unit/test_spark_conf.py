"""`spark_conf`: what a new Spark session is configured with, per profile, without starting a JVM."""

from __future__ import annotations

from pathlib import Path

import pyspark

from msmt.settings import Settings
from spark_jobs.common import hadoop_version, spark_conf

S3_LAKE = Settings(profile="cluster", lake_uri="s3://msmt-lake/prod", s3_endpoint_url="http://127.0.0.1:9000",
                   spark_master="spark://127.0.0.1:7077")  # fmt: skip


def test_a_local_lake_gets_no_s3a_and_local_mode_few_shuffle_partitions(tmp_path):
    conf = spark_conf(Settings(home=tmp_path))
    assert conf["spark.sql.shuffle.partitions"] == "4" and conf["spark.ui.enabled"] == "false"
    assert not [key for key in conf if "s3a" in key or key == "spark.jars.packages"]


def test_a_standalone_master_keeps_sparks_shuffle_partitions_unless_the_profile_sets_them(tmp_path):
    master = Settings(home=tmp_path, profile="cluster", spark_master="spark://127.0.0.1:7077")
    assert "spark.sql.shuffle.partitions" not in spark_conf(master) and "spark.jars.packages" not in spark_conf(master)
    assert spark_conf(master.with_(spark_shuffle_partitions=8))["spark.sql.shuffle.partitions"] == "8"


def test_an_s3_lake_brings_hadoop_aws_matching_pysparks_hadoop():
    conf = spark_conf(S3_LAKE)
    group, artifact, version = conf["spark.jars.packages"].split(":")
    assert (group, artifact) == ("org.apache.hadoop", "hadoop-aws")
    assert (Path(pyspark.__file__).parent / "jars" / f"hadoop-client-api-{version}.jar").exists()
    assert version == hadoop_version() and version.startswith("3.")


def test_an_s3_endpoint_is_path_style_and_its_scheme_decides_tls():
    conf = spark_conf(S3_LAKE)
    assert conf["spark.hadoop.fs.s3a.endpoint"] == "http://127.0.0.1:9000"
    assert conf["spark.hadoop.fs.s3a.path.style.access"] == "true"
    assert conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] == "false"
    secure = spark_conf(S3_LAKE.with_(s3_endpoint_url="https://minio.example:9000"))
    assert secure["spark.hadoop.fs.s3a.connection.ssl.enabled"] == "true"


def test_aws_s3_needs_no_endpoint_and_no_key_is_ever_in_the_conf(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value")
    conf = spark_conf(S3_LAKE.with_(s3_endpoint_url=""))
    assert "spark.hadoop.fs.s3a.endpoint" not in conf and "spark.jars.packages" in conf
    values = " ".join(spark_conf(S3_LAKE).values()) + " ".join(conf.values())
    assert "AKIDEXAMPLE" not in values and "s3cr3t-value" not in values
    assert not [key for key in conf if "secret" in key.lower() or "access.key" in key.lower()]
