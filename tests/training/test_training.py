"""Training modes on real photos: transfer learning, distillation, CutMix, LR range test."""

from __future__ import annotations

import json
import re

import pytest

import pocketvision as pv
from conftest import tiny_classifier  # noqa: F401  (a fixture)
from helpers import one_line_error, run_cli
from pocketvision.tasks.base import QUANT_OPS

pytestmark = [pytest.mark.shared_data, pytest.mark.slow]


def test_pretrained_probe_then_top_finetune(hotdog_small, tmp_path):
    """ImageNet features make this easy: well above chance even on 240 photos at 128 px. Three views cached: the
    photo, its mirror and one augmented crop (the TensorBoard grid shows those views)."""
    b = pv.train(hotdog_small, out=tmp_path / "eff.pvb", arch="efficientnet_lite0", size=128, epochs=2,
                 run_dir=tmp_path / "run", progress=False, tensorboard=True, top_views=3)
    hist = b.meta["history"]
    assert hist[0]["phase"] == "probe" and [h["phase"] for h in hist[1:]] == ["top", "top"]
    assert b.metrics["accuracy"] >= 0.85, b.metrics["accuracy"]
    # a pretrained run keeps the epoch of least val log loss, so fine-tuning never ends worse than the probe
    kept = b.meta["metrics"]["best_epoch"]
    assert hist[kept]["val_loss"] == min(h["val_loss"] for h in hist) <= hist[0]["val_loss"]
    assert (tmp_path / "run" / "report" / "report.html").exists()
    assert (tmp_path / "run" / "log.csv").read_text().count("\n") == 4
    # one TensorBoard for every path, the cached top fine-tune included
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    tags = set()
    for ev in (tmp_path / "run" / "tb").rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(ev), size_guidance={"images": 0, "tensors": 0})
        acc.Reload()
        tags |= set(acc.Tags()["images"]) | set(acc.Tags()["tensors"])
    assert {"inputs/augmented", "val/confusion_matrix", "val/reliability", "val/pr/hotdog"} <= tags, tags
    assert (tmp_path / "run" / "tb" / "projector_config.pbtxt").exists()


def test_linear_probe_only(hotdog_small, tmp_path):
    r = run_cli("train", str(hotdog_small), "--arch", "efficientnet_lite0", "--size", "128", "--linear-probe",
                "--out", str(tmp_path / "p.pvb"), "--run-dir", str(tmp_path / "run"), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["metrics"]["best_epoch"] == 0 and out["metrics"]["accuracy"] >= 0.85


def test_top_views_are_refused_where_nothing_would_use_them(hotdog_small, tmp_path):
    """--top-views sets what the cached top fine-tune caches: another path, or no augmentation to draw the extra
    views from, gets one line instead of a silently ignored flag."""
    data = str(hotdog_small)
    one_line_error(run_cli("train", data, "--arch", "deepdog", "--scratch", "--top-views", "4", cwd=tmp_path),
                   "--top-views", "--finetune top")
    one_line_error(run_cli("train", data, "--top-views", "3", "--augment", "enabled=false", cwd=tmp_path),
                   "--top-views 3", "augmentation is off")
    one_line_error(run_cli("train", data, "--top-views", "3", "--linear-probe", cwd=tmp_path),
                   "--top-views", "--linear-probe")
    assert not (tmp_path / "runs").exists()  # refused before anything was decoded or written


def test_distillation_and_cutmix_run(trained_bundle, hotdog_small, tmp_path):
    b = pv.train(hotdog_small, out=tmp_path / "s.pvb", arch="deepdog", arch_args={"alpha": 0.25}, size=64,
                 epochs=2, mixup=1.0, distill=str(trained_bundle), run_dir=tmp_path / "run", progress=False,
                 tensorboard=True, workers=0)
    assert b.meta["train_config"]["distill"] == str(trained_bundle)
    assert all(h["train_loss"] > 0 for h in b.meta["history"])
    assert list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))  # TensorBoard wrote something


def test_teacher_with_other_labels_is_refused(trained_bundle, tmp_path):
    from PIL import Image
    for c in ("cat", "dog"):
        (tmp_path / "d" / c).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (64, 64), (i * 40, 10, 10)).save(tmp_path / "d" / c / f"{i}.png")
    r = run_cli("train", str(tmp_path / "d"), "--arch", "deepdog", "--size", "64", "--epochs", "1", "--distill",
                str(trained_bundle), "--out", str(tmp_path / "x.pvb"), "--run-dir", str(tmp_path / "run"))
    assert r.returncode == 2 and "teacher labels" in r.stderr


def test_find_lr_writes_a_plot(hotdog_small, tmp_path):
    r = run_cli("train", str(hotdog_small), "--arch", "deepdog", "--arch-args", "alpha=0.25", "--size", "64",
                "--find-lr", "--run-dir", str(tmp_path / "lr"), "--workers", "0", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert 1e-6 <= out["suggested_lr"] <= 1.0
    assert (tmp_path / "lr" / "lr_find.png").read_bytes()[:4] == b"\x89PNG"


def test_bring_your_own_module(hotdog_small, tmp_path):
    import torch

    from pocketvision.errors import BundleError

    torch.manual_seed(0)
    b = pv.train(hotdog_small, out=tmp_path / "byo.pvb", model=tiny_classifier(), size=64, epochs=1,
                 run_dir=tmp_path / "run",
                 progress=False, tensorboard=False, workers=0)
    assert b.meta["arch"]["name"] == "custom"
    with pytest.raises(BundleError, match="model=MyModel"):
        pv.load(tmp_path / "byo.pvb")
    b2 = pv.load(tmp_path / "byo.pvb", model=tiny_classifier())
    res = b2.export(tmp_path / "byo.onnx", data=hotdog_small)
    assert res.verification["passed"]


def test_user_module_that_views_its_feature_map_trains_in_nchw(hotdog_small, tmp_path):
    """channels_last is on by default for registry models, also on CPU (faster there), but a user's module
    stays NCHW: its `.view()` of a feature map would fail on channels_last strides."""
    from torch import nn

    class ViewsFeatureMap(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.pool, self.fc = nn.Conv2d(3, 8, 3, 2, 1), nn.AdaptiveAvgPool2d(4), nn.Linear(128, 2)

        def forward(self, x):
            f = self.pool(self.conv(x))
            return self.fc(f.view(f.size(0), -1))  # a channels_last f raises "view size is not compatible"

    b = pv.train(hotdog_small, out=tmp_path / "v.pvb", model=ViewsFeatureMap(), size=64, epochs=1,
                 run_dir=tmp_path / "run", progress=False, tensorboard=False, workers=0)
    assert b.meta["arch"]["name"] == "custom"


def test_progressive_resizing_trains_small_then_exports_at_the_model_size(hotdog_small, tmp_path):
    """--progressive: early epochs on smaller crops (cheaper); the epochs after --progressive-until, validation and
    the export at the contract's size. A user module (which may not take other sizes) is refused before decoding."""
    import io

    from rich.console import Console
    from torch import nn

    from pocketvision.errors import PocketVisionError
    out = io.StringIO()
    b = pv.train(hotdog_small, out=tmp_path / "p.pvb", arch="deepdog", arch_args={"alpha": 0.25}, size=64,
                 epochs=4, progressive=32, progressive_until=0.5, lr=3e-3, run_dir=tmp_path / "run", progress=False,
                 tensorboard=False, workers=1, console=Console(file=out, width=200))
    assert b.meta["train_config"]["progressive"] == 32 and len(b.meta["history"]) == 4
    # --progressive-until 0.5: the size grows over the first 2 epochs, the other 2 train at the model's size
    assert [int(px) for px in re.findall(r"^epoch \d+/4 .* (\d+)px", out.getvalue(), re.M)] == [32, 48, 64, 64]
    assert b.contract.size == (64, 64)
    assert b.export(tmp_path / "p.onnx", data=hotdog_small).verification["passed"]
    # the CPU 'top' fine-tune trains on cached full-size activations: the option is refused there, not ignored
    with pytest.raises(PocketVisionError, match="--progressive: not with --finetune top"):
        pv.train(hotdog_small, arch="efficientnet_lite0", size=96, epochs=1, progressive=64, run_dir=tmp_path / "run3",
                 progress=False, tensorboard=False)
    with pytest.raises(PocketVisionError, match="registry architecture"):
        pv.train(hotdog_small, model=nn.Sequential(nn.Conv2d(3, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()),
                 size=64, epochs=1, progressive=32, run_dir=tmp_path / "run2", progress=False, tensorboard=False)


def test_the_imagenet_head_stays_when_the_classes_anchor_to_it(hotdog_few_train, tmp_path):
    """Hot dogs anchor to ImageNet's 'hot dog' and the other class takes the rest: the pretrained head stays (read
    through a label map), starts as it is (no probe fitted to these photos), learns from the photo, its mirror and
    low-resolution copies with the pretrained outputs distilled, and exports with parity. Off: a new head.
    On hotdog_small's 80 val photos with 48 training photos a class: Lite0's time goes to the training photos (their
    activations cached, int8 calibrated on them)."""
    from torch import nn

    from pocketvision.models.imagenet_head import ImageNetClassMap
    b = pv.train(hotdog_few_train, out=tmp_path / "m.pvb", epochs=1, run_dir=tmp_path / "run", progress=False,
                 tensorboard=False, workers=0)
    assert b.meta["arch"]["args"]["imagenet_classes"] == [[934], "rest"]
    assert isinstance(b.model.classifier, ImageNetClassMap)
    hist = b.meta["history"]
    assert [h["phase"] for h in hist] == ["probe", "top"] and b.metrics["accuracy"] >= 0.9
    assert b.meta["train_config"]["low_res_views"] is True and b.meta["train_config"]["imagenet_head"] == "auto"
    v = b.export(tmp_path / "m.onnx").verification
    assert v["passed"] and v["top1_agreement"] == 1.0
    # Every prediction says how unlike the training photos it is, computed inside each exported graph: the bundle,
    # onnxruntime and LiteRT agree; the val distribution travels with the file, so a device flags by itself.
    unf = b.meta["unfamiliar"]
    assert b.meta["arch"]["familiarity"] == unf["centres"] == 16 and unf["val_n"] == 80
    assert unf["val_quantiles"]["0.5"] < unf["flag_above"] == unf["val_quantiles"]["0.95"]
    photos = [str(p) for p in sorted((hotdog_few_train / "val" / "hotdog").iterdir())[:4]]
    want = [r["unfamiliar"] for r in b.predict(photos)]
    from pocketvision.deploy.artifact import open_predictor
    b.export(tmp_path / "m.tflite", to="tflite")
    for f in ("m.onnx", "m.tflite"):
        with open_predictor(tmp_path / f) as p:
            got = p.predict(photos)
            assert p.meta["unfamiliar"]["flag_above"] == pytest.approx(unf["flag_above"])
        assert max(abs(g["unfamiliar"] - w) for g, w in zip(got, want)) < 1e-3, f
        assert all(g["unfamiliar_flag"] == (w > unf["flag_above"]) for g, w in zip(got, want))
    # int8 keeps the head float (all in int8, the kept head's -inf class mask and 1,000 logits on one uint8 scale
    # gave every photo one answer: 0.49 here) but for the 1000x1280 weights, and the first try is within budget:
    # every op of the trunk in int8, none kept float to get there. 80 val photos: the budget allows two flips.
    for f in ("q.onnx", "q.tflite"):
        res = b.export(tmp_path / f, to=f.split(".")[1], precision="int8", max_drop=2.5)
        assert res.verification["passed"], (f, res.verification)
        rep = res.compression["int8"]
        assert rep["accuracy_before"] - rep["accuracy_after"] <= 0.0125 + 1e-9, (f, rep)
        assert rep.get("int8_ops", "every op") == "every op" and rep.get("op_types", QUANT_OPS) == QUANT_OPS, rep
        assert set(rep["float_fallback"]) <= set(rep.get("kept_float_by_design", [])), rep
        assert res.path.stat().st_size < (tmp_path / f"m.{f.split('.')[1]}").stat().st_size / 3, f
        with open_predictor(res.path) as p:
            assert {g["label"] for g in p.predict(photos + [str(q) for q in sorted(
                (hotdog_few_train / "val" / "not_hotdog").iterdir())[:4]])} == {"hotdog", "not_hotdog"}, f

    off = pv.train(hotdog_few_train, out=tmp_path / "off.pvb", epochs=0, imagenet_head="off",
                   run_dir=tmp_path / "r2", progress=False, tensorboard=False, workers=0)
    assert "imagenet_classes" not in off.meta["arch"]["args"] and isinstance(off.model.classifier, nn.Linear)
    assert off.model.classifier.out_features == 2

    data = str(hotdog_few_train)
    one_line_error(run_cli("train", data, "--arch", "deepdog", "--imagenet-head", "on", cwd=tmp_path),
                   "--imagenet-head on", "deepdog")
    one_line_error(run_cli("train", data, "--finetune", "full", "--lwf", "2", cwd=tmp_path), "--lwf",
                   "--finetune top")
