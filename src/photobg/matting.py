"""The paste-back: the original object composited over a generated image with its soft mask, without a halo.

In the soft edge the photo mixes the object with its old background; `estimate_foreground` recovers the object's
own colour there (multi-level foreground estimation, Germer et al. 2020), `paste_object` blends it over the
generated image, and `restore_size` upscales a generated image to the input's size and pastes the object back in
strips. The pipeline's object mode calls these after decoding (`BackgroundMethodMixin._decode`).

This room imports only torch and numpy: it travels with the pipeline files as a Hub custom pipeline.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["PASTE_MARGIN", "PASTE_ROWS", "PASTE_TILE", "estimate_foreground", "paste_object", "restore_size"]

PASTE_TILE = 256  # foreground colours are estimated in tiles of this size (plus a margin) around the soft edge
PASTE_MARGIN = 32
PASTE_ROWS = 256  # the full-size output is upscaled and composited this many rows at a time


def estimate_foreground(image, object_mask, device=None):
    """The object's own colour in its soft edge, where the photo mixes it with the old background.

    Only pixels with 0 < mask < 255 change; they get the foreground colour F of the matting equation
    image = alpha * F + (1 - alpha) * B, estimated by `_foreground_ml` (the multi-level method of Germer et
    al., 2020, pymatting's `estimate_foreground_ml`) on tiles around the soft edge, so memory does not grow
    with the photo's size beyond one uint8 copy.

    Args:
        image: (H, W, 3) uint8 array.
        object_mask: (H, W) uint8 array, 255 = object.
        device: where to compute (default CPU); tiles are moved there one at a time.

    Returns:
        (H, W, 3) uint8 array: `image`, with the estimated foreground colour where the mask is soft.
    """
    image, object_mask = np.asarray(image), np.asarray(object_mask)
    foreground = image.copy()
    height, width = object_mask.shape
    for top in range(0, height, PASTE_TILE):
        for left in range(0, width, PASTE_TILE):
            core = object_mask[top : top + PASTE_TILE, left : left + PASTE_TILE]
            soft = (core > 0) & (core < 255)
            if not soft.any():
                continue
            y0, x0 = max(0, top - PASTE_MARGIN), max(0, left - PASTE_MARGIN)
            y1, x1 = min(height, top + PASTE_TILE + PASTE_MARGIN), min(width, left + PASTE_TILE + PASTE_MARGIN)
            pixels = torch.from_numpy(image[y0:y1, x0:x1].copy()).to(device).permute(2, 0, 1).float() / 255
            alpha = torch.from_numpy(object_mask[y0:y1, x0:x1].copy()).to(device).float()[None] / 255
            estimate = (_foreground_ml(pixels, alpha) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
            estimate = estimate[top - y0 : top - y0 + core.shape[0], left - x0 : left - x0 + core.shape[1]]
            foreground[top : top + core.shape[0], left : left + core.shape[1]][soft] = estimate[soft]
    return foreground


def _foreground_ml(image, alpha, regularization=1e-5, gradient_weight=1.0, small_size=32, iterations=(10, 2)):
    """Multi-level foreground estimation (Germer, Uelwer, Conrad, Harmeling: "Fast Multi-Level Foreground
    Estimation", ICPR 2020), with pymatting's defaults.

    Minimises sum (alpha F + (1 - alpha) B - image)^2 + sum over 4-neighbours of (regularization +
    gradient_weight |alpha_i - alpha_j|) (|F_i - F_j|^2 + |B_i - B_j|^2), from a 1-pixel image up to full
    size, each level starting from the one before. Each sweep solves every pixel's 2x2 system given its
    neighbours, on one colour of a checkerboard and then the other (as Gauss-Seidel does, but vectorised).

    Args:
        image: (3, H, W) in [0, 1]; alpha: (1, H, W) in [0, 1].
        iterations: sweeps per level while the level has at most `small_size`^2 pixels, and after.

    Returns:
        (3, H, W) foreground colour in [0, 1].
    """
    height, width = image.shape[1:]
    levels = max(1, math.ceil(math.log2(max(height, width))))
    estimate = image.mean(dim=(1, 2), keepdim=True).repeat(2, 1, 1)  # (6, 1, 1): foreground, then background
    for level in range(levels + 1):
        size = (round(height ** (level / levels)), round(width ** (level / levels)))
        level_image, level_alpha, estimate = (
            F.interpolate(x[None], size=size, mode="nearest")[0] for x in (image, alpha, estimate)
        )
        system = _level_system(level_image, level_alpha, regularization, gradient_weight)
        rows, columns = (torch.arange(n, device=image.device) for n in size)
        rows, columns = torch.meshgrid(rows, columns, indexing="ij")
        black = ((rows + columns) % 2 == 0)[None]
        for _ in range(iterations[0] if size[0] * size[1] <= small_size**2 else iterations[1]):
            for squares in (black, ~black):
                estimate = torch.where(squares, _foreground_sweep(estimate, *system), estimate)
    return estimate[:3]


def _neighbours(x):
    """x's up, down, left and right neighbours; outside the image a border pixel is its own neighbour."""
    padded = F.pad(x[None], (1, 1, 1, 1), mode="replicate")[0]
    return padded[:, :-2, 1:-1], padded[:, 2:, 1:-1], padded[:, 1:-1, :-2], padded[:, 1:-1, 2:]


def _level_system(image, alpha, regularization, gradient_weight):
    """What stays fixed while one level is swept: the neighbours' weights, the inverse of each pixel's matrix
    [[a^2 + W, a(1-a)], [a(1-a), (1-a)^2 + W]] (W: the sum of its weights), and the data terms (a I, (1-a) I)."""
    weights = [regularization + gradient_weight * (alpha - a).abs() for a in _neighbours(alpha)]  # 4 x (1, h, w)
    total = sum(weights)
    a00, a01, a11 = alpha * alpha + total, alpha * (1 - alpha), (1 - alpha) ** 2 + total
    det = a00 * a11 - a01 * a01
    return weights, (a11 / det, -a01 / det, a00 / det), torch.cat([alpha * image, (1 - alpha) * image])


def _foreground_sweep(estimate, weights, inverse, data):
    """Every pixel's (F, B) minimising the energy of `_foreground_ml` with its neighbours held fixed."""
    rhs = data + sum(w * n for w, n in zip(weights, _neighbours(estimate)))  # (6, h, w)
    (i00, i01, i11), f, b = inverse, rhs[:3], rhs[3:]
    return torch.cat([i00 * f + i01 * b, i01 * f + i11 * b]).clamp(0, 1)


def paste_object(generated, original, object_mask):
    """Composite the original object over a generated image with the soft object mask.

    Where the mask is 255 the result is the original exactly, where it is 0 the generated image; in the soft
    edge between them the object's estimated foreground colour (`estimate_foreground`) is blended in, so the
    photo's old background does not show as a halo around the object.

    Args:
        generated: (H, W, 3) float array in [0, 1].
        original: (H, W, 3) uint8 array.
        object_mask: (H, W) uint8 array, 255 = object.

    Returns:
        (H, W, 3) float32 array; where the mask is 255 it equals `original / 255` exactly.
    """
    return _composite(generated, estimate_foreground(original, object_mask), object_mask)


def _composite(generated, foreground, object_mask):
    """alpha * foreground + (1 - alpha) * generated, as float32 in [0, 1] (foreground and mask uint8)."""
    alpha = (np.asarray(object_mask, dtype=np.float32) / 255.0)[..., None]
    return alpha * (np.asarray(foreground, dtype=np.float32) / 255.0) + (1 - alpha) * generated


def restore_size(generated, size, foreground=None, object_mask=None, as_uint8=True):
    """A generated image upscaled to `size` (bicubic, antialiased) and, with a foreground, the object pasted
    back (`_composite`), `PASTE_ROWS` rows at a time: no full-size float copy when the result is uint8.

    Args:
        generated: (3, h, w) float tensor in [0, 1].
        size: (width, height) of the result.
        foreground: (H, W, 3) uint8 array from `estimate_foreground`, or None to paste nothing.
        object_mask: (H, W) uint8 array, 255 = object (with `foreground`).
        as_uint8: return uint8 (else float32 in [0, 1]).

    Returns:
        (H, W, 3) array.
    """
    width, height = size
    generated = generated.float().cpu()
    # The resize as one matrix per axis (F.interpolate on an identity), so each strip is two small matmuls.
    rows = _resize_matrix(generated.shape[1], height)  # (H, h)
    columns = _resize_matrix(generated.shape[2], width)  # (W, w)
    result = np.empty((height, width, 3), np.uint8 if as_uint8 else np.float32)
    for top in range(0, height, PASTE_ROWS):
        strip = (rows[top : top + PASTE_ROWS] @ generated @ columns.T).clamp(0, 1)  # (3, rows, W)
        strip = strip.permute(1, 2, 0).numpy()
        if foreground is not None:
            bottom = top + strip.shape[0]
            strip = _composite(strip, foreground[top:bottom], object_mask[top:bottom])
        result[top : top + strip.shape[0]] = np.round(strip * 255) if as_uint8 else strip
    return result


def _resize_matrix(size_in, size_out):
    """(size_out, size_in): F.interpolate's antialiased bicubic resize along one axis, as a matrix."""
    if size_in == size_out:
        return torch.eye(size_in)
    identity = torch.eye(size_in)[None, None]  # resized along one axis only: the other keeps its size
    return F.interpolate(identity, size=(size_out, size_in), mode="bicubic", antialias=True)[0, 0]
