"""The registry over HTTP (FastAPI; OpenAPI docs at /docs).

Routes:
- ``GET  /tuf/metadata/{file}``, ``GET /tuf/targets/{path}``: the signed repository (device or admin token).
  ``timestamp.json`` answers ``304 Not Modified`` to a matching ``If-None-Match``: the cheap update check.
- ``POST /v1/uploads`` (admin): one artifact's bytes -> its sha256 (streamed to a temp file, size-capped).
- ``POST /v1/models/{model}/versions`` (admin): publish uploaded artifacts as the next version.
- ``PUT  /v1/models/{model}/channels/{channel}`` (admin): roll out a version to a percentage, with conditions.
- ``POST /v1/models/{model}/channels/{channel}/rollback`` (admin).
- ``GET  /v1/models``, ``GET /v1/models/{model}`` (admin): versions, channel plans, adoption.
- ``POST /v1/reports`` (device): a device's state after an update (installed, failed, rolled_back).

Tokens travel only in the ``Authorization`` header (never in URLs, so never in access logs) and are stored
hashed. The server binds 127.0.0.1 unless told otherwise; put TLS in front with a reverse proxy (README).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import defaultdict
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from ..errors import PocketVisionError
from .blobs import SHA256, TooLarge
from .plans import Conditions
from .registry import Registry, Upload
from .repo import metadata_file

ROLE_FILES = {"root", "timestamp", "snapshot", "targets"}


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_upload_bytes: int = Field(512 << 20, ge=1)
    writes_per_minute: int = Field(120, ge=1)  # per token (admin) or per device id (reports)
    token_cache_s: float = Field(10.0, ge=0)  # how long a token's role is cached: revocation takes this long
    timestamp_cache_s: float = Field(1.0, ge=0)  # how stale `timestamp.json` may be on one instance
    refresh_every_s: float = Field(300.0, gt=0)  # how often expiring metadata is checked and re-signed


class PublishRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    files: list[dict[str, Any]]  # {kind, filename, sha256, length, verification}
    info: dict[str, Any] = {}
    channel: str | None = None
    rollout: float = Field(100.0, ge=0, le=100)
    conditions: Conditions | None = None


class ChannelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int | None = Field(None, ge=1)
    rollout: float = Field(100.0, ge=0, le=100)
    conditions: Conditions | None = None


class Report(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(max_length=64)
    device_id: str = Field(min_length=8, max_length=128)
    version: int | None = None
    state: Literal["installed", "failed", "rolled_back", "checking"]
    detail: str = Field("", max_length=500)


class RateLimit:
    """Fixed one-minute windows per key: enough to stop a runaway client, nothing to tune."""

    def __init__(self, per_minute: int):
        self.per_minute, self.counts, self.window = per_minute, defaultdict(int), 0

    def hit(self, key: str) -> None:
        w = int(time.monotonic() // 60)
        if w != self.window:
            self.window, self.counts = w, defaultdict(int)
        self.counts[key] += 1
        if self.counts[key] > self.per_minute:
            raise HTTPException(429, f"rate limit: {self.per_minute} writes per minute; try again later.")


def create_app(registry: Registry, limits: Limits | None = None) -> FastAPI:
    limits = limits or Limits()
    rate = RateLimit(limits.writes_per_minute)
    token_cache: dict[str, tuple[float, tuple[int, str] | None]] = {}
    ts_cache: dict[str, Any] = {"at": -1.0}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async def refresher():
            while True:
                try:
                    await run_in_threadpool(registry.refresh_expiring)
                except PocketVisionError:
                    pass  # no online keys on this instance: another instance signs
                await asyncio.sleep(limits.refresh_every_s)
        task = asyncio.create_task(refresher())
        yield
        task.cancel()

    app = FastAPI(title="pocketvision registry", version="1", lifespan=lifespan,
                  description="Signed over-the-air model updates (TUF) and device reports.")

    @app.exception_handler(PocketVisionError)
    async def _user_error(request: Request, exc: PocketVisionError):
        return JSONResponse({"detail": str(exc)}, status_code=400)

    def role_of(authorization: str | None) -> tuple[int, str]:
        if not authorization or not authorization.startswith("Bearer "):
            raise HTTPException(401, "missing 'Authorization: Bearer <token>'", {"WWW-Authenticate": "Bearer"})
        token = authorization[7:].strip()
        key = hashlib.sha256(token.encode()).hexdigest()
        hit = token_cache.get(key)
        if hit is None or time.monotonic() - hit[0] > limits.token_cache_s:
            hit = (time.monotonic(), registry.store.token_role(token))
            token_cache[key] = hit
        if hit[1] is None:
            raise HTTPException(401, "unknown or revoked token", {"WWW-Authenticate": "Bearer"})
        return hit[1]

    def device(authorization: str | None = Header(None)) -> tuple[int, str]:
        return role_of(authorization)  # admin tokens may read too

    def admin(authorization: str | None = Header(None)) -> tuple[int, str]:
        who = role_of(authorization)
        if who[1] != "admin":
            raise HTTPException(403, "this route needs an admin token; device tokens can only read updates and "
                                "post reports")
        return who

    # -- the signed repository --------------------------------------------------------------------------
    def timestamp() -> tuple[str, bytes]:
        now = time.monotonic()
        if now - ts_cache["at"] > limits.timestamp_cache_s:
            with registry.store.reader() as c:
                body = metadata_file(c, "timestamp", None)
            if body is None:
                raise HTTPException(404, "no signed metadata yet: run `pocketvision keys new`")
            ts_cache.update(at=now, body=body, etag='"' + hashlib.sha256(body).hexdigest()[:32] + '"')
        return ts_cache["etag"], ts_cache["body"]

    @app.get("/tuf/metadata/{name}", tags=["updates"])
    def tuf_metadata(name: str, _=Depends(device), if_none_match: str | None = Header(None)):
        if name == "timestamp.json":
            etag, body = timestamp()
            headers = {"ETag": etag, "Cache-Control": "no-cache"}
            if if_none_match == etag:
                return Response(status_code=304, headers=headers)
            return Response(body, media_type="application/json", headers=headers)
        parts = name.split(".")
        if len(parts) != 3 or parts[2] != "json" or parts[1] not in ROLE_FILES - {"timestamp"} \
                or not parts[0].isdigit():
            raise HTTPException(404, "not a metadata file")
        with registry.store.reader() as c:
            body = metadata_file(c, parts[1], int(parts[0]))
        if body is None:
            raise HTTPException(404, f"no {name}")
        return Response(body, media_type="application/json", headers={"Cache-Control": "public, max-age=31536000, "
                                                                                       "immutable"})

    @app.get("/tuf/targets/{path:path}", tags=["updates"])
    def tuf_target(path: str, _=Depends(device)):
        # Consistent snapshots name a target '<dir>/<sha256>.<file>': the hash alone finds the blob.
        sha = path.rsplit("/", 1)[-1].split(".", 1)[0]
        if not SHA256.fullmatch(sha) or not registry.blobs.exists(sha):
            raise HTTPException(404, "no such target")
        return FileResponse(registry.blobs.path(sha), media_type="application/octet-stream",
                            headers={"Cache-Control": "public, max-age=31536000, immutable"})

    # -- admin ------------------------------------------------------------------------------------------
    @app.post("/v1/uploads", tags=["admin"])
    async def upload(request: Request, who=Depends(admin)):
        rate.hit(f"t{who[0]}")
        size = request.headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > limits.max_upload_bytes):
            raise HTTPException(413, f"upload over the limit of {limits.max_upload_bytes:,} bytes")
        reader = _StreamReader(request)
        try:
            sha, n = await run_in_threadpool(registry.blobs.put, reader, limits.max_upload_bytes)
        except TooLarge as e:
            raise HTTPException(413, str(e)) from None
        return {"sha256": sha, "length": n}

    @app.post("/v1/models/{model}/versions", tags=["admin"])
    def publish(model: str, req: PublishRequest, who=Depends(admin)):
        rate.hit(f"t{who[0]}")
        try:
            uploads = [Upload(kind=str(f["kind"]), filename=str(f["filename"]), sha256=str(f["sha256"]),
                              length=int(f["length"]), verification=dict(f.get("verification") or {}))
                       for f in req.files]
        except (KeyError, TypeError, ValueError) as e:
            raise HTTPException(422, f"files: each needs kind, filename, sha256, length ({e})") from None
        for u in uploads:
            if not SHA256.fullmatch(u.sha256):
                raise HTTPException(422, f"files: {u.filename!r} sha256 is not a sha256")
            if registry.blobs.exists(u.sha256) and registry.blobs.path(u.sha256).stat().st_size != u.length:
                raise HTTPException(422, f"files: {u.filename!r} length does not match the upload")
        out = registry.publish(model, uploads, req.info, req.channel, req.rollout, req.conditions)
        ts_cache["at"] = -1.0  # this instance's own change is visible to its next check at once
        return out

    @app.put("/v1/models/{model}/channels/{channel}", tags=["admin"])
    def set_channel(model: str, channel: str, req: ChannelRequest, who=Depends(admin)):
        rate.hit(f"t{who[0]}")
        out = registry.set_channel(model, channel, req.version, req.rollout, req.conditions)
        ts_cache["at"] = -1.0  # this instance's own change is visible to its next check at once
        return out

    @app.post("/v1/models/{model}/channels/{channel}/rollback", tags=["admin"])
    def rollback(model: str, channel: str, who=Depends(admin)):
        rate.hit(f"t{who[0]}")
        out = registry.rollback(model, channel)
        ts_cache["at"] = -1.0  # this instance's own change is visible to its next check at once
        return out

    @app.get("/v1/models", tags=["admin"])
    def models(_=Depends(admin)):
        return {"models": registry.models()}

    @app.get("/v1/models/{model}", tags=["admin"])
    def status(model: str, _=Depends(admin)):
        return registry.status(model)

    # -- devices ----------------------------------------------------------------------------------------
    @app.post("/v1/reports", tags=["devices"])
    def report(r: Report, _=Depends(device)):
        rate.hit(f"d{r.device_id}")
        registry.store.report(r.model, r.device_id, r.version, r.state, r.detail)
        return {"ok": True}

    @app.get("/healthz", include_in_schema=False)
    def healthz():
        return {"ok": True}

    return app


class _StreamReader:
    """A file-like ``read`` over the request body, for the blob store's thread (bytes arrive on the loop)."""

    def __init__(self, request: Request):
        self.it = request.stream().__aiter__()
        self.loop = asyncio.get_running_loop()
        self.buf = b""

    async def _next(self) -> bytes | None:
        try:
            return await self.it.__anext__()
        except StopAsyncIteration:
            return None

    def read(self, n: int = -1) -> bytes:
        while not self.buf:
            chunk = asyncio.run_coroutine_threadsafe(self._next(), self.loop).result()
            if chunk is None:
                return b""
            self.buf = chunk
        out, self.buf = self.buf[:n] if n > 0 else self.buf, self.buf[n:] if n > 0 else b""
        return out


def serve(store: str | Path, db: str | None = None, blobs: str | None = None, keys: str | Path | None = None,
          host: str = "127.0.0.1", port: int = 8000, limits: Limits | None = None, log_level: str = "info") -> None:
    import uvicorn
    registry = Registry(store, db, blobs, keys)
    if not registry.initialised:
        raise PocketVisionError(f"{store}: no signed metadata yet; run `pocketvision keys new --store {store}` "
                                "first.")
    registry.blobs.clean_partial()
    uvicorn.run(create_app(registry, limits), host=host, port=port, log_level=log_level,
                proxy_headers=False, server_header=False)
