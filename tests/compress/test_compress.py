"""Compression: palettisation (k-means, BN folding, ONNX look-up-table carrier) and int8, on real photos."""

from __future__ import annotations

import copy
import gzip
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import pocketvision as pv
from pocketvision.compress.palettize import fold_batchnorm_, kmeans_1d, palettize_tensor
from pocketvision.errors import PocketVisionError
from pocketvision.models import build_model

from helpers import run_cli


def test_fisher_sensitivity_sees_only_what_palettising_moves():
    """A layer already on a 4-bit palette loses nothing (estimate 0); a continuous one does (> 0)."""
    import torch
    from torch import nn

    from pocketvision.compress.palettize import fisher_sensitivity, palettize_tensor
    from pocketvision.tasks import get_task
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3))
    with torch.no_grad():
        net[2].weight.copy_(palettize_tensor(net[2].weight, 4))
    x = [torch.randn(32, 16) for _ in range(3)]
    f = fisher_sensitivity(net, ["0", "2"], 4, x, get_task("classify").sampled_nll)
    assert f["2"] == 0 and f["0"] > 0
    assert f == fisher_sensitivity(net, ["0", "2"], 4, x, get_task("classify").sampled_nll)  # seeded: repeatable


def test_kmeans_1d_palette_and_exactness():
    rng = np.random.default_rng(0)
    w = rng.normal(size=5000).astype(np.float32)
    c, idx = kmeans_1d(w, 16)
    assert len(c) == 16 and np.all(np.diff(c) > 0) and idx.max() == 15
    err16 = np.abs(c[idx] - w).mean()
    c4, idx4 = kmeans_1d(w, 4)
    assert err16 < np.abs(c4[idx4] - w).mean() / 3  # more values, much closer
    few = np.array([0.5, -1.0, 0.5, 2.0], np.float32)
    c, idx = kmeans_1d(few, 16)  # already a palette: reproduced exactly
    assert np.array_equal(c[idx], few)


def test_palettize_tensor_per_group_has_few_values():
    w = torch.randn(32, 16, 3, 3)
    layer = palettize_tensor(w, 3)
    assert len(torch.unique(layer)) <= 8
    grouped = palettize_tensor(w, 3, group_channels=8)
    for g in range(4):
        assert len(torch.unique(grouped[g * 8:(g + 1) * 8])) <= 8
    assert (grouped - w).abs().mean() < (layer - w).abs().mean()  # finer palettes fit better


def test_channel_scaled_palettes_read_back_from_the_weights_alone():
    """One shared table, one scale per output channel: the carriers recover both from the float weights."""
    from pocketvision.compress.palette_codec import encode
    torch.manual_seed(0)
    w = torch.randn(64, 32, 3, 3) * (torch.rand(64, 1, 1, 1) * 3)  # channels of different ranges, as after BN folding
    w[5] = 0  # a dead channel stays exactly zero and adds no table entry
    for bits in (4, 8):
        p = palettize_tensor(w, bits, channel_scale=True)
        pal = encode(p.numpy())
        assert pal is not None and pal.scale is not None and len(pal.lut) <= 2 ** bits
        assert np.allclose(pal.scale, p.abs().reshape(64, -1).max(1).values.numpy())  # the scale is the largest |w|
        assert np.abs(pal.dense(tuple(p.shape)) - p.numpy()).max() < 1e-5
        assert float(p[5].abs().max()) == 0
        # fitting channels at their own scale beats one table of raw values
        assert (p - w).abs().mean() < (palettize_tensor(w, bits) - w).abs().mean()
    assert encode(w.numpy()) is None  # continuous weights are not a palette
    plain = palettize_tensor(w, 4)
    assert encode(plain.numpy()).scale is None and len(encode(plain.numpy()).lut) <= 16


def test_finetuned_channel_scaled_palettes_stay_readable():
    """Fine-tuning moves the shared values but pins the +-1 ends, so each channel's scale survives."""
    from torch import nn

    from pocketvision.compress.palette_codec import encode
    from pocketvision.compress.palettize import finetune_centroids
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Conv2d(3, 32, 3), nn.ReLU(), nn.Conv2d(32, 16, 3), nn.Flatten(),
                            nn.LazyLinear(4)).eval()
    teacher(torch.rand(1, 3, 16, 16))
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for m in (student[2], student[4]):
            m.weight.copy_(palettize_tensor(m.weight, 4, channel_scale=True))
    before = {i: encode(student[i].weight.detach().numpy()) for i in (2, 4)}
    x = torch.rand(64, 3, 16, 16)
    finetune_centroids(student, lambda step: (x[step % 2 * 32:][:32], None), 20, teacher, lr=1e-2)
    for i in (2, 4):
        after = encode(student[i].weight.detach().numpy())
        assert after is not None and after.scale is not None and len(after.lut) <= 16
        assert np.allclose(after.scale, before[i].scale)
        assert not np.allclose(after.lut, before[i].lut)  # the table did move


def test_fold_batchnorm_keeps_outputs_and_architecture():
    torch.manual_seed(0)
    m = build_model({"name": "deepdog", "args": {"alpha": 0.25, "num_classes": 2}}).eval()
    for mod in m.modules():  # non-trivial statistics, as after training
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-1, 1)
            mod.running_var.uniform_(0.5, 2)
            mod.weight.data.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 64, 64)
    before = m(x)
    keys = set(m.state_dict())
    folded = fold_batchnorm_(m)
    assert len(folded) >= 14  # the stem and every pointwise conv of DeepDog
    assert torch.allclose(before, m(x), atol=1e-4)
    assert set(m.state_dict()) == keys  # still loads into the same architecture


@pytest.mark.shared_data
@pytest.mark.slow
def test_palettised_bundle_exports_small_and_exact(trained_bundle, trained_onnx, tmp_path):
    b = pv.load(trained_bundle)
    small, rep = b.palettize(4, max_drop=1.0, finetune_steps=30)
    assert rep["n_images"] == 160  # the 80 val photos and their phone-photo twin
    assert -100 * rep["accuracy_change"] <= 1.0 + 1e-9  # the budget holds on real held-out photos, on both halves
    assert {la["bits"] for la in rep["layers"]} <= {4, 8}
    # layers ranked by the one-pass Fisher estimate, not by one evaluation per layer
    assert all(la["fisher"] is not None and la["fisher"] >= 0 and la["sensitivity"] is None for la in rep["layers"])
    assert small.meta["lineage"][-1]["stage"] == "palettize"
    path = small.save(tmp_path / "p4.pvb")
    reloaded = pv.load(path)  # the same architecture loads the palettised weights
    fp32 = trained_onnx.path  # the session's fp32 export of the same bundle (conftest)
    res = reloaded.export(tmp_path / "p4.onnx")
    assert res.verification["passed"] and res.verification["max_abs_diff"] < 1e-4
    graph = onnx.load(str(res.path)).graph
    assert any(n.op_type == "Gather" and n.input[0].endswith("__pal_lut") for n in graph.node)
    assert small.meta["lineage"][-1]["channel_scale"]  # the default: one table, one scale per output channel
    assert any(t.name.endswith("__pal_scale") for t in graph.initializer)
    gz = lambda p: len(gzip.compress(p.read_bytes()))  # noqa: E731
    four_bit = sum(1 for la in rep["layers"] if la["bits"] == 4)
    if four_bit == len(rep["layers"]):
        assert gz(fp32) / gz(res.path) > 5
    assert gz(fp32) / gz(res.path) > 2


@pytest.mark.shared_data
@pytest.mark.slow
def test_int8_export_within_budget_with_layer_report(trained_bundle, tmp_path):
    b = pv.load(trained_bundle)
    res = b.export(tmp_path / "q.onnx", precision="int8", max_drop=1.0)
    graph = onnx.load(str(res.path)).graph
    assert sum(n.op_type == "QuantizeLinear" for n in graph.node) > 5
    rep = res.compression["int8"]
    assert rep["calibration_images"] >= 32 and rep["layer_errors"]
    assert all(np.isfinite(r["sqnr_db"]) for r in rep["layer_errors"])
    v = res.verification
    assert v["passed"] and -100 * v["accuracy_change"] <= 1.0 + 1e-9
    ort.InferenceSession(str(res.path))  # loads in the real runtime
    # The CLI's int8 export and its JSON: test_several_targets_into_a_folder_that_does_not_exist_yet (and with
    # --out: tests/data/test_shards.py)


def test_export_requests_are_checked_before_work(tmp_path):
    r = run_cli("export", "missing.pvb", "--to", "onnx,tflight")
    assert r.returncode == 2 and "tflight" in r.stderr and "onnx" in r.stderr and "web" in r.stderr
    r = run_cli("export", "missing.pvb", "--int8", "--bits", "4")
    assert r.returncode == 2 and "not both" in r.stderr
    r = run_cli("export", "missing.pvb", "--bits", "12")
    assert r.returncode == 2 and "between 2 and 8" in r.stderr


@pytest.mark.shared_data
@pytest.mark.slow
def test_several_targets_into_a_folder_that_does_not_exist_yet(trained_bundle, tmp_path):
    """One way to write outputs for every target and precision: the folder is made, nothing half-written."""
    out = tmp_path / "int8" / "nested"
    r = run_cli("export", str(trained_bundle), "--to", "onnx,tflite", "--int8", "--max-drop", "3", "--out-dir",
                str(out), "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [Path(x["path"]).name for x in rows] == ["hotdog-int8.onnx", "hotdog-int8.tflite"]
    assert [x["precision"] for x in rows] == ["int8", "int8"]
    assert all(x["verification"]["passed"] and "int8" in x["verification"]["criterion"] for x in rows)
    assert sorted(p.name for p in out.iterdir()) == ["hotdog-int8.onnx", "hotdog-int8.tflite"]  # no temp leftovers
    # verify reads the precision from the file: an int8 export is judged by the budget, not the fp32 tolerance
    r = run_cli("verify", str(trained_bundle), str(out / "hotdog-int8.onnx"), "--max-drop", "3", "--json")
    assert r.returncode == 0 and "int8" in json.loads(r.stdout)["criterion"], r.stdout + r.stderr


@pytest.mark.shared_data
def test_calibration_too_small_says_how_many(trained_bundle, hotdog_small, tmp_path):
    from pocketvision.compress.data import training_pixels
    b = pv.load(trained_bundle)
    b.meta["data"] = {}  # the training folder is gone: only --data is left
    tiny = tmp_path / "tiny"
    for split in ("train", "val"):
        for cls in b.labels:
            (tiny / split / cls).mkdir(parents=True)
            for p in sorted((hotdog_small / split / cls).iterdir())[:5]:
                (tiny / split / cls / p.name).symlink_to(p.resolve())
    with pytest.raises(PocketVisionError, match="at least 32 training images; found 10"):
        training_pixels(b, tiny)
    with pytest.raises(PocketVisionError, match="calibration needs at least 32"):
        b.export(tmp_path / "q.onnx", precision="int8", data=tiny)
    assert not (tmp_path / "q.onnx").exists()  # nothing half-written


@pytest.mark.shared_data
@pytest.mark.slow
def test_bench_all_prints_one_table_and_a_plot(trained_bundle, tmp_path):
    r = run_cli("bench", str(trained_bundle), "--all", "--variants", "onnx,onnx:int8,onnx:fp32:4",
                "--out-dir", str(tmp_path / "v"), "--runs", "5", "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    rows = {row["name"]: row for row in rep["variants"]}
    assert set(rows) == {"bundle (torch) fp32", "onnx fp32", "onnx int8", "onnx fp32 4-bit palette"}
    assert all(row["status"] == "verified" for row in rows.values())
    assert rows["onnx fp32"]["max_abs_diff"] < 1e-3 and rows["onnx fp32"]["agreement"] >= 0.995
    assert rows["onnx int8"]["size_bytes"] < rows["onnx fp32"]["size_bytes"] / 2.5
    assert rows["onnx fp32 4-bit palette"]["gzip_bytes"] < rows["onnx fp32"]["gzip_bytes"] / 2
    assert all(row["p50_1t_ms"] > 0 for n, row in rows.items() if n.startswith("onnx"))
    assert (tmp_path / "v" / "pareto.png").stat().st_size > 10_000


def test_op_compatibility_names_the_layer_and_a_fix():
    from onnx import TensorProto, helper

    from pocketvision.export.compat import check_onnx
    scope = helper.make_node("Relu", ["x"], ["r"], name="ok")
    bad = helper.make_node("ImageDecoder", ["bytes"], ["img"], name="node_decode")
    entry = bad.metadata_props.add()
    entry.key, entry.value = "pkg.torch.onnx.name_scopes", "['', 'model.decoder', 'decode']"
    custom = helper.make_node("FancyOp", ["r"], ["y"], name="node_fancy", domain="com.example")
    g = helper.make_graph([scope, bad, custom], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1]),
                           helper.make_tensor_value_info("bytes", TensorProto.UINT8, [None])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("com.example", 1)])
    problems = check_onnx(model, "web")
    assert [p.layer for p in problems] == ["model.decoder", "node_fancy"]
    assert "ImageDecoder" in str(problems[0]) and "web" in str(problems[0])
    assert "not an onnxruntime operator" in problems[1].fix
    # Function ops (expanded by onnxruntime) and every op of a real export pass.
    hs = helper.make_graph([helper.make_node("HardSwish", ["x"], ["y"])], "h",
                           [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                           [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    assert check_onnx(helper.make_model(hs, opset_imports=[helper.make_opsetid("", 18)])) == []


@pytest.mark.shared_data
@pytest.mark.slow
def test_structured_pruning_rebuilds_a_smaller_faster_net(trained_bundle, hotdog_small, tmp_path):
    r = run_cli("compress", str(trained_bundle), "--prune", "0.4", "--epochs", "4", "--data", str(hotdog_small),
                "--out", str(tmp_path / "p.pvb"), "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["params_after"] < 0.6 * rep["params_before"]
    assert all(a < b for a, b in zip(rep["channels_after"], rep["channels_before"]) if b > 8)
    assert rep["accuracy_after"] > 0.55  # still above chance on real held-out photos after fine-tuning
    small = pv.load(tmp_path / "p.pvb")  # rebuilds from its spec: deepdog with explicit channels
    assert small.meta["arch"]["args"]["channels"] == rep["channels_after"]
    assert small.meta["lineage"][-1]["stage"] == "prune"
    res = small.export(tmp_path / "p.onnx")
    assert res.verification["passed"]
    from pocketvision.models import model_info
    arch = pv.load(trained_bundle).meta["arch"]
    full = model_info(arch["name"], 96, **arch["args"])["macs"]
    assert model_info("deepdog", 96, **small.meta["arch"]["args"])["macs"] < 0.6 * full  # fewer MACs everywhere


@pytest.mark.shared_data
@pytest.mark.slow
def test_quantisation_aware_finetuning_then_int8(trained_bundle, tmp_path):
    import torch

    from pocketvision.compress.qat import qat_finetune
    b = pv.load(trained_bundle)
    x = torch.from_numpy(b.contract.normalize(b.held_out().pixels[:16]))
    tuned = qat_finetune(b.model, lambda step: x, steps=3)
    assert not any("parametrizations" in k for k in tuned.state_dict())  # fake quantisers removed
    with torch.no_grad():  # still the same function, roughly: a fine-tune, not a new model
        agree = (tuned(x).argmax(1) == b.model(x).argmax(1)).float().mean()
    assert agree >= 0.8
    res = b.export(tmp_path / "qat.onnx", precision="int8", qat_steps=5, max_drop=2.5)
    assert res.compression["int8"]["qat_steps"] == 5 and res.verification["passed"]
