"""``pocketvision label``: the local web app. A small stdlib HTTP server on 127.0.0.1 by default.

Routes (nothing else is served; no URL maps to a file path):
  GET  /                  the page          GET /label.js      its script
  GET  /api/state         names, images, labels so far, where to start
  GET  /api/image/<n>     the n-th image under DIR (by index: a path in the URL is never opened)
  GET  /api/suggest/<n>   the model's points or class for image n (``--model``)
  POST /api/label         one image's labels, validated against the schema, then saved atomically
"""

from __future__ import annotations

import http.server
import json
import mimetypes
import threading
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from ..core.contract import load_rgb
from ..deploy.artifact import load_any
from ..errors import PocketVisionError
from .store import LabelStore, SchemaError

MAX_BODY = 1 << 20
READ_TIMEOUT_S = 10.0
LOCAL_HOSTS = {"127.0.0.1", "localhost", "[::1]"}
# Phone photos (12 MP) are sent for display at most this long side: the browser decodes them in a few
# ms instead of ~100+, and five prefetched images stay small. Points are always in full-size pixels.
DISPLAY_MAX = 1600


class DisplayCache:
    """Downscaled JPEGs of large images, made on first request, the last 32 kept."""

    def __init__(self, store: LabelStore, size: int = 32):
        self.store, self.size, self.items, self.lock = store, size, {}, threading.Lock()

    def get(self, image: str) -> tuple[bytes, str] | None:
        w, h = self.store.size(image)
        if max(w, h) <= DISPLAY_MAX:
            return None
        with self.lock:
            if image in self.items:
                return self.items[image]
        import io

        from PIL import Image

        s = DISPLAY_MAX / max(w, h)
        img = load_rgb(self.store.path(image), min_size=(round(w * s), round(h * s)))
        img = img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        out = (buf.getvalue(), "image/jpeg")
        with self.lock:
            self.items[image] = out
            while len(self.items) > self.size:
                self.items.pop(next(iter(self.items)))
        return out


class Suggester:
    """Model-assisted labelling: pre-placed points / a pre-chosen class, and an uncertainty per image."""

    def __init__(self, model: str, store: LabelStore):
        m = load_any(model)
        self.predict, self.plugin, self.labels = m.predict, m.plugin, list(m.labels)
        problem = self.plugin.label_problem(store.mode, self.labels, store.names)
        if problem:
            raise PocketVisionError(f"{model}: {problem}")
        self.store, self.cache, self.lock = store, {}, threading.Lock()

    def suggest(self, image: str) -> dict[str, Any]:
        """The task's suggestion for ``image`` (points or a class) with an ``uncertainty`` in [0, 1]."""
        with self.lock:
            if image not in self.cache:
                r = self.predict([self.store.path(image)])[0]
                self.cache[image] = self.plugin.label_suggestion(r, self.store.names)
            return self.cache[image]

    def order(self, images: list[str], log=lambda s: None) -> list[str]:
        """Least sure first (labelled images last, in their order)."""
        todo = [i for i in images if not self.store.complete(i)]
        log(f"ranking {len(todo)} images by model uncertainty...")
        u = {i: self.suggest(i)["uncertainty"] for i in todo}
        return sorted(todo, key=lambda i: -u[i]) + [i for i in images if i not in u]


def _static(name: str) -> bytes:
    return (resources.files("pocketvision.label") / "static" / name).read_bytes()


class _Handler(http.server.BaseHTTPRequestHandler):
    """The labeller's HTTP API; ``make_handler`` binds it to one store (class attributes, one server per store)."""

    store: LabelStore
    suggester: Suggester | None
    order: list[str]
    display: DisplayCache
    server_version = "pocketvision-label"
    timeout = READ_TIMEOUT_S  # a body shorter than its Content-Length must not hold a thread forever

    def log_message(self, *args: Any) -> None:  # quiet: the page shows progress
        pass

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (TimeoutError, ConnectionError):  # a stalled or vanished client: drop it, no traceback
            self.close_connection = True

    def _foreign(self, write: bool) -> str | None:
        """Why this request is not from the labeller's own page, or None. Any web page the user visits can
        reach 127.0.0.1: a DNS-rebinding page arrives with its own ``Host``; a cross-origin form or
        ``fetch`` carries a foreign ``Origin``; and a write must be JSON, which a page of another origin can
        only send after a preflight this server never grants."""
        bound, port = self.server.server_address[:2]
        host = (self.headers.get("Host") or "").strip().lower()
        # bound to another address on purpose (--host, a phone on the LAN): its names are not ours to know
        loopback = str(bound) in ("127.0.0.1", "::1")
        if loopback and host not in {f"{h}:{port}" for h in LOCAL_HOSTS}:
            return "unexpected Host header; open the address `pocketvision label` printed"
        origin = self.headers.get("Origin")
        if origin is not None and origin.strip().lower() not in {f"http://{host}"}:
            return "cross-origin request refused"
        if self.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
            return "cross-site request refused"
        if write and (self.headers.get("Content-Type") or "").split(";")[0].strip() != "application/json":
            return "send labels as application/json"
        return None

    def _send(self, code: int, body: bytes, ctype: str = "application/json", cache: bool = False) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "max-age=3600" if cache else "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, code: int, obj: Any) -> None:
        self._send(code, json.dumps(obj).encode())

    def _index(self, part: str) -> int | None:
        if not part.isdigit():
            return None
        n = int(part)
        return n if 0 <= n < len(self.store.images) else None

    def _image(self, n: int | None) -> None:
        """An image to show: a display-sized copy when the original is large, else its bytes."""
        if n is None:
            return self._json(404, {"error": "no such image"})
        p = self.store.path(self.store.images[n])
        try:  # defence in depth: the listed file must still resolve inside DIR
            p.resolve().relative_to(self.store.root.resolve())
        except ValueError:
            return self._json(403, {"error": "outside the labelled folder"})
        try:
            small = self.display.get(self.store.images[n])
        except PocketVisionError as e:  # over the pixel budget, unreadable: said in the page, not a traceback
            return self._json(422, {"error": str(e)})
        if small is not None:
            return self._send(200, small[0], small[1], cache=True)
        ctype = mimetypes.guess_type(p.name)[0] or "application/octet-stream"
        return self._send(200, p.read_bytes(), ctype, cache=True)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if why := self._foreign(write=False):
            return self._json(403, {"error": why})
        path = unquote(urlparse(self.path).path)
        if path == "/":
            return self._send(200, _static("label.html"), "text/html; charset=utf-8")
        if path == "/label.js":
            return self._send(200, _static("label.js"), "text/javascript; charset=utf-8")
        if path == "/api/state":
            st = self.store.state()
            st["order"] = [self.store.images.index(i) for i in self.order]
            st["start"] = self.store.first_open(self.order)
            st["suggest"] = self.suggester is not None
            st["sizes"] = [self.store.size(i) for i in self.store.images]  # full-size, upright: points live here
            return self._json(200, st)
        parts = path.strip("/").split("/")
        if len(parts) == 3 and parts[:2] == ["api", "image"]:
            return self._image(self._index(parts[2]))
        if len(parts) == 3 and parts[:2] == ["api", "suggest"]:
            n = self._index(parts[2])
            if n is None or self.suggester is None:
                return self._json(404, {"error": "no suggestion"})
            try:
                return self._json(200, self.suggester.suggest(self.store.images[n]))
            except PocketVisionError as e:
                return self._json(422, {"error": str(e)})
        return self._json(404, {"error": "not found"})

    def do_POST(self) -> None:  # noqa: N802
        if why := self._foreign(write=True):
            return self._json(403, {"error": why})
        if unquote(urlparse(self.path).path) != "/api/label":
            return self._json(404, {"error": "not found"})
        raw = (self.headers.get("Content-Length") or "").strip()
        n = int(raw) if raw.isdigit() and len(raw) <= 12 else -1
        if n <= 0 or n > MAX_BODY:
            self.close_connection = True  # the body (if any) is not read: the connection cannot be reused
            return self._json(413 if n > MAX_BODY else 400, {"error": "Content-Length: a size in bytes, at "
                                                                      f"most {MAX_BODY:,}"})
        data = self.rfile.read(n)
        if len(data) < n:
            self.close_connection = True
            return self._json(400, {"error": "body shorter than its Content-Length"})
        try:
            body = json.loads(data)
        except (ValueError, RecursionError):  # bad JSON or encoding, a 5,000-digit number, deep nesting
            return self._json(400, {"error": "not JSON (or nested too deep, or a number too long)"})
        try:
            return self._json(200, self.store.put(body))
        except SchemaError as e:
            return self._json(400, {"error": str(e)})


def make_handler(store: LabelStore, suggester: Suggester | None, order: list[str]):
    """The request handler class for one labelling session."""
    return type("Handler", (_Handler,), {"store": store, "suggester": suggester, "order": order,
                                         "display": DisplayCache(store)})


def start(store: LabelStore, host: str = "127.0.0.1", port: int = 0, suggester: Suggester | None = None,
          order: str = "name", log=lambda s: None) -> http.server.ThreadingHTTPServer:
    """Serve in a background thread; ``server.server_address`` has the port."""
    seq = suggester.order(store.images, log) if (suggester and order == "uncertain") else list(store.images)
    srv = http.server.ThreadingHTTPServer((host, port), make_handler(store, suggester, seq))
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def url_of(srv) -> str:
    host, port = srv.server_address[:2]
    return f"http://{host}:{port}/"


def run(root: str | Path, keypoints: list[str] | None, classes: list[str] | None, out: str | None = None,
        host: str = "127.0.0.1", port: int = 8765, open_browser: bool = True, model: str | None = None,
        order: str = "name", folders: str | None = None, log=print) -> None:
    if bool(keypoints) == bool(classes):
        raise PocketVisionError("label: pass exactly one of --keypoints a,b,c or --classes x,y.")
    if order == "uncertain" and not model:
        raise PocketVisionError("--order uncertain needs --model BUNDLE (the model says what it is unsure of).")
    store = LabelStore.open(root, out, "keypoints" if keypoints else "classes", keypoints or classes, folders)
    suggester = Suggester(model, store) if model else None
    try:
        srv = start(store, host, port, suggester, order, log)
    except OSError as e:
        raise PocketVisionError(f"cannot listen on {host}:{port} ({e.strerror}); pick another --port.") from None
    url = url_of(srv)
    done = sum(store.complete(i) for i in store.images)
    log(f"labelling {len(store.images)} images in {store.root} ({done} done) -> {store.out}\nopen {url}  (Ctrl-C to stop;"
        " every image is saved as you go)")
    if open_browser:
        import webbrowser
        webbrowser.open(url)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        srv.shutdown()
