"""The app's object selection: the automatic mask, points clicked for SAM, brush strokes, and the one mask
they make together.

`object_mask(selection)` is what the pipeline keeps: the app's overlay draws it and generation passes it to
`BackgroundGenerator.prepare`, so what the user sees is what is kept. The browser shows the photo at most
`DISPLAY_SIZE` pixels on the long side; clicks and strokes come back at that size and are mapped onto the
full-resolution photo here.
"""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageChops
import PIL.ImageDraw

from .masks import OBJECT_THRESHOLD, load_image
from .segment import SegmenterUnavailable

DISPLAY_SIZE = 1024  # long side, in pixels, of the photo as the browser shows it
OBJECT_TINT = (37, 99, 235)  # the overlay's colour on the object
# Brush colours of the app's editor: strokes in the first add to the object, in the second remove from it.
ADD_COLOUR, REMOVE_COLOUR = (0, 192, 0), (224, 0, 0)
STROKE_OPACITY = 0.6  # the brush paints at this opacity: a stroke's alpha there means "fully painted"
POINT_COLOURS = {1: (0, 200, 0), 0: (230, 0, 0)}  # clicked points: on the object / not on it


@dataclass
class Selection:
    """A photo and what the user chose as its object.

    The object mask is the automatic one (alpha, mask file or segmenter), refined by the clicked points (each
    adds or removes SAM's region at its point), with brush strokes painted over it (see `object_mask`).
    """

    name: str  # the photo's file name, for messages and commands
    image: PIL.Image.Image  # RGB, full resolution, EXIF orientation applied
    automatic: PIL.Image.Image  # "L", white = object: from the alpha channel, the mask file or the segmenter
    source: str  # where `automatic` came from: "alpha", "mask", "segmenter:NAME", or "none" (no segmenter: empty)
    mask_name: str | None = None  # the uploaded mask's file name, when there is one
    files: tuple = (None, None)  # the uploaded photo and mask files (the mask only when it is the object's source)
    points: list = field(default_factory=list)  # [x, y, label] in photo pixels; label 1 = object, 0 = not
    regions: list = field(default_factory=list)  # SAM's mask ("L") at each point, photo size
    added: PIL.Image.Image | None = None  # brush strokes that add to the object (0-255), photo size
    removed: PIL.Image.Image | None = None  # brush strokes that remove from it (0-255), photo size

    @property
    def edited(self):
        """Whether the mask differs from the automatic one by the user's points or strokes."""
        return bool(self.points) or any(m is not None and m.getbbox() for m in (self.added, self.removed))


def open_selection(generator, photo, mask=None, *, max_megapixels=None):
    """Read an uploaded photo (and optional mask) and find its object as `BackgroundGenerator.prepare` does.

    Args:
        generator: the app's `BackgroundGenerator` (its segmenter finds objects in photos without a mask).
        photo, mask: file paths.
        max_megapixels: larger photos are refused before they are decoded.

    Returns:
        `Selection`.

    Raises:
        ValueError: naming the file, when it is too large, unreadable, or its mask does not fit.
    """
    with PIL.Image.open(photo) as header:  # reads the header only
        megapixels = header.width * header.height / 1e6
    if max_megapixels is not None and megapixels > max_megapixels:
        raise ValueError(f"{photo}: {megapixels:.0f} megapixels; this app takes photos up to {max_megapixels:g}.")
    image = load_image(photo)
    try:
        rgb, automatic, source = generator._find_object(image, mask, str(photo))
    except ValueError as err:
        raise ValueError(f"{photo}: {err}") from err
    except SegmenterUnavailable:  # the photo still loads: clicks and the brush give its object
        rgb, automatic, source = image.convert("RGB"), PIL.Image.new("L", image.size), "none"
    mask_name = Path(mask).name if mask is not None and source == "mask" else None
    files = (str(photo), str(mask) if mask_name else None)
    return Selection(Path(photo).name, rgb, automatic.convert("L"), source, mask_name, files)


def object_mask(selection, strokes=True):
    """The object mask the pipeline keeps ("L", white = object): the automatic mask; then, click by click, SAM's
    region at a point on the object added, at a point off it taken away; then (unless `strokes` is False) the
    brush strokes (added ones raise the mask to their coverage, removed ones lower it)."""
    mask = selection.automatic
    for (*_, label), region in zip(selection.points, selection.regions, strict=True):
        on = label == 1
        mask = (
            PIL.ImageChops.lighter(mask, region) if on else PIL.ImageChops.darker(mask, PIL.ImageChops.invert(region))
        )
    if not strokes:
        return mask
    if selection.added is not None:
        mask = PIL.ImageChops.lighter(mask, selection.added)
    if selection.removed is not None:
        mask = PIL.ImageChops.darker(mask, PIL.ImageChops.invert(selection.removed))
    return mask


def display_size(size):
    """The size the browser shows a photo of `size` at: the long side at most `DISPLAY_SIZE`."""
    scale = min(1.0, DISPLAY_SIZE / max(size))
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def overlay(selection, with_points=True, mask=None):
    """The photo at display size with the object tinted (by its soft mask) and the clicked points drawn.

    Args:
        selection: the `Selection`.
        with_points: draw the clicked points.
        mask: the mask to tint (default `object_mask(selection)`, what generation keeps).

    Returns:
        RGB PIL image of `display_size(selection.image.size)`.
    """
    size = display_size(selection.image.size)
    photo = selection.image.resize(size, PIL.Image.LANCZOS)
    mask = (object_mask(selection) if mask is None else mask).resize(size, PIL.Image.BILINEAR)
    tinted = PIL.Image.blend(photo, PIL.Image.new("RGB", size, OBJECT_TINT), 0.45)
    shown = PIL.Image.composite(tinted, photo, mask)
    if with_points:
        draw = PIL.ImageDraw.Draw(shown)
        scale = size[0] / selection.image.width
        radius = max(4, round(max(size) / 100))
        for x, y, label in selection.points:
            box = (x * scale - radius, y * scale - radius, x * scale + radius, y * scale + radius)
            draw.ellipse(box, fill=POINT_COLOURS[label], outline="white", width=2)
    return shown


def add_point(selection, sam, x, y, label):
    """Add a clicked point: SAM's region at it is added to the object (label 1) or taken from it (label 0).

    Args:
        selection: the `Selection`.
        sam: a `segment.Sam`.
        x, y: the click, in pixels of the photo as displayed (`display_size`).
        label: 1 = on the object, 0 = not on it.

    Returns:
        A new `Selection`.

    Raises:
        ValueError: when the click is outside the photo.
    """
    width, height = display_size(selection.image.size)
    if not (0 <= x < width and 0 <= y < height):
        raise ValueError(f"the click at ({x}, {y}) is outside the photo ({width}x{height} as shown); click on it.")
    scale = selection.image.width / width
    point = [min(int(x * scale), selection.image.width - 1), min(int(y * scale), selection.image.height - 1)]
    # A point alone: what is there, object or not, so that a click refines the object instead of replacing it.
    region = sam(selection.image, [point])
    return dataclasses.replace(
        selection, points=[*selection.points, [*point, label]], regions=[*selection.regions, region]
    )


def apply_strokes(selection, layer):
    """Take the brush strokes of the app's editor layer into the selection.

    Args:
        selection: the `Selection`.
        layer: RGBA PIL image at display size (or None: no strokes): strokes in `ADD_COLOUR` add to the object,
            in `REMOVE_COLOUR` remove from it; the eraser takes strokes back.

    Returns:
        A new `Selection` whose `added`/`removed` masks are the layer's strokes at the photo's size: soft-edged
        (the brush's own edge, scaled up) where the object mask is soft, hard (0 or 255) where it is hard.
    """
    if layer is None:
        return clear_strokes(selection)
    rgba = np.asarray(layer.convert("RGBA")).astype(np.int16)
    coverage = np.clip(rgba[..., 3] / (255 * STROKE_OPACITY), 0, 1)  # 1 where painted, less on the edge
    coverage[rgba[..., 3] < 16] = 0  # faint traces of the eraser
    adds = np.where(rgba[..., 1] > rgba[..., 0], coverage, 0)
    removes = np.where(rgba[..., 0] > rgba[..., 1], coverage, 0)
    soft = _is_soft(object_mask(selection, strokes=False))

    def to_photo(strokes):
        mask = PIL.Image.fromarray(np.round(strokes * 255).astype(np.uint8), "L")
        mask = mask.resize(selection.image.size, PIL.Image.BILINEAR)
        return mask if soft else mask.point(lambda v: 255 if v >= 128 else 0)

    return dataclasses.replace(selection, added=to_photo(adds), removed=to_photo(removes))


def _is_soft(mask):
    """Whether a mask has soft edges (a matte, a blurred mask): more pixels between 0 and 255 than twice its
    outline's length, which is about as many as a resize leaves around a hard mask."""
    values = np.asarray(mask)
    inside = values >= OBJECT_THRESHOLD
    outline = np.count_nonzero(inside[1:] != inside[:-1]) + np.count_nonzero(inside[:, 1:] != inside[:, :-1])
    return np.count_nonzero((values > 0) & (values < 255)) > 2 * outline


def clear_clicks(selection):
    """The selection without its clicked points; the brush strokes are kept."""
    return dataclasses.replace(selection, points=[], regions=[])


def clear_strokes(selection):
    """The selection without its brush strokes; the clicked points are kept."""
    return dataclasses.replace(selection, added=None, removed=None)


def cutout(selection):
    """The photo with the selected object as its alpha channel (RGBA): one file that `photobg generate`
    reads as this exact selection."""
    rgba = selection.image.copy()
    rgba.putalpha(object_mask(selection))
    return rgba


def describe(selection):
    """Where the object mask comes from, in words ("No object yet." for a photo without one)."""
    edits = []
    if selection.points:
        on = sum(1 for *_, label in selection.points if label == 1)
        edits.append(f"{on} point(s) on and {len(selection.points) - on} off the object (SAM)")
    if any(m is not None and m.getbbox() for m in (selection.added, selection.removed)):
        edits.append("brush strokes")
    if selection.source == "none":
        return f"Object from your {' and '.join(edits)}." if edits else "No object yet."
    source = {"alpha": "its alpha channel", "mask": f"the mask {selection.mask_name}"}.get(selection.source)
    source = source or f"the {selection.source.split(':', 1)[1]} segmenter"
    return f"Object from {source}" + (f", edited: {' and '.join(edits)}" if edits else "") + "."
