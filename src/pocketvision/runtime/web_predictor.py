"""Run an exported web folder in a real browser: the page's own onnxruntime-web session does the work.

``WebPredictor(folder)`` serves the folder on 127.0.0.1 (with the cross-origin-isolation headers that
enable WASM threads), opens it in headless Chromium through Playwright, waits for ``window.pv.ready``
and sends uint8 pixels to ``pv.classifyPixels``. So verify, eval, predict and bench measure what a
visitor's browser computes. Chromium comes from the OS (Debian: ``apt-get install chromium``);
Playwright is never asked to download a browser.
"""

from __future__ import annotations

import base64
import functools
import http.server
import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import PocketVisionError
from .predictor import Predictor

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


class _Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".wasm": "application/wasm",
                      ".mjs": "text/javascript", ".js": "text/javascript", ".onnx": "application/octet-stream",
                      ".json": "application/json"}

    def end_headers(self) -> None:
        # Cross-origin isolation: SharedArrayBuffer, hence WASM threads.
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        super().end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def serve(folder: str | Path, port: int = 0, host: str = "127.0.0.1") -> http.server.ThreadingHTTPServer:
    """Serve ``folder`` (only it) in a background thread; ``server.server_address`` has the port."""
    srv = http.server.ThreadingHTTPServer((host, port), functools.partial(_Handler, directory=str(folder)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def chromium_path() -> str:
    for cand in (os.environ.get("PV_CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser"),
                 shutil.which("google-chrome")):
        if cand and Path(cand).exists():
            return cand
    raise PocketVisionError("running a web export needs Chromium: `apt-get install chromium` (Debian/Ubuntu) or "
                            "set PV_CHROMIUM to a Chrome/Chromium binary.")


def is_web_folder(path: str | Path) -> bool:
    p = Path(path)
    if not (p.is_dir() and (p / "model.json").is_file()):
        return False
    try:
        return json.loads((p / "model.json").read_text()).get("format") == "pocketvision-web"
    except (OSError, json.JSONDecodeError):
        return False


class WebPredictor(Predictor):
    """Same surface as OnnxPredictor (labels, contract, threshold, run_pixels, predict), in Chromium."""

    def __init__(self, folder: str | Path, threads: int | None = None, timeout_s: float = 120.0,
                 browser_args: list[str] | None = None):
        self.path = Path(folder)
        if not is_web_folder(self.path):
            raise PocketVisionError(f"{self.path}: not a pocketvision web export (no model.json); "
                                    "make one with `pocketvision export BUNDLE --to web`.")
        self._read_meta(json.loads((self.path / "model.json").read_text()))
        self.input_size = None if self.meta.get("dynamic_size") else tuple(self.contract.size)
        try:
            from playwright.sync_api import sync_playwright
        except ImportError:
            raise PocketVisionError("running a web export needs Playwright's Python package: "
                                    "pip install 'pocketvision[web]' (it uses your installed Chromium).") from None
        self._server = serve(self.path)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/" + (f"?threads={threads}" if threads else "")
        self._pw = sync_playwright().start()
        try:
            self._browser = self._pw.chromium.launch(executable_path=chromium_path(),
                                                     args=CHROMIUM_ARGS + list(browser_args or []))
            self.context = self._browser.new_context()
            self.visit(timeout_s)
        except Exception:
            self.close()
            raise

    def visit(self, timeout_s: float = 120.0) -> dict[str, Any]:
        """(Re)load the page; -> {"ready_s": navigation to ready, "bytes": {file: network bytes}}."""
        if getattr(self, "page", None) is not None:
            self.page.close()
        self.page = self.context.new_page()
        transferred: dict[str, int] = {}

        def on_response(r) -> None:
            name = r.url.split("?")[0].rsplit("/", 1)[-1]
            try:
                transferred[name] = transferred.get(name, 0) + len(r.body())
            except Exception:  # noqa: BLE001 - bodies of redirects/aborted requests
                pass
        self.page.on("response", on_response)
        errors: list[str] = []
        self.page.on("pageerror", lambda e: errors.append(str(e)))
        t0 = time.perf_counter()
        self.page.goto(self.url)
        try:
            self.page.wait_for_function("window.pv && window.pv.status !== 'loading'", timeout=timeout_s * 1000)
        except Exception as e:  # noqa: BLE001 - playwright TimeoutError
            raise PocketVisionError(f"{self.path}: the page did not get ready in {timeout_s:.0f} s "
                                    f"({errors[:1] or str(e).splitlines()[0]}).") from None
        info = self.page.evaluate("({status: pv.status, error: pv.error, backend: pv.backend, threads: pv.threads,"
                                  " timings: pv.timings, cacheHits: pv.cacheHits || 0})")
        if info["status"] != "ready":
            raise PocketVisionError(f"{self.path}: the page failed to start: {info.get('error')}")
        info["ready_s"] = time.perf_counter() - t0
        info["page_ready_ms"] = info["timings"]["ready"]
        info["bytes"] = transferred
        self.page_info = info
        if self.ready_s is None:  # the first visit: what a user's first page load costs
            self.ready_s = info["ready_s"]
        return info

    def run_pixels(self, pixels: np.ndarray, batch: int = 16) -> np.ndarray:
        """uint8 NHWC -> the graph's first output, computed by the page."""
        return self._run(pixels, batch)[0]

    def run_outputs(self, pixels: np.ndarray, batch: int = 16) -> dict[str, np.ndarray]:
        """uint8 NHWC -> the page's outputs by name: the first, and the others the graph has (numbers only)."""
        first, extra = self._run(pixels, batch)
        return {self.plugin.outputs.names[0]: first, **extra}

    def _run(self, pixels: np.ndarray, batch: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
        n, h, w = pixels.shape[:3]
        out, extra = [], {}
        for i in range(0, n, batch):
            chunk = pixels[i:i + batch]
            b64 = base64.b64encode(chunk.tobytes()).decode()
            res = self.page.evaluate("async ([b64, n, h, w]) => { const s = atob(b64); const a = new Uint8Array(s.length);"
                                     " for (let i = 0; i < s.length; i++) a[i] = s.charCodeAt(i);"
                                     " return await pv.runPixels(a, n, h, w); }", [b64, len(chunk), h, w])
            if res["type"] == "uint8":  # images travel as base64, not as a JSON list of numbers
                flat = np.frombuffer(base64.b64decode(res["b64"]), np.uint8)
            else:
                flat = np.asarray(res["data"], dtype=np.float32)
            out.append(flat.reshape([len(chunk), *res["dims"][1:]]))
            for k, v in (res.get("extra") or {}).items():
                if k in self.plugin.outputs.names:  # names the task knows; anything else from the page is ignored
                    extra.setdefault(k, []).append(np.asarray(v, dtype=np.float32).reshape(len(chunk), -1))
        first = np.concatenate(out) if out else np.zeros((0, len(self.labels)), np.float32)
        return first, {k: np.concatenate(v).squeeze(1) if v[0].shape[1] == 1 else np.concatenate(v)
                       for k, v in extra.items()}

    def at_threads(self, threads: int) -> WebPredictor:
        self.url = self.url.split("?")[0] + f"?threads={threads}"  # the page reads its thread count at load
        self.visit()
        return self

    def latency_ms(self, runs: int = 50, warmup: int = 5, batch: int = 1) -> dict[str, float]:
        """Per-image model time measured inside the page (performance.now around session.run)."""
        if batch != 1:
            raise PocketVisionError(f"{self.path}: the page times one image per call; batch {batch} is not offered.")
        res = self.page.evaluate("async ([runs, warmup]) => { const [H, W] = pv.meta.contract.size;"
                                 " const x = new Uint8Array(H * W * 3).map((_, i) => (i * 37) % 256); const t = [];"
                                 " for (let i = 0; i < warmup + runs; i++) { const r = await pv.runPixels(x, 1);"
                                 " if (i >= warmup) t.push(r.ms); } return t; }", [runs, warmup])
        t = np.asarray(res)
        return {"p50_ms": float(np.median(t)), "p90_ms": float(np.percentile(t, 90))}

    def close(self) -> None:
        for obj, meth in ((getattr(self, "_browser", None), "close"), (getattr(self, "_pw", None), "stop"),
                          (getattr(self, "_server", None), "shutdown")):
            if obj is not None:
                try:
                    getattr(obj, meth)()
                except Exception:  # noqa: BLE001 - best-effort cleanup
                    pass

