"""Images and object masks at the API edge: file loading and the object-mask conventions.

The tensor-level conventions (object mask -> inpaint mask, control image, paste-back) live in the
self-contained pipeline file so that it also works as a Hub custom pipeline; they are re-exported here.
"""

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


def load_object_mask(path):
    """Open an object-mask file as an "L" image, white (255) = object, whatever way the file stores it.

    Rules, in order: a file with a non-opaque alpha channel (a cutout, or an RGBA/LA mask) is its alpha;
    16-bit masks are scaled from 0..65535 to 0..255; RGB and palette masks take the brightest
    channel, so a white or a coloured object on black both count; a mask whose only values are 0 and 1 is a
    label map (1 = object). Soft values are kept; `OBJECT_THRESHOLD` binarises where needed.

    Raises:
        ValueError: naming the file, when it is missing or not a readable image.
    """
    image = load_image(path)
    if has_alpha(image):
        alpha = image.convert("RGBA").getchannel("A")
        if alpha.getextrema()[0] < 255:
            return alpha
        image = image.convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image.convert("I"), dtype=np.float64)
        array = array / 65535 * 255 if array.max(initial=0) > 255 else array
    elif image.mode in ("RGB", "CMYK", "YCbCr", "LAB", "HSV", "P"):
        array = np.asarray(image.convert("RGB")).max(axis=2)
    else:
        array = np.asarray(image.convert("L"))
    if array.max(initial=0) == 1:  # a 0/1 label map
        array = array * 255
    return PIL.Image.fromarray(np.clip(np.round(array), 0, 255).astype(np.uint8), "L")
