"""Over-the-air update benchmarks, on loopback, the load generator in its own process.

    python benchmarks/bench_ota.py --parts checks,client,fleet [--devices 1000] [--out DIR]

Parts:
  checks  "no update" checks (GET timestamp.json with a device token and a matching If-None-Match -> 304) against
          `pocketvision serve` (SQLite, 1 worker, log level warning), load from Debian's `wrk` (1 thread, 32
          connections, 10 s, median of 3 runs); the peer is nginx serving the same file statically (its own ETag,
          no token check) in the same run: the ceiling for answering a conditional GET on this machine.
  client  bytes on the wire for one "no update" check by ModelUpdater (counted by a TCP proxy: HTTP requests and
          responses, headers included); time to verify a 10 MB model against its signed length and sha256
          (python-tuf TargetFile.verify_length_and_hashes, median of 20).
  fleet   N simulated devices (real ModelUpdaters, one process, asyncio + worker threads, onnxruntime 1 thread
          each) through 10% -> 50% -> 100% -> rollback of a real model, with predictions running on random
          devices throughout: devices on the intended version, failed checks, failed swaps, failed predictions.
The registry and models are built in --out (a tiny DeepDog trained on ../shared/data/hotdog, two versions).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("POCKETVISION_DATA", HERE.parents[1] / "shared" / "data"))


def machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def pv(*args: str) -> list[str]:
    return [sys.executable, "-m", "pocketvision", *args]


def run(cmd: list[str]) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{r.stderr[-3000:]}")
    return r.stdout


class Server:
    def __init__(self, store: Path, *extra: str):
        self.log = store / "serve.log"
        self.proc = subprocess.Popen(pv("serve", "--store", str(store), "--port", "0", "--log-level", "info", *extra),
                                     stdout=open(self.log, "w"), stderr=subprocess.STDOUT)
        for _ in range(600):
            m = re.search(r"pocketvision registry on (http://127\.0\.0\.1:\d+)", self.log.read_text())
            if m:
                self.url = m.group(1)
                return
            time.sleep(0.05)
        raise SystemExit(self.log.read_text())

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


def setup(out: Path) -> dict:
    """A registry with hotdog v1 on stable (100%) and v2 published; tokens; the trusted root."""
    info = out / "setup.json"
    if info.exists():
        return json.loads(info.read_text())
    sys.path.insert(0, str(HERE.parent / "tests"))
    from conftest import _subset

    import pocketvision as pv_
    for d in ("data", "store", "run"):
        shutil.rmtree(out / d, ignore_errors=True)
    data = _subset(DATA / "hotdog", out / "data", {"train": 120, "val": 40})
    b = pv_.train(data, out=out / "v1.pvb", arch="deepdog", arch_args={"alpha": 0.25}, size=96, epochs=4, lr=3e-3,
                  run_dir=out / "run", progress=False, tensorboard=False, workers=0, recipe=False)
    import torch
    with torch.no_grad():
        for p in b.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    b.save(out / "v2.pvb")
    store = out / "store"
    run(pv("keys", "new", "--store", str(store), "--root-out", str(out / "root.json"), "--json"))
    tokens = {r: run(pv("tokens", "new", "--store", str(store), "--role", r)).strip() for r in ("admin", "device")}
    srv = Server(store, "--log-level", "warning")
    try:
        for name, extra in (("v1", ["--channel", "stable"]), ("v2", [])):
            run(pv("publish", str(out / f"{name}.pvb"), "--name", "hotdog", "--server", srv.url, "--token",
                   tokens["admin"], "--data", str(data), *extra))
    finally:
        srv.stop()
    s = {"store": str(store), "root": str(out / "root.json"), "tokens": tokens, "data": str(data)}
    info.write_text(json.dumps(s))
    return s


def wrk(url: str, headers: dict[str, str], seconds: int = 10, conns: int = 32) -> dict:
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency"]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    out = run(cmd + [url])
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def ms(p):
        v, unit = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out).groups()
        return float(v) * {"us": 1e-3, "ms": 1, "s": 1e3}[unit]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50_ms": ms(50), "p99_ms": ms(99), "errors": int(non2xx.group(1)) if non2xx else 0}


def _checks(store: Path, token: str, *extra: str) -> tuple[list[dict], bytes]:
    import urllib3
    srv = Server(store, "--log-level", "warning", *extra)
    try:
        url = srv.url + "/tuf/metadata/timestamp.json"
        h = {"Authorization": f"Bearer {token}"}
        r = urllib3.request("GET", url, headers=h)
        body, etag = r.data, r.headers["ETag"]
        assert urllib3.request("GET", url, headers={**h, "If-None-Match": etag}).status == 304
        return [wrk(url, {**h, "If-None-Match": etag}) for _ in range(3)], body
    finally:
        srv.stop()


def pg_store(out: Path, pg: str) -> tuple[Path, str]:
    """A registry on PostgreSQL (fresh tables in the database ``pg`` names): keys and a device token."""
    import sqlalchemy as sa

    from pocketvision.serve.store import db_url
    eng = sa.create_engine(db_url(pg, out))
    with eng.begin() as c:  # start from an empty schema: the benchmark owns this database
        c.execute(sa.text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    eng.dispose()
    store = out / "pg-store"
    shutil.rmtree(store, ignore_errors=True)
    run(pv("keys", "new", "--store", str(store), "--db", pg))
    token = run(pv("tokens", "new", "--store", str(store), "--db", pg, "--role", "device")).strip()
    return store, token


def part_checks(s: dict, out: Path, pg: str | None = None) -> list[str]:
    import urllib3
    rows = []
    ours, body = _checks(Path(s["store"]), s["tokens"]["device"])
    pg_runs = None
    if pg:
        store, token = pg_store(out, pg)
        pg_runs, _ = _checks(store, token, "--db", pg)
    site = out / "nginx"
    (site / "www").mkdir(parents=True, exist_ok=True)
    (site / "www" / "timestamp.json").write_bytes(body)
    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        port = so.getsockname()[1]
    (site / "nginx.conf").write_text(f"""worker_processes 1; daemon off; pid {site}/nginx.pid; error_log {site}/err.log;
events {{ worker_connections 1024; }}
http {{ access_log off; server {{ listen 127.0.0.1:{port}; root {site}/www; }} }}
""")
    ng = subprocess.Popen(["nginx", "-c", str(site / "nginx.conf"), "-p", str(site)])
    try:
        time.sleep(1)
        nurl = f"http://127.0.0.1:{port}/timestamp.json"
        netag = urllib3.request("GET", nurl).headers["ETag"]
        assert urllib3.request("GET", nurl, headers={"If-None-Match": netag}).status == 304
        peer = [wrk(nurl, {"If-None-Match": netag}) for _ in range(3)]
    finally:
        ng.terminate()
        ng.wait(10)

    def med(rs, k):
        return statistics.median(r[k] for r in rs)
    rows += ["| server | req/s (median of 3) | p50 ms | p99 ms | non-304 |", "|---|---|---|---|---|"]
    for name, rs in (("pocketvision serve (SQLite, 1 worker, token checked)", ours),
                     *((("pocketvision serve (PostgreSQL, 1 worker, token checked)", pg_runs),) if pg_runs else ()),
                     ("nginx 1 worker, static file (no token)", peer)):
        rows.append(f"| {name} | {med(rs, 'rps'):,.0f} | {med(rs, 'p50_ms'):.2f} | {med(rs, 'p99_ms'):.2f} | "
                    f"{sum(r['errors'] for r in rs)} |")
    rows.append(f"\nratio pocketvision / nginx: {med(ours, 'rps') / med(peer, 'rps'):.2f}x requests per second")
    return rows


class CountingProxy:
    """TCP proxy that counts the bytes each way (what the device sends and receives, HTTP headers included)."""

    def __init__(self, upstream_port: int):
        self.up, self.down = 0, 0
        self.upstream_port = upstream_port
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            c, _ = self.sock.accept()
            u = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._pipe, args=(c, u, "up"), daemon=True).start()
            threading.Thread(target=self._pipe, args=(u, c, "down"), daemon=True).start()

    def _pipe(self, a, b, way):
        try:
            while data := a.recv(65536):
                setattr(self, way, getattr(self, way) + len(data))
                b.sendall(data)
        except OSError:
            pass
        finally:
            for x in (a, b):
                try:
                    x.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def part_client(s: dict, out: Path) -> list[str]:
    from tuf.api.metadata import TargetFile

    from pocketvision.ota.device import ModelUpdater
    srv = Server(Path(s["store"]), "--log-level", "warning")
    try:
        proxy = CountingProxy(int(srv.url.rsplit(":", 1)[1]))
        dev_dir = out / "client-dev"
        shutil.rmtree(dev_dir, ignore_errors=True)
        up = ModelUpdater(f"http://127.0.0.1:{proxy.port}", "hotdog", token=s["tokens"]["device"],
                          trusted_root=s["root"], cache_dir=dev_dir, report=False)
        assert up.check().action == "installed"
        first = (proxy.up, proxy.down)
        wire = []
        for _ in range(5):
            u0, d0 = proxy.up, proxy.down
            res = up.check()
            assert res.action == "none"
            wire.append((proxy.up - u0, proxy.down - d0))
    finally:
        srv.stop()
    blob = out / "10mb.bin"
    blob.write_bytes(os.urandom(10 << 20))
    tf = TargetFile.from_file("m/10mb.bin", str(blob))
    times = []
    for _ in range(20):
        t = time.perf_counter()
        with open(blob, "rb") as f:
            tf.verify_length_and_hashes(f)
        times.append((time.perf_counter() - t) * 1e3)
    up_b, down_b = wire[-1]
    return ["| client cost | measured | target |", "|---|---|---|",
            f"| first check + install of a 0.6 MB model (sent / received bytes) | {first[0]:,} / {first[1]:,} | |",
            f"| 'no update' check on the wire (sent + received, HTTP headers included) | {up_b} + {down_b} = "
            f"**{up_b + down_b} B** | < 1 KB |",
            f"| verify a 10 MB model (length + sha256 against signed metadata), median of 20 | "
            f"**{statistics.median(times):.1f} ms** | <= 50 ms |"]


def part_fleet(s: dict, out: Path, n: int) -> list[str]:
    import numpy as np
    import urllib3

    from pocketvision.ota.device import ModelUpdater
    from pocketvision.ota.plans import bucket
    fleet_dir = out / "fleet"
    shutil.rmtree(fleet_dir, ignore_errors=True)
    store = out / "fleet-store"
    shutil.rmtree(store, ignore_errors=True)
    shutil.copytree(s["store"], store)
    # the whole simulated fleet asks for its identities from one address
    srv = Server(store, "--log-level", "warning", "--new-devices-per-minute", str(10 * n))
    admin = {"Authorization": f"Bearer {s['tokens']['admin']}", "Content-Type": "application/json"}
    devices = [ModelUpdater(srv.url, "hotdog", token=s["tokens"]["device"], trusted_root=s["root"],
                            cache_dir=fleet_dir / f"d{i:04d}", device_id=f"sim-{i:04d}", threads=1)
               for i in range(n)]
    pixels = np.zeros((1, 96, 96, 3), np.uint8)
    stats = {"predictions": 0, "failed_predictions": 0}
    rows = ["| phase | devices on v1 / v2 | intended | wrong version | failed checks | failed swaps | wall s |",
            "|---|---|---|---|---|---|---|"]

    async def predict_forever(stop: asyncio.Event):
        rng = random.Random(0)
        while not stop.is_set():
            d = devices[rng.randrange(n)]
            if d.version is None:
                await asyncio.sleep(0)
                continue
            try:
                await asyncio.to_thread(d.predictor.run_pixels, pixels)
                stats["predictions"] += 1
            except Exception:  # noqa: BLE001
                stats["failed_predictions"] += 1

    async def phase(name: str, intended):
        sem = asyncio.Semaphore(16)
        failed = []

        async def one(d):
            async with sem:
                r = await asyncio.to_thread(d.check)
                if r.action == "failed":
                    failed.append(r.detail)
        t = time.perf_counter()
        stop = asyncio.Event()
        pred = [asyncio.create_task(predict_forever(stop)) for _ in range(2)]
        await asyncio.gather(*(one(d) for d in devices))
        stop.set()
        await asyncio.gather(*pred)
        wall = time.perf_counter() - t
        counts = {v: sum(d.version == v for d in devices) for v in (1, 2)}
        want = [intended(d.device_id) for d in devices]
        wrong = sum(d.version != w for d, w in zip(devices, want))
        swaps_failed = sum("could not load" in f or "smoke" in f for f in failed)
        rows.append(f"| {name} | {counts[1]} / {counts[2]} | {sum(w == 1 for w in want)} / {sum(w == 2 for w in want)} "
                    f"| {wrong} | {len(failed)} | {swaps_failed} | {wall:.1f} |")
        return wrong, failed

    async def main():
        http = urllib3.PoolManager()
        results = [await phase("install v1 (100%)", lambda d: 1)]
        for pct in (10, 50, 100):
            r = http.request("PUT", srv.url + "/v1/models/hotdog/channels/stable", headers=admin,
                             body=json.dumps({"version": 2, "rollout": pct}).encode())
            assert r.status == 200, r.data
            results.append(await phase(f"v2 at {pct}%", lambda d, p=pct: 2 if bucket("hotdog", d) < p else 1))
        r = http.request("POST", srv.url + "/v1/models/hotdog/channels/stable/rollback", headers=admin)
        assert r.status == 200, r.data
        results.append(await phase("rollback", lambda d: 1))
        return results

    try:
        t = time.perf_counter()
        asyncio.run(main())
        total = time.perf_counter() - t
        status = json.loads(urllib3.request("GET", srv.url + "/v1/models/hotdog", headers=admin).data)
    finally:
        srv.stop()
    rows.append(f"\n{n} devices, {total:.0f} s in all; predictions during the phases: {stats['predictions']:,}, "
                f"failed: {stats['failed_predictions']}; server adoption after the rollback: {status['adoption']}")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="checks,client,fleet")
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--out", default=str(HERE / "out" / "ota"))
    ap.add_argument("--pg", default=os.environ.get("POCKETVISION_BENCH_PG"),
                    help="checks: also a registry on this PostgreSQL database (its tables are dropped first)")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    s = setup(out)
    print(f"machine: {machine()}\ncommand: python benchmarks/bench_ota.py --parts {a.parts} --devices {a.devices}"
          + (" --pg URL" if a.pg else "") + "\n")
    for part in a.parts.split(","):
        print(f"### {part}\n")
        rows = {"checks": lambda: part_checks(s, out, a.pg), "client": lambda: part_client(s, out),
                "fleet": lambda: part_fleet(s, out, a.devices)}[part]()
        print("\n".join(rows) + "\n", flush=True)


if __name__ == "__main__":
    main()
