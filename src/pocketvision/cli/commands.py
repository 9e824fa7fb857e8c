"""The command line's root: the parser, built from one module per group of verbs (``data``, ``train``, ``ship``,
``ota``; each registers its verbs and calls the Python API), and ``main``.

Flags are built from the typed option models (the engine's ``TrainConfig`` and each task's ``Options``,
``EvalOptions``, ``CheckOptions``, ``FilterOptions``), so an option is written once, and a task's own verbs
(``Task.commands``) are added from the registry. Imports are local to each verb so ``pocketvision predict
model.onnx`` never loads torch.
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap

from .. import __version__
from ..errors import PocketVisionError, did_you_mean
from ..tasks import all_tasks
from ..tasks.base import parse_options
from ..training.distributed import report_error
from . import data, ota, ship, train
from .common import EPILOG, _Fmt, _given, add_option_flags, config_values


class _Parser(argparse.ArgumentParser):
    """argparse with a suggestion when a verb or a choice is mistyped (suggested, never applied)."""

    def error(self, message: str):
        m = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if m:
            message += did_you_mean(m.group(1), re.findall(r"'([^']*)'", m.group(2)))
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="pocketvision", description="From a folder of photos to a verified "
                                "on-device vision model.", formatter_class=_Fmt, allow_abbrev=False)
    p.add_argument("--version", action="version", version=f"pocketvision {__version__}")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    listed: dict[str, list[tuple[str, str]]] = {}

    def group(title: str):
        def verb(name: str, help_: str, fn) -> argparse.ArgumentParser:
            listed.setdefault(title, []).append((name, help_))  # the top-level help lists verbs by group
            s = sub.add_parser(name, description=help_, formatter_class=_Fmt, allow_abbrev=False)
            s.set_defaults(fn=fn)
            return s
        return verb

    for module in (data, train, ship, ota):
        module.register(group(module.TITLE))
    verb = group("a task's own verbs")
    for t in all_tasks():  # verbs a task adds (`pocketvision stylize`)
        for c in t.commands():
            s = verb(c.name, c.help, _command(c))
            c.arguments(s)
            add_option_flags(s, [("", c.options)])
            s.add_argument("--json", action="store_true", help="print the result as JSON")
    p.epilog = _verb_list(listed) + "\n\n" + EPILOG
    return p


def _verb_list(listed: dict[str, list[tuple[str, str]]]) -> str:
    """The verbs by group, each with the first sentence of its description."""
    out = ["verbs (pocketvision VERB --help for each):"]
    for title, verbs in listed.items():
        out.append(f"  {title}:")
        out += [f"    {name:<18}{textwrap.shorten(help_.split('. ')[0].rstrip('.'), 78)}" for name, help_ in verbs]
    return "\n".join(out)


def _command(c):
    def run(a: argparse.Namespace) -> int:
        return c.run(a, parse_options(c.options, _given(a, [c.options]), c.name))
    return run


def _verb_parser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]


def _task_first(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """`train --task X --help`: X's own options right after what to train, before the engine's long lists."""
    if len(argv) < 3 or argv[0] != "train" or "--task" not in argv[:-1]:
        return
    name, groups = argv[argv.index("--task") + 1], _verb_parser(parser, "train")._action_groups
    mine = [g for g in groups if (g.title or "").startswith(f"{name} only ")]
    if mine:
        groups.remove(mine[0])
        groups.insert(3, mine[0])  # positional arguments, options, what to train, then the task's


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None):
    """argv -> (namespace, unknown); a --config file fills the verb's defaults first, so flags override it."""
    _task_first(parser, list(sys.argv[1:] if argv is None else argv))
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "config", None):
        verb = _verb_parser(parser, args.verb)
        verb.set_defaults(**config_values(args.config, verb, args.verb))
        args, extra = parser.parse_known_args(argv)
    return args, extra


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, extra = _parse(parser, argv)
    except PocketVisionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if extra:  # the verb's own usage, and the flag it is closest to
        verb = _verb_parser(parser, args.verb)
        flags = [s for a in verb._actions for s in a.option_strings]
        hint = did_you_mean(extra[0].split("=")[0], flags) if extra[0].startswith("-") else ""
        verb.error(f"unrecognized argument{'s' if len(extra) > 1 else ''}: {' '.join(extra)}.{hint}")
    args.argv = list(sys.argv[1:] if argv is None else argv)  # `--devices N` re-runs the same command line
    try:
        return args.fn(args)
    except PocketVisionError as e:
        if not report_error(str(e)):  # one of `--devices N`'s processes: the launcher prints it once
            print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
