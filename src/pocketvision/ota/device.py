"""Device-side over-the-air updates: ``ModelUpdater`` keeps a running ``Predictor`` on the model its channel
says, and nothing it cannot verify ever runs. No torch: ``pip install 'pocketvision[client]'``.

    up = ModelUpdater("https://models.example.com", "hotdog", token=DEVICE_TOKEN, trusted_root="root.json",
                      cache_dir=app_dir / "models", platform="android", app_version="2.3.0")
    up.predictor.predict(["photo.jpg"])   # the installed model (swapped in place by check())
    up.check()                            # cheap when nothing changed: one 304 for timestamp.json

One ``check``:
1. TUF (python-tuf ``ngclient``) refreshes the signed metadata: timestamp (an ``If-None-Match`` request that
   usually ends in ``304``), then snapshot and targets only when they changed. Expired, replayed, mixed or
   wrongly signed metadata is refused here, before anything is downloaded.
2. The channel's plan (a signed target) is read and the device decides its release from a stable hash of its
   id (``plans.decision``).
3. The release's model and smoke file are downloaded (resumably: a dropped connection continues with an HTTP
   ``Range`` request next time) and checked against the signed length and sha256.
4. The model is opened in its runtime and run on the smoke inputs; its outputs must match the outputs the
   publisher recorded with the same file (the task's parity check). Only then is it swapped into the running
   predictor: in-flight calls finish on the model they started with. Personal classes taught on the device
   (``up.teacher.add("my mug", photos)``, kept in ``cache_dir/personal``) move first: the new model embeds their
   examples again and the refitted head must still recall them, or the release is not installed.
5. Any failure leaves the previous model serving, marks the version bad on this device, and is reported.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import urllib3
from tuf.api import exceptions as tuf_errors
from tuf.ngclient import FetcherInterface, Updater, UpdaterConfig

from ..core.bundle_file import atomic_write_bytes, sha256_file
from ..deploy.artifact import open_predictor
from ..errors import PocketVisionError
from ..runtime.teach import Teacher
from .plans import FOLDER_SUFFIX, Plan, decision

STATE = "state.json"


class ResumableFetcher(FetcherInterface):
    """HTTP for ngclient with an auth header, a conditional GET for ``timestamp.json`` and resumable targets.

    Targets are addressed by content hash (consistent snapshots), so bytes already received for a URL are
    still right later: they are kept in ``partial_dir`` and the rest is asked for with ``Range``. TUF checks
    the whole file's length and hash afterwards, so a poisoned prefix fails verification and is dropped.
    """

    def __init__(self, token: str | None, partial_dir: Path, timeout: float = 30.0, chunk: int = 1 << 16,
                 etag_file: Path | None = None):
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.partial_dir, self.timeout, self.chunk, self.etag_file = partial_dir, timeout, chunk, etag_file
        # Retries cover a kept-alive connection the server has since closed (GETs are idempotent); a status
        # code is never retried, and a broken body surfaces (the next check resumes it).
        self.http = urllib3.PoolManager(retries=urllib3.Retry(total=2, read=0, redirect=0, backoff_factor=0.05))
        self.etags: dict[str, tuple[str, bytes]] = {}
        try:  # the last timestamp's ETag survives an app restart (its body is re-checked by TUF anyway)
            saved = json.loads(etag_file.read_text()) if etag_file else {}
            self.etags = {u: (e, base64.b64decode(b)) for u, (e, b) in saved.items()}
        except (OSError, ValueError, TypeError):
            self.etags = {}
        self.bytes_received = 0  # body bytes, for the wire-cost numbers

    def _request(self, url: str, headers: dict[str, str]):
        try:
            r = self.http.request("GET", url, headers={**self.headers, **headers}, preload_content=False,
                                  timeout=urllib3.Timeout(connect=self.timeout, read=self.timeout))
        except urllib3.exceptions.TimeoutError as e:
            raise tuf_errors.SlowRetrievalError(str(e)) from e
        return r

    def _fetch(self, url: str) -> Iterator[bytes]:
        if url.endswith("/timestamp.json"):
            return self._conditional(url)
        if "/targets/" in url:
            return self._resumable(url)
        r = self._request(url, {})
        self._raise_for(r)
        return self._stream(r)

    def _raise_for(self, r) -> None:
        if r.status >= 400:
            _done(r)
            raise tuf_errors.DownloadHTTPError(f"HTTP {r.status}", r.status)

    def _stream(self, r) -> Iterator[bytes]:
        complete = False
        try:
            for chunk in r.stream(self.chunk):
                self.bytes_received += len(chunk)
                yield chunk
            complete = True
        except urllib3.exceptions.TimeoutError as e:
            raise tuf_errors.SlowRetrievalError(str(e)) from e
        finally:
            if not complete:  # stopped early (too long, or broken): the rest must not reach the next request
                r.close()
            r.release_conn()

    def _conditional(self, url: str) -> Iterator[bytes]:
        known = self.etags.get(url)
        r = self._request(url, {"If-None-Match": known[0]} if known else {})
        if r.status == 304 and known:
            _done(r)
            return iter([known[1]])
        self._raise_for(r)
        return self._remember(r, url)

    def _remember(self, r, url: str) -> Iterator[bytes]:
        """Stream the body (ngclient stops reading past its length cap) and keep it with its ETag once whole."""
        parts = []
        for chunk in self._stream(r):
            parts.append(chunk)
            yield chunk
        if etag := r.headers.get("ETag"):
            self.etags[url] = (etag, b"".join(parts))
            if self.etag_file:
                atomic_write_bytes(self.etag_file, json.dumps({u: (e, base64.b64encode(b).decode())
                                                          for u, (e, b) in self.etags.items()}).encode())

    def _resumable(self, url: str) -> Iterator[bytes]:
        part = self.partial_dir / hashlib.sha256(url.encode()).hexdigest()[:40]
        have = part.stat().st_size if part.is_file() else 0
        r = self._request(url, {"Range": f"bytes={have}-"} if have else {})
        if r.status == 416:  # the partial is the whole file already (or garbage): start again next time
            _done(r)
            part.unlink(missing_ok=True)
            raise tuf_errors.DownloadError(f"{url}: range not satisfiable; partial download discarded")
        self._raise_for(r)
        if r.status != 206:
            have = 0
        return self._resume(r, part, have)

    def _resume(self, r, part: Path, have: int) -> Iterator[bytes]:
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        if have:
            with open(part, "rb") as f:
                while chunk := f.read(self.chunk):
                    yield chunk
        with open(part, "ab" if have else "wb") as out:
            for chunk in self._stream(r):
                out.write(chunk)
                yield chunk
        part.unlink(missing_ok=True)  # complete: TUF verifies it now, and a retry starts clean either way


ASK_BELOW = 0.7  # ask "is this right?" about answers the model was less sure of than this


def worth_asking(record: dict[str, Any]) -> bool:
    """Whether an app should ask the user "is this right?" about a prediction: the model was unsure, or the photo
    looked unlike its training photos. A "yes" (``report(photo, label, label)``) teaches as much as a correction."""
    return bool(record.get("unfamiliar_flag")) or float(record.get("confidence", 1.0)) < ASK_BELOW


class SwappablePredictor:
    """A predictor whose model can be replaced while it serves: each call takes the current model once and
    finishes on it, so a swap never fails a request in flight."""

    def __init__(self, predictor: Any | None = None, version: int | None = None):
        self._current, self.version = predictor, version
        self.teacher: Any = None  # personal classes (ModelUpdater.teacher): predict answers with them too
        self._lock = threading.Lock()
        self.traffic: dict[int, list[int]] = {}  # version -> [predictions, flagged unfamiliar], sent with checks

    @property
    def current(self) -> Any:
        p = self._current
        if p is None:
            raise PocketVisionError("no model installed yet; call ModelUpdater.check() first.")
        return p

    def swap(self, predictor: Any, version: int) -> Any:
        with self._lock:
            old, self._current, self.version = self._current, predictor, version
        return old  # not closed here: a call that took it may still be running; it is freed when released

    def predict(self, sources) -> list[dict[str, Any]]:
        version, current = self.version, self.current
        out = self.teacher.predict(sources) if self.teacher is not None else current.predict(sources)
        if version is not None and out and "unfamiliar_flag" in out[0]:
            with self._lock:
                n = self.traffic.setdefault(version, [0, 0])
                n[0] += len(out)
                n[1] += sum(bool(r.get("unfamiliar_flag")) for r in out)
        return out

    def run_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return self.current.run_pixels(pixels)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.current, name)


@dataclass
class CheckResult:
    action: str  # none | installed | failed | deferred
    version: int | None = None
    detail: str = ""
    downloaded_bytes: int = 0
    timings: dict[str, float] = field(default_factory=dict)


def _b64_array(d: dict[str, Any]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(d["data"]), dtype=d["dtype"]).reshape(d["shape"])


def array_b64(a: np.ndarray) -> dict[str, Any]:
    a = np.ascontiguousarray(a)
    return {"dtype": str(a.dtype), "shape": list(a.shape), "data": base64.b64encode(a.tobytes()).decode()}


def smoke_test(predictor: Any, smoke: dict[str, Any], kind: str) -> dict[str, Any]:
    """Run ``predictor`` on the smoke file's inputs; -> the task's parity result against the recorded outputs
    of the same artifact (``passed``)."""
    try:
        pixels = _b64_array(smoke["inputs"])
        # Outputs recorded with this very file; for a runtime the publisher could not run (Core ML off macOS)
        # the trained model's, judged by the same task parity budget `verify` uses.
        recorded = _b64_array(smoke["outputs"][kind] if kind in smoke["outputs"] else smoke["reference"])
    except (KeyError, TypeError, ValueError) as e:
        raise PocketVisionError(f"smoke file: unreadable ({e})") from None
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[0] > 64:
        raise PocketVisionError("smoke file: inputs must be at most 64 uint8 NHWC images")
    got = predictor.run_pixels(pixels)
    if got.shape != recorded.shape:
        return {"passed": False, "detail": f"output shape {got.shape} != recorded {recorded.shape}"}
    return predictor.plugin.compare(recorded, got, None, predictor.meta)


class ModelUpdater:
    def __init__(self, server: str, model: str, *, token: str | None, trusted_root: str | os.PathLike | bytes,
                 cache_dir: str | os.PathLike, channel: str = "stable", kind: str = "onnx",
                 device_id: str | None = None, app_version: str | None = None, platform: str | None = None,
                 metered: bool = False, threads: int | None = None, report: bool = True, timeout: float = 30.0):
        self.server, self.model, self.channel, self.kind = server.rstrip("/"), model, channel, kind
        self.app_version, self.platform, self.metered, self.threads = app_version, platform, metered, threads
        self.send_reports, self.token = report, token
        self.dir = Path(cache_dir)
        (self.dir / "metadata").mkdir(parents=True, exist_ok=True)
        root = trusted_root if isinstance(trusted_root, bytes) else Path(trusted_root).read_bytes()
        self._bootstrap = None if (self.dir / "metadata" / "root.json").is_file() else root
        self.state = self._read_state()
        if device_id is None:
            device_id = self.state.setdefault("device_id", uuid.uuid4().hex)
        self.device_id = device_id
        self.fetcher = ResumableFetcher(token, self.dir / "partial", timeout=timeout,
                                        etag_file=self.dir / "metadata" / "etags.json")
        self.predictor = SwappablePredictor()
        self._teacher = None
        self._load_installed()
        if self.predictor.version is not None and (self.dir / "personal" / "examples.npz").is_file():
            self._open_teacher()  # classes taught before a restart answer again at once

    @property
    def teacher(self) -> Teacher:
        """Personal classes on this device (``runtime.teach.Teacher``, numpy only), kept in ``cache_dir/personal``:
        ``up.teacher.add("my mug", photos)``; ``up.predictor.predict`` answers with them from then on, and an
        update embeds their examples again before its model answers. Needs a teachable release installed
        (``publish --teachable``)."""
        return self._teacher or self._open_teacher()

    def _open_teacher(self) -> Teacher:
        if not self.predictor.current.meta.get("teach"):
            raise PocketVisionError(f"teach: {self.model} version {self.version} has no embedding to learn on; "
                                    "publish a version with `pocketvision publish --teachable` and let devices check.")
        self._teacher = Teacher(self.predictor, self.dir / "personal")
        self.predictor.teacher = self._teacher
        return self._teacher

    # -- local state ----------------------------------------------------------------------------------
    def _read_state(self) -> dict[str, Any]:
        try:
            return json.loads((self.dir / STATE).read_text())
        except (OSError, ValueError):
            return {"bad": []}

    def _write_state(self) -> None:
        atomic_write_bytes(self.dir / STATE, json.dumps(self.state).encode())

    def _load_installed(self) -> None:
        inst = self.state.get("installed")
        if not inst:
            return
        path = Path(inst["path"])
        try:  # app storage is not trusted blindly either: each file must still be the one TUF verified
            for rel, sha in inst["files"].items():
                if sha256_file(path / rel if rel else path) != sha:
                    raise PocketVisionError(f"{path / rel}: changed on disk since it was installed")
            self.predictor.swap(self._open(path), inst["version"])
        except (OSError, PocketVisionError) as e:
            self.state.pop("installed", None)
            self._write_state()
            self._report(inst.get("version"), "failed", f"installed model unusable: {e}")

    def _open(self, path: Path):
        return open_predictor(path, threads=self.threads)

    # -- the update check -------------------------------------------------------------------------------
    def _updater(self) -> Updater:
        u = Updater(str(self.dir / "metadata"), f"{self.server}/tuf/metadata/", str(self.dir / "targets"),
                    f"{self.server}/tuf/targets/", fetcher=self.fetcher, config=UpdaterConfig(),
                    bootstrap=self._bootstrap)
        self._bootstrap = None
        return u

    @property
    def version(self) -> int | None:
        return self.predictor.version

    def check(self) -> CheckResult:
        """Refresh, decide, and install the channel's release if it differs from the running one."""
        start = self.fetcher.bytes_received
        try:
            res = self._check()
        except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as e:
            cause = f" ({type(e.__cause__).__name__}: {e.__cause__})" if e.__cause__ else ""
            res = CheckResult("failed", None, f"update refused: {type(e).__name__}: {e}{cause}")
            self._report(self.version, "failed", res.detail)
        except (OSError, urllib3.exceptions.HTTPError) as e:  # offline: try again later, keep serving
            res = CheckResult("failed", None, f"network: {e}")
        res.downloaded_bytes = self.fetcher.bytes_received - start
        self._send_traffic()
        return res

    def _send_traffic(self) -> None:
        """With each check: how many predictions each version made and how many looked unfamiliar (counts only;
        best effort: what is not sent is sent with the next check)."""
        if not self.send_reports or (issued := self.issued_id()) is None:
            return
        with self.predictor._lock:
            pending = {v: list(n) for v, n in self.predictor.traffic.items() if n[0]}
        for version, (n, unf) in pending.items():
            body = json.dumps({"model": self.model, "device_id": issued, "version": version,
                               "predictions": n, "unfamiliar": unf}).encode()
            try:
                r = self.fetcher.http.request("POST", f"{self.server}/v1/traffic", body=body,
                                              headers={**self.fetcher.headers, "Content-Type": "application/json"},
                                              timeout=urllib3.Timeout(connect=5, read=5))
                r.release_conn()
            except urllib3.exceptions.HTTPError:
                return
            if r.status < 300:
                with self.predictor._lock:
                    left = self.predictor.traffic[version]
                    left[0], left[1] = left[0] - n, left[1] - unf

    def _check(self) -> CheckResult:
        up = self._updater()
        up.refresh()
        info = up.get_targetinfo(f"{self.model}/channels/{self.channel}.json")
        if info is None:
            return CheckResult("none", self.version, f"no channel {self.channel!r} for {self.model!r} yet")
        path = up.find_cached_target(info) or up.download_target(info)
        try:
            plan = Plan.model_validate_json(Path(path).read_bytes())
        except ValueError as e:
            raise tuf_errors.RepositoryError(f"channel plan unreadable: {e}") from None
        if (plan.model, plan.channel) != (self.model, self.channel):  # a signed plan, but for something else
            raise tuf_errors.RepositoryError(f"plan is for {plan.model}/{plan.channel}")
        want, why = decision(plan, self.device_id, app_version=self.app_version, platform=self.platform,
                             metered=self.metered, current=self.version)
        if want is None:
            return CheckResult("none", self.version, why)
        if want.version in self.state.get("bad", []):
            return CheckResult("none", self.version, f"version {want.version} failed here before; not retried")
        if self.kind not in want.files or "smoke" not in want.files:
            return self._fail(want.version, f"release {want.version} has no {self.kind!r} model or smoke file")
        smoke = self._fetch_target(up, self._info(up, want.files["smoke"]), want.version)
        path = want.files[self.kind]
        if not path.endswith(FOLDER_SUFFIX):
            info = self._info(up, path)
            return self._install(want.version, self._fetch_target(up, info, want.version),
                                 {"": info.hashes["sha256"]}, smoke)
        # A folder (web page, .mlpackage): its listing, then each file it names, every one a signed target.
        listing = self._fetch_target(up, self._info(up, path), want.version)
        try:
            doc = json.loads(listing.read_bytes())
            folder, rels = str(doc["folder"]), [str(r) for r in doc["files"]]
        except (ValueError, KeyError, TypeError) as e:
            raise tuf_errors.RepositoryError(f"{path}: folder listing unreadable ({e})") from None
        base = path[: -len(FOLDER_SUFFIX)]
        if base.rsplit("/", 1)[-1] != folder:
            raise tuf_errors.RepositoryError(f"{path}: listing names folder {folder!r}")
        if any(part in ("", ".", "..") or "\\" in part for r in [folder, *rels] for part in r.split("/")):
            raise tuf_errors.RepositoryError(f"{path}: a file path leaves the folder")  # even if signed
        hashes = {}
        for rel in rels:
            info = self._info(up, f"{base}/{rel}")  # a signed target too
            self._fetch_target(up, info, want.version, f"{folder}/{rel}")
            hashes[rel] = info.hashes["sha256"]
        return self._install(want.version, self.dir / "models" / str(want.version) / folder, hashes, smoke)

    @staticmethod
    def _info(up: Updater, path: str):
        info = up.get_targetinfo(path)
        if info is None:
            raise tuf_errors.RepositoryError(f"{path} is not a signed target")
        return info

    def _fetch_target(self, up: Updater, info, version: int, rel: str | None = None) -> Path:
        dest = self.dir / "models" / str(version) / (rel or info.path.rsplit("/", 1)[-1])
        if up.find_cached_target(info, str(dest)):
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        up.download_target(info, str(tmp))  # verified against the signed length and hash before it is written
        os.replace(tmp, dest)
        return dest

    def _install(self, version: int, path: Path, hashes: dict[str, str], smoke_file: Path) -> CheckResult:
        try:
            candidate = self._open(path)
            smoke = json.loads(smoke_file.read_text())
            parity = smoke_test(candidate, smoke, self.kind)
        except Exception as e:  # noqa: BLE001 - any failure to load or run a new model keeps the old one
            return self._fail(version, f"could not load or run version {version}: {type(e).__name__}: {e}")
        if not parity.get("passed"):
            return self._fail(version, f"smoke test failed on version {version}: "
                                       f"{ {k: v for k, v in parity.items() if k != 'passed'} }")
        moved = None
        if self._teacher is not None and self._teacher.names:  # the personal classes move before the swap
            try:
                moved = self._teacher.prepare(candidate)
            except PocketVisionError as e:
                return self._fail(version, f"version {version} would lose the classes taught on this device: {e}")
        self.predictor.swap(candidate, version)
        if moved is not None:
            self._teacher.commit(moved)
        self.state["installed"] = {"version": version, "path": str(path), "files": hashes}
        self._write_state()
        self._prune(keep={version})
        self._report(version, "installed", "")
        return CheckResult("installed", version)

    def _fail(self, version: int, detail: str) -> CheckResult:
        self.state.setdefault("bad", []).append(version)
        self._write_state()
        shutil.rmtree(self.dir / "models" / str(version), ignore_errors=True)
        self._report(version, "rolled_back", detail)
        return CheckResult("failed", self.version, detail)

    def _prune(self, keep: set[int]) -> None:
        for d in (self.dir / "models").iterdir():
            if d.name.isdigit() and int(d.name) not in keep:
                shutil.rmtree(d, ignore_errors=True)

    def report(self, image: str | os.PathLike | bytes | None, predicted: str, corrected: str,
               share_pixels: bool = True, confidence: float | None = None, unfamiliar: float | None = None
               ) -> dict[str, Any]:
        """Tell the registry what the user says of the model's answer on ``image``: it said ``predicted``, the user
        says ``corrected`` (the same label: "yes, that is right", worth asking when the model was unsure).
        ``confidence``: the model's, in ``predicted``; ``unfamiliar``: its score of the photo (the review queue
        puts the least sure and least familiar first). With ``share_pixels=False`` only the labels, those two
        numbers and the model version leave the device.
        -> the server's answer (``{"id": ...}``); a one-line error if it refused."""
        issued = self.issued_id()
        if issued is None:
            raise PocketVisionError(f"{self.server}: cannot reach the registry to send the correction; try again.")
        fields: dict[str, Any] = {"model": self.model, "device_id": issued, "predicted": predicted,
                                  "corrected": corrected}
        if confidence is not None:
            fields["confidence"] = f"{float(confidence):.6f}"
        if unfamiliar is not None:
            fields["unfamiliar"] = f"{float(unfamiliar):.6f}"
        if self.version is not None:
            fields["version"] = str(self.version)
        if share_pixels and image is not None:
            data = image if isinstance(image, bytes) else Path(image).read_bytes()
            fields["image"] = ("photo", data, "application/octet-stream")  # the server judges the bytes
        try:
            r = self.fetcher.http.request("POST", f"{self.server}/v1/feedback", fields=fields,
                                          headers=self.fetcher.headers, timeout=urllib3.Timeout(connect=10, read=60))
        except urllib3.exceptions.HTTPError as e:
            raise PocketVisionError(f"{self.server}: feedback not sent ({e}); try again later.") from None
        try:
            body = json.loads(r.data)
        except ValueError:
            body = {"detail": r.data[:200].decode(errors="replace")}
        if r.status >= 400:
            raise PocketVisionError(f"feedback refused (HTTP {r.status}): {body.get('detail')}")
        return body

    def issued_id(self) -> str | None:
        """This install's identity at the registry (``POST /v1/devices`` once, then kept in the cache folder): what
        reports, traffic and corrections carry. ``device_id`` stays the device's own, for its rollout bucket.
        None when the registry cannot be reached now (asked again next time)."""
        if self.state.get("issued", {}).get("server") == self.server:
            return self.state["issued"]["id"]
        try:
            r = self.fetcher.http.request("POST", f"{self.server}/v1/devices", headers=self.fetcher.headers,
                                          timeout=urllib3.Timeout(connect=5, read=5))
            issued = json.loads(r.data)["device_id"] if r.status == 200 else None
        except (urllib3.exceptions.HTTPError, ValueError, KeyError, TypeError):
            issued = None
        if not isinstance(issued, str):
            return None
        self.state["issued"] = {"server": self.server, "id": issued}
        self._write_state()
        return issued

    def _report(self, version: int | None, state: str, detail: str) -> None:
        if not self.send_reports or (issued := self.issued_id()) is None:
            return
        body = json.dumps({"model": self.model, "device_id": issued, "version": version, "state": state,
                           "detail": detail[:500]}).encode()
        try:
            self.fetcher.http.request("POST", f"{self.server}/v1/reports", body=body,
                                      headers={**self.fetcher.headers, "Content-Type": "application/json"},
                                      timeout=urllib3.Timeout(connect=5, read=5)).release_conn()
        except urllib3.exceptions.HTTPError:
            pass  # a report is best effort: the device state is already safe


def _done(r) -> None:
    """Hand a response's connection back for reuse: its unread body must be read first (an error page left in
    the socket would be parsed as the next response's status line)."""
    try:
        r.drain_conn()
    finally:
        r.release_conn()


__all__ = ["CheckResult", "ModelUpdater", "ResumableFetcher", "SwappablePredictor", "array_b64", "smoke_test"]

