"""Training at scale, for real on CPU: `--devices N` (DistributedDataParallel over torchrun's processes, gloo) and
`--batch-augment on` (whole batches augmented with torch).

Both must reach a one-process, per-image run's accuracy: two processes take the same global batches
(`--batch-size` is the global batch), batched augmentation uses the same draws. A run whose process is killed must
come back from its last checkpoint and finish the same bundle.
"""

from __future__ import annotations

import os

import pytest

import pocketvision as pv
from conftest import tiny_classifier  # noqa: F401  (a fixture)
from helpers import one_line_error, run_cli
from pocketvision.errors import PocketVisionError

pytestmark = pytest.mark.shared_data

# small and quick, still well above the majority class (110 of 187 val photos: 0.59) after 4 epochs
RECIPE = ("--arch", "deepdog", "--arch-args", "alpha=0.25", "--scratch", "--size", "64", "--epochs", "4",
          "--device", "cpu", "--no-tensorboard", "--json", "--seed", "0")


def _val_acc(bundle) -> tuple[list[int], float]:
    rows = [r for r in pv.load(bundle).meta["history"] if r["phase"] != "probe"]
    return [r["epoch"] for r in rows], max(r["val_acc"] for r in rows)


@pytest.fixture(scope="module")
def one_process(shared_data, tmp_path_factory):
    """The reference: one process, per-image augmentation -> (best val accuracy, environment without a pixel cache)."""
    tmp = tmp_path_factory.mktemp("one")
    env = {**os.environ, "POCKETVISION_CACHE_DIR": str(tmp / "no-cache")}
    one = run_cli("train", str(shared_data / "hotdog"), *RECIPE, "--out", "one.pvb", cwd=tmp, env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    epochs, acc = _val_acc(tmp / "one.pvb")
    assert epochs == [1, 2, 3, 4] and acc > 0.65, (epochs, acc)
    return acc, env


@pytest.mark.slow
def test_two_processes_match_one_and_resume_after_one_is_killed(shared_data, one_process, tmp_path):
    acc1, env = one_process
    # process 1 dies (SIGKILL, as an out-of-memory kill would) right after epoch 2's checkpoint is on disk
    kill = {**env, "POCKETVISION_INTERRUPT_AFTER_EPOCH": "2", "POCKETVISION_INTERRUPT_RANK": "1",
            "POCKETVISION_INTERRUPT_SIGNAL": "SIGKILL"}
    two = run_cli("train", str(shared_data / "hotdog"), *RECIPE, "--out", "two.pvb", "--devices", "2",
                  "--run-dir", "run2", cwd=tmp_path, env=kill)
    assert two.returncode == 0, two.stderr[-3000:]
    err = " ".join(two.stderr.split())
    assert "process 1 was killed by SIGKILL" in err and "restart 1 of 1" in err, err[-3000:]
    assert "resuming run2 at epoch 3" in err, err[-3000:]
    epochs2, acc2 = _val_acc(tmp_path / "two.pvb")
    assert epochs2 == [1, 2, 3, 4]  # each epoch once: the resumed group redid nothing, skipped nothing
    assert acc2 > 0.65, acc2
    assert abs(acc1 - acc2) <= 0.08, (acc1, acc2)  # the same steps on the same images; BN sees half batches
    assert '"bundle": "two.pvb"' in two.stdout  # rank 0 reported, once
    assert two.stdout.count('"bundle"') == 1


@pytest.mark.slow
def test_batched_augmentation_trains_as_well_as_per_image(shared_data, one_process, tmp_path):
    acc1, env = one_process
    r = run_cli("train", str(shared_data / "hotdog"), *RECIPE, "--out", "b.pvb", "--batch-augment", "on",
                cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    epochs, acc = _val_acc(tmp_path / "b.pvb")
    assert epochs == [1, 2, 3, 4] and acc > 0.65, (epochs, acc)
    assert abs(acc - acc1) <= 0.08, (acc1, acc)


def test_bad_device_counts_and_environments_get_one_line(hotdog_small, shared_data, tmp_path):
    data = str(hotdog_small)
    one_line_error(run_cli("train", data, "--device", "cpu", "--devices", "1000", cwd=tmp_path),
                   "--devices 1000", "CPU cores")
    one_line_error(run_cli("train", data, "--device", "cpu", "--devices", "2", "--batch-size", "33", cwd=tmp_path),
                   "--batch-size 33", "multiple of 2")
    one_line_error(run_cli("train", data, "--device", "cpu", "--devices", "2", "--find-lr", cwd=tmp_path),
                   "--find-lr", "one process")
    # a hand-written launch script that set some of torchrun's variables
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "2"}
    one_line_error(run_cli("train", data, "--device", "cpu", cwd=tmp_path, env=env),
                   "torchrun environment incomplete", "LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT missing")
    with pytest.raises(PocketVisionError, match="needs one process per device"):
        pv.train(data, device="cpu", devices=2, epochs=1, run_dir=tmp_path / "r")
    assert not (tmp_path / "r").exists()  # refused before anything was decoded or written
    # a task that augments per image says so instead of ignoring the flag
    style = str(shared_data / "style" / "styles" / "starry_night.jpg")
    one_line_error(run_cli("train", data, "--task", "stylize", "--style", style, "--device", "cpu",
                           "--batch-augment", "on", cwd=tmp_path), "--batch-augment", "stylizer")
    one_line_error(run_cli("train", data, "--arch", "deepdog", "--scratch", "--augment", "policy=trivial",
                           "--device", "cpu", "--batch-augment", "on", cwd=tmp_path),
                   "--batch-augment on", "policy=trivial", "per-image")


def test_a_bigger_batch_scales_the_default_lr_never_a_given_one(shared_data):
    from pocketvision.pipeline.options import split_options
    from pocketvision.training.schedules import lr_factor
    data = shared_data / "hotdog"
    base = {"arch": "deepdog", "pretrained": False, "device": "cpu"}
    _, cfg, _, _ = split_options(data, base)
    assert lr_factor(cfg) == (1.0, "")  # the recipe as measured
    recipe_lr, recipe_batch = cfg.lr, cfg.batch_size
    _, big, _, _ = split_options(data, {**base, "batch_size": recipe_batch * 8})
    assert big.optimizer == "sgd" and big.lr == recipe_lr and big.lr_reference_batch == recipe_batch
    f, said = lr_factor(big)
    assert f == 8.0 and "linear" in said  # SGD: linear (Goyal et al.)
    _, adam, _, _ = split_options(data, {**base, "optimizer": "adamw", "batch_size": 128})
    assert lr_factor(adam)[0] == pytest.approx(2.0)  # Adam-type: square root of 128 / 32
    _, given, _, _ = split_options(data, {**base, "batch_size": 256, "lr": 0.05})
    assert lr_factor(given) == (1.0, "") and given.lr == 0.05
    with pytest.raises(PocketVisionError, match="--lr-scaling linear with --lr"):
        split_options(data, {**base, "batch_size": 256, "lr": 0.05, "lr_scaling": "linear"})


def test_compile_that_fails_says_so_once_and_trains_uncompiled(hotdog_small, tmp_path, monkeypatch):
    import io

    import torch
    import torch._inductor.config as inductor
    from rich.console import Console

    # a machine without a C++ compiler, for real: inductor cannot build its kernels in the first step
    monkeypatch.setattr(inductor.cpp, "cxx", (None, str(tmp_path / "no-such-g++")))
    torch._dynamo.reset()
    out = io.StringIO()
    b = pv.train(hotdog_small, model=tiny_classifier(), size=32, epochs=2, device="cpu", compile=True,
                 run_dir=tmp_path / "run", progress=False, tensorboard=False, workers=0,
                 console=Console(file=out, width=400))
    torch._dynamo.reset()
    said = out.getvalue()
    assert said.count("--compile: torch.compile failed") == 1 and "InvalidCxxCompiler" in said, said[-2000:]
    assert [r["epoch"] for r in b.meta["history"]] == [1, 2]
