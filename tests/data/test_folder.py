"""Image-folder layouts and the errors for bad ones."""

from __future__ import annotations

import pytest
from PIL import Image

from pocketvision.data.folder import labelled_samples, scan
from pocketvision.errors import PocketVisionError


def _img(p):
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), (50, 60, 70)).save(p)


def _make(root, layout: dict[str, int]):
    for rel, n in layout.items():
        for i in range(n):
            _img(root / rel / f"{i}.png")
    return root


def test_auto_split_is_stratified_and_seeded(tmp_path):
    root = _make(tmp_path, {"a": 20, "b": 40})
    s1, s2 = scan(root, val_fraction=0.25, seed=3), scan(root, val_fraction=0.25, seed=3)
    assert s1.classes == ["a", "b"] and not s1.explicit
    assert s1.counts()["val"] == {"a": 5, "b": 10}
    assert [x.path for x in s1.val] == [x.path for x in s2.val]
    assert {x.path for x in scan(root, val_fraction=0.25, seed=4).val} != {x.path for x in s1.val}
    assert not {x.path for x in s1.val} & {x.path for x in s1.train}


def test_explicit_splits(tmp_path):
    root = _make(tmp_path, {"train/a": 3, "train/b": 3, "val/a": 2, "val/b": 1})
    s = scan(root)
    assert s.explicit and s.counts()["val"] == {"a": 2, "b": 1}
    samples, split = labelled_samples(root, ["a", "b"])
    assert split == "val" and len(samples) == 3


@pytest.mark.parametrize("layout,match", [
    ({"a": 3}, "at least 2"),
    ({"a": 3, "b": 0}, "b"),
    ({"train/a": 3, "train/b": 3, "val/a": 2}, "missing class 'b'"),
    ({"train/a": 3, "train/b": 3}, "no val/"),
])
def test_bad_layouts(tmp_path, layout, match):
    root = _make(tmp_path, layout)
    for rel, n in layout.items():
        if n == 0:
            (root / rel).mkdir(parents=True)
    with pytest.raises(PocketVisionError, match=match):
        scan(root)


def test_missing_path(tmp_path):
    with pytest.raises(PocketVisionError, match="not found"):
        scan(tmp_path / "nope")


def test_eval_folder_with_unknown_class(tmp_path):
    root = _make(tmp_path, {"a": 2, "zebra": 2})
    with pytest.raises(PocketVisionError, match="zebra"):
        labelled_samples(root, ["a", "b"])
