"""The TUF repository, kept in the registry's database: python-tuf's ``Repository`` over SQL rows.

Each role's metadata is one row per version (``tuf_metadata``); a new version is signed and inserted inside
the caller's transaction, so new targets, snapshot and timestamp become visible together at commit. Root is
consistent-snapshot: every version of every role stays addressable (``N.targets.json``) and targets are
served by content hash, so a client that read timestamp N never meets a half-updated repository.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from securesystemslib.signer import Signer
from tuf.api.metadata import MetaFile, Metadata, Root, Snapshot, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer
from tuf.repository import Repository

from ..errors import PocketVisionError
from .store import tuf_metadata

# How long each role's signature holds; the server re-signs the online roles before they run out (the
# timestamp's short life bounds how long a mirror can freeze a device on old metadata).
EXPIRY = {"root": timedelta(days=365), "targets": timedelta(days=90), "snapshot": timedelta(days=7),
          "timestamp": timedelta(days=1)}
_NEW = {"root": Root, "targets": Targets, "snapshot": Snapshot, "timestamp": Timestamp}
SERIALIZER = JSONSerializer(compact=True)


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


class SqlRepository(Repository):
    def __init__(self, conn: sa.Connection, signers: dict[str, list[Signer]],
                 expiry: dict[str, timedelta] | None = None):
        self.conn, self.signers, self.expiry = conn, signers, {**EXPIRY, **(expiry or {})}

    def latest(self, role: str) -> tuple[int, bytes] | None:
        row = self.conn.execute(sa.select(tuf_metadata.c.version, tuf_metadata.c.body)
                                .where(tuf_metadata.c.role == role)
                                .order_by(tuf_metadata.c.version.desc()).limit(1)).first()
        return (row.version, row.body) if row else None

    def open(self, role: str) -> Metadata:
        row = self.latest(role)
        if row is None:
            md = Metadata(_NEW[role]())
            md.signed.version = 0  # close() makes the first stored version 1
            return md
        return Metadata.from_bytes(row[1])

    def close(self, role: str, md: Metadata) -> None:
        signers = self.signers.get(role) or []
        if not signers:
            raise PocketVisionError(f"no {role} key to sign with; create keys with `pocketvision keys new` "
                                    f"(root keys are needed only for `keys rotate`).")
        md.signed.version += 1
        md.signed.expires = now() + self.expiry[role]
        md.signatures.clear()
        for s in signers:
            md.sign(s, append=True)
        self.conn.execute(tuf_metadata.insert().values(role=role, version=md.signed.version,
                                                       body=md.to_bytes(SERIALIZER), created=time.time()))

    @property
    def targets_infos(self) -> dict[str, MetaFile]:
        row = self.latest("targets")
        return {"targets.json": MetaFile(version=row[0] if row else 0)}

    @property
    def snapshot_info(self) -> MetaFile:
        row = self.latest("snapshot")
        return MetaFile(version=row[0] if row else 0)

    def publish_targets(self) -> None:
        """After a targets edit: a new snapshot and timestamp naming it (one transaction with the edit)."""
        self.do_snapshot()
        self.do_timestamp()

    def refresh_expiring(self, margin: float = 0.5) -> bool:
        """Re-sign online roles with less than ``margin`` of their life left -> whether anything changed."""
        changed = False
        for role in ("targets", "snapshot", "timestamp"):
            row = self.latest(role)
            if row is None:
                continue
            left = Metadata.from_bytes(row[1]).signed.expires - now()
            if left < self.expiry[role] * margin:
                if role == "targets":
                    with self.edit_targets():
                        pass
                elif role == "snapshot":
                    self.do_snapshot(force=True)
                else:
                    self.do_timestamp(force=True)
                changed = True
        if changed:
            self.do_snapshot()
            self.do_timestamp()
        return changed


def metadata_file(conn: sa.Connection, role: str, version: int | None) -> bytes | None:
    q = sa.select(tuf_metadata.c.body).where(tuf_metadata.c.role == role)
    q = q.where(tuf_metadata.c.version == version) if version is not None else \
        q.order_by(tuf_metadata.c.version.desc()).limit(1)
    row = conn.execute(q).first()
    return row.body if row else None
