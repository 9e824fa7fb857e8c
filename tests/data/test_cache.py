"""`pocketvision cache`: decoded pixels kept on disk, invalidated by what changed, used by training."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from helpers import one_line_error, run_cli
from pocketvision.data.cache import PixelCache, build, decode_at
from pocketvision.errors import PocketVisionError

pytestmark = pytest.mark.shared_data


@pytest.fixture
def data(hotdog_small, tmp_path):
    d = tmp_path / "photos"
    shutil.copytree(hotdog_small, d)
    return d


def test_pixels_are_the_decoded_files_and_only_changes_are_decoded_again(data, tmp_path):
    cache, stats = build(data, 128, tmp_path / "c")
    files = sorted(p for p in data.rglob("*.jpg"))
    assert stats["images"] == len(files) == stats["decoded"] and stats["reused"] == 0
    for p in files[:5]:
        np.testing.assert_array_equal(cache.get(p), decode_at(p, 128))
        assert min(cache.get(p).shape[:2]) <= 128
    a, b, c = files[0], files[1], files[2]
    os.utime(a, ns=(a.stat().st_atime_ns, a.stat().st_mtime_ns + 10**9))  # touched, same bytes
    shutil.copy(files[3], b)  # replaced by another photo
    c.unlink()  # gone
    found = PixelCache.find(data, 100, tmp_path / "c")
    assert found.stale.changed == [b.relative_to(data).as_posix()]
    assert found.stale.missing == [c.relative_to(data).as_posix()]
    assert found.get(b) is None and found.get(a) is not None  # a changed file is never served stale
    assert PixelCache.find(data, 129, tmp_path / "c") is None  # too small for that model
    cache, stats = build(data, 128, tmp_path / "c")
    assert (stats["decoded"], stats["removed"], stats["reused"]) == (1, 1, len(files) - 2)
    np.testing.assert_array_equal(cache.get(b), decode_at(b, 128))
    import pickle
    assert len(pickle.dumps(cache)) < 1 << 20  # to a spawned worker: the index, never the mapped shards
    # What the RAM-cached training path takes: the cached pixels downscaled to the augmentation source size.
    from pocketvision.core.contract import Contract
    from pocketvision.training.loader import decode_source, source_side
    src = decode_source(a, Contract(size=(96, 96)), cache)
    assert min(src.shape[:2]) == source_side(Contract(size=(96, 96))) == 111


def test_bad_caches_and_bad_input_get_one_line(data, tmp_path):
    cache, _ = build(data, 64, tmp_path / "c")
    index = cache.folder / "index.json"
    doc = json.loads(index.read_text())
    index.write_text(json.dumps({**doc, "source": "/elsewhere"}))
    with pytest.raises(PocketVisionError, match="a cache of /elsewhere"):
        PixelCache.find(data, 64, tmp_path / "c")
    logs = []
    _, stats = build(data, 64, tmp_path / "c", log=logs.append)  # rebuilt, with the reason
    assert "rebuilding" in logs[0] and stats["decoded"] == stats["images"]
    index.write_text("{not json")
    with pytest.raises(PocketVisionError, match="not a readable pixel cache"):
        PixelCache.read(cache.folder)
    (data / "train" / "hotdog" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    _, stats = build(data, 64, tmp_path / "c")
    assert len(stats["unreadable"]) == 1 and "broken.jpg" in stats["unreadable"][0]
    for args, words in ((["--size", "8"], "between 16 and 4096"), ([], "not a folder")):
        target = str(data) if args else str(tmp_path / "nope")
        one_line_error(run_cli("cache", target, "--cache-dir", str(tmp_path / "c"), *args), words)


def test_training_reads_the_cache_and_learns(data, tmp_path):
    r = run_cli("cache", str(data), "--size", "128", "--cache-dir", str(tmp_path / "c"), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["images"] > 300
    r = run_cli("train", str(data), "--out", str(tmp_path / "m.pvb"), "--arch", "deepdog", "--arch-args",
                "alpha=0.25", "--size", "96", "--epochs", "6", "--lr", "3e-3", "--cache-dir", str(tmp_path / "c"),
                "--no-recipe", "--workers", "0", "--cache-mb", "0", cwd=tmp_path)  # lazy: memory-mapped pixels
    assert r.returncode == 0, r.stderr[-2000:]
    out = " ".join((r.stderr + r.stdout).split())  # rich wraps long lines
    assert "pixel cache" in out and "from the pixel cache" in out
    assert "(data wait " in out  # each epoch says how long the model waited for batches
    import pocketvision as pv
    acc = pv.load(tmp_path / "m.pvb").evaluate(data)["accuracy"]
    assert acc > 0.6  # above chance (0.5) on the 80 real val photos, decoded from the files
    # --no-content: the cache line is in the counts and files part; the content check (Lite0 reading every photo)
    # has its own tests (tests/tasks/test_check.py, and the README's `check` in tests/test_walkthrough.py)
    env = {**os.environ, "POCKETVISION_CACHE_DIR": str(tmp_path / "elsewhere")}
    r = run_cli("check", str(data), "--no-content", env=env)
    assert r.returncode == 0 and "pixel cache" not in r.stdout  # none there: none reported
    env = {**os.environ, "POCKETVISION_CACHE_DIR": str(tmp_path / "c")}
    r = run_cli("check", str(data), "--no-content", env=env)
    assert "pixel cache" in r.stdout and "images at 128 px" in r.stdout, r.stdout


def test_jpeg_storage_is_small_close_and_rebuilt_when_the_format_changes(data, tmp_path):
    raw, raw_stats = build(data, 128, tmp_path / "raw")
    logs = []
    cache, stats = build(data, 128, tmp_path / "raw", encoding="jpeg", quality=90, log=logs.append)
    assert "rebuilding: stored as raw pixels, now JPEG q90" in logs[0] and stats["decoded"] == stats["images"]
    assert stats["megabytes"] < raw_stats["megabytes"] / 4  # measured: ~10x smaller
    assert sorted(p.name for p in cache.folder.glob("shard-*")) == ["shard-001.npy"]  # the raw shard is gone
    found = PixelCache.find(data, 100, tmp_path / "raw")
    assert found.encoding == "jpeg" and "as JPEG q90" in found.describe()
    files = sorted(data.rglob("*.jpg"))[:10]
    diffs = []
    for p in files:
        a, b = found.get(p).astype(int), decode_at(p, 128).astype(int)
        assert a.shape == b.shape
        diffs.append(np.abs(a - b).mean())
    assert np.mean(diffs) < 3 and max(diffs) < 4.5, diffs  # re-encoding at q90, 4:4:4, costs a couple of levels
    # Augmentation sources: libjpeg decodes the cached JPEG at a reduced scale when the model is small.
    src = found.source_pixels(files[0], 40)
    assert min(src.shape[:2]) == 40
    for args, words in ((["--quality", "90"], "--quality is the JPEG quality"),
                        (["--format", "jpeg", "--quality", "20"], "between 50 and 100")):
        one_line_error(run_cli("cache", str(data), "--cache-dir", str(tmp_path / "c"), *args), words)


@pytest.mark.shared_data
def test_keypoint_training_reads_the_cache(faces5, tmp_path):
    """Keypoint photos come from the cache; their points come from the annotations as they are now, scaled to the
    cached pixels, so the two paths give the same points and nearly the same pixels."""
    from pocketvision.core.contract import Contract
    from pocketvision.tasks.keypoints.annotations import load_keypoints
    from pocketvision.tasks.keypoints.run import decode_sample
    d = tmp_path / "faces"
    (d / "images").mkdir(parents=True)
    for split, n in (("train", 600), ("val", 60)):
        doc = json.loads((faces5 / f"{split}.json").read_text())
        doc["images"] = doc["images"][::len(doc["images"]) // n][:n]
        ids = {im["id"] for im in doc["images"]}
        doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] in ids]
        for im in doc["images"]:
            shutil.copy(faces5 / im["file_name"], d / im["file_name"])
        (d / f"{split}.json").write_text(json.dumps(doc))
    cache, _ = build(d, 96, tmp_path / "c")
    ks = load_keypoints(d)
    contract = Contract(size=(48, 48))  # sources at 56 px: the cached 80 px faces are downscaled
    for s in ks.train[:20]:
        a, pa, size_a = decode_sample(s, contract, cache)
        b, pb, size_b = decode_sample(s, contract)
        assert a.shape == b.shape and size_a == size_b
        np.testing.assert_allclose(pa, pb, rtol=1e-6)
        assert np.abs(a.astype(int) - b.astype(int)).mean() < 2
    # The default model's sources are 92 px, and these faces are 80 px: the cache holds exactly the files' pixels,
    # so training from it is the same run, step for step, as training from the files.
    nme = {}
    for where in ("c", "none"):
        r = run_cli("train", str(d), "--out", str(tmp_path / f"kp-{where}.pvb"), "--epochs", "1", "--workers", "0",
                    "--cache-dir", str(tmp_path / where), "--json", cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-2000:]
        assert ("pixel cache" in " ".join(r.stderr.split())) == (where == "c")
        nme[where] = json.loads(r.stdout)["metrics"]["nme"]
    assert nme["c"] == pytest.approx(nme["none"], abs=1e-9)
