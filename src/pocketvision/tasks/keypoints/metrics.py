"""Landmark metrics (numpy only, shared by bundles and exported files).

- NME: mean point-to-point error of an image divided by a normaliser: by default the inter-ocular
  distance (the distance between the two eye points; any named pair can be chosen) or the diagonal of
  the object's box (the image when there is none), then averaged over images.
- per-point error (normalised and in pixels), PCK@0.05/0.1 (fraction of points within that fraction of
  the normaliser), failure rate (images with NME > 10%), the cumulative error distribution and its AUC.
- the mean offset (x, y) of the predictions from the labels, normalised, and the NME with it removed: labels from
  another source can follow another convention of where a point goes, which moves every point alike.

Only labelled points (v > 0) count; an image with no labelled point or a zero normaliser is left out
and counted.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import PocketVisionError

FAILURE_NME = 0.10


def default_normalizer(names: list[str] | tuple[str, ...]) -> list[str] | str:
    """The two eye points when the names have them (inter-ocular), else the box diagonal."""
    eyes = [n for n in names if "eye" in n.lower()]
    if len(eyes) == 2:
        return eyes
    return "bbox"


def normalizers(gt: np.ndarray, names, normalize: list[str] | str, sizes: np.ndarray) -> np.ndarray:
    """(N,) normalising distances. ``sizes`` (N, 2) = (w, h) of each image's frame."""
    if normalize == "bbox":
        return np.hypot(sizes[:, 0], sizes[:, 1]).astype(np.float64)
    if not isinstance(normalize, list | tuple) or len(normalize) != 2:
        raise PocketVisionError(f"normalize must be 'bbox' or two point names; got {normalize!r}.")
    idx = []
    for n in normalize:
        if n not in names:
            raise PocketVisionError(f"normalize: no point named {n!r} (points: {list(names)}).")
        idx.append(list(names).index(n))
    a, b = gt[:, idx[0], :2], gt[:, idx[1], :2]
    d = np.linalg.norm(a - b, axis=1).astype(np.float64)
    d[(gt[:, idx[0], 2] <= 0) | (gt[:, idx[1], 2] <= 0)] = 0.0  # unknown when either point is unlabelled
    return d


def keypoint_metrics(gt: np.ndarray, pred: np.ndarray, names, normalize: list[str] | str | None = None,
                     sizes: np.ndarray | None = None) -> dict[str, Any]:
    """``gt`` (N, K, 3) x,y,v and ``pred`` (N, K, >=2) in the same pixel frame -> metrics dict."""
    gt, pred = np.asarray(gt, np.float64), np.asarray(pred, np.float64)
    if gt.shape[:2] != pred.shape[:2]:
        raise PocketVisionError(f"predictions {pred.shape[:2]} and labels {gt.shape[:2]} differ in shape.")
    normalize = normalize or default_normalizer(names)
    sizes = np.ones((len(gt), 2)) if sizes is None else np.asarray(sizes, np.float64)
    norm = normalizers(gt, names, normalize, sizes)
    lab = gt[..., 2] > 0
    err = np.linalg.norm(pred[..., :2] - gt[..., :2], axis=-1)  # (N, K) pixels
    ok = (lab.sum(1) > 0) & (norm > 0)
    if not ok.any():
        raise PocketVisionError("no image has labelled points and a non-zero normaliser; check the labels "
                                f"(normalize={normalize!r}).")
    e, lab_ok, n = err[ok], lab[ok], norm[ok]
    nerr = e / n[:, None]
    nme_img = (nerr * lab_ok).sum(1) / lab_ok.sum(1)
    per_point = {}
    for k, name in enumerate(names):
        m = lab_ok[:, k]
        per_point[name] = {"nme": float(nerr[m, k].mean()) if m.any() else None,
                           "px": float(e[m, k].mean()) if m.any() else None, "n": int(m.sum())}
    flat = nerr[lab_ok]
    d = (pred[ok, :, :2] - gt[ok, :, :2]) / n[:, None, None]  # signed, normalised
    offset = d[lab_ok].mean(0)
    moved = np.linalg.norm(d - offset, axis=-1)
    nme_moved = (moved * lab_ok).sum(1) / lab_ok.sum(1)
    for k, name in enumerate(names):
        m = lab_ok[:, k]
        per_point[name]["offset"] = d[m, k].mean(0).round(6).tolist() if m.any() else None
    xs = np.linspace(0, FAILURE_NME, 101)
    ced = [(float(x), float((nme_img <= x).mean())) for x in xs]
    auc = float(np.trapezoid([c for _, c in ced], xs) / FAILURE_NME)
    pose = pose_breakdown(gt[ok], nme_img)
    return {
        "nme": float(nme_img.mean()),
        "pose": pose,
        "nme_median": float(np.median(nme_img)),
        "normalize": normalize,
        "mean_error_px": float(e[lab_ok].mean()),
        "pck@0.05": float((flat <= 0.05).mean()),
        "pck@0.1": float((flat <= 0.10).mean()),
        "failure_rate": float((nme_img > FAILURE_NME).mean()),
        "auc@0.1": auc,
        "offset": offset.round(6).tolist(),
        "nme_offset_removed": float(nme_moved.mean()),
        "per_point": per_point,
        "n_images": int(ok.sum()),
        "n_excluded": int((~ok).sum()),
        "ced": ced,
        "per_image_nme": nme_img.tolist(),
        "image_index": np.flatnonzero(ok).tolist(),
    }


HARD_SHARE = 0.2  # the hardest fifth of the images by pose: a shifted set built from the val split itself


def pose_scores(gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image: (in-plane rotation in degrees, shape residual) of its labelled points against the mean shape,
    after a similarity alignment (Procrustes). Rotation is a tilted head; the residual, relative to the shape's
    size, is what a rotation cannot explain: a profile (yaw), a tilt forward (pitch), an open mouth. Generic: no
    point names needed."""
    pts, lab = gt[..., :2].astype(np.float64), gt[..., 2] > 0
    full = lab.all(1)
    ref_src = pts[full] if full.any() else pts
    mean = ref_src - ref_src.mean(1, keepdims=True)
    mean = (mean / np.linalg.norm(mean, axis=(1, 2), keepdims=True)).mean(0)
    roll, resid = np.zeros(len(gt)), np.zeros(len(gt))
    for i in range(len(gt)):
        m = lab[i]
        if m.sum() < 2:
            continue
        a, b = pts[i, m] - pts[i, m].mean(0), mean[m] - mean[m].mean(0)
        scale_a = np.linalg.norm(a)
        if scale_a == 0:
            continue
        a = a / scale_a
        # optimal rotation of the mean shape onto this one (2-D Procrustes, complex-number form)
        za, zb = a[:, 0] + 1j * a[:, 1], b[:, 0] + 1j * b[:, 1]
        r = (np.conj(zb) @ za)
        roll[i] = np.degrees(np.angle(r))
        fit = zb * r / max(np.vdot(zb, zb).real, 1e-12)
        resid[i] = float(np.sqrt(np.mean(np.abs(za - fit) ** 2)) * np.sqrt(m.sum()))
    return roll, resid


def pose_breakdown(gt: np.ndarray, nme_img: np.ndarray) -> dict[str, Any]:
    """NME on the most rotated fifth and on the least similarity-like fifth (profiles...) beside the rest."""
    roll, resid = pose_scores(gt)
    k = max(1, int(round(HARD_SHARE * len(gt))))
    rot = np.argsort(-np.abs(roll))[:k]
    shape = np.argsort(-resid)[:k]
    rest = np.setdiff1d(np.arange(len(gt)), np.union1d(rot, shape))
    return {"rotated": {"nme": float(nme_img[rot].mean()), "n": int(k), "min_abs_roll_deg": float(np.abs(roll[rot]).min())},
            "shape": {"nme": float(nme_img[shape].mean()), "n": int(k), "min_residual": float(resid[shape].min())},
            "rest": {"nme": float(nme_img[rest].mean()) if len(rest) else None, "n": int(len(rest))},
            "share": HARD_SHARE}

