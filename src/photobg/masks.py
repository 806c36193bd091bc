"""Images and object masks at the API edge: file loading and the object-mask conventions.

The tensor-level conventions (object mask -> inpaint mask, control image, paste-back) live in the
self-contained pipeline file so that it also works as a Hub custom pipeline; they are re-exported here.
"""

from pathlib import Path

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
