"""Where the keypoint error on faces-video comes from: an independent landmark model as a referee between label sets.

    python benchmarks/bench_keypoint_referee.py --bundle faces.pvb --mesh face_landmark.tflite --exclude suspects.txt

``faces.pvb``: a keypoint bundle trained on ``faces5`` (the defaults: ``pocketvision check ../shared/data/faces5
--suspects-out suspects.txt`` then ``pocketvision train ../shared/data/faces5 --exclude suspects.txt``).
``face_landmark.tflite``: MediaPipe's face mesh (468 points, trained on other faces than either set), taken from the
mediapipe 0.10.14 wheel, an explicit download::

    pip download mediapipe==0.10.14 --no-deps -d mp && unzip -j mp/*.whl mediapipe/modules/face_landmark/face_landmark.tflite

The referee's five points: the mean of each eye's contour, the nose tip (1), the mouth corners (61, 291). For the
clean ``faces5`` val and for ``faces-video``, the table gives the mean offset (x, y, in inter-ocular distances) of
the referee from the labels, of our model from the labels and of our model from the referee, and the NMEs. If ours
minus the referee stays put while both move against the labels, the labels moved: the two sources place their points
differently, which no model trained on one source can learn. Two readings use the labels, to size that part, and
change no model: the NME with one constant offset per set removed, and with each face's own translation removed.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import numpy as np
from PIL import Image

DATA = Path(os.environ.get("POCKETVISION_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
LEFT_EYE = [33, 133, 160, 159, 158, 144, 145, 153]
RIGHT_EYE = [362, 263, 387, 386, 385, 373, 374, 380]
NOSE_TIP, MOUTH = 1, (61, 291)


class Referee:
    """MediaPipe's face landmark model on LiteRT: a square crop -> 468 points, re-centred twice on its own mesh."""

    def __init__(self, path: Path):
        from ai_edge_litert.interpreter import Interpreter
        self.it = Interpreter(str(path))
        self.it.allocate_tensors()
        self.inp = self.it.get_input_details()[0]["index"]
        self.out = [o["index"] for o in self.it.get_output_details()]

    def mesh(self, img: Image.Image, x0: float, y0: float, side: float) -> tuple[np.ndarray, float]:
        crop = img.transform((192, 192), Image.Transform.EXTENT, (x0, y0, x0 + side, y0 + side),
                             Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))
        self.it.set_tensor(self.inp, np.asarray(crop, np.float32)[None] / 255.0)
        self.it.invoke()
        pts = self.it.get_tensor(self.out[0]).reshape(468, 3)[:, :2] * side / 192 + (x0, y0)
        return pts, float(self.it.get_tensor(self.out[1]).ravel()[0])

    def five(self, img: Image.Image) -> tuple[np.ndarray, bool]:
        pts, face = self.mesh(img, 0, 0, img.width)
        for _ in range(2):  # MediaPipe's tracking crop: 1.5x the mesh's box, centred on it
            lo, hi = pts.min(0), pts.max(0)
            side = 1.5 * float((hi - lo).max())
            c = (lo + hi) / 2
            pts, face = self.mesh(img, c[0] - side / 2, c[1] - side / 2, side)
        eyes = sorted([pts[LEFT_EYE].mean(0), pts[RIGHT_EYE].mean(0)], key=lambda p: p[0])
        mouth = sorted([pts[MOUTH[0]], pts[MOUTH[1]]], key=lambda p: p[0])
        return np.array([eyes[0], eyes[1], pts[NOSE_TIP], mouth[0], mouth[1]]), face > 0.5


def labelled(bundle, source: Path, split: str, exclude: str | None):
    from pocketvision.core.contract import load_rgb
    from pocketvision.tasks.keypoints import labelled_keypoints
    from pocketvision.tasks.keypoints.annotations import drop_images
    from pocketvision.tasks.keypoints.options import exclude_set
    _, samples, _ = labelled_keypoints(source, split, flip_pairs="none")
    if exclude:
        samples = drop_images(samples, exclude_set(exclude))
    images = [load_rgb(s.path) for s in samples]
    return images, np.stack([s.points[:, :2] for s in samples]).astype(np.float64)


def ours(bundle, images) -> np.ndarray:
    from pocketvision.tasks.keypoints.augment import points_to_source
    x = np.stack([bundle.contract.fit(im) for im in images])
    raw = np.concatenate([bundle.run_pixels(x[i:i + 64]) for i in range(0, len(x), 64)])
    return points_to_source(raw, [im.size for im in images], bundle.contract)[:, :, :2]


def nme(d: np.ndarray) -> float:
    """Mean point error over faces, ``d`` already divided by each face's inter-ocular distance."""
    return float(np.linalg.norm(d, axis=2).mean())


def fmt(v: np.ndarray) -> str:
    return f"({v[0]:+.3f}, {v[1]:+.3f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True, help="a keypoint bundle trained on faces5")
    ap.add_argument("--mesh", required=True, help="MediaPipe's face_landmark.tflite (see above)")
    ap.add_argument("--exclude", default=None, help="faces5 suspects file (check --suspects-out): the clean val")
    a = ap.parse_args()
    import pocketvision as pv
    bundle, referee = pv.load(a.bundle), Referee(Path(a.mesh))
    rows = []
    for name, source, split, exclude in (("faces5 clean val", DATA / "faces5", "val", a.exclude),
                                         ("faces-video", DATA / "faces-video" / "test.json", "all", None)):
        images, gt = labelled(bundle, source, split, exclude)
        ref, face = zip(*(referee.five(im) for im in images))
        ref, face = np.stack(ref), np.array(face)
        mine = ours(bundle, images)
        iod = np.linalg.norm(gt[:, 0] - gt[:, 1], axis=1)[:, None, None]
        d_ref, d_ours = ((ref - gt) / iod)[face], ((mine - gt) / iod)[face]
        rows.append((name, int(face.sum()), len(face), d_ref.mean((0, 1)), d_ours.mean((0, 1)),
                     (d_ours - d_ref).mean((0, 1)), nme(d_ref), nme(d_ours),
                     nme(d_ours - d_ours.mean((0, 1))), nme(d_ours - d_ours.mean(1, keepdims=True))))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"command: {' '.join(sys.argv)}")
    print("| photos | faces the referee finds | referee - labels (x, y) | ours - labels | ours - referee | "
          "NME referee | NME ours | ours, one offset per set removed | ours, each face's translation removed |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, n, total, r, o, orr, nr, no, no_set, no_face in rows:
        print(f"| {name} | {n}/{total} | {fmt(r)} | {fmt(o)} | {fmt(orr)} | {nr:.2%} | {no:.2%} | {no_set:.2%} | "
              f"{no_face:.2%} |")
    (r0, o0), (r1, o1) = [(row[3], row[4]) for row in rows]
    print(f"\nfrom faces5 to faces-video, ours - labels moves by {fmt(o1 - o0)} and referee - labels by "
          f"{fmt(r1 - r0)} (inter-ocular distances): the same move for two models trained on different faces")

if __name__ == "__main__":
    main()
