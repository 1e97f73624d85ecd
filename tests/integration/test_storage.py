"""The lake's object I/O on the local disk and on a real S3 API server (moto) on loopback."""

from __future__ import annotations

import socket

import pyarrow as pa
import pytest

from msmt import storage

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(params=["local", "s3"])
def lake_settings(request, settings, s3_endpoint, monkeypatch):
    if request.param == "local":
        return settings
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    s3_settings = settings.with_(lake_uri="s3://msmt-lake/prod", s3_endpoint_url=s3_endpoint)
    storage.s3(s3_settings).create_bucket(Bucket="msmt-lake")
    return s3_settings


def test_round_trip_list_and_overwrite(lake_settings):
    root = f"{lake_settings.lake}/checks/raw"
    table = pa.table({"user_id": [1, 2, 3], "scenario": ["a", "b", "a"]})
    storage.write_parquet(lake_settings, f"{root}/ds=2026-01-01/part-0.parquet", table)
    storage.write_json(lake_settings, f"{root}/ds=2026-01-02.json", {"success": False})

    assert storage.read_parquet(lake_settings, f"{root}/ds=2026-01-01/part-0.parquet").equals(table)
    assert storage.read_json(lake_settings, f"{root}/ds=2026-01-02.json") == {"success": False}
    assert [uri.rsplit("/", 2)[-2:] for uri in storage.list_keys(lake_settings, root)] == [
        ["ds=2026-01-01", "part-0.parquet"],
        ["raw", "ds=2026-01-02.json"],
    ]

    storage.remove_prefix(lake_settings, f"{root}/ds=2026-01-01")
    assert not storage.exists(lake_settings, f"{root}/ds=2026-01-01")
    assert storage.exists(lake_settings, f"{root}/ds=2026-01-02.json")


def test_missing_object_is_an_error(lake_settings):
    with pytest.raises(FileNotFoundError, match=r"nope\.json"):
        storage.read_bytes(lake_settings, f"{lake_settings.lake}/nope.json")


def test_simulator_writes_the_lake_through_storage(lake_settings):
    from msmt import lake
    from msmt.simulate import SimConfig, simulate

    report = simulate(
        lake_settings, "2026-01-01", 2, 500, seed=1, config=SimConfig(n_users=200, n_items=50), progress=False
    )
    uri = f"{lake.raw(lake_settings, 'impressions', '2026-01-02')}/part-0.parquet"
    assert storage.read_parquet(lake_settings, uri).num_rows == report["days"]["2026-01-02"]["impressions"]
