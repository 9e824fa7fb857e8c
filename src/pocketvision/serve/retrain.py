"""The loop after shipping, in one command: pull confirmed corrections, warm-start, train, gate, publish.

``pocketvision retrain NAME --server URL --data PHOTOS``:

1. the live version: the channel's current release on the registry, and its bundle (published with every version);
2. the confirmed corrections users sent (``pocketvision feedback review``): a correction whose label the model does
   not know is named and skipped; a fixed share of them, chosen by a hash of the photo (so a photo is on the same
   side every round), is held back from training to judge the candidate on photos it never saw;
3. when none is new since the live version (its bundle records which photos it trained on and which it held back),
   it says so and publishes nothing;
4. the candidate trains from the live version's weights on the user's photos plus the rest of the corrections;
5. the gate: the candidate must answer the held-back corrections better than the live version, and must not lose
   the old photos: on the data's val split and on its phone-photo twin it may lose at most one photo's worth each.
   The comparison is printed as a table either way;
6. it passes: the candidate is published to the channel at a staged ``--rollout``; it fails: the live version stays,
   and the command exits non-zero.

Everything is measured with the task's own quality of the answers users see (``Task.quality``: for a
classifier, accuracy at its stored threshold), so nothing here knows a task.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pocketvision as pv
from ..core.bundle_file import atomic_write_bytes
from ..data.folder import scan
from ..errors import PocketVisionError

HOLDOUT = 0.25  # share of the corrections held back from training to judge the candidate
REPEAT = 1  # times each correction counts in training


@dataclass
class GateRow:
    images: str  # what the row measures
    n: int
    live: float
    candidate: float
    rule: str
    passed: bool


@dataclass
class RetrainResult:
    model: str
    channel: str
    live_version: int | None
    action: str  # "published", "kept" (the gate refused), "nothing" (no new corrections)
    reason: str
    corrections: dict[str, Any] = field(default_factory=dict)
    gate: list[GateRow] = field(default_factory=list)
    published: dict[str, Any] | None = None
    candidate: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def held_back(sha256: str, share: float = HOLDOUT) -> bool:
    """Whether a correction's photo is held back from training: fixed by its content, the same every round."""
    return int(sha256[:8], 16) % 10_000 < share * 10_000


def _live(client, name: str, channel: str) -> tuple[int, dict[str, Any]]:
    status = client.call("GET", f"/v1/models/{name}")
    plan = status.get("channels", {}).get(channel)
    if not plan:
        raise PocketVisionError(f"{name}: no release on channel {channel!r} (channels: "
                                f"{', '.join(status.get('channels', {})) or 'none'}); publish one first: "
                                f"pocketvision publish BUNDLE --name {name} --channel {channel}.")
    version = int(plan["current"]["version"])
    info = next((v for v in status["versions"] if v["version"] == version), None)
    if info is None or "bundle" not in info.get("artifacts", {}):
        raise PocketVisionError(f"{name} version {version} has no bundle on the registry to warm-start from; "
                                "publish versions with `pocketvision publish` (it uploads the bundle).")
    return version, info


def _download(client, art: dict[str, Any], dest: Path) -> Path:
    folder, _, filename = art["path"].rpartition("/")
    data = client.raw("GET", f"/tuf/targets/{folder}/{art['sha256']}.{filename}")
    if hashlib.sha256(data).hexdigest() != art["sha256"]:
        raise PocketVisionError(f"{art['path']}: the download does not match its recorded hash; nothing was used.")
    atomic_write_bytes(dest, data)
    return dest


def _training_folder(data: Path, work: Path, labels: list[str], extra: Path, val_fraction: float, seed: int,
                     repeat: int = 1) -> Path:
    """``work/data``: train/<class>/ and val/<class>/ as symlinks to the user's photos (the split training used) plus
    the corrections in ``extra/<class>/``, each ``repeat`` times; nothing is copied and the user's folder is not
    touched."""
    splits = scan(data, val_fraction=val_fraction, seed=seed, classes=labels)
    out = work / "data"
    pairs = [(split, splits.classes[s.label], Path(s.path), 0)
             for split in ("train", "val") for s in getattr(splits, split)]
    pairs += [("train", p.parent.name, p, r) for p in (sorted(extra.rglob("*")) if extra.is_dir() else [])
              if p.is_file() for r in range(repeat)]
    for split, label, src, r in pairs:
        # the source's full path in the name: two photos called IMG_0001.jpg in two folders stay two photos
        tag = hashlib.sha256(str(src.resolve()).encode()).hexdigest()[:8]
        link = out / split / label / f"{tag}-{r}-{src.name}" if r else out / split / label / f"{tag}-{src.name}"
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(src.resolve())
    for c in labels:  # a class with no correction still needs its folder in both splits
        (out / "train" / c).mkdir(parents=True, exist_ok=True)
    return out


def gate(live, candidate, data: Path, held: Path | None, *, twin: bool = True) -> list[GateRow]:
    """Compare two bundles of one task on the val split of ``data``, its phone-photo twin and the held-back
    corrections in ``held`` (class folders), with the quality of the answers each one gives users."""
    rows = []
    base = live.held_out(data)
    sets = [("val photos (the old ones)", base)]
    if twin and live.plugin.shift_keeps_truth:
        full = base.with_shifted_twin()
        twin_part = type(base)(full.pixels[-full.shifted:], full.truth[-full.shifted:], full.paths[-full.shifted:])
        sets.append(("their phone-photo twin", twin_part))
    def score(b, h) -> float:  # the answers users see: each bundle's own decision rule (its threshold)
        return b.plugin.quality(b.predict_pixels(h.pixels), h.truth, None, b.meta)

    for what, h in sets:
        n = len(h.pixels)
        q_live, q_cand = score(live, h), score(candidate, h)
        slack = 1.0 / max(1, n)
        rows.append(GateRow(what, n, q_live, q_cand, "lose at most one photo", q_cand >= q_live - slack - 1e-9))
    if held is not None:
        h = live.held_out(held)
        n = len(h.pixels)
        if n:
            q_live, q_cand = score(live, h), score(candidate, h)
            rows.append(GateRow("held-back corrections (never trained on)", n, q_live, q_cand, "better",
                                q_cand > q_live + 1e-9))
    return rows


def _check_args(name: str, channel: str, holdout: float, repeat: int, data: str | os.PathLike) -> None:
    from .registry import check_name
    check_name(name, "model name")
    check_name(channel, "--channel")
    if not 0 < holdout < 1:
        raise PocketVisionError(f"--holdout must be in (0, 1), a share of the corrections. Got {holdout}.")
    if not 1 <= repeat <= 100:
        raise PocketVisionError(f"--repeat must be in [1, 100], how many times a correction counts. Got {repeat}.")
    if not Path(data).is_dir():
        raise PocketVisionError(f"{data}: not a folder; --data is the photos the live version was trained on.")


def _fetch_corrections(client, usable: list[dict[str, Any]], holdout: float, train_dir: Path, held_dir: Path
                       ) -> tuple[list[str], list[str]]:
    """Each usable correction's photo, checked against its hash, into the training or the held-back folder (by its
    hash: the same photo always lands on the same side) -> (trained hashes, held-back hashes)."""
    trained, held = [], []
    for it in usable:
        sha = it["image_sha256"]
        back = held_back(sha, holdout)
        dest = (held_dir if back else train_dir) / it["label"] / f"feedback-{sha[:16]}.{it['image_type']}"
        if not dest.exists():
            img = client.raw("GET", f"/v1/feedback/{it['id']}/image")
            if hashlib.sha256(img).hexdigest() != sha:
                raise PocketVisionError(f"feedback {it['id']}: the photo does not match its recorded hash; "
                                        "nothing was trained.")
            atomic_write_bytes(dest, img)
        (held if back else trained).append(sha)
    return trained, held


def _train_candidate(name: str, version: int, live, live_path: Path, folder: Path, work: Path, trained: list[str],
                     held: list[str], train_options: dict[str, Any] | None, console: Any):
    """The candidate, warm-started from the live bundle on ``folder``, with where it came from -> (bundle, path)."""
    # The live version's network and input side, from its weights; no recipe (it would pick a size or a schedule for
    # training from scratch): a warm start fine-tunes what is there.
    arch = dict(live.meta["arch"])
    args = {k: v for k, v in arch.get("args", {}).items() if k not in ("num_classes", "imagenet_classes")}
    opts = {"progress": False, "arch": arch["name"], "arch_args": args, "size": int(live.contract.size[0]),
            "recipe": False, **(train_options or {})}
    cand_path = work / "candidate.pvb"
    cand = pv.train(folder, out=cand_path, init_from=str(live_path), run_dir=work / "run", console=console, **opts)
    cand.meta["feedback"] = {"from_version": version, "trained": sorted(set(trained)), "held_back": sorted(set(held))}
    cand.meta.setdefault("lineage", []).append({"stage": "retrain", "model": name, "version": version,
                                                 "parent_weights_sha256": live.meta.get("weights_sha256"),
                                                 "corrections": len(trained)})
    cand.save(cand_path)
    return cand, cand_path


def retrain(name: str, server: str, token: str | None, data: str | os.PathLike, *, channel: str = "stable",
            rollout: float = 10.0, targets: tuple[str, ...] = ("onnx",), holdout: float = HOLDOUT,
            repeat: int = REPEAT, work: str | os.PathLike | None = None,
            train_options: dict[str, Any] | None = None, console: Any = None) -> RetrainResult:
    """One round of the loop (see the module docstring). ``repeat``: how many times each correction counts in
    training (a few photos among a thousand would barely move the model). ``work``: where the live bundle, the
    corrections, the training folder and the candidate go (default: a new folder under ``runs/``)."""
    from rich.console import Console

    from .publish import Client, publish
    _check_args(name, channel, holdout, repeat, data)
    console = console or Console(stderr=True)
    data = Path(data)
    t0 = time.perf_counter()
    seconds: dict[str, float] = {}
    client = Client(server, token)
    version, info = _live(client, name, channel)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = Path(work) if work is not None else Path("runs") / f"retrain-{name}-v{version}-{stamp}"
    work.mkdir(parents=True, exist_ok=True)
    live_path = _download(client, info["artifacts"]["bundle"], work / "live.pvb")
    live = pv.load(live_path)
    labels = list(live.labels)
    before = live.meta.get("feedback") or {}
    seen = set(before.get("trained", [])) | set(before.get("held_back", []))

    items = client.call("GET", f"/v1/models/{name}/feedback?status=confirmed")["items"]
    unknown = [it for it in items if it["label"] not in labels]
    for it in unknown:
        console.print(f"[yellow]skipped correction {it['id']}[/]: label {it['label']!r} is not one of the model's "
                      f"({', '.join(labels)})")
    usable = [it for it in items if it["label"] in labels and it.get("image_sha256")]
    new = [it for it in usable if it["image_sha256"] not in seen]
    counts = {"confirmed": len(items), "unknown_label": len(unknown), "without_photo":
              sum(1 for it in items if not it.get("image_sha256")), "new": len(new), "usable": len(usable)}
    seconds["pull"] = time.perf_counter() - t0
    if not new:
        return RetrainResult(name, channel, version, "nothing", f"no new confirmed corrections since version "
                             f"{version} ({len(usable)} already used); nothing trained, nothing published",
                             counts, seconds=seconds)
    train_dir, held_dir = work / "corrections" / "train", work / "corrections" / "held-back"
    trained, held = _fetch_corrections(client, usable, holdout, train_dir, held_dir)
    counts.update(trained=len(trained), held_back=len(held))
    if not held:
        return RetrainResult(name, channel, version, "kept", f"none of the {len(usable)} corrections is held back "
                             f"(--holdout {holdout:g}), so the candidate could not be judged on photos it never saw; "
                             "collect more corrections", counts, seconds=seconds)
    console.print(f"live: {name} version {version} on {channel}; corrections: {len(new)} new, {len(trained)} to "
                  f"train on, {len(held)} held back to judge")
    d = live.meta.get("data", {})
    folder = _training_folder(data, work, labels, train_dir, d.get("val_fraction", 0.15), d.get("seed", 0), repeat)
    seconds["prepare"] = time.perf_counter() - t0 - sum(seconds.values())

    t1 = time.perf_counter()
    cand, cand_path = _train_candidate(name, version, live, live_path, folder, work, trained, held, train_options,
                                       console)
    seconds["train"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    rows = gate(live, cand, folder, held_dir)
    seconds["gate"] = time.perf_counter() - t2
    if not all(r.passed for r in rows):
        failed = "; ".join(f"{r.images}: {r.candidate:.3f} against {r.live:.3f} ({r.rule})" for r in rows
                           if not r.passed)
        return RetrainResult(name, channel, version, "kept", f"the candidate did not pass the gate ({failed}); "
                             f"version {version} stays live", counts, rows, candidate=str(cand_path),
                             seconds=seconds)
    t3 = time.perf_counter()
    # a teachable live version stays teachable: devices keep the classes taught on it
    out = publish(cand_path, server, token, name, list(targets), channel, rollout, data=folder,
                  teachable=bool(info.get("embedding")), log=lambda s: console.print(s))
    seconds["publish"] = time.perf_counter() - t3
    seconds["total"] = time.perf_counter() - t0
    return RetrainResult(name, channel, version, "published", f"version {out['version']} passed the gate and goes to "
                         f"{rollout:g}% of {channel}", counts, rows, out, str(cand_path), seconds)


def render(r: RetrainResult, console: Any) -> None:
    from rich.table import Table
    if r.gate:
        t = Table(title=f"gate: candidate against live version {r.live_version}")
        for c in ("photos", "n", "live", "candidate", "rule", ""):
            t.add_column(c)
        for row in r.gate:
            t.add_row(row.images, str(row.n), f"{row.live:.3f}", f"{row.candidate:.3f}", row.rule,
                      "[green]pass" if row.passed else "[red]FAIL")
        console.print(t)
    style = {"published": "green", "kept": "red", "nothing": "yellow"}[r.action]
    console.print(f"[{style}]{r.action}[/]: {r.reason}")
