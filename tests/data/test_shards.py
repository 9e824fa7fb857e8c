"""WebDataset shards: written from real data, read by the webdataset library itself, trained on in place (classify)
with keypoints following their photos, fetched over a real HTTP server with SHA-256 checks and resume."""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import threading

import numpy as np
import pytest

from helpers import one_line_error, run_cli
from pocketvision.core.contract import Contract
from pocketvision.data import shards
from pocketvision.data.folder import scan
from pocketvision.errors import PocketVisionError

pytestmark = pytest.mark.shared_data


@pytest.fixture(scope="module")
def hotdog_shards(hotdog_small, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "hotdog"
    r = run_cli("shards", str(hotdog_small), "--out", str(out), "--size", "112", "--shard-mb", "1", "--json")
    assert r.returncode == 0, r.stderr
    return out, json.loads(r.stdout)


def test_shards_are_standard_webdataset_with_the_training_splits(hotdog_small, hotdog_shards):
    import webdataset as wds
    out, stats = hotdog_shards
    folder = scan(hotdog_small)
    assert stats["samples"] == {"train": len(folder.train), "val": len(folder.val)} and stats["shards"] > 2
    desc = json.loads((out / "shards.json").read_text())
    urls = [str(out / s["url"]) for s in desc["splits"]["val"]]
    # The webdataset library's own reader: every sample is a JPEG at the stored size with its class.
    seen = list(wds.WebDataset(urls, shardshuffle=False).decode("rgb8"))
    assert len(seen) == len(folder.val)
    for s in seen[:10]:
        assert min(s["jpg"].shape[:2]) <= 112 and s["json"]["label"] in folder.classes
    # Read back by our reader: the same splits, the same labels, pixels close to the photos at that size.
    again = scan(out)
    assert again.classes == folder.classes and again.counts() == folder.counts()
    from pocketvision.data.cache import decode_at
    for a, b in zip(sorted(again.val, key=lambda s: s.path.name)[:8], sorted(folder.val, key=lambda s: s.path.name)):
        assert a.label == b.label and a.path.stem == b.path.stem
        x, y = decode_at(a.path, 112).astype(int), decode_at(b.path, 112).astype(int)
        assert x.shape == y.shape and np.abs(x - y).mean() < 4  # JPEG q90 4:4:4 of the resized photo


def test_training_evaluation_and_check_read_shards_in_place(hotdog_shards, tmp_path):
    out, _ = hotdog_shards
    r = run_cli("train", str(out), "--out", str(tmp_path / "m.pvb"), "--arch", "deepdog", "--arch-args",
                "alpha=0.25", "--size", "96", "--epochs", "6", "--lr", "3e-3", "--no-recipe", "--workers", "1",
                "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["metrics"]["accuracy"] > 0.6  # above chance on the 80 real val photos
    r = run_cli("eval", str(tmp_path / "m.pvb"), str(out), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["split"] == "val", r.stderr
    # int8 calibrates on the training images, which the bundle finds in the shards it was trained on.
    r = run_cli("export", str(tmp_path / "m.pvb"), "--to", "onnx", "--int8", "--out", str(tmp_path / "q.onnx"))
    assert r.returncode == 0 and "verify PASSED" in r.stdout, r.stdout + r.stderr[-2000:]
    r = run_cli("check", str(out), "--json")
    assert r.returncode == 0, r.stderr
    assert not json.loads(r.stdout)["unreadable"]
    r = run_cli("check", str(out), env={**os.environ, "COLUMNS": "400"})  # one line per title
    assert r.returncode == 0 and "(the shard set's own splits)" in r.stdout, r.stdout + r.stderr


def test_keypoints_travel_with_their_photos(faces_small, tmp_path):
    """faces_small names its images by absolute path (outside its folder): they are stored as external/<name>, and
    each photo's points are scaled with its pixels."""
    from pocketvision.tasks.keypoints.annotations import load_keypoints
    from pocketvision.tasks.keypoints.run import decode_sample
    r = run_cli("shards", str(faces_small), "--out", str(tmp_path / "kp"), "--size", "48", "--json")
    assert r.returncode == 0, r.stderr
    orig, back = load_keypoints(faces_small), load_keypoints(tmp_path / "kp")
    assert back.schema == orig.schema and (len(back.train), len(back.val)) == (len(orig.train), len(orig.val))
    assert back.train[0].path.parent.name == "external"
    contract = Contract(size=(40, 40))  # sources at 46 px: both paths downscale
    by_name = {s.path.name: s for s in orig.train}
    diffs = []
    for s in back.train[:20]:
        o = by_name[s.path.name]
        assert s.size == (48, 48) and o.size == (80, 80)
        np.testing.assert_allclose(s.points[:, :2], o.points[:, :2] * 48 / 80, rtol=1e-5)
        a, pa, _ = decode_sample(s, contract)
        b, pb, _ = decode_sample(o, contract)
        assert a.shape == b.shape
        np.testing.assert_allclose(pa[:, :2], pb[:, :2], rtol=1e-4)  # the same points on the model's source
        diffs.append(np.abs(a.astype(int) - b.astype(int)).mean())
    # Resized twice (80 -> 48 stored -> 46) and JPEG-coded once more, against 80 -> 46: a few levels.
    assert np.mean(diffs) < 5, diffs


def test_fetch_over_http_checks_hashes_and_resumes(hotdog_shards, tmp_path):
    src, _ = hotdog_shards
    served = tmp_path / "bucket"
    shutil.copytree(src, served)
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass
    handler = functools.partial(Quiet, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/shards.json"
    try:
        dest = tmp_path / "local"
        r = run_cli("fetch-shards", url, "--out", str(dest), "--json")
        assert r.returncode == 0, r.stderr
        first = json.loads(r.stdout)
        n = first["fetched"]
        assert n > 2 and first["kept"] == 0
        for p in served.iterdir():
            assert (dest / p.name).read_bytes() == p.read_bytes()
        # Interrupted: one shard missing and a partial download left behind; the rerun fetches only that one.
        victim = sorted(dest.glob("train-*.tar"))[1]
        victim.unlink()
        (dest / f".{victim.name}.part").write_bytes(b"half")
        r = run_cli("fetch-shards", url, "--out", str(dest), "--json")
        assert r.returncode == 0 and (json.loads(r.stdout)["fetched"], json.loads(r.stdout)["kept"]) == (1, n - 1)
        assert victim.read_bytes() == (served / victim.name).read_bytes()
        assert scan(dest).counts() == scan(src).counts()
        # A source whose shard no longer matches its descriptor: refused, and no damaged file is kept.
        data = bytearray((served / victim.name).read_bytes())
        data[5000] ^= 0xFF
        (served / victim.name).write_bytes(bytes(data))
        victim.unlink()
        r = run_cli("fetch-shards", url, "--out", str(dest))
        one_line_error(r, victim.name, "SHA-256")
        assert not victim.exists() and not list(dest.glob(".*.part"))
        one_line_error(run_cli("fetch-shards", url.replace("shards.json", "nothing.json"), "--out",
                               str(tmp_path / "x")), "cannot read the shard descriptor")
    finally:
        server.shutdown()


def test_bad_input_gets_one_line(hotdog_small, hotdog_shards, shared_data, tmp_path):
    out, _ = hotdog_shards
    one_line_error(run_cli("shards", str(hotdog_small), "--out", str(out)), "exists and is not empty")
    one_line_error(run_cli("shards", str(hotdog_small), "--out", str(tmp_path / "q"), "--quality", "20"),
                   "between 50 and 100")
    one_line_error(run_cli("shards", str(shared_data / "style"), "--task", "stylize", "--out", str(tmp_path / "s")),
                   "does not write stylize data")
    assert not (tmp_path / "q").exists() and not (tmp_path / "s").exists()
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    next(broken.glob("train-*.tar")).unlink()
    one_line_error(run_cli("train", str(broken), "--epochs", "1"), "is missing")
    (broken / "shards.json").write_text("{not json")
    with pytest.raises(PocketVisionError, match="not a readable shard descriptor"):
        shards.read_descriptor(broken)
    # A classifier's shards read as keypoints: named, not a traceback.
    one_line_error(run_cli("train", str(out), "--task", "keypoints", "--epochs", "1"), "not keypoints")
