"""Over-the-air updates of folder exports: the web page updating itself in Debian's Chromium (its own TUF
verification with WebCrypto, the Cache API, a swap under load, attacks from a hostile mirror, the "wrong?"
control), and a Python device installing a published web folder. A real registry (`pocketvision serve`)
on 127.0.0.1; the page is served from another origin, so CORS is exercised for real."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from ota_support import (Api, Mirror, RegistryServer, new_store, perturbed, publish_all, resign, store_keys,
                         store_meta)

import pocketvision as pv
from helpers import run_cli
from pocketvision.runtime.web_predictor import WebPredictor

pytestmark = [pytest.mark.shared_data, pytest.mark.browser]


@pytest.fixture(scope="module")
def web_store(trained_bundle, trained_page, hotdog_small, tmp_path_factory):
    """A registry with hotdog v1 (web, on stable) and v2 (a different model: web and Core ML); the page: the
    session's web export of v1 (conftest.trained_page), copied by each test. Single-file ONNX releases are
    tests/ota/test_ota.py's."""
    root = tmp_path_factory.mktemp("ota-web")
    store = root / "store"
    tokens = new_store(store)
    b2 = perturbed(trained_bundle, root / "hotdog-v2.pvb")
    publish_all(store, tokens["admin"], hotdog_small,
                [(trained_bundle, ("--to", "web", "--channel", "stable")), (b2, ("--to", "web,coreml"))])
    return store, tokens, b2, trained_page[0]


@pytest.fixture
def registry(web_store, tmp_path):
    store, tokens, b2, page = web_store
    shutil.copytree(store, tmp_path / "store")
    shutil.copytree(page, tmp_path / "page.web")
    return tmp_path / "store", tokens, b2, tmp_path / "page.web"


def test_folder_targets_are_signed_file_by_file_and_install_on_python_devices(registry, tmp_path, hotdog_small,
                                                                             trained_bundle):
    from pocketvision.ota.device import ModelUpdater
    store, tokens, _, _ = registry
    srv = RegistryServer(store).start()
    try:
        api = Api(srv.url, tokens["admin"])
        status, body = api("GET", "/v1/models/hotdog")
        v2 = body["versions"][1]["artifacts"]
        assert v2["web"]["path"] == "hotdog/2/hotdog.web.folder.json" and "coreml" in v2
        targets = store_meta(store, "targets").signed.targets
        members = [p for p in targets if p.startswith("hotdog/2/hotdog.web/")]
        assert "hotdog/2/hotdog.web/model.onnx" in members and any("/ort/" in p for p in members)
        assert any(p.startswith("hotdog/2/hotdog.mlpackage/") for p in targets)
        _check_model_signing_manifest(srv.url, api, targets, tmp_path)
        dev = ModelUpdater(srv.url, "hotdog", token=tokens["device"], trusted_root=store / "root.json",
                           cache_dir=tmp_path / "dev", kind="web", device_id="device-web-1")
        res = dev.check()
        assert res.action == "installed" and dev.version == 1, res
        photo = sorted((hotdog_small / "val" / "hotdog").iterdir())[0]
        want = pv.load(trained_bundle).predict([str(photo)])[0]["probabilities"]
        got = dev.predictor.predict([str(photo)])[0]["probabilities"]
        assert max(abs(got[k] - want[k]) for k in want) < 1e-3
        dev.predictor.current.close()
        # A device that runs Core ML can't here (Linux): the folder arrives verified, the load fails, the
        # version is marked bad and reported; nothing else changes.
        assert api("PUT", "/v1/models/hotdog/channels/stable", {"version": 2, "rollout": 100})[0] == 200
        mac = ModelUpdater(srv.url, "hotdog", token=tokens["device"], trusted_root=store / "root.json",
                           cache_dir=tmp_path / "mac", kind="coreml", device_id="device-mac-1")
        res = mac.check()
        assert res.action == "failed" and "Apple platforms" in res.detail and mac.version is None, res
    finally:
        srv.stop()


def _check_model_signing_manifest(url, api, targets, tmp_path):
    """The OpenSSF manifest covers folder exports file by file: `model_signing verify` on the downloaded tree."""
    import subprocess

    from pocketvision.serve.keys import model_signing_cli
    cli = model_signing_cli()
    if cli is None:
        pytest.fail("the `model_signing` command is needed (`.ci/run` installs it; or set POCKETVISION_MODEL_SIGNING)")
    files = tmp_path / "hotdog-v2"
    for path, t in targets.items():
        if not path.startswith("hotdog/2/") or path.endswith(".folder.json"):
            continue
        d, _, name = path.rpartition("/")
        r = api.http.request("GET", f"{url}/tuf/targets/{d}/{t.hashes['sha256']}.{name}", headers=api.h)
        dest = tmp_path / name if name == "model.sig" else files / path[len("hotdog/2/"):]
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(r.data)
    cmd = [cli, "verify", "key", "--signature", str(tmp_path / "model.sig"), "--public_key",
           str(tmp_path / "store" / "keys" / "manifest.pub"), str(files)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    (files / "hotdog.web" / "model.json").write_text("{}")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "model.json" in (r.stdout + r.stderr)


def _page(registry, tokens, web: WebPredictor, server_url: str) -> None:
    store = registry[0]
    r = run_cli("web-updates", str(web.path), "--name", "hotdog", "--root", str(store / "root.json"),
                "--server", server_url, "--token", tokens["device"], "--interval", "0")
    assert r.returncode == 0, r.stderr
    web.visit()


def _origin(web: WebPredictor) -> str:
    return web.url.split("/?")[0].rstrip("/")


def test_web_page_updates_itself_swaps_under_load_and_reloads_from_cache(registry, hotdog_small):
    store, tokens, b2, page = registry
    with WebPredictor(page) as web:
        srv = RegistryServer(store, ("--allow-origin", _origin(web))).start()
        try:
            api = Api(srv.url, tokens["admin"])
            _page(registry, tokens, web, srv.url)
            res = web.page.evaluate("pv.updates.check()")
            assert res["action"] == "installed" and res["version"] == 1, res
            assert web.page.evaluate("pv.updates.check()")["action"] == "none"
            # v2 for everyone; the page keeps predicting while it verifies, smoke-tests and swaps.
            assert api("PUT", "/v1/models/hotdog/channels/stable", {"version": 2, "rollout": 100})[0] == 200
            pixels = np.asarray(pv.load(b2).held_out(hotdog_small).pixels[:1])
            res = web.page.evaluate("""async (rgb) => {
                const px = new Uint8Array(rgb);
                let stop = false, ok = 0, failed = [];
                // like a camera loop: a prediction per frame (a loop of awaits alone would never yield to the
                // network, a page's rendering or its timers)
                const loop = (async () => { while (!stop) {
                    try { await pv.runPixels(px, 1); ok++; } catch (e) { failed.push(String(e)); }
                    await new Promise((r) => setTimeout(r, 0)); } })();
                const r = await pv.updates.check();
                stop = true; await loop;
                return { ...r, ok, failed, version: pv.version };
            }""", pixels.ravel().tolist())
            assert res["action"] == "installed" and res["version"] == 2, res
            assert res["failed"] == [] and res["ok"] > 0, res
            got = np.asarray(web.page.evaluate("async (rgb) => (await pv.runPixels(new Uint8Array(rgb), 1)).data",
                                               pixels.ravel().tolist()))
            want = pv.load(b2).predict_pixels(pixels).ravel()
            assert np.abs(got - want).max() < 1e-3  # the page now answers with v2
            status, body = api("GET", "/v1/models/hotdog")
            assert {"version": 2, "state": "installed", "devices": 1} in body["adoption"]
            # A reload starts on v2 from the Cache API: the page's own model is not even fetched.
            info = web.visit()
            assert web.page.evaluate("pv.version") == 2 and info["bytes"].get("model.onnx", 0) == 0, info["bytes"]
            # A rollback reaches the page like any release.
            assert api("POST", "/v1/models/hotdog/channels/stable/rollback")[0] == 200
            res = web.page.evaluate("pv.updates.check()")
            assert res["action"] == "installed" and res["version"] == 1, res
        finally:
            srv.stop()


def test_web_page_refuses_attacks_and_keeps_serving(registry):
    store, tokens, _, page = registry
    with WebPredictor(page) as web:
        srv = RegistryServer(store, ("--allow-origin", _origin(web))).start()
        mirror = Mirror(srv.url)
        try:
            api = Api(srv.url, tokens["admin"])
            _page(registry, tokens, web, mirror.url)
            assert web.page.evaluate("pv.updates.check()")["version"] == 1
            assert api("PUT", "/v1/models/hotdog/channels/stable", {"version": 2, "rollout": 100})[0] == 200
            keys = store_keys(store)
            ts = store_meta(store, "timestamp")
            attacks = {
                "tampered model": (r"/targets/hotdog/2/hotdog\.web/.*model\.onnx$",
                                   lambda b: b[:100] + bytes([b[100] ^ 1]) + b[101:], "hash differs"),
                "endless model": (r"/targets/hotdog/2/hotdog\.web/.*model\.onnx$", "endless", "longer than"),
                "replayed timestamp": (r"/metadata/timestamp\.json$",
                                       lambda b, old=store_meta(store, "timestamp", 1): old.to_bytes(), "rollback"),
                "expired timestamp": (r"/metadata/timestamp\.json$", lambda b, f=resign(
                    ts, keys["timestamp"], version=ts.signed.version + 5,
                    expires=datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)): f, "expired"),
                "timestamp signed by the targets key": (r"/metadata/timestamp\.json$", lambda b, f=resign(
                    store_meta(store, "timestamp"), keys["targets"], version=ts.signed.version + 6): f,
                    "valid signature"),
            }
            for name, (pattern, rule, words) in attacks.items():
                mirror.rules.clear()
                mirror.rules[pattern] = rule
                res = web.page.evaluate("pv.updates.check()")
                assert res["action"] == "failed" and words in res["detail"], (name, res)
                assert web.page.evaluate("pv.version") == 1, name
                web.page.evaluate("pv.updates.state.bad = []")  # let the next attack reach the same release
                got = web.page.evaluate("async () => (await pv.runPixels(new Uint8Array(96 * 96 * 3), 1)).data")
                assert len(got) == 2 and abs(sum(got) - 1) < 1e-4, name  # still serving v1
            status, body = api("GET", "/v1/models/hotdog")  # each refusal was reported
            assert any(r["state"] in ("failed", "rolled_back") for r in body["adoption"]), body["adoption"]
            # The refused timestamps were never trusted: with the mirror honest again, v2 installs.
            mirror.rules.clear()
            res = web.page.evaluate("pv.updates.check()")
            assert res["action"] == "installed" and res["version"] == 2, res
        finally:
            mirror.close()
            srv.stop()


def test_wrong_control_sends_a_correction_from_the_page(registry, hotdog_small):
    store, tokens, _, page = registry
    photo = sorted((hotdog_small / "val" / "hotdog").iterdir())[0]
    shutil.copy(photo, page / "photo.jpg")  # the page's own origin, like a photo the user picked
    with WebPredictor(page) as web:
        srv = RegistryServer(store, ("--allow-origin", _origin(web))).start()
        try:
            _page(registry, tokens, web, srv.url)
            assert web.page.evaluate("pv.updates.check()")["version"] == 1
            web.page.evaluate("pv.runUrl('photo.jpg').then(() => true)")
            assert web.page.is_visible("#wrong")
            said = web.page.evaluate("pv.last.label")
            other = next(lab for lab in ("hotdog", "not_hotdog") if lab != said)
            assert web.page.eval_on_selector_all("#wrong-label option", "os => os.map(o => o.value)") == [other]
            web.page.click("#wrong-send")
            web.page.wait_for_function("document.getElementById('wrong-status').textContent !== ''")
            assert web.page.text_content("#wrong-status") == "Thanks: sent."
            web.page.uncheck("#wrong-share")  # the user keeps the photo private: labels only
            web.page.click("#wrong-send")
            web.page.wait_for_function("document.getElementById('wrong-status').textContent === 'Thanks: sent.'")
            items = Api(srv.url, tokens["admin"])("GET", "/v1/models/hotdog/feedback")[1]["items"]
            assert len(items) == 2 and {i["predicted"] for i in items} == {said}
            assert {i["corrected"] for i in items} == {other} and {i["version"] for i in items} == {1}
            assert sorted(str(i["image_type"]) for i in items) == ["None", "jpg"]
            # the model's confidence and unfamiliarity score go with each correction (the review queue's order)
            last = web.page.evaluate("pv.last")
            for key in ("confidence", "unfamiliar"):
                assert [i[key] for i in items] == pytest.approx([last[key]] * 2, abs=1e-5), key
            with_photo = next(i["id"] for i in items if i["image_type"])
            status, data = Api(srv.url, tokens["admin"])("GET", f"/v1/feedback/{with_photo}/image")
            assert status == 200 and data == photo.read_bytes()  # the photo as the user gave it
            _review_in_the_labelling_app(web, srv.url, tokens, other, with_photo)
            # "is this right?" is offered when the model was unsure or the photo looked unfamiliar; "yes" sends
            # the model's own label back as the user's
            from pocketvision.ota.device import worth_asking
            assert web.page.is_visible("#ask") == worth_asking(last)
            web.page.evaluate("pv.sendCorrection(pv.last.label).then(() => true)")
            items = Api(srv.url, tokens["admin"])("GET", "/v1/models/hotdog/feedback")[1]["items"]
            assert len(items) == 3 and items[-1]["predicted"] == items[-1]["corrected"] == said
        finally:
            srv.stop()


def _review_in_the_labelling_app(web, server_url, tokens, other, with_photo):
    """`feedback review --app`: the photo shown, one key per decision, saved on the registry at once."""
    from pocketvision.label.review import start
    from pocketvision.serve.publish import Client
    client = Client(server_url, tokens["admin"])
    srv = start(client, "hotdog")
    try:
        page = web.context.new_page()
        page.goto(f"http://127.0.0.1:{srv.server_address[1]}/")
        page.wait_for_function("window.review && window.review.ready")
        assert page.evaluate("review.items.length") == 2 and page.evaluate("review.labels") == ["hotdog", "not_hotdog"]
        first = page.evaluate("review.items[review.at].id")
        if first == with_photo:
            page.wait_for_function("document.getElementById('photo').naturalWidth > 0")  # the photo really shows
        page.keyboard.press(str(["hotdog", "not_hotdog"].index(other) + 1))
        page.wait_for_function(f"review.items.find(i => i.id === {first}).status === 'confirmed'")
        page.keyboard.press("x")
        page.wait_for_function("review.items.every(i => i.status !== 'new')")
        page.close()
    finally:
        srv.shutdown()
    items = {i["id"]: i for i in client.call("GET", "/v1/models/hotdog/feedback")["items"]}
    assert items[first]["status"] == "confirmed" and items[first]["label"] == other
    assert [i["status"] for k, i in items.items() if k != first] == ["rejected"]


def test_web_updates_cli_refuses_bad_input(registry, tmp_path):
    store, tokens, _, page = registry
    for args, words in ((["--root", str(store / "registry.db")], "not TUF root metadata"),
                        (["--server", "ftp://x"], "http(s)://"),
                        (["--name", "Bad Name"], "lowercase")):
        base = {"--root": str(store / "root.json"), "--server": "http://127.0.0.1:9", "--name": "hotdog"}
        base.update(dict(zip(args[::2], args[1::2])))
        r = run_cli("web-updates", str(page), *[x for kv in base.items() for x in kv], "--token", "t")
        assert r.returncode != 0 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = run_cli("web-updates", str(tmp_path), "--root", str(store / "root.json"), "--server", "http://x",
                "--name", "hotdog", "--token", "t")
    assert r.returncode != 0 and "not a pocketvision web export" in r.stderr
    assert not (page / "update.json").exists()
    json.loads((store / "root.json").read_text())
