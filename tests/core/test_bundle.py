"""Bundle round trip and every way a bundle file can be broken."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pocketvision as pv
from pocketvision.core import bundle_file as bio
from pocketvision.core.contract import Contract
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


# -- a bundle from elsewhere is hostile until checked (caps before reading, clear errors only) ------------------

def test_oversized_member_is_refused_before_it_is_read(tmp_path):
    """A bundle.json of 200 MB of spaces zips to ~200 KB; it is refused from the zip's directory, not parsed."""
    import tracemalloc
    p = tmp_path / "bomb.pvb"
    with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("bundle.json", b" " * (200 * 2**20))
        z.writestr("weights.safetensors", b"")
    assert p.stat().st_size < 2**20
    tracemalloc.start()
    try:
        with pytest.raises(BundleError, match="bundle.json is 209,715,200 bytes, over this reader's cap"):
            pv.load(p)
        assert tracemalloc.get_traced_memory()[1] < 8 * 2**20  # nothing close to the member was allocated
    finally:
        tracemalloc.stop()
    from helpers import run_cli
    r = run_cli("predict", str(p), str(p))
    assert r.returncode != 0 and "over this reader's cap" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_unexpected_members_deep_json_and_oversized_arch_are_refused(tiny_bundle, tmp_path):
    _, path = tiny_bundle
    with zipfile.ZipFile(path) as z:
        m, w = z.read("bundle.json"), z.read("weights.safetensors")
    extra = tmp_path / "extra.pvb"
    with zipfile.ZipFile(extra, "w") as z:
        z.writestr("bundle.json", m)
        z.writestr("weights.safetensors", w)
        z.writestr("../../evil.sh", b"rm -rf /")
    with pytest.raises(BundleError, match="unexpected member"):
        pv.load(extra)
    deep = tmp_path / "deep.pvb"
    with zipfile.ZipFile(deep, "w") as z:
        z.writestr("bundle.json", "[" * 100_000 + "]" * 100_000)
        z.writestr("weights.safetensors", w)
    with pytest.raises(BundleError, match="not valid JSON"):
        pv.load(deep)
    # An architecture far bigger than the weights that came with it is refused before it is built.
    _rewrite(path, meta=lambda m: {**m, "arch": {"name": "deepdog", "args": {"alpha": 4.0, "num_classes": 2}}})
    with pytest.raises(BundleError, match="refused before building"):
        pv.load(path)
    _rewrite(path, meta=lambda m: {**m, "arch": {"name": "deepdog", "args": {"no_such_arg": 1}}})
    with pytest.raises(BundleError):
        pv.load(path)


JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False)
                    | st.text(max_size=8), lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_bundles_load_or_fail_in_one_line(tiny_bundle, data):
    """Random byte damage to the file, or random values in any field of bundle.json (with a valid checksum):
    loading either works or raises a PocketVisionError, never another exception."""
    from pocketvision.errors import PocketVisionError
    _, path = tiny_bundle
    original = path.read_bytes()
    try:
        if data.draw(st.booleans(), label="bytes"):
            raw = bytearray(original)
            for _ in range(data.draw(st.integers(1, 8), label="n")):
                raw[data.draw(st.integers(0, len(raw) - 1), label="at")] = data.draw(st.integers(0, 255), label="b")
            cut = data.draw(st.integers(len(raw) // 2, len(raw)), label="cut")
            path.write_bytes(bytes(raw[:cut]))
        else:
            key = data.draw(st.sampled_from(["task", "arch", "labels", "contract", "schema", "format", "threshold",
                                             "metrics", "lineage", "data"]), label="key")
            value = data.draw(JSON, label="value")
            _rewrite(path, meta=lambda m: {**m, key: value})
        try:
            b = pv.load(path)
            b.predict_pixels(np.zeros((1, *b.contract.size, 3), np.uint8))
        except PocketVisionError as e:
            assert str(e) and "\n" not in str(e).strip()
    finally:
        path.write_bytes(original)


@pytest.mark.slow
def test_fuzzed_onnx_metadata_fails_in_one_line(tiny_bundle, tmp_path):
    import onnx

    from pocketvision.errors import PocketVisionError
    from pocketvision.deploy.artifact import load_any
    b, _ = tiny_bundle
    good = b.export(tmp_path / "m.onnx", verify=False).path
    proto = onnx.load(str(good))
    rng = np.random.default_rng(0)
    values = ["", "{", "[" * 5000, '"x"', "123", '{"a": 1}', "null", "\x00\x01", '["a", 1]', "1e999"]
    for i in range(40):
        bad = onnx.ModelProto()
        bad.CopyFrom(proto)
        props = [p for p in bad.metadata_props if p.key.startswith("pocketvision.")]
        p = props[int(rng.integers(len(props)))]
        p.value = values[i % len(values)] if i < 2 * len(values) else p.value[:int(rng.integers(len(p.value) + 1))]
        out = tmp_path / f"bad{i}.onnx"
        try:
            onnx.save(bad, str(out))
        except (ValueError, UnicodeEncodeError):
            continue  # not even a writable model
        try:
            load_any(out).run_pixels(np.zeros((1, 64, 64, 3), np.uint8))
        except PocketVisionError as e:
            assert "\n" not in str(e).strip()
