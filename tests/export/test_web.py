"""The web export in a real browser: Debian's Chromium driven by Playwright, served from 127.0.0.1.

Needs `chromium` (apt) and the onnxruntime-web runtime files (`pocketvision fetch-web-runtime`);
`.ci/run` installs both. Missing ones fail loudly, never skip.
"""

from __future__ import annotations

import json

import pytest

import pocketvision as pv
from pocketvision.runtime.web_predictor import WebPredictor

from helpers import run_cli

pytestmark = [pytest.mark.browser, pytest.mark.shared_data]


@pytest.fixture(scope="module")
def web_folder(trained_page):
    out, v = trained_page  # the page's own session vs the bundle, on the 80 real val photos
    assert v["passed"], v
    assert v["n"] == 80 and v["max_abs_diff"] <= 1e-3 and v["top1_agreement"] >= 0.995
    return out


def test_folder_is_self_contained(web_folder):
    meta = json.loads((web_folder / "model.json").read_text())
    for f in ["index.html", "app.js", "model.onnx", "_headers"] + [f"ort/{r[k]}" for r in meta["runtime"].values()
                                                                  for k in ("module", "wasm")]:
        assert (web_folder / f).is_file(), f
    page = (web_folder / "index.html").read_text() + (web_folder / "app.js").read_text()
    assert "http://" not in page and "https://" not in page  # no CDN: works offline from any static server
    assert meta["labels"] == ["hotdog", "not_hotdog"] and meta["contract"]["size"] == [96, 96]


def test_page_runs_threads_and_caches_the_model(web_folder):
    with WebPredictor(web_folder) as web:
        first = web.page_info
        assert first["backend"] == "wasm"  # headless without a GPU: WebGPU falls back to WASM
        assert first["threads"] >= 1
        assert first["bytes"].get("model.onnx", 0) > 0
        second = web.visit()  # same browser profile: the Cache API serves the model
        model_files = ["model.onnx", "ort-wasm-simd-threaded.wasm"]
        assert all(second["bytes"].get(f, 0) == 0 for f in model_files), second["bytes"]
        assert second["cacheHits"] >= 2
        lat = web.latency_ms(runs=10)
        assert 0 < lat["p50_ms"] < 1000
        assert web.ready_s == first["ready_s"]  # the first visit's cost, not the cached one
        # Threads change in place: the page reloads with the new count (what `bench --all` times at 1 and all).
        assert web.at_threads(1) is web and web.page_info["threads"] == 1


def test_large_models_load_from_lazy_chunks(trained_bundle, trained_onnx, tmp_path):
    from pocketvision.export.web import export_web
    b = pv.load(trained_bundle)
    onnx_path = trained_onnx.path
    folder = export_web(onnx_path, b.export_meta(), tmp_path / "chunked.web", b.plugin.outputs, chunk_bytes=64 * 1024)
    meta = json.loads((folder / "model.json").read_text())
    assert len(meta["model"]["external_data"]) >= 2
    v = b.verify(folder)
    assert v["passed"], v


def test_cli_predict_and_eval_accept_the_web_folder(web_folder, hotdog_small, trained_bundle):
    img = sorted((hotdog_small / "val" / "hotdog").iterdir())[0]
    r = run_cli("predict", str(web_folder), str(img), "--json")
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout)[0]
    assert row["label"] in ("hotdog", "not_hotdog") and 0 <= row["confidence"] <= 1
    # the page's graph computes the unfamiliarity score too, and agrees with the bundle's
    import pocketvision as pv
    want = pv.load(trained_bundle).predict([str(img)])[0]
    assert abs(row["unfamiliar"] - want["unfamiliar"]) < 1e-3 and row["unfamiliar_flag"] == want["unfamiliar_flag"]
    r = run_cli("eval", str(web_folder), str(hotdog_small), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["argmax_accuracy"] > 0.55  # above chance on real photos, in the browser


def test_webcam_frames_are_classified_live(web_folder):
    # Chromium's synthetic camera stands in for a real one; the page's own loop classifies its frames.
    fake_camera = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
    with WebPredictor(web_folder, browser_args=fake_camera) as web:
        web.page.click("#camera")
        web.page.wait_for_function("window.pv.last && window.pv.frames > 3", timeout=30_000)
        last = web.page.evaluate("window.pv.last")
        assert last["label"] in ("hotdog", "not_hotdog") and last["ms"] > 0
        assert isinstance(last["unfamiliar"], float) and isinstance(last["unfamiliar_flag"], bool)
        assert web.page.evaluate("document.getElementById('video').videoWidth") > 0
