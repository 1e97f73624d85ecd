"""Read and write lake objects by URI: a local path or `s3://bucket/key` (boto3).

Small objects (check results, gate reports, simulator partitions) go through
here so the same code runs on the local lake and on S3. Spark reads the lake
itself (`s3a://` in the cluster profile).
"""

from __future__ import annotations

import io
import json
import shutil
from functools import cache
from pathlib import Path
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.parquet as pq

from msmt.settings import Settings


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def _split(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    return parsed.netloc, parsed.path.lstrip("/")


@cache
def _client(endpoint_url: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint_url or None)


def s3(settings: Settings):
    """A boto3 S3 client for this profile (endpoint override for MinIO / moto)."""
    return _client(settings.s3_endpoint_url)


def write_bytes(settings: Settings, uri: str, data: bytes) -> None:
    if is_s3(uri):
        bucket, key = _split(uri)
        s3(settings).put_object(Bucket=bucket, Key=key, Body=data)
        return
    Path(uri).parent.mkdir(parents=True, exist_ok=True)
    Path(uri).write_bytes(data)


def read_bytes(settings: Settings, uri: str) -> bytes:
    if is_s3(uri):
        bucket, key = _split(uri)
        client = s3(settings)
        try:
            return client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except client.exceptions.NoSuchKey as missing:
            raise FileNotFoundError(f"no object at {uri}") from missing
    return Path(uri).read_bytes()


def exists(settings: Settings, uri: str) -> bool:
    """True for an existing file, or a directory / prefix holding at least one object."""
    if is_s3(uri):
        bucket, key = _split(uri)
        return s3(settings).list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1).get("KeyCount", 0) > 0
    return Path(uri).exists()


def list_keys(settings: Settings, prefix_uri: str) -> list[str]:
    """Every object URI under a prefix, sorted."""
    if is_s3(prefix_uri):
        bucket, prefix = _split(prefix_uri)
        pages = s3(settings).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(f"s3://{bucket}/{obj['Key']}" for page in pages for obj in page.get("Contents", []))
    root = Path(prefix_uri)
    return sorted(str(p) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def remove(settings: Settings, uri: str) -> None:
    """Delete one object if it is there."""
    if is_s3(uri):
        bucket, key = _split(uri)
        s3(settings).delete_object(Bucket=bucket, Key=key)
        return
    Path(uri).unlink(missing_ok=True)


def remove_prefix(settings: Settings, prefix_uri: str) -> None:
    """Delete a partition before it is rewritten (what makes re-running a day idempotent)."""
    if is_s3(prefix_uri):
        bucket, _ = _split(prefix_uri)
        keys = [_split(uri)[1] for uri in list_keys(settings, prefix_uri.rstrip("/") + "/")]
        for start in range(0, len(keys), 1000):
            chunk = [{"Key": key} for key in keys[start : start + 1000]]
            s3(settings).delete_objects(Bucket=bucket, Delete={"Objects": chunk})
        return
    shutil.rmtree(prefix_uri, ignore_errors=True)


def write_json(settings: Settings, uri: str, value: object) -> None:
    write_bytes(settings, uri, json.dumps(value, indent=1, default=str).encode())


def read_json(settings: Settings, uri: str) -> object:
    return json.loads(read_bytes(settings, uri))


def write_parquet(settings: Settings, uri: str, table: pa.Table) -> None:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    write_bytes(settings, uri, buffer.getvalue())


def read_parquet(settings: Settings, uri: str) -> pa.Table:
    return pq.read_table(io.BytesIO(read_bytes(settings, uri)))
