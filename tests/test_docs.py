"""The documentation stands alone: the site builds with ``mkdocs build --strict`` (every link and anchor resolves,
every page is in the nav, the CLI reference is generated from the parser), and nothing in the repository cites a
document or tracker a reader does not have."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_site_builds_strict(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    cli = (tmp_path / "site" / "cli" / "index.html").read_text()
    for verb in ("train", "export", "verify", "publish", "retrain"):  # generated, not hand-written
        assert f"<code>{verb}</code>" in cli, verb


def test_nothing_cites_outside_the_repository():
    files = [*ROOT.joinpath("src").rglob("*.py"), *ROOT.joinpath("src").rglob("*.js"),
             *ROOT.joinpath("docs").rglob("*.md"), *ROOT.joinpath("tests").rglob("*.py"),
             *ROOT.joinpath("benchmarks").glob("*.py"), ROOT / "README.md", ROOT / "benchmarks" / "RESULTS.md"]
    pattern = re.compile(r"DESIGN\.md|\bissues? \d+\b", re.IGNORECASE)
    found = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p in files
             for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not found, found
