"""Signing keys of the update repository: Ed25519, one folder, one file per key, grouped by TUF role.

Layout of ``KEYS_DIR``: ``<role>-<keyid[:12]>.pem`` (PKCS#8, mode 0600). The root keys sign only root
metadata and can be moved offline after ``keys new`` (the server signs with the three online roles;
``keys rotate`` needs the root keys back). Separating roles is what makes a stolen timestamp key unable to
ship a model: TUF checks each role's signature against the keys root names for that role.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import CryptoSigner, SSlibKey

from ..errors import PocketVisionError

ROLES = ("root", "targets", "snapshot", "timestamp")
ONLINE_ROLES = ("targets", "snapshot", "timestamp")
# The OpenSSF model-signing manifest of each version is signed with its own ECDSA P-256 key (what
# model-signing's key signer takes), separate from the TUF roles: `manifest.pem` / `manifest.pub`.
MANIFEST_KEY = "manifest.pem"
MANIFEST_PUB = "manifest.pub"


@dataclass
class Key:
    role: str
    path: Path
    signer: CryptoSigner

    @property
    def public(self) -> SSlibKey:
        return self.signer.public_key

    @property
    def keyid(self) -> str:
        return self.signer.public_key.keyid


def generate(keys_dir: Path, role: str) -> Key:
    """A new Ed25519 key for ``role``, written atomically with owner-only permissions."""
    if role not in ROLES:
        raise PocketVisionError(f"Unknown key role {role!r}; roles: {', '.join(ROLES)}.")
    keys_dir.mkdir(parents=True, exist_ok=True)
    private = Ed25519PrivateKey.generate()
    signer = CryptoSigner(private)
    path = keys_dir / f"{role}-{signer.public_key.keyid[:12]}.pem"
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    tmp = path.with_suffix(".pem.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.replace(tmp, path)
    return Key(role, path, signer)


def read_key(path: Path) -> Key:
    role = path.name.split("-", 1)[0]
    if role not in ROLES:
        raise PocketVisionError(f"{path}: not a key file of this tool (name must start with a role: "
                                f"{', '.join(ROLES)}).")
    try:
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as e:
        raise PocketVisionError(f"{path}: not an unencrypted PEM private key ({e}).") from None
    if not isinstance(private, Ed25519PrivateKey):
        raise PocketVisionError(f"{path}: not an Ed25519 key; create keys with `pocketvision keys new`.")
    return Key(role, path, CryptoSigner(private))


def load_keys(keys_dir: Path) -> dict[str, list[Key]]:
    """Every key in ``keys_dir`` by role (roles with no key file map to [])."""
    out: dict[str, list[Key]] = {r: [] for r in ROLES}
    if keys_dir.is_dir():
        for p in sorted(keys_dir.glob("*.pem")):
            if p.name == MANIFEST_KEY:
                continue
            k = read_key(p)
            out[k.role].append(k)
    return out


def new_manifest_key(keys_dir: Path) -> Path:
    """An ECDSA P-256 key pair for model-signing manifests -> the public key's path (share it with verifiers)."""
    from cryptography.hazmat.primitives.asymmetric import ec
    keys_dir.mkdir(parents=True, exist_ok=True)
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    fd = os.open(keys_dir / (MANIFEST_KEY + ".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.replace(keys_dir / (MANIFEST_KEY + ".tmp"), keys_dir / MANIFEST_KEY)
    pub = keys_dir / MANIFEST_PUB
    pub.write_bytes(private.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo))
    return pub


def model_signing_cli() -> str | None:
    """The OpenSSF `model_signing` command: ``$POCKETVISION_MODEL_SIGNING`` or on PATH. It lives in its own
    environment (`pipx install model-signing`): its sigstore dependencies cannot share one with LiteRT's
    converter (typing-extensions < 4.13 there, >= 4.14.1 here)."""
    import shutil
    return os.environ.get("POCKETVISION_MODEL_SIGNING") or shutil.which("model_signing")


def sign_manifest(keys_dir: Path, model_dir: Path, signature: Path) -> None:
    """An OpenSSF model-signing signature of every file in ``model_dir`` (sha256 per file in an in-toto statement,
    in a DSSE envelope: a sigstore bundle), checkable offline with `model_signing verify key`."""
    import subprocess
    cli = model_signing_cli()
    if cli is None:
        raise PocketVisionError("the `model_signing` command is not installed (pipx install model-signing).")
    r = subprocess.run([cli, "sign", "key", "--private_key", str(keys_dir / MANIFEST_KEY), "--signature",
                        str(signature), str(model_dir)], capture_output=True, text=True, timeout=600)
    if r.returncode != 0 or not signature.is_file():
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
        raise PocketVisionError(f"model_signing sign failed: {tail[0][:300]}")


def retire(key: Key) -> Path:
    """Move a rotated-out key aside (kept, not deleted: the operator decides when to destroy it)."""
    dest = key.path.parent / "retired" / key.path.name
    dest.parent.mkdir(exist_ok=True)
    os.replace(key.path, dest)
    return dest
