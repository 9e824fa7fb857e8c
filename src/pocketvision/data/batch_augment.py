"""Augment whole batches at once with torch, on the device that trains: data workers only gather bytes.

The per-image path (``augment.Augmenter``) runs Pillow and NumPy once per photo in worker processes; on a GPU
that trains 10,000 images a second, no number of CPU workers keeps up. Here the workers pick each photo's random
choices (the same ``Augmenter.draw``, seeded by ``(seed, epoch, index)``, so both paths draw from one distribution
and a run does not depend on the number of workers) and stack the decoded source pixels, edge-padded to one
canvas. The device then does, for the whole batch:

- random resized crop + flip: one ``grid_sample`` with a per-image affine grid (the box's edges map to the output's
  edges, as Pillow's ``resize(box=...)``; a flip is a negative x scale, free);
- colour jitter: one batched 3x3 matrix + the contrast offset from each image's mean grey;
- moiré and flash glare: per-image parameter tensors broadcast over pixel grids, only for the images that drew them.

Sources are decoded at 1.15x the model side (``training.loader.SOURCE_MARGIN``), so even a full-image crop is
downscaled by at most 1.15x: bilinear sampling without Pillow's antialiasing loses nothing there.
Without a GPU the same code runs in the workers' collate (vectorised on the CPU, one batch per call).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .augment import _LUMA, Augmenter, Draw, moire_coefficients


def stack_draws(draws: list[Draw]) -> dict[str, torch.Tensor]:
    """Per-image draws -> the batch's parameter tensors (CPU; NumPy work stays in the workers)."""
    n = len(draws)
    jit = np.zeros((n, 3, 3), np.float32)
    fb, fc = np.ones(n, np.float32), np.ones(n, np.float32)
    moire, coef = np.zeros((n, 5), np.float32), np.zeros((n, 4, 3), np.float32)
    glare = np.zeros((n, 8), np.float32)
    for i, d in enumerate(draws):
        if d.jitter is not None:
            jit[i] = Augmenter.jitter_matrix(*d.jitter)
            fb[i], fc[i] = d.jitter[0], d.jitter[1]
        else:
            jit[i] = np.eye(3)
        if d.moire is not None:
            period, th1, dth, k_ratio, curve_u, fine, amp, fringe_u = d.moire
            moire[i] = (period, th1, dth, k_ratio, curve_u)
            coef[i] = moire_coefficients(fine, amp, fringe_u)
        if d.glare is not None:
            glare[i] = d.glare
    return {"box": torch.tensor(np.array([d.box for d in draws], np.float32)),
            "flip": torch.tensor([d.flip for d in draws]),
            "jitter": torch.from_numpy(jit), "fb": torch.from_numpy(fb), "fc": torch.from_numpy(fc),
            "moire_on": torch.tensor([d.moire is not None for d in draws]), "moire": torch.from_numpy(moire),
            "moire_coef": torch.from_numpy(coef),
            "glare_on": torch.tensor([d.glare is not None for d in draws]), "glare": torch.from_numpy(glare)}


def pad_sources(arrays: list[np.ndarray]) -> torch.Tensor:
    """uint8 HxWx3 arrays of different sizes -> one (N, H, W, 3) canvas, each image at the top left and its border
    pixels repeated outwards (bilinear sampling at a crop's edge then reads the image, never black)."""
    h = max(a.shape[0] for a in arrays)
    w = max(a.shape[1] for a in arrays)
    out = np.empty((len(arrays), h, w, 3), np.uint8)
    for i, a in enumerate(arrays):
        ah, aw = a.shape[:2]
        out[i, :ah, :aw] = a
        if aw < w:
            out[i, :ah, aw:] = a[:, -1:]
        if ah < h:
            out[i, ah:] = out[i, ah - 1:ah]
    return torch.from_numpy(out)


class Sources:
    """A batch on its way to ``augment``: the edge-padded canvas, the draws and the output size."""

    def __init__(self, canvas: torch.Tensor, params: dict[str, torch.Tensor], size: tuple[int, int]):
        self.canvas, self.params, self.size = canvas, params, size

    def __len__(self) -> int:
        return len(self.canvas)

    def pin_memory(self):  # DataLoader(pin_memory=True) calls this on custom batch types
        return Sources(self.canvas.pin_memory(), self.params, self.size)

    def to(self, device) -> Sources:
        return Sources(self.canvas.to(device, non_blocking=True),
                       {k: v.to(device, non_blocking=True) for k, v in self.params.items()}, self.size)


def augment(src: Sources, mode: str = "bilinear") -> torch.Tensor:
    """-> uint8 (N, h, w, 3) augmented images on ``src``'s device (the per-image path's ``Augmenter.apply``)."""
    p, (h, w) = src.params, src.size
    n, ch, cw = src.canvas.shape[:3]
    dev = src.canvas.device
    x = src.canvas.permute(0, 3, 1, 2).float()
    # crop + resize + flip: output edges -1/+1 -> the box's edges in canvas-normalised coordinates
    x0, y0, x1, y1 = p["box"].unbind(1)
    sx = (x1 - x0) / cw * torch.where(p["flip"], -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 2] = sx, (x0 + x1) / cw - 1
    theta[:, 1, 1], theta[:, 1, 2] = (y1 - y0) / ch, (y0 + y1) / ch - 1
    grid = F.affine_grid(theta, [n, 3, h, w], align_corners=False)
    y = F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False)
    # colour jitter: contrast pivots on the (brightened) mean grey, then one 3x3 matrix per image
    luma = torch.tensor(_LUMA, device=dev)
    flat = y.reshape(n, 3, h * w)
    mean_luma = (luma @ flat).mean(1) * p["fb"]
    y = torch.baddbmm(((1 - p["fc"]) * mean_luma)[:, None, None], p["jitter"], flat).reshape(n, 3, h, w)
    xx = torch.arange(w, device=dev, dtype=torch.float32)
    yy = torch.arange(h, device=dev, dtype=torch.float32)
    idx = p["moire_on"].nonzero().flatten()
    if len(idx):
        period, th1, dth, k_ratio, curve_u = p["moire"][idx].unbind(1)
        k1 = 2 * torch.pi / period
        k2 = k1 * k_ratio
        th2 = th1 + dth
        curve = curve_u * torch.pi / (h * h + w * w)
        dx, dy = (xx - w / 2)[None, None, :], (yy - h / 2)[None, :, None]
        col = lambda t: t[:, None, None]  # noqa: E731
        a = dx * col(k1 * torch.cos(th1)) + dy * col(k1 * torch.sin(th1))
        b = dx * col(k2 * torch.cos(th2)) + dy * col(k2 * torch.sin(th2)) + col(curve) * (dx * dx + dy * dy)
        waves = torch.stack([torch.cos(a - b), torch.sin(a - b), torch.cos(a + b), torch.sin(a + b)], 1)
        y[idx] = y[idx] * (torch.einsum("kfhw,kfc->kchw", waves, p["moire_coef"][idx]) + 1)
    idx = p["glare_on"].nonzero().flatten()
    if len(idx):
        fcx, fcy, fra, rb_ratio, ang, halo, hard, lift = (t[:, None, None] for t in p["glare"][idx].unbind(1))
        ra = fra * min(h, w)
        rb = ra * rb_ratio
        dx, dy = xx[None, None, :] - fcx * w, yy[None, :, None] - fcy * h
        cos, sin = torch.cos(ang), torch.sin(ang)
        d2 = ((dx * cos + dy * sin) / ra) ** 2 + ((dy * cos - dx * sin) / rb) ** 2
        m = torch.exp(d2 * (1 - hard + hard * torch.sqrt(d2)) * -0.5) * 1.5 + halo * torch.exp(d2 * (-0.5 / 9.0))
        m = m.clamp(max=1.0)[:, None]
        g = y[idx] * lift[:, None]
        y[idx] = g + (255.0 - g) * m
    return (y + 0.5).clamp_(0.0, 255.0).to(torch.uint8).permute(0, 2, 3, 1)
