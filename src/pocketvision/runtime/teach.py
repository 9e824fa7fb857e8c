"""Teaching a model new classes on the device: a small head fitted on its embeddings, numpy only (no torch).

A user names a class and gives a few photos; the model's embeddings of them (the features before its head) fit a
regularised softmax regression in a few hundred full-batch steps. Measured on ten dishes with EfficientNet-Lite0's
embeddings (``benchmarks/bench_teach.py``): within 0.7 points of scikit-learn's logistic regression fitted on the
same embeddings at 1, 5, 10 and 30 examples per class, and 11 points ahead of nearest-neighbour at 5.

The web page's learner (``export/web_static/teach.js``) is the same fit, step for step, in JavaScript.

The head is plain numbers (``to_dict``/``from_dict``: JSON, never a pickle), so it can live in a device's cache
folder or a web page's storage and travel back to Python.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..core.pixels import batched
from ..errors import PocketVisionError

# full-batch Nesterov steps: on ten dishes the answers stop changing by 100-150 (1-30 examples a class; within 0.3
# points of 2,000 steps and of scikit-learn's L-BFGS at 200), and the browser's fit of 364 rows takes 2/3 of 300's
STEPS = 200
MAX_CLASSES = 1000
MAX_EXAMPLES = 100_000
RECALL_DROP = 0.1  # a new model may cost the personal examples this much of their recall, no more (see prepare)


def unit_rows(embeddings: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1: a photo's embedding differs from another's mostly in direction (measured: 1 to
    4 points better than raw or standardised embeddings at 1-10 examples per class, for every learner)."""
    e = np.asarray(embeddings, dtype=np.float64)
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


def _checked(embeddings: Any, names: Sequence[str]) -> tuple[np.ndarray, list[str], np.ndarray]:
    e = np.asarray(embeddings)
    if e.ndim != 2 or e.shape[0] == 0 or e.shape[1] == 0:
        raise PocketVisionError(f"teach: embeddings must be a non-empty (examples, features) array; got shape "
                                f"{e.shape}. Embed the examples with the model first.")
    if len(names) != len(e):
        raise PocketVisionError(f"teach: {len(e)} embeddings but {len(names)} class names; give one name per "
                                "example.")
    if len(e) > MAX_EXAMPLES:
        raise PocketVisionError(f"teach: {len(e):,} examples is more than {MAX_EXAMPLES:,}; keep the most recent.")
    if not np.issubdtype(e.dtype, np.number) or not np.isfinite(e).all():
        raise PocketVisionError("teach: an embedding holds a non-number (NaN or infinity); re-embed that example.")
    bad = [n for n in names if not isinstance(n, str) or not n.strip()]
    if bad:
        raise PocketVisionError(f"teach: class names must be non-empty text; got {bad[0]!r}. Name the class.")
    classes = sorted(set(names))
    if len(classes) > MAX_CLASSES:
        raise PocketVisionError(f"teach: {len(classes):,} classes is more than {MAX_CLASSES:,}.")
    index = {c: i for i, c in enumerate(classes)}
    return e, classes, np.array([index[n] for n in names])


@dataclass
class PersonalHead:
    """Class names and a linear layer over unit-length embeddings: ``logits = unit_rows(e) @ weight + bias``."""

    labels: list[str]
    weight: np.ndarray  # (features, classes)
    bias: np.ndarray  # (classes,)

    @property
    def features(self) -> int:
        return int(self.weight.shape[0])

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        e = np.asarray(embeddings)
        if e.ndim != 2 or e.shape[1] != self.features:
            raise PocketVisionError(f"teach: this head was fitted on {self.features}-long embeddings; the model gives "
                                    f"{e.shape[-1] if e.ndim else 0}. Re-embed the examples with this model "
                                    "(fit_head again).")
        return unit_rows(e) @ self.weight + self.bias

    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        z = self.logits(embeddings)
        z -= z.max(1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(1, keepdims=True)

    def predict(self, embeddings: np.ndarray) -> list[dict[str, Any]]:
        """Per row: label, confidence and every class's probability (a single class is always the answer)."""
        out = []
        for row in self.probabilities(embeddings):
            k = int(row.argmax())
            out.append({"label": self.labels[k], "index": k, "confidence": float(row[k]),
                        "probabilities": {lab: float(p) for lab, p in zip(self.labels, row)}})
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "pocketvision.personal_head", "version": 1, "labels": list(self.labels),
                "features": self.features, "weight": self.weight.astype(np.float32).tolist(),
                "bias": self.bias.astype(np.float32).tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PersonalHead:
        """From ``to_dict``'s JSON, checked: a stored head from elsewhere is untrusted input."""
        try:
            if d.get("kind") != "pocketvision.personal_head" or d.get("version") != 1:
                raise ValueError("not a version-1 personal head")
            labels = [str(x) for x in d["labels"]]
            w = np.asarray(d["weight"], dtype=np.float64)
            b = np.asarray(d["bias"], dtype=np.float64)
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise PocketVisionError(f"teach: the stored personal head is not readable ({e}); teach the classes "
                                    "again.") from None
        if (w.ndim != 2 or w.shape != (int(d.get("features", -1)), len(labels)) or b.shape != (len(labels),)
                or not 1 <= len(labels) <= MAX_CLASSES or len(set(labels)) != len(labels)
                or not (np.isfinite(w).all() and np.isfinite(b).all())):
            raise PocketVisionError("teach: the stored personal head's shapes, names or numbers do not fit together; "
                                    "teach the classes again.")
        return cls(labels, w, b)


def fit_head(embeddings: Any, names: Sequence[str], l2: float | None = None, steps: int = STEPS,
             balanced: bool = False) -> PersonalHead:
    """Softmax regression on unit-length ``embeddings`` (one class name per row), mean cross-entropy plus
    ``l2``/2 |W|^2, by Nesterov's accelerated gradient at step 1/L (L bounds the loss's curvature, so it
    cannot diverge). ``l2`` defaults to 1/n: scikit-learn's ``LogisticRegression(C=1)`` on the same rows.
    ``balanced``: every class weighs the same in the loss however many examples it has (scikit-learn's
    ``class_weight="balanced"``). One class alone gives a head that always answers it (a user's first class)."""
    e, classes, y = _checked(embeddings, names)
    x = unit_rows(e)
    n, k = len(x), len(classes)
    lam = 1.0 / n if l2 is None else float(l2)
    target = np.eye(k)[y]
    counts = np.bincount(y, minlength=k)
    weight = (n / (k * counts[y]) if balanced else np.ones(n))[:, None]  # mean weight 1: l2 keeps its meaning
    w, b = np.zeros((x.shape[1], k)), np.zeros(k)
    if k == 1:
        return PersonalHead(classes, w, b)
    # softmax curvature <= 1/2 |[x, 1]|^2 (weighted rows: the largest weight bounds it)
    step = 1.0 / (0.5 * weight.max() * (np.linalg.norm(x, 2) ** 2 / n + 1.0) + lam)
    wm, bm, t = w.copy(), b.copy(), 1.0
    for _ in range(steps):
        z = x @ wm + bm
        z -= z.max(1, keepdims=True)
        p = np.exp(z)
        g = weight * (p / p.sum(1, keepdims=True) - target) / n
        w1, b1 = wm - step * (x.T @ g + lam * wm), bm - step * g.sum(0)
        t1 = (1 + np.sqrt(1 + 4 * t * t)) / 2
        wm, bm = w1 + (t - 1) / t1 * (w1 - w), b1 + (t - 1) / t1 * (b1 - b)
        w, b, t = w1, b1, t1
    return PersonalHead(classes, w, b)


@dataclass
class Moved:
    """The personal side of a new model, computed before it answers (``Teacher.prepare``)."""

    model: str
    anchors: np.ndarray
    anchor_names: list[str]
    pixels: np.ndarray
    embeddings: np.ndarray
    head: PersonalHead | None


def anchors_of(meta: dict[str, Any]) -> tuple[np.ndarray, list[str]]:
    """A teachable file's anchors (``export --teachable``): its training photos' embeddings and their classes."""
    teach = meta.get("teach") or {}
    a = teach.get("anchors") or {}
    try:
        shape = tuple(int(v) for v in a["shape"])
        e = np.frombuffer(base64.b64decode(a["float16_b64"], validate=True), np.float16).reshape(shape)
        labels = [str(x) for x in a["labels"]]
    except (KeyError, TypeError, ValueError) as err:
        raise PocketVisionError(f"teach: this model is not teachable ({err or 'no anchors'}): export it with "
                                "`pocketvision export MODEL.pvb --teachable`.") from None
    if len(labels) != len(e) or e.ndim != 2:
        raise PocketVisionError("teach: the model's anchors and their classes do not fit together; export it again.")
    return e.astype(np.float32), labels


class Teacher:
    """Personal classes beside a teachable model's own: ``add("my mug", photos)``, then ``predict`` answers with
    them too. One class-balanced softmax over the model's anchors (its own classes) and the personal examples
    decides whether a photo is personal; if not, the model's own answer stands, unchanged (measured: two personal
    classes of 10 examples kept the hotdog default's val at 0.9893). The examples are kept at the model's input
    size with their embeddings in ``folder`` (nothing leaves the device), so a new model can embed them again
    (``use``)."""

    def __init__(self, predictor: Any, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.predictor = predictor
        self.anchors, self.anchor_names = anchors_of(predictor.meta)
        self.pixels = np.zeros((0, *predictor.contract.size, 3), np.uint8)
        self.names: list[str] = []
        self.embeddings = np.zeros((0, self.anchors.shape[1]), np.float32)
        self.head: PersonalHead | None = None
        self._fitted_for = self._model_id()
        self._load()

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.names))

    def _model_id(self, predictor: Any = None) -> str:
        m = (predictor or self.predictor).meta
        return f"{m.get('bundle_weights_sha256')}|{m.get('precision', 'fp32')}|{m.get('arch')}"

    def _embed(self, pixels: np.ndarray, predictor: Any = None) -> np.ndarray:
        predictor = predictor or self.predictor
        if not len(pixels):
            return np.zeros((0, self.anchors.shape[1]), np.float32)
        return batched(lambda p: predictor.run_outputs(p)["embedding"], pixels).astype(np.float32)

    @staticmethod
    def _sized(pixels: np.ndarray, predictor: Any) -> np.ndarray:
        """The kept examples at ``predictor``'s input size (an earlier model may have had another)."""
        size = tuple(predictor.contract.size)
        if not len(pixels) or pixels.shape[1:3] == size:
            return pixels
        return np.stack([np.asarray(Image.fromarray(x).resize(size[::-1], Image.BILINEAR)) for x in pixels])

    def add(self, name: str, sources: Sequence[str | os.PathLike | bytes]) -> int:
        """Examples of class ``name`` (new or not) -> how many it now has. Every photo is read first: one that is
        not an image is a one-line error naming it, and nothing taught before is lost."""
        self._sync()
        if not isinstance(name, str) or not name.strip():
            raise PocketVisionError("teach: name the class (empty names are not classes).")
        same = [c for c in [*self.predictor.labels, *self.classes] if c.strip().lower() == name.strip().lower()]
        if same and same[0] in self.predictor.labels:
            raise PocketVisionError(f"teach: {same[0]!r} is one of the model's own classes; choose another name.")
        if same and same[0] != name:
            raise PocketVisionError(f"teach: {same[0]!r} is already a class; add the photos to it under that name.")
        if not sources:
            raise PocketVisionError(f"teach: class {name!r} needs at least one example photo.")
        pixels = []
        for s in sources:
            try:
                pixels.append(self.predictor.contract.load(s))
            except PocketVisionError as e:
                raise PocketVisionError(f"teach: {s if not isinstance(s, bytes) else 'a photo'} is not a photo this "
                                        f"model can read ({e}); nothing was added.") from None
        px = np.stack(pixels)
        self._commit(np.concatenate([self.pixels, px]), self.names + [name] * len(px),
                     np.concatenate([self.embeddings, self._embed(px)]))
        return self.names.count(name)

    def remove(self, name: str) -> None:
        self._sync()
        if name not in self.names:
            raise PocketVisionError(f"teach: no personal class {name!r}; the classes are {self.classes}.")
        keep = [i for i, n in enumerate(self.names) if n != name]
        self._commit(self.pixels[keep], [self.names[i] for i in keep], self.embeddings[keep])

    def use(self, predictor: Any) -> None:
        """Swap in another model (an update): the kept examples are embedded again by it and the head refitted
        before anything answers with it. (Given the updater's ``up.predictor``, ``predict`` notices a swap itself.)"""
        self.commit(self.prepare(predictor, check=False), predictor)

    def prepare(self, predictor: Any, check: bool = True) -> Moved:
        """What ``predictor`` (a new model) needs before it answers: the kept examples embedded by it and the head
        refitted on its anchors. ``check``: the personal side's smoke test -- the refitted head must still tell the
        examples' classes apart (recall on them at most ``RECALL_DROP`` below the old head's), else the model
        would silently lose what the user taught; a one-line error says so and nothing changes."""
        anchors, anchor_names = anchors_of(predictor.meta)
        pixels = self._sized(self.pixels, predictor)
        embeddings = self._embed(pixels, predictor)
        head = self._fit(anchors, anchor_names, self.names, embeddings)
        if check and head is not None and self.head is not None:
            before, after = self._recall(self.head, self.embeddings), self._recall(head, embeddings)
            if after < before - RECALL_DROP:
                raise PocketVisionError(f"teach: on the new model the personal classes would recall {after:.2f} of "
                                        f"their own examples (now {before:.2f}); it is not used.")
        return Moved(self._model_id(predictor), anchors, anchor_names, pixels, embeddings, head)

    def commit(self, moved: Moved, predictor: Any = None) -> None:
        """Store and use what ``prepare`` computed (``predictor``: the model to answer with from now on; by default
        the one this teacher holds, e.g. an updater's swappable predictor once it swapped)."""
        if predictor is not None:
            self.predictor = predictor
        self.anchors, self.anchor_names = moved.anchors, moved.anchor_names
        self._commit(moved.pixels, self.names, moved.embeddings, moved.head, moved.model)

    def _sync(self) -> None:
        """Embed the kept examples again where the model changed since the head was fitted."""
        if self._model_id() != self._fitted_for:
            self.commit(self.prepare(self.predictor, check=False))

    def _recall(self, head: PersonalHead, embeddings: np.ndarray) -> float:
        """Share of the personal examples the head gives their own class."""
        if not self.names:
            return 1.0
        return float(np.mean([r["label"] == n for r, n in zip(head.predict(embeddings), self.names)]))

    def _fit(self, anchors: np.ndarray, anchor_names: list[str], names: list[str],
             embeddings: np.ndarray) -> PersonalHead | None:
        return (fit_head(np.concatenate([anchors, embeddings]), anchor_names + names, balanced=True)
                if names else None)

    def predict(self, sources: Sequence[str | os.PathLike | bytes]) -> list[dict[str, Any]]:
        """The model's own records; where a personal class wins, its label, confidence and ``personal: True``."""
        seen: list[np.ndarray] = []

        class _Keep:  # the model runs once: its task decides its own answer, the embedding is kept for the router
            def __getattr__(_, attr: str) -> Any:
                return getattr(self.predictor, attr)

            def run_outputs(_, pixels: np.ndarray) -> dict[str, np.ndarray]:
                outs = self.predictor.run_outputs(pixels)
                seen.append(outs["embedding"])
                return outs

        self._sync()
        records = self.predictor.plugin.predict(_Keep(), list(sources))
        if self.head is None:
            return records
        own = set(self.anchor_names)
        for r, p in zip(records, self.head.predict(np.concatenate(seen))):
            if p["label"] not in own:
                r.update(label=p["label"], confidence=p["confidence"], personal=True)
        return records

    def _commit(self, pixels: np.ndarray, names: list[str], embeddings: np.ndarray,
                head: PersonalHead | None | bool = False, model: str | None = None) -> None:
        """Refit (unless ``head`` is given) and store; the folder's old state stays until the new one is whole (a
        full disk loses nothing)."""
        if head is False:
            head = self._fit(self.anchors, self.anchor_names, names, embeddings)
        model = model or self._model_id()
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / "examples.tmp.npz"
        try:
            with open(tmp, "wb") as f:
                np.savez(f, pixels=pixels, names=np.array(names, dtype=str), embeddings=embeddings)
            tmp.replace(self.folder / "examples.npz")
            (self.folder / "state.json.tmp").write_text(json.dumps({"model": model, "version": 1}))
            (self.folder / "state.json.tmp").replace(self.folder / "state.json")
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise PocketVisionError(f"teach: could not store the examples in {self.folder} ({e.strerror or e}); "
                                    "what was taught before is kept. Free some space and try again.") from None
        self.pixels, self.names, self.embeddings, self.head = pixels, names, embeddings, head
        self._fitted_for = model

    def _load(self) -> None:
        path = self.folder / "examples.npz"
        if not path.exists():
            return
        try:
            with np.load(path, allow_pickle=False) as z:  # never unpickle: the folder is the device's, not ours
                pixels, names, emb = z["pixels"], [str(n) for n in z["names"]], z["embeddings"]
            state = json.loads((self.folder / "state.json").read_text())
        except (OSError, ValueError, KeyError) as e:
            raise PocketVisionError(f"teach: {path} is not readable ({e}); remove the folder to start again.") \
                from None
        if pixels.ndim != 4 or len(pixels) != len(names) or len(emb) != len(names):
            raise PocketVisionError(f"teach: {path} does not fit together; remove the folder to start again.")
        self.pixels, self.names = pixels.astype(np.uint8), names
        if state.get("model") == self._model_id() and emb.ndim == 2 and emb.shape[1] == self.anchors.shape[1]:
            self._commit(pixels, names, emb.astype(np.float32))
        else:  # taught on another model: embed again with this one
            self.commit(self.prepare(self.predictor, check=False))
