"""Model registry and families: shapes, published sizes, DeepDog's structure, errors, MAC counting,
and the pretrained EfficientNet-Lite0 on real hotdog photos."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pocketvision.core.contract import Contract
from pocketvision.errors import PocketVisionError
from pocketvision.models import (build_model, check_input_size, count_macs, count_params, list_models,
                                 model_entry, model_info)
from pocketvision.models.deepdog import DEEPDOG_WIDTHS, SeparableConv

SMALL = {"deepdog": {"alpha": 0.25}, "mobilenet_v1": {"alpha": 0.25}, "mobilenet_v2": {"width_mult": 0.35},
         "efficientnet_lite0": {}, "alexnet": {"width": 0.25, "fc": 64}, "searched": {}}


def data_root() -> Path:
    root = Path(os.environ.get("POCKETVISION_DATA") or Path(__file__).resolve().parents[3] / "shared" / "data")
    if not root.is_dir():  # fail, never skip: a silently skipped accuracy test proves nothing
        pytest.fail(f"shared data not found at {root}; set POCKETVISION_DATA to the data folder")
    return root


def test_registry_lists_all_families():
    assert list_models(kind="classifier") == ["alexnet", "deepdog", "efficientnet_lite0", "efficientnet_lite1",
                                              "efficientnet_lite2", "mobilenet_v1", "mobilenet_v2", "searched"]
    assert list_models(kind="image") == ["johnson", "stylenet_mobile"]
    assert list_models("mobilenet*") == ["mobilenet_v1", "mobilenet_v2"]
    assert list_models(pretrained=True) == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    assert Contract.from_dict(model_entry("deepdog").default_contract).mean == (127.5,) * 3


@pytest.mark.parametrize("name", sorted(SMALL))
def test_common_surface(name):
    torch.manual_seed(0)
    m = build_model({"name": name, "args": {"num_classes": 5, **SMALL[name]}}).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        f = m.forward_features(x)
        assert f.shape == (2, m.num_features)
        assert torch.allclose(m(x), m.forward_head(f))
        assert m(x).shape == (2, 5)
    head, backbone = list(m.head_parameters()), list(m.backbone_parameters())
    assert {id(p) for p in head}.isdisjoint(id(p) for p in backbone)
    assert len(head) + len(backbone) == len(list(m.parameters()))
    m.reset_classifier(3)
    assert m(x).shape == (2, 3)
    assert m.spec == {"name": name, "args": {**model_entry(name).default_args, "num_classes": 5, **SMALL[name]}}


def test_published_parameter_and_mac_counts():
    # Published figures: MobileNetV1 4.2M / 569M MACs, MobileNetV2 3.5M / 300M, EfficientNet-Lite0 4.65M.
    expected = {"mobilenet_v1": (4_231_976, 569e6), "mobilenet_v2": (3_504_872, 300e6),
                "efficientnet_lite0": (4_652_008, 390e6)}
    for name, (params, macs) in expected.items():
        info = model_info(name, 224)
        assert info["params"] == params, name
        assert abs(info["macs"] - macs) / macs < 0.02, (name, info["macs"])
    # DeepDog from its definition: stem, 13 x (3x3 depthwise + 1x1 pointwise + BN), dense to 2 classes.
    w = (32, *DEEPDOG_WIDTHS)
    n = 27 * 32 + 2 * 32 + sum(a * 9 + a * b + 2 * b for a, b in zip(w[:-1], w[1:])) + 1024 * 2 + 2
    assert count_params(build_model("deepdog")) == n


@pytest.mark.parametrize("alpha,widths", [
    (1.0, [32, 32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024]),
    (0.5, [16, 16, 32, 64, 64, 128, 128, 256, 256, 256, 256, 256, 256, 512])])
def test_deepdog_structure(alpha, widths):
    m = build_model({"name": "deepdog", "args": {"alpha": alpha}})
    stem, blocks = m.features[0], list(m.features[1:])
    assert len(blocks) == 13 and all(isinstance(b, SeparableConv) for b in blocks)
    assert stem.conv.stride == (2, 2) and stem.conv.kernel_size == (3, 3) and isinstance(stem.act, nn.ELU)
    assert [stem.conv.out_channels] + [b.pw.conv.out_channels for b in blocks] == widths
    assert [i + 1 for i, b in enumerate(blocks) if b.dw.stride == (2, 2)] == [2, 4, 6, 12]
    for b in blocks:  # published: bare depthwise -> pointwise + BN + ELU, no biases before BN
        assert isinstance(b.dw, nn.Conv2d) and b.dw.groups == b.dw.in_channels and b.dw.bias is None
        assert isinstance(b.pw.bn, nn.BatchNorm2d) and isinstance(b.pw.act, nn.ELU) and b.pw.conv.bias is None
    assert m.num_features == widths[-1]
    alt = build_model({"name": "deepdog", "args": {"alpha": alpha, "dw_bn": True, "act": "relu"}})
    assert isinstance(alt.features[1].dw.bn, nn.BatchNorm2d) and isinstance(alt.features[1].dw.act, nn.ReLU)


def test_unknown_arch_lists_names():
    listed = r"arch='deepdgo'.*deepdog, efficientnet_lite0.*Did you mean \"deepdog\""
    with pytest.raises(PocketVisionError, match=listed):
        build_model({"name": "deepdgo", "args": {}})


def test_bad_args_are_named_with_valid_options():
    with pytest.raises(PocketVisionError, match=r"'alpah' for model deepdog\. Valid arguments: num_classes, alpha"):
        build_model({"name": "deepdog", "args": {"alpah": 0.5}})
    with pytest.raises(PocketVisionError, match=r"'alpha' argument of deepdog must be a number\. Got 'big'"):
        build_model({"name": "deepdog", "args": {"alpha": "big"}})
    with pytest.raises(PocketVisionError, match=r"'alpha' argument of deepdog must be in the range"):
        build_model({"name": "deepdog", "args": {"alpha": -1.0}})
    with pytest.raises(PocketVisionError, match=r"act='gelu'.*elu, hswish, relu, relu6"):
        build_model({"name": "deepdog", "args": {"act": "gelu"}})
    with pytest.raises(PocketVisionError, match=r"'num_classes' argument of mobilenet_v2 must be an integer"):
        build_model({"name": "mobilenet_v2", "args": {"num_classes": True}})
    with pytest.raises(PocketVisionError, match="No pretrained weights for deepdog"):
        build_model("deepdog", pretrained=True)
    with pytest.raises(PocketVisionError, match="Valid keys: name, args"):
        build_model({"name": "deepdog", "arg": {}})


def test_input_size_checks():
    check_input_size("deepdog", (32, 48))
    with pytest.raises(PocketVisionError, match=r"deepdog cannot take input size 16x224: .*at least 32"):
        check_input_size("deepdog", (16, 224))
    with pytest.raises(PocketVisionError, match=r"multiple of 32"):
        check_input_size("efficientnet_lite0", (200, 224))
    check_input_size("efficientnet_lite0", 256)


def test_mac_counter_on_known_layers():
    # 8 outputs x 5x5 positions x (4 inputs x 3x3) ; groups=2 halves it ; depthwise = 9 per output ; linear.
    assert count_macs(nn.Conv2d(4, 8, 3, padding=1), (5, 5), in_channels=4) == 8 * 25 * 4 * 9
    assert count_macs(nn.Conv2d(4, 8, 3, padding=1, groups=2), (5, 5), in_channels=4) == 8 * 25 * 2 * 9
    assert count_macs(nn.Conv2d(3, 3, 3, stride=2, padding=1, groups=3), (6, 6)) == 3 * 9 * 9
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Flatten(), nn.Linear(4 * 4, 10))
    assert count_macs(net, (2, 2)) == 4 * 4 * 3 + 16 * 10


def test_fx_trace_and_conv_bn_fusion():
    from torch.fx.experimental.optimization import fuse
    m = build_model({"name": "deepdog", "args": {"alpha": 0.25, "dw_bn": True}}).eval()
    x = torch.randn(1, 3, 64, 64)
    fused = fuse(m)
    assert not any(isinstance(mod, nn.BatchNorm2d) for mod in fused.modules())
    with torch.no_grad():
        assert torch.allclose(fused(x), m(x), atol=1e-5)


def test_pretrained_new_head_keeps_backbone():
    full = build_model("efficientnet_lite0", pretrained=True)
    tl = build_model({"name": "efficientnet_lite0", "args": {"num_classes": 2}}, pretrained=True)
    assert tl.classifier.out_features == 2
    assert torch.equal(tl.features[0].conv.weight, full.features[0].conv.weight)
    assert tl.features[0].bn.eps == 1e-3 and tl.features[0].bn.momentum == 0.01


@pytest.mark.shared_data
def test_pretrained_lite0_finds_hotdogs_in_real_photos():
    files = sorted((data_root() / "hotdog" / "val" / "hotdog").glob("*.jpg"))
    assert len(files) >= 50, f"expected the 77 val hotdog photos, found {len(files)}"
    name = "efficientnet_lite0"
    contract = Contract.from_dict(model_entry(name).default_contract)
    model = build_model(name, pretrained=True).eval()
    x = torch.from_numpy(contract.normalize(np.stack([contract.load(f) for f in files])))
    with torch.no_grad():
        top5 = model(x).topk(5, dim=1).indices
    rate = (top5 == 934).any(dim=1).float().mean().item()  # ImageNet 934 = hotdog
    assert rate >= 0.90, f"hotdog in top-5 for only {rate:.1%} of photos (expected ~98.7%)"


@pytest.mark.shared_data
@pytest.mark.parametrize("name, params", [("efficientnet_lite1", 5_416_680), ("efficientnet_lite2", 6_092_072)])
def test_larger_lite_weights_load_and_know_hot_dogs(name, params):
    """Lite1/Lite2: the same key layout, more blocks and (Lite2) wider stages; their packages' weights fill every
    tensor, and at their own input side they name the val hot dogs."""
    model = build_model(name, pretrained=True).eval()
    assert count_params(model) == params
    files = sorted((data_root() / "hotdog" / "val" / "hotdog").glob("*.jpg"))[:32]
    contract = Contract.from_dict(model_entry(name).default_contract)
    assert contract.size == (256, 256)  # the multiple of 32 nearest their own 240 and 260
    x = torch.from_numpy(contract.normalize(np.stack([contract.load(f) for f in files])))
    with torch.no_grad():
        rate = (model(x).topk(5, dim=1).indices == 934).any(dim=1).float().mean().item()
    assert rate >= 0.9, f"{name}: hotdog in top-5 for {rate:.1%} of 32 val hot dogs"


def test_imagenet_head_kept_through_a_label_map():
    """The mapped head reads the pretrained logits: its class score is the log-sum-exp of the class's categories (the
    rest take every other one), the last Linear starts as the identity, and the spec rebuilds it exactly."""
    from pocketvision.models.imagenet_head import ImageNetClassMap
    full = build_model("efficientnet_lite0", pretrained=True).eval()
    spec = {"name": "efficientnet_lite0", "args": {"num_classes": 2, "imagenet_classes": [[934], "rest"]}}
    mapped = build_model(spec, pretrained=True).eval()
    assert isinstance(mapped.classifier, ImageNetClassMap) and mapped.num_classes == 2
    x = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        z, out = full(x), mapped(x)
    others = torch.cat([z[:, :934], z[:, 935:]], 1)
    assert torch.allclose(out[:, 0], z[:, 934], atol=1e-4)
    assert torch.allclose(out[:, 1], torch.logsumexp(others, 1), atol=1e-4)
    # softmax over the two = ImageNet's own P(hot dog)
    assert torch.allclose(out.softmax(1)[:, 0], z.softmax(1)[:, 934], atol=1e-5)
    rebuilt = build_model(spec)
    rebuilt.load_state_dict(mapped.state_dict())
    with torch.no_grad():
        assert torch.allclose(rebuilt.eval()(x), out)
    assert [n for n, m in mapped.named_modules() if isinstance(m, nn.Linear)][-1] == "classifier.out"
    with pytest.raises(PocketVisionError, match="imagenet_classes"):
        build_model({"name": "efficientnet_lite0", "args": {"num_classes": 2, "imagenet_classes": ["rest", "rest"]}})
    with pytest.raises(PocketVisionError, match="imagenet_classes"):
        build_model({"name": "efficientnet_lite0", "args": {"num_classes": 2, "imagenet_classes": [[934]]}})
    with pytest.raises(PocketVisionError, match=r"imagenet_classes\[0\]"):
        build_model({"name": "efficientnet_lite0", "args": {"num_classes": 2, "imagenet_classes": [[1000], "rest"]}})


def test_classes_anchor_where_their_photos_fall():
    from pocketvision.models.imagenet_head import REST, anchor_classes
    # class 0: 90% "hot dog", a few cheeseburgers (too few to anchor); class 1: spread over many categories
    top1 = np.array([934] * 90 + [933] * 4 + [1, 2] * 3 + list(range(100, 200)))
    y = np.array([0] * 100 + [1] * 100)
    a = anchor_classes(top1, y, 2)
    assert a.classes == [[934], REST] and a.usable and a.coverage[0] == pytest.approx(0.9)
    # a category the other class shares (precision < 0.8) does not anchor; two loose classes -> no map at all
    top1 = np.array([934] * 60 + [5] * 40 + [934] * 40 + list(range(100, 160)))
    a = anchor_classes(top1, y, 2)
    assert a.classes == [None, None] and not a.usable and "ImageNet categories" in a.reasons[0]
    # three classes, all anchored: a closed set, nothing is "the rest"
    top1 = np.array([1] * 10 + [2] * 10 + [3, 4] * 5)
    a = anchor_classes(top1, np.repeat([0, 1, 2], 10), 3)
    assert a.classes == [[1], [2], [3, 4]]
