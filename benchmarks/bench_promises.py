"""The times the README and the guides promise, measured: each command runs as a user types it, in a fresh folder,
and its wall time is set against the promise (the ratio < 1 keeps the promise).

    python benchmarks/bench_promises.py [--data ../shared/data] [--only demo,train]

Run it on an idle machine: the promises are for an idle 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (name, where it is promised, the promise in seconds, the command; {data} is the shared data folder)
PROMISES = [
    ("demo", "README: `pocketvision demo`, about 2 minutes on 2 CPU cores", 120,
     ["pocketvision", "demo", "--out", "demo"]),
    ("train", "docs/guide/train.md: default `train` on the hotdog photos, ~2-3 min on 2 cores", 180,
     ["pocketvision", "train", "{data}/hotdog", "--out", "hotdog.pvb"]),
    ("export-bits4", "docs/guide/export.md: `export --bits 4` of that bundle, in 3 minutes", 180,
     ["pocketvision", "export", "hotdog.pvb", "--to", "onnx", "--bits", "4", "--data", "{data}/hotdog"]),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data"))
    ap.add_argument("--only", default=None, help="comma-separated names")
    a = ap.parse_args()
    only = set(a.only.split(",")) if a.only else None
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}")
    print(f"command: {' '.join([Path(sys.argv[0]).name, *sys.argv[1:]])}\n")
    rows = []
    with tempfile.TemporaryDirectory(prefix="pv-promises-") as tmp:
        for name, where, promise, cmd in PROMISES:
            if only and name not in only:
                continue
            argv = [c.format(data=a.data) for c in cmd]
            t = time.perf_counter()
            r = subprocess.run(argv, cwd=tmp, capture_output=True, text=True)
            took = time.perf_counter() - t
            rows.append((name, where, promise, took, r.returncode))
            print(f"{name}: {took:.0f} s (exit {r.returncode})", flush=True)
    print("\n| step | promised where | promised | measured | measured / promised | exit |\n|---|---|---|---|---|---|")
    for name, where, promise, took, rc in rows:
        print(f"| {name} | {where} | {promise} s | {took:.0f} s | {took / promise:.2f} | {rc} |")
    return 0 if all(rc == 0 for *_, rc in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
