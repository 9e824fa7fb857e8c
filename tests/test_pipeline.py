"""End to end on real photos: train -> evaluate -> export -> verify -> predict -> bench."""

from __future__ import annotations

import json
import sys

import onnx
import pytest

import pocketvision as pv
from helpers import one_line_error, run_cli
from pocketvision.core import bundle_file as bundle_io

pytestmark = [pytest.mark.shared_data, pytest.mark.slow]


def test_trained_model_beats_chance_on_real_photos(trained_bundle, hotdog_small):
    b = pv.load(trained_bundle)
    m = b.evaluate(hotdog_small, split="val")
    assert m["n"] == 80
    assert m["accuracy"] > 0.6 and m["roc_auc"] > 0.65, m  # chance is 0.5
    assert b.meta["data"]["fingerprint"] and b.meta["versions"]["torch"]
    assert b.threshold is not None and b.threshold["positive"] == 0  # "hotdog" is the positive class


def test_onnx_export_is_self_contained_and_verified(trained_bundle, trained_onnx):
    b = pv.load(trained_bundle)
    res = trained_onnx  # the session's export (conftest), alone in its folder
    model = onnx.load(res.path)
    assert not list(res.path.parent.glob("*.data"))  # no external-data side file
    assert model.opset_import[0].version >= 17
    inp = model.graph.input[0]
    assert inp.name == "image" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [96, 96, 3]
    assert [o.name for o in model.graph.output] == ["probabilities", "logits", "unfamiliar"]
    assert "BatchNormalization" not in {n.op_type for n in model.graph.node}
    meta = {p.key: json.loads(p.value) for p in model.metadata_props}
    assert meta["pocketvision.labels"] == ["hotdog", "not_hotdog"]
    assert meta["pocketvision.contract"]["size"] == [96, 96]
    v = res.verification
    assert v["passed"] and v["n"] == 80 and v["max_abs_diff"] < 1e-4 and v["top1_agreement"] == 1.0
    # parity holds on the phone-photo twin of the same photos too (blur, JPEG, dark, flash, ...)
    s = v["shifted"]
    assert s["passed"] and s["n"] == 80 and s["max_abs_diff"] < 1e-4 and s["top1_agreement"] == 1.0
    assert meta["pocketvision.val"]["accuracy"] == b.metrics["accuracy"]  # for `eval --compare-to-val` on the file


def test_calibrated_probabilities_are_inside_the_model(trained_bundle):
    """Temperature scaling is fitted on val + its shifted twin and folded into the classifier: the bundle's own
    probabilities (and so every export's) are the calibrated ones, and the threshold was chosen on them."""
    from pocketvision.evaluate import classification_metrics
    b = pv.load(trained_bundle)
    cal = b.metrics["temperature_scaling"]
    assert cal["folded"] and 0.05 < cal["temperature"] < 20 and cal["fitted_on"].startswith("val + shifted val")
    held = b.held_out()
    m = classification_metrics(held.truth, b.predict_pixels(held.pixels), b.labels, threshold=b.threshold["value"])
    assert m["ece"] == pytest.approx(b.metrics["ece"], abs=1e-6) == pytest.approx(cal["ece_val"], abs=1e-6)
    assert m["accuracy"] == b.metrics["accuracy"]
    assert b.metrics["threshold_selection"]["images"] == cal["fitted_on"]
    assert len(b.metrics["calibration"]["bins"]) >= 2


def test_eval_compare_to_val(trained_bundle, trained_onnx, hotdog_small, tmp_path):
    """The val split against itself moves nothing; a class folder the model does not know is named and left out,
    the rest evaluated; the same figures go to the HTML report, and an exported file compares too."""
    import shutil
    r = run_cli("eval", str(trained_bundle), str(hotdog_small), "--split", "val", "--compare-to-val", "--json")
    assert r.returncode == 0, r.stderr
    shift = json.loads(r.stdout)["shift"]
    acc = next(x for x in shift["rows"] if x["key"] == "accuracy")
    assert acc["change"] == pytest.approx(0) and acc["val"] == pv.load(trained_bundle).metrics["accuracy"]
    assert not shift["shifted"] and shift["verdict"].startswith("this folder looks like your training data")
    mixed = tmp_path / "mixed"
    for c in ("hotdog", "not_hotdog"):
        shutil.copytree(hotdog_small / "val" / c, mixed / c)
    (mixed / "pizza").mkdir()
    shutil.copy(next((hotdog_small / "val" / "hotdog").iterdir()), mixed / "pizza" / "p.jpg")
    onnx_path = trained_onnx.path
    r = run_cli("eval", str(onnx_path), str(mixed), "--compare-to-val", "--report", str(tmp_path / "rep"))
    assert r.returncode == 0, r.stderr
    assert "verdict" in r.stdout and "['pizza']" in r.stdout and "left out" in r.stdout
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "Against val" in html and "Verdict:" in html and "pizza" in html
    r = run_cli("eval", str(onnx_path), str(mixed))  # without the flag an unknown class is still an error
    assert r.returncode == 2 and "pizza" in r.stderr


def test_cli_export_verify_predict_eval(trained_bundle, hotdog_small, tmp_path):
    onnx_path = tmp_path / "cli.onnx"
    r = run_cli("export", str(trained_bundle), "--out", str(onnx_path), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["verification"]["passed"]
    r = run_cli("verify", str(trained_bundle), str(onnx_path), "--data", str(hotdog_small), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["top1_agreement"] == 1.0
    # a tolerance nobody can meet must fail with a non-zero exit
    r = run_cli("verify", str(trained_bundle), str(onnx_path), "--data", str(hotdog_small), "--tolerance", "0")
    assert r.returncode == 1 and "FAILED" in r.stdout

    imgs = sorted((hotdog_small / "val" / "hotdog").iterdir())[:3]
    r_onnx = run_cli("predict", str(onnx_path), *map(str, imgs), "--json")
    r_bundle = run_cli("predict", str(trained_bundle), *map(str, imgs), "--json")
    assert r_onnx.returncode == 0 and r_bundle.returncode == 0, r_onnx.stderr + r_bundle.stderr
    a, b = json.loads(r_onnx.stdout), json.loads(r_bundle.stdout)
    assert [x["label"] for x in a] == [x["label"] for x in b]
    assert all(x["label"] in ("hotdog", "not_hotdog") for x in a)
    assert abs(a[0]["confidence"] - b[0]["confidence"]) < 1e-4
    r = run_cli("predict", str(onnx_path), str(imgs[0]))
    assert r.stdout.split("\t")[1] in ("hotdog", "not_hotdog")

    e1 = json.loads(run_cli("eval", str(onnx_path), str(hotdog_small), "--json").stdout)
    e2 = json.loads(run_cli("eval", str(trained_bundle), str(hotdog_small), "--json",
                            "--report", str(tmp_path / "rep")).stdout)
    assert e1["accuracy"] == e2["accuracy"] and e1["n"] == 80
    assert (tmp_path / "rep" / "report.html").stat().st_size > 10_000


def test_onnx_predict_never_imports_torch(trained_onnx, hotdog_small):
    import subprocess
    onnx_path = trained_onnx.path
    img = sorted((hotdog_small / "val" / "hotdog").iterdir())[0]
    code = ("import sys; from pocketvision.cli.commands import main; rc = main(['predict', sys.argv[1], sys.argv[2]]);"
            "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code, str(onnx_path), str(img)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_bench_reports_everything(trained_bundle, hotdog_small, shared_data):
    r = run_cli("bench", str(trained_bundle), "--data", str(hotdog_small / "val" / "hotdog"), "--large",
                str(shared_data / "photos-fullres"), "--runs", "20", "--max-images", "5", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    for key in ("size_bytes", "gzip_bytes", "batch1_1thread", "peak_rss_mb", "end_to_end", "end_to_end_large"):
        assert out[key], key
    assert 0 < out["batch1_1thread"]["p50_ms"] <= out["batch1_1thread"]["p99_ms"]
    assert out["gzip_bytes"] < out["size_bytes"]


def test_resume_after_interrupt(hotdog_small, tmp_path):
    """Ctrl-C mid-run leaves a checkpoint; --resume finishes the run. The SIGINT arrives at a known point (right
    after epoch 3's checkpoint: POCKETVISION_INTERRUPT_AFTER_EPOCH), never by racing a timer."""
    import os
    import subprocess
    run = tmp_path / "run"
    args = [sys.executable, "-m", "pocketvision", "train", str(hotdog_small), "--arch", "deepdog",
            "--arch-args", "alpha=0.25", "--size", "64", "--epochs", "6", "--workers", "1", "--run-dir", str(run),
            "--out", str(tmp_path / "r.pvb"), "--no-tensorboard", "--json"]
    p = subprocess.run(args, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "POCKETVISION_INTERRUPT_AFTER_EPOCH": "3"})
    assert p.returncode == 130, p.stderr
    assert "--resume" in p.stderr and not (tmp_path / "r.pvb").exists()
    assert json.loads((run / "checkpoint.json").read_text())["next_epoch"] == 4
    # An option that would change the training is refused, not silently replaced by the run's own.
    one_line_error(run_cli("train", str(hotdog_small), "--resume", str(run), "--epochs", "9", "--size", "64"),
                   "--epochs 9 (the run has 6)", "start a new run")
    assert json.loads((run / "checkpoint.json").read_text())["next_epoch"] == 4
    r = run_cli("train", str(hotdog_small), "--resume", str(run), "--out", str(tmp_path / "r.pvb"), "--json",
                "--no-tensorboard")
    assert r.returncode == 0, r.stderr
    b = pv.load(tmp_path / "r.pvb")
    assert [h["epoch"] for h in b.meta["history"]] == list(range(1, 7))
    # A finished run chooses its threshold again for another precision target, with the same trained weights.
    r = run_cli("train", str(hotdog_small), "--resume", str(run), "--target-precision", "0.6", "--out",
                str(tmp_path / "r6.pvb"), "--json", "--no-tensorboard")
    assert r.returncode == 0, r.stderr
    b6 = pv.load(tmp_path / "r6.pvb")
    assert b.meta["threshold"]["target_precision"] == 0.9 and b6.meta["threshold"]["target_precision"] == 0.6
    assert b6.meta["history"] == b.meta["history"]
    assert bundle_io.read(tmp_path / "r6.pvb").weights == bundle_io.read(tmp_path / "r.pvb").weights


def test_resume_continues_a_top_fine_tune(hotdog_few_train, tmp_path):
    """The pretrained default on a CPU fine-tunes the last blocks on cached activations (--finetune top). Interrupted
    after epoch 2 and resumed, it goes on the same way: every epoch a "top" epoch, the linear probe fitted once
    (not again over the checkpoint's head), and the trunk still the ImageNet weights. 48 training photos a class (the
    cost of each run is caching their activations), hotdog_small's 80 val photos."""
    import os

    import torch
    from safetensors.torch import load as st_load

    from pocketvision.models import build_model
    run = tmp_path / "run"
    args = ["train", str(hotdog_few_train), "--epochs", "4", "--workers", "0", "--run-dir", str(run), "--out",
            str(tmp_path / "t.pvb"), "--no-tensorboard", "--json"]
    p = run_cli(*args, env={**os.environ, "POCKETVISION_INTERRUPT_AFTER_EPOCH": "2"})
    assert p.returncode == 130, p.stderr[-2000:]
    r = run_cli("train", str(hotdog_few_train), "--resume", str(run), "--out", str(tmp_path / "t.pvb"), "--json",
                "--no-tensorboard")
    assert r.returncode == 0, r.stderr[-2000:]
    b = pv.load(tmp_path / "t.pvb")
    hist = b.meta["history"]
    assert [(h["epoch"], h["phase"]) for h in hist] == [(0, "probe"), *((e, "top") for e in range(1, 5))]
    assert b.meta["metrics"]["accuracy"] > 0.8  # Lite0 on 80 real val photos
    trained = st_load(bundle_io.read(tmp_path / "t.pvb").weights)
    ref = build_model(b.meta["arch"], pretrained=True).state_dict()
    frozen = [k for k in ref if k.startswith("features.0.") and k in trained]
    assert frozen and all(torch.equal(trained[k], ref[k]) for k in frozen)
