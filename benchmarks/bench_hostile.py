"""What hostile input costs, before and after, in the same run; and that the honest paths did not slow.

    python benchmarks/bench_hostile.py [--before REF] [--out benchmarks/out/hostile]

--before (default HEAD): a git ref checked out as a worktree in --out; each case runs once with that tree's code
and once with this one's, through the real CLI in a subprocess (tests/test_hostile.py's runner: imports first,
then time and peak memory of the command alone, under a 1 GB address-space limit that a regression dies on).
Then, with both trees: the cold `predict` of an ONNX file (a new process each time, median of 7) and the registry's
"no update" check (GET timestamp.json -> 304, one keep-alive client for 5 s, median of 3), each with the ratio
after/before. Prints a markdown table with the machine and the command.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(HERE))

from bench_ota import Server, machine  # noqa: E402 - the registry in its own process, as the OTA benchmark runs it
from test_hostile import LIMIT_MB, RUNNER, _lie_about_size, _zeros_member, big_png  # noqa: E402 - the same cases


def runner(src: Path, argv: list[str], out: Path) -> dict:
    res = out / "result.json"
    res.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(src)}
    t0 = time.perf_counter()
    try:
        r = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(argv), str(res), str(LIMIT_MB)], env=env,
                           capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return {"code": "timeout", "seconds": 300.0, "peak_mb": None, "line": ""}
    if not res.exists():
        return {"code": f"died ({r.returncode})", "seconds": time.perf_counter() - t0, "peak_mb": None,
                "line": r.stderr.strip().splitlines()[-1][:120] if r.stderr.strip() else ""}
    d = json.loads(res.read_text())
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    return {**d, "line": (lines[-1] if lines else "")[:120], "lines": len(lines)}


def cases(out: Path) -> list[tuple[str, list[str]]]:
    """The hostile files, generated here (and the real tiny bundle they start from)."""
    import pocketvision as pv  # noqa: F401
    from pocketvision.core import bundle_file as bio
    from pocketvision.api import Bundle
    from pocketvision.core.contract import Contract
    from pocketvision.models import build_model
    from PIL import Image
    out.mkdir(parents=True, exist_ok=True)
    spec = {"name": "deepdog", "args": {"alpha": 0.25, "num_classes": 2}}
    real = Bundle(bio.new_meta("classify", spec, ["a", "b"], Contract(size=(64, 64))), build_model(spec)).save(
        out / "m.pvb")
    with zipfile.ZipFile(real) as z:
        meta, weights = z.read("bundle.json"), z.read("weights.safetensors")
    photo = out / "photo.jpg"
    Image.new("RGB", (64, 64), (120, 90, 60)).save(photo)
    onnx = pv.load(real).export(out / "m.onnx", verify=False).path
    liar = out / "liar.pvb"
    with zipfile.ZipFile(liar, "w") as z:
        _zeros_member(z, "bundle.json", 2**30)
        z.writestr("weights.safetensors", weights)
    _lie_about_size(liar, "bundle.json", 1000)
    lzma = out / "lzma.pvb"
    with zipfile.ZipFile(lzma, "w") as z:
        _zeros_member(z, "bundle.json", 2**30, zipfile.ZIP_LZMA)
        z.writestr("weights.safetensors", weights)
    _lie_about_size(lzma, "bundle.json", 1000)
    heavy = out / "heavy.pvb"
    with zipfile.ZipFile(heavy, "w") as z:
        z.writestr("bundle.json", meta)
        _zeros_member(z, "weights.safetensors", 1900 * 2**20)
    zero = out / "zero-folder"
    zero.mkdir(exist_ok=True)
    (zero / "weights.safetensors").write_bytes(weights)
    (zero / "bundle.json").unlink(missing_ok=True)
    (zero / "bundle.json").symlink_to("/dev/zero")
    m = json.loads(meta)
    digits = out / "digits.pvb"
    with zipfile.ZipFile(digits, "w") as z:
        z.writestr("bundle.json", json.dumps(m).replace('"schema": 1', '"schema": ' + "9" * 5000))
        z.writestr("weights.safetensors", weights)
    big_contract = bio.write(out / "contract4096.pvb", {**m, "contract": {**m["contract"], "size": [4096, 4096]}},
                             weights)
    png = big_png(out / "huge.png")
    return [("zip directory lies: 1 GB bundle.json said 1,000 B (deflate)", ["predict", str(liar), str(photo)]),
            ("the same with LZMA", ["predict", str(lzma), str(photo)]),
            ("1.9 GB weights.safetensors of zeros (2 MB on disk)", ["predict", str(heavy), str(photo)]),
            ("folder bundle: bundle.json -> /dev/zero", ["predict", str(zero), str(photo)]),
            ("5,000-digit integer in bundle.json", ["predict", str(digits), str(photo)]),
            ("contract 4096x4096 on a 0.3 MB model", ["predict", str(big_contract), str(photo)]),
            ("169 MP PNG (0.5 MB): predict on the bundle", ["predict", str(real), str(png)]),
            ("169 MP PNG: predict on ONNX", ["predict", str(onnx), str(png)])]


def cold_predict(src: Path, onnx: Path, photo: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(src)}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pocketvision", "predict", str(onnx), str(photo)], env=env,
                   check=True, capture_output=True)
    return time.perf_counter() - t0


def check_rate(src: Path, store: Path, token: str, seconds: float = 5.0) -> float:
    import urllib3
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(src)  # the server process takes this tree's code
    try:
        srv = Server(store, "--log-level", "warning")
    finally:
        os.environ.pop("PYTHONPATH") if old is None else os.environ.update(PYTHONPATH=old)
    try:
        http = urllib3.PoolManager(maxsize=1)
        url, h = srv.url + "/tuf/metadata/timestamp.json", {"Authorization": f"Bearer {token}"}
        etag = http.request("GET", url, headers=h).headers["ETag"]
        h["If-None-Match"] = etag
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            assert http.request("GET", url, headers=h).status == 304
            n += 1
        return n / (time.perf_counter() - t0)
    finally:
        srv.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", default="HEAD", help="git ref of the code to compare against")
    ap.add_argument("--out", default=str(HERE / "out" / "hostile"))
    a = ap.parse_args()
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    before = out / "before"
    if not before.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(before), a.before], check=True,
                       capture_output=True)
    trees = {"before": before / "src", "after": ROOT / "src"}
    rows = []
    for name, argv in cases(out / "files"):
        r = {k: runner(src, argv, out) for k, src in trees.items()}
        rows.append((name, r))
        print(name, {k: (v["code"], round(v["seconds"], 2), v["peak_mb"] and round(v["peak_mb"]))
                     for k, v in r.items()}, file=sys.stderr)
    onnx, photo = out / "files" / "m.onnx", out / "files" / "photo.jpg"
    cold = {k: [] for k in trees}
    for _ in range(7):
        for k, src in trees.items():  # alternated, so drift on a noisy machine hits both alike
            cold[k].append(cold_predict(src, onnx, photo))
    store = out / "store"
    if not store.exists():
        subprocess.run([sys.executable, "-m", "pocketvision", "keys", "new", "--store", str(store), "--root-out",
                        str(store / "root.json")], check=True, capture_output=True)
    token = subprocess.run([sys.executable, "-m", "pocketvision", "tokens", "new", "--store", str(store),
                            "--role", "device"], check=True, capture_output=True, text=True).stdout.strip()
    rate = {k: [] for k in trees}
    for _ in range(3):
        for k, src in trees.items():
            rate[k].append(check_rate(src, store, token))

    cmd = "python benchmarks/bench_hostile.py " + " ".join(sys.argv[1:])
    print(f"\nMachine: {machine()}\nCommand: `{cmd}` (before: {a.before})\n")
    print("| hostile input | before: exit, s, peak MB | after: exit, s, peak MB | after: the line it prints |")
    print("|---|---|---|---|")

    def cell(v):
        peak = "-" if v["peak_mb"] is None else f"{v['peak_mb']:.0f}"
        return f"{v['code']}, {v['seconds']:.2f}, {peak}"
    for name, r in rows:
        print(f"| {name} | {cell(r['before'])} | {cell(r['after'])} | {r['after']['line'].replace('|', '/')} |")
    print("\n| honest path | before (median) | after (median) | after / before |\n|---|---|---|---|")
    cb, ca = statistics.median(cold["before"]), statistics.median(cold["after"])
    print(f"| cold `predict` of an ONNX file (new process, 7 runs) | {cb:.2f} s | {ca:.2f} s | {ca / cb:.2f} |")
    rb, ra = statistics.median(rate["before"]), statistics.median(rate["after"])
    print(f"| \"no update\" checks, one keep-alive client (3 x 5 s) | {rb:.0f} req/s | {ra:.0f} req/s | "
          f"{ra / rb:.2f} |")


if __name__ == "__main__":
    main()
