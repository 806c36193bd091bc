"""Input conventions of masks.py without a model: pixel formats, mask files, the size rule, the canvas."""

import subprocess
import sys

import numpy as np
import pytest
from conftest import make_photo
from PIL import Image

from photobg.masks import (
    as_object_mask,
    canvas_size,
    fit_mask_to_image,
    load_object_mask,
    place_on_canvas,
    split_cutout,
)

SOFT = np.array([[0, 64, 128, 255]], dtype=np.uint8)


def saved(tmp_path, image, name, **kwargs):
    path = tmp_path / name
    image.save(path, **kwargs)
    return path


def test_conventions_load_without_diffusers_pipelines():
    # The conventions live in the method's own rooms, not behind the SD2 pipeline file's re-export, so reading
    # masks needs neither diffusers nor transformers.
    code = "import sys, photobg.masks\nprint(sorted(m for m in ('diffusers', 'transformers') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout == "[]\n"


def test_mask_files_of_every_kind_read_as_white_object(tmp_path):
    sixteen = Image.fromarray(SOFT.astype(np.uint16) * 257)  # 16-bit: 0..65535
    rgba = Image.fromarray(np.dstack([np.zeros((1, 4, 3), np.uint8), SOFT]), "RGBA")
    palette = Image.fromarray(SOFT).convert("RGB").quantize(colors=4)
    label_map = Image.fromarray((SOFT > 100).astype(np.uint8))  # 0/1 values
    label_map_16 = Image.fromarray((SOFT > 100).astype(np.uint16))
    cases = {
        "gray.png": (Image.fromarray(SOFT), SOFT),
        "sixteen.png": (sixteen, SOFT),
        "rgb.jpg": (Image.fromarray(SOFT).convert("RGB").resize((64, 16), Image.NEAREST), None),
        "rgba.png": (rgba, SOFT),
        "palette.png": (palette, np.asarray(palette.convert("L"))),
        "labels.png": (label_map, (SOFT > 100) * 255),
        "labels16.png": (label_map_16, (SOFT > 100) * 255),
    }
    assert sixteen.mode == "I;16"
    for name, (image, expected) in cases.items():
        mask = load_object_mask(saved(tmp_path, image, name))
        assert mask.mode == "L", name
        if expected is not None:
            np.testing.assert_array_equal(np.asarray(mask), expected, err_msg=name)
    rgb = np.asarray(load_object_mask(tmp_path / "rgb.jpg"))  # lossy, but white stays white and black black
    assert rgb[:, :8].max() < 10 and rgb[:, -8:].min() > 245


def test_palette_with_transparency_is_an_alpha_and_opaque_alpha_is_not(tmp_path):
    palette = Image.fromarray(np.array([[0, 1, 1, 2]], np.uint8), "P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * 759)
    path = saved(tmp_path, palette, "p.png", transparency=0)
    np.testing.assert_array_equal(np.asarray(load_object_mask(path)), [[0, 255, 255, 255]])
    rgb, alpha = split_cutout(Image.open(path))
    assert alpha is not None and rgb.mode == "RGB"
    opaque = Image.new("RGBA", (4, 1), (255, 255, 255, 255))
    assert split_cutout(opaque)[1] is None
    np.testing.assert_array_equal(np.asarray(as_object_mask(opaque)), 255)  # opaque alpha: the gray values count


def test_array_masks():
    np.testing.assert_array_equal(np.asarray(as_object_mask(SOFT > 100)), (SOFT > 100) * 255)
    np.testing.assert_array_equal(np.asarray(as_object_mask(SOFT / 255.0)), SOFT)
    np.testing.assert_array_equal(np.asarray(as_object_mask(SOFT)), SOFT)


def test_photos_of_any_mode_become_rgb(tmp_path):
    gray = np.arange(0, 256, 16, dtype=np.uint8)[None].repeat(4, 0)
    sixteen = Image.fromarray(gray.astype(np.uint16) * 257)
    cmyk = Image.fromarray(np.dstack([gray] * 3)).convert("CMYK")
    for image, expected in [(Image.fromarray(gray), gray), (sixteen, gray), (cmyk, None)]:
        rgb, alpha = split_cutout(image)
        assert rgb.mode == "RGB" and alpha is None
        if expected is not None:
            np.testing.assert_array_equal(np.asarray(rgb)[..., 0], expected)
    rgb, alpha = split_cutout(Image.new("LA", (4, 4), (200, 0)))
    assert alpha is not None and np.asarray(alpha).max() == 0


def test_mask_of_another_size_is_resized_with_a_warning_only_when_the_aspect_matches():
    photo, mask = make_photo(72, 48)
    with pytest.warns(UserWarning, match="36x24 but the image is 72x48: resized"):
        fitted = fit_mask_to_image(mask.resize((36, 24)), (72, 48))
    assert fitted.size == (72, 48)
    assert np.abs(np.asarray(fitted, float) - np.asarray(mask, float)).mean() < 8
    with pytest.raises(ValueError, match="aspect ratios differ"):
        fit_mask_to_image(mask.resize((72, 72)), (72, 48))
    with pytest.raises(ValueError, match="rotated"):
        fit_mask_to_image(mask.resize((48, 72)), (72, 48))
    assert fit_mask_to_image(mask, (72, 48)) is mask


def test_canvas_size():
    assert canvas_size((600, 400)) == (600, 400)
    assert canvas_size((600, 400), size="512x256") == (512, 256)
    assert canvas_size((600, 400), aspect="1:1") == (600, 600)
    assert canvas_size((600, 400), aspect="16:9") == (712, 400)
    assert canvas_size((600, 400), aspect="4:5") == (600, 750)
    for bad in ("512", "0x10", "axb"):
        with pytest.raises(ValueError, match="Size"):
            canvas_size((1, 1), size=bad)
    with pytest.raises(ValueError, match="Aspect"):
        canvas_size((1, 1), aspect="16/9")


def test_padding_copies_the_photo_and_positions_it():
    photo, mask = make_photo(60, 40)
    for position, offset in [("center", (0, 10)), ("top", (0, 0)), ("bottom", (0, 20)), ("bottom-right", (0, 20))]:
        canvas, canvas_mask = place_on_canvas(photo, mask, (60, 60), position=position)
        x, y = offset
        np.testing.assert_array_equal(np.asarray(canvas)[y : y + 40, x : x + 60], np.asarray(photo))
        np.testing.assert_array_equal(np.asarray(canvas_mask)[y : y + 40, x : x + 60], np.asarray(mask))
        assert np.asarray(canvas_mask).sum() == np.asarray(mask).sum()  # the padding is background
    assert place_on_canvas(photo, mask, (60, 40))[0] is photo
    with pytest.raises(ValueError, match="Unknown position"):
        place_on_canvas(photo, mask, (60, 60), position="middle")


def test_letterbox_scales_the_photo_to_fit():
    photo, mask = make_photo(60, 40)
    canvas, canvas_mask = place_on_canvas(photo, mask, (30, 30))
    assert canvas.size == (30, 30)
    assert Image.fromarray(np.asarray(canvas).max(-1) > 0).getbbox() == (0, 5, 30, 25)  # 30x20, centred


def test_object_scale_fits_the_objects_box_to_a_fraction_of_the_canvas():
    photo, mask = make_photo(60, 40)
    box = mask.getbbox()
    canvas, canvas_mask = place_on_canvas(photo, mask, (100, 100), object_scale=0.5, position="bottom")
    left, top, right, bottom = canvas_mask.getbbox()
    width, height = box[2] - box[0], box[3] - box[1]
    assert max(right - left, bottom - top) == 50  # the long side of the box is half the canvas
    assert abs((right - left) / (bottom - top) - width / height) < 0.1
    assert bottom == 100 and abs((left + right) / 2 - 50) <= 1
    with pytest.raises(ValueError, match="object_scale"):
        place_on_canvas(photo, mask, (100, 100), object_scale=1.5)
