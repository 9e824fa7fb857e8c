"""Decoding and the preprocessing contract on real files of every awkward kind."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pocketvision.core.contract import Contract, load_rgb
from pocketvision.errors import ImageDecodeError, PocketVisionError


def _save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


def test_modes_become_rgb(tmp_path):
    rgb = Image.new("RGB", (40, 30), (200, 100, 50))
    cases = {
        "gray.png": rgb.convert("L"),
        "cmyk.jpg": rgb.convert("CMYK"),
        "palette.png": rgb.convert("P"),
        "rgba.png": Image.new("RGBA", (40, 30), (255, 0, 0, 0)),  # fully transparent -> white
        "la.png": Image.new("LA", (40, 30), (10, 255)),
    }
    for name, img in cases.items():
        out = load_rgb(_save(img, tmp_path / name))
        assert out.mode == "RGB" and out.size == (40, 30), name
    assert np.asarray(load_rgb(tmp_path / "rgba.png"))[0, 0].tolist() == [255, 255, 255]
    assert np.asarray(load_rgb(tmp_path / "cmyk.jpg"))[5, 5, 0] > 150  # red stays red


def test_16bit_png_keeps_its_range(tmp_path):
    a = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    p = tmp_path / "deep.png"
    Image.fromarray(a).save(p)
    out = np.asarray(load_rgb(p))
    assert out.min() == 0 and out.max() == 255 and out[32, 32, 0] in range(120, 136)


def test_exif_orientation_applied(tmp_path):
    img = Image.new("RGB", (60, 20), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 10, 20))  # white stripe on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    p = tmp_path / "rot.jpg"
    img.save(p, exif=exif, quality=95)
    out = load_rgb(p)
    assert out.size == (20, 60)
    a = np.asarray(out)
    assert a[:10].mean() > 200 and a[-10:].mean() < 50  # stripe is now at the top


def test_truncated_and_non_images_raise(tmp_path):
    p = tmp_path / "x.jpg"
    buf = io.BytesIO()
    Image.new("RGB", (200, 200), (1, 2, 3)).save(buf, "JPEG")
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageDecodeError, match="x.jpg"):
        load_rgb(p)
    t = tmp_path / "notes.jpg"
    t.write_text("hello")
    with pytest.raises(ImageDecodeError, match="notes.jpg"):
        load_rgb(t)
    with pytest.raises(ImageDecodeError, match="missing.jpg"):
        load_rgb(tmp_path / "missing.jpg")


@pytest.mark.shared_data
def test_large_jpeg_is_never_fully_decoded(shared_data):
    p = sorted((shared_data / "photos-fullres").glob("*.jpg"))[0]
    full = Image.open(p).size
    c = Contract(size=(224, 224))
    small = load_rgb(p, min_size=c.decode_hint())
    assert min(small.size) >= 224
    assert small.size[0] * small.size[1] <= full[0] * full[1] / 16  # decoded at 1/4 scale or less
    assert c.load(p).shape == (224, 224, 3)


def test_fit_modes_and_validation():
    img = Image.new("RGB", (300, 100), (10, 20, 30))
    for mode in ("squash", "center_crop", "letterbox"):
        assert Contract(size=(64, 48), resize=mode).fit(img).shape == (64, 48, 3)
    with pytest.raises(PocketVisionError, match="resize"):
        Contract(resize="stretchy")
    with pytest.raises(PocketVisionError, match="size"):
        Contract(size=(2, 2))
    c = Contract(mean=(127.0,) * 3, std=(128.0,) * 3)
    x = c.normalize(np.full((1, 4, 4, 3), 255, np.uint8))
    assert x.shape == (1, 3, 4, 4) and np.allclose(x, 1.0)
    assert Contract.from_dict(c.to_dict()) == c
