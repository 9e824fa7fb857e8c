"""What the registry does (init, rotate keys, publish, roll out, roll back, report), independent of HTTP.

The server (``app``) and the CLI's local verbs (``keys``, ``tokens``) both call this; every change is one
``Store.writer()`` transaction that also signs the TUF metadata naming it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from tuf.api.metadata import TargetFile

from ..errors import PocketVisionError
from ..ota.plans import FOLDER_SUFFIX, NAME, Conditions, Plan, Release
from . import keys as K
from .artifact_check import check_release
from .blobs import open_blobs
from .repo import SqlRepository, metadata_file
from .store import artifacts, channels, db_url, dumps, open_store, tuf_metadata, versions

FILENAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
MEMBER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")  # inside a folder export ('_headers' too), never hidden
UNVERIFIED_KINDS = ("smoke", "bundle", "manifest")  # inputs to checks, not models a device runs
MAX_MEMBERS = 4096


@dataclass
class Member:
    path: str  # relative, '/'-separated
    sha256: str
    length: int


@dataclass
class Upload:
    kind: str
    filename: str
    sha256: str | None  # None for a folder: its listing is made here
    length: int | None
    verification: dict[str, Any]
    members: list[Member] | None = None


def check_member(rel: str) -> str:
    parts = rel.split("/") if isinstance(rel, str) else [""]
    if not 1 <= len(parts) <= 8 or not all(MEMBER.fullmatch(p) and ".." not in p for p in parts):
        raise PocketVisionError(f"folder member {str(rel)[:80]!r}: a relative path of names made of letters, "
                                "digits, '.', '_', '-', none starting with '.'.")
    return rel


def folder_listing(u: Upload) -> bytes:
    return json.dumps({"folder": u.filename, "files": sorted(m.path for m in u.members or [])}).encode()


def _same_fs(a: Path, b: Path) -> bool:
    return a.stat().st_dev == b.stat().st_dev


def check_name(value: str, what: str) -> str:
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise PocketVisionError(f"{what} {str(value)[:80]!r}: use 1-64 lowercase letters, digits, '.', '_' or '-', "
                                "starting with a letter or digit.")
    return value


class Registry:
    def __init__(self, store_dir: str | Path, db: str | None = None, blobs: str | None = None,
                 keys_dir: str | Path | None = None):
        self.dir = Path(store_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.store = open_store(db_url(db, self.dir))
        self.blobs = open_blobs(blobs, self.dir)
        self.keys_dir = Path(keys_dir) if keys_dir else self.dir / "keys"
        self.reload_keys()

    def reload_keys(self) -> None:
        self.keys = K.load_keys(self.keys_dir)
        self.signers = {role: [k.signer for k in ks] for role, ks in self.keys.items()}

    def repo(self, conn: sa.Connection, **kw) -> SqlRepository:
        """The TUF repository on ``conn``, signing with the keys root names now: after `keys rotate` (by the
        CLI or another instance) the key files are read again, so nothing is signed with a revoked key."""
        body = metadata_file(conn, "root", None)
        if body is not None:
            from tuf.api.metadata import Metadata
            root = Metadata.from_bytes(body).signed
            def stale(r: str) -> bool:
                have = {s.public_key.keyid for s in self.signers[r]}
                return bool(have - set(root.roles[r].keyids)) or not have
            if any(stale(r) for r in K.ONLINE_ROLES):
                self.reload_keys()
            self.signers = {r: [s for s in self.signers[r] if r == "root" or s.public_key.keyid
                                in root.roles[r].keyids] for r in K.ROLES}
        return SqlRepository(conn, self.signers, **kw)

    @property
    def initialised(self) -> bool:
        with self.store.reader() as c:
            return c.execute(sa.select(tuf_metadata.c.version).limit(1)).first() is not None

    # -- keys -----------------------------------------------------------------------------------------
    def init(self, root_keys: int = 1, root_threshold: int = 1) -> dict[str, Any]:
        """New keys for every role and the first signed metadata (root v1 is what apps ship with)."""
        if self.initialised:
            raise PocketVisionError(f"{self.dir}: already has signed metadata; use `pocketvision keys rotate`.")
        if not 1 <= root_threshold <= root_keys:
            raise PocketVisionError(f"--root-threshold {root_threshold}: must be between 1 and --root-keys "
                                    f"({root_keys}).")
        for role in K.ROLES:
            for _ in range(root_keys if role == "root" else 1):
                K.generate(self.keys_dir, role)
        K.new_manifest_key(self.keys_dir)
        self.reload_keys()
        with self.store.writer() as conn:
            repo = self.repo(conn)
            with repo.edit_root() as root:
                for role, ks in self.keys.items():
                    for k in ks:
                        root.add_key(k.public, role)
                root.roles["root"].threshold = root_threshold
                root.consistent_snapshot = True
            with repo.edit_targets():
                pass
            repo.do_snapshot(force=True)
            repo.do_timestamp(force=True)
        return self.describe_keys()

    def describe_keys(self) -> dict[str, Any]:
        with self.store.reader() as c:
            body = metadata_file(c, "root", None)
        if body is None:
            raise PocketVisionError(f"{self.dir}: no keys yet; run `pocketvision keys new --store {self.dir}`.")
        from tuf.api.metadata import Metadata
        root = Metadata.from_bytes(body).signed
        local = {k.keyid: k.path.name for ks in self.keys.values() for k in ks}
        return {"root_version": root.version, "expires": root.expires.isoformat(),
                "roles": {r: {"threshold": root.roles[r].threshold,
                              "keys": [{"keyid": kid, "file": local.get(kid)} for kid in root.roles[r].keyids]}
                          for r in K.ROLES}}

    def root_json(self, version: int | None = None) -> bytes:
        with self.store.reader() as c:
            body = metadata_file(c, "root", version)
        if body is None:
            raise PocketVisionError(f"{self.dir}: no root metadata{f' version {version}' if version else ''}.")
        return body

    def rotate(self, role: str) -> dict[str, Any]:
        """Replace ``role``'s keys with a new one: a new root (signed by the old and new root keys) revokes the
        old key, and ``role``'s metadata is re-signed with the new key, so the old key signs nothing a client
        will accept any more."""
        if role not in K.ROLES:
            raise PocketVisionError(f"--role {role!r}: expected one of {', '.join(K.ROLES)}.")
        old_root = list(self.keys["root"])
        if not old_root:
            raise PocketVisionError(f"{self.keys_dir}: no root key here; rotation is signed by root (bring the "
                                    "offline root key files back into this folder).")
        old = list(self.keys[role])
        new = K.generate(self.keys_dir, role)
        try:
            with self.store.writer() as conn:
                root_signers = [k.signer for k in old_root] + ([new.signer] if role == "root" else [])
                repo = SqlRepository(conn, {**self.signers, "root": root_signers})
                with repo.edit_root() as root:
                    for k in old:
                        if k.keyid in root.roles[role].keyids:
                            root.revoke_key(k.keyid, role)
                    root.add_key(new.public, role)
                    if role == "root":
                        root.roles["root"].threshold = 1
                repo = SqlRepository(conn, {**self.signers, role: [new.signer]})
                if role == "targets":
                    with repo.edit_targets():
                        pass
                if role in ("targets", "snapshot"):
                    repo.do_snapshot(force=True)
                repo.do_timestamp(force=True)
        except BaseException:
            new.path.unlink(missing_ok=True)
            raise
        for k in old:
            K.retire(k)
        self.reload_keys()
        return self.describe_keys()

    # -- publish / channels ---------------------------------------------------------------------------
    def publish(self, model: str, uploads: list[Upload], info: dict[str, Any], channel: str | None = None,
                rollout: float = 100.0, conditions: Conditions | None = None, check: bool = True
                ) -> dict[str, Any]:
        """Sign ``uploads`` as the next version of ``model``. ``check``: run each model on the smoke photos here
        first (``artifact_check``); off only for a registry that cannot run models, devices then check alone."""
        check_name(model, "model name")
        if channel is not None:
            check_name(channel, "channel")
        if any(u.kind == "manifest" for u in uploads):
            raise PocketVisionError("artifact kind 'manifest' is the registry's own signature; do not upload one.")
        kinds = [u.kind for u in uploads]
        if len(set(kinds)) != len(kinds):
            raise PocketVisionError(f"each artifact kind once per version; got {kinds}.")
        runnable = [u for u in uploads if u.kind not in UNVERIFIED_KINDS]
        if not runnable:
            raise PocketVisionError("a version needs at least one exported model (onnx, tflite, ...).")
        for u in uploads:
            check_name(u.kind, "artifact kind")
            if not FILENAME.fullmatch(u.filename) or ".." in u.filename:
                raise PocketVisionError(f"artifact file name {u.filename[:80]!r}: letters, digits, '.', '_', '-'.")
            if u.kind not in UNVERIFIED_KINDS and not (u.verification or {}).get("passed"):
                raise PocketVisionError(f"{u.filename}: its verification did not pass (or is missing); only "
                                        "verified exports are published (`pocketvision verify`).")
            if u.members is not None:
                if not 1 <= len(u.members) <= MAX_MEMBERS or len({m.path for m in u.members}) != len(u.members):
                    raise PocketVisionError(f"{u.filename}: a folder needs 1-{MAX_MEMBERS} distinct files.")
                for m in u.members:
                    check_member(m.path)
                    if not self.blobs.exists(m.sha256):
                        raise PocketVisionError(f"{u.filename}/{m.path}: content {m.sha256[:12]} was not uploaded.")
                u.sha256, u.length = self.blobs.put_bytes(folder_listing(u))
            elif not u.sha256 or not self.blobs.exists(u.sha256):
                raise PocketVisionError(f"{u.filename}: content {str(u.sha256)[:12]} was not uploaded.")
        checks: dict[str, Any] = {}
        if check:
            checks = check_release(uploads, self._copy_blob, {u.kind for u in runnable})
            for u in runnable:
                u.verification = {**(u.verification or {}), "registry": checks[u.kind]}
        with self.store.writer() as conn:
            version = (conn.execute(sa.select(sa.func.max(versions.c.version)).where(versions.c.model == model))
                       .scalar() or 0) + 1
            uploads = uploads + self._manifest(model, version, uploads)
            conn.execute(versions.insert().values(model=model, version=version, created=time.time(),
                                                  info=dumps(info)))
            repo = self.repo(conn)
            with repo.edit_targets() as t:
                for u in uploads:
                    path = f"{model}/{version}/{u.filename}"
                    if u.members is not None:
                        for m in u.members:
                            t.targets[f"{path}/{m.path}"] = TargetFile(m.length, {"sha256": m.sha256},
                                                                       f"{path}/{m.path}")
                        path += FOLDER_SUFFIX
                    conn.execute(artifacts.insert().values(model=model, version=version, kind=u.kind, path=path,
                                                           sha256=u.sha256, length=u.length,
                                                           verification=dumps(u.verification or {})))
                    t.targets[path] = TargetFile(u.length, {"sha256": u.sha256}, path)
                if channel is not None:
                    self._put_plan(conn, t, model, channel, lambda old: self._promote(
                        conn, old, model, channel, version, rollout, conditions))
            repo.publish_targets()
        return {"model": model, "version": version, "channel": channel, "rollout": rollout if channel else None,
                "checked": checks}

    def _manifest(self, model: str, version: int, uploads: list[Upload]) -> list[Upload]:
        """The version's files, signed as one OpenSSF model-signing manifest (``model.sig``, itself a TUF target)."""
        if not (self.keys_dir / K.MANIFEST_KEY).is_file() or K.model_signing_cli() is None:
            return []  # no manifest key, or no `model_signing` here: TUF alone vouches for the files
        import tempfile
        with tempfile.TemporaryDirectory(prefix="pv-manifest-") as tmp:
            files = Path(tmp) / f"{model}-{version}"
            files.mkdir()
            for u in uploads:
                members = [(f"{u.filename}/{m.path}", m.sha256) for m in u.members] if u.members is not None \
                    else [(u.filename, u.sha256)]
                for rel, sha in members:
                    self._copy_blob(sha, files / rel)
            sig = Path(tmp) / "model.sig"
            K.sign_manifest(self.keys_dir, files, sig)
            sha, n = self.blobs.put_bytes(sig.read_bytes())
        return [Upload("manifest", "model.sig", sha, n, {})]

    def _copy_blob(self, sha: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        local = self.blobs.local_path(sha)
        if local is not None:
            os.link(local, dest) if _same_fs(local, dest.parent) else shutil.copyfile(local, dest)
            return
        chunks, _ = self.blobs.read(sha)
        with open(dest, "wb") as f:
            for c in chunks:
                f.write(c)

    def set_channel(self, model: str, channel: str, version: int | None, rollout: float,
                    conditions: Conditions | None = None) -> dict[str, Any]:
        """Point ``channel`` at ``version`` for ``rollout`` percent (the same version: change the percentage)."""
        check_name(model, "model name"), check_name(channel, "channel")
        with self.store.writer() as conn:
            repo = self.repo(conn)
            with repo.edit_targets() as t:
                plan = self._put_plan(conn, t, model, channel, lambda old: self._promote(
                    conn, old, model, channel, version, rollout, conditions))
            repo.publish_targets()
        return plan.model_dump()

    def rollback(self, model: str, channel: str) -> dict[str, Any]:
        """Every device on ``channel`` back to the previous release, at once (a new signed plan)."""
        def back(old: Plan | None) -> Plan:
            if old is None or old.previous is None:
                raise PocketVisionError(f"{model}/{channel}: nothing to roll back to (no previous release).")
            return Plan(model=model, channel=channel, serial=old.serial + 1, current=old.previous, rollout=100,
                        previous=None, conditions=Conditions(), rolled_back_from=old.current.version)
        with self.store.writer() as conn:
            repo = self.repo(conn)
            with repo.edit_targets() as t:
                plan = self._put_plan(conn, t, model, channel, back)
            repo.publish_targets()
        return plan.model_dump()

    def _release(self, conn: sa.Connection, model: str, version: int) -> Release:
        rows = conn.execute(sa.select(artifacts.c.kind, artifacts.c.path).where(
            artifacts.c.model == model, artifacts.c.version == version)).all()
        if not rows:
            raise PocketVisionError(f"{model} has no version {version}; `pocketvision models {model}` lists them.")
        return Release(version=version, files={r.kind: r.path for r in rows})

    def _promote(self, conn, old: Plan | None, model: str, channel: str, version: int | None, rollout: float,
                 conditions: Conditions | None) -> Plan:
        if version is None:
            if old is None:
                raise PocketVisionError(f"{model}/{channel} has no release yet; give --version.")
            version = old.current.version
        release = self._release(conn, model, version)
        if old is not None and old.current.version == version:  # same release: a new percentage/conditions
            return old.model_copy(update={"serial": old.serial + 1, "rollout": rollout, "rolled_back_from": None,
                                          "conditions": conditions or old.conditions})
        return Plan(model=model, channel=channel, serial=(old.serial + 1) if old else 1, current=release,
                    rollout=rollout, previous=old.current if old else None, conditions=conditions or Conditions())

    def _put_plan(self, conn: sa.Connection, targets, model: str, channel: str, make) -> Plan:
        row = conn.execute(sa.select(channels.c.plan).where(channels.c.model == model,
                                                           channels.c.channel == channel)).first()
        old = Plan.model_validate_json(row.plan) if row else None
        plan = make(old)
        body = plan.model_dump_json().encode()
        sha, n = self.blobs.put_bytes(body)
        path = f"{model}/channels/{channel}.json"
        targets.targets[path] = TargetFile(n, {"sha256": sha}, path)
        values = {"plan": body.decode(), "updated": time.time()}
        if row:
            conn.execute(channels.update().where(channels.c.model == model, channels.c.channel == channel)
                         .values(**values))
        else:
            conn.execute(channels.insert().values(model=model, channel=channel, **values))
        return plan

    # -- reading --------------------------------------------------------------------------------------
    def models(self) -> list[str]:
        with self.store.reader() as c:
            return [r[0] for r in c.execute(sa.select(versions.c.model).distinct().order_by(versions.c.model))]

    def has_version(self, model: str, version: int | None = None) -> bool:
        """Whether ``model`` (and its ``version``, when given) was published here."""
        q = sa.select(versions.c.version).where(versions.c.model == model)
        if version is not None:
            q = q.where(versions.c.version == version)
        with self.store.reader() as c:
            return c.execute(q.limit(1)).first() is not None

    def status(self, model: str) -> dict[str, Any]:
        check_name(model, "model name")
        with self.store.reader() as c:
            vs = c.execute(sa.select(versions).where(versions.c.model == model).order_by(versions.c.version)).all()
            if not vs:
                raise PocketVisionError(f"no model named {model!r} on this server.")
            arts = c.execute(sa.select(artifacts).where(artifacts.c.model == model)).all()
            chans = c.execute(sa.select(channels).where(channels.c.model == model)).all()
        return {"model": model,
                "versions": [{"version": v.version, "created": v.created, **json.loads(v.info),
                              "artifacts": {a.kind: {"path": a.path, "bytes": a.length, "sha256": a.sha256}
                                            for a in arts if a.version == v.version}} for v in vs],
                "channels": {ch.channel: json.loads(ch.plan) for ch in chans},
                "adoption": self.store.adoption(model), "traffic": self.store.traffic(model)}

    def refresh_expiring(self) -> bool:
        with self.store.writer() as conn:
            return self.repo(conn).refresh_expiring()
