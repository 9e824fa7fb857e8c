"""Shared fixtures. Real data lives in ../shared/data (never copied into the repo)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import data_root, one_line_error, run_cli  # noqa: F401  (shared with the tests)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data; a missing folder fails the test loudly (never a silent skip)."""
    root = data_root()
    if not (root / "hotdog" / "train").is_dir():
        pytest.fail(f"real test data not found at {root} (expected ../shared/data beside the repo, "
                    "or set POCKETVISION_DATA)")
    return root


def _subset(src: Path, dst: Path, per_class: dict[str, int]) -> Path:
    """A small train/val subset of hotdog as symlinks (read in place, nothing copied)."""
    for split, n in per_class.items():
        for cls_dir in sorted((src / split).iterdir()):
            out = dst / split / cls_dir.name
            out.mkdir(parents=True, exist_ok=True)
            for p in sorted(cls_dir.iterdir())[:n]:
                (out / p.name).symlink_to(p)
    return dst


@pytest.fixture(scope="session")
def hotdog_small(shared_data, tmp_path_factory) -> Path:
    return _subset(shared_data / "hotdog", tmp_path_factory.mktemp("hotdog_small"), {"train": 120, "val": 40})


@pytest.fixture(scope="session")
def hotdog_few_train(shared_data, tmp_path_factory) -> Path:
    """hotdog_small's 80 val photos, but 48 training photos a class (its first 48): for the pretrained default
    (EfficientNet-Lite0 at 224 px), whose time goes to the training photos it caches activations of, and calibrates
    int8 on. Enough for what those tests check (the probe alone is above 0.85 on these val photos)."""
    return _subset(shared_data / "hotdog", tmp_path_factory.mktemp("hotdog_few_train"), {"train": 48, "val": 40})


@pytest.fixture(scope="session")
def trained_bundle(hotdog_small, tmp_path_factory) -> Path:
    """A real (small) model trained once per session on real photos: deepdog alpha=0.25 at 96 px."""
    import pocketvision as pv

    out = tmp_path_factory.mktemp("bundle")
    b = pv.train(hotdog_small, out=out / "hotdog.pvb", arch="deepdog", arch_args={"alpha": 0.25}, size=96,
                 epochs=6, lr=3e-3, run_dir=out / "run", progress=False, tensorboard=False, workers=0,
                 recipe=False)  # a fixed small model for the compression tests (the recipes have their own tests)
    return b.path


@pytest.fixture(scope="session")
def trained_onnx(trained_bundle, tmp_path_factory):
    """trained_bundle's ONNX export (an ExportResult, verified on the 80 val photos), exported once per session, alone
    in its folder, for the tests that read it. Copy it before changing it."""
    import pocketvision as pv

    return pv.load(trained_bundle).export(tmp_path_factory.mktemp("trained_onnx") / "m.onnx")


@pytest.fixture(scope="session")
def trained_page(trained_bundle, tmp_path_factory) -> tuple[Path, dict]:
    """trained_bundle's web export and its verification (the page's own session in Chromium against the bundle, on
    the 80 val photos), exported once per session for the tests that open it. Copy it before changing it."""
    import pocketvision as pv

    res = pv.load(trained_bundle).export(tmp_path_factory.mktemp("trained_page") / "hotdog.web", to="web")
    return res.path, res.verification


@pytest.fixture(scope="session")
def default_start(hotdog_small, tmp_path_factory) -> Path:
    """The default's start: EfficientNet-Lite0 with the ImageNet head kept and no epoch (good embeddings, cheap)."""
    import pocketvision as pv

    out = tmp_path_factory.mktemp("default_start")
    return pv.train(hotdog_small, out=out / "m.pvb", epochs=0, run_dir=out / "run", progress=False,
                    tensorboard=False, workers=0).path


@pytest.fixture(scope="session")
def default_start_page(default_start, tmp_path_factory) -> Path:
    """The default's start as a teachable web page, exported once per session for the tests that open it (its parity
    with the bundle: tests/runtime/test_teach.py). Copy it before changing it."""
    import pocketvision as pv

    out = tmp_path_factory.mktemp("default_start_page") / "hotdog.web"
    return pv.load(default_start).export(out, to="web", teachable=True, verify=False).path


@pytest.fixture(scope="session")
def faces5(shared_data):
    root = shared_data / "faces5"
    if not (root / "train.json").exists():
        pytest.fail(f"faces5 keypoint data missing at {root}")
    return root


def _coco_subset(src, out, n: int):
    """A COCO file with ``n`` of ``src``'s images spread over the whole file (both of MTFL's sources: aligned
    LFW faces and varied web faces), referenced in place by absolute path."""
    d = json.loads(src.read_text())
    step = max(1, len(d["images"]) // n)
    imgs = d["images"][::step][:n]
    ids = {im["id"] for im in imgs}
    for im in imgs:
        im["file_name"] = str((src.parent / im["file_name"]).resolve())
    d["images"], d["annotations"] = imgs, [a for a in d["annotations"] if a["image_id"] in ids]
    out.write_text(json.dumps(d))
    return out


@pytest.fixture(scope="session")
def faces_small(faces5, tmp_path_factory):
    root = tmp_path_factory.mktemp("faces_small")
    _coco_subset(faces5 / "train.json", root / "train.json", 3000)
    _coco_subset(faces5 / "val.json", root / "val.json", 150)
    return root


@pytest.fixture(scope="session")
def kp_bundle(faces_small, tmp_path_factory):
    """A real keypoint model trained once per session on real faces (heatmap head, deepdog alpha 0.5)."""
    import pocketvision as pv
    from pocketvision.tasks.keypoints.check import suspect_labels
    out = tmp_path_factory.mktemp("kp_bundle")
    from pocketvision.tasks.keypoints.annotations import load_keypoints
    ks = load_keypoints(faces_small)
    # faces5 has web faces whose labels are all shifted onto the hair; check finds them, training leaves them out.
    (out / "suspects.txt").write_text("\n".join(x["image"] for x in suspect_labels(ks.train) + suspect_labels(ks.val)))
    return pv.train(faces_small, out=out / "faces.pvb", arch="deepdog", arch_args={"alpha": 0.5}, head="heatmap",
                    epochs=5, lr=3e-3, batch_size=64, weight_decay=1e-4, run_dir=out / "run", progress=False,
                    tensorboard=True, workers=0, exclude=str(out / "suspects.txt"))




@pytest.fixture(scope="session")
def style_bundle(hotdog_small, shared_data, tmp_path_factory):
    """A real (tiny) stylizer trained once per session: stylenet_mobile on real photos at 64 px, starry night."""
    import pocketvision as pv
    out = tmp_path_factory.mktemp("style_bundle")
    b = pv.train(hotdog_small, out=out / "starry.pvb", task="stylize",
                 style=str(shared_data / "style" / "styles" / "starry_night.jpg"), size=64, epochs=3,
                 arch_args={"width": 16, "blocks": 2}, report_gatys=1, run_dir=out / "run", progress=False,
                 tensorboard=False, workers=0)
    return b.path


def tiny_classifier():
    """A user's own two-class torch module (float NCHW in, logits out): the smallest bring-your-own model.
    torch is imported here, not at the top: conftest also serves the torch-free tests."""
    from torch import nn

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.fc = nn.Linear(8, 2)

        def forward(self, x):
            return self.fc(self.body(x))

    return Tiny()
