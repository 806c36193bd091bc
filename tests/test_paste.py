"""Paste-back: the object's own pixels exactly, and no halo of the photo's old background in its soft edge."""

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F

import photobg.matting as matting_file
from photobg.matting import estimate_foreground, paste_object, restore_size

RED, GREEN = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0)


def photo_on_red(size=160, ramp=16):
    """A textured object (from skimage's astronaut) photographed on pure red, with a soft edge `ramp` pixels
    wide: returns (the object's true colours in [0, 1], the photo uint8, its object mask uint8)."""
    true = skimage.data.astronaut()[100 : 100 + size, 180 : 180 + size].astype(np.float32) / 255
    yy, xx = np.mgrid[0:size, 0:size]
    alpha = np.clip((size * 0.35 - np.hypot(xx - size / 2, yy - size / 2)) / ramp, 0, 1)
    mask = np.round(alpha * 255).astype(np.uint8)
    alpha = (mask / 255.0)[..., None]
    photo = np.round((alpha * true + (1 - alpha) * np.array(RED)) * 255).astype(np.uint8)
    return true, photo, mask


def red_excess(composite, true, mask):
    """Mean red above the ideal composite (true colours over green) in the soft edge, in 0-255 levels."""
    alpha = (mask / 255.0)[..., None]
    ideal = alpha * true + (1 - alpha) * np.array(GREEN)
    band = (mask > 0) & (mask < 255)
    return float((composite[band, 0] - ideal[band, 0]).mean() * 255)


@pytest.mark.parametrize("tile", [256, 48], ids=["one-tile", "tiled"])
def test_soft_edge_on_green_shows_much_less_of_the_old_red(tile, monkeypatch):
    monkeypatch.setattr(matting_file, "PASTE_TILE", tile)
    monkeypatch.setattr(matting_file, "PASTE_MARGIN", min(32, tile // 2))
    true, photo, mask = photo_on_red()
    green = np.broadcast_to(np.array(GREEN, np.float32), photo.shape)
    alpha = (mask / 255.0)[..., None]
    before = alpha * photo / 255.0 + (1 - alpha) * green  # blending the photo's own pixels (photobg 0.1)
    after = paste_object(green, photo, mask)
    # Measured on this image: 18.9 levels of red before, 1.6 after (bench/paste_back.py: 19.3 and 2.4 on another).
    assert red_excess(before, true, mask) > 15
    assert red_excess(after, true, mask) < 0.25 * red_excess(before, true, mask)
    opaque, outside = mask == 255, mask == 0
    np.testing.assert_array_equal(after[opaque], photo[opaque] / np.float32(255))  # bit-exact object
    np.testing.assert_array_equal(after[outside], green[outside])


def test_foreground_is_estimated_only_in_tiles_that_hold_the_soft_edge(monkeypatch):
    calls = []
    real = matting_file._foreground_ml
    monkeypatch.setattr(
        matting_file, "_foreground_ml", lambda image, alpha: calls.append(image.shape) or real(image, alpha)
    )
    tile, margin = matting_file.PASTE_TILE, matting_file.PASTE_MARGIN
    photo = np.random.default_rng(0).integers(0, 256, (3 * tile, 8 * tile, 3), dtype=np.uint8)
    mask = np.zeros(photo.shape[:2], np.uint8)
    column = 6 * tile + tile // 4
    mask[10 : 2 * tile, column : column + tile] = 255
    mask[10 : tile - 10, column] = 128  # the only soft pixels, all in the first row's 7th tile
    foreground = estimate_foreground(photo, mask)
    assert calls == [(3, tile + margin, tile + 2 * margin)]  # that tile and its margins (none above the image)
    changed = np.any(foreground != photo, axis=2)
    assert changed[mask == 128].any() and not changed[(mask == 0) | (mask == 255)].any()


def test_restore_size_is_the_bicubic_upscale_and_the_paste():

    generated = torch.rand(3, 40, 64)
    reference = F.interpolate(generated[None], (300, 470), mode="bicubic", antialias=True)[0].clamp(0, 1)
    reference = reference.permute(1, 2, 0).numpy()
    as_float = restore_size(generated, (470, 300), as_uint8=False)
    np.testing.assert_allclose(as_float, reference, atol=1e-5)
    np.testing.assert_array_equal(restore_size(generated, (470, 300)), np.round(as_float * 255).astype(np.uint8))
    _, photo, mask = photo_on_red(300)
    photo, mask = np.ascontiguousarray(photo[:, :300]), np.ascontiguousarray(mask[:, :300])
    pasted = restore_size(generated, (300, 300), estimate_foreground(photo, mask), mask)
    full = mask == 255
    np.testing.assert_array_equal(pasted[full], photo[full])
