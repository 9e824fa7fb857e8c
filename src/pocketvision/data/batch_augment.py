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


def _photo_params(draws, n: int) -> dict[str, torch.Tensor]:
    """Colour jitter, glare (both tasks) and moiré (classification) draws -> parameter tensors."""
    jit = np.tile(np.eye(3, dtype=np.float32), (n, 1, 1))
    fb, fc = np.ones(n, np.float32), np.ones(n, np.float32)
    moire, coef = np.zeros((n, 5), np.float32), np.zeros((n, 4, 3), np.float32)
    glare = np.zeros((n, 8), np.float32)
    for i, d in enumerate(draws):
        if d.jitter is not None:
            jit[i] = Augmenter.jitter_matrix(*d.jitter)
            fb[i], fc[i] = d.jitter[0], d.jitter[1]
        if getattr(d, "moire", None) is not None:
            period, th1, dth, k_ratio, curve_u, fine, amp, fringe_u = d.moire
            moire[i] = (period, th1, dth, k_ratio, curve_u)
            coef[i] = moire_coefficients(fine, amp, fringe_u)
        if d.glare is not None:
            glare[i] = d.glare
    return {"jitter": torch.from_numpy(jit), "fb": torch.from_numpy(fb), "fc": torch.from_numpy(fc),
            "moire_on": torch.tensor([getattr(d, "moire", None) is not None for d in draws]),
            "moire": torch.from_numpy(moire), "moire_coef": torch.from_numpy(coef),
            "glare_on": torch.tensor([d.glare is not None for d in draws]), "glare": torch.from_numpy(glare)}


def stack_draws(draws: list[Draw], size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Per-image classification draws -> the batch's parameter tensors (CPU; NumPy work stays in the workers).
    ``inv`` maps output pixels to source pixels: the crop box's edges onto the output's edges, mirrored when
    flipped (Pillow's ``resize(box=...)`` geometry)."""
    h, w = size
    inv = np.zeros((len(draws), 3, 3), np.float32)
    for i, d in enumerate(draws):
        x0, y0, x1, y1 = d.box
        sx, sy = (x1 - x0) / w, (y1 - y0) / h
        inv[i] = [[-sx, 0, x1] if d.flip else [sx, 0, x0], [0, sy, y0], [0, 0, 1]]
    return {"inv": torch.from_numpy(inv), **_photo_params(draws, len(draws))}


def stack_keypoint_draws(draws: list, size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Per-photo keypoint draws (the keypoint task's ``KeypointDraw``) -> parameter tensors: the inverse of each photo's
    homography (the points were mapped by the same matrix in the worker), grayscale flags and occlusions."""
    h, w = size
    n = len(draws)
    inv = np.stack([np.linalg.inv(d.total) for d in draws]).astype(np.float32)
    p = {"inv": torch.from_numpy(inv), **_photo_params(draws, n), "gray": torch.tensor([d.gray for d in draws])}
    occ = [i for i, d in enumerate(draws) if d.occlude is not None]
    if occ:  # output-sized fill and mask, only for the photos that drew an occlusion
        fill, mask = np.zeros((len(occ), h, w, 3), np.float32), np.zeros((len(occ), h, w, 1), bool)
        for k, i in enumerate(occ):
            top, left, rh, rw, noise = draws[i].occlude
            fill[k, top:top + rh, left:left + rw] = 114.0 if noise is None else noise
            mask[k, top:top + rh, left:left + rw] = True
        p.update(occ_idx=torch.tensor(occ), occ_fill=torch.from_numpy(fill), occ_mask=torch.from_numpy(mask))
    return p


def pad_sources(arrays: list[np.ndarray], fill: float | None = None) -> torch.Tensor:
    """uint8 HxWx3 arrays of different sizes -> one (N, H, W, 3) canvas, each image at the top left. ``fill=None``:
    its border pixels repeated outwards (bilinear sampling at a crop's edge reads the image, never black); else that
    grey value (a keypoint warp's outside, as Pillow's ``fillcolor``)."""
    h = max(a.shape[0] for a in arrays)
    w = max(a.shape[1] for a in arrays)
    out = np.empty((len(arrays), h, w, 3), np.uint8)
    for i, a in enumerate(arrays):
        ah, aw = a.shape[:2]
        out[i, :ah, :aw] = a
        if fill is not None:
            out[i, :ah, aw:] = int(fill)
            out[i, ah:] = int(fill)
            continue
        if aw < w:
            out[i, :ah, aw:] = a[:, -1:]
        if ah < h:
            out[i, ah:] = out[i, ah - 1:ah]
    return torch.from_numpy(out)


class Sources:
    """A batch on its way to ``augment``: the padded canvas, the draws' parameters, the output size and the fill
    outside the source (None: the nearest border pixel)."""

    def __init__(self, canvas: torch.Tensor, params: dict[str, torch.Tensor], size: tuple[int, int],
                 fill: float | None = None):
        self.canvas, self.params, self.size, self.fill = canvas, params, size, fill

    def __len__(self) -> int:
        return len(self.canvas)

    def pin_memory(self):  # DataLoader(pin_memory=True) calls this on custom batch types
        return Sources(self.canvas.pin_memory(), self.params, self.size, self.fill)

    def to(self, device) -> Sources:
        return Sources(self.canvas.to(device, non_blocking=True),
                       {k: v.to(device, non_blocking=True) for k, v in self.params.items()}, self.size, self.fill)


def warp(src: Sources, mode: str) -> torch.Tensor:
    """Every output pixel centre through its photo's ``inv`` (output -> source pixels, a homography) and one
    ``grid_sample`` for the batch -> float (N, 3, h, w), 0-255."""
    (h, w), inv = src.size, src.params["inv"]
    n, ch, cw = src.canvas.shape[:3]
    dev = src.canvas.device
    x = src.canvas.permute(0, 3, 1, 2).float()
    if src.fill is not None:  # zero padding of (x - fill) = `fill` outside the photo
        x = x - src.fill
    v, u = torch.meshgrid(torch.arange(h, device=dev, dtype=torch.float32) + 0.5,
                          torch.arange(w, device=dev, dtype=torch.float32) + 0.5, indexing="ij")
    centres = torch.stack([u.flatten(), v.flatten(), torch.ones(h * w, device=dev)])  # (3, h*w)
    s = inv @ centres  # (N, 3, h*w)
    xy = s[:, :2] / s[:, 2:3]
    grid = torch.stack([xy[:, 0] * (2 / cw) - 1, xy[:, 1] * (2 / ch) - 1], -1).reshape(n, h, w, 2)
    y = F.grid_sample(x, grid, mode=mode, padding_mode="border" if src.fill is None else "zeros",
                      align_corners=False)
    return y if src.fill is None else y + src.fill


def augment(src: Sources, mode: str = "bilinear") -> torch.Tensor:
    """-> uint8 (N, h, w, 3) augmented images on ``src``'s device (the per-image paths' ``apply``)."""
    p, (h, w) = src.params, src.size
    n = len(src)
    dev = src.canvas.device
    y = warp(src, mode)
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
    if "gray" in p:
        idx = p["gray"].nonzero().flatten()
        if len(idx):
            y[idx] = torch.einsum("kchw,c->khw", y[idx], luma)[:, None].expand(-1, 3, -1, -1)
    if "occ_idx" in p:
        k = p["occ_idx"]
        y[k] = torch.where(p["occ_mask"].permute(0, 3, 1, 2), p["occ_fill"].permute(0, 3, 1, 2), y[k])
    return (y + 0.5).clamp_(0.0, 255.0).to(torch.uint8).permute(0, 2, 3, 1)
