"""A test video with known truth: photos shown one after another, each slowly panning and zooming like a
hand-held phone, at any frame size (640x480 for the filter benchmarks). For labelled photos (keypoint samples)
it returns the true points of every frame, so smoothing and tracking can be measured, not just eyeballed;
plain image paths make the panning video the stylizer's flicker is measured on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pocketvision.core.contract import load_rgb
from pocketvision.tasks.keypoints.augment import apply_matrix, warp_image


def make_video(samples, out: str | Path, size: tuple[int, int] = (640, 480), frames_per_image: int = 15,
               fps: float = 30.0, seed: int = 0, pan: float = 0.03) -> list[np.ndarray]:
    """``samples``: KpSample list, or image paths. -> per-frame (K, 3) true points in frame pixels (empty for
    paths). ``pan``: the drift over one photo, as a fraction of the frame."""
    import cv2
    w, h = size
    rng = np.random.default_rng(seed)
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    truth = []
    try:
        for s in samples:
            img = load_rgb(getattr(s, "path", s))
            sw, sh = img.size
            # Fill the frame with the photo (as the model was trained: the face is the frame), then drift.
            z0, z1 = rng.uniform(0.95, 1.05, 2)
            d0, d1 = rng.uniform(-pan, pan, (2, 2))
            for f in range(frames_per_image):
                t = f / max(1, frames_per_image - 1)
                z = z0 + (z1 - z0) * t
                dx, dy = (d0 + (d1 - d0) * t) * (w, h)
                m = np.array([[w / sw * z, 0, w / 2 * (1 - z) + dx], [0, h / sh * z, h / 2 * (1 - z) + dy], [0, 0, 1.0]])
                frame = np.asarray(warp_image(img, m, (w, h)))
                writer.write(np.ascontiguousarray(frame[..., ::-1]))
                if hasattr(s, "points"):
                    p = s.points.astype(np.float64).copy()
                    p[:, :2] = apply_matrix(m, p[:, :2])
                    truth.append(p)
    finally:
        writer.release()
    return truth


def main() -> None:  # pragma: no cover - a convenience for trying `pocketvision filter` by hand
    import argparse
    from pocketvision.tasks.keypoints.annotations import load_keypoints
    ap = argparse.ArgumentParser(description="Write a 640x480 test video from labelled face photos.")
    ap.add_argument("data", help="keypoint data (COCO json / csv / folder)")
    ap.add_argument("--out", default="faces.mp4")
    ap.add_argument("--images", type=int, default=20)
    a = ap.parse_args()
    ks = load_keypoints(a.data)
    make_video(ks.val[:a.images], a.out)
    print(a.out)


if __name__ == "__main__":  # pragma: no cover
    main()
