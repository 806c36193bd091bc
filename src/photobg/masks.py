"""Images and object masks at the API edge: file loading and the object-mask conventions.

The tensor-level conventions (object mask -> inpaint mask, control image, paste-back) live in the
self-contained pipeline file so that it also works as a Hub custom pipeline; they are re-exported here.
"""

import math
import warnings
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageOps

from .pipeline_controlnet_inpaint import (  # noqa: F401  (re-exported conventions)
    OBJECT_THRESHOLD,
    has_alpha,
    inpaint_mask_from_object,
    make_control_image,
    object_mask_to_tensor,
    paste_object,
    split_object,
)


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


# ----------------------------------------------------------------------------- pixel formats

# Pillow's own conversion of these modes to "L"/"RGB" clips at 255 instead of scaling, so they are scaled here.
_WIDE_GRAY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def _gray_array(image):
    """A gray PIL image as a uint8 array: 16-bit scaled from 0..65535, float from 0..1, 8-bit as it is."""
    array = np.asarray(image)
    if image.mode == "F":
        scale = 255.0 if array.max(initial=0) <= 1 else 1.0
        return np.clip(np.round(array * scale), 0, 255).astype(np.uint8)
    if image.mode in _WIDE_GRAY_MODES:
        return np.clip(np.round(array.astype(np.float64) / 257), 0, 255).astype(np.uint8)
    return np.asarray(image.convert("L"))


def split_cutout(image):
    """An input photo as (RGB image, alpha or None): the alpha only where the image has transparency.

    Any Pillow mode is accepted: grayscale (8- or 16-bit), palette (its transparency is an alpha channel),
    CMYK, RGBA/LA. An alpha channel that is opaque everywhere carries no object and is dropped.

    Args:
        image: PIL image, or uint8 array (H, W), (H, W, 3) or (H, W, 4).

    Returns:
        (RGB PIL image, "L" alpha image or None).
    """
    if not isinstance(image, PIL.Image.Image):
        image = PIL.Image.fromarray(np.asarray(image))
    alpha = _transparency(image)
    if image.mode in _WIDE_GRAY_MODES:
        image = PIL.Image.fromarray(_gray_array(image), "L")
    return image.convert("RGB"), alpha


def _transparency(image):
    """The alpha channel ("L") of an image that has one and is not opaque everywhere, else None."""
    if image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
        alpha = image.convert("RGBA").getchannel("A")
        if alpha.getextrema()[0] < 255:
            return alpha
    return None


def as_object_mask(mask):
    """An object mask in any common form as an "L" image, white (255) = object. The rules, one per kind:

    - an alpha channel with transparency (a cutout, an RGBA/LA mask, a palette with transparency): the alpha;
    - 16-bit gray: scaled from 0..65535 to 0..255 when it uses that range (has values above 255);
    - float arrays: scaled from 0..1; bool arrays: True = object;
    - RGB, CMYK and palette masks: the brightest channel, so a white or a coloured object on black both count;
    - a mask whose only values are 0 and 1 (a label map): 1 = object.

    Soft values are kept; `OBJECT_THRESHOLD` binarises where needed.

    Args:
        mask: PIL image or array (H, W) / (H, W, C) of uint8, uint16, bool or float.

    Returns:
        "L" PIL image.
    """
    if not isinstance(mask, PIL.Image.Image):
        array = np.asarray(mask)
        if array.dtype == bool:
            return PIL.Image.fromarray(array.astype(np.uint8) * 255, "L")
        if np.issubdtype(array.dtype, np.floating):
            return PIL.Image.fromarray(np.clip(np.round(array * 255), 0, 255).astype(np.uint8), "L")
        mask = PIL.Image.fromarray(array)
    alpha = _transparency(mask)
    if alpha is not None:
        return alpha
    if mask.mode == "F":
        gray = _gray_array(mask)
    elif mask.mode in _WIDE_GRAY_MODES:
        gray = np.asarray(mask, dtype=np.float64)
        gray = np.round(gray / 257 if gray.max(initial=0) > 255 else gray).clip(0, 255).astype(np.uint8)
    elif mask.mode in ("L", "1"):
        gray = np.asarray(mask.convert("L"))
    else:
        gray = np.asarray(mask.convert("RGB")).max(axis=2)
    if gray.max(initial=0) == 1:  # a label map: 1 = object
        gray = gray * 255
    return PIL.Image.fromarray(gray, "L")


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

# Where the content goes in the free space of the canvas: (fraction across, fraction down).
POSITIONS = {
    "center": (0.5, 0.5),
    "top": (0.5, 0.0),
    "bottom": (0.5, 1.0),
    "left": (0.0, 0.5),
    "right": (1.0, 0.5),
    "top-left": (0.0, 0.0),
    "top-right": (1.0, 0.0),
    "bottom-left": (0.0, 1.0),
    "bottom-right": (1.0, 1.0),
}


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


def place_on_canvas(image, object_mask, size, object_scale=None, position="center"):
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
