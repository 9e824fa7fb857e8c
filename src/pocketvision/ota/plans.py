"""A channel's rollout plan, and the decision a device makes from it.

The plan is itself a signed TUF target (``<model>/channels/<channel>.json``), so a percentage, a condition or a
rollback reaches a device with the same guarantees as a model: a mirror cannot invent a rollout, and an old
plan replayed to pin devices on a bad version is refused by TUF's version checks. The device decides for
itself from the plan (no per-device answer from the server to forge): a stable hash of its id puts it in a
bucket in [0, 100); buckets below ``rollout`` get ``version``, the others stay on ``previous``.
"""

from __future__ import annotations

import hashlib
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")  # model and channel names: path-safe by construction
# A folder export (web page, .mlpackage) is published as its files, each its own signed target under
# '<model>/<version>/<folder>/', plus a listing '<folder>.folder.json' ({"folder", "files": [relative paths]})
# that the release names: a device fetches and verifies only the files it needs, and unchanged files (the web
# runtime) are stored once on the server.
FOLDER_SUFFIX = ".folder.json"
PLATFORMS = ("android", "ios", "web", "linux", "macos", "windows")


class Conditions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_app_version: str | None = Field(None, pattern=r"^\d+(\.\d+){0,3}$")
    platforms: list[Literal["android", "ios", "web", "linux", "macos", "windows"]] | None = None
    unmetered_only: bool = False


class Release(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=1)
    files: dict[str, str]  # artifact kind (onnx, tflite, bundle, smoke...) -> TUF target path


class Plan(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    channel: str
    serial: int = Field(ge=1)  # bumped by every change, so each plan file differs from the last
    current: Release
    rollout: float = Field(ge=0, le=100)  # percent of devices (by bucket) that get ``current``
    previous: Release | None = None  # what the other devices keep (None: they get nothing yet)
    conditions: Conditions = Conditions()
    rolled_back_from: int | None = None  # set by a rollback: devices on this version leave it at once


def bucket(model: str, device_id: str) -> float:
    """A device's stable place in [0, 100) for ``model``: the same every check, independent across models."""
    h = hashlib.sha256(f"{model}\x00{device_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 * 100


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split("."))


def decide(plan: Plan, device_id: str, *, app_version: str | None = None, platform: str | None = None,
           metered: bool = False, current: int | None = None) -> Release | None:
    """The release this device should run now (None: keep what it has, or nothing yet)."""
    return decision(plan, device_id, app_version=app_version, platform=platform, metered=metered, current=current)[0]


def _ineligible(c: Conditions, app_version: str | None, platform: str | None) -> str:
    if c.platforms is not None and platform not in c.platforms:
        return f"the release is for platforms {', '.join(c.platforms)}; this device says {platform or 'none'} " \
               "(--platform)"
    if c.min_app_version is not None and (app_version is None
                                          or _version_tuple(app_version) < _version_tuple(c.min_app_version)):
        return f"the release needs app version >= {c.min_app_version}; this device says {app_version or 'none'} " \
               "(--app-version)"
    return ""


def decision(plan: Plan, device_id: str, *, app_version: str | None = None, platform: str | None = None,
             metered: bool = False, current: int | None = None) -> tuple[Release | None, str]:
    """-> (the release this device should run now, or None; why not the channel's current version, in a line)."""
    c = plan.conditions
    place = bucket(plan.model, device_id)
    why = _ineligible(c, app_version, platform) or (
        "" if place < plan.rollout else
        f"version {plan.current.version} is rolled out to {plan.rollout:g}% of devices and this device's place in the "
        f"rollout is {place:.1f} of 100; `pocketvision rollout {plan.model} --channel {plan.channel} --percent "
        f"{min(100, int(place) + 1)}%` or more reaches it")
    want = plan.previous if why else plan.current
    if want is None and current is not None and current == plan.rolled_back_from:
        want, why = plan.current, ""  # a withdrawn version is left by every device, whatever the conditions
    if want is None:
        return None, why
    if want.version == current:
        return None, why or f"already on version {current}, the channel's current one"
    leaving_withdrawn = current is not None and current == plan.rolled_back_from
    if c.unmetered_only and metered and not leaving_withdrawn:
        return None, f"version {want.version} waits for an unmetered network (the release says unmetered only)"
    return want, why
