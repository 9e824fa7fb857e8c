"""Style transfer library: perceptual loss, Gatys optimisation on real images, VGG weight files, stylenets.

Small sizes and few iterations keep the file well under a minute on 2 cores; nothing asserts on time.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from pocketvision.errors import ImageDecodeError, PocketVisionError
from pocketvision.models import build_model, check_input_size, count_params, list_models
from pocketvision.models.stylenet import CondInstanceNorm
from pocketvision.models.vgg import VGGFeatures, build_vgg, layer_indices, load_vgg_weights
from pocketvision.tasks.stylize.gatys import stylize
from pocketvision.tasks.stylize.gatys import _fit, _to_yiq
from pocketvision.tasks.stylize.perceptual import PerceptualLoss, build_extractor, gram_matrix, min_side, softmax_transform


@pytest.fixture(scope="module")
def lite0():
    return build_extractor("lite0")


@pytest.fixture(scope="module")
def pair(shared_data):
    d = shared_data / "style"
    return d / "content" / "tubingen.jpg", d / "styles" / "starry_night.jpg"


# -- perceptual loss --------------------------------------------------------------------------------
def test_extractor_is_frozen_and_stops_at_the_deepest_layer(lite0):
    assert not any(p.requires_grad for p in lite0.parameters())
    assert not lite0.training
    lite0.train()  # a parent's .train() must not put ImageNet BN statistics in training mode
    assert not lite0.training
    shallow = build_extractor("lite0", layers=["stem", "block2_expand"])
    assert len(shallow.features) == 3  # stem + blocks 1, 2: nothing deeper is built or run
    x = torch.rand(1, 3, 64, 96) * 255
    out = lite0(x)
    assert set(out) == set(lite0.layers)
    assert out["stem"].shape == (1, 32, 32, 48)


def test_lite0_taps_match_the_plain_network():
    # The extractor opens blocks up and folds BN into convs: its features must still be the network's own.
    from pocketvision.models.efficientnet_lite import EfficientNetLite, load_imagenet_weights
    net = EfficientNetLite()
    load_imagenet_weights(net)
    net.eval()
    ex = build_extractor("lite0", layers=["block4_expand", "block5"], softmax=False)
    x = torch.rand(1, 3, 64, 64) * 255
    with torch.no_grad():
        h = (x - 127) / 128
        h3 = net.features[:4](h)
        ref_expand = net.features[4].block.expand(h3)
        ref5 = net.features[4:6](h3)
        out = ex(x)
    torch.testing.assert_close(out["block4_expand"], ref_expand, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out["block5"], ref5, atol=1e-4, rtol=1e-4)


def test_softmax_transform_and_gram():
    f = torch.randn(2, 4, 5, 6)
    s = softmax_transform(f)
    # a softmax over each image's C*H*W activations, scaled to mean 1
    torch.testing.assert_close(s.mean(dim=(1, 2, 3)), torch.ones(2))
    torch.testing.assert_close(s[0].flatten() / s[0].numel(), torch.softmax(f[0].flatten(), 0))
    g = gram_matrix(f)
    assert g.shape == (2, 4, 4)
    flat = f[1].reshape(4, -1)
    torch.testing.assert_close(g[1], flat @ flat.T / f[1].numel())


def test_perceptual_loss_parts_and_style_mixing(lite0):
    torch.manual_seed(0)
    styles = [torch.rand(1, 3, 64, 64) * 255, torch.rand(1, 3, 80, 64) * 255]  # any sizes
    loss = PerceptualLoss(lite0, styles, tv_weight=1.0)
    content = torch.rand(2, 3, 64, 64) * 255
    out = loss(content.clone().requires_grad_(True), loss.content_features(content))
    assert set(out) == {"total", "content", "style", "tv"}
    torch.testing.assert_close(out["total"], out["content"] + out["style"] + out["tv"])
    assert out["content"].item() == 0.0  # output == content
    g = loss.style_grams()
    mix = loss.style_targets([0.25, 0.75])
    for n in g:
        torch.testing.assert_close(mix[n][0], 0.25 * g[n][0] + 0.75 * g[n][1])
    per_sample = loss.style_targets(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    n0 = next(iter(g))
    torch.testing.assert_close(per_sample[n0], g[n0])
    with pytest.raises(PocketVisionError, match="out of range"):
        loss.style_targets(2)
    with pytest.raises(PocketVisionError, match="Unrecognized layer 'blok4_dw'.*Did you mean"):
        build_extractor("lite0", layers=["blok4_dw"])


def test_min_side(lite0):
    assert min_side(lite0) == 2 * max(lite0.stride(n) for n in lite0.layers)
    assert min_side(build_extractor("vgg19", weights="random", layers=["relu1_1"])) == 2


# -- Gatys on real images ---------------------------------------------------------------------------
@pytest.mark.shared_data
def test_gatys_steps_lower_the_loss_on_real_images(pair, lite0, tmp_path, capsys):
    content, style = pair
    out = tmp_path / "out.png"
    r = stylize(content, style, out=out, size=96, scales=[1.0], iterations=8, extractor=lite0, progress=False,
                intermediates=tmp_path / "steps", every=4)
    first, last = r.history[0]["total"], r.history[-1]["total"]
    assert last < 0.8 * first
    assert r.image.dtype == np.uint8 and r.image.shape == (72, 96, 3)  # tubingen is 4:3
    assert np.array_equal(np.asarray(Image.open(out)), r.image)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # atomic write left no temp file
    assert sorted(p.name for p in (tmp_path / "steps").iterdir())[:2] == ["iter_00004_96x72.png",
                                                                          "iter_00008_96x72.png"]
    assert capsys.readouterr().err == "" and capsys.readouterr().out == ""  # progress=False: silent
    assert r.settings["features"] == "lite0" and r.timings["per_scale"][0]["iterations"] == 8
    assert r.time_to_within(0.01) <= r.history[-1]["seconds"]


@pytest.mark.shared_data
def test_gatys_adam_multiscale_and_noise_init_are_deterministic(pair, lite0):
    content, style = pair
    kw = dict(size=128, scales=[0.5, 1.0], iterations=[3, 2], optimizer="adam", init="noise", seed=3,
              extractor=lite0, progress=False)
    a, b = stylize(content, style, **kw), stylize(content, style, **kw)
    assert np.array_equal(a.image, b.image)
    assert [r["scale"] for r in a.history] == [64] * 3 + [128] * 2
    c = stylize(content, style, **{**kw, "seed": 4})
    assert not np.array_equal(a.image, c.image)


@pytest.mark.shared_data
def test_colour_preservation_keeps_the_content_chroma(pair, lite0):
    content, style = pair
    r = stylize(content, style, size=96, scales=[1.0], iterations=6, preserve_color=True, extractor=lite0,
                progress=False)
    c = np.asarray(_fit(Image.open(content).convert("RGB"), 96))
    yiq_out, yiq_c = _to_yiq(r.image), _to_yiq(c)
    chroma_err = np.abs(yiq_out[..., 1:] - yiq_c[..., 1:])
    assert np.median(chroma_err) < 1.0 and np.percentile(chroma_err, 99) < 6.0  # uint8 rounding, RGB clipping
    assert np.abs(yiq_out[..., 0] - yiq_c[..., 0]).mean() > 1.0  # while the luminance was stylised
    plain = stylize(content, style, size=96, scales=[1.0], iterations=6, extractor=lite0, progress=False)
    assert np.abs(_to_yiq(plain.image)[..., 1:] - yiq_c[..., 1:]).mean() > chroma_err.mean()


@pytest.mark.shared_data
def test_bad_inputs_fail_with_one_line_naming_the_file(pair, lite0, tmp_path):
    content, style = pair
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (20, 40), (200, 10, 10)).save(tiny)
    m = min_side(lite0)
    with pytest.raises(PocketVisionError, match=rf"style image .*tiny\.png is 20x40 px.*at least {m} px"):
        stylize(content, tiny, size=96, extractor=lite0, progress=False)
    notimg = tmp_path / "notes.jpg"
    notimg.write_text("not an image")
    with pytest.raises(ImageDecodeError, match=r"notes\.jpg: not a readable image") as e:
        stylize(notimg, style, size=96, extractor=lite0, progress=False)
    assert "\n" not in str(e.value)
    with pytest.raises(PocketVisionError, match=r"tubingen\.jpg .* at size=40 would be 30 px"):
        stylize(content, style, size=40, extractor=lite0, progress=False)
    with pytest.raises(PocketVisionError, match="Unrecognized optimizer='sgd'"):
        stylize(content, style, optimizer="sgd", extractor=lite0, progress=False)


# -- VGG weights files ------------------------------------------------------------------------------
def _vgg_file(arch: str, path, fmt: str = "pth"):
    torch.manual_seed(0)
    m = VGGFeatures(arch)
    sd = {f"features.{k}": v for k, v in m.features.state_dict().items()}
    sd["classifier.0.weight"] = torch.zeros(4, 4)  # torchvision files carry the classifier: ignored
    if fmt == "pth":
        torch.save(sd, path)
    else:
        from safetensors.torch import save_file
        save_file(sd, str(path))
    return sd


def test_vgg_layout_matches_torchvision_indices():
    idx = layer_indices("vgg19")
    assert (idx["relu1_1"], idx["relu2_1"], idx["relu3_1"], idx["relu4_1"], idx["relu4_2"], idx["relu5_1"]) == \
        (1, 6, 11, 20, 22, 29)
    keys = list(VGGFeatures("vgg16").state_dict())
    assert keys[:4] == ["features.0.weight", "features.0.bias", "features.2.weight", "features.2.bias"]
    assert keys[-1] == "features.28.bias" and len(keys) == 26


def test_vgg16_file_given_as_vgg19_lists_the_differing_keys(tmp_path):
    path = tmp_path / "vgg16-random.pth"
    _vgg_file("vgg16", path)
    with pytest.raises(PocketVisionError) as e:
        load_vgg_weights(VGGFeatures("vgg19"), path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    assert "12 missing (features.16.bias, features.16.weight" in msg
    assert "6 unexpected (features.17.bias" in msg
    assert "shape mismatches" in msg and "features.19.weight (512, 512, 3, 3) vs (512, 256, 3, 3)" in msg
    assert "looks like a vgg16 file" in msg


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_correct_layout_weights_load(tmp_path, fmt):
    path = tmp_path / f"vgg16.{fmt}"
    sd = _vgg_file("vgg16", path, fmt)
    m = load_vgg_weights(VGGFeatures("vgg16"), path)
    torch.testing.assert_close(m.features[28].weight, sd["features.28.weight"])
    ex = build_extractor("vgg16", weights=path, layers=["relu1_2", "relu3_3"])
    assert ex(torch.rand(1, 3, 32, 32) * 255)["relu3_3"].shape == (1, 256, 8, 8)


def test_vgg_weight_file_errors(tmp_path, monkeypatch):
    with pytest.raises(PocketVisionError, match=r"nope\.pth not found.*curl -LO https://download\.pytorch\.org/"
                                                r"models/vgg19-dcbb9e9d\.pth"):
        load_vgg_weights(VGGFeatures("vgg19"), tmp_path / "nope.pth")
    jpg = tmp_path / "photo.pth"
    Image.new("RGB", (8, 8)).save(jpg, format="JPEG")
    with pytest.raises(PocketVisionError, match=r"photo\.pth is not a PyTorch weights file"):
        load_vgg_weights(VGGFeatures("vgg19"), jpg)
    pickled = tmp_path / "module.pth"
    torch.save(nn.Conv2d(1, 1, 1), pickled)  # a pickled module: refused, never unpickled
    with pytest.raises(PocketVisionError, match=r"module\.pth holds pickled Python objects"):
        load_vgg_weights(VGGFeatures("vgg19"), pickled)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache: nothing to find without a path
    with pytest.raises(PocketVisionError, match=r"vgg16 needs its ImageNet weights.*curl -LO .*vgg16-397923af\.pth"):
        build_vgg("vgg16", weights=None)


# -- feed-forward stylizers -------------------------------------------------------------------------
def test_instance_norm_from_primitives_equals_torch():
    torch.manual_seed(0)
    ref = nn.InstanceNorm2d(16, affine=True)
    nn.init.normal_(ref.weight)
    nn.init.normal_(ref.bias)
    ours = CondInstanceNorm(16)
    with torch.no_grad():
        ours.weight[0] = ref.weight
        ours.bias[0] = ref.bias
    x = torch.randn(3, 16, 9, 13) * 5 + 3
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["johnson", "stylenet_mobile"])
def test_stylenet_shape_range_and_registry(name):
    torch.manual_seed(0)
    m = build_model(name).eval()
    x = torch.rand(2, 3, 64, 96) * 2 - 1  # contract-normalised
    with torch.no_grad():
        y = m(x)
    assert y.shape == (2, 3, 64, 96)
    assert float(y.min()) >= 0 and float(y.max()) <= 255
    assert name in list_models(kind="image")
    check_input_size(name, (64, 96))
    with pytest.raises(PocketVisionError, match="multiple of 4"):
        check_input_size(name, (66, 96))


def test_mobile_stylenet_fits_the_size_budget():
    n = count_params(build_model("stylenet_mobile"))
    assert n <= 500_000  # <= 0.5 MB as int8 weights
    assert n < 100_000  # ... with room to spare
    assert count_params(build_model("johnson")) > 1_500_000


def test_conditional_instance_norm_picks_and_blends_styles():
    torch.manual_seed(0)
    m = build_model({"name": "stylenet_mobile", "args": {"width": 16, "blocks": 1, "num_styles": 2}}).eval()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, CondInstanceNorm):
                mod.weight.normal_(1.0, 0.5)
                mod.bias.normal_(0.0, 0.5)
        m.head[-1].weight.normal_(0.0, 0.3)  # the head starts near zero (mid-grey output): wake it up
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        y0, y_none = m(x, torch.tensor([[1.0, 0.0]])), m(x)
        y1, mix = m(x, torch.tensor([[0.0, 1.0]])), m(x, torch.tensor([[0.5, 0.5]]))
        torch.testing.assert_close(y0, y_none)
        assert (y0 - y1).abs().mean() > 1.0  # the two styles differ
        # a blend = the net whose (gamma, beta) are the blended ones
        for mod in m.modules():
            if isinstance(mod, CondInstanceNorm):
                mod.weight[0] = mod.weight.mean(0)
                mod.bias[0] = mod.bias.mean(0)
        torch.testing.assert_close(mix, m(x), atol=1e-4, rtol=1e-4)
        batch = m(x.repeat(2, 1, 1, 1), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        torch.testing.assert_close(batch[1:], y1, atol=1e-4, rtol=1e-4)


def test_mobile_stylenet_exports_to_onnx_with_dynamic_size(tmp_path):
    import onnxruntime as ort
    torch.manual_seed(0)
    m = build_model({"name": "stylenet_mobile", "args": {"width": 16, "blocks": 1}}).eval()
    h, w = torch.export.Dim("h", min=4, max=2048), torch.export.Dim("w", min=4, max=2048)
    path = tmp_path / "mobile.onnx"
    torch.onnx.export(m, (torch.rand(1, 3, 64, 64),), path, dynamo=True, opset_version=18,
                      dynamic_shapes=({2: h, 3: w},), verbose=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in __import__("onnx").load(str(path)).graph.node}
    assert "InstanceNormalization" not in ops and "Resize" in ops
    for hw in ((64, 64), (96, 128)):
        x = torch.rand(1, 3, *hw) * 2 - 1
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        with torch.no_grad():
            np.testing.assert_allclose(got, m(x).numpy(), atol=1e-3)


def test_mobile_stylenet_skip_passes_the_photo_through_a_zero_head():
    """skip=True: the output starts as the input photo (logit-space skip), so a zero head returns it."""
    net = build_model({"name": "stylenet_mobile", "args": {"skip": True}}).eval()
    last = net.head[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
        px = torch.randint(3, 253, (1, 3, 32, 32)).float()  # inside the clamp's 0.1%-99.9% range
        y = net((px - 127.5) / 127.5)
    assert torch.allclose(y, px, atol=1e-2)
    plain = build_model({"name": "stylenet_mobile", "args": {}}).eval()
    plain.load_state_dict(net.state_dict())
    with torch.no_grad():
        assert torch.allclose(plain((px - 127.5) / 127.5), torch.full_like(px, 127.5), atol=1e-3)  # no skip: grey
