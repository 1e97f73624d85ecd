"""The one way to the lake: read, write, exist, list, remove and replace objects by URI.

A lake URI is a local path or `s3://bucket/key`; both go through pyarrow's
filesystems (`S3FileSystem` with the profile's endpoint override for MinIO or
moto), so every reader and writer — pipeline steps, data checks, Feast
publishing, the training worker, checkpoints — behaves the same on a laptop
and on S3. A bare `pathlib.Path` on a lake URI works locally and breaks on S3:
use these functions instead. Spark reads the lake itself (`s3a://` in the
cluster profile).

Writes replace their object atomically: locally a temporary file in the same
directory, flushed and renamed over the target; on S3 one PUT (or a multipart
upload, completed in one request), which is atomic there already. A reader
therefore sees the previous object or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
from functools import cache
from pathlib import Path
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from msmt.settings import Settings

S3 = "s3://"


def is_s3(uri: str) -> bool:
    return uri.startswith(S3)


@cache
def _s3_filesystem(endpoint_url: str) -> pafs.S3FileSystem:
    if not endpoint_url:
        return pafs.S3FileSystem(allow_bucket_creation=True)
    parsed = urlparse(endpoint_url)
    endpoint = parsed.netloc or endpoint_url
    return pafs.S3FileSystem(endpoint_override=endpoint, scheme=parsed.scheme or "https", allow_bucket_creation=True)


def filesystem(settings: Settings, uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem holding `uri` and the path to hand it (`bucket/key` on S3)."""
    if is_s3(uri):
        return _s3_filesystem(settings.s3_endpoint_url), uri.removeprefix(S3).rstrip("/")
    if "://" in uri:
        raise ValueError(f"unsupported lake URI {uri!r}: a local path or s3://bucket/key")
    return pafs.LocalFileSystem(), str(Path(uri).absolute())


def write_bytes(settings: Settings, uri: str, data: bytes) -> None:
    """Replace the object at `uri` with `data`, atomically."""
    fs, path = filesystem(settings, uri)
    if is_s3(uri):
        with fs.open_output_stream(path) as stream:
            stream.write(data)
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_bytes(settings: Settings, uri: str) -> bytes:
    fs, path = filesystem(settings, uri)
    if fs.get_file_info(path).type != pafs.FileType.File:
        raise FileNotFoundError(f"no object at {uri}")
    with fs.open_input_stream(path) as stream:
        return stream.read()


def exists(settings: Settings, uri: str) -> bool:
    """True for an existing object, or a directory / prefix holding at least one object."""
    fs, path = filesystem(settings, uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def list_keys(settings: Settings, prefix_uri: str) -> list[str]:
    """Every object URI under a prefix, spelled as the prefix is (relative stays relative), sorted;
    temporary files of unfinished writes are left out."""
    fs, path = filesystem(settings, prefix_uri)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    files = (i.path for i in infos if i.type == pafs.FileType.File and not i.base_name.startswith("."))
    return sorted(prefix_uri.rstrip("/") + p[len(path) :] for p in files)


def remove(settings: Settings, uri: str) -> None:
    """Delete one object if it is there."""
    fs, path = filesystem(settings, uri)
    with contextlib.suppress(FileNotFoundError):
        fs.delete_file(path)


def remove_prefix(settings: Settings, prefix_uri: str) -> None:
    """Delete a partition before it is rewritten (what makes re-running a day idempotent)."""
    fs, path = filesystem(settings, prefix_uri)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        fs.delete_dir(path)


def partition_digest(settings: Settings, uri: str) -> str:
    """Content hash of every file under a partition (relative paths, sizes, bytes), local or s3://: the
    identity lineage records for an input. 32 hex characters (MLflow's dataset digest column holds 36)."""
    fs, root = filesystem(settings, uri)
    files = sorted((i for i in fs.get_file_info(pafs.FileSelector(root, recursive=True)) if i.is_file),
                   key=lambda i: i.path)  # fmt: skip
    if not files:
        raise FileNotFoundError(f"no files under {uri}")
    digest = hashlib.blake2b(digest_size=16)
    for info in files:
        digest.update(f"{info.path[len(root) :]}\0{info.size}\0".encode())
        with fs.open_input_stream(info.path) as stream:
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def write_json(settings: Settings, uri: str, value: object) -> None:
    write_bytes(settings, uri, json.dumps(value, indent=1, default=str).encode())


def read_json(settings: Settings, uri: str) -> object:
    return json.loads(read_bytes(settings, uri))


def write_parquet(settings: Settings, uri: str, table: pa.Table, **options) -> None:
    """One parquet file, replaced atomically; `options` go to `pyarrow.parquet.write_table`."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer, **options)
    write_bytes(settings, uri, buffer.getvalue())


def read_parquet(settings: Settings, uri: str) -> pa.Table:
    fs, path = filesystem(settings, uri)
    if fs.get_file_info(path).type != pafs.FileType.File:
        raise FileNotFoundError(f"no object at {uri}")
    return pq.read_table(path, filesystem=fs)


def dataset(settings: Settings, uri: str, **options) -> pads.Dataset:
    """A pyarrow dataset over a lake directory or file (`options` go to `pyarrow.dataset.dataset`)."""
    fs, path = filesystem(settings, uri)
    return pads.dataset(path, filesystem=fs, format="parquet", **options)


def make_bucket(settings: Settings, bucket: str) -> None:
    """Create an S3 bucket (an empty lake on MinIO / moto; real buckets are made by infrastructure)."""
    _s3_filesystem(settings.s3_endpoint_url).create_dir(bucket)
