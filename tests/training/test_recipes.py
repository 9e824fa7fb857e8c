"""Training recipes: the defaults are the best known recipe for the architecture, data size and device."""

from __future__ import annotations

import io

import numpy as np
import pytest

import pocketvision as pv
from pocketvision.pipeline.options import split_options

pytestmark = [pytest.mark.shared_data]

# The flags the README used to ask for (the measured recipe: 90.4-90.9% val on 5 of 5 seeds, benchmarks/RESULTS.md).
README_DEEPDOG = dict(arch="deepdog", pretrained=False, arch_args={"alpha": 0.5, "dw_bn": True}, size=128,
                      epochs=120, progressive=96, progressive_until=0.9, optimizer="sgd", lr=0.1,
                      weight_decay=0.0005, augment={"scale": [0.4, 1]}, ema=0.995)


def _cfg(data, **options):
    task, cfg, opts, record = split_options(data, options)
    return cfg.model_dump(exclude={"recipe"}), opts.model_dump(), record


def test_deepdog_from_scratch_with_no_flags_is_the_measured_recipe(shared_data):
    hotdog = shared_data / "hotdog"
    cfg, opts, record = _cfg(hotdog, arch="deepdog", pretrained=False)
    readme, readme_opts, _ = _cfg(hotdog, **README_DEEPDOG, recipe=False)
    assert cfg == readme and opts == readme_opts  # the same run, bit for bit: the 12 flags are the default now
    assert record["name"] == "scratch-sgd-ema-progressive" and not record["overridden"]
    assert "deepdog, from scratch, 1,101 images, cpu" in record["line"] and "epochs=120" in record["line"]
    # --no-recipe: the plain engine defaults (what the README called "the low 80s")
    plain, _, none = _cfg(hotdog, arch="deepdog", pretrained=False, recipe=False)
    assert none is None and plain["optimizer"] == "adamw" and plain["epochs"] == 8 and plain["ema"] == 0.0


def test_a_flag_wins_and_the_fields_that_go_with_it_stay_with_it(shared_data):
    hotdog = shared_data / "hotdog"
    cfg, _, record = _cfg(hotdog, arch="deepdog", pretrained=False, lr=3e-3)
    # SGD's 0.1 is not laid under the user's learning rate: the optimiser group keeps the engine's AdamW
    assert cfg["lr"] == 3e-3 and cfg["optimizer"] == "adamw" and cfg["weight_decay"] == 0.02
    assert cfg["ema"] == 0.995 and cfg["epochs"] == 120  # the rest of the recipe still applies
    assert record["overridden"] == ["lr"] and record["left_with_yours"] == ["optimizer", "weight_decay"]
    assert "yours: lr (so optimizer, weight_decay keep the engine default)" in record["line"]
    # a size of the user's own: progressive resizing (chosen for 128 px) stays off
    cfg, _, _ = _cfg(hotdog, arch="deepdog", pretrained=False, size=64)
    assert cfg["size"] == 64 and cfg["progressive"] is None
    # arch_args and augment merge key by key; the user's keys win
    cfg, _, record = _cfg(hotdog, arch="deepdog", pretrained=False, arch_args={"alpha": 1.0},
                          augment={"hflip": 0.0})
    assert cfg["arch_args"] == {"alpha": 1.0, "dw_bn": True} and cfg["augment"] == {"scale": [0.4, 1.0], "hflip": 0.0}
    assert record["overridden"] == ["arch_args.alpha"]


def test_a_searched_network_gets_progressive_resizing_from_its_own_side(shared_data):
    """`train --arch searched:arch.json --scratch` trains as the search's final stage did: deepdog's schedule, the
    start at 3/4 of the side the architecture file (or the user) gives; a --progressive of the user's own wins."""
    from pocketvision.search.space import random_candidate
    args = random_candidate(np.random.default_rng(0))["arch"]["args"]
    hotdog = shared_data / "hotdog"
    for side, start in ((128, 96), (160, 112), (64, 48)):
        cfg, _, record = _cfg(hotdog, arch="searched", arch_args=args, size=side, pretrained=False)
        assert (cfg["size"], cfg["progressive"], cfg["progressive_until"]) == (side, start, 0.9)
        assert record["name"] == "scratch-sgd-ema-progressive" and not record["overridden"]
        assert cfg["optimizer"] == "sgd" and cfg["epochs"] == 120
    cfg, _, record = _cfg(hotdog, arch="searched", arch_args=args, size=128, progressive=64, pretrained=False)
    assert cfg["progressive"] == 64 and record["overridden"] == ["progressive"]


def test_pretrained_default_and_keypoints_name_their_recipe(shared_data):
    cfg, _, record = _cfg(shared_data / "hotdog")
    plain, _, _ = _cfg(shared_data / "hotdog", recipe=False)
    assert record["name"] == "pretrained-probe-top" and cfg == plain  # the engine defaults already are it
    cfg, _, record = _cfg(shared_data / "faces5")
    assert record["name"] == "keypoints-cosine-40" and cfg["task"] == "keypoints"
    assert (cfg["epochs"], cfg["schedule"], cfg["batch_size"], cfg["lr"]) == (40, "cosine", 64, 3e-3)


def test_a_stylizer_trains_for_a_number_of_crops_not_of_epochs(shared_data, tmp_path):
    """The stylizer's recipe is 13,212 crops (12 epochs of the 1,101 hotdog photos): a folder of 100 photos trains as
    long, not for 8 epochs of 100 (an untrained network); a big folder gets fewer epochs; --epochs wins."""
    from pocketvision.tasks.stylize.photos import scan_photos
    style = str(shared_data / "style" / "styles" / "starry_night.jpg")
    cfg, _, record = _cfg(shared_data / "hotdog", task="stylize", style=style)
    assert record["name"] == "stylize-13k-crops" and (cfg["epochs"], cfg["lr"]) == (12, 2e-3)
    assert cfg["channels_last"] == "off"
    assert "stylenet_mobile, from scratch, 1,101 images, cpu" in record["line"]
    small = tmp_path / "photos"
    small.mkdir()
    for f in sorted((shared_data / "hotdog" / "train" / "hotdog").glob("*.jpg"))[:100]:
        (small / f.name).symlink_to(f)
    n = len(scan_photos(small, val_fraction=0.02).train)
    cfg, _, _ = _cfg(small, task="stylize", style=style)
    assert 90 <= n < 100 and cfg["epochs"] == -(-13212 // n) and cfg["epochs"] * n >= 13212
    cfg, _, record = _cfg(small, task="stylize", style=style, epochs=3)
    assert cfg["epochs"] == 3 and record["overridden"] == ["epochs"]


def test_the_recipe_is_printed_at_the_start_and_stored_in_the_bundle(hotdog_small, tmp_path):
    from rich.console import Console
    out = io.StringIO()
    b = pv.train(hotdog_small, out=tmp_path / "r.pvb", arch="deepdog", arch_args={"alpha": 0.25}, size=64, epochs=1,
                 run_dir=tmp_path / "run", progress=False, tensorboard=False, workers=0,
                 console=Console(file=out, width=300))
    assert "recipe scratch-sgd-ema-progressive (deepdog, from scratch, 240 images, cpu)" in out.getvalue()
    r = pv.load(b.path).meta["recipe"]
    assert r["name"] == "scratch-sgd-ema-progressive" and r["applied"]["optimizer"] == "sgd"
    assert r["overridden"] == ["arch_args.alpha", "epochs", "size"] and r["left_with_yours"] == ["progressive", "progressive_until"]
    assert b.meta["train_config"]["optimizer"] == "sgd" and b.meta["train_config"]["ema"] == 0.995
