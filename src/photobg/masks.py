"""Images and object masks at the API edge: file loading and the object-mask conventions.

The tensor-level conventions (object mask -> inpaint mask, control image, the lining-up of inputs with
outputs, the working-size rounding) live in the method's rooms `photobg.conventions` and `photobg.matting`
(the paste-back), which a Hub custom pipeline carries beside its pipeline file; they are re-exported here.
"""

import math
import warnings
from pathlib import Path

import PIL.Image
import PIL.ImageOps

from .conventions import (  # noqa: F401  (re-exported conventions)
    OBJECT_THRESHOLD,
    as_object_mask,
    has_alpha,
    inpaint_mask_from_object,
    line_up,
    make_control_image,
    object_coverage_problem,
    object_mask_to_tensor,
    split_cutout,
    split_object,
    working_size,
)
from .defaults import DEFAULT_POSITION, POSITIONS
from .matting import estimate_foreground, paste_object  # noqa: F401  (re-exported)


def load_image(path):
    """Open an image file, applying its EXIF orientation; keeps an alpha channel if there is one.

    Raises:
        ValueError: naming the file, when it is missing or not a readable image.
    """
    path = Path(path)
    try:
        with PIL.Image.open(path) as image:
            image.load()
            return PIL.ImageOps.exif_transpose(image)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file.") from None
    except (OSError, SyntaxError, PIL.Image.DecompressionBombError) as err:
        raise ValueError(f"{path}: not a readable image ({err}).") from err


def load_object_mask(path):
    """Open an object-mask file as an "L" image, white (255) = object, by the rules of `as_object_mask`.

    Raises:
        ValueError: naming the file, when it is missing or not a readable image.
    """
    return as_object_mask(load_image(path))


# Masks whose aspect ratio differs from the image's by more than this fraction are refused, not stretched.
ASPECT_TOLERANCE = 0.01


def fit_mask_to_image(mask, size, name="the object mask"):
    """The size rule for masks: a mask of the image's aspect ratio but another size is resized (bilinear) to
    the image's size, with a warning; a mask of another aspect ratio is an error, since stretching it would
    misplace the object.

    Args:
        mask: "L" PIL image.
        size: the image's (width, height).
        name: how messages refer to the mask (e.g. its file name).

    Returns:
        The mask at `size`.
    """
    size = tuple(size)
    if mask.size == size:
        return mask
    (w, h), (width, height) = mask.size, size
    if abs((w / h) / (width / height) - 1) > ASPECT_TOLERANCE:
        hint = (
            " (is one of them rotated? photos are read with their EXIF orientation applied)" if (h, w) == size else ""
        )
        raise ValueError(
            f"{name} is {w}x{h} but the image is {width}x{height}: their aspect ratios differ, so the mask "
            f"cannot be resized onto the image{hint}."
        )
    warnings.warn(f"{name} is {w}x{h} but the image is {width}x{height}: resized to the image's size.", stacklevel=2)
    return mask.resize(size, PIL.Image.BILINEAR)


# ----------------------------------------------------------------------------- the output canvas


def parse_size(text):
    """'1024x768' -> (1024, 768)."""
    try:
        width, height = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise ValueError(f"Size {text!r} is not WIDTHxHEIGHT (e.g. 1024x768).") from None
    if width < 1 or height < 1:
        raise ValueError(f"Size {text!r} must be positive.")
    return width, height


def parse_aspect(text):
    """'16:9' -> (16.0, 9.0)."""
    try:
        across, down = (float(v) for v in str(text).split(":"))
    except ValueError:
        raise ValueError(f"Aspect ratio {text!r} is not W:H (e.g. 1:1, 4:5, 16:9).") from None
    if not (across > 0 and down > 0):
        raise ValueError(f"Aspect ratio {text!r} must be positive.")
    return across, down


def canvas_size(image_size, size=None, aspect=None):
    """The output canvas for an image of `image_size` = (width, height).

    Args:
        size: (width, height) or 'WxH': the canvas exactly.
        aspect: (w, h) or 'W:H': the smallest canvas of that aspect ratio that holds the whole image at its
            own resolution (so the image is padded, never scaled).

    Returns:
        (width, height); the image's own size when neither is given.
    """
    if size is not None and aspect is not None:
        raise ValueError("Give either a size or an aspect ratio, not both.")
    if size is not None:
        return parse_size(size) if isinstance(size, str) else tuple(size)
    if aspect is None:
        return tuple(image_size)
    across, down = parse_aspect(aspect) if isinstance(aspect, str) else aspect
    width, height = image_size
    if width / height < across / down:
        return math.ceil(height * across / down), height
    return width, math.ceil(width * down / across)


def place_on_canvas(image, object_mask, size, object_scale=None, position=DEFAULT_POSITION):
    """Letterbox a photo and its object mask onto a canvas, as the original notebook's resize-with-padding.

    Without `object_scale` the whole photo is scaled to fit the canvas (up or down, keeping its aspect
    ratio); with it, only the object's bounding box is, to `object_scale` of the canvas. The content is
    then put at `position` in the free space; the rest of the canvas is black in the photo and background
    (0) in the mask, so it is generated. Content that fits at its own size is copied, not resampled.

    Args:
        image: RGB PIL image.
        object_mask: "L" PIL image of the same size, white = object.
        size: the canvas (width, height).
        object_scale: fraction in (0, 1] of the canvas that the object's bounding box fills, or None.
        position: a key of `POSITIONS`.

    Returns:
        (RGB canvas image, "L" canvas mask), both of `size`.
    """
    if position not in POSITIONS:
        raise ValueError(f"Unknown position {position!r}; choose one of: {', '.join(POSITIONS)}.")
    size = tuple(size)
    if object_scale is not None and not 0 < object_scale <= 1:
        raise ValueError(f"object_scale must be in (0, 1], not {object_scale}.")
    if object_scale is None and image.size == size:
        return image, object_mask
    if object_scale is not None:
        box = object_mask.getbbox()
        if box is None:
            raise ValueError("The object mask is empty: there is no object to scale.")
        image, object_mask = image.crop(box), object_mask.crop(box)
    fit = min(size[0] / image.width, size[1] / image.height) * (object_scale or 1)
    content = (max(1, round(image.width * fit)), max(1, round(image.height * fit)))
    content = (min(content[0], size[0]), min(content[1], size[1]))
    if content != image.size:
        image = image.resize(content, PIL.Image.LANCZOS)
        object_mask = object_mask.resize(content, PIL.Image.BILINEAR)
    across, down = POSITIONS[position]
    offset = (round((size[0] - content[0]) * across), round((size[1] - content[1]) * down))
    canvas, canvas_mask = PIL.Image.new("RGB", size), PIL.Image.new("L", size)
    canvas.paste(image, offset)
    canvas_mask.paste(object_mask, offset)
    return canvas, canvas_mask
