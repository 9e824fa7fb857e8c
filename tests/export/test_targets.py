"""LiteRT and Core ML targets with their real tools: the .tflite runs in the ai-edge-litert interpreter;
the .mlpackage is checked structurally (Core ML cannot run off Apple platforms) and says so."""

from __future__ import annotations

import json

import numpy as np
import pytest

import pocketvision as pv
from pocketvision.runtime.litert_predictor import LiteRTPredictor

from helpers import run_cli

pytestmark = [pytest.mark.shared_data, pytest.mark.slow]


@pytest.fixture(scope="module")
def tflite_fp32(trained_bundle, tmp_path_factory):
    """The bundle's fp32 .tflite (verified), exported once: its own test below, and the size the others compare to."""
    return pv.load(trained_bundle).export(tmp_path_factory.mktemp("tflite") / "m.tflite", to="tflite")


def test_tflite_fp32_matches_the_bundle_and_carries_metadata(trained_bundle, tflite_fp32):
    b = pv.load(trained_bundle)
    res = tflite_fp32
    v = res.verification
    assert v["passed"] and v["n"] == 80 and v["max_abs_diff"] < 1e-3 and v["top1_agreement"] >= 0.995
    p = LiteRTPredictor(res.path)
    assert p.labels == b.labels and p.contract.size == b.contract.size
    assert p.meta["threshold"] == b.threshold
    img = b.held_out().paths[0]
    r = run_cli("predict", str(res.path), str(img), "--json")  # the CLI runs it, torch-free path
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)[0]["label"] in b.labels
    # Every predictor times itself the same way; an interpreter opened for another thread count is a new one.
    two = p.at_threads(2)
    assert two is not p and two.interpreter is not p.interpreter and p.latency_ms(runs=3)["p50_ms"] > 0
    x = np.random.default_rng(0).integers(0, 256, (1, *b.contract.size, 3), dtype=np.uint8)
    assert np.allclose(two.run_pixels(x), p.run_pixels(x), atol=1e-5)


def test_tflite_int8_is_full_integer_and_within_budget(trained_bundle, tflite_fp32, tmp_path):
    b = pv.load(trained_bundle)
    fp32 = tflite_fp32.path
    # 80 val photos: one photo is 1.25 points, so the budget here allows two flips.
    res = b.export(tmp_path / "q.tflite", to="tflite", precision="int8", max_drop=2.5)
    assert res.verification["passed"], res.verification
    assert res.path.stat().st_size < fp32.stat().st_size / 2
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_path=str(res.path))
    kinds = {d["dtype"] for d in it.get_tensor_details()}
    assert np.int8 in kinds  # quantised tensors, not a float model


def test_coreml_is_structurally_verified_and_says_not_numerically(trained_bundle, tmp_path):
    r = run_cli("export", str(trained_bundle), "--to", "coreml", "--bits", "4", "--out", str(tmp_path / "m.mlpackage"),
                "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    v = out["verification"]
    assert v["passed"] and not v["numeric"] and "not verified numerically" in v["criterion"]
    assert v["structure"]["image_input"] and v["structure"]["outputs"]
    assert v["structure"]["palettised_weights"] >= 5  # Core ML's own look-up tables
    r = run_cli("eval", str(tmp_path / "m.mlpackage"), "x")
    assert r.returncode == 2 and "Apple" in r.stderr


def test_tflite_fp16_halves_the_file_and_keeps_answers(trained_bundle, tflite_fp32, tmp_path):
    b = pv.load(trained_bundle)
    fp32 = tflite_fp32.path
    res = b.export(tmp_path / "h.tflite", to="tflite", precision="fp16")
    v = res.verification
    assert v["passed"] and v["max_abs_diff"] < 1e-2 and v["top1_agreement"] >= 0.98
    assert res.path.stat().st_size < 0.6 * fp32.stat().st_size
    assert LiteRTPredictor(res.path).meta["precision"] == "fp16"  # metadata survives the quantizer


def test_a_missing_converter_is_named_before_any_export(trained_bundle, tmp_path):
    """`export --to onnx,tflite` without the [litert] extra: one line with the pip command, and no ONNX file first."""
    import subprocess
    import sys
    code = ("import sys; sys.modules['litert_torch'] = None; from pocketvision.cli.commands import main; "
            "sys.exit(main(sys.argv[1:]))")
    r = subprocess.run([sys.executable, "-c", code, "export", str(trained_bundle), "--to", "onnx,tflite",
                        "--out-dir", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "tflite target needs litert_torch" in lines[0], r.stderr
    assert "pip install 'pocketvision[litert]'" in lines[0]
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())  # nothing exported first
