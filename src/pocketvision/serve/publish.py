"""`pocketvision publish`: export a bundle (or take its exports), refuse anything that did not pass verify,
record the smoke outputs devices will check, upload, and ask the server to sign the new version.

The smoke file holds a few held-out photos as the exact uint8 pixels the graph takes, and each artifact's
outputs on them computed in that artifact's own runtime here. A device runs the downloaded file on the same
pixels and must get the same outputs (the task's parity check) before it swaps the model in.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import urllib3

from ..errors import PocketVisionError
from ..ota.plans import Conditions

SMOKE_IMAGES = 4


class Client:
    """The admin side of the registry's HTTP API."""

    def __init__(self, server: str, token: str | None):
        if not token:
            raise PocketVisionError("an admin token is needed: pass --token or set POCKETVISION_TOKEN "
                                    "(`pocketvision tokens new --role admin` makes one).")
        self.server = server.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"}
        self.http = urllib3.PoolManager(retries=urllib3.Retry(total=3, backoff_factor=0.5, allowed_methods=None,
                                                              status_forcelist=()))

    def call(self, method: str, path: str, body: Any = None, raw: Any = None) -> dict[str, Any]:
        headers = dict(self.headers)
        if raw is not None:
            headers["Content-Type"] = "application/octet-stream"
            data = raw
        elif body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body, default=str).encode()
        else:
            data = None
        try:
            r = self.http.request(method, self.server + path, body=data, headers=headers,
                                  timeout=urllib3.Timeout(connect=10, read=600))
        except urllib3.exceptions.HTTPError as e:
            raise PocketVisionError(f"{self.server}: cannot reach the registry ({e}).") from None
        try:
            out = json.loads(r.data or b"{}")
        except ValueError:
            out = {"detail": r.data[:200].decode(errors="replace")}
        if r.status >= 400:
            detail = out.get("detail") if isinstance(out, dict) else out
            raise PocketVisionError(f"{self.server}{path}: HTTP {r.status}: {detail}")
        return out

    def raw(self, method: str, path: str) -> bytes:
        try:
            r = self.http.request(method, self.server + path, headers=self.headers,
                                  timeout=urllib3.Timeout(connect=10, read=600))
        except urllib3.exceptions.HTTPError as e:
            raise PocketVisionError(f"{self.server}: cannot reach the registry ({e}).") from None
        if r.status >= 400:
            raise PocketVisionError(f"{self.server}{path}: HTTP {r.status}: {r.data[:200].decode(errors='replace')}")
        return r.data

    def upload(self, path: Path) -> dict[str, Any]:
        with open(path, "rb") as f:
            return self.call("POST", "/v1/uploads", raw=f)


def smoke_record(files: dict[str, Path], pixels, reference=None) -> dict[str, Any]:
    """Each artifact's outputs on ``pixels``, computed in its own runtime (the file the device will run). A
    target whose runtime does not run here (Core ML off macOS) is compared on the device against
    ``reference`` (the trained model's outputs) with the task's parity budget instead."""
    from ..ota.device import array_b64
    from ..deploy.artifact import open_predictor
    outputs = {}
    for kind, path in files.items():
        try:
            p = open_predictor(path)
        except PocketVisionError:
            if reference is None:
                raise
            continue
        with p:
            outputs[kind] = array_b64(p.run_pixels(pixels))
    out = {"inputs": array_b64(pixels), "outputs": outputs}
    if reference is not None:
        out["reference"] = array_b64(reference)
    return out


def folder_members(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def publish(bundle: str | os.PathLike, server: str, token: str | None, name: str, targets: list[str],
            channel: str | None = None, rollout: float = 100.0, conditions: Conditions | None = None,
            data: str | os.PathLike | None = None, teachable: bool = False, log=lambda s: None) -> dict[str, Any]:
    """``teachable``: the files also output their embedding (``export --teachable``): devices can keep classes
    taught on them, and the release's info says whether its embedding is the live version's (``embedding``;
    ``embedding_changed``: a device must embed its examples again)."""
    from ..bundle import load
    from ..export import check_request, get_target
    from .registry import check_name
    check_name(name, "--name")
    if channel is not None:
        check_name(channel, "--channel")
    client = Client(server, token)
    b = load(bundle)
    for to in targets:  # every target's request and converter, before the first export
        check_request(b.plugin, to, teachable=teachable)
    held = b.held_out(data)
    if not len(held.pixels):
        raise PocketVisionError("publish records smoke outputs on held-out photos: pass --data DIR (the bundle's "
                                "own data is not available here).")
    pixels = held.pixels[:SMOKE_IMAGES]
    with tempfile.TemporaryDirectory(prefix="pv-publish-") as tmp:
        exported: dict[str, Path] = {}
        manifest: list[dict[str, Any]] = []
        embedding = None
        for to in targets:
            target = get_target(to)
            out = Path(tmp) / f"{name}{target.suffix}"
            log(f"exporting {to} and verifying it on real photos ...")
            res = b.export(out, to=to, data=data, teachable=teachable)
            embedding = res.embedding
            v = res.verification or {}
            if not v.get("passed"):
                why = "; ".join(v.get("broke") or []) or v.get("reason") or v
                raise PocketVisionError(f"{to}: verification did not pass ({why}); "
                                        "nothing was published.")
            exported[to] = out
            manifest.append({"kind": to, "filename": out.name, "verification": v})
        live = _live_version(client, name, channel)
        _warn_if_heavier(live, name, b.meta["arch"]["name"], exported, log)
        smoke = Path(tmp) / "smoke.json"
        smoke.write_text(json.dumps(smoke_record(exported, pixels, b.predict_pixels(pixels))))
        files = {**exported, "smoke": smoke, "bundle": Path(bundle)}
        manifest += [{"kind": "smoke", "filename": "smoke.json", "verification": {}},
                     {"kind": "bundle", "filename": f"{name}.pvb", "verification": {}}]
        for m in manifest:
            log(f"uploading {m['filename']} ...")
            src = files[m["kind"]]
            if src.is_dir():  # a folder export: each file is uploaded (and later signed) on its own
                m["members"] = [{"path": f.relative_to(src).as_posix(), **client.upload(f)}
                                for f in folder_members(src)]
            else:
                m.update(client.upload(src))
        info = {"task": b.task, "labels": b.labels, "bundle_weights_sha256": b.meta.get("weights_sha256"),
                "source": Path(bundle).name, "arch": b.meta["arch"]["name"]}
        if embedding:
            before = (live or {}).get("embedding")
            info["embedding"] = embedding
            info["embedding_changed"] = bool(before) and (before.get("id"), before.get("features")) != \
                (embedding.get("id"), embedding.get("features"))
            if info["embedding_changed"]:
                log(f"note: the embedding differs from the live version {live['version']}'s: devices embed the "
                    "examples of their personal classes again before this version answers.")
        body = {"files": manifest, "info": info, "channel": channel, "rollout": rollout,
                "conditions": conditions.model_dump() if conditions else None}
        return client.call("POST", f"/v1/models/{name}/versions", body)


def _live_version(client: Client, name: str, channel: str | None) -> dict[str, Any] | None:
    """The channel's live version's record on the registry (None for a new model)."""
    try:
        status = client.call("GET", f"/v1/models/{name}")
    except PocketVisionError:
        return None  # a new model: nothing to compare with
    plan = status.get("channels", {}).get(channel or "stable") or {}
    live_n = (plan.get("current") or {}).get("version") or max((v["version"] for v in status["versions"]), default=0)
    return next((v for v in status["versions"] if v["version"] == live_n), None)


def _warn_if_heavier(live: dict[str, Any] | None, name: str, arch: str, exported: dict[str, Path], log) -> None:
    """Say so when this version changes the network or makes devices download much more than the live one (a
    default `train` after the demo makes EfficientNet-Lite0 where the demo shipped DeepDog: 6x the bytes)."""
    if live is None:
        return
    live_n = live["version"]
    notes = []
    if live.get("arch") and live["arch"] != arch:
        notes.append(f"its network is {arch}, the live version {live_n}'s is {live['arch']}")
    for kind, path in exported.items():
        old = (live.get("artifacts", {}).get(kind) or {}).get("bytes")
        new = sum(f.stat().st_size for f in folder_members(path)) if path.is_dir() else path.stat().st_size
        if old and new > 1.5 * old:
            notes.append(f"devices download {new / 1e6:.1f} MB of {kind} instead of {old / 1e6:.1f} MB "
                         f"({new / old:.1f}x)")
    if notes:
        log(f"note: {'; '.join(notes)}. `pocketvision retrain {name}` keeps the live version's network.")
