"""Bundle round trip and every way a bundle file can be broken."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

import pocketvision as pv
from pocketvision import bundle as bio
from pocketvision.contract import Contract
from pocketvision.errors import BundleError


@pytest.fixture()
def tiny_bundle(tmp_path):
    from pocketvision.api import Bundle
    from pocketvision.models import build_model

    spec = {"name": "deepdog", "args": {"alpha": 0.25, "num_classes": 2}}
    meta = bio.new_meta("classify", spec, ["a", "b"], Contract(size=(64, 64)))
    b = Bundle(meta, build_model(spec))
    return b, b.save(tmp_path / "m.pvb")


def test_round_trip_zip_and_folder(tiny_bundle, tmp_path):
    b, path = tiny_bundle
    x = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    for p in (path, b.save(tmp_path / "folder_bundle")):
        b2 = pv.load(p)
        assert b2.labels == ["a", "b"] and b2.contract.size == (64, 64)
        np.testing.assert_allclose(b2.predict_pixels(x), b.predict_pixels(x), atol=1e-6)


def _rewrite(path, meta=None, weights=None):
    with zipfile.ZipFile(path) as z:
        m, w = json.loads(z.read("bundle.json")), z.read("weights.safetensors")
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("bundle.json", json.dumps(meta(m) if meta else m))
        z.writestr("weights.safetensors", weights(w) if weights else w)


def test_tampered_weights(tiny_bundle):
    _, path = tiny_bundle
    _rewrite(path, weights=lambda w: w[:-4] + b"\x00\x00\x00\x01")
    with pytest.raises(BundleError, match="checksum"):
        pv.load(path)


def test_truncated_file(tiny_bundle):
    _, path = tiny_bundle
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match="corrupt or truncated"):
        pv.load(path)


def test_newer_schema(tiny_bundle):
    _, path = tiny_bundle
    _rewrite(path, meta=lambda m: {**m, "schema": 99})
    with pytest.raises(BundleError, match="newer pocketvision"):
        pv.load(path)


def test_not_a_bundle(tmp_path):
    p = tmp_path / "x.pvb"
    p.write_text("hello")
    with pytest.raises(BundleError, match="corrupt"):
        pv.load(p)
    with pytest.raises(BundleError, match="not found"):
        pv.load(tmp_path / "missing.pvb")


def test_writes_are_atomic(tmp_path):
    p = tmp_path / "out.bin"
    bio.atomic_write_bytes(p, b"abc")
    assert p.read_bytes() == b"abc" and [q.name for q in tmp_path.iterdir()] == ["out.bin"]
