"""The method's conventions: what the object mask, the inpaint mask and the control image are, how inputs line up
with outputs, and the working size. The pipelines, training, the CLI, the API and the evaluation all take them
from here.

`object_mask` is white (255) on the object to keep, soft values allowed: binarised at `OBJECT_THRESHOLD` (128)
for the UNet, kept soft for the control image and the paste-back (`matting.py`). `mask_image`/`control_image`
(diffusers' and the original code's inputs) are white on the region to generate. The functions below are the only
place these conventions (and the lining-up of inputs with outputs, `line_up`) are turned into tensors.

This room imports only torch, numpy and PIL (no diffusers): it travels with the pipeline files as a Hub custom
pipeline, and the mask helpers (`photobg.masks`) load without diffusers' pipelines.
"""

import numpy as np
import PIL.Image
import torch

__all__ = [
    "OBJECT_THRESHOLD",
    "as_object_mask",
    "has_alpha",
    "inpaint_mask_from_object",
    "line_up",
    "make_control_image",
    "object_coverage_problem",
    "object_mask_to_tensor",
    "split_cutout",
    "split_object",
    "unet_input",
    "working_size",
]

OBJECT_THRESHOLD = 128  # object_mask >= 128 (of 255) is object


def split_object(image, object_mask=None):
    """Split an input into its RGB image and its object mask.

    Args:
        image: PIL image (any mode) or uint8 array (H, W), (H, W, 3) or (H, W, 4). Its transparency (RGBA, LA,
            or a palette with transparency) is the object mask when `object_mask` is not given.
        object_mask: anything `as_object_mask` reads, white = object.

    Returns:
        (RGB PIL image, object mask as an "L" PIL image, or None when there is neither mask nor transparency).
    """
    rgb, alpha = split_cutout(image)
    return rgb, alpha if object_mask is None else as_object_mask(object_mask)


def has_alpha(image):
    """Whether `image` (PIL or array) has transparency, i.e. is a cutout whose alpha is the object."""
    if not isinstance(image, PIL.Image.Image):
        array = np.asarray(image)
        if array.ndim != 3 or array.shape[2] not in (2, 4):
            return False
        image = PIL.Image.fromarray(array)
    return _transparency(image) is not None


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


def object_coverage_problem(object_mask):
    """Why an object mask cannot be used: "empty" (no pixel >= `OBJECT_THRESHOLD`, nothing to keep), "full"
    (every pixel is object, nothing to generate), or None when it can."""
    binary = np.asarray(object_mask) >= OBJECT_THRESHOLD
    if not binary.any():
        return "empty"
    return "full" if binary.all() else None


def object_mask_to_tensor(object_mask, size):
    """An object mask ("L" PIL image) resized (bilinear) to `size` = (width, height), as (1, 1, H, W) in [0, 1]."""
    if object_mask.size != tuple(size):
        object_mask = object_mask.resize(tuple(size), PIL.Image.BILINEAR)
    return torch.from_numpy(np.asarray(object_mask, dtype=np.float32) / 255.0)[None, None]


def inpaint_mask_from_object(object_mask):
    """The UNet's binary inpaint mask (1 = region to generate) from a soft object mask tensor in [0, 1]: object
    where the mask is >= 128/255, as the authors binarise (only) the UNet's mask at 0.5."""
    return (object_mask < 0.5).to(object_mask.dtype)


def make_control_image(image, inpaint_mask, unet_in_channels):
    """The ControlNet's conditioning image, the same in training and at inference.

    The mask stays soft here, as in the authors' training (the inverted, resized soft matte) and notebook (a
    soft map): only the UNet's mask is binarised (`inpaint_mask_from_object`).

    Args:
        image: (B, 3, H, W) in [-1, 1].
        inpaint_mask: (B, 1, H, W) in [0, 1], 1 = region to generate; soft values are kept (pass
            `1 - object_mask` for a soft object mask).
        unet_in_channels: 9 (inpaint variant) or 4 (base variant).

    Returns:
        (B, 3, H, W) in [0, 1]: the inpaint mask as 3 channels (inpaint variant), or the object's pixels on
        black, weighted by the soft object mask (base variant).
    """
    if unet_in_channels == 9:
        return inpaint_mask.expand(-1, 3, -1, -1).clone()
    return (image + 1) / 2 * (1 - inpaint_mask)


def unet_input(latents, mask, masked_image_latents):
    """The UNet's (and the inpaint ControlNet's) input: 4 latent channels, plus for a 9-channel UNet the
    latent-size inpaint mask and the masked-image latents. Pass `mask=None` for a 4-channel UNet."""
    if mask is None:
        return latents  # (B, 4, h, w)
    return torch.cat([latents, mask, masked_image_latents], dim=1)  # (B, 9, h, w)


def working_size(size, long_side=None, multiple=8):
    """The size to generate at for an image of `size` = (width, height): the same aspect ratio, the long side
    scaled to `long_side` (default: kept), each side rounded to the nearest multiple of `multiple` (and at least
    `multiple`). The one rounding rule of the pipeline's object mode and the API."""
    scale = 1.0 if long_side is None else long_side / max(size)
    return tuple(max(multiple, round(side * scale / multiple) * multiple) for side in size)


def line_up(n_given, batch_size, num_images_per_prompt, what):
    """Which input serves each output: the one lining-up rule for images, masks, control images, generators
    and the objects pasted back.

    A call makes `batch_size * num_images_per_prompt` outputs, prompt by prompt. A list of inputs may hold one
    item for every output, one per prompt (serving that prompt's images) or one per output.

    Args:
        n_given: how many items were given.
        batch_size: the number of prompts.
        num_images_per_prompt: images per prompt.
        what: the argument's name, for the error message.

    Returns:
        list of `batch_size * num_images_per_prompt` indices into the given items, one per output.

    Raises:
        ValueError: naming the argument and both counts, when `n_given` is none of 1, `batch_size` and the
            number of outputs.
    """
    total = batch_size * num_images_per_prompt
    if n_given == 1:
        return [0] * total
    if n_given == batch_size:
        return [k // num_images_per_prompt for k in range(total)]
    if n_given == total:
        return list(range(total))
    raise ValueError(
        f"Got {n_given} `{what}` for {total} output{'s' * (total != 1)} ({batch_size} prompt{'s' * (batch_size != 1)} "
        f"x {num_images_per_prompt} per prompt): pass 1, one per prompt ({batch_size}) or one per output ({total})."
    )
