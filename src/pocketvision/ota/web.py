"""Over-the-air updates for a web export: the registry, model, channel and device token the page asks, and the
root metadata it trusts (``pocketvision web-updates``)."""

from __future__ import annotations

import json
from pathlib import Path

from ..core.bundle_file import atomic_write_bytes
from ..errors import PocketVisionError
from ..runtime.web_predictor import is_web_folder
from .plans import NAME


def add_updates(folder: str | Path, server: str, model: str, token: str, root: str | Path,
                channel: str = "stable", app_version: str | None = None, interval_s: int = 3600) -> Path:
    """Turn on over-the-air updates and the "wrong?" control in a web export: ``update.json`` (registry, model,
    channel, device token) and ``root.json`` (the registry's root metadata, the page's one trust anchor).
    The token is readable by every visitor: give a *device* token (it can only read updates and post reports
    and corrections), and start the registry with ``--allow-origin`` for the page's origin."""
    folder = Path(folder)
    if not is_web_folder(folder):
        raise PocketVisionError(f"{folder}: not a pocketvision web export; make one with "
                                "`pocketvision export BUNDLE --to web`.")
    if not server.startswith(("http://", "https://")):
        raise PocketVisionError(f"--server {server!r}: give the registry's http(s):// URL.")
    if not NAME.fullmatch(model) or not NAME.fullmatch(channel):
        raise PocketVisionError(f"--name {model!r} / --channel {channel!r}: lowercase letters, digits, '.', '_', '-'.")
    try:
        doc = json.loads(Path(root).read_bytes())
        ok = doc["signed"]["_type"] == "root" and isinstance(doc["signatures"], list)
    except (OSError, ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise PocketVisionError(f"--root {root}: not TUF root metadata; write it with "
                                "`pocketvision keys show --root-out root.json`.")
    if not (folder / "update.js").is_file():
        raise PocketVisionError(f"{folder}: exported before over-the-air updates existed; export it again.")
    config = {"server": server.rstrip("/"), "model": model, "channel": channel, "token": token,
              "app_version": app_version, "interval_s": interval_s}
    atomic_write_bytes(folder / "root.json", Path(root).read_bytes())
    atomic_write_bytes(folder / "update.json", json.dumps(config, indent=2).encode())
    return folder
