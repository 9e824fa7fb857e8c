"""The registry scaled out: two server instances sharing a real PostgreSQL and an S3-compatible bucket (moto's
standalone server). `.ci/run` installs and starts both and sets the variables below; elsewhere start them the same
way or deselect with `-m "not services"` (a missing service fails loudly, never skips)."""

from __future__ import annotations

import os
import threading
import time
import uuid

import pytest
from ota_support import Api, Mirror, RegistryServer

from helpers import run_cli

pytestmark = [pytest.mark.services, pytest.mark.shared_data]


@pytest.fixture
def services():
    pg, s3 = os.environ.get("POCKETVISION_TEST_PG"), os.environ.get("AWS_ENDPOINT_URL")
    if not pg or not s3:
        pytest.fail("PostgreSQL and an S3-compatible server are needed: set POCKETVISION_TEST_PG=postgresql://... and "
                    "AWS_ENDPOINT_URL=http://... (`.ci/run` starts both), or deselect with -m 'not services'")
    import boto3
    import psycopg
    name = "pv_" + uuid.uuid4().hex[:12]
    with psycopg.connect(pg, autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    bucket = name.replace("_", "-")
    boto3.client("s3").create_bucket(Bucket=bucket)
    yield pg.rsplit("/", 1)[0] + "/" + name, f"s3://{bucket}/models"
    with psycopg.connect(pg, autocommit=True) as c:
        c.execute(f"DROP DATABASE {name} WITH (FORCE)")


def test_two_instances_share_postgres_and_s3(services, tmp_path, trained_bundle, hotdog_small):
    from pocketvision.ota.device import ModelUpdater
    db, blobs = services
    keys = tmp_path / "keys"
    r = run_cli("keys", "new", "--store", str(tmp_path / "a"), "--db", db, "--keys", str(keys),
                "--root-out", str(tmp_path / "root.json"))
    assert r.returncode == 0, r.stderr
    tokens = {}
    for role in ("admin", "device"):
        r = run_cli("tokens", "new", "--store", str(tmp_path / "a"), "--db", db, "--role", role)
        assert r.returncode == 0, r.stderr
        tokens[role] = r.stdout.strip()
    flags = ("--db", db, "--blobs", blobs, "--keys", str(keys))
    a = RegistryServer(tmp_path / "a", flags).start()
    (tmp_path / "b").mkdir()
    b = RegistryServer(tmp_path / "b", flags).start()

    def b_timestamp_etag() -> str:
        import urllib3
        return urllib3.request("GET", b.url + "/tuf/metadata/timestamp.json",
                               headers={"Authorization": f"Bearer {tokens['device']}"}).headers["ETag"]
    try:
        r = run_cli("publish", str(trained_bundle), "--name", "hotdog", "--server", a.url, "--token", tokens["admin"],
                    "--data", str(hotdog_small), "--channel", "stable")
        assert r.returncode == 0, r.stderr[-2000:]
        assert not list((tmp_path / "a").glob("blobs/*/*"))  # the artifacts went to the bucket, not the folder
        # A device behind a mirror that drops the connection once: served by instance B, resumed from S3 with Range.
        mirror = Mirror(b.url)
        mirror.rules[r"/targets/hotdog/1/.*\.onnx$"] = ("cut", 100_000)
        dev = ModelUpdater(mirror.url, "hotdog", token=tokens["device"], trusted_root=tmp_path / "root.json",
                           cache_dir=tmp_path / "dev", device_id="device-0001")
        assert dev.check().action == "failed"
        res = dev.check()
        assert res.action == "installed" and dev.version == 1, res
        assert any(rg and rg.startswith("bytes=") for _, rg in mirror.seen)
        # Concurrent publishes through both instances get distinct versions (one advisory lock in PostgreSQL).
        art = Api(a.url, tokens["admin"])("GET", "/v1/models/hotdog")[1]["versions"][0]["artifacts"]
        files = [{"kind": k, "filename": x["path"].rsplit("/", 1)[-1], "sha256": x["sha256"], "length": x["bytes"],
                  "verification": {"passed": True}} for k, x in art.items() if k != "manifest"]
        results = []

        def pub(url):
            results.append(Api(url, tokens["admin"])("POST", "/v1/models/hotdog/versions", {"files": files}))
        threads = [threading.Thread(target=pub, args=(u,)) for u in (a.url, b.url) * 3]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(body["version"] for s, body in results if s == 200) == [2, 3, 4, 5, 6, 7], results
        # Roll out through B, roll back through A: the device follows both.
        assert Api(b.url, tokens["admin"])("PUT", "/v1/models/hotdog/channels/stable",
                                           {"version": 7, "rollout": 100})[0] == 200
        assert dev.check().action == "installed" and dev.version == 7
        etag = b_timestamp_etag()
        assert Api(a.url, tokens["admin"])("POST", "/v1/models/hotdog/channels/stable/rollback")[0] == 200
        # B answers checks from a 1 s cache of the signed timestamp: wait for A's change to reach it (a known
        # event, not a guess at the time it takes)
        deadline = time.monotonic() + 60
        while b_timestamp_etag() == etag and time.monotonic() < deadline:
            time.sleep(0.05)
        assert b_timestamp_etag() != etag, "instance B never saw A's rollback"
        res = dev.check()
        assert res.action == "installed" and dev.version == 1, res
        # Killed and restarted, an instance serves the same committed state.
        before = Api(a.url, tokens["admin"])("GET", "/v1/models/hotdog")[1]
        a.kill()
        a.start()
        assert Api(a.url, tokens["admin"])("GET", "/v1/models/hotdog")[1]["channels"] == before["channels"]
        mirror.close()
    finally:
        a.stop()
        b.stop()
