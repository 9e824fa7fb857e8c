"""Over-the-air updates against a real registry (`pocketvision serve`, uvicorn on 127.0.0.1, SQLite) and real
devices (``ModelUpdater``: python-tuf's ngclient, onnxruntime). Attacks come from a hostile mirror in front of
the server, or from keys an attacker stole; each must leave the device on its verified model."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from ota_support import (Api, Mirror, RegistryServer, new_store, perturbed, publish_all, resign, store_keys,
                         store_meta)
from tuf.api.metadata import Metadata

from helpers import run_cli
from pocketvision.serve import keys as K
from pocketvision.ota.plans import bucket
from pocketvision.serve.repo import SERIALIZER

pytestmark = pytest.mark.shared_data


def _device_ids() -> dict[str, str]:
    """Device ids whose buckets fall below 10, in [10, 50) and at or above 50 (for 'hotdog')."""
    want = {"low": (0, 10), "mid": (10, 50), "high": (50, 100)}
    out, i = {}, 0
    while len(out) < 3:
        d = f"device-{i:04d}"
        b = bucket("hotdog", d)
        for k, (lo, hi) in want.items():
            if k not in out and lo <= b < hi:
                out[k] = d
        i += 1
    return out


DEVICES = _device_ids()


@pytest.fixture(scope="module")
def base_store(trained_bundle, hotdog_small, tmp_path_factory):
    """A registry with hotdog v1 (on stable, 100%) and v2 (a different model, not on any channel yet)."""
    root = tmp_path_factory.mktemp("ota")
    store = root / "store"
    tokens = new_store(store)
    b2 = perturbed(trained_bundle, root / "hotdog-v2.pvb")
    publish_all(store, tokens["admin"], hotdog_small,
                [(trained_bundle, ("--channel", "stable", "--rollout", "100%")), (b2, ())])
    return store, tokens, b2


@pytest.fixture
def registry(base_store, tmp_path):
    store, tokens, _ = base_store
    mine = tmp_path / "store"
    shutil.copytree(store, mine)
    srv = RegistryServer(mine).start()
    yield srv, tokens, Api(srv.url, tokens["admin"])
    srv.stop()


def device(url: str, tokens, tmp_path: Path, name: str = "low", root: Path | None = None, **kw):
    from pocketvision.ota.device import ModelUpdater
    return ModelUpdater(url, "hotdog", token=tokens["device"], trusted_root=root or _root(tmp_path),
                        cache_dir=tmp_path / f"dev-{name}", device_id=DEVICES.get(name, name), **kw)


def _root(tmp_path: Path) -> Path:
    return tmp_path / "store" / "root.json"


def test_publish_install_predict_and_cheap_check(registry, tmp_path, hotdog_small, trained_bundle):
    import pocketvision as pv
    srv, tokens, api = registry
    dev = device(srv.url, tokens, tmp_path)
    res = dev.check()
    assert res.action == "installed" and dev.version == 1, res
    photo = sorted((hotdog_small / "val" / "hotdog").iterdir())[0]
    got = dev.predictor.predict([str(photo)])[0]["probabilities"]
    want = pv.load(trained_bundle).predict([str(photo)])[0]["probabilities"]
    assert max(abs(got[k] - want[k]) for k in want) < 1e-3
    again = dev.check()  # nothing changed: timestamp.json answered 304, no body bytes
    assert again.action == "none" and again.downloaded_bytes == 0
    status, body = api("GET", "/v1/models/hotdog")
    assert status == 200 and {"version": 1, "state": "installed", "devices": 1} in body["adoption"]
    # An app restart keeps the installed model (re-checked against its signed hash) and the ETag.
    dev2 = device(srv.url, tokens, tmp_path)
    assert dev2.version == 1 and dev2.check().downloaded_bytes == 0


def test_tokens_roles_and_storage(registry, tmp_path):
    srv, tokens, api = registry
    anon = Api(srv.url, "nope")
    assert anon("GET", "/tuf/metadata/timestamp.json")[0] == 401
    status, spec = anon("GET", "/openapi.json")  # the API documents itself (and /docs renders it)
    assert status == 200 and "/v1/models/{model}/versions" in spec["paths"] and "/v1/feedback" in spec["paths"]
    devapi = Api(srv.url, tokens["device"])
    assert devapi("GET", "/tuf/metadata/timestamp.json")[0] == 200
    for method, path, body in (("GET", "/v1/models", None), ("GET", "/v1/models/hotdog", None),
                               ("PUT", "/v1/models/hotdog/channels/stable", {"version": 2, "rollout": 100}),
                               ("POST", "/v1/models/hotdog/channels/stable/rollback", None),
                               ("POST", "/v1/models/hotdog/versions", {"files": []})):
        assert devapi(method, path, body)[0] == 403, path
    assert devapi("POST", "/v1/uploads", raw=b"x" * 10)[0] == 403
    # Tokens are stored hashed: the database file never holds one.
    db = b"".join(p.read_bytes() for p in (tmp_path / "store").glob("registry.db*"))
    assert tokens["admin"].encode() not in db and tokens["device"].encode() not in db
    # A revoked token (never used, so never cached) is refused.
    r = run_cli("tokens", "new", "--store", str(tmp_path / "store"), "--role", "admin", "--name", "temp")
    fresh = r.stdout.strip()
    r = run_cli("tokens", "list", "--store", str(tmp_path / "store"))
    tid = [t for t in __import__("json").loads(r.stdout) if t["name"] == "temp"][0]["id"]
    assert run_cli("tokens", "revoke", "--store", str(tmp_path / "store"), "--id", str(tid)).returncode == 0
    assert Api(srv.url, fresh)("GET", "/v1/models")[0] == 401


def test_rollout_10_50_100_then_rollback(registry, tmp_path):
    srv, tokens, api = registry
    devs = {n: device(srv.url, tokens, tmp_path, n) for n in DEVICES}
    assert all(d.check().action == "installed" and d.version == 1 for d in devs.values())
    expected = {10: {"low": 2, "mid": 1, "high": 1}, 50: {"low": 2, "mid": 2, "high": 1},
                100: {"low": 2, "mid": 2, "high": 2}}
    for pct, want in expected.items():
        status, plan = api("PUT", "/v1/models/hotdog/channels/stable", {"version": 2, "rollout": pct})
        assert status == 200, plan
        for n, d in devs.items():
            res = d.check()
            assert d.version == want[n], (pct, n, res)
            if d.version == 1:  # left out by the percentage: the device says so, and how to reach it
                assert f"rolled out to {pct}% of devices" in res.detail and "pocketvision rollout hotdog" in res.detail
    status, plan = api("POST", "/v1/models/hotdog/channels/stable/rollback")
    assert status == 200 and plan["current"]["version"] == 1 and plan["rolled_back_from"] == 2
    for d in devs.values():
        res = d.check()
        assert res.action == "installed" and d.version == 1, res
    status, body = api("GET", "/v1/models/hotdog")
    assert {"version": 1, "state": "installed", "devices": 3} in body["adoption"]


def test_conditions_keep_ineligible_devices(registry, tmp_path):
    srv, tokens, api = registry
    old_app = device(srv.url, tokens, tmp_path, "low", app_version="1.9", platform="android")
    new_app = device(srv.url, tokens, tmp_path, "mid", app_version="2.1", platform="android")
    ios = device(srv.url, tokens, tmp_path, "high", app_version="3.0", platform="ios")
    for d in (old_app, new_app, ios):
        d.check()
    status, _ = api("PUT", "/v1/models/hotdog/channels/stable",
                    {"version": 2, "rollout": 100, "conditions": {"min_app_version": "2.0", "platforms": ["android"]}})
    assert status == 200
    results = [d.check() for d in (old_app, new_app, ios)]
    assert [d.version for d in (old_app, new_app, ios)] == [1, 2, 1]
    assert "needs app version >= 2.0" in results[0].detail and "platforms android" in results[2].detail
    metered = device(srv.url, tokens, tmp_path, "other", app_version="2.1", platform="android", metered=True)
    status, body = api("PUT", "/v1/models/hotdog/channels/stable", {"version": 2, "rollout": 100,
                                                                    "conditions": {"unmetered_only": True}})
    assert status == 200, body
    res = metered.check()
    assert res.action == "none" and metered.version is None and "unmetered network" in res.detail


def test_publish_refuses_unverified_and_bad_names(registry, tmp_path):
    srv, tokens, api = registry
    status, up = api("POST", "/v1/uploads", raw=b"not really a model")
    assert status == 200
    files = [{"kind": "onnx", "filename": "m.onnx", "sha256": up["sha256"], "length": up["length"],
              "verification": {"passed": False}}]
    status, body = api("POST", "/v1/models/hotdog/versions", {"files": files})
    assert status == 400 and "verification did not pass" in body["detail"]
    files[0]["verification"] = {"passed": True}
    for bad in ("../etc", "Hot Dog", "a" * 80):
        status, _ = api("POST", f"/v1/models/{bad}/versions", {"files": files})
        assert status in (400, 404), bad
    files[0]["filename"] = "../../m.onnx"
    assert api("POST", "/v1/models/hotdog/versions", {"files": files})[0] == 400
    files[0].update(filename="m.onnx", sha256="0" * 64)
    status, body = api("POST", "/v1/models/hotdog/versions", {"files": files})
    assert status == 400 and "was not uploaded" in body["detail"]
    status, body = api("GET", "/v1/models/hotdog")
    assert [v["version"] for v in body["versions"]] == [1, 2]  # nothing was added


def test_upload_size_limit(base_store, tmp_path):
    store, tokens, _ = base_store
    shutil.copytree(store, tmp_path / "store")
    srv = RegistryServer(tmp_path / "store", ("--max-upload-mb", "1")).start()
    try:
        api = Api(srv.url, tokens["admin"])
        status, body = api("POST", "/v1/uploads", raw=b"\0" * (2 << 20))
        assert status == 413 and "limit" in body["detail"]
        assert not list((tmp_path / "store" / "blobs").glob(".upload-*"))
    finally:
        srv.stop()


# -- attacks: each one leaves the device on its verified v1 ------------------------------------------------
def _on_v1_then_v2_published(registry, tmp_path):
    srv, tokens, api = registry
    mirror = Mirror(srv.url)
    dev = device(mirror.url, tokens, tmp_path)
    assert dev.check().action == "installed" and dev.version == 1
    assert api("PUT", "/v1/models/hotdog/channels/stable", {"version": 2, "rollout": 100})[0] == 200
    return srv, tokens, api, mirror, dev


def _refused(dev, api, *words):
    res = dev.check()
    assert res.action == "failed" and dev.version == 1, res
    assert all(w in res.detail for w in words), res.detail
    assert dev.predictor.run_pixels(np.zeros((1, 96, 96, 3), np.uint8)).shape == (1, 2)  # still serving v1
    status, body = api("GET", "/v1/models/hotdog")
    assert any(r["state"] in ("failed", "rolled_back") for r in body["adoption"])
    return res


def _keys(tmp_path: Path) -> dict[str, list[K.Key]]:
    return store_keys(tmp_path / "store")


def _meta(tmp_path: Path, role: str, version: int | None = None) -> Metadata:
    return store_meta(tmp_path / "store", role, version)


_resign = resign


def test_attack_tampered_artifact(registry, tmp_path):
    _, _, api, mirror, dev = _on_v1_then_v2_published(registry, tmp_path)
    mirror.rules[r"/targets/hotdog/2/.*\.onnx$"] = lambda b: b[:100] + bytes([b[100] ^ 1]) + b[101:]
    _refused(dev, api, "LengthOrHashMismatch")


def test_attack_truncated_artifact(registry, tmp_path):
    _, _, api, mirror, dev = _on_v1_then_v2_published(registry, tmp_path)
    mirror.rules[r"/targets/hotdog/2/.*\.onnx$"] = lambda b: b[:-1000]
    _refused(dev, api, "LengthOrHashMismatch")


def test_attack_endless_download(registry, tmp_path):
    _, _, api, mirror, dev = _on_v1_then_v2_published(registry, tmp_path)
    mirror.rules[r"/targets/hotdog/2/.*\.onnx$"] = "endless"
    res = _refused(dev, api, "DownloadLengthMismatch")
    assert res.downloaded_bytes < 3 << 20  # stopped at the signed length (~0.6 MB), not 640 MB


def test_attack_endless_metadata(registry, tmp_path):
    _, _, api, mirror, dev = _on_v1_then_v2_published(registry, tmp_path)
    mirror.rules[r"/metadata/timestamp\.json$"] = "endless"
    res = _refused(dev, api, "DownloadLengthMismatch")
    assert res.downloaded_bytes < 1 << 20  # ngclient caps timestamp.json at 16 KB


def test_attack_replayed_old_timestamp(registry, tmp_path):
    _, _, api, mirror, dev = _on_v1_then_v2_published(registry, tmp_path)
    old = _meta(tmp_path, "timestamp", 1).to_bytes(SERIALIZER)
    mirror.rules[r"/metadata/timestamp\.json$"] = lambda b: old
    _refused(dev, api, "BadVersionNumber")


def test_attack_expired_timestamp_freeze(registry, tmp_path):
    _, _, api, mirror, dev = _on_v1_then_v2_published(registry, tmp_path)
    ts = _meta(tmp_path, "timestamp")
    frozen = _resign(ts, _keys(tmp_path)["timestamp"], version=ts.signed.version + 1,
                     expires=datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1))
    mirror.rules[r"/metadata/timestamp\.json$"] = lambda b: frozen
    _refused(dev, api, "ExpiredMetadata")


def test_attack_expired_root_freeze(registry, tmp_path):
    _, _, api, mirror, dev = _on_v1_then_v2_published(registry, tmp_path)
    root = _meta(tmp_path, "root")
    v = root.signed.version + 1
    expired = _resign(root, _keys(tmp_path)["root"], version=v,
                      expires=datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1))
    mirror.rules[rf"/metadata/{v}\.root\.json$"] = lambda b: expired
    _refused(dev, api, "ExpiredMetadata")


def test_attack_mix_and_match_targets(registry, tmp_path):
    _, _, api, mirror, dev = _on_v1_then_v2_published(registry, tmp_path)
    current = _meta(tmp_path, "targets").signed.version
    older = _meta(tmp_path, "targets", current - 1).to_bytes(SERIALIZER)  # validly signed, from another state
    mirror.rules[rf"/metadata/{current}\.targets\.json$"] = lambda b: older
    _refused(dev, api, "BadVersionNumber")


def test_attack_key_of_wrong_role(registry, tmp_path):
    _, _, api, mirror, dev = _on_v1_then_v2_published(registry, tmp_path)
    targets = _meta(tmp_path, "targets")
    forged = _resign(targets, _keys(tmp_path)["timestamp"])  # the online timestamp key cannot sign targets
    mirror.rules[rf"/metadata/{targets.signed.version}\.targets\.json$"] = lambda b: forged
    _refused(dev, api, "UnsignedMetadata")


def test_attack_revoked_key_after_rotation(registry, tmp_path):
    srv, tokens, api, mirror, dev = _on_v1_then_v2_published(registry, tmp_path)
    stolen = _keys(tmp_path)["targets"]
    r = run_cli("keys", "rotate", "--role", "targets", "--store", str(tmp_path / "store"), "--json")
    assert r.returncode == 0, r.stderr
    # The server signs the next change with the new key (it reads the rotated root) ...
    assert api("PUT", "/v1/models/hotdog/channels/stable", {"version": 2, "rollout": 100})[0] == 200
    targets = _meta(tmp_path, "targets")
    assert {s for s in targets.signatures} == {k.keyid for k in _keys(tmp_path)["targets"]}
    # ... and what the stolen old key signs is refused.
    forged = _resign(targets, stolen)
    mirror.rules[rf"/metadata/{targets.signed.version}\.targets\.json$"] = lambda b: forged
    _refused(dev, api, "UnsignedMetadata")
    mirror.rules.clear()
    assert dev.check().action == "installed" and dev.version == 2


def test_attack_root_below_threshold(tmp_path, trained_bundle, hotdog_small):
    store = tmp_path / "store"
    tokens = new_store(store, "--root-keys", "2", "--root-threshold", "2")
    srv = RegistryServer(store).start()
    try:
        r = run_cli("publish", str(trained_bundle), "--name", "hotdog", "--server", srv.url, "--token",
                    tokens["admin"], "--data", str(hotdog_small), "--channel", "stable")
        assert r.returncode == 0, r.stderr[-2000:]
        mirror = Mirror(srv.url)
        dev = device(mirror.url, tokens, tmp_path)
        assert dev.check().action == "installed"
        # One stolen root key tries to hand the targets role to the attacker's own key.
        root = _meta(tmp_path, "root")
        evil = K.generate(tmp_path / "evil", "targets")
        for kid in list(root.signed.roles["targets"].keyids):
            root.signed.revoke_key(kid, "targets")
        root.signed.add_key(evil.public, "targets")
        v = root.signed.version + 1
        forged = _resign(root, _keys(tmp_path)["root"][:1], version=v)
        mirror.rules[rf"/metadata/{v}\.root\.json$"] = lambda b: forged
        res = dev.check()
        assert res.action == "failed" and "UnsignedMetadata" in res.detail and dev.version == 1
    finally:
        srv.stop()


def test_attack_fast_forward_then_recovery(registry, tmp_path):
    """A stolen timestamp key can push a device's timestamp version far ahead (no client can tell); rotating that
    key must let the device recover instead of refusing every real timestamp forever."""
    _, _, api, mirror, dev = _on_v1_then_v2_published(registry, tmp_path)
    ts = _meta(tmp_path, "timestamp")
    ahead = _resign(ts, _keys(tmp_path)["timestamp"], version=10**6)
    mirror.rules[r"/metadata/timestamp\.json$"] = lambda b: ahead
    assert dev.check().action == "installed"  # accepted: signed by the (stolen) key, naming the real snapshot
    mirror.rules.clear()
    res = dev.check()  # every real timestamp now looks like a rollback
    assert res.action == "failed" and "BadVersionNumber" in res.detail and dev.version == 2, res
    r = run_cli("keys", "rotate", "--role", "timestamp", "--store", str(tmp_path / "store"))
    assert r.returncode == 0, r.stderr
    assert api("POST", "/v1/models/hotdog/channels/stable/rollback")[0] == 200
    res = dev.check()  # the new root drops the fast-forwarded timestamp: the device follows the registry again
    assert res.action == "installed" and dev.version == 1, res


def test_smoke_test_failure_is_rolled_back_and_reported(registry, tmp_path, base_store, request):
    srv, tokens, api = registry
    dev = device(srv.url, tokens, tmp_path)
    assert dev.check().action == "installed" and dev.version == 1
    v1, v2 = (api("GET", "/v1/models/hotdog")[1]["versions"][i]["artifacts"] for i in (0, 1))
    # Version 3: v2's model with v1's recorded outputs (what a broken export or a wrong upload looks like).
    files = [{"kind": "onnx", "filename": "hotdog.onnx", "sha256": v2["onnx"]["sha256"],
              "length": v2["onnx"]["bytes"], "verification": {"passed": True}},
             {"kind": "smoke", "filename": "smoke.json", "sha256": v1["smoke"]["sha256"],
              "length": v1["smoke"]["bytes"]}]
    status, body = api("POST", "/v1/models/hotdog/versions", {"files": files, "channel": "stable"})
    assert status == 400 and "does not give the outputs recorded" in body["detail"]  # the registry ran it
    # A registry that cannot run models (--no-check-artifacts) signs it: the device's own smoke test catches it.
    srv.stop()
    srv = RegistryServer(srv.store, ("--no-check-artifacts",)).start()
    request.addfinalizer(srv.stop)
    api = Api(srv.url, tokens["admin"])
    dev = device(srv.url, tokens, tmp_path)
    status, body = api("POST", "/v1/models/hotdog/versions", {"files": files, "channel": "stable"})
    assert status == 200 and body["version"] == 3
    res = dev.check()
    assert res.action == "failed" and "smoke test failed" in res.detail and dev.version == 1
    status, body = api("GET", "/v1/models/hotdog")
    assert {"version": 3, "state": "rolled_back", "devices": 1} in body["adoption"]
    assert dev.check().action == "none"  # a version that failed here is not retried


def test_network_loss_mid_download_resumes(registry, tmp_path):
    _, _, api, mirror, dev = _on_v1_then_v2_published(registry, tmp_path)
    rule = ("cut", 200_000)
    mirror.rules[r"/targets/hotdog/2/.*\.onnx$"] = rule
    res = dev.check()
    assert res.action == "failed" and dev.version == 1
    res = dev.check()
    assert res.action == "installed" and dev.version == 2, res
    ranges = [rg for path, rg in mirror.seen if path.endswith(".onnx") and "/2/" in path]
    assert ranges[0] is None and ranges[-1].startswith("bytes=") and 0 < int(ranges[-1][6:-1]) <= 200_000, ranges
    assert res.downloaded_bytes < 751_194  # the second check fetched only the rest


def test_swap_never_fails_a_request_in_flight(registry, tmp_path, hotdog_small):
    srv, tokens, api = registry
    dev = device(srv.url, tokens, tmp_path)
    dev.check()
    photos = [str(p) for p in sorted((hotdog_small / "val" / "hotdog").iterdir())[:4]]
    errors, done, stop = [], [0], threading.Event()

    def hammer():
        while not stop.is_set():
            try:
                assert len(dev.predictor.predict(photos)) == 4
                done[0] += 1
            except Exception as e:  # noqa: BLE001
                errors.append(e)

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for t in threads:
        t.start()
    for pct, version in ((100, 2), (None, 1), (100, 2)):
        if pct is None:
            api("POST", "/v1/models/hotdog/channels/stable/rollback")
        else:
            api("PUT", "/v1/models/hotdog/channels/stable", {"version": version, "rollout": pct})
        assert dev.check().action == "installed" and dev.version == version
    stop.set()
    for t in threads:
        t.join()
    assert not errors and done[0] > 0


# -- reliability ------------------------------------------------------------------------------------------
def _state(api) -> tuple:
    status, body = api("GET", "/v1/models/hotdog")
    ts = Api(api.url, api.h["Authorization"][7:])("GET", "/tuf/metadata/timestamp.json")[1]
    return [v["version"] for v in body["versions"]], body["channels"], ts


def test_sigkill_mid_upload_then_restart(registry, tmp_path):
    import urllib3
    srv, tokens, api = registry
    before = _state(api)
    blobs = tmp_path / "store" / "blobs"
    sent = threading.Event()

    def body():
        for _ in range(8):
            yield b"\1" * (1 << 20)
        sent.set()
        time.sleep(60)  # hold the upload open: the server is killed at this known point
        yield b"\1"

    def upload():
        try:
            urllib3.PoolManager().request("POST", srv.url + "/v1/uploads", body=body(), chunked=True,
                                          headers=api.h, timeout=urllib3.Timeout(connect=5, read=90))
        except Exception:  # noqa: BLE001 - the server dies under it
            pass

    t = threading.Thread(target=upload, daemon=True)
    t.start()
    assert sent.wait(30)
    deadline = time.monotonic() + 30
    while not any(p.stat().st_size > 0 for p in blobs.glob(".upload-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(blobs.glob(".upload-*")), "the upload never reached the blob store"
    srv.kill()
    srv.start()
    assert not list(blobs.glob(".upload-*"))  # the half upload is gone, not visible under any name
    api.url = srv.url
    assert _state(api) == before
    dev = device(srv.url, tokens, tmp_path)
    assert dev.check().action == "installed"


KILL_IN_PUBLISH = """
import sys, time
from pathlib import Path
from pocketvision.serve import registry as R
from pocketvision.serve.repo import SqlRepository
store, marker = sys.argv[1], Path(sys.argv[2])
reg = R.Registry(store)
art = reg.status("hotdog")["versions"][1]["artifacts"]
real = SqlRepository.do_timestamp
def stall(self, *a, **k):
    real(self, *a, **k)          # every row of the new version and its signed metadata is written ...
    marker.write_text("in")      # ... and the transaction is not committed yet
    time.sleep(120)
SqlRepository.do_timestamp = stall
ups = [R.Upload(k, a["path"].rsplit("/", 1)[-1], a["sha256"], a["bytes"], {"passed": True}) for k, a in art.items()
       if k != "manifest"]  # the registry signs its own
reg.publish("hotdog", ups, {}, "stable", 100)
"""


def test_sigkill_mid_publish_leaves_no_half_version(registry, tmp_path):
    srv, tokens, api = registry
    before = _state(api)
    marker = tmp_path / "marker"
    p = subprocess.Popen([sys.executable, "-c", KILL_IN_PUBLISH, str(tmp_path / "store"), str(marker)])
    deadline = time.monotonic() + 60
    while not marker.exists() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), "publish never reached its last step"
    p.kill()
    p.wait(10)
    # the database itself (the server answers timestamp.json from a 1 s cache): nothing of the killed publish
    from pocketvision.serve.registry import Registry
    from pocketvision.serve.repo import metadata_file
    with Registry(tmp_path / "store").store.reader() as c:
        assert json.loads(metadata_file(c, "timestamp", None)) == before[2]
    assert _state(api)[:2] == before[:2]
    srv.kill()
    srv.start()
    api.url = srv.url
    assert _state(api) == before
    # And the next publish takes the version number the killed one never committed.
    status, body = api("PUT", "/v1/models/hotdog/channels/stable", {"version": 2, "rollout": 100})
    assert status == 200


def test_concurrent_publishes_are_serialised(registry, tmp_path):
    srv, tokens, api = registry
    art = api("GET", "/v1/models/hotdog")[1]["versions"][1]["artifacts"]
    files = [{"kind": k, "filename": a["path"].rsplit("/", 1)[-1], "sha256": a["sha256"], "length": a["bytes"],
              "verification": {"passed": True}} for k, a in art.items() if k != "manifest"]
    results = []

    def pub():
        results.append(Api(srv.url, tokens["admin"])("POST", "/v1/models/hotdog/versions",
                                                      {"files": files, "channel": "beta"}))

    threads = [threading.Thread(target=pub) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(s == 200 for s, _ in results), results
    assert sorted(b["version"] for _, b in results) == [3, 4, 5, 6, 7, 8]
    dev = device(srv.url, tokens, tmp_path, channel="beta")
    assert dev.check().action == "installed" and dev.version == 8


def test_cli_errors_are_one_line(tmp_path, registry):
    srv, tokens, api = registry
    r = run_cli("models", "hotdog", "--server", srv.url, "--token", tokens["device"])
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "admin token" in r.stderr
    r = run_cli("serve", "--store", str(tmp_path / "empty"))
    assert r.returncode != 0 and "keys new" in r.stderr and r.stderr.count("\n") == 1
    r = run_cli("keys", "new", "--store", str(tmp_path / "store"))
    assert r.returncode != 0 and "already has signed metadata" in r.stderr
    r = run_cli("rollback", "nothing", "--server", srv.url, "--token", tokens["admin"])
    assert r.returncode != 0 and "nothing to roll back" in r.stderr


CLIENT_WITHOUT_TORCH = """
import sys
from pocketvision.ota.device import ModelUpdater
up = ModelUpdater(sys.argv[1], "hotdog", token=sys.argv[2], trusted_root=sys.argv[3], cache_dir=sys.argv[4])
res = up.check()
assert res.action == "installed", res
print(up.predictor.predict([sys.argv[5]])[0]["label"])
assert "torch" not in sys.modules and "fastapi" not in sys.modules and "sqlalchemy" not in sys.modules
"""


def test_client_needs_no_torch(registry, tmp_path, hotdog_small):
    srv, tokens, _ = registry
    photo = sorted((hotdog_small / "val" / "hotdog").iterdir())[0]
    r = subprocess.run([sys.executable, "-c", CLIENT_WITHOUT_TORCH, srv.url, tokens["device"], str(_root(tmp_path)),
                        str(tmp_path / "dev"), str(photo)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() in ("hotdog", "not_hotdog"), r.stderr[-2000:]


# -- feedback ---------------------------------------------------------------------------------------------
def _fresh_photos(shared_data: Path, n: int) -> list[Path]:
    """Real photos that are not in ``hotdog_small`` (which takes the first 120 train photos per class)."""
    return sorted((shared_data / "hotdog" / "train" / "hotdog").iterdir())[300:300 + n]


def test_feedback_loop_into_a_data_set_that_trains(registry, tmp_path, hotdog_small, shared_data):
    import json
    srv, tokens, api = registry
    dev = device(srv.url, tokens, tmp_path)
    dev.check()
    fresh = _fresh_photos(shared_data, 3)
    known = sorted((hotdog_small / "train" / "hotdog").iterdir())[0]  # already in the data set
    ids = [dev.report(p, "not_hotdog", "hotdog")["id"] for p in [*fresh, known]]
    ids.append(dev.report(fresh[0], "hotdog", "not_hotdog", share_pixels=False)["id"])  # labels only
    assert api("GET", "/v1/models/hotdog/feedback")[1]["items"][-1]["image_sha256"] is None
    common = ("--server", srv.url, "--token", tokens["admin"], "--json")
    # A batch of decisions is all or none: an unknown id (or a label the model lacks) and nothing is changed.
    for bad in (["--label", f"{max(ids) + 1}=hotdog"], ["--label", f"{ids[1]}=pizza"]):
        r = run_cli("feedback", "review", "hotdog", "--confirm", str(ids[0]), "--reject", str(ids[4]), *bad, *common)
        assert r.returncode == 2 and "nothing was changed" in r.stderr, r.stderr
        assert {it["status"] for it in api("GET", "/v1/models/hotdog/feedback")[1]["items"]} == {"new"}
    r = run_cli("feedback", "review", "hotdog", "--confirm", ",".join(map(str, ids[:4])), "--reject", str(ids[4]),
                *common)
    assert r.returncode == 0, r.stderr
    assert [it["status"] for it in json.loads(r.stdout)] == ["confirmed"] * 4 + ["rejected"]
    data = tmp_path / "data"
    for split in ("train", "val"):
        for cls in (hotdog_small / split).iterdir():
            (data / split / cls.name).mkdir(parents=True)
            for p in cls.iterdir():
                (data / split / cls.name / p.name).symlink_to(p.resolve())
    r = run_cli("feedback", "export", "hotdog", "--out", str(data), *common)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["added"], out["already_there"]) == (3, 1), out
    assert all(Path(f).parent == data / "train" / "hotdog" for f in out["files"])
    again = json.loads(run_cli("feedback", "export", "hotdog", "--out", str(data), *common).stdout)
    assert again["added"] == 0 and again["already_there"] == 4
    r = run_cli("train", str(data), "--out", str(tmp_path / "retrained.pvb"), "--arch", "deepdog", "--arch-args",
                "alpha=0.25", "--size", "64", "--epochs", "1", "--no-recipe", "--json", "--run-dir", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr[-2000:]
    import pocketvision as pv
    assert pv.load(tmp_path / "retrained.pvb").meta["data"]["counts"]["train"] == {"hotdog": 123, "not_hotdog": 120}


def test_feedback_refuses_what_is_not_an_image(registry, tmp_path, shared_data):
    import urllib3
    srv, tokens, api = registry
    dev = device(srv.url, tokens, tmp_path)
    photo = _fresh_photos(shared_data, 1)[0].read_bytes()
    from PIL import Image
    gif = io_bytes(Image.new("RGB", (8, 8)), "GIF")
    for data, words in ((b"<?php system($_GET['c']); ?>", "not a readable"), (photo[: len(photo) // 3], "not a readable"),
                        (gif, "GIF is not accepted")):
        with pytest.raises(Exception) as e:
            dev.report(data, "not_hotdog", "hotdog")
        assert words in str(e.value)
    with pytest.raises(Exception, match="not a label"):
        dev.report(photo, "not_hotdog", "pizza")
    big = urllib3.request("POST", srv.url + "/v1/feedback", headers={"Authorization": f"Bearer {tokens['device']}"},
                          fields={"model": "hotdog", "device_id": "device-9999", "predicted": "hotdog",
                                  "corrected": "not_hotdog", "image": ("p.jpg", b"\xff" * (11 << 20))})
    assert big.status == 413
    anon = urllib3.request("POST", srv.url + "/v1/feedback", fields={"model": "hotdog"})
    assert anon.status == 401
    assert api("GET", "/v1/models/hotdog/feedback")[1]["items"] == []  # nothing refused was stored


def io_bytes(im, fmt: str) -> bytes:
    import io
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def test_fuzz_feedback_uploads(registry, shared_data):
    """Random and mutated multipart bodies against the real server: a clear 4xx or a stored correction, never a
    500, and the server still answers afterwards."""
    import urllib3
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    srv, tokens, api = registry
    photo = _fresh_photos(shared_data, 1)[0].read_bytes()[:20000]
    h = {"Authorization": f"Bearer {tokens['device']}"}
    http = urllib3.PoolManager()
    field = st.one_of(st.text(max_size=300), st.sampled_from(["hotdog", "not_hotdog", "", "../x", "device-0001"]))

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(model=st.sampled_from(["hotdog", "nope", "../etc", ""]), predicted=field, corrected=field,
           device_id=st.text(min_size=0, max_size=140), version=st.one_of(st.none(), st.text(max_size=8)),
           image=st.one_of(st.none(), st.binary(max_size=4096),
                           st.builds(lambda i, b: photo[:i] + bytes([b]) + photo[i + 1:],
                                     st.integers(0, len(photo) - 1), st.integers(0, 255))),
           raw=st.one_of(st.none(), st.binary(max_size=2048)))
    def one(model, predicted, corrected, device_id, version, image, raw):
        if raw is not None:  # not even multipart
            r = http.request("POST", srv.url + "/v1/feedback", body=raw,
                             headers={**h, "Content-Type": "multipart/form-data; boundary=xyz"})
        else:
            fields = {"model": model, "predicted": predicted, "corrected": corrected, "device_id": device_id}
            if version is not None:
                fields["version"] = version
            if image is not None:
                fields["image"] = ("x.jpg", image)
            r = http.request("POST", srv.url + "/v1/feedback", fields=fields, headers=h)
        assert r.status in (200, 400, 401, 403, 411, 413, 415, 422, 429), (r.status, r.data[:300])
        if r.status != 200:
            assert b"detail" in r.data

    one()
    assert api("GET", "/v1/models/hotdog")[0] == 200


def test_fuzz_image_sniffing():
    """The image check alone, in-process: any bytes give a kind or one PocketVisionError, nothing else."""
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from PIL import Image

    from pocketvision.errors import PocketVisionError
    from pocketvision.serve.feedback import sniff_image
    seeds = [io_bytes(Image.new("RGB", (32, 24), (200, 10, 10)), f) for f in ("JPEG", "PNG", "WEBP")]

    @settings(max_examples=300, deadline=None)
    @given(seed=st.sampled_from(seeds), cuts=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)),
                                                       max_size=6), tail=st.integers(0, 2000))
    def one(seed, cuts, tail):
        data = bytearray(seed)
        for i, b in cuts:
            if i < len(data):
                data[i] = b
        data = bytes(data[: max(1, len(data) - tail)])
        try:
            assert sniff_image(data) in ("jpg", "png", "webp")
        except PocketVisionError as e:
            assert str(e).startswith("image:")

    one()
    assert sniff_image(seeds[0]) == "jpg"


def test_openssf_model_signing_manifest_checks_offline(registry, tmp_path):
    """Each version carries an OpenSSF model-signing signature of all its files, checked here with that project's
    own CLI (`model_signing verify key`), offline, from the files a user downloaded."""
    from pocketvision.serve.keys import model_signing_cli
    cli = model_signing_cli()
    if cli is None:
        pytest.fail("the `model_signing` command is needed (`.ci/run` installs it; or pipx install model-signing, "
                    "or set POCKETVISION_MODEL_SIGNING)")
    srv, tokens, api = registry
    version = api("GET", "/v1/models/hotdog")[1]["versions"][0]
    arts = version["artifacts"]
    assert "manifest" in arts
    files = tmp_path / "hotdog-v1"
    files.mkdir()
    for kind, a in arts.items():
        d, _, name = a["path"].rpartition("/")
        r = api.http.request("GET", f"{srv.url}/tuf/targets/{d}/{a['sha256']}.{name}", headers=api.h)
        assert r.status == 200
        (tmp_path / name if kind == "manifest" else files / name).write_bytes(r.data)
    cmd = [cli, "verify", "key", "--signature",
           str(tmp_path / "model.sig"), "--public_key", str(tmp_path / "store" / "keys" / "manifest.pub"), str(files)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    onnx = next(files.glob("*.onnx"))
    onnx.write_bytes(onnx.read_bytes()[:-1] + b"\0")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "hotdog.onnx" in (r.stdout + r.stderr)


def _always(bundle: Path, out: Path, label: int) -> Path:
    """``bundle`` changed to answer ``label`` for every photo: a live version that users keep correcting."""
    import torch

    import pocketvision as pv
    from pocketvision.tasks.classify.run import final_linear
    b = pv.load(bundle)
    head = final_linear(b.model)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([-4.0, 4.0] if label == 1 else [4.0, -4.0]))
    return b.save(out)


def _corrections(shared_data: Path, n_train: int, n_held: int, skip: int = 0) -> list[Path]:
    """Hot dog photos outside ``hotdog_small``, chosen so that ``n_held`` of them are held back by retrain."""
    import hashlib

    from pocketvision.serve.retrain import held_back
    out, held, kept = [], 0, 0
    for p in sorted((shared_data / "hotdog" / "train" / "hotdog").iterdir())[200 + skip:]:
        back = held_back(hashlib.sha256(p.read_bytes()).hexdigest())
        if (back and held < n_held) or (not back and kept < n_train):
            out.append(p)
            held, kept = held + back, kept + (not back)
        if held == n_held and kept == n_train:
            return out
    raise AssertionError("not enough photos")


def test_retrain_pulls_corrections_gates_and_publishes_a_staged_rollout(registry, tmp_path, hotdog_small,
                                                                       shared_data, trained_bundle):
    """The loop, through the real registry: a live version that calls every photo not_hotdog; users correct hot
    dogs; `retrain` skips a correction with a label the model does not know, holds a quarter back, warm-starts,
    passes the gate (the held-back hot dogs go from 0 right) and publishes to 10% of stable. Run again, nothing is
    new; a candidate no better on the held-back photos (0 epochs) is refused, exit 1, and the live version stays."""
    import json

    import sqlalchemy as sa

    import pocketvision as pv
    from pocketvision.serve.store import db_url, feedback
    srv, tokens, api = registry
    common = ("--server", srv.url, "--token", tokens["admin"], "--json")
    live = _always(trained_bundle, tmp_path / "live.pvb", label=1)
    r = run_cli("publish", str(live), "--name", "hotdog", "--channel", "stable", "--rollout", "100%",
                "--data", str(hotdog_small), *common)
    assert r.returncode == 0, r.stderr[-2000:]
    v_live = json.loads(r.stdout)["version"]
    data = str(hotdog_small)

    r = run_cli("retrain", "hotdog", "--data", data, "--work", str(tmp_path / "w0"), *common)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert out["action"] == "nothing" and "no new confirmed corrections" in out["reason"]

    dev = device(srv.url, tokens, tmp_path)
    assert dev.check().action == "installed" and dev.version == v_live
    ids = [dev.report(p, "not_hotdog", "hotdog")["id"] for p in _corrections(shared_data, 8, 3)]
    r = run_cli("feedback", "review", "hotdog", "--confirm", ",".join(map(str, ids)), *common)
    assert r.returncode == 0, r.stderr
    # a correction made when the model had another class: its label is unknown to the live version
    from pocketvision.serve.store import Store
    with Store(db_url(None, tmp_path / "store")).writer() as c:
        c.execute(feedback.insert().values(model="hotdog", version=1, device="x" * 64, predicted="hotdog",
                                           corrected="pizza", image_sha256="0" * 64, image_type="jpg",
                                           created=0.0, status="confirmed", label="pizza"))

    r = run_cli("retrain", "hotdog", "--data", data, "--epochs", "2", "--work", str(tmp_path / "w1"), *common)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["action"] == "published", out["reason"]
    assert "label 'pizza' is not one of the model's" in r.stderr
    c = out["corrections"]
    assert (c["unknown_label"], c["new"], c["trained"], c["held_back"]) == (1, 11, 8, 3)
    rows = {g["images"]: g for g in out["gate"]}
    held = rows["held-back corrections (never trained on)"]
    assert held["n"] == 3 and held["live"] == 0.0 and held["candidate"] > 0 and all(g["passed"] for g in out["gate"])
    assert rows["val photos (the old ones)"]["n"] == 80 and rows["their phone-photo twin"]["n"] == 80
    v_new = out["published"]["version"]
    plan = api("GET", "/v1/models/hotdog")[1]["channels"]["stable"]
    assert (plan["current"]["version"], plan["rollout"], plan["previous"]["version"]) == (v_new, 10.0, v_live)
    cand = pv.load(out["candidate"])
    assert cand.meta["feedback"]["from_version"] == v_live and len(cand.meta["feedback"]["held_back"]) == 3
    assert out["seconds"]["total"] > 0

    r = run_cli("retrain", "hotdog", "--data", data, "--work", str(tmp_path / "w2"), *common)
    assert r.returncode == 0 and json.loads(r.stdout)["action"] == "nothing", r.stderr[-2000:]

    more = [dev.report(p, "not_hotdog", "hotdog")["id"] for p in _corrections(shared_data, 1, 1, skip=60)]
    assert run_cli("feedback", "review", "hotdog", "--confirm", ",".join(map(str, more)), *common).returncode == 0
    r = run_cli("retrain", "hotdog", "--data", data, "--epochs", "0", "--work", str(tmp_path / "w3"),
                "--server", srv.url, "--token", tokens["admin"])
    assert r.returncode == 1, r.stderr[-2000:]
    assert "gate: candidate against live version" in r.stdout and "FAIL" in r.stdout
    assert f"version {v_new} stays live" in r.stdout.replace("\n", " ")
    assert api("GET", "/v1/models/hotdog")[1]["channels"]["stable"]["current"]["version"] == v_new


def test_review_queue_puts_the_least_sure_answers_first(registry, tmp_path, shared_data):
    """Devices send the model's confidence with a correction (and may confirm an unsure answer: corrected ==
    predicted); `order=teach` lists the least sure first, those without a confidence last; a confidence outside
    [0, 1] or not a number is refused."""
    import urllib3
    srv, tokens, api = registry
    dev = device(srv.url, tokens, tmp_path)
    dev.check()
    photos = _fresh_photos(shared_data, 5)
    ids = [dev.report(photos[0], "not_hotdog", "hotdog", confidence=0.97)["id"],
           dev.report(photos[1], "not_hotdog", "hotdog")["id"],
           dev.report(photos[2], "hotdog", "hotdog", confidence=0.51)["id"],  # "is this right?" -> yes
           dev.report(photos[3], "not_hotdog", "hotdog", confidence=0.62)["id"],
           dev.report(photos[4], "not_hotdog", "hotdog", confidence=0.52, unfamiliar=3.0)["id"]]
    items = api("GET", "/v1/models/hotdog/feedback?order=teach")[1]["items"]
    # least sure first (in bands of 5%: 0.51 and 0.52 are one band), and within a band the less familiar photo
    assert [it["id"] for it in items] == [ids[4], ids[2], ids[3], ids[0], ids[1]]
    assert [it["confidence"] for it in items] == [0.52, 0.51, 0.62, 0.97, None] and items[0]["unfamiliar"] == 3.0
    assert [it["id"] for it in api("GET", "/v1/models/hotdog/feedback")[1]["items"]] == ids
    assert api("GET", "/v1/models/hotdog/feedback?order=loudest")[0] == 400
    http = urllib3.PoolManager()
    for bad in ("1.5", "-0.1", "nan", "lots"):
        r = http.request("POST", f"{srv.url}/v1/feedback", headers={"Authorization": f"Bearer {tokens['device']}"},
                         fields={"model": "hotdog", "device_id": "device-bad-conf", "predicted": "hotdog",
                                 "corrected": "not_hotdog", "confidence": bad})
        assert r.status == 422 and b"confidence" in r.data, (bad, r.status, r.data)


def test_devices_report_how_much_traffic_looks_unfamiliar(registry, tmp_path, hotdog_small, shared_data):
    """Each prediction carries the model's unfamiliarity flag; a device counts them per version and sends the
    counts with its next check (no photo); the registry shows the share per version. Bad counts are refused."""
    srv, tokens, api = registry
    dev = device(srv.url, tokens, tmp_path)
    assert dev.check().action == "installed"
    photos = [str(p) for p in sorted((hotdog_small / "val" / "hotdog").iterdir())[:6]]
    photos += [str(p) for p in sorted((shared_data / "food-shift" / "eval" / "not_hotdog").iterdir())[:6]]
    recs = dev.predictor.predict(photos)
    assert all("unfamiliar" in r and isinstance(r["unfamiliar_flag"], bool) for r in recs)
    flagged = sum(r["unfamiliar_flag"] for r in recs)
    dev.check()
    traffic = api("GET", "/v1/models/hotdog")[1]["traffic"]
    assert traffic == [{"version": 1, "predictions": 12, "unfamiliar": flagged, "unfamiliar_share": flagged / 12}]
    dev.check()  # sent once: nothing new since
    assert api("GET", "/v1/models/hotdog")[1]["traffic"][0]["predictions"] == 12
    r = run_cli("models", "hotdog", "--server", srv.url, "--token", tokens["admin"])
    assert r.returncode == 0 and "traffic" in r.stdout and f"{flagged / 12:.1%}" in r.stdout
    dapi = Api(srv.url, tokens["device"])
    bad = [{"predictions": 3, "unfamiliar": 4}, {"predictions": 0, "unfamiliar": 0}, {"predictions": 10**9,
                                                                                      "unfamiliar": 0}]
    for b in bad:
        status, _ = dapi("POST", "/v1/traffic", {"model": "hotdog", "device_id": "device-traffic", "version": 1, **b})
        assert status == 422, b


def test_publish_says_when_a_version_changes_the_network_or_the_download(registry, tmp_path, hotdog_small):
    """The demo ships DeepDog; a default `train` makes EfficientNet-Lite0: publishing it says what devices will pay."""
    import pocketvision as pv
    srv, tokens, _ = registry
    wider = pv.train(hotdog_small, out=tmp_path / "wide.pvb", arch="mobilenet_v2", size=64, epochs=1, recipe=False,
                     run_dir=tmp_path / "run", progress=False, tensorboard=False, workers=0)
    r = run_cli("publish", str(wider.path), "--name", "hotdog", "--server", srv.url, "--token", tokens["admin"],
                "--data", str(hotdog_small), "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    text = " ".join(r.stderr.split())  # the console wraps long lines
    note = text[text.index("note:"):]
    assert "its network is mobilenet_v2, the live version 1's is" in note and "devices download" in note, note
    assert "pocketvision retrain hotdog" in note
