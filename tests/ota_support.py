"""Real servers for the over-the-air tests: the registry (`pocketvision serve` in its own process, on a port the
OS picks) and a hostile mirror in front of it (a stdlib HTTP server whose responses a test rewrites)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import urllib3

from conftest import run_cli


class RegistryServer:
    def __init__(self, store: Path, extra: tuple[str, ...] = ()):
        self.store, self.extra, self.proc, self.url = store, extra, None, None

    def start(self) -> RegistryServer:
        log = self.store / f"serve-{time.monotonic_ns()}.log"
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-m", "pocketvision", "serve", "--store", str(self.store),
                                      "--port", "0", "--log-level", "info", *self.extra],
                                     stdout=open(log, "w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            m = re.search(r"pocketvision registry on (http://127\.0\.0\.1:\d+)", log.read_text())
            if m:
                self.url = m.group(1)
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        raise RuntimeError(f"server did not start: {log.read_text()[-2000:]}")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def new_store(store: Path, *keys_args: str) -> dict[str, str]:
    r = run_cli("keys", "new", "--store", str(store), "--root-out", str(store / "root.json"), *keys_args)
    assert r.returncode == 0, r.stderr
    out = {}
    for role in ("admin", "device"):
        r = run_cli("tokens", "new", "--store", str(store), "--role", role, "--name", f"test-{role}")
        assert r.returncode == 0, r.stderr
        out[role] = r.stdout.strip()
    return out


class Api:
    def __init__(self, url: str, token: str):
        self.url, self.h = url, {"Authorization": f"Bearer {token}"}
        self.http = urllib3.PoolManager()

    def __call__(self, method: str, path: str, body=None, raw=None, headers=None):
        h = {**self.h, **(headers or {})}
        if body is not None:
            raw, h["Content-Type"] = json.dumps(body).encode(), "application/json"
        r = self.http.request(method, self.url + path, body=raw, headers=h)
        try:
            return r.status, json.loads(r.data) if r.data else None
        except ValueError:
            return r.status, r.data


FORWARD = ("authorization", "range", "origin", "if-none-match", "access-control-request-method",
           "access-control-request-headers")


class Mirror:
    """A mirror or CDN in front of the registry that an attacker controls: it forwards GETs upstream unless a
    test has set ``rules[path_regex] = fn(body) -> bytes`` (rewrite) or ``endless`` / ``cut`` for a path."""

    def __init__(self, upstream: str):
        self.upstream, self.rules, self.seen = upstream, {}, []
        self.http = urllib3.PoolManager()
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                mirror.seen.append((self.path, self.headers.get("Range")))
                fwd = {k: v for k, v in self.headers.items() if k.lower() in FORWARD}
                rule = next((fn for pat, fn in list(mirror.rules.items()) if re.search(pat, self.path)), None)
                if rule == "endless":
                    self.send_response(200)
                    self.send_header("Access-Control-Allow-Origin", "*")  # reaches a page's script too
                    self.end_headers()
                    try:
                        for _ in range(10_000):  # 640 MB at most, far past any signed length
                            self.wfile.write(b"\0" * 65536)
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    return
                r = mirror.http.request("GET", mirror.upstream + self.path, headers=fwd, preload_content=True)
                body, status = r.data, r.status
                if callable(rule):  # the attacker answers even where the registry has nothing
                    body, status = rule(body if status in (200, 206) else b""), 200
                if isinstance(rule, tuple) and rule[0] == "cut" and r.status == 200:  # drop the line mid-file
                    mirror.rules.pop(next(p for p, f in mirror.rules.items() if f is rule))
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[:rule[1]])
                    self.wfile.flush()
                    self.connection.shutdown(2)
                    return
                self.send_response(status)
                for k, v in r.headers.items():
                    if k.lower() in ("content-type", "content-range") or k.lower().startswith("access-control-") \
                            or (k.lower() == "etag" and rule is None):  # a rewritten body has no upstream ETag
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self, method="POST"):
                n = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(n)
                fwd = {k: v for k, v in self.headers.items() if k.lower() in FORWARD + ("content-type",)}
                r = mirror.http.request(method, mirror.upstream + self.path, body=data, headers=fwd)
                self.send_response(r.status)
                for k, v in r.headers.items():
                    if k.lower().startswith("access-control-"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(r.data)))
                self.end_headers()
                self.wfile.write(r.data)

            def do_OPTIONS(self):  # a browser's CORS preflight
                self.do_POST("OPTIONS")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def publish_all(store: Path, admin_token: str, data: Path, releases) -> None:
    """Publish each (bundle, extra CLI arguments) as "hotdog" to a registry serving ``store``, in order (the
    fixtures' versions 1, 2, ...); a failed publish fails the fixture with its stderr."""
    srv = RegistryServer(store).start()
    try:
        for bundle, extra in releases:
            r = run_cli("publish", str(bundle), "--name", "hotdog", "--server", srv.url, "--token", admin_token,
                        "--data", str(data), "--json", *extra)
            assert r.returncode == 0, r.stderr[-3000:]
    finally:
        srv.stop()


def env_without_proxy() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}


def store_keys(store: Path) -> dict[str, list]:
    from pocketvision.serve import keys as K
    return K.load_keys(store / "keys")


def store_meta(store: Path, role: str, version: int | None = None):
    """A role's signed metadata as the registry in ``store`` holds it (``version``: that one, else the newest)."""
    from tuf.api.metadata import Metadata

    from pocketvision.serve.repo import metadata_file
    from pocketvision.serve.store import Store
    with Store(f"sqlite:///{store / 'registry.db'}").reader() as c:
        return Metadata.from_bytes(metadata_file(c, role, version))


def resign(md, keys, **changes) -> bytes:
    """``md`` changed and signed again with ``keys`` (what an attacker holding them can make)."""
    from pocketvision.serve.repo import SERIALIZER
    for k, v in changes.items():
        setattr(md.signed, k, v)
    md.signatures.clear()
    for k in keys:
        md.sign(k.signer, append=True)
    return md.to_bytes(SERIALIZER)


def perturbed(bundle: Path, out: Path) -> Path:
    """``bundle`` with every weight nudged: a second, different model of the same task (a 'v2')."""
    import torch

    import pocketvision as pv
    b = pv.load(bundle)
    with torch.no_grad():
        for p in b.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return b.save(out)
