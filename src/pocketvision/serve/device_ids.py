"""Device identities the registry issues, so that figures count devices, not the ids a client makes up.

A device asks once (``POST /v1/devices``) and keeps the answer: ``pvd-<random>.<mac>``, where the MAC is an
HMAC-SHA256 of the random part and the id of the token that asked, under a secret only the registry holds
(``device-ids.secret`` in the keys folder, so every instance of a registry knows it). Reports, traffic counts and
corrections must carry an id issued to the token they come with; issuing is rate-limited per source address
and per token. One token that lies can then add devices to the adoption figures only as fast as it is issued
ids, and cannot speak for a device whose id it does not know.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

SECRET_FILE = "device-ids.secret"
_ID = re.compile(r"pvd-([0-9a-f]{24})\.([0-9a-f]{32})")


def load_secret(keys_dir: Path) -> bytes:
    """The registry's device-id secret, made on first use (32 random bytes, mode 0600, written atomically so two
    instances starting at once agree on one)."""
    path = keys_dir / SECRET_FILE
    if not path.is_file():
        keys_dir.mkdir(parents=True, exist_ok=True)
        tmp = keys_dir / f".{SECRET_FILE}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
        try:
            os.link(tmp, path)  # fails if another instance made it first: theirs is the one
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    data = path.read_bytes()
    if len(data) < 32:
        raise ValueError(f"{path}: a device-id secret of {len(data)} bytes; delete it to make a new one")
    return data


class DeviceIds:
    def __init__(self, secret: bytes):
        self.secret = secret

    def _mac(self, token_id: int, part: str) -> str:
        return hmac.new(self.secret, f"{token_id}/{part}".encode(), hashlib.sha256).hexdigest()[:32]

    def issue(self, token_id: int) -> str:
        part = secrets.token_hex(12)
        return f"pvd-{part}.{self._mac(token_id, part)}"

    def valid(self, device_id: str, token_id: int) -> bool:
        m = _ID.fullmatch(device_id)
        return bool(m) and hmac.compare_digest(m.group(2), self._mac(token_id, m.group(1)))
