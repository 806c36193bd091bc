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

DISPLAY_SIZE = 1024  # long side, in pixels, of the photo as the browser shows it
OBJECT_TINT = (37, 99, 235)  # the overlay's colour on the object
# Brush colours of the app's editor: strokes in the first add to the object, in the second remove from it.
ADD_COLOUR, REMOVE_COLOUR = (0, 192, 0), (224, 0, 0)
POINT_COLOURS = {1: (0, 200, 0), 0: (230, 0, 0)}  # clicked points: on the object / not on it


@dataclass
class Selection:
    """A photo and what the user chose as its object.

    The object mask is the automatic one (alpha, mask file or segmenter), or SAM's answer to the clicked
    points once there are any, with brush strokes painted over it (see `object_mask`).
    """

    name: str  # the photo's file name, for messages and commands
    image: PIL.Image.Image  # RGB, full resolution, EXIF orientation applied
    automatic: PIL.Image.Image  # "L", white = object: from the alpha channel, the mask file or the segmenter
    source: str  # where `automatic` came from: "alpha", "mask" or "segmenter:NAME"
    mask_name: str | None = None  # the uploaded mask's file name, when there is one
    points: list = field(default_factory=list)  # [x, y, label] in photo pixels; label 1 = object, 0 = not
    clicked: PIL.Image.Image | None = None  # SAM's mask for `points`
    added: PIL.Image.Image | None = None  # brush strokes that add to the object (255), photo size
    removed: PIL.Image.Image | None = None  # brush strokes that remove from it (255), photo size

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
    mask_name = Path(mask).name if mask is not None and source == "mask" else None
    return Selection(Path(photo).name, rgb, automatic.convert("L"), source, mask_name)


def object_mask(selection):
    """The object mask the pipeline keeps ("L", white = object): the automatic mask, or SAM's for the clicked
    points, then the brush strokes (added ones set to 255, removed ones to 0)."""
    mask = selection.clicked if selection.clicked is not None else selection.automatic
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
    """Add a clicked point and ask SAM for the object from all points so far.

    Args:
        selection: the `Selection`.
        sam: a `segment.Sam`.
        x, y: the click, in pixels of the photo as displayed (`display_size`).
        label: 1 = on the object, 0 = not on it.

    Returns:
        A new `Selection`.

    Raises:
        ValueError: when the click is outside the photo, or there is nothing to segment from.
    """
    width, height = display_size(selection.image.size)
    if not (0 <= x < width and 0 <= y < height):
        raise ValueError(f"the click at ({x}, {y}) is outside the photo ({width}x{height} as shown); click on it.")
    scale = selection.image.width / width
    points = [
        *selection.points,
        [min(int(x * scale), selection.image.width - 1), min(int(y * scale), selection.image.height - 1), label],
    ]
    box = None
    if not any(label == 1 for _, _, label in points):
        # Points off the object alone do not say which object: they cut parts off the automatic one.
        box = selection.automatic.point(lambda v: 255 if v >= OBJECT_THRESHOLD else 0).getbbox()
        if box is None:
            raise ValueError("click on the object first: points off the object only remove parts of it.")
    clicked = sam(selection.image, [p[:2] for p in points], labels=[p[2] for p in points], box=box)
    return dataclasses.replace(selection, points=points, clicked=clicked)


def apply_strokes(selection, layer):
    """Take the brush strokes of the app's editor layer into the selection.

    Args:
        selection: the `Selection`.
        layer: RGBA PIL image at display size (or None: no strokes): strokes in `ADD_COLOUR` add to the object,
            in `REMOVE_COLOUR` remove from it; the eraser takes strokes back.

    Returns:
        A new `Selection` whose `added`/`removed` masks are the layer's strokes at the photo's size.
    """
    if layer is None:
        return dataclasses.replace(selection, added=None, removed=None)
    rgba = np.asarray(layer.convert("RGBA")).astype(np.int16)
    painted = rgba[..., 3] >= 64  # the strokes' soft edges below this are left out
    adds = painted & (rgba[..., 1] > rgba[..., 0])
    removes = painted & (rgba[..., 0] > rgba[..., 1])

    def to_photo(strokes):
        mask = PIL.Image.fromarray(strokes.astype(np.uint8) * 255, "L").resize(selection.image.size, PIL.Image.BILINEAR)
        return mask.point(lambda v: 255 if v >= 128 else 0)

    return dataclasses.replace(selection, added=to_photo(adds), removed=to_photo(removes))


def reset(selection):
    """The selection with its automatic mask again: points and strokes dropped."""
    return dataclasses.replace(selection, points=[], clicked=None, added=None, removed=None)


def cutout(selection):
    """The photo with the selected object as its alpha channel (RGBA): one file that `photobg generate`
    reads as this exact selection."""
    rgba = selection.image.copy()
    rgba.putalpha(object_mask(selection))
    return rgba


def describe(selection):
    """Where the object mask comes from, in words."""
    source = {"alpha": "its alpha channel", "mask": f"the mask {selection.mask_name}"}.get(selection.source)
    source = source or f"the {selection.source.split(':', 1)[1]} segmenter"
    edits = []
    if selection.points:
        on = sum(1 for *_, label in selection.points if label == 1)
        edits.append(f"{on} point(s) on and {len(selection.points) - on} off the object (SAM)")
    if any(m is not None and m.getbbox() for m in (selection.added, selection.removed)):
        edits.append("brush strokes")
    return f"Object from {source}" + (f", edited: {' and '.join(edits)}" if edits else "") + "."
