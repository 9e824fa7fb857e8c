"""Operator compatibility: does the target's runtime have a kernel for every op of the graph?

Checked against the runtimes' own registries, not a hand-kept list: onnxruntime reports every kernel
it ships (``get_all_opkernel_def``: op, domain, opset range); onnxruntime-web's WASM build compiles
the same CPU kernels. For LiteRT, ops the converter could not lower to builtins (custom / Flex ops)
are named after conversion. Each problem names the torch layer (from the exporter's name scopes) and
a fix.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import lru_cache

from ..errors import PocketVisionError


@dataclass
class Problem:
    target: str
    op: str
    layer: str
    fix: str

    def __str__(self) -> str:
        return f"{self.target}: layer '{self.layer}' uses {self.op}, which the runtime cannot run; {self.fix}"


@lru_cache(maxsize=1)
def _cpu_kernels() -> dict[tuple[str, str], list[tuple[int, int]]]:
    from onnxruntime.capi.onnxruntime_pybind11_state import get_all_opkernel_def
    out: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for k in get_all_opkernel_def():
        if k.provider == "CPUExecutionProvider":
            domain = "" if k.domain in ("", "ai.onnx") else k.domain
            out.setdefault((domain, k.op_name), []).append(tuple(k.version_range))
    return out


def _is_function(op: str, version: int, domain: str) -> bool:
    import onnx.defs
    try:
        schema = onnx.defs.get_schema(op, version, domain)
    except Exception:  # noqa: BLE001 - unknown op / domain
        return False
    return bool(schema.has_function or schema.has_context_dependent_function)


def _layer(node) -> str:
    for p in node.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = [s for s in ast.literal_eval(p.value) if s]
            except (ValueError, SyntaxError):
                break
            if len(scopes) >= 2:
                return scopes[-2]  # the module; the last scope is the op itself
    return node.name


def check_onnx(model, target: str = "onnx") -> list[Problem]:
    """Ops of ``model`` (onnx.ModelProto) without an onnxruntime CPU/WASM kernel at the model's opset."""
    kernels = _cpu_kernels()
    opsets = {o.domain or "": o.version for o in model.opset_import}
    local = {f.name for f in model.functions}
    problems = []
    for node in model.graph.node:
        domain = node.domain or ""
        if node.op_type in local:
            continue
        ranges = kernels.get((domain, node.op_type))
        version = opsets.get(domain, 1)
        ok = node.op_type == "Constant" or (ranges is not None and any(lo <= version <= hi for lo, hi in ranges))
        if not ok and _is_function(node.op_type, version, domain):
            ok = True  # onnxruntime expands ONNX function ops (HardSwish, Mish, ...) into their bodies
        if not ok:
            problems.append(Problem(
                target, f"{domain + '.' if domain else ''}{node.op_type} (opset {version})", _layer(node),
                "replace it in the model with supported ops (see onnxruntime's OperatorKernels.md), "
                "or change its input types" if ranges else "it is not an onnxruntime operator; implement "
                "the layer with standard torch ops"))
    return problems


def raise_if_incompatible(problems: list[Problem]) -> None:
    if problems:
        first = problems[0]
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise PocketVisionError(f"{first}{more}")


def check_tflite(data: bytes) -> list[Problem]:
    """Custom or Flex (TensorFlow) ops in a converted .tflite: plain LiteRT runtimes cannot run them."""
    from ai_edge_litert import schema_py_generated as fb
    m = fb.Model.GetRootAs(data, 0)
    names = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
    problems = []
    for i in range(m.OperatorCodesLength()):
        oc = m.OperatorCodes(i)
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        if names.get(code) == "CUSTOM":
            custom = (oc.CustomCode() or b"?").decode()
            problems.append(Problem("tflite", f"custom op {custom}", custom,
                                    "rewrite that layer with standard torch ops so it lowers to LiteRT builtins"))
    return problems
