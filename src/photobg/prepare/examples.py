"""Turning one enumerated example (file paths) into a training row: decode, orient, check, resize, encode.

Runs in worker processes, so it imports only PIL, numpy and (for COCO) pycocotools. The rules:
  - images: EXIF orientation applied; CMYK, grayscale, 16-bit and palette images become RGB, an alpha
    channel is dropped (each noted in the card);
  - masks: read by `photobg.masks.load_object_mask` (white = object; 16-bit, RGB and alpha masks handled);
    masks are taken to be drawn on the upright (EXIF-applied) image, except a mask whose size matches only
    the stored orientation (and COCO masks, which are drawn on the stored pixels): those get the image's
    EXIF rotation too;
  - a mask of another size than its image with the same aspect ratio (within 1%) is resized to the image
    (bilinear; noted) unless `mask_mismatch="skip"`; any other size mismatch is skipped;
  - masks with no object pixel (>= OBJECT_THRESHOLD) or no background pixel are skipped;
  - optional downscaling so the long side is <= max_side and the short side <= max_short_side (the mask
    gets exactly the same size);
  - an image that needs no change keeps its original file bytes (no re-encoding); others are written as
    JPEG (quality 95, 4:4:4) when they came from a JPEG, else PNG. Masks are PNG ("L"); a mask file that
    already is such a PNG and needs no change is stored byte for byte too.
"""

import io
from dataclasses import dataclass

import numpy as np
import PIL.Image
import PIL.ImageOps

from ..masks import OBJECT_THRESHOLD, load_object_mask, object_coverage_problem

ASPECT_TOLERANCE = 0.01  # relative aspect-ratio difference under which a mismatched mask is resized
JPEG_QUALITY = 95
KEEP_BYTES_FORMATS = ("JPEG", "PNG", "WEBP")
# EXIF orientation tag -> the transpose that makes the stored pixels upright (as PIL.ImageOps.exif_transpose).
EXIF_ORIENTATION = 0x0112
EXIF_TRANSPOSE = {
    2: PIL.Image.Transpose.FLIP_LEFT_RIGHT,
    3: PIL.Image.Transpose.ROTATE_180,
    4: PIL.Image.Transpose.FLIP_TOP_BOTTOM,
    5: PIL.Image.Transpose.TRANSPOSE,
    6: PIL.Image.Transpose.ROTATE_270,
    7: PIL.Image.Transpose.TRANSVERSE,
    8: PIL.Image.Transpose.ROTATE_90,
}


@dataclass(frozen=True)
class ProcessOptions:
    """How examples are processed (part of the output's fingerprint)."""

    max_side: int | None = None
    max_short_side: int | None = None
    mask_mismatch: str = "resize"  # or "skip"


def process_item(item, options):
    """One example -> a row, or the reason it was left out.

    Args:
        item: an enumerated example (`source`, `id`, `image`, and `mask`, `alpha` or `coco`).
        options: `ProcessOptions`.

    Returns:
        dict: for a kept example `id`, `source`, `image` and `mask` (encoded bytes), `width`, `height`,
        `notes` (what was converted, for the card); for a left-out one `id`, `source`, `file`, `reason`
        (a short category) and `detail`.
    """
    try:
        return _process(item, options)
    except _Skip as skip:
        file = skip.file or item["image"]
        return {"id": item["id"], "source": item["source"], "file": file, "reason": skip.reason, "detail": skip.detail}


class _Skip(Exception):
    def __init__(self, reason, file=None, detail=""):
        super().__init__(reason)
        self.reason, self.file, self.detail = reason, file, detail


def _process(item, options):
    notes = []
    image, image_format, orientation, stored_size = _open_image(item["image"])
    plain_file = []  # the mask file, when its bytes already are the stored mask (see _plain_png_mask)
    mask = _object_mask(item, image, orientation, stored_size, notes, plain_file)
    loaded_mask = mask
    if orientation in EXIF_TRANSPOSE:
        notes.append("EXIF orientation applied")
    image_changed = image.mode != "RGB" or orientation in EXIF_TRANSPOSE
    image = _to_rgb(image, notes, alpha_is_mask=item.get("alpha", False))
    mask = _match_size(mask, image.size, options.mask_mismatch, item, notes)
    size = _target_size(image.size, options.max_side, options.max_short_side)
    if size != image.size:
        image_changed = True
        image = image.resize(size, PIL.Image.Resampling.LANCZOS)
        mask = mask.resize(size, PIL.Image.Resampling.BILINEAR)
    _check_coverage(mask, item)
    if image_changed or image_format not in KEEP_BYTES_FORMATS:
        image_bytes = _encode(image, "JPEG" if image_format == "JPEG" else "PNG")
    else:  # the file already holds exactly this RGB image: no re-encoding loss, no time spent
        image_bytes = _read(item["image"])
    # Every change to the mask (rotation, resize) makes a new image object, so identity means unchanged.
    mask_bytes = _read(plain_file[0]) if plain_file and mask is loaded_mask else _encode(mask, "PNG")
    return {
        "id": item["id"],
        "source": item["source"],
        "file": item["image"],
        "image": image_bytes,
        "mask": mask_bytes,
        "width": image.width,
        "height": image.height,
        "notes": notes,
    }


def _open_image(path):
    """(upright image, file format, EXIF orientation, stored size before orientation)."""
    try:
        with PIL.Image.open(path) as opened:
            opened.load()
            orientation = opened.getexif().get(EXIF_ORIENTATION, 1)
            image_format, stored_size = opened.format, opened.size
            image = opened.transpose(EXIF_TRANSPOSE[orientation]) if orientation in EXIF_TRANSPOSE else opened.copy()
    except FileNotFoundError:
        raise _Skip("image file missing") from None
    except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as err:
        raise _Skip("unreadable image", detail=str(err)) from None
    return image, image_format, orientation, stored_size


def _object_mask(item, image, orientation, stored_size, notes, plain_file):
    if item.get("alpha"):
        if image.mode not in ("RGBA", "LA", "PA") and not (image.mode == "P" and "transparency" in image.info):
            raise _Skip("cutout without an alpha channel")
        return image.convert("RGBA").getchannel("A")
    if "coco" in item:
        from .coco import rasterize

        try:
            mask = PIL.Image.fromarray(rasterize(item["coco"]), "L")
        except Exception as err:  # pycocotools raises bare Exception, TypeError or ValueError on bad input
            raise _Skip("invalid COCO segmentation", detail=str(err)) from None
        return _orient(mask, orientation, notes) if mask.size == stored_size else mask
    plain = mask = _plain_png_mask(item["mask"])
    if mask is None:
        try:
            mask = load_object_mask(item["mask"])
        except ValueError as err:
            raise _Skip("unreadable mask", item["mask"], detail=str(err)) from None
    if mask.size != image.size and mask.size == stored_size:
        mask = _orient(mask, orientation, notes)
    if plain is not None and mask is plain:
        plain_file.append(item["mask"])
    return mask


def _plain_png_mask(path):
    """The mask when its file is already an 8-bit grayscale PNG that `load_object_mask` would return unchanged
    (no alpha, no EXIF rotation, not a 0/1 label map), else None. Such a file's bytes can be stored as they
    are when nothing else changes the mask: the common case (DUTS, DIS5K, ...), no re-encoding."""
    try:
        with PIL.Image.open(path) as raw:
            plain = raw.format == "PNG" and raw.mode == "L" and "transparency" not in raw.info
            if not plain or raw.getexif().get(EXIF_ORIENTATION, 1) != 1:
                return None
            raw.load()
            if raw.getextrema()[1] <= 1:
                return None
            mask = raw.copy()
    except (OSError, SyntaxError, ValueError):
        return None  # load_object_mask reports it
    return mask


def _orient(mask, orientation, notes):
    if orientation not in EXIF_TRANSPOSE:
        return mask
    notes.append("mask given in stored orientation: EXIF rotation applied to it")
    return mask.transpose(EXIF_TRANSPOSE[orientation])


def _to_rgb(image, notes, alpha_is_mask=False):
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image.convert("I"), dtype=np.float64)
        scale = 65535 if array.max(initial=0) > 255 else 255
        image = PIL.Image.fromarray(np.round(array / scale * 255).astype(np.uint8), "L")
        notes.append("16-bit grayscale image converted to RGB")
    elif mode == "CMYK":
        notes.append("CMYK image converted to RGB")
    elif mode in ("L", "LA", "1", "F"):
        notes.append("grayscale image converted to RGB")
    elif mode in ("RGBA", "PA", "P") and not alpha_is_mask:
        notes.append("alpha channel dropped" if "A" in mode or "transparency" in image.info else "palette image")
    else:
        notes.append(f"{mode} image converted to RGB")
    return image.convert("RGB")


def _match_size(mask, size, mask_mismatch, item, notes):
    if mask.size == size:
        return mask
    (mw, mh), (w, h) = mask.size, size
    same_aspect = abs(mw / mh - w / h) <= ASPECT_TOLERANCE * (w / h)
    if mask_mismatch == "resize" and same_aspect:
        notes.append("mask of another size resized to its image")
        return mask.resize(size, PIL.Image.Resampling.BILINEAR)
    reason = "mask of another size than its image" + ("" if same_aspect else " and aspect ratio")
    raise _Skip(reason, item.get("mask") or item["image"], detail=f"mask {mw}x{mh}, image {w}x{h}")


def _target_size(size, max_side=None, max_short_side=None):
    """The size after downscaling so the long side <= max_side and the short side <= max_short_side."""
    width, height = size
    scale = 1.0
    if max_side:
        scale = min(scale, max_side / max(width, height))
    if max_short_side:
        scale = min(scale, max_short_side / min(width, height))
    if scale >= 1.0:
        return size
    return max(1, round(width * scale)), max(1, round(height * scale))


def _check_coverage(mask, item):
    problem = object_coverage_problem(mask)
    if problem == "empty":
        raise _Skip("empty mask", item.get("mask") or item["image"], detail=f"no pixel >= {OBJECT_THRESHOLD}")
    if problem == "full":
        raise _Skip(
            "mask covers the whole image", item.get("mask") or item["image"], detail="no background to generate"
        )


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _encode(image, image_format):
    buffer = io.BytesIO()
    if image_format == "JPEG":
        image.save(buffer, "JPEG", quality=JPEG_QUALITY, subsampling=0)  # 4:4:4, no second chroma loss
    else:
        image.save(buffer, "PNG")
    return buffer.getvalue()
