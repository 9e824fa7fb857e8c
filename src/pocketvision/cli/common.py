"""What every group of verbs shares: flags built from the typed option models, JSON output, image arguments."""

from __future__ import annotations

import argparse
import json
import types
import typing
from pathlib import Path
from typing import Any

from ..core.contract import is_image_file
from ..errors import PocketVisionError, did_you_mean
from ..tasks import all_tasks

EPILOG = "Docs: README.md and docs/ (mkdocs serve). Every verb that prints results accepts --json."


class _Fmt(argparse.RawDescriptionHelpFormatter):
    """Says a flag's default once: not when its help already names one, and not for None/False (nothing to say)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str, allow_nan=True))


def _console():
    from rich.console import Console
    return Console(stderr=True)


def _ints(s: str) -> list[int]:
    """'96,128,160' -> [96, 128, 160]."""
    try:
        return [int(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {s!r}") from None


def _kv(s: str) -> dict[str, Any]:
    """'alpha=0.5,act=relu' -> {'alpha': 0.5, 'act': 'relu'} (JSON values where they parse)."""
    out: dict[str, Any] = {}
    import re
    for part in filter(None, re.split(r",(?![^\[]*\])", s)):  # commas inside [..] belong to the value
        if "=" not in part:
            raise argparse.ArgumentTypeError(f"expected key=value, got {part!r}")
        k, v = part.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v.strip()
    return out


def _word_or_floats(words: tuple[str, ...]):
    """A choice of words, or comma-separated numbers (``--class-weights auto|none|w1,w2``)."""
    def parse(s: str):
        if s in words:
            return s
        try:
            return [float(x) for x in s.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {' or '.join(words)} or comma-separated numbers, got "
                                             f"{s!r}") from None
    return parse


# -- flags from typed option models ---------------------------------------------------------------------
def _flag_kwargs(annotation: Any) -> dict[str, Any]:
    """argparse keywords for a pydantic field's type."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        lits = [a for a in args if typing.get_origin(a) is typing.Literal]
        lists = [a for a in args if typing.get_origin(a) is list]
        if lits and lists:
            return {"type": _word_or_floats(typing.get_args(lits[0])), "metavar": "|".join(typing.get_args(lits[0]))
                    + "|N,N,..."}
        if len(args) == 1:
            return _flag_kwargs(args[0])
    if origin is typing.Literal:
        return {"choices": list(typing.get_args(annotation))}
    if origin is dict or annotation is dict:
        return {"type": _kv, "metavar": "K=V,..."}
    if origin is list:
        return {"action": "append", "metavar": "VALUE"}
    if annotation in (int, float, str):
        return {"type": annotation}
    if annotation is Path:
        return {"type": str}
    return {"type": str}


def add_option_flags(parser: argparse.ArgumentParser, models: list[tuple[str, Any]], seen: set[str] | None = None,
                     exclude: tuple[str, ...] = (), only: set[str] | None = None) -> None:
    """One flag per field of each (``owner``, model); ``owner`` prefixes the help (e.g. 'keypoints: '). A field
    several models share is added once. Unset flags stay out of the namespace (``argparse.SUPPRESS``), so only
    what the user typed reaches the API, which validates it and refuses what the task cannot use."""
    seen = set() if seen is None else seen
    owners: dict[str, list[str]] = {}
    for owner, model in models:
        for name in model.model_fields:
            owners.setdefault(name, []).append(owner)
    for owner, model in models:
        for name, f in model.model_fields.items():
            extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
            if name in seen or name in exclude or extra.get("cli") is False or (only is not None and name not in only):
                continue
            seen.add(name)
            flag = extra.get("flag") or "--" + name.replace("_", "-")
            default = f.get_default(call_default_factory=True)
            who = [o for o in owners[name] if o]
            prefix = f"{', '.join(dict.fromkeys(who))}: " if who else ""
            shown = None if f.is_required() or default in (None, {}, []) else default  # required: no default to show
            help_ = f"{prefix}{extra.get('flag_help') or f.description or ''}" + (
                f" (default: {shown})" if shown is not None and not isinstance(default, bool) else "")
            help_ = help_.replace("%", "%%")
            if f.annotation is bool or typing.get_args(f.annotation) == (bool, type(None)):
                # a "--no-..." flag of a field whose default is None (auto) says False, like one whose default is True
                off = default is True or flag.startswith("--no-")
                kw: dict[str, Any] = {"action": "store_false" if off else "store_true"}
            else:
                kw = _flag_kwargs(f.annotation)
            parser.add_argument(flag, dest=name, default=argparse.SUPPRESS, help=help_, **kw)


# -- --config FILE -------------------------------------------------------------------------------------------
CONFIG_MAX_BYTES = 1_000_000  # a config is a few lines; anything this big is not one


def add_config_flag(parser: argparse.ArgumentParser, writes: str = "") -> None:
    parser.add_argument("--config", default=None, metavar="FILE", help="take this command's options from a YAML "
                        "(or JSON) file: keys are the flags' names without dashes (epochs, arch_args, to...); a flag "
                        f"on the command line overrides the file{writes}")


def config_values(path: str, parser: argparse.ArgumentParser, verb: str) -> dict[str, Any]:
    """A --config file -> {dest: value} for ``parser``, each key a flag of ``verb`` and each value of its type."""
    import yaml
    p = Path(path)
    if not p.is_file():
        raise PocketVisionError(f"--config {p}: no such file.")
    if p.stat().st_size > CONFIG_MAX_BYTES:
        raise PocketVisionError(f"--config {p}: {p.stat().st_size:,} bytes; a config file is a few lines (at most "
                                f"{CONFIG_MAX_BYTES:,} bytes).")
    try:
        text = p.read_text(encoding="utf-8")
        if any(isinstance(e, yaml.AliasEvent) for e in yaml.parse(text, Loader=yaml.SafeLoader)):
            raise PocketVisionError(f"--config {p}: YAML aliases (*name) are not read here; write each value out.")
        data = yaml.safe_load(text)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise PocketVisionError(f"--config {p}: not YAML or JSON ({str(e).splitlines()[0]}).") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PocketVisionError(f"--config {p}: a mapping of option names to values, not a {type(data).__name__}.")
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config") and a.dest != argparse.SUPPRESS}
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).lstrip("-").replace("-", "_")
        if name not in actions:
            raise PocketVisionError(f"--config {p}: {key!r} is not an option of `pocketvision {verb}`."
                                    + did_you_mean(name, list(actions)))
        if not actions[name].option_strings and actions[name].nargs is None:
            raise PocketVisionError(f"--config {p}: {key!r} is given on the command line (`pocketvision {verb} "
                                    f"{name.upper()} --config FILE`).")
        if value is not None:
            out[name] = _config_value(actions[name], value, f"--config {p}: {key}")
            actions[name].required = False  # given by the file
    return out


def _config_value(action: argparse.Action, value: Any, where: str) -> Any:
    """A file's value as the flag would have given it (pydantic-typed options are validated again by the API)."""
    if action.nargs == 0:  # --int8, --no-calibrate...: a yes/no
        if not isinstance(value, bool):
            raise PocketVisionError(f"{where}: true or false, not {value!r}.")
        return value
    if isinstance(value, list) and not isinstance(action, argparse._AppendAction) and action.type in (None, str):
        value = ",".join(str(v) for v in value)  # --to onnx,tflite written as a list
    if isinstance(value, str) and callable(action.type):
        try:
            value = action.type(value)
        except (argparse.ArgumentTypeError, ValueError, TypeError) as e:
            raise PocketVisionError(f"{where}: {value!r}: {e}") from None
    elif isinstance(value, int | float) and not isinstance(value, bool) and action.type in (int, float):
        value = action.type(value)
    if isinstance(action, argparse._AppendAction) and not isinstance(value, list):
        value = [value]
    if action.choices is not None and value not in action.choices:
        raise PocketVisionError(f"{where}: {value!r}; choose from {', '.join(map(str, action.choices))}."
                                + did_you_mean(str(value), [str(c) for c in action.choices]))
    return value


def _given(a: argparse.Namespace, models: list[Any]) -> dict[str, Any]:
    names = {n for m in models for n in m.model_fields}
    return {k: v for k, v in vars(a).items() if k in names}


def _task_models(attr: str) -> list[tuple[str, Any]]:
    return [(t.name, getattr(t, attr)) for t in all_tasks() if getattr(t, attr) is not None]


# -- verbs -------------------------------------------------------------------------------------------
def _image_args(items: list[str]) -> list[Path]:
    out: list[Path] = []
    for s in items:
        p = Path(s)
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and is_image_file(q))
            if not found:
                raise PocketVisionError(f"{p}: no images (jpg/png/webp/bmp) in this folder.")
            out += found
        elif p.exists():
            out.append(p)
        else:
            raise PocketVisionError(f"{p}: no such file or folder.")
    return out


def _print_parity(v: dict, plugin) -> None:
    if "structure" in v:  # a runtime that cannot run here (Core ML off macOS): structure only
        print(f"verify {'structure OK' if v['passed'] else 'structure FAILED'}: {v['criterion']} "
              f"({', '.join(f'{k}={val}' for k, val in v['structure'].items())})")
        return
    prec = v.get("precision", "fp32")
    judged = (f"within the {prec} budget" if v["passed"] else f"outside the {prec} budget") if v.get("criterion") \
        else f"{prec} parity"
    made = f", made by {' -> '.join(v['lineage'])}" if v.get("lineage") else ""
    print(f"verify {'PASSED' if v['passed'] else 'FAILED'} ({judged}{made}): {plugin.parity_line(v)}")
    if "shifted" in v:
        print(f"  on their phone-photo twin (blur, JPEG, dark, flash, ...): {plugin.parity_line(v['shifted'])}")
    if "embedding" in v:  # a teachable file: the embedding a device learns on
        print(f"  the embedding: {v['embedding']['detail']}")
    if v.get("broke"):
        print(f"  failed on: {'; '.join(v['broke'])}")


def _thread_list(text: str | None, flag: str = "--threads") -> list[int] | None:
    if text is None:
        return None
    try:
        counts = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise PocketVisionError(f"{flag} {text}: thread counts such as 1,2,4.")
    return counts


