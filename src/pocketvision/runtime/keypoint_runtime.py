"""Predict / evaluate for anything that maps uint8 pixels to keypoints (N, K, 3) (torch-free).

Bundles (torch), ``.onnx`` (onnxruntime), ``.tflite`` (LiteRT) and web folders (Chromium) all go through
here, so their metrics differ only by what the models compute. Points come back in each original
image's pixel coordinates (the contract's resize undone).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..contract import Contract, load_rgb
from ..data.keypoints import KeypointSchema, KpSample, read_annotations
from ..data.kp_augment import points_to_source
from ..errors import ImageDecodeError, PocketVisionError


def schema_of(meta: dict[str, Any]) -> KeypointSchema:
    kp = meta.get("keypoints")
    if not kp:
        raise PocketVisionError("this model has no keypoint metadata (names, flip pairs).")
    return KeypointSchema.from_dict(kp)


def load_sources(sources, contract: Contract) -> tuple[np.ndarray, list[tuple[int, int]]]:
    pixels, sizes = [], []
    for s in sources:
        img = load_rgb(s, min_size=contract.decode_hint())
        sizes.append(img.size)  # after a JPEG draft decode: points map into *this* frame, rescaled below
        pixels.append(contract.fit(img))
    return np.stack(pixels), sizes


def _true_size(source, decoded: tuple[int, int]) -> tuple[int, int]:
    """The upright full-resolution size (a JPEG may have been decoded at 1/2..1/8 scale)."""
    if isinstance(source, bytes | bytearray):
        import io
        from PIL import Image, ImageOps
        with Image.open(io.BytesIO(source)) as im:
            return ImageOps.exif_transpose(im).size if im.getexif().get(0x0112, 1) in (5, 6, 7, 8) else im.size
    from PIL import Image
    with Image.open(source) as im:
        w, h = im.size
        if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # EXIF rotated by 90 degrees
            w, h = h, w
    return w, h


def predict_keypoints(run_pixels: Callable[[np.ndarray], np.ndarray], contract: Contract, names, sources) -> list[dict]:
    pixels, decoded = load_sources(sources, contract)
    pts = points_to_source(run_pixels(pixels), decoded, contract)
    out = []
    for s, dec, p in zip(sources, decoded, pts):
        full = _true_size(s, dec)
        p[:, 0] *= full[0] / dec[0]
        p[:, 1] *= full[1] / dec[1]
        out.append({"keypoints": {n: {"x": round(float(x), 2), "y": round(float(y), 2), "score": round(float(c), 4)}
                                  for n, (x, y, c) in zip(names, p[:, :3])},
                    "image_size": list(full)})
    return out


def labelled_keypoints(data: str | Path, split: str = "auto", flip_pairs=None) -> tuple[KeypointSchema, list[KpSample], str]:
    """A COCO/CSV file (all of it) or a folder with train/val files (``auto``: val)."""
    p = Path(data)
    if p.is_dir():
        if split == "auto":
            split = "val" if any((p / f"val{s}").exists() for s in (".json", ".csv")) else "train"
        for suf in (".json", ".csv"):
            f = p / f"{split}{suf}"
            if f.exists():
                schema, samples, _ = read_annotations(f, flip_pairs)
                return schema, samples, split
        raise PocketVisionError(f"{p}: no {split}.json or {split}.csv inside.")
    if not p.exists():
        raise PocketVisionError(f"{p}: no such file or folder.")
    schema, samples, _ = read_annotations(p, flip_pairs)
    return schema, samples, "all"


def evaluate_keypoints(run_pixels: Callable[[np.ndarray], np.ndarray], contract: Contract, meta: dict[str, Any],
                       data: str | Path, split: str = "auto", report_dir: str | Path | None = None,
                       normalize=None, title: str = "model", batch: int = 64,
                       exclude: set[str] | None = None) -> dict[str, Any]:
    from ..evaluate.keypoint_metrics import keypoint_metrics
    model_schema = schema_of(meta)
    schema, samples, used = labelled_keypoints(data, split, flip_pairs="none")
    if exclude:
        from ..data.keypoints import drop_images
        samples = drop_images(samples, exclude)
    if tuple(schema.names) != tuple(model_schema.names):
        raise PocketVisionError(f"{data}: points {list(schema.names)} differ from the model's "
                                f"{list(model_schema.names)}.")
    pixels, sizes, kept = [], [], []
    for i, s in enumerate(samples):
        try:
            img = load_rgb(s.path)
        except ImageDecodeError:
            continue
        pixels.append(contract.fit(img))
        sizes.append(img.size)
        kept.append(i)
    if not kept:
        raise PocketVisionError(f"{data}: none of the {len(samples)} images could be read.")
    x = np.stack(pixels)
    raw = np.concatenate([run_pixels(x[i:i + batch]) for i in range(0, len(x), batch)])
    pred = points_to_source(raw, sizes, contract)
    gt = np.stack([samples[i].points for i in kept])
    normalize = normalize or meta.get("keypoints", {}).get("normalize")
    m = keypoint_metrics(gt, pred, schema.names, normalize, np.array(sizes))
    m.update(data=str(data), split=used, skipped_unreadable=len(samples) - len(kept), task="keypoints",
             excluded=len(exclude or ()))
    if report_dir is not None:
        from ..evaluate.keypoint_report import write_keypoint_report
        m["report"] = str(write_keypoint_report(report_dir, m, gt, pred, [samples[i].path for i in kept],
                                                schema.names, model_schema.skeleton, title=f"Evaluation: {title}"))
    return m
