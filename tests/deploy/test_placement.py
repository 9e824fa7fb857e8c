"""Placement (`bench --pick`) and device profiles (`device-profile`): real exports, real runtimes, real photos.

No assertion depends on how fast this machine is: the measured pick is checked for consistency (the fastest of
its own table, recorded in the bundle), the predicted pick against profiles whose costs the test sets."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys

import pytest
from helpers import one_line_error, run_cli

from pocketvision.deploy import profiles


@pytest.fixture(scope="module")
def measured_profile(tmp_path_factory):
    """This machine's profile, measured by the CLI in a process where torch cannot be imported (the device side
    needs numpy, onnx and onnxruntime only)."""
    out = tmp_path_factory.mktemp("profile") / "dev.json"
    code = ("import sys; sys.modules['torch'] = None; from pocketvision.cli.commands import main; "
            f"sys.exit(main(['device-profile', '--out', {str(out)!r}, '--threads', '1', '--runs', '3', "
            "'--name', 'test board']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return out


def test_device_profile_measures_every_kernel_family_without_torch(measured_profile):
    prof = profiles.load(measured_profile)
    assert prof["name"] == "test board" and profiles.thread_counts(prof) == [1]
    ops = prof["threads"]["1"]["ops"]
    # fp32 and int8 convolutions by shape class, matrix products, the activations pocketvision exports
    for op in ("Conv/1x1", "Conv/dw3", "Conv/dw5", "Conv/dw7", "QLinearConv/1x1", "Gemm", "QGemm", "Exp", "Max"):
        assert op in ops, (op, sorted(ops))
    assert all(v[0] >= 0 and v[1] >= 0 and v[2] >= 1 for v in ops.values())
    assert (ops["Conv/1x1"][3], ops["Exp"][3]) == ("mac", "elem")


def _rigged(prof: dict, int8_cheap: bool) -> dict:
    """``prof`` with int8 kernels nearly free and float convolutions dear (or the reverse)."""
    p = copy.deepcopy(prof)
    ops = p["threads"]["1"]["ops"]
    for op, v in ops.items():
        quantised = op.startswith(("QLinear", "QGemm", "Quantize", "Dequantize"))
        if quantised == int8_cheap:
            v[0], v[1] = 0.0, 1e-6
        elif v[3] == "mac":
            v[0], v[1] = v[0] * 100 + 1.0, v[1] + 0.1
    p["name"] = "int8-friendly board" if int8_cheap else "float-only board"
    return p


@pytest.mark.shared_data
@pytest.mark.slow
def test_pick_follows_the_device_profile(trained_bundle, measured_profile, tmp_path):
    import pocketvision as pv
    from pocketvision.deploy import placement
    prof = profiles.load(measured_profile)
    picks = {}
    for cheap in (True, False):
        f = tmp_path / f"{cheap}.json"
        f.write_text(json.dumps(_rigged(prof, cheap)))
        rep = placement.pick(pv.load(trained_bundle), None, tmp_path / f"out-{cheap}", profile=f,
                             variants=[("onnx", "fp32", None), ("onnx", "int8", None), ("tflite", "fp32", None)],
                             threads=[1], runs=5, record=False)
        picks[cheap] = rep["choice"]
        opts = rep["options"]
        assert {o["variant"] for o in opts} == {"onnx fp32", "onnx int8", "tflite fp32"}
        assert all(o["how"] == "predicted" for o in opts if o["target"] == "onnx")
        tfl = [o for o in opts if o["target"] == "tflite"]
        assert tfl and all(o["ms"] is None and "LiteRT" in o["how"] for o in tfl)  # said, not silently dropped
    assert (picks[True]["precision"], picks[False]["precision"]) == ("int8", "fp32")
    assert picks[True]["device"] == "int8-friendly board" and picks[True]["how"] == "predicted"


@pytest.mark.shared_data
@pytest.mark.slow
def test_bench_pick_here_measures_every_accelerator_and_records_the_choice(trained_bundle, tmp_path):
    import pocketvision as pv
    from pocketvision.deploy.placement import thread_counts
    bundle = tmp_path / "m.pvb"
    shutil.copy(trained_bundle, bundle)
    r = run_cli("bench", str(bundle), "--pick", "--variants", "onnx,onnx:int8,tflite", "--runs", "5",
                "--out-dir", str(tmp_path / "p"), "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    opts = rep["options"]
    assert {(o["variant"], o["accelerator"]) for o in opts} >= {("onnx fp32", "cpu"), ("onnx int8", "cpu"),
                                                                 ("tflite fp32", "xnnpack"), ("tflite fp32", "builtin")}
    assert {o["threads"] for o in opts} == set(thread_counts(os.cpu_count() or 1))
    assert all(o["how"] == "measured" and o["ms"] > 0 for o in opts)
    c = rep["choice"]
    fastest = min(opts, key=lambda o: (o["ms"], o["size_bytes"]))
    assert (c["file"], c["accelerator"], c["threads"]) == (fastest["path"], fastest["accelerator"],
                                                           fastest["threads"])
    # only verified variants compete: each option's accuracy is within the budget of the bundle's
    assert all(o["accuracy"] >= c["reference_accuracy"] - 0.01 for o in opts)
    b = pv.load(bundle)
    assert b.meta["placement"] == c and b.meta["lineage"][-1] == c
    assert json.loads((tmp_path / "p" / "placement.json").read_text())["choice"] == c
    # the README's next step: exporting the bundle that now records its placement (it crashed on that lineage)
    r = run_cli("export", str(bundle), "--out", str(tmp_path / "after.onnx"))
    assert r.returncode == 0 and "made by placement" in r.stdout, r.stderr[-2000:]


@pytest.mark.shared_data
def test_pick_bad_input_gets_one_line(trained_bundle, measured_profile, tmp_path):
    one_line_error(run_cli("bench", str(trained_bundle), "--pick", "--device-profile", str(tmp_path / "no.json")),
                   "no.json", "device-profile --out")
    (tmp_path / "other.json").write_text('{"format": "something else"}')
    one_line_error(run_cli("bench", str(trained_bundle), "--pick", "--device-profile", str(tmp_path / "other.json")),
                   "other.json", "not a device profile")
    one_line_error(run_cli("bench", str(trained_bundle), "--pick", "--device-profile", str(measured_profile),
                           "--threads", "3"), "--threads 3", "1 thread")
    one_line_error(run_cli("bench", str(trained_bundle), "--pick", "--threads", "two"), "--threads two")
    onnx = tmp_path / "m.onnx"
    assert run_cli("export", str(trained_bundle), "--to", "onnx", "--out", str(onnx), "--no-verify").returncode == 0
    one_line_error(run_cli("bench", str(onnx), "--pick"), "m.onnx", "bundle")


def test_an_accelerator_this_runtime_lacks_is_refused(tmp_path):
    from pocketvision.errors import PocketVisionError
    from pocketvision.export import get_target
    assert get_target("onnx").accelerators()[0] == "cpu"
    assert get_target("tflite").accelerators() == ("xnnpack", "builtin")
    f = tmp_path / "probe.onnx"
    f.write_bytes(profiles.probe(64, 16, 3, 1, "relu"))
    with pytest.raises(PocketVisionError, match="not available here"):
        get_target("onnx").open(f, 1, accelerator="tensorrt")
