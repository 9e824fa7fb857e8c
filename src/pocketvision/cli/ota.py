"""Command line for over-the-air updates: `keys`, `tokens`, `serve`, `publish`, `rollout`, `rollback`, `models`,
`feedback`, `retrain`, `web-updates`, `update`. Argument parsing only; each verb calls ``pocketvision.serve``,
``pocketvision.serve.retrain`` or ``pocketvision.ota.device``."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from ..errors import PocketVisionError
from ..label.review import start
from ..ota.plans import Conditions
from ..ota.web import add_updates
from ..serve.retrain import render, retrain
from .common import add_config_flag


def _percent(s: str) -> float:
    try:
        v = float(s.rstrip("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a percentage like 10% or 10, got {s!r}") from None
    if not 0 <= v <= 100:
        raise argparse.ArgumentTypeError(f"a percentage is between 0 and 100, got {s!r}")
    return v


def _registry(a: argparse.Namespace):
    from ..serve.registry import Registry
    return Registry(a.store, a.db, getattr(a, "blobs", None), a.keys)


def _conditions(a: argparse.Namespace):
    if a.min_app_version is None and a.platforms is None and not a.unmetered_only:
        return None
    try:
        return Conditions(min_app_version=a.min_app_version, unmetered_only=a.unmetered_only,
                          platforms=a.platforms.split(",") if a.platforms else None)
    except ValueError as e:
        raise PocketVisionError(f"conditions: {e.errors()[0]['loc']}: {e.errors()[0]['msg']}") from None


def _show(obj: Any, as_json: bool, render=None) -> int:
    if as_json or render is None:
        print(json.dumps(obj, indent=2, default=str))
    else:
        render(obj)
    return 0


def cmd_keys(a: argparse.Namespace) -> int:
    reg = _registry(a)
    if a.action == "new":
        out = reg.init(a.root_keys, a.root_threshold)
    elif a.action == "rotate":
        if not a.role:
            raise PocketVisionError("keys rotate: give --role root|targets|snapshot|timestamp.")
        out = reg.rotate(a.role)
    else:
        out = reg.describe_keys()
    if a.root_out:
        Path(a.root_out).write_bytes(reg.root_json())
        out["root_out"] = a.root_out
    return _show(out, a.json, _render_keys)


def _render_keys(out: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table
    t = Table(title=f"root v{out['root_version']} (expires {out['expires']})")
    for c in ("role", "threshold", "key id", "key file here"):
        t.add_column(c)
    for role, r in out["roles"].items():
        for k in r["keys"]:
            t.add_row(role, str(r["threshold"]), k["keyid"][:16], k["file"] or "(not here: offline)")
    Console().print(t)
    if out.get("root_out"):
        print(f"root metadata written to {out['root_out']} (ship it with the app: ModelUpdater(trusted_root=...))")


def cmd_tokens(a: argparse.Namespace) -> int:
    from ..serve.store import db_url, open_store
    store = open_store(db_url(a.db, Path(a.store)))
    if a.action == "new":
        token = store.new_token(a.name, a.role)
        print(token)  # shown once; the server keeps only its hash
        return 0
    if a.action == "revoke":
        if a.id is None:
            raise PocketVisionError("tokens revoke: give --id (see `pocketvision tokens list`).")
        store.revoke_token(a.id)
        return 0
    return _show(store.list_tokens(), True)


def cmd_serve(a: argparse.Namespace) -> int:
    from ..serve.app import Limits, serve
    if a.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: binding {a.host}: serve TLS through a reverse proxy (README: 'Over-the-air updates').",
              flush=True)
    from pydantic import ValidationError
    try:
        limits = Limits(max_upload_bytes=max(0, a.max_upload_mb) << 20, allow_origins=a.allow_origin or [],
                        check_artifacts=not a.no_check_artifacts, new_devices_per_minute=a.new_devices_per_minute)
    except ValidationError as e:
        err = e.errors()[0]
        flag = {"max_upload_bytes": "--max-upload-mb", "new_devices_per_minute": "--new-devices-per-minute"}
        raise PocketVisionError(f"{flag.get(str(err['loc'][0]), err['loc'][0])}: {err['msg']}.") from None
    serve(a.store, a.db, a.blobs, a.keys, a.host, a.port, limits, a.log_level, a.workers)
    return 0


def _token(a: argparse.Namespace) -> str | None:
    return a.token or os.environ.get("POCKETVISION_TOKEN")


def cmd_publish(a: argparse.Namespace) -> int:
    from rich.console import Console

    from ..serve.publish import publish
    con = Console(stderr=True)
    out = publish(a.bundle, a.server, _token(a), a.name, [t.strip() for t in a.to.split(",") if t.strip()],
                  a.channel, a.rollout, _conditions(a), a.data, teachable=a.teachable, log=lambda s: con.print(s))
    return _show(out, a.json, lambda o: print(f"published {o['model']} version {o['version']}"
                                              + (f" to {o['channel']} at {o['rollout']:g}%" if o["channel"] else "")))


def cmd_rollout(a: argparse.Namespace) -> int:
    from ..serve.publish import Client
    body = {"version": a.version, "rollout": a.percent}
    if (c := _conditions(a)) is not None:
        body["conditions"] = c.model_dump()
    out = Client(a.server, _token(a)).call("PUT", f"/v1/models/{a.name}/channels/{a.channel}", body)
    return _show(out, a.json, lambda p: print(f"{a.name}/{a.channel}: version {p['current']['version']} at "
                                              f"{p['rollout']:g}% (others: "
                                              f"{p['previous']['version'] if p['previous'] else 'none'})"))


def cmd_rollback(a: argparse.Namespace) -> int:
    from ..serve.publish import Client
    out = Client(a.server, _token(a)).call("POST", f"/v1/models/{a.name}/channels/{a.channel}/rollback")
    return _show(out, a.json, lambda p: print(f"{a.name}/{a.channel}: every device back to version "
                                              f"{p['current']['version']} (from {p['rolled_back_from']})"))


def cmd_models(a: argparse.Namespace) -> int:
    from ..serve.publish import Client
    c = Client(a.server, _token(a))
    if not a.name:
        return _show(c.call("GET", "/v1/models"), True)
    return _show(c.call("GET", f"/v1/models/{a.name}"), a.json, _render_status)


def _render_status(s: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table
    con = Console()
    t = Table(title=f"{s['model']}: versions")
    for c in ("version", "artifacts", "task"):
        t.add_column(c)
    for v in s["versions"]:
        t.add_row(str(v["version"]), ", ".join(f"{k} {a['bytes']:,} B" for k, a in v["artifacts"].items()),
                  str(v.get("task", "")))
    con.print(t)
    for ch, p in s["channels"].items():
        con.print(f"channel {ch}: version {p['current']['version']} at {p['rollout']:g}%, others on "
                  f"{p['previous']['version'] if p['previous'] else 'none'}"
                  + (f" (rolled back from {p['rolled_back_from']})" if p.get("rolled_back_from") else ""))
    t = Table(title="adoption (devices by version and state)")
    for c in ("version", "state", "devices"):
        t.add_column(c)
    for r in s["adoption"]:
        t.add_row(str(r["version"]), r["state"], str(r["devices"]))
    con.print(t)
    if s.get("traffic"):
        t = Table(title="traffic (what devices' models saw; unfamiliar: unlike the training photos)")
        for c in ("version", "predictions", "unfamiliar", "share"):
            t.add_column(c)
        for r in s["traffic"]:
            t.add_row(str(r["version"]), f"{r['predictions']:,}", f"{r['unfamiliar']:,}",
                      f"{r['unfamiliar_share']:.1%}")
        con.print(t)


def cmd_feedback(a: argparse.Namespace) -> int:
    from ..serve.publish import Client
    c = Client(a.server, _token(a))
    if a.action == "export":
        if not a.out:
            raise PocketVisionError("feedback export: give --out DIR (a data set folder; new photos are merged in).")
        from ..serve.feedback import export_feedback
        out = export_feedback(c, a.name, a.out)
        return _show(out, a.json, lambda o: print(f"{o['added']} confirmed corrections written to {o['out']} "
                                                  f"({o['already_there']} already there, {o['without_photo']} "
                                                  "without a photo)"))
    if a.app:
        if a.action != "review":
            raise PocketVisionError("--app opens the review page: use it with `feedback review`.")
        import threading

        srv = start(c, a.name, a.host, a.port)
        url = f"http://{srv.server_address[0]}:{srv.server_address[1]}/"
        print(f"reviewing corrections to {a.name}: open {url}  (Ctrl-C to stop; each decision is saved at once)",
              flush=True)
        if not a.no_browser:
            import webbrowser
            webbrowser.open(url)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            srv.shutdown()
        return 0
    changes = [(i, "confirmed", None) for i in _ids(a.confirm)] + [(i, "rejected", None) for i in _ids(a.reject)]
    for item in a.label or []:
        i, _, label = item.partition("=")
        if not i.isdigit() or not label:
            raise PocketVisionError(f"--label {item!r}: expected ID=LABEL (confirms it with that label).")
        changes.append((int(i), "confirmed", label))
    if changes:  # all or none: the registry checks every id and label before it writes one
        c.call("POST", f"/v1/models/{a.name}/feedback/reviews",
               {"decisions": [{"id": i, "status": status, "label": label} for i, status, label in changes]})
    items = c.call("GET", f"/v1/models/{a.name}/feedback")["items"]
    return _show(items, a.json, _render_feedback)


def _ids(s: str | None) -> list[int]:
    if not s:
        return []
    try:
        return [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise PocketVisionError(f"expected comma-separated feedback ids, got {s!r}") from None


def _render_feedback(items: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table
    t = Table(title="feedback (review: --confirm IDS, --reject IDS, --label ID=LABEL; then `feedback export`)")
    for c in ("id", "version", "model said", "user says", "photo", "status", "label"):
        t.add_column(c)
    for it in items:
        t.add_row(str(it["id"]), str(it["version"] or ""), it["predicted"], it["corrected"],
                  it["image_type"] or "(private)", it["status"], it["label"])
    Console().print(t)


def cmd_retrain(a: argparse.Namespace) -> int:
    from rich.console import Console

    con = Console(stderr=True)
    opts: dict[str, Any] = {}
    if a.epochs is not None:
        opts["epochs"] = a.epochs
    r = retrain(a.name, a.server, _token(a), a.data, channel=a.channel, rollout=a.rollout,
                targets=tuple(t.strip() for t in a.to.split(",") if t.strip()), holdout=a.holdout, repeat=a.repeat,
                work=a.work,
                train_options=opts, console=con)
    _show(r.to_dict(), a.json, lambda _: render(r, Console()))
    return 1 if r.action == "kept" else 0


def cmd_web_updates(a: argparse.Namespace) -> int:
    token = a.token or os.environ.get("POCKETVISION_TOKEN")
    if not token:
        raise PocketVisionError("give a device token: --token (`pocketvision tokens new --role device`).")
    folder = add_updates(a.folder, a.server, a.name, token, a.root, a.channel, a.app_version, a.interval)
    print(f"{folder}: checks {a.server} for {a.name}/{a.channel} every {a.interval} s and offers 'wrong?'; start "
          "the registry with --allow-origin for the origin that serves this page.")
    return 0


def cmd_update(a: argparse.Namespace) -> int:
    from dataclasses import asdict

    from ..ota.device import ModelUpdater
    up = ModelUpdater(a.server, a.name, token=_token(a), trusted_root=a.root, cache_dir=a.cache, channel=a.channel,
                      kind=a.kind, app_version=a.app_version, platform=a.platform)
    res = up.check()
    out = asdict(res)
    if a.images and up.version is not None:
        out["predictions"] = up.predictor.predict(a.images)
    _show(out, True)
    return 1 if res.action == "failed" else 0


def _store_flags(s, blobs: bool = False):
    s.add_argument("--store", default="pv-registry", help="registry folder (database, blobs, keys)")
    s.add_argument("--db", default=None, help="database URL (default: sqlite in --store; "
                   "postgresql://user@host/db for several server instances)")
    if blobs:
        s.add_argument("--blobs", default=None, help="artifact storage URL (default: STORE/blobs)")
    s.add_argument("--keys", default=None, help="signing keys folder (default: STORE/keys)")


def _server_flags(s):
    s.add_argument("--server", default="http://127.0.0.1:8000", help="registry URL")
    s.add_argument("--token", default=None, help="admin token (default: $POCKETVISION_TOKEN)")
    s.add_argument("--json", action="store_true", help="print the result as JSON")


def _condition_flags(s):
    s.add_argument("--min-app-version", default=None, help="only apps at this version or newer (e.g. 2.3)")
    s.add_argument("--platforms", default=None, help="only these platforms, e.g. android,ios")
    s.add_argument("--unmetered-only", action="store_true", help="devices download on unmetered networks only")


TITLE = "over the air"


def register(verb) -> None:
    _register_registry(verb)
    _register_releases(verb)
    _register_loop(verb)


def _register_registry(verb) -> None:
    """keys, tokens, serve"""
    s = verb("keys", "Signing keys (Ed25519, one per TUF role): create, show, rotate.", cmd_keys)
    s.add_argument("action", choices=("new", "show", "rotate"), help="new: create the keys and the first root; "
                   "show: the current root; rotate: replace a role's key")
    _store_flags(s)
    s.add_argument("--role", default=None, help="rotate: the role whose key is replaced (its old key is revoked)")
    s.add_argument("--root-keys", type=int, default=1, help="new: number of root keys")
    s.add_argument("--root-threshold", type=int, default=1, help="new: root signatures needed")
    s.add_argument("--root-out", default=None, help="write the current root metadata here (ship it with the app)")
    s.add_argument("--json", action="store_true", help="print as JSON")

    s = verb("tokens", "Access tokens: admin (publish, roll out, roll back) or device (read updates, report).",
             cmd_tokens)
    s.add_argument("action", choices=("new", "list", "revoke"), help="new: print a token once; list; revoke one "
                   "by --id")
    _store_flags(s)
    s.add_argument("--role", choices=("admin", "device"), default="device", help="new: what the token may do")
    s.add_argument("--name", default="token", help="new: a label for the token")
    s.add_argument("--id", type=int, default=None, help="revoke: the token's id")

    s = verb("serve", "Run the update registry (FastAPI; OpenAPI docs at /docs).", cmd_serve)
    _store_flags(s, blobs=True)
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only; use a "
                   "reverse proxy for TLS)")
    s.add_argument("--port", type=int, default=8000, help="port")
    s.add_argument("--max-upload-mb", type=int, default=512, help="largest artifact accepted")
    s.add_argument("--workers", type=int, default=1, help="worker processes (all share the database and blobs)")
    s.add_argument("--allow-origin", action="append", metavar="ORIGIN",
                   help="let web pages from ORIGIN (e.g. https://app.example.com) check for updates and send "
                   "corrections from the browser (CORS; repeatable)")
    s.add_argument("--new-devices-per-minute", type=int, default=10,
                   help="device identities issued per source address a minute (more behind a NAT or for a "
                   "simulated fleet)")
    s.add_argument("--no-check-artifacts", action="store_true",
                   help="sign uploads without running them on their smoke photos here (a registry without the "
                   "models' runtimes; devices still check before they swap a model in)")
    s.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                   help="the server's log level")


def _register_releases(verb) -> None:
    """publish, rollout, rollback, models"""
    s = verb("publish", "Export a bundle, refuse what fails verify, record smoke outputs, upload and sign a new "
             "version.", cmd_publish)
    s.add_argument("bundle", help="bundle (.pvb)")
    add_config_flag(s)
    s.add_argument("--name", required=True, help="model name on the registry")
    s.add_argument("--to", default="onnx", help="targets to export and publish, comma-separated (onnx, tflite, coreml, web)")
    s.add_argument("--channel", default=None, help="also roll it out on this channel (stable, beta, ...)")
    s.add_argument("--rollout", type=_percent, default=100.0, help="percent of the channel's devices, e.g. 10%%")
    s.add_argument("--data", default=None, help="labelled images for verification and smoke inputs "
                   "(default: the bundle's val split)")
    s.add_argument("--teachable", action="store_true", help="the files also output their embedding, so devices "
                   "can keep classes taught on them (export --teachable); the release says if its embedding changed")
    _condition_flags(s)
    _server_flags(s)

    s = verb("rollout", "Point a channel at a version for a percentage of devices (same version: new percentage).",
             cmd_rollout)
    s.add_argument("name", help="model name")
    s.add_argument("--channel", default="stable", help="the release channel (stable, beta, ...)")
    s.add_argument("--version", type=int, default=None, help="version (default: the channel's current one)")
    s.add_argument("--percent", type=_percent, required=True, help="percent of devices, e.g. 50%%")
    _condition_flags(s)
    _server_flags(s)

    s = verb("rollback", "Send every device on a channel back to its previous version, at once.", cmd_rollback)
    s.add_argument("name", help="model name")
    s.add_argument("--channel", default="stable", help="the release channel (stable, beta, ...)")
    _server_flags(s)

    s = verb("models", "Models on the registry; with a name: versions, channels and adoption.", cmd_models)
    s.add_argument("name", nargs="?", default=None, help="a model: its versions, channels and adoption")
    _server_flags(s)


def _register_loop(verb) -> None:
    """feedback, retrain, web-updates, update: the devices and the loop after shipping"""
    s = verb("feedback", "Users' corrections: review them (table; confirm, reject, relabel) or export the confirmed "
             "ones into a data set folder `pocketvision train` reads (no duplicates).", cmd_feedback)
    s.add_argument("action", choices=("review", "export"), help="review: list the open corrections or decide "
                   "on them; export: write the confirmed ones into a data set folder")
    s.add_argument("name", help="model name")
    s.add_argument("--confirm", default=None, metavar="IDS", help="review: confirm these ids (comma-separated)")
    s.add_argument("--reject", default=None, metavar="IDS", help="review: reject these ids")
    s.add_argument("--label", action="append", metavar="ID=LABEL", help="review: confirm with another label")
    s.add_argument("--out", default=None, help="export: data set folder to merge into (train/<label>/ when it has "
                   "a train split, else <label>/)")
    s.add_argument("--app", action="store_true", help="review: open the labelling app's review page (photo, both "
                   "labels, one key per decision) instead of the table")
    s.add_argument("--host", default="127.0.0.1", help="--app: address to bind (default: this machine only)")
    s.add_argument("--port", type=int, default=8766, help="--app: port (0 = any free one)")
    s.add_argument("--no-browser", action="store_true", help="--app: do not open a browser")
    _server_flags(s)

    s = verb("retrain", "The loop after shipping, in one command: pull the confirmed corrections, warm-start from the "
             "live version, train, gate (held-back corrections better, old photos kept) and publish to a staged "
             "rollout, or keep the live version and say why (exit 1).", cmd_retrain)
    s.add_argument("name", help="model name on the registry")
    s.add_argument("--data", required=True, help="the photos the live version was trained on (train/val class "
                   "folders; read, never changed)")
    s.add_argument("--channel", default="stable", help="the channel whose live version to beat and publish to")
    s.add_argument("--rollout", type=_percent, default=10.0, help="percent of the channel's devices that get a "
                   "candidate that passed the gate (default 10%%; `pocketvision rollout` widens it)")
    s.add_argument("--to", default="onnx", help="targets to export and publish, comma-separated")
    s.add_argument("--holdout", type=float, default=0.25, help="share of the corrections held back to judge the "
                   "candidate (chosen by photo, the same every round)")
    s.add_argument("--repeat", type=int, default=1, help="how many times each correction counts in training")
    s.add_argument("--epochs", type=int, default=None, help="training epochs (default: the recipe's)")
    s.add_argument("--work", default=None, help="folder for the live bundle, corrections, training folder and "
                   "candidate (default: runs/retrain-NAME-vN-TIME)")
    _server_flags(s)

    s = verb("web-updates", "Turn on over-the-air updates and the 'wrong?' control in a web export "
             "(writes update.json and root.json into it).", cmd_web_updates)
    s.add_argument("folder", help="a web export (pocketvision export BUNDLE --to web)")
    s.add_argument("--name", required=True, help="model name on the registry")
    s.add_argument("--root", required=True, help="trusted root metadata (`pocketvision keys show --root-out`)")
    s.add_argument("--server", required=True, help="registry URL as the browser reaches it")
    s.add_argument("--token", default=None, help="a DEVICE token (every visitor can read it; default: "
                   "$POCKETVISION_TOKEN)")
    s.add_argument("--channel", default="stable", help="the release channel the page follows")
    s.add_argument("--app-version", default=None, help="this page's version, for --min-app-version conditions")
    s.add_argument("--interval", type=int, default=3600, help="seconds between checks (0: only when the page "
                   "calls pv.updates.check())")

    s = verb("update", "Device side, once: check the registry, verify (TUF), smoke-test and install the model; "
             "optionally predict.", cmd_update)
    s.add_argument("--name", required=True, help="model name")
    s.add_argument("--root", required=True, help="trusted root metadata (`pocketvision keys show --root-out`)")
    s.add_argument("--cache", default="pv-device", help="device folder for metadata and models")
    s.add_argument("--channel", default="stable", help="the release channel this device follows")
    s.add_argument("--kind", default="onnx", help="which artifact this device runs")
    s.add_argument("--app-version", default=None, help="this app's version, matched against a release's "
                   "--min-app-version")
    s.add_argument("--platform", default=None, help="this device's platform (android, ios, ...), matched against a "
                   "release's --platforms")
    s.add_argument("--server", default="http://127.0.0.1:8000", help="registry URL")
    s.add_argument("--token", default=None, help="device token (default: $POCKETVISION_TOKEN)")
    s.add_argument("images", nargs="*", help="images to predict with the installed model")
