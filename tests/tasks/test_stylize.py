"""Style transfer as the third task: a real (tiny) stylizer trained on real photos through the one engine,
exported to every target with PSNR parity, run in Chromium, on a video, and its bad inputs.

Uses ../shared/data (marker shared_data): hotdog photos as content, ../shared/data/style as styles.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import pocketvision as pv
from helpers import one_line_error as _one_line_error
from helpers import run_cli

pytestmark = [pytest.mark.shared_data]


@pytest.mark.slow
def test_the_stylizer_learns_and_keeps_its_style(style_bundle):
    b = pv.load(style_bundle)
    assert b.task == "stylize" and b.labels == ["starry_night"]
    hist = b.meta["history"]
    assert len(hist) == 3 and hist[-1]["val_loss"] < hist[0]["val_loss"], hist  # it learned something
    s = b.meta["stylize"]
    assert s["features"] == "lite0" and s["styles"][0]["png"]  # the style travels with the bundle
    # the report: content, style and result side by side, loss curves, stylizer vs the optimisation method
    html = open(b.meta["report"]).read()
    assert "Content, style, result" in html and "optimisation method" in html and html.count("<img") >= 8
    assert b.metrics["gatys"]["gatys_style"] > 0


@pytest.mark.slow
def test_exports_to_every_target_with_psnr_parity(style_bundle, tmp_path):
    b = pv.load(style_bundle)
    res, out = {}, {}
    for to, precision in [("onnx", "fp32"), ("tflite", "fp32"), ("onnx", "int8"), ("tflite", "int8"),
                          ("coreml", "fp32"), ("web", "fp32")]:
        r = b.export(tmp_path / f"s-{precision}.{ {'coreml': 'mlpackage'}.get(to, to)}", to=to, precision=precision)
        res[to, precision], out[to, precision] = r.verification, r
    for key in [("onnx", "fp32"), ("tflite", "fp32"), ("web", "fp32")]:  # the page's own session, in Chromium
        v = res[key]
        assert v["passed"] and v["psnr_db"] >= 40 and v["n"] >= 4, (key, v)
    for key in [("onnx", "int8"), ("tflite", "int8")]:
        v = res[key]
        assert v["passed"] and v["psnr_db"] >= 30 and "PSNR >= 30 dB" in v["criterion"], (key, v)
    # the task's int8 recipe: convolutions only, so instance norm's statistics (ReduceMean) stay float
    q = out["onnx", "int8"]
    assert q.compression["int8"]["op_types"] == ["Conv"] and q.compression["int8"]["calibration"] == "percentile"
    import onnx
    g = onnx.load(str(q.path)).graph
    made_by = {o: n.op_type for n in g.node for o in n.output}
    assert sum(n.op_type == "ReduceMean" for n in g.node) >= 2 and sum(n.op_type == "QuantizeLinear" for n in g.node) >= 4
    assert not [n.name for n in g.node if n.op_type == "QuantizeLinear" and made_by.get(n.input[0]) == "ReduceMean"]
    cm = res["coreml", "fp32"]
    assert cm["passed"] and not cm["numeric"] and cm["structure"]["outputs"] and cm["structure"]["image_input"]
    # dynamic height/width in ONNX: uint8 RGB in, uint8 RGB out, at a size it was not exported at
    from pocketvision.deploy.artifact import open_predictor
    p = open_predictor(tmp_path / "s-fp32.onnx", threads=1)
    assert p.input_size is None
    x = np.random.default_rng(0).integers(0, 256, (1, 72, 104, 3), dtype=np.uint8)
    y = p.run_pixels(x)
    assert y.dtype == np.uint8 and y.shape == (1, 72, 104, 3)
    np.testing.assert_allclose(y.astype(int), b.predict_pixels(x).astype(int), atol=2)


@pytest.fixture(scope="module")
def style_onnx(style_bundle, tmp_path_factory):
    """The stylizer's ONNX file, exported once for the tests that only run it (its parity: the test above)."""
    return pv.load(style_bundle).export(tmp_path_factory.mktemp("style_onnx") / "s.onnx", verify=False).path


@pytest.mark.slow
def test_an_export_is_verified_on_a_handful_of_photos(style_bundle, style_onnx, shared_data):
    """Verifying needs real photos, not many: only training asks for a minimum (style/content holds 5)."""
    onnx_path = style_onnx
    content = shared_data / "style" / "content"
    assert len(list(content.iterdir())) < 6
    r = run_cli("verify", str(style_bundle), str(onnx_path), "--data", str(content), "--json")
    assert r.returncode == 0, r.stderr
    v = json.loads(r.stdout)
    assert v["passed"] and v["n"] == len(list(content.iterdir()))


def test_predict_writes_images_torch_free(style_onnx, tmp_path, shared_data):
    import subprocess
    import sys
    onnx_path = style_onnx
    photo = shared_data / "style" / "content" / "tubingen.jpg"
    code = ("import sys; from pocketvision.cli.commands import main; rc = main(['predict', sys.argv[1], sys.argv[2], "
            "'--out-dir', sys.argv[3], '--json']); assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code, str(onnx_path), str(photo), str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout)[0]
    img = Image.open(rec["image"])
    w, h = Image.open(photo).size
    assert img.size == tuple(rec["size"]) and abs(img.size[0] / img.size[1] - w / h) < 0.02  # its own aspect


@pytest.mark.slow
@pytest.mark.browser
def test_the_web_page_stylises_a_photo(style_bundle, tmp_path, shared_data):
    from pocketvision.runtime.web_predictor import WebPredictor
    folder = pv.load(style_bundle).export(tmp_path / "s.web", to="web", verify=False).path
    photo = shared_data / "style" / "content" / "golden_gate.jpg"
    (folder / "photo.jpg").write_bytes(photo.read_bytes())
    with WebPredictor(folder) as web:
        out = web.page.evaluate("pv.runUrl('photo.jpg')")
        w, h = Image.open(photo).size
        assert max(out["width"], out["height"]) == 512 and abs(out["width"] / out["height"] - w / h) < 0.03, out
        drawn = web.page.evaluate("""() => { const c = document.getElementById('overlay');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let lo = 255, hi = 0;
            for (let i = 0; i < d.length; i += 40) { lo = Math.min(lo, d[i]); hi = Math.max(hi, d[i]); }
            return {w: c.width, hidden: c.hidden, lo, hi}; }""")
        assert drawn["w"] == out["width"] and not drawn["hidden"] and drawn["hi"] - drawn["lo"] > 20  # a picture


@pytest.mark.slow
def test_filter_stylises_a_video_and_smooths_flicker(style_onnx, tmp_path, shared_data):
    from synthetic_video import make_video
    photos = sorted((shared_data / "style" / "content").glob("*.jpg"))[:2]
    make_video(photos, tmp_path / "pan.mp4", size=(320, 240), frames_per_image=10, pan=0.08)
    onnx_path = style_onnx
    stats = {}
    for temporal in ("0", "0.6"):
        r = run_cli("filter", "--style", str(onnx_path), str(tmp_path / "pan.mp4"), "--out",
                    str(tmp_path / f"out{temporal}.mp4"), "--temporal", temporal, "--max-side", "128", "--json")
        assert r.returncode == 0, r.stderr
        stats[temporal] = json.loads(r.stdout)
    assert stats["0"]["frames"] == 20 and (tmp_path / "out0.6.mp4").stat().st_size > 1000
    f0, f6 = stats["0"]["flicker"], stats["0.6"]["flicker"]
    assert f0["ratio"] == pytest.approx(f0["unsmoothed_ratio"])  # no smoothing: the raw stylizer
    assert f6["ratio"] < f6["unsmoothed_ratio"]  # smoothing lowers the flicker of the same frames


def test_bad_inputs_get_one_line(tmp_path, shared_data, hotdog_small):
    style = shared_data / "style" / "styles" / "starry_night.jpg"
    (tmp_path / "not_an_image.jpg").write_text("hello")
    Image.new("RGB", (12, 10), (200, 30, 30)).save(tmp_path / "tiny.png")
    photos = hotdog_small / "train" / "hotdog"
    common = ["--size", "64", "--epochs", "1", "--out", str(tmp_path / "x.pvb"), "--run-dir", str(tmp_path / "run")]
    _one_line_error(run_cli("train", str(photos), "--task", "stylize", "--style", str(tmp_path / "not_an_image.jpg"),
                            *common), "not_an_image.jpg", "not a readable image")
    _one_line_error(run_cli("train", str(photos), "--task", "stylize", "--style", str(tmp_path / "tiny.png"),
                            "--style-size", "32", *common), "style image", "at least")
    _one_line_error(run_cli("train", str(photos), "--task", "stylize", "--style", str(style), "--head", "heatmap",
                            "--mixup", "0.5", *common), "--head, --mixup", "a stylize training does not use them")
    _one_line_error(run_cli("train", str(photos), "--task", "stylize", *common), "--style")
    _one_line_error(run_cli("stylize", "--style", str(style), "--content", str(tmp_path / "not_an_image.jpg"),
                            "--out", str(tmp_path / "o.png")), "not_an_image.jpg")
    _one_line_error(run_cli("stylize", "--style", str(style), "--content", str(tmp_path / "tiny.png"),
                            "--out", str(tmp_path / "o.png")), "at least")
    _one_line_error(run_cli("stylize", "--content", str(style), "--out", str(tmp_path / "o.png")),
                    "--style is required")
    assert not (tmp_path / "x.pvb").exists() and not (tmp_path / "o.png").exists()


def test_vgg_weights_for_another_architecture_name_the_keys(tmp_path, shared_data):
    import torch

    from pocketvision.models.vgg import build_vgg
    torch.save(build_vgg("vgg16", "random").state_dict(), tmp_path / "vgg16.pth")
    c = shared_data / "style" / "content" / "tubingen.jpg"
    r = run_cli("stylize", "--style", str(c), "--content", str(c), "--features", "vgg19", "--weights",
                str(tmp_path / "vgg16.pth"), "--out", str(tmp_path / "o.png"))
    _one_line_error(r, "vgg16.pth", "features.")


@pytest.mark.slow
def test_gatys_cli_lowers_the_loss(tmp_path, shared_data):
    d = shared_data / "style"
    r = run_cli("stylize", "--style", str(d / "styles" / "the_scream.jpg"), "--content", str(d / "content" /
                "golden_gate.jpg"), "--size", "96", "--iterations", "15", "--scales", "1", "--out",
                str(tmp_path / "o.png"), "--intermediates", str(tmp_path / "steps"), "--every", "5", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    h = out["history"]
    assert h[-1]["total"] < h[0]["total"] and Image.open(tmp_path / "o.png").size[0] == 96
    assert len(list((tmp_path / "steps").glob("*.png"))) >= 2


@pytest.mark.slow
def test_all_three_tasks_run_through_the_one_engine(trained_bundle, kp_bundle, style_bundle):
    """One engine: the same history columns, checkpoints and logs for every task."""
    from pathlib import Path
    common = {"epoch", "phase", "train_loss", "lr", "img_per_s", "data_wait", "seconds"}
    for b in (pv.load(trained_bundle), kp_bundle, pv.load(style_bundle)):
        rows = [h for h in b.meta["history"] if h["phase"] != "probe"]
        assert rows and all(common <= set(h) for h in rows), b.task
        assert all(0 <= h["data_wait"] <= 1 for h in rows), b.task  # the model's idle share, measured
        run = Path(b.meta["report"]).parent.parent
        assert (run / "checkpoint.json").exists() and (run / "log.csv").exists(), b.task
        assert json.loads((run / "checkpoint.json").read_text())["config"]["task"] == b.task
