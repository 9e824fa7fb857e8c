"""mkdocs hook: the CLI reference page is generated from the parser itself, so it cannot drift from the program.

``docs/cli.md`` holds the marker ``<!-- cli-reference -->``; at build time it is replaced by one section per verb
with its usage, description and a table of its options (flags, default, help), read from
``pocketvision.cli.commands.build_parser()``.
"""

from __future__ import annotations

import argparse

MARKER = "<!-- cli-reference -->"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _default(action: argparse.Action) -> str:
    d = action.default
    if d in (None, argparse.SUPPRESS, False) or isinstance(action, argparse._HelpAction):
        return ""
    return f"`{d}`"


def _verb(name: str, parser: argparse.ArgumentParser) -> str:
    usage = parser.format_usage().replace("usage: ", "", 1).strip()
    out = [f"## `{name}`", "", parser.description or "", "", "```text", usage, "```", ""]
    groups = [g for g in parser._action_groups if g._group_actions]
    for group in groups:
        rows = [a for a in group._group_actions if a.help != argparse.SUPPRESS and not isinstance(a, argparse._HelpAction)]
        if not rows:
            continue
        if len(groups) > 1:
            out += [f"**{group.title}**", ""]
        out += ["| argument | default | what it does |", "|---|---|---|"]
        for a in rows:
            flags = ", ".join(f"`{s}`" for s in a.option_strings) or f"`{a.metavar or a.dest}`"
            if a.choices and not isinstance(a, argparse._SubParsersAction):
                flags += " {" + ", ".join(map(str, a.choices)) + "}"
            out.append(f"| {_cell(flags)} | {_cell(_default(a))} | {_cell(a.help or '')} |")
        out.append("")
    return "\n".join(out)


def reference() -> str:
    from pocketvision.cli.commands import build_parser

    parser = build_parser()
    verbs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    parts = [f"`pocketvision VERB --help` prints the same. {len(verbs.choices)} verbs.", ""]
    for name, sub in verbs.choices.items():
        parts.append(_verb(name, sub))
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, reference())
