from __future__ import annotations

import pytest

from pocketvision.errors import PocketVisionError
from pocketvision.training.schedules import make_schedule


@pytest.mark.parametrize("name", ["onecycle", "cosine", "triangular", "triangular2", "exp_range", "constant"])
def test_schedules_stay_in_range(name):
    f = make_schedule(name, total_steps=200, steps_per_epoch=20, cycle_epochs=1)
    vals = [f(s) for s in range(200)]
    assert all(0 <= v <= 1.0 + 1e-9 for v in vals)
    assert max(vals) > 0.9


def test_cyclical_shapes():
    tri = make_schedule("triangular", 400, 10, cycle_epochs=1)  # half cycle = 10 steps
    assert tri(0) == pytest.approx(0.1) and tri(10) == pytest.approx(1.0) and tri(20) == pytest.approx(0.1)
    tri2 = make_schedule("triangular2", 400, 10, cycle_epochs=1)
    assert tri2(30) == pytest.approx(0.1 + 0.9 / 2)  # second peak halved
    exp = make_schedule("exp_range", 400, 10, cycle_epochs=1)
    assert exp(210) < tri(210)
    one = make_schedule("onecycle", 100, 10)
    assert one(0) < 0.1 and one(25) == pytest.approx(1.0) and one(99) < 0.01


def test_unknown_schedule():
    with pytest.raises(PocketVisionError, match="Supported"):
        make_schedule("zigzag", 10, 1)


def test_progressive_sizes_grow_then_hold_the_model_size():
    from pocketvision.training.schedules import progressive_sizes
    s = progressive_sizes(96, (128, 128), 120)
    sides = [s[e][0] for e in range(1, 121)]
    assert sides[0] == 96 and sides == sorted(sides) and all(v % 16 == 0 for v in sides)
    assert sides[90:] == [128] * 30  # the last quarter at the exported size (BatchNorm statistics)
    assert set(sides[:90]) == {96, 112}
    # cost relative to 120 full-size epochs: about 3/4
    assert 0.7 < sum(v * v for v in sides) / (120 * 128 * 128) < 0.8
    wide = progressive_sizes(64, (96, 160), 8)
    assert wide[1][1] == 64 and wide[8] == (96, 160)
    with pytest.raises(ValueError, match="below the model's 128 px"):
        progressive_sizes(128, (128, 128), 10)
    late = [progressive_sizes(96, (128, 128), 120, until=0.9)[e][0] for e in range(1, 121)]
    assert late[108:] == [128] * 12 and late[107] == 112  # --progressive-until: a shorter full-size tail


def test_ema_ramps_its_decay_copies_bn_counts_and_resumes(tmp_path):
    """--ema: the average follows min(decay, (1+n)/(10+n)) per update (so the random start fades fast), BN's integer
    counter is the model's, and a resumed run continues from the saved average and count."""
    import torch
    from torch import nn

    from pocketvision.training.engine import make_ema as _make_ema, save_ema as _save_ema
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    ema = _make_ema(model, 0.9, None)
    expected = model[0].weight.detach().clone()
    for n in range(6):
        with torch.no_grad():
            model[0].weight.add_(1.0)
        model(torch.randn(2, 1, 3, 3))  # train mode: BN counts a batch
        ema.update_parameters(model)
        d = min(0.9, (1 + n) / (10 + n))
        expected = model[0].weight.detach().clone() if n == 0 else expected + (model[0].weight - expected) * (1 - d)
    assert torch.allclose(ema.module[0].weight, expected, atol=1e-6)
    assert int(ema.module[1].num_batches_tracked) == int(model[1].num_batches_tracked) == 6
    _save_ema(tmp_path, ema)
    again = _make_ema(model, 0.9, tmp_path)
    assert int(again.n_averaged) == 6 and torch.equal(again.module[0].weight, ema.module[0].weight)
