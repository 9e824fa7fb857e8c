"""The CUDA training path: mixed precision, channels_last, pinned memory, and a bundle that comes back to the CPU.

CI has no GPU, so `.ci/run` deselects the `cuda` marker; run these on a GPU machine with
``python -m pytest -m cuda tests/training/test_cuda.py``. Without CUDA they fail loudly rather than skip.
"""

from __future__ import annotations

import numpy as np
import pytest

import pocketvision as pv

pytestmark = [pytest.mark.cuda, pytest.mark.shared_data, pytest.mark.slow]


@pytest.fixture(scope="module", autouse=True)
def cuda_device():
    import torch
    if not torch.cuda.is_available():
        pytest.fail("tests marked `cuda` need a CUDA GPU (CI deselects them with -m 'not cuda')")


def _bundle_tensors_on_cpu(b) -> None:
    import torch
    for name, t in b.model.state_dict().items():
        assert isinstance(t, torch.Tensor) and t.device.type == "cpu", name


def _pixels(size: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (4, size, size, 3), dtype=np.uint8)


def test_from_scratch_on_cuda_with_amp_and_channels_last(hotdog_small, tmp_path):
    b = pv.train(hotdog_small, out=tmp_path / "dd.pvb", arch="deepdog", arch_args={"alpha": 0.25}, size=96,
                 epochs=8, lr=3e-3, device="cuda", run_dir=tmp_path / "run", progress=False, tensorboard=False,
                 workers=2)
    cfg = b.meta["train_config"]
    assert cfg["device"] == "cuda" and cfg["amp"] == "auto" and cfg["channels_last"] == "auto"
    assert b.metrics["accuracy"] > 0.6, b.metrics  # chance is 0.5
    _bundle_tensors_on_cpu(b)
    # the saved bundle reloads with no GPU in the picture and exports to an ONNX file that matches it
    again = pv.load(tmp_path / "dd.pvb")
    np.testing.assert_allclose(again.predict_pixels(_pixels(96)), b.predict_pixels(_pixels(96)), atol=1e-5)
    v = again.export(tmp_path / "dd.onnx", data=hotdog_small).verification
    assert v["passed"] and v["n"] == 80 and v["max_abs_diff"] < 1e-4 and v["top1_agreement"] == 1.0, v


def test_pretrained_full_finetune_on_cuda(hotdog_small, tmp_path):
    """`--finetune full` on CUDA: every layer trains on augmented pixels in bf16 autocast, after the linear probe."""
    b = pv.train(hotdog_small, out=tmp_path / "eff.pvb", arch="efficientnet_lite0", size=160, epochs=3,
                 finetune="full", device="cuda", run_dir=tmp_path / "run", progress=False, tensorboard=False,
                 workers=4)
    phases = [h["phase"] for h in b.meta["history"]]
    assert phases[0] == "probe" and "top" not in phases, phases
    assert b.metrics["accuracy"] >= 0.9, b.metrics
    _bundle_tensors_on_cpu(b)


def test_keypoints_train_on_cuda(faces_small, tmp_path):
    """The same run as conftest's CPU `kp_bundle` (suspect labels left out, 5 epochs), on CUDA, same bar."""
    from pocketvision.tasks.keypoints.annotations import load_keypoints, read_exclude
    from pocketvision.tasks.keypoints.check import suspect_labels
    from pocketvision.tasks.keypoints.metrics import keypoint_metrics
    ks = load_keypoints(faces_small)
    suspects = tmp_path / "suspects.txt"
    suspects.write_text("\n".join(x["image"] for x in suspect_labels(ks.train) + suspect_labels(ks.val)))
    b = pv.train(faces_small, out=tmp_path / "kp.pvb", arch="deepdog", arch_args={"alpha": 0.5}, head="heatmap",
                 epochs=5, lr=3e-3, batch_size=64, weight_decay=1e-4, device="cuda", run_dir=tmp_path / "run",
                 progress=False, tensorboard=False, workers=4, exclude=str(suspects))
    _bundle_tensors_on_cpu(b)
    kept = load_keypoints(faces_small, exclude=read_exclude(suspects))
    mean = np.stack([s.points for s in kept.train]).mean(0)
    gt = np.stack([s.points for s in kept.val])
    baseline = keypoint_metrics(gt, np.repeat(mean[None], len(gt), 0), b.labels)["nme"]
    assert b.metrics["nme"] < 0.75 * baseline, (b.metrics["nme"], baseline)  # learned faces, not the average
