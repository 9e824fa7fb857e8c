"""The labelling tool against its real server on 127.0.0.1, driven by Playwright in Debian's Chromium:
clicks, undo, not visible, skip, kill + restart (nothing lost), a point added later, model suggestions,
path traversal and off-schema writes refused, and the image switch time measured in the browser."""

from __future__ import annotations

import http.client
import json
import shutil

import numpy as np
import pytest

from pocketvision.label.server import start, url_of
from pocketvision.label.store import LabelStore

pytestmark = [pytest.mark.browser, pytest.mark.shared_data]
POINTS = ["left_eye", "right_eye", "nose"]


@pytest.fixture
def photos(shared_data, tmp_path):
    """Six real photos in a folder of their own (the server may only serve what is under it): the three
    full-size phone photos (up to 3456 px, 1-3 MB) between ~500 px ones, so the switch time is measured
    on what people really label."""
    d = tmp_path / "photos"
    d.mkdir()
    big = sorted((shared_data / "photos-fullres").glob("*.jpg"))
    small = sorted((shared_data / "hotdog" / "val" / "not_hotdog").glob("*.jpg"))[:3]
    for i, p in enumerate([small[0], big[0], small[1], big[1], small[2], big[2]]):
        shutil.copy(p, d / f"{i:02d}_{p.name}")
    (tmp_path / "secret.txt").write_text("not for the browser")
    (d / "escape.jpg").symlink_to(tmp_path / "secret.txt")  # a link out of the folder: never listed or served
    return d


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    from pocketvision.runtime.web_predictor import chromium_path
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        yield b
        b.close()


def _open(browser, srv):
    page = browser.new_page(viewport={"width": 1000, "height": 800})
    page.goto(url_of(srv))
    page.wait_for_function("window.pv && window.pv.ready")
    return page


def _at(page, fx, fy):
    """A position given as fractions of the current image -> its full-size pixel coordinates."""
    w, h = page.evaluate("pv.current().size")
    return fx * w, fy * h


def _click(page, fx, fy):
    x, y = _at(page, fx, fy)
    sx, sy = page.evaluate("([x, y]) => pv.toScreen(x, y)", [x, y])
    page.mouse.click(sx, sy)
    return x, y


def _saved(out):
    d = json.loads(out.read_text())
    by_id = {im["id"]: im["file_name"].rsplit("/", 1)[-1] for im in d["images"]}  # paths are relative to the file
    return {by_id[a["image_id"]]: np.array(a["keypoints"]).reshape(-1, 3) for a in d["annotations"]}, d


def _wait_saved(page, n):
    page.wait_for_function(f"window.pv.saved >= {n}")


FACE = [(0.38, 0.40), (0.62, 0.40), (0.50, 0.60)]  # where to click, as fractions of each image


def _tol(page):
    """One screen pixel, in image pixels (a 3456 px photo shown in 800 px: ~4 image px)."""
    return 1.5 / page.evaluate("pv.toScreen(1, 0)[0] - pv.toScreen(0, 0)[0]")


def _label(page, n_saved, clicks=FACE):
    """Label the current image like a person (look, then click), wait until it is saved -> (name, points)."""
    name = page.evaluate("pv.current().image")
    page.wait_for_function("pv.aheadReady()")  # a person looks before clicking: the next image decodes meanwhile
    pts = [_click(page, fx, fy) for fx, fy in clicks]
    _wait_saved(page, n_saved)
    return name, pts


def test_three_clicks_label_an_image_and_the_next_one_is_instant(browser, photos, tmp_path):
    out = tmp_path / "labels.json"
    srv = start(LabelStore.open(photos, out, "keypoints", POINTS))
    try:
        page = _open(browser, srv)
        state = page.evaluate("pv.state")
        assert "escape.jpg" not in state["images"] and len(state["images"]) == 6
        assert page.evaluate("pv.current().needed[0]") == POINTS[0]
        tol = _tol(page)
        first, pts = _label(page, 1)  # exactly 3 clicks, no key
        page.wait_for_function(f"pv.current().image !== {json.dumps(first)}", timeout=2000)
        saved, doc = _saved(out)
        np.testing.assert_allclose(saved[first][:, :2], pts, atol=tol)
        assert saved[first][:, 2].tolist() == [2, 2, 2]
        assert doc["categories"][0]["keypoints"] == POINTS
        # two more (a full-size phone photo among them): every switch is measured in the page, from the
        # last click to the frame after the next image is drawn
        for k in range(2):
            _label(page, 2 + k)
        # each switch drew an image decoded ahead of time (the page also records each switch's milliseconds in
        # pv.switchMs; how fast the machine is is not this test's business)
        assert page.evaluate("pv.switchReady") == [True, True, True]
        # the file trains: COCO keypoints our own reader accepts, in full-size pixels
        from pocketvision.tasks.keypoints.annotations import read_coco
        schema, samples, _ = read_coco(out)
        assert list(schema.names) == POINTS and len(samples) == 3 and schema.flip_pairs == ((0, 1),)
        assert max(s.size[0] for s in samples) > 2000  # the phone photo kept its full-size coordinates
    finally:
        srv.shutdown()


def test_undo_not_visible_skip_and_drag(browser, photos, tmp_path):
    out = tmp_path / "labels.json"
    srv = start(LabelStore.open(photos, out, "keypoints", POINTS))
    try:
        page = _open(browser, srv)
        tol = _tol(page)
        first = page.evaluate("pv.current().image")
        _click(page, 0.1, 0.1)
        page.keyboard.press("Backspace")  # undo the misplaced eye
        assert page.evaluate("pv.current().needed[0]") == "left_eye"
        _click(page, 0.3, 0.35)
        page.keyboard.press("Control+z")
        eye = _click(page, 0.36, 0.41)
        page.keyboard.press("v")  # right eye not visible
        _click(page, 0.5, 0.6)
        _wait_saved(page, 1)
        saved, _ = _saved(out)
        assert saved[first][0][:2].tolist() == pytest.approx(eye, abs=tol) and saved[first][0][2] == 2
        assert saved[first][1].tolist() == [0, 0, 0]  # not visible: not placed, but answered
        page.wait_for_function(f"pv.current().image !== {json.dumps(first)}")
        second = page.evaluate("pv.current().image")
        page.keyboard.press("s")
        _wait_saved(page, 2)
        _, doc = _saved(out)
        status = {im["file_name"].rsplit("/", 1)[-1]: im["pv_status"] for im in doc["images"]}
        assert status[second] == "skipped" and status[first] == "done"
        # go back to the first image and drag its left eye to a new place: saved again
        page.keyboard.press("ArrowLeft")
        page.keyboard.press("ArrowLeft")
        page.wait_for_function(f"pv.current().image === {json.dumps(first)}")
        to = _at(page, 0.3, 0.45)
        sx, sy = page.evaluate("([x, y]) => pv.toScreen(x, y)", list(eye))
        tx, ty = page.evaluate("([x, y]) => pv.toScreen(x, y)", list(to))
        page.mouse.move(sx, sy)
        page.mouse.down()
        page.mouse.move(tx, ty, steps=5)
        page.mouse.up()
        _wait_saved(page, 3)
        saved, _ = _saved(out)
        assert saved[first][0][:2].tolist() == pytest.approx(to, abs=tol)
    finally:
        srv.shutdown()


def test_kill_and_restart_loses_nothing_then_add_a_point(browser, photos, tmp_path):
    out = tmp_path / "labels.json"
    srv = start(LabelStore.open(photos, out, "keypoints", POINTS))
    page = _open(browser, srv)
    done = [_label(page, 1)[0], _label(page, 2)[0]]
    page.wait_for_function(f"pv.current().image !== {json.dumps(done[1])}")
    _click(page, 0.4, 0.4)  # half of the third image, then the server dies
    srv.shutdown()
    srv.server_close()
    before, _ = _saved(out)
    assert sorted(before) == sorted(done)
    # restart: resumes at the first unlabelled image, the two labelled ones intact
    srv = start(LabelStore.open(photos, out, "keypoints", POINTS))
    try:
        page = _open(browser, srv)
        assert page.evaluate("pv.current().image") not in done
        assert page.evaluate("pv.current().needed") == POINTS
    finally:
        srv.shutdown()
        srv.server_close()
    # a new point on an already labelled set: asked on every image, the old points kept
    srv = start(LabelStore.open(photos, out, "keypoints", POINTS + ["mouth"]))
    try:
        page = _open(browser, srv)
        assert page.evaluate("pv.current().image") == done[0]
        assert page.evaluate("pv.current().needed") == ["mouth"]
        tol = _tol(page)
        _, (mouth,) = _label(page, 1, [(0.5, 0.7)])  # one click finishes the image
        after, doc = _saved(out)
        assert doc["categories"][0]["keypoints"] == POINTS + ["mouth"]
        np.testing.assert_allclose(after[done[0]][:3], before[done[0]])
        assert after[done[0]][3][:2].tolist() == pytest.approx(mouth, abs=tol) and after[done[0]][3][2] == 2
        assert after[done[1]][3].tolist() == [0, 0, 0]  # not asked yet
    finally:
        srv.shutdown()


def _request(srv, method, path, body=None):
    host, port = srv.server_address[:2]
    c = http.client.HTTPConnection(host, port, timeout=10)
    c.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
    r = c.getresponse()
    return r.status, r.read()


def test_path_traversal_symlinks_and_bad_writes_are_refused(photos, tmp_path):
    out = tmp_path / "labels.json"
    store = LabelStore.open(photos, out, "keypoints", POINTS)
    srv = start(store)
    try:
        assert srv.server_address[0] == "127.0.0.1"
        for path in ("/api/image/../../secret.txt", "/api/image/%2e%2e%2fsecret.txt", "/../secret.txt",
                     "/api/image/6", "/api/image/-1", "/photos/escape.jpg", "/label.js/../../secret.txt"):
            status, body = _request(srv, "GET", path)
            assert status == 404 and b"not for the browser" not in body, path
        status, body = _request(srv, "GET", "/api/image/0")
        assert status == 200 and body[:2] == b"\xff\xd8"  # a JPEG from the folder
        img = store.images[0]
        for bad in ({"image": "../secret.txt", "points": [None] * 3, "asked": []},
                    {"image": img, "points": [[1, 2, 2]], "asked": []},  # wrong number of points
                    {"image": img, "points": [[1e6, 2, 2], None, None], "asked": ["left_eye"]},  # outside the image
                    {"image": img, "points": [None] * 3, "asked": ["ear"]},
                    {"image": img, "points": [None] * 3, "asked": [], "rm": "-rf"}):
            status, _ = _request(srv, "POST", "/api/label", json.dumps(bad))
            assert status == 400, bad
        status, _ = _request(srv, "POST", "/api/label", b"{not json")
        assert status == 400 and not out.exists()  # nothing written by any refused request
    finally:
        srv.shutdown()


def test_classes_with_number_keys_csv_and_folders(browser, photos, tmp_path):
    out, folders = tmp_path / "labels.csv", tmp_path / "sorted"
    srv = start(LabelStore.open(photos, out, "classes", ["smile", "neutral"], folders))
    try:
        page = _open(browser, srv)
        a = page.evaluate("pv.current().image")
        page.keyboard.press("1")
        page.wait_for_function(f"pv.current().image !== {json.dumps(a)}")
        b = page.evaluate("pv.current().image")
        page.keyboard.press("2")
        _wait_saved(page, 2)
        rows = out.read_text().splitlines()
        assert rows[0] == "image,label" and f"{a},smile" in rows and f"{b},neutral" in rows
        assert (folders / "smile" / a).resolve() == (photos / a).resolve()
    finally:
        srv.shutdown()


def test_model_suggestions_least_sure_first(browser, photos, tmp_path, kp_bundle):
    from pocketvision.label.server import Suggester
    out = tmp_path / "labels.json"
    store = LabelStore.open(photos, out, "keypoints", ["left_eye", "right_eye", "nose"])
    sug = Suggester(str(kp_bundle.path), store)
    srv = start(store, suggester=sug, order="uncertain")
    try:
        page = _open(browser, srv)
        u = {img: sug.suggest(img)["uncertainty"] for img in store.images}
        first = page.evaluate("pv.current().image")
        assert u[first] == max(u.values())  # the model's least sure image comes first
        page.wait_for_function("pv.current().points.every((p) => p !== null)")  # pre-placed by the model
        placed = page.evaluate("pv.current().points")
        page.keyboard.press("Enter")  # the person agrees: one key, saved
        _wait_saved(page, 1)
        saved, _ = _saved(out)
        np.testing.assert_allclose(saved[first][:, :2], np.array(placed)[:, :2], atol=0.01)
        pred = kp_bundle.predict([photos / first])[0]["keypoints"]
        assert saved[first][0][:2].tolist() == pytest.approx([pred["left_eye"]["x"], pred["left_eye"]["y"]], abs=0.01)
    finally:
        srv.shutdown()


def test_cli_server_killed_with_sigkill_loses_nothing(photos, tmp_path):
    """The real `pocketvision label` process, killed -9 between two saves: every saved image survives."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "labels.json"

    def launch():
        p = subprocess.Popen([sys.executable, "-m", "pocketvision", "label", str(photos), "--keypoints",
                              ",".join(POINTS), "--out", str(out), "--no-browser", "--port", "0"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        t0 = time.time()
        for line in p.stdout:
            if line.startswith("open http://127.0.0.1:"):
                return p, int(line.split(":")[2].split("/")[0])
            if time.time() - t0 > 60:
                break
        p.kill()
        raise AssertionError(p.stderr.read())

    proc, port = launch()
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("GET", "/api/state")
        state = json.loads(c.getresponse().read())
        for i, name in enumerate(state["images"][:3]):
            body = json.dumps({"image": name, "points": [[10 + i, 20, 2], [30, 20, 2], None], "asked": POINTS})
            c.request("POST", "/api/label", body=body, headers={"Content-Type": "application/json"})
            assert c.getresponse().status == 200
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    saved, _ = _saved(out)
    assert len(saved) == 3 and saved[state["images"][2].rsplit("/", 1)[-1]][0].tolist() == [12, 20, 2]
    proc, port = launch()  # restarted: resumes after the three saved images
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("GET", "/api/state")
        again = json.loads(c.getresponse().read())
        assert again["done"] == 3 and again["start"] == 3
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
