"""``pocketvision feedback review --app``: the labelling app's page for users' corrections.

It shows each correction sent from devices (the photo, what the model said, what the user says) and takes one
key per decision: a number confirms it with that label, Enter confirms the user's label, X rejects it. The
page talks only to this local server (127.0.0.1 by default); this server holds the admin token and relays to
the registry's admin API, so the token never reaches the browser.

Routes: GET / (page), GET /review.js, GET /api/items, GET /api/image/<id>, POST /api/review/<id>.
"""

from __future__ import annotations

import http.server
import json
import threading
from importlib import resources
from typing import Any
from urllib.parse import unquote, urlparse

from ..errors import PocketVisionError

MAX_BODY = 4096


def make_handler(client, model: str):
    def labels() -> list[str]:
        versions = client.call("GET", f"/v1/models/{model}")["versions"]
        return list(versions[-1].get("labels") or []) if versions else []

    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = "pocketvision-review"

        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, obj: Any) -> None:
            self._send(code, json.dumps(obj).encode())

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = unquote(urlparse(self.path).path)
            static = {"/": ("review.html", "text/html; charset=utf-8"),
                      "/review.js": ("review.js", "text/javascript; charset=utf-8")}
            try:
                if path in static:
                    name, ctype = static[path]
                    return self._send(200, (resources.files("pocketvision.label") / "static" / name).read_bytes(),
                                      ctype)
                if path == "/api/items":
                    items = client.call("GET", f"/v1/models/{model}/feedback?order=teach")["items"]
                    return self._json(200, {"model": model, "labels": labels(), "items": items})
                parts = path.strip("/").split("/")
                if len(parts) == 3 and parts[:2] == ["api", "image"] and parts[2].isdigit():
                    from ..serve.feedback import IMAGE_MIME, sniff_image
                    data = client.raw("GET", f"/v1/feedback/{int(parts[2])}/image")
                    return self._send(200, data, IMAGE_MIME[sniff_image(data)])  # judged again: shown, so checked
            except PocketVisionError as e:
                return self._json(502, {"error": str(e)})
            return self._json(404, {"error": "not found"})

        def do_POST(self) -> None:  # noqa: N802
            parts = unquote(urlparse(self.path).path).strip("/").split("/")
            if len(parts) != 3 or parts[:2] != ["api", "review"] or not parts[2].isdigit():
                return self._json(404, {"error": "not found"})
            n = int(self.headers.get("Content-Length") or 0)
            if not 0 < n <= MAX_BODY:
                return self._json(413 if n > MAX_BODY else 400, {"error": "body size"})
            try:
                body = json.loads(self.rfile.read(n))
                out = client.call("POST", f"/v1/feedback/{int(parts[2])}",
                                  {"status": body.get("status"), "label": body.get("label")})
                return self._json(200, out)
            except (ValueError, AttributeError):
                return self._json(400, {"error": "send JSON {status, label}"})
            except PocketVisionError as e:
                return self._json(400, {"error": str(e)})

    return Handler


def start(client, model: str, host: str = "127.0.0.1", port: int = 0) -> http.server.ThreadingHTTPServer:
    from ..serve.registry import check_name
    check_name(model, "--name")
    client.call("GET", f"/v1/models/{model}")  # the token and the model, checked before a page is offered
    try:
        srv = http.server.ThreadingHTTPServer((host, port), make_handler(client, model))
    except OSError as e:
        raise PocketVisionError(f"cannot listen on {host}:{port} ({e.strerror}); pick another --port.") from None
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv
