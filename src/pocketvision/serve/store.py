"""The registry's state in one SQL database: SQLite by default, PostgreSQL by URL, the same code for both.

Everything a publish, a rollout or a rollback changes (versions, artifacts, channel plans and the signed TUF
metadata itself) is written in one transaction, so a server killed half-way leaves either the old state or the
new one, never a half-visible version. Writers are serialised (``writer()``): ``BEGIN IMMEDIATE`` on SQLite, a
transaction-scoped advisory lock on PostgreSQL, so two publishes of one name never race for a version number
even across server instances. The schema is versioned with Alembic (``serve/migrations``); ``open_store``
upgrades it to head.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

from ..errors import PocketVisionError

metadata = sa.MetaData()

tokens = sa.Table(
    "tokens", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("role", sa.String(20), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False, unique=True),  # sha256 of the token: never the token
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("revoked", sa.Boolean, nullable=False, default=False),
)
versions = sa.Table(
    "versions", metadata,
    sa.Column("model", sa.String(100), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("info", sa.Text, nullable=False),  # JSON: bundle sha256, task, labels, notes
)
artifacts = sa.Table(
    "artifacts", metadata,
    sa.Column("model", sa.String(100), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("kind", sa.String(20), primary_key=True),  # onnx, tflite, bundle, smoke, ...
    sa.Column("path", sa.String(400), nullable=False),  # the TUF target path
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("length", sa.BigInteger, nullable=False),
    sa.Column("verification", sa.Text, nullable=False),  # JSON: the verify report it passed
)
channels = sa.Table(
    "channels", metadata,
    sa.Column("model", sa.String(100), primary_key=True),
    sa.Column("channel", sa.String(50), primary_key=True),
    sa.Column("plan", sa.Text, nullable=False),  # JSON: plans.Plan
    sa.Column("updated", sa.Float, nullable=False),
)
tuf_metadata = sa.Table(
    "tuf_metadata", metadata,
    sa.Column("role", sa.String(20), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
)
devices = sa.Table(
    "devices", metadata,
    sa.Column("model", sa.String(100), primary_key=True),
    sa.Column("device", sa.String(64), primary_key=True),  # hashed on the server: ids stay pseudonymous
    sa.Column("version", sa.Integer, nullable=True),
    sa.Column("state", sa.String(20), nullable=False),
    sa.Column("detail", sa.String(500), nullable=False, default=""),
    sa.Column("updated", sa.Float, nullable=False),
)

# Per version: predictions devices made and how many of them the model flagged as unlike its training photos
# (models/familiarity.py). Counts only: no photo, no device id.
traffic = sa.Table(
    "traffic", metadata,
    sa.Column("model", sa.String(100), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("predictions", sa.BigInteger, nullable=False),
    sa.Column("unfamiliar", sa.BigInteger, nullable=False),
    sa.Column("updated", sa.Float, nullable=False),
)

feedback = sa.Table(
    "feedback", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(100), nullable=False, index=True),
    sa.Column("version", sa.Integer, nullable=True),
    sa.Column("device", sa.String(64), nullable=False),  # hashed, as in `devices`
    sa.Column("predicted", sa.String(200), nullable=False),
    sa.Column("corrected", sa.String(200), nullable=False),
    sa.Column("image_sha256", sa.String(64), nullable=True),  # None: the user did not share the photo
    sa.Column("image_type", sa.String(10), nullable=True),  # jpeg | png | webp, from the bytes, not the header
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("status", sa.String(20), nullable=False),  # new | confirmed | rejected
    sa.Column("label", sa.String(200), nullable=True),  # the reviewed label (defaults to `corrected`)
    sa.Column("confidence", sa.Float, nullable=True),  # the model's confidence in `predicted`, as the device saw it
    sa.Column("unfamiliar", sa.Float, nullable=True),  # its unfamiliarity score of the photo (models/familiarity.py)
)

TOKEN_ROLES = ("admin", "device")
MIGRATIONS = Path(__file__).with_name("migrations")


def db_url(db: str | None, store: Path) -> str:
    if db is None:
        return f"sqlite:///{store / 'registry.db'}"
    if not db.startswith(("sqlite:", "postgresql")):
        raise PocketVisionError(f"--db {db!r}: expected sqlite:///PATH or postgresql://USER@HOST/DB.")
    if db.startswith("postgresql://"):  # psycopg 3 (`pip install 'pocketvision[postgres]'`), not SQLAlchemy's default
        db = "postgresql+psycopg://" + db[len("postgresql://"):]
    return db


def _engine(url: str) -> sa.Engine:
    if url.startswith("sqlite"):
        eng = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(eng, "connect")
        def _connect(dbapi_conn, _rec):  # SQLAlchemy's recipe: let SQLAlchemy, not pysqlite, emit BEGIN
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
            cur.execute("PRAGMA synchronous=FULL")  # a committed publish survives power loss
            cur.close()

        @event.listens_for(eng, "begin")
        def _begin(conn):
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get("writer") else "BEGIN")
        return eng
    return sa.create_engine(url, pool_pre_ping=True)


class Store:
    def __init__(self, url: str):
        self.url = url
        self.engine = _engine(url)

    @contextmanager
    def reader(self) -> Iterator[sa.Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def writer(self) -> Iterator[sa.Connection]:
        """One serialised read-modify-write transaction (committed on success, rolled back on any error)."""
        with self.engine.connect() as conn:
            conn.info["writer"] = True
            try:
                with conn.begin():
                    if conn.dialect.name == "postgresql":
                        conn.execute(sa.text("SELECT pg_advisory_xact_lock(7060504)"))
                    yield conn
            finally:
                conn.info.pop("writer", None)

    # -- tokens ---------------------------------------------------------------------------------------
    def new_token(self, name: str, role: str) -> str:
        if role not in TOKEN_ROLES:
            raise PocketVisionError(f"token role {role!r}: expected one of {', '.join(TOKEN_ROLES)}.")
        token = f"pv{role[0]}_" + secrets.token_urlsafe(32)
        with self.writer() as c:
            c.execute(tokens.insert().values(name=name, role=role, hash=token_hash(token), created=time.time(),
                                             revoked=False))
        return token

    def token_role(self, token: str) -> tuple[int, str] | None:
        with self.reader() as c:
            row = c.execute(sa.select(tokens.c.id, tokens.c.role).where(
                tokens.c.hash == token_hash(token), tokens.c.revoked.is_(False))).first()
        return (row.id, row.role) if row else None

    def list_tokens(self) -> list[dict[str, Any]]:
        with self.reader() as c:
            return [dict(r._mapping) for r in c.execute(
                sa.select(tokens.c.id, tokens.c.name, tokens.c.role, tokens.c.created, tokens.c.revoked))]

    def revoke_token(self, token_id: int) -> None:
        with self.writer() as c:
            if not c.execute(tokens.update().where(tokens.c.id == token_id).values(revoked=True)).rowcount:
                raise PocketVisionError(f"no token with id {token_id}; `pocketvision tokens list` shows them.")

    # -- devices --------------------------------------------------------------------------------------
    def report(self, model: str, device: str, version: int | None, state: str, detail: str) -> None:
        key = device_key(device)
        with self.writer() as c:
            row = {"version": version, "state": state, "detail": detail[:500], "updated": time.time()}
            if c.execute(devices.update().where(devices.c.model == model, devices.c.device == key)
                         .values(**row)).rowcount == 0:
                c.execute(devices.insert().values(model=model, device=key, **row))

    def add_traffic(self, model: str, version: int, predictions: int, unfamiliar: int) -> None:
        with self.writer() as c:
            up = traffic.update().where(traffic.c.model == model, traffic.c.version == version).values(
                predictions=traffic.c.predictions + predictions, unfamiliar=traffic.c.unfamiliar + unfamiliar,
                updated=time.time())
            if c.execute(up).rowcount == 0:
                c.execute(traffic.insert().values(model=model, version=version, predictions=predictions,
                                                  unfamiliar=unfamiliar, updated=time.time()))

    def traffic(self, model: str) -> list[dict[str, Any]]:
        """Per version: predictions, how many looked unfamiliar, and that share (drift, before anyone complains)."""
        with self.reader() as c:
            rows = c.execute(sa.select(traffic.c.version, traffic.c.predictions, traffic.c.unfamiliar)
                             .where(traffic.c.model == model).order_by(traffic.c.version))
            return [{**dict(r._mapping), "unfamiliar_share": r.unfamiliar / r.predictions if r.predictions else 0.0}
                    for r in rows]

    def adoption(self, model: str) -> list[dict[str, Any]]:
        with self.reader() as c:
            rows = c.execute(sa.select(devices.c.version, devices.c.state, sa.func.count().label("devices"))
                             .where(devices.c.model == model).group_by(devices.c.version, devices.c.state)
                             .order_by(devices.c.version, devices.c.state))
            return [dict(r._mapping) for r in rows]


def device_key(device_id: str) -> str:
    return hashlib.sha256(device_id.encode()).hexdigest()[:32]


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def open_store(url: str) -> Store:
    """The store at ``url``, its schema migrated to the current version."""
    from alembic import command
    from alembic.config import Config
    store = Store(url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    try:
        with store.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    except sa.exc.OperationalError as e:
        raise PocketVisionError(f"cannot open the registry database {url}: {e.orig}") from None
    return store


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))
