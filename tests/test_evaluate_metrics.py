"""Object expansion metrics on drawn shapes whose growth is known to the pixel, segmented by a deterministic
segmenter: every metric form must come out exactly (the fractions are integer counts divided once)."""

import math

import numpy as np
import pytest
from PIL import Image

from photobg.evaluate.metrics import aggregate, binarize, expansion_metrics
from photobg.segment import get_segmenter, segment_image

W, H = 100, 80
PIXELS = W * H
X0, Y0, RW, RH = 30, 30, 20, 10  # the input object: a 20 x 10 rectangle, 200 pixels
AREA = RW * RH


def rectangle_mask(grow=0, shift=0):
    """The input rectangle grown by `grow` pixels on every side (negative: shrunk), moved right by `shift`."""
    mask = np.zeros((H, W), np.uint8)
    mask[Y0 - grow : Y0 + RH + grow, X0 - grow + shift : X0 + RW + grow + shift] = 255
    return Image.fromarray(mask, "L")


def generated_photo(object_mask):
    """A 'generated' image: a bright object on a dark, textured background (the threshold segmenter's case)."""
    rng = np.random.default_rng(0)
    background = rng.integers(0, 100, (H, W, 3))
    photo = np.where(np.asarray(object_mask)[..., None] > 0, 230, background)
    return Image.fromarray(photo.astype(np.uint8))


@pytest.fixture(scope="module")
def segmenter():
    return get_segmenter("threshold", level=128)


def metrics_of(output_mask, segmenter, input_mask=None):
    found = segment_image(segmenter, generated_photo(output_mask))
    np.testing.assert_array_equal(np.asarray(found), np.asarray(output_mask))  # the segmenter is exact here
    return expansion_metrics(input_mask if input_mask is not None else rectangle_mask(), found)


@pytest.mark.parametrize("grow", [1, 3, 5])
def test_grown_object(grow, segmenter):
    grown = (RW + 2 * grow) * (RH + 2 * grow)
    m = metrics_of(rectangle_mask(grow), segmenter)
    assert m["expansion"] == (grown - AREA) / PIXELS
    assert m["area_change"] == (grown - AREA) / PIXELS
    assert m["iou"] == AREA / grown
    assert m["lost"] == 0.0
    assert (m["input_area"], m["output_area"]) == (AREA / PIXELS, grown / PIXELS)


def test_three_pixel_growth_in_numbers(segmenter):
    # 20x10 -> 26x16: 416 - 200 = 216 new object pixels of 8000.
    m = metrics_of(rectangle_mask(3), segmenter)
    assert m["expansion"] == 0.027
    assert m["iou"] == 200 / 416


def test_shrunk_object(segmenter):
    shrunk = (RW - 4) * (RH - 4)  # 16 x 6 = 96
    m = metrics_of(rectangle_mask(-2), segmenter)
    assert m["expansion"] == 0.0  # the paper's form cannot see shrinking ...
    assert m["area_change"] == (shrunk - AREA) / PIXELS == -0.013  # ... the signed form can
    assert m["iou"] == shrunk / AREA
    assert m["lost"] == (AREA - shrunk) / AREA == 0.52


def test_moved_object(segmenter):
    # Same size, 5 px to the right: 5 columns gained, 5 lost; the signed form says nothing happened.
    m = metrics_of(rectangle_mask(shift=5), segmenter)
    assert m["expansion"] == 5 * RH / PIXELS
    assert m["area_change"] == 0.0
    assert m["iou"] == (AREA - 5 * RH) / (AREA + 5 * RH)
    assert m["lost"] == 5 * RH / AREA


def test_identical_object(segmenter):
    assert metrics_of(rectangle_mask(), segmenter) == {
        "expansion": 0.0,
        "area_change": 0.0,
        "iou": 1.0,
        "lost": 0.0,
        "input_area": AREA / PIXELS,
        "output_area": AREA / PIXELS,
    }


def test_object_vanished(segmenter):
    m = metrics_of(Image.new("L", (W, H), 0), segmenter)
    assert (m["expansion"], m["area_change"], m["iou"], m["lost"]) == (0.0, -AREA / PIXELS, 0.0, 1.0)


def test_everything_is_object(segmenter):
    m = metrics_of(Image.new("L", (W, H), 255), segmenter)
    assert m["expansion"] == m["area_change"] == (PIXELS - AREA) / PIXELS
    assert (m["iou"], m["lost"]) == (AREA / PIXELS, 0.0)


def test_empty_input_mask():
    empty = Image.new("L", (W, H), 0)
    both_empty = expansion_metrics(empty, empty)
    assert (both_empty["expansion"], both_empty["area_change"], both_empty["iou"]) == (0.0, 0.0, 1.0)
    assert math.isnan(both_empty["lost"])  # nothing to lose
    found = expansion_metrics(empty, rectangle_mask())
    assert (found["expansion"], found["area_change"], found["iou"]) == (AREA / PIXELS, AREA / PIXELS, 0.0)
    assert math.isnan(found["lost"])


def test_full_input_mask():
    full = Image.new("L", (W, H), 255)
    m = expansion_metrics(full, rectangle_mask())
    assert (m["expansion"], m["area_change"], m["iou"]) == (0.0, (AREA - PIXELS) / PIXELS, AREA / PIXELS)
    assert m["lost"] == (PIXELS - AREA) / PIXELS


def test_binarised_at_128():
    # Soft masks: 127 is background, 128 is object (photobg's OBJECT_THRESHOLD), like the notebook's `> 127`.
    soft = np.zeros((H, W), np.uint8)
    soft[:, :10] = 127
    soft[:, 10:15] = 128
    assert binarize(Image.fromarray(soft)).sum() == 5 * H
    m = expansion_metrics(Image.fromarray(soft), np.full((H, W), 200, np.uint8))
    assert m["input_area"] == 5 * H / PIXELS and m["output_area"] == 1.0


def test_signed_form_is_the_notebooks():
    # The original notebook: np.mean(pred > 127) - np.mean(ref > 127).
    rng = np.random.default_rng(1)
    ref, pred = rng.integers(0, 256, (2, H, W)).astype(np.uint8)
    expected = np.mean(pred > 127) - np.mean(ref > 127)
    assert expansion_metrics(ref, pred)["area_change"] == pytest.approx(expected, abs=1e-15)


def test_masks_of_different_sizes_are_refused():
    with pytest.raises(ValueError, match="differ in size"):
        expansion_metrics(Image.new("L", (10, 10)), Image.new("L", (10, 12)))


def test_aggregate():
    rows = [
        {"expansion": 0.0, "area_change": -0.1, "iou": 1.0, "lost": 0.0},
        {"expansion": 0.02, "area_change": 0.02, "iou": 0.5, "lost": math.nan},
        {"expansion": 0.10, "area_change": 0.10, "iou": 0.25, "lost": 0.5},
        {"expansion": 0.01, "area_change": 0.0, "iou": 0.75, "lost": 0.25},
    ]
    summary = aggregate(rows, tolerance=0.01)
    assert summary["n"] == 4
    assert summary["expansion_mean"] == pytest.approx(0.0325)
    assert summary["expansion_median"] == pytest.approx(0.015)
    assert summary["expanded_share"] == 0.5  # 0.02 and 0.10; 0.01 is not above the tolerance
    assert summary["iou_mean"] == 0.625
    assert summary["lost_mean"] == 0.25 and summary["lost_median"] == 0.25  # NaN skipped
    assert summary["area_change_mean"] == pytest.approx(0.005)
    assert summary["expansion_std"] == pytest.approx(np.std([0, 0.02, 0.1, 0.01], ddof=1))
