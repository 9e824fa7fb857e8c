"""What the tests share besides fixtures: where the data is, running the CLI, the one-line-error check."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    return Path(os.environ.get("POCKETVISION_DATA", REPO.parent / "shared" / "data"))


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600, env: dict | None = None
            ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pocketvision", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env=env)


def one_line_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    """Bad input: exit code 2, exactly one `error:` line naming what is wrong, no traceback."""
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
