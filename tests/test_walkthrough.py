"""The documentation's walkthroughs run as written, in their printed order, so a newcomer who copies them meets a
program that agrees with the page.

Each ```bash and ```python block of a page runs, top to bottom, in one shell (its `cd` and `export` carry on), except
a block preceded by ``<!-- walkthrough: not run (why) -->``. Two things are added, never changed: after a line that
starts a server in the background (`... &`) the script waits until its port answers, and a python block runs with
the page's earlier python blocks before it (one session on the page, one process here).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO

pytestmark = [pytest.mark.shared_data, pytest.mark.slow]

BLOCK = re.compile(r"(<!-- walkthrough: not run[^>]*-->\s*\n)?^```(bash|python)\n(.*?)^```", re.M | re.S)
WAIT = ("python -c 'import socket, sys, time\nfor _ in range(600):\n    try:\n        socket.create_connection("
        "(\"127.0.0.1\", {port}), 1).close(); sys.exit(0)\n    except OSError:\n        time.sleep(0.1)\n"
        "sys.exit(\"the server did not answer on port {port} in 60 s\")'\n")


def blocks(page: Path) -> list[tuple[str, str]]:
    """(language, code) of each block the walkthrough runs, in order."""
    return [(m.group(2), m.group(3)) for m in BLOCK.finditer(page.read_text()) if not m.group(1)]


def script(page: Path) -> str:
    """One bash script for the page's blocks (see the module's docstring for the two additions)."""
    out = ["set -euo pipefail", "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT"]
    python: list[str] = []
    for lang, code in blocks(page):
        if lang == "python":
            python.append(code)
            out.append(f"{sys.executable} - <<'PYTHON'\n{''.join(python)}PYTHON")
            continue
        for line in code.splitlines():
            out.append(line)
            if re.sub(r"\s+#.*$", "", line).rstrip().endswith("&"):  # a server in the background
                port = re.search(r"--port (\d+)", line)
                out.append(WAIT.format(port=port.group(1) if port else 8000))
    return "\n".join(out) + "\n"


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_the_over_the_air_walkthrough_runs_in_its_printed_order(trained_bundle, hotdog_small, tmp_path):
    page = REPO / "docs" / "guide" / "ota.md"
    assert _port_free(8000), "the walkthrough's registry takes port 8000, and something here already listens on it"
    shutil.copy(trained_bundle, tmp_path / "hotdog.pvb")
    shutil.copy(sorted((hotdog_small / "val" / "hotdog").iterdir())[0], tmp_path / "photo.jpg")
    text = script(page)
    assert "pocketvision publish" in text and "up.report(" in text and "feedback export" in text  # what it covers
    bin_dir = Path(sys.executable).parent  # the `pocketvision` and `python` of this environment first
    env = {k: v for k, v in os.environ.items() if not k.startswith("POCKETVISION_TOKEN")}
    env.update(PATH=f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}", HOME=str(tmp_path))
    r = subprocess.run(["bash", "-c", text], cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    out = "".join((r.stdout + r.stderr).split())  # the console wraps long lines anywhere: compare without spaces
    assert "publishedhotdogversion1tostableat100%" in out and "publishedhotdogversion2" in out
    ota = tmp_path / "ota"
    assert (ota / "root.json").is_file() and (ota / "reg").is_dir()
    # The second check either installs version 2 or says where this device stands in the 10% rollout.
    assert "version2" in out and ("installed" in out or "rolledoutto10%ofdevices" in out)
    labels = [p.name for p in (ota / "corrections").rglob("*") if p.is_dir()]
    assert labels, "feedback export wrote no confirmed correction"


def test_the_readme_path_runs_as_written(hotdog_small, tmp_path):
    """The README's "The path", on a small folder of real photos: check, train with the defaults, eval, export to
    every target (each verified), predict."""
    (tmp_path / "photos").symlink_to(hotdog_small, target_is_directory=True)
    (tmp_path / "some").mkdir()
    shutil.copy(sorted((hotdog_small / "val" / "hotdog").iterdir())[0], tmp_path / "some" / "photo.jpg")
    text = script(REPO / "README.md")
    assert "pocketvision train photos/" in text and "pip install" not in text  # the path, not the set-up
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"}  # HOME: the runtime cache
    r = subprocess.run(["bash", "-c", text], cwd=tmp_path, capture_output=True, text=True, timeout=1200, env=env)
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert (tmp_path / "aug.png").is_file() and (tmp_path / "hotdog.pvb").is_file()
    assert (tmp_path / "report").is_dir()
    for name in ("hotdog.onnx", "hotdog.tflite", "hotdog.mlpackage", "hotdog.web"):
        assert (tmp_path / "dist" / name).exists(), name  # only verified exports appear under their own name
    assert "photo.jpg" in r.stdout and "hotdog" in r.stdout.split("photo.jpg")[-1]


def test_the_quick_start_demo_runs_as_written(tmp_path):
    """The README's first command after the installs (which CI itself runs: `.ci/run`): `pocketvision demo`, with
    its defaults, writes the bundle, the verified ONNX and the report it promises."""
    readme = (REPO / "README.md").read_text()
    setup = next(m.group(3) for m in BLOCK.finditer(readme) if "pocketvision demo" in m.group(3))
    line = next(ln for ln in setup.splitlines() if "pocketvision demo" in ln)
    command = re.sub(r"\s+#.*$", "", line).split("&&")[-1].strip()
    assert command == "pocketvision demo", command
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    r = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "pv-demo"
    assert list(out.rglob("*.pvb")) and list(out.rglob("*.onnx")) and list(out.rglob("*.html")), sorted(out.rglob("*"))
    said = "".join((r.stdout + r.stderr).split())
    assert "parity" in said.lower(), said[-2000:]
