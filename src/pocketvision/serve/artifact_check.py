"""The registry runs what it signs: before a version is signed, each uploaded model is opened in its own runtime
on this server and run on the version's smoke photos, and must give the outputs the publisher recorded. A
publisher's ``"verification": {"passed": true}`` is a claim; this is the check. A format whose runtime does not
run here (Core ML off macOS) is recorded as not checked, with the reason, and devices still run their own smoke
test before they swap a model in.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import PocketVisionError

MAX_SMOKE_BYTES = 64 << 20  # a few photos as pixels plus outputs: a real smoke file is well under 2 MB


def check_release(uploads: list, copy_blob: Callable[[str, Path], None], runnable: set[str]) -> dict[str, Any]:
    """-> {kind: {"checked": bool, "passed"/"why"}} for each runnable upload; a one-line PocketVisionError for a
    file that does not open, or whose outputs on the smoke photos differ from the recorded ones."""
    import pocketvision.export  # noqa: F401 - registers every target
    from ..core.bundle_file import parse_json
    from ..ota.device import smoke_test
    from ..export import target_for_path
    smoke_upload = next((u for u in uploads if u.kind == "smoke"), None)
    if smoke_upload is None:
        raise PocketVisionError("a version needs its smoke file (smoke.json, which `pocketvision publish` records): "
                                "the registry runs each model on it before signing.")
    if (smoke_upload.length or 0) > MAX_SMOKE_BYTES:
        raise PocketVisionError(f"smoke.json: {smoke_upload.length:,} bytes, over {MAX_SMOKE_BYTES:,}.")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="pv-check-") as tmp:
        smoke_path = Path(tmp) / "smoke.json"
        copy_blob(smoke_upload.sha256, smoke_path)
        smoke = parse_json(smoke_path.read_bytes(), "smoke.json", PocketVisionError)
        if not isinstance(smoke, dict):
            raise PocketVisionError("smoke.json: not a smoke record (an object with inputs and outputs).")
        for u in uploads:
            if u.kind not in runnable:
                continue
            dest = Path(tmp) / u.kind / u.filename
            for sha, rel in ([(u.sha256, None)] if u.members is None else [(m.sha256, m.path) for m in u.members]):
                copy_blob(sha, dest / rel if rel else dest)
            try:
                target = target_for_path(dest)
            except PocketVisionError:
                raise PocketVisionError(f"{u.filename}: not a model format this registry knows; not signed.") from None
            if not target.accelerators():
                results[u.kind] = {"checked": False, "why": f"{target.name} does not run on this server"}
                continue
            try:
                with target.open(dest, 1) as predictor:
                    r = smoke_test(predictor, smoke, u.kind)
            except Exception as e:  # noqa: BLE001 - anything a runtime raises on these bytes is the file's fault
                why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
                raise PocketVisionError(f"{u.filename}: the registry cannot run it in its runtime ({why}); not "
                                        "signed.") from None
            if not r.get("passed"):
                raise PocketVisionError(f"{u.filename}: on the smoke photos it does not give the outputs recorded "
                                        f"at publish ({r.get('detail') or 'outside the parity budget'}); not signed.")
            results[u.kind] = {"checked": True, "passed": True}
    return results
