"""Object expansion: how much a generated image's object differs from the input object, with no human labels.

`m_i` is the input object mask, `m_o` the mask a segmenter finds in the generated image. Both are binarised
at `OBJECT_THRESHOLD` (>= 128 of 255 is object) and every area is a fraction of the image (pixels / H*W):

- `expansion`   area(m_o ∪ m_i) − area(m_i): the paper's metric; what the object grew by, never negative.
- `area_change` area(m_o) − area(m_i): the original notebook's signed form; growth minus shrinkage.
- `iou`         area(m_o ∩ m_i) / area(m_o ∪ m_i): 1 when the object kept its exact outline.
- `lost`        area(m_i \\ m_o) / area(m_i): the share of the object that disappeared (shrinking is a failure
                too); a fraction of the object, not of the image.

Edge cases, chosen so that no value is undefined when the answer is obvious:
- empty `m_o` (the object vanished): expansion 0, area_change −area(m_i), IoU 0, lost 1;
- full `m_o` (everything looks like object): expansion = area_change = 1 − area(m_i), lost 0;
- empty `m_i`: lost is NaN (there was no object to lose), IoU is 1 if `m_o` is empty too (identical masks),
  else 0. Aggregates skip NaN values.
"""

import math

import numpy as np
import PIL.Image

from ..conventions import OBJECT_THRESHOLD

METRICS = ("expansion", "area_change", "iou", "lost")


def binarize(mask):
    """An object mask (PIL image or array, white = object) as a bool array: True where >= `OBJECT_THRESHOLD`."""
    if isinstance(mask, PIL.Image.Image):
        mask = mask.convert("L")
    array = np.asarray(mask)
    if array.dtype == bool:
        return array
    if array.ndim != 2:
        raise ValueError(f"Expected a single-channel mask, got an array of shape {array.shape}.")
    return array >= OBJECT_THRESHOLD


def expansion_metrics(input_mask, output_mask):
    """Compare the input object mask `m_i` with the object mask `m_o` found in the generated image.

    Args:
        input_mask: `m_i`, PIL "L" image or array, white (>= 128) = object.
        output_mask: `m_o`, same size as `input_mask`.

    Returns:
        dict with `expansion`, `area_change`, `iou`, `lost` (see the module docstring) and the two areas
        `input_area`, `output_area`, all floats (areas as fractions of the image).
    """
    m_i, m_o = binarize(input_mask), binarize(output_mask)
    if m_i.shape != m_o.shape:
        raise ValueError(f"Masks differ in size: input {m_i.shape[::-1]}, output {m_o.shape[::-1]} (W, H).")
    pixels = m_i.size
    # Integer pixel counts, divided once, so that known shapes give exactly known fractions.
    area_i, area_o = int(m_i.sum()), int(m_o.sum())
    union, overlap = int((m_i | m_o).sum()), int((m_i & m_o).sum())
    return {
        "expansion": (union - area_i) / pixels,
        "area_change": (area_o - area_i) / pixels,
        "iou": overlap / union if union else 1.0,
        "lost": (area_i - overlap) / area_i if area_i else math.nan,
        "input_area": area_i / pixels,
        "output_area": area_o / pixels,
    }


def aggregate(rows, tolerance=0.01):
    """Summarise per-image metrics over a set of images.

    Args:
        rows: iterable of dicts from `expansion_metrics`.
        tolerance: an image counts as expanded when its `expansion` is above this fraction of the image.

    Returns:
        dict: `n` (images), `<metric>_mean` and `<metric>_median` for each of `METRICS` (NaN values skipped; NaN
        when nothing is left), `expansion_std` (sample standard deviation, 0 for one image), and
        `expanded_share`, the share of images with expansion > `tolerance`.
    """
    rows = list(rows)
    summary = {"n": len(rows)}
    for name in METRICS:
        values = np.array([row[name] for row in rows], dtype=np.float64)
        values = values[~np.isnan(values)]
        summary[f"{name}_mean"] = float(values.mean()) if values.size else math.nan
        summary[f"{name}_median"] = float(np.median(values)) if values.size else math.nan
    expansion = np.array([row["expansion"] for row in rows], dtype=np.float64)
    summary["expansion_std"] = float(expansion.std(ddof=1)) if len(rows) > 1 else 0.0
    expanded = [row["expansion"] > tolerance for row in rows]
    summary["expanded_share"] = sum(expanded) / len(rows) if rows else math.nan
    return summary
