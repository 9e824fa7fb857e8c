"""Bundle -> a static web folder that runs the model on photos and the webcam entirely in the browser (any task:
the page draws what the task's renderer gives it).

Layout of ``NAME.web/``::

    index.html, app.js      the page (same for every model)
    update.js               over-the-air updates and corrections, used when update.json + root.json are added
                            (``pocketvision web-updates``)
    teach.js                personal classes taught in the page (IndexedDB), used when model.json has "teach"
                            (``export --teachable``)
    render/<task>.js        the task's renderer (bars, points on the frame, a stylised canvas...)
    model.json              labels, preprocessing contract, threshold, renderer, file list with SHA-256
    model.onnx              the graph (+ ``model.data.N`` weight chunks when the model is large)
    ort/                    onnxruntime-web runtime files, copied from its npm package

Serve it from any static server; it needs no network beyond it. Threads need cross-origin isolation
(headers ``Cross-Origin-Opener-Policy: same-origin`` and ``Cross-Origin-Embedder-Policy:
require-corp``; ``_headers`` carries them for Netlify/Cloudflare Pages; ``pocketvision serve-web``
sends them). Reload in Python with ``pocketvision.runtime.web_predictor.WebPredictor(folder)``.

The runtime comes from the npm package ``onnxruntime-web`` at build time, never from a CDN:
``pocketvision fetch-web-runtime`` (an explicit download, via npm) puts it in the user cache, or
point ``PV_ORT_WEB_DIR`` at an unpacked ``node_modules/onnxruntime-web/dist``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import PocketVisionError
from ..runtime.web_predictor import WebPredictor, is_web_folder
from .base import ExportJob, Target, register_target

ORT_WEB_VERSION = "1.30.0"
# backend -> (ES module, its Emscripten glue, its .wasm). One .wasm per backend build; mixing fails.
RUNTIME = {"wasm": ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm"),
           "webgpu": ("ort.webgpu.min.mjs", "ort-wasm-simd-threaded.asyncify.mjs",
                      "ort-wasm-simd-threaded.asyncify.wasm")}
CHUNK_BYTES = 4 * 1024 * 1024  # weight chunks: parallel, resumable downloads and no huge single fetch
HEADERS_FILE = """/*
  Cross-Origin-Opener-Policy: same-origin
  Cross-Origin-Embedder-Policy: require-corp
  Cross-Origin-Resource-Policy: same-origin
"""


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "pocketvision" / f"onnxruntime-web-{ORT_WEB_VERSION}"


def runtime_dir() -> Path:
    """Folder holding the onnxruntime-web dist files, or a one-line error saying how to get them."""
    cands = [Path(os.environ["PV_ORT_WEB_DIR"])] if os.environ.get("PV_ORT_WEB_DIR") else []
    cands.append(cache_dir())
    need = [f for files in RUNTIME.values() for f in files]
    for d in cands:
        if all((d / f).is_file() for f in need):
            return d
    raise PocketVisionError(f"the web target needs the onnxruntime-web {ORT_WEB_VERSION} runtime files: run "
                            "`pocketvision fetch-web-runtime` once (downloads the npm package), or set "
                            "PV_ORT_WEB_DIR to an unpacked node_modules/onnxruntime-web/dist.")


def fetch_runtime(version: str = ORT_WEB_VERSION, force: bool = False) -> Path:
    """Download ``onnxruntime-web@version`` with npm and keep only the files a page needs (once: files already
    here are kept unless ``force``)."""
    dest = cache_dir() if version == ORT_WEB_VERSION else cache_dir().with_name(f"onnxruntime-web-{version}")
    have = all((dest / f).is_file() for f in [f for files in RUNTIME.values() for f in files] + ["package.json"])
    if not force and have and json.loads((dest / "package.json").read_text()).get("version") == version:
        return dest
    npm = shutil.which("npm")
    if npm is None:
        raise PocketVisionError("npm is not installed; install Node.js (it brings npm) or unpack "
                                f"onnxruntime-web@{version} yourself and set PV_ORT_WEB_DIR to its dist/ folder.")
    with tempfile.TemporaryDirectory() as tmp:
        r = subprocess.run([npm, "pack", f"onnxruntime-web@{version}", "--silent"], cwd=tmp, capture_output=True,
                           text=True)
        if r.returncode != 0:
            raise PocketVisionError(f"npm pack onnxruntime-web@{version} failed: "
                                    f"{(r.stderr or r.stdout).strip().splitlines()[-1:]}")
        tgz = next(Path(tmp).glob("onnxruntime-web-*.tgz"))
        staging = Path(tempfile.mkdtemp(dir=tmp))
        with tarfile.open(tgz) as t:
            for n in [f for files in RUNTIME.values() for f in files]:
                t.extract(t.getmember(f"package/dist/{n}"), staging, filter="data")
            # package.json records the version and the (MIT) licence of what we redistribute.
            t.extract(t.getmember("package/package.json"), staging, filter="data")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(staging / "package" / "dist", dest)
        shutil.copy2(staging / "package" / "package.json", dest / "package.json")
    return dest


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def split_external(onnx_path: Path, out_dir: Path, chunk_bytes: int = CHUNK_BYTES) -> list[str]:
    """Write ``out_dir/model.onnx`` with weights > 1 KB moved into ``model.data.N`` files of about
    ``chunk_bytes`` (a tensor is never split). Returns the chunk names (empty: one self-contained file)."""
    import onnx
    from onnx.external_data_helper import set_external_data

    if onnx_path.stat().st_size <= chunk_bytes:
        shutil.copy2(onnx_path, out_dir / "model.onnx")
        return []
    model = onnx.load(str(onnx_path))
    chunks: list[str] = []
    fh = None
    try:
        for t in model.graph.initializer:
            if not t.HasField("raw_data"):
                t.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t), t.name))
            data = t.raw_data
            if len(data) < 1024:
                continue
            if fh is None or (fh.tell() and fh.tell() + len(data) > chunk_bytes):
                if fh:
                    fh.close()
                chunks.append(f"model.data.{len(chunks)}")
                fh = open(out_dir / chunks[-1], "wb")  # noqa: SIM115 - closed above/below
            offset = fh.tell()
            fh.write(data)
            set_external_data(t, location=chunks[-1], offset=offset, length=len(data))
            t.ClearField("raw_data")
            t.data_location = onnx.TensorProto.EXTERNAL
    finally:
        if fh:
            fh.close()
    (out_dir / "model.onnx").write_bytes(model.SerializeToString())
    return chunks


def export_web(onnx_path: str | Path, meta: dict[str, Any], out: str | Path, outputs, chunk_bytes: int = CHUNK_BYTES,
               title: str | None = None) -> Path:
    """Build the web folder ``out`` from an exported ``.onnx`` (float, int8 or palettised). The page's
    renderer is the task's (``outputs``: its ``OutputSpec``; the renderer is a module from ``tasks/web/``).
    Callers stage ``out`` (``export.base.staged``) so a half-built folder never replaces a good one."""
    out = Path(out)
    rt = runtime_dir()
    spec = outputs
    out.mkdir(parents=True, exist_ok=True)
    static = resources.files("pocketvision.export") / "web_static"
    for name in ("index.html", "app.js", "update.js", "teach.js"):
        (out / name).write_bytes((static / name).read_bytes())
    (out / "render").mkdir(exist_ok=True)
    (out / "render" / spec.web_renderer).write_bytes(
        (resources.files("pocketvision.tasks") / "web" / spec.web_renderer).read_bytes())
    (out / "_headers").write_text(HEADERS_FILE)
    (out / "ort").mkdir(exist_ok=True)
    runtime: dict[str, Any] = {}
    for backend, (module, glue, wasm) in RUNTIME.items():
        for f in (module, glue, wasm):
            shutil.copy2(rt / f, out / "ort" / f)
        runtime[backend] = {"module": module, "wasm": wasm, "wasm_sha256": _sha256(rt / wasm),
                            "wasm_size": (rt / wasm).stat().st_size}
    if (rt / "package.json").exists():
        shutil.copy2(rt / "package.json", out / "ort" / "package.json")
    chunks = split_external(Path(onnx_path), out, chunk_bytes)
    model = {"path": "model.onnx", "sha256": _sha256(out / "model.onnx"), "size": (out / "model.onnx").stat().st_size,
             "external_data": [{"path": c, "sha256": _sha256(out / c), "size": (out / c).stat().st_size}
                               for c in chunks]}
    doc = {"format": "pocketvision-web", "title": title or f"pocketvision: {' / '.join(meta['labels'])}",
           "labels": meta["labels"], "contract": meta["contract"], "threshold": meta.get("threshold"),
           "task": meta["task"], "renderer": f"render/{spec.web_renderer}", "outputs": list(spec.names),
           "dynamic_size": spec.dynamic_size, "model": model, "runtime": runtime, "onnxruntime_web": ORT_WEB_VERSION,
           **{k: v for k, v in meta.items() if k not in ("labels", "contract", "threshold", "task")}}
    (out / "model.json").write_text(json.dumps(doc, indent=2, default=str))
    return out


@register_target
class WebTarget(Target):
    name = "web"
    runtime = "onnxruntime-web (WebAssembly, in a browser)"
    suffix = ".web"
    precisions = ("fp32", "int8")
    description = "static folder: index.html, app.js, the task's renderer, model.json, model + onnxruntime-web"
    teachable = True

    def export(self, job: ExportJob) -> None:
        from .onnx import OnnxTarget
        runtime_dir()  # the runtime files are needed: say so before the (slower) graph export
        onnx_job = dataclasses.replace(job, out=job.tmp / "model.onnx")
        OnnxTarget().export(onnx_job)
        job.report.update(onnx_job.report)
        export_web(onnx_job.out, {**job.meta, "precision": job.precision}, job.out, job.task.outputs)

    def open(self, path: str | Path, threads: int | None = None, accelerator: str | None = None):
        self._default_only(accelerator)
        return WebPredictor(path, threads)

    def accelerators(self) -> tuple[str, ...]:
        return ("wasm",)  # onnxruntime-web's WebAssembly backend in Chromium (no GPU here for WebGPU)

    def owns(self, path: Path) -> bool:
        return path.suffix == self.suffix or is_web_folder(path)
