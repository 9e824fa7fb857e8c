"""The attack suite: hostile files cost milliseconds and megabytes, never gigabytes.

Every case runs the real CLI in a subprocess that first imports what the command needs, then measures from there
under an address-space limit (``resource.setrlimit``) and a timeout: a regression fails the test instead of eating
the machine. The hostile files are generated here (no binary fixtures). Time is reported, not asserted (tests do
not race the clock); ``benchmarks/bench_hostile.py`` prints the table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

BUDGET_MB = 300  # what one hostile input may cost after imports
LIMIT_MB = 1024  # address space the runner may add after imports: a regression dies here, not on the machine

RUNNER = r"""
import json, resource, sys, time
argv, out, limit_mb = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
import numpy, onnxruntime, PIL.Image, torch  # noqa: F401 - what the command paths import, counted before
import pocketvision.cli.commands as cli
import pocketvision.models  # noqa: F401
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
vm = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (vm + limit_mb * 2**20, vm + limit_mb * 2**20))
t0 = time.perf_counter()
try:
    code = cli.main(argv)
except MemoryError:
    code = "MemoryError"
seconds = time.perf_counter() - t0
peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
open(out, "w").write(json.dumps({"code": code, "seconds": seconds, "peak_mb": peak}))
"""


def attack(tmp_path: Path, *argv: str, timeout: float = 120, limit_mb: int = LIMIT_MB) -> dict:
    """Run ``pocketvision ARGV`` as described above -> {"code", "seconds", "peak_mb", "stderr"}. ``limit_mb``:
    training reserves address space for its threads' stacks and pools, so it runs under a looser net."""
    out = tmp_path / f"result-{os.getpid()}-{len(list(tmp_path.glob('result-*')))}.json"
    r = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(list(argv)), str(out), str(limit_mb)],
                       capture_output=True, text=True, timeout=timeout)
    assert out.exists(), f"the runner died: {r.returncode} {r.stderr[-2000:]}"
    return {**json.loads(out.read_text()), "stderr": r.stderr, "stdout": r.stdout}


def refused(res: dict, *needles: str, code: int = 2) -> None:
    """Exit 2 (``predict``: 1, its code for "some photos could not be read"), one `error:` line naming the problem,
    no traceback, inside the memory budget."""
    lines = [ln for ln in res["stderr"].strip().splitlines() if ln.strip()]
    assert res["code"] == code, res
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in res["stderr"], res["stderr"]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert res["peak_mb"] < BUDGET_MB, res


# -- the files that make a bundle -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real(tmp_path_factory) -> dict:
    """A real (tiny) bundle's two members and a photo to predict on."""
    from PIL import Image

    import pocketvision as pv  # noqa: F401
    from pocketvision.core import bundle_file as bio
    from pocketvision.api import Bundle
    from pocketvision.core.contract import Contract
    from pocketvision.models import build_model
    d = tmp_path_factory.mktemp("real")
    spec = {"name": "deepdog", "args": {"alpha": 0.25, "num_classes": 2}}
    path = Bundle(bio.new_meta("classify", spec, ["a", "b"], Contract(size=(64, 64))), build_model(spec)).save(
        d / "m.pvb")
    with zipfile.ZipFile(path) as z:
        meta, weights = z.read("bundle.json"), z.read("weights.safetensors")
    Image.new("RGB", (64, 64), (120, 90, 60)).save(d / "photo.jpg")
    return {"bundle": path, "meta": meta, "weights": weights, "photo": str(d / "photo.jpg")}


def _zeros_member(z: zipfile.ZipFile, name: str, size: int, method: int = zipfile.ZIP_DEFLATED) -> None:
    """A member of ``size`` zero bytes, streamed (the test never holds it)."""
    info = zipfile.ZipInfo(name)
    info.compress_type = method
    with z.open(info, "w", force_zip64=size > 2**31 - 1) as f:
        block = bytes(16 * 2**20)
        for _ in range(size // len(block)):
            f.write(block)
        f.write(bytes(size % len(block)))


def _lie_about_size(path: Path, name: str, size: int) -> None:
    """Rewrite the uncompressed size ``name`` declares, in its local header and in the central directory."""
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(name)
    local = info.header_offset
    assert raw[local:local + 4] == b"PK\x03\x04"
    raw[local + 22:local + 26] = size.to_bytes(4, "little")
    at = 0
    while (at := raw.find(b"PK\x01\x02", at)) >= 0:  # the central directory entry that names the member
        n = int.from_bytes(raw[at + 28:at + 30], "little")
        if raw[at + 46:at + 46 + n] == name.encode():
            raw[at + 24:at + 28] = size.to_bytes(4, "little")
            break
        at += 4
    assert at >= 0, name
    path.write_bytes(bytes(raw))


def test_a_zip_directory_that_lies_about_a_member_size_is_read_only_to_what_it_declares(real, tmp_path):
    """1 GB of zeros behind a directory entry saying 1,000 bytes (the 8 MB cap passes): read up to the declared
    size, then refused by the checksum, instead of inflating gigabytes first."""
    p = tmp_path / "liar.pvb"
    with zipfile.ZipFile(p, "w") as z:
        _zeros_member(z, "bundle.json", 2**30)
        z.writestr("weights.safetensors", real["weights"])
    _lie_about_size(p, "bundle.json", 1000)
    assert p.stat().st_size < 4 * 2**20
    refused(attack(tmp_path, "predict", str(p), real["photo"]), str(p), "corrupt or truncated")
    # the same lie on the weights member, with a valid bundle.json in front of it
    q = tmp_path / "liar-weights.pvb"
    with zipfile.ZipFile(q, "w") as z:
        z.writestr("bundle.json", real["meta"])
        _zeros_member(z, "weights.safetensors", 2**30)
    _lie_about_size(q, "weights.safetensors", len(real["weights"]))
    refused(attack(tmp_path, "predict", str(q), real["photo"]), str(q), "corrupt or truncated")


def test_compression_methods_that_inflate_without_bound_are_refused(real, tmp_path):
    p = tmp_path / "lzma.pvb"
    with zipfile.ZipFile(p, "w") as z:
        _zeros_member(z, "bundle.json", 64 * 2**20, zipfile.ZIP_LZMA)
        z.writestr("weights.safetensors", real["weights"])
    _lie_about_size(p, "bundle.json", 1000)
    refused(attack(tmp_path, "predict", str(p), real["photo"]), "bundle.json", "compression method 14")


def test_weights_far_larger_than_the_architecture_are_refused_before_reading(real, tmp_path):
    """1.9 GB of zeros (under the reader's 2 GB cap, ~2 MB on disk) for a 0.3 MB model: refused from the
    architecture's own size, sized on the meta device, before a byte of the weights is inflated."""
    p = tmp_path / "heavy.pvb"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("bundle.json", real["meta"])
        _zeros_member(z, "weights.safetensors", 1900 * 2**20)
    refused(attack(tmp_path, "predict", str(p), real["photo"]), "weights.safetensors is 1,992,294,400 bytes",
            "refused before reading it")


def _folder(tmp_path: Path, real: dict, name: str) -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / "bundle.json").write_bytes(real["meta"])
    (d / "weights.safetensors").write_bytes(real["weights"])
    return d


def test_folder_bundles_read_only_regular_files(real, tmp_path):
    zero = _folder(tmp_path, real, "zero")
    (zero / "bundle.json").unlink()
    (zero / "bundle.json").symlink_to("/dev/zero")
    refused(attack(tmp_path, "predict", str(zero), real["photo"]), "bundle.json is a link")
    fifo = _folder(tmp_path, real, "fifo")
    (fifo / "weights.safetensors").unlink()
    os.mkfifo(fifo / "weights.safetensors")
    refused(attack(tmp_path, "predict", str(fifo), real["photo"], timeout=60), "not a regular file")
    outside = _folder(tmp_path, real, "outside")  # a link out of the folder, even to a real file
    (tmp_path / "elsewhere.safetensors").write_bytes(real["weights"])
    (outside / "weights.safetensors").unlink()
    (outside / "weights.safetensors").symlink_to(tmp_path / "elsewhere.safetensors")
    refused(attack(tmp_path, "predict", str(outside), real["photo"]), "weights.safetensors is a link")
    ok = _folder(tmp_path, real, "ok")  # the same folder with plain files predicts
    res = attack(tmp_path, "predict", str(ok), real["photo"])
    assert res["code"] == 0, res


def test_a_huge_integer_in_bundle_json_is_one_line(real, tmp_path):
    meta = json.loads(real["meta"])
    p = tmp_path / "digits.pvb"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("bundle.json", json.dumps(meta).replace('"schema": 1', '"schema": ' + "9" * 5000))
        z.writestr("weights.safetensors", real["weights"])
    refused(attack(tmp_path, "predict", str(p), real["photo"]), "bundle.json is not valid JSON")



# -- images: one pixel budget for every path that decodes them ------------------------------------------------

def big_png(path: Path, side: int = 13000) -> Path:
    """A side x side black PNG (169 MP at 13000: above Pillow's warning, below its error), written row by row so
    the test never holds the pixels: ~0.5 MB on disk."""
    import struct

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    z = zlib.compressobj(9)
    row = bytes(1 + 3 * side)  # filter byte + RGB
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def test_a_169_megapixel_png_is_refused_from_its_header_on_every_path(real, tmp_path):
    from PIL import Image
    png = big_png(tmp_path / "huge.png")
    assert png.stat().st_size < 2**20
    for model in (real["bundle"], _onnx(real, tmp_path)):
        res = attack(tmp_path, "predict", str(model), str(png))
        refused(res, "huge.png: 13000x13000 pixels (169 MP) is over the 40 MP budget", "POCKETVISION_MAX_PIXELS",
                code=1)
        assert "DecompressionBombWarning" not in res["stderr"]
    folder = tmp_path / "photos"
    for c in ("a", "b"):
        (folder / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (80, 80), (40 * i, 90, 60)).save(folder / c / f"{i}.jpg")
    (folder / "a" / "huge.png").symlink_to(png)
    res = attack(tmp_path, "check", str(folder), "--no-content")
    assert res["peak_mb"] < BUDGET_MB, res  # a report that names the file; it is never decoded
    assert "huge.png" in res["stdout"] and "40 MP budget" in res["stdout"], res["stdout"]
    assert "DecompressionBombWarning" not in res["stderr"]
    # training skips it, says why, and trains on the rest
    res = attack(tmp_path, "train", str(folder), "--arch", "deepdog", "--scratch", "--epochs", "1", "--out",
                 str(tmp_path / "t.pvb"), "--run-dir", str(tmp_path / "run"), limit_mb=8192)
    # the console wraps long lines, and folds a path longer than a line anywhere: compare without whitespace
    said = "".join((res["stdout"] + res["stderr"]).split())
    assert res["code"] == 0 and res["peak_mb"] < BUDGET_MB and "huge.png:13000x13000pixels" in said, res
    assert (tmp_path / "t.pvb").is_file() and "DecompressionBombWarning" not in said


def _onnx(real: dict, tmp_path: Path) -> Path:
    import pocketvision as pv
    return pv.load(real["bundle"]).export(tmp_path / "m.onnx", verify=False).path


def test_metadata_that_does_not_fit_the_model_is_refused(real, tmp_path):
    """A contract of 4096x4096 on a 0.3 MB model (12.7 s and 1.3 GB a photo), half a million label names, or three
    names on a two-class model: each refused in one line instead of run or answered wrongly."""
    from pocketvision.core import bundle_file as bio
    meta = json.loads(real["meta"])
    cases = {"big-contract": ({**meta, "contract": {**meta["contract"], "size": [4096, 4096]}},
                              "contract.size must be two integers in [8, 1024]"),
             "many-labels": ({**meta, "labels": ["a"] * 500_000}, "'labels' holds 500,000 names"),
             "three-labels": ({**meta, "labels": ["a", "b", "c"]}, "gives 2 scores a photo but its metadata names 3")}
    for name, (m, words) in cases.items():
        p = bio.write(tmp_path / f"{name}.pvb", m, real["weights"])
        refused(attack(tmp_path, "predict", str(p), real["photo"]), words)


# -- export: the output path appears only once verified; a killed export's staging is cleaned -----------------

def test_export_publishes_only_verified_files_and_cleans_killed_staging(real, tmp_path, monkeypatch):
    import subprocess as sp

    import pocketvision as pv
    from pocketvision.api import Bundle
    b = pv.load(real["bundle"])
    out = tmp_path / "dist" / "m.onnx"
    # killed while verifying (the interrupt lands at a known point): nothing at the output path, no staging left
    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(Bundle, "verify", interrupted)
    with pytest.raises(KeyboardInterrupt):
        b.export(out, data=str(tmp_path))
    assert not out.exists() and list(out.parent.iterdir()) == []
    monkeypatch.undo()
    # a SIGKILLed export's staging (its process is gone) and an old one without a pid file are removed by the next
    dead = sp.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    killed = out.parent / ".m.onnx.k1abcd"
    (killed / "scratch").mkdir(parents=True)
    (killed / "pid").write_text(dead.stdout.strip())
    (killed / "m.onnx").write_bytes(b"half a model")
    old = out.parent / ".m.onnx.old123"
    old.mkdir()
    os.utime(old, (0, 0))
    busy = out.parent / ".m.onnx.busy12"  # another export, still running: left alone
    busy.mkdir()
    (busy / "pid").write_text(str(os.getpid()))
    res = b.export(out, verify=False)
    assert res.path == out and out.is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == [".m.onnx.busy12", "m.onnx"]
    # a failed verification never takes the output path (an app would load it): kept aside, said so
    out.unlink()
    monkeypatch.setattr(Bundle, "verify", lambda self, f, **k: {"passed": False, "criterion": "test"})
    res = b.export(out, data=str(tmp_path))
    assert not out.exists() and res.path.name == "m.failed-verification.onnx" and res.path.is_file()
    assert any("verification failed" in n for n in res.notes)


# -- the registry: every number has a range, and secrets never ride in URLs -----------------------------------

def test_registry_answers_out_of_range_numbers_with_4xx_and_refuses_tokens_in_urls(tmp_path):
    from ota_support import Api, RegistryServer, new_store
    store = tmp_path / "store"
    tokens = new_store(store)
    srv = RegistryServer(store).start()
    try:
        admin, dev = Api(srv.url, tokens["admin"]), Api(srv.url, tokens["device"])
        huge, sha = 10**30, "0" * 64
        report = {"model": "hotdog", "device_id": "device-0001", "state": "installed"}
        cases = [
            (dev, "POST", "/v1/reports", {**report, "version": huge}),
            (dev, "POST", "/v1/traffic", {"model": "hotdog", "device_id": "device-0001", "version": huge,
                                          "predictions": 1, "unfamiliar": 0}),
            (admin, "PUT", "/v1/models/hotdog/channels/stable", {"version": huge}),
            (admin, "PUT", "/v1/models/hotdog/channels/stable", {"version": 1, "rollout": float("nan")}),
            (admin, "PUT", "/v1/models/hotdog/channels/stable", {"version": 1, "rollout": float("inf")}),
            (admin, "POST", f"/v1/feedback/{huge}", {"status": "confirmed"}),
            (admin, "GET", f"/v1/feedback/{huge}/image", None),
            (admin, "POST", "/v1/models/hotdog/versions",
             {"files": [{"kind": "onnx", "filename": "m.onnx", "sha256": sha, "length": huge}]}),
            (admin, "POST", "/v1/models/hotdog/versions",
             {"files": [{"kind": "onnx", "filename": "m.onnx", "sha256": sha, "length": float("inf")}]}),
        ]
        for api, method, path, body in cases:
            status, data = api(method, path, body)
            assert 400 <= status < 500, (method, path, body, status, data)
        # figures only for what was published: reports about a model this registry never had are refused
        issued = dev("POST", "/v1/devices")[1]["device_id"]
        assert dev("POST", "/v1/reports", {**report, "device_id": issued, "version": 1})[0] == 404
        assert dev("POST", "/v1/traffic", {"model": "ghost", "device_id": issued, "version": 2,
                                           "predictions": 5, "unfamiliar": 1})[0] == 404
        assert admin("GET", "/v1/models")[1]["models"] == []
        import urllib3
        form = {"model": "hotdog", "device_id": "device-0001", "predicted": "a", "corrected": "b",
                "version": str(huge)}
        r = urllib3.PoolManager().request("POST", srv.url + "/v1/feedback", fields=form, headers=dev.h)
        assert r.status == 422 and b"version" in r.data, r.data
        # a token in the URL: refused, and it never reaches the access log
        status, data = Api(srv.url, "none")("GET", f"/v1/models?order=x&token={tokens['admin']}")
        assert status == 400 and "Authorization header" in data["detail"]
        status, _ = Api(srv.url, "none")("GET", f"/v1/models?Access_Token={tokens['device']}")
        assert status == 400
    finally:
        srv.stop()
    log = srv.log.read_text()
    assert "GET /v1/models?order=x HTTP" in log, log[-2000:]
    assert tokens["admin"] not in log and tokens["device"] not in log and "Traceback" not in log


# -- the labeller: only its own page may drive it; malformed bodies get 4xx; stalled bodies are dropped -------

def test_labeller_refuses_foreign_pages_malformed_bodies_and_stalled_clients(tmp_path, monkeypatch, capfd):
    import http.client
    import socket

    from PIL import Image

    from pocketvision.label import server as label_server
    from pocketvision.label.store import LabelStore
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        Image.new("RGB", (64, 48), (30 * i, 80, 120)).save(photos / f"{i}.jpg")
    big_png(photos / "huge.png")
    out = tmp_path / "labels.json"
    store = LabelStore.open(photos, out, "keypoints", ["left_eye", "right_eye"])
    monkeypatch.setattr(label_server, "READ_TIMEOUT_S", 0.5)
    srv = label_server.start(store)
    host, port = srv.server_address[:2]
    good = json.dumps({"image": store.images[0], "skip": True}).encode()

    def request(method, path, body=None, headers=None):
        c = http.client.HTTPConnection(host, port, timeout=30)
        c.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for k, v in {"Host": f"127.0.0.1:{port}", **(headers or {})}.items():
            c.putheader(k, v)
        c.endheaders(body)
        r = c.getresponse()
        return r.status, r.read()
    try:
        # DNS rebinding: a page of evil.example resolved to 127.0.0.1 reads nothing
        assert request("GET", "/api/state", headers={"Host": f"evil.example:{port}"})[0] == 403
        assert request("GET", "/api/image/0", headers={"Host": f"evil.example:{port}"})[0] == 403
        # a cross-origin "simple" POST (text/plain, no preflight) and a JSON one from a foreign Origin
        for headers in ({"Content-Type": "text/plain", "Content-Length": str(len(good))},
                        {"Content-Type": "application/json", "Content-Length": str(len(good)),
                         "Origin": "http://evil.example"},
                        {"Content-Type": "application/json", "Content-Length": str(len(good)),
                         "Sec-Fetch-Site": "cross-site"}):
            assert request("POST", "/api/label", good, headers)[0] == 403, headers
        assert not out.exists()  # nothing was written by any of them
        # malformed bodies: 4xx, one line, no traceback
        deep = b"[" * 400_000 + b"]" * 400_000
        digits = b'{"image": 1' + b"9" * 5000 + b"}"
        for body, length in ((good, "abc"), (good, "-5"), (good, "9" * 40), (deep[:2**20 - 1], None),
                             (digits, None), (b"\xff\xfe", None)):
            status, data = request("POST", "/api/label", body, {"Content-Type": "application/json",
                                                                 "Content-Length": length or str(len(body))})
            assert 400 <= status < 500 and b"\n" not in data.strip(), (length, status, data[:200])
        # a body shorter than its Content-Length: the server drops the connection after its read timeout
        with socket.create_connection((host, port), timeout=30) as s:
            s.sendall(f"POST /api/label HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                      f"Content-Length: 100\r\n\r\n".encode() + good[:10])
            assert s.recv(4096) == b""  # closed (a hang would raise the 30 s socket timeout instead)
        # a 169 MP PNG in the folder: the page is told it is over the pixel budget, nothing is decoded
        status, data = request("GET", f"/api/image/{store.images.index('huge.png')}")
        assert status == 422 and b"over the 40 MP budget" in data, data[:300]
        # the page's own write still works
        status, data = request("POST", "/api/label", good, {"Content-Type": "application/json",
                                                            "Content-Length": str(len(good)),
                                                            "Origin": f"http://127.0.0.1:{port}"})
        assert status == 200 and out.exists(), data
    finally:
        srv.shutdown()
    assert "Traceback" not in capfd.readouterr().err


def test_registry_image_checks_stay_small_under_a_burst(tmp_path):
    """Eight 39.7 MP PNGs (128 KB each) checked at once: the registry walks their compressed data instead of
    decoding 120 MB of pixels each (1 GB for the burst before)."""
    png = big_png(tmp_path / "p.png", side=6300)
    code = r"""
import resource, sys, threading
from pocketvision.errors import PocketVisionError
from pocketvision.serve.feedback import sniff_image
data = open(sys.argv[1], "rb").read()
assert sniff_image(data) == "png"
for bad in (data[: len(data) // 2], data[:-20]):
    try:
        sniff_image(bad)
        raise SystemExit("a truncated PNG passed")
    except PocketVisionError:
        pass
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
threads = [threading.Thread(target=sniff_image, args=(data,)) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
"""
    r = subprocess.run([sys.executable, "-c", code, str(png)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert float(r.stdout.strip()) < 64, r.stdout


def test_registry_runs_what_it_signs(real, tmp_path):
    """Garbage published as "onnx" with the publisher's claim {"passed": true}: the registry opens it in
    onnxruntime on the smoke photos and refuses to sign it; a real model with its own smoke outputs is signed."""
    import pocketvision as pv
    from ota_support import Api, RegistryServer, new_store
    from pocketvision.serve.publish import smoke_record
    b = pv.load(real["bundle"])
    onnx_path = b.export(tmp_path / "m.onnx", verify=False).path
    pixels = np.zeros((2, *b.contract.size, 3), np.uint8)
    smoke = tmp_path / "smoke.json"
    smoke.write_text(json.dumps(smoke_record({"onnx": onnx_path}, pixels)))
    store = tmp_path / "store"
    tokens = new_store(store)
    srv = RegistryServer(store).start()
    try:
        api = Api(srv.url, tokens["admin"])
        ups = {n: api("POST", "/v1/uploads", raw=d)[1] for n, d in (("garbage", b"\x08\x07garbage" * 100),
                                                                    ("onnx", onnx_path.read_bytes()),
                                                                    ("smoke", smoke.read_bytes()))}

        def files(model: str) -> list[dict]:
            return [{"kind": "onnx", "filename": "m.onnx", "sha256": ups[model]["sha256"],
                     "length": ups[model]["length"], "verification": {"passed": True}},
                    {"kind": "smoke", "filename": "smoke.json", "sha256": ups["smoke"]["sha256"],
                     "length": ups["smoke"]["length"]}]
        status, body = api("POST", "/v1/models/m/versions", {"files": files("garbage")})
        assert status == 400 and "cannot run it in its runtime" in body["detail"], body
        status, body = api("POST", "/v1/models/m/versions", {"files": files("garbage")[:1]})
        assert status == 400 and "needs its smoke file" in body["detail"], body
        status, body = api("POST", "/v1/models/m/versions", {"files": files("onnx")})
        assert status == 200 and body["version"] == 1 and body["checked"]["onnx"] == {"checked": True,
                                                                                     "passed": True}, body
    finally:
        srv.stop()


def test_one_token_cannot_mint_devices_for_the_figures(tmp_path):
    """2,000 reports with made-up device ids used to count as 2,000 devices. Ids are now issued by the registry,
    bound to the token that asked, and issued at a bounded rate per address: made-up ids are refused, an id
    works only with its own token, and a burst of requests for ids is cut off."""
    from helpers import run_cli
    from ota_support import Api, RegistryServer, new_store
    store = tmp_path / "store"
    tokens = new_store(store)
    other = run_cli("tokens", "new", "--store", str(store), "--role", "device", "--name", "other").stdout.strip()
    srv = RegistryServer(store).start()
    try:
        dev, dev2 = Api(srv.url, tokens["device"]), Api(srv.url, other)
        for i in range(30):
            status, body = dev("POST", "/v1/reports", {"model": "hotdog", "device_id": f"made-up-{i:04d}",
                                                       "version": 1, "state": "failed"})
            assert status == 403 and "POST /v1/devices" in body["detail"], body
        status, body = dev("POST", "/v1/devices")
        assert status == 200 and body["device_id"].startswith("pvd-")
        mine = body["device_id"]
        report = {"model": "hotdog", "device_id": mine, "version": 1, "state": "failed"}
        assert dev2("POST", "/v1/reports", report)[0] == 403  # an id speaks only with the token it was issued to
        assert dev("POST", "/v1/reports", report)[0] == 404  # issued, but no such model here: not stored
        # ids for the asking, in a burst from one address: cut off after 10 a minute (25 requests span at most
        # one minute boundary, so one window sees at least 13 of them whatever the clock)
        statuses = [dev("POST", "/v1/devices")[0] for _ in range(25)]
        assert statuses.count(429) >= 3 and set(statuses) <= {200, 429}, statuses
        assert Api(srv.url, tokens["admin"])("GET", "/v1/models")[1]["models"] == []
    finally:
        srv.stop()
