"""Paste-back: the halo of the old background in the object's soft edge, and the cost at full resolution.

1. Halo: an object (a crop of skimage's astronaut) photographed on pure red with a soft edge, its background
   replaced by green. "Red" is the mean excess of the red channel over the ideal composite (the object's true
   colours over green) in the soft edge, in 0-255 levels: blending the photo's own pixels (photobg 0.1) keeps
   alpha * (1 - alpha) of the old red; blending the estimated foreground colour does not. With
   `pip install pymatting` the same figure for pymatting's `estimate_foreground_ml` is printed too.
2. Full resolution: upscaling a 512 px result to a 6000x4000 photo and pasting the object back with a soft
   edge, today (tiles around the soft edge, row strips) and as photobg 0.1 did (full-frame float32): time and
   the peak rise of resident memory.

    python bench/paste_back.py [--size 6000x4000]
"""

import argparse
import time

import numpy as np
import skimage.data
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFilter

from photobg.bench import peak_memory
from photobg.masks import parse_size
from photobg.matting import estimate_foreground, restore_size


def object_on_red(size=256, ramp=16):
    true = skimage.data.astronaut()[60 : 60 + size, 120 : 120 + size].astype(np.float32) / 255
    yy, xx = np.mgrid[0:size, 0:size]
    mask = np.round(np.clip((size * 0.35 - np.hypot(xx - size / 2, yy - size / 2)) / ramp, 0, 1) * 255)
    alpha = (mask / 255.0)[..., None]
    photo = np.round((alpha * true + (1 - alpha) * np.array([1.0, 0.0, 0.0])) * 255).astype(np.uint8)
    return true, photo, mask.astype(np.uint8)


def halo(ramp):
    true, photo, mask = object_on_red(ramp=ramp)
    alpha = (mask / 255.0)[..., None]
    green = np.array([0.0, 1.0, 0.0])
    ideal = alpha * true + (1 - alpha) * green
    band = (mask > 0) & (mask < 255)

    def red(foreground):  # foreground in [0, 1]
        composite = alpha * foreground + (1 - alpha) * green
        return (composite[band, 0] - ideal[band, 0]).mean() * 255, np.abs(composite - ideal)[band].mean() * 255

    rows = {"photo's own pixels (photobg 0.1)": red(photo / 255.0)}
    start = time.perf_counter()
    rows["estimated foreground (photobg)"] = red(estimate_foreground(photo, mask) / 255.0)
    seconds = {"estimated foreground (photobg)": time.perf_counter() - start}
    try:
        from pymatting import estimate_foreground_ml

        estimate_foreground_ml(photo[:16, :16] / 255.0, mask[:16, :16] / 255.0)  # compile outside the timing
        start = time.perf_counter()
        rows["pymatting estimate_foreground_ml"] = red(estimate_foreground_ml(photo / 255.0, mask / 255.0))
        seconds["pymatting estimate_foreground_ml"] = time.perf_counter() - start
    except ImportError:
        pass
    print(f"halo, {band.sum()} soft-edge pixels ({ramp} px ramp), 0-255 levels in the soft edge:")
    for name, (excess, error) in rows.items():
        timing = f", {seconds[name]:.2f} s" if name in seconds else ""
        print(f"  {name:34s} red excess {excess:5.2f}, mean error vs ideal {error:5.2f}{timing}")


def full_resolution(width, height):
    photo = np.asarray(Image.fromarray(skimage.data.coffee()).resize((width, height), Image.BICUBIC))
    mask = Image.new("L", (width, height))
    ImageDraw.Draw(mask).ellipse((width // 4, height // 10, width * 3 // 4, height * 9 // 10), fill=255)
    mask = np.asarray(mask.filter(ImageFilter.GaussianBlur(4)))  # a soft edge about 16 px wide
    generated = torch.rand(3, 344, 512)
    soft = int(((mask > 0) & (mask < 255)).sum())
    print(f"full resolution {width}x{height}, {soft / 1e6:.2f} MP of soft edge, 512x344 result upscaled:")
    device = torch.device("cpu")
    with peak_memory(device) as memory:
        start, cpu = time.perf_counter(), time.process_time()
        result = restore_size(generated, (width, height), estimate_foreground(photo, mask), mask)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    exact = np.array_equal(result[mask == 255], photo[mask == 255])
    del result
    with peak_memory(device) as old_memory:
        start, old_cpu = time.perf_counter(), time.process_time()
        old = _paste_as_before(generated, photo, mask)
        old_seconds, old_cpu = time.perf_counter() - start, time.process_time() - old_cpu
    del old
    megapixels = width * height / 1e6
    print(
        f"  photobg (tiles + strips):   {seconds:5.1f} s ({cpu:.1f} s CPU), peak +{memory['peak_mb']:5.0f} MB "
        f"({memory['peak_mb'] / megapixels:.1f} MB/MP); object exact: {exact}"
    )
    print(
        f"  photobg 0.1 (full frame):   {old_seconds:5.1f} s ({old_cpu:.1f} s CPU), "
        f"peak +{old_memory['peak_mb']:5.0f} MB "
        f"({old_memory['peak_mb'] / megapixels:.1f} MB/MP), without foreground estimation"
    )


def _paste_as_before(generated, photo, mask):
    """photobg 0.1's paste-back: a full-frame float32 upscale and blend, then uint8."""
    upscaled = F.interpolate(generated[None], photo.shape[:2], mode="bicubic", antialias=True)[0].clamp(0, 1)
    upscaled = upscaled.permute(1, 2, 0).numpy()
    alpha = (mask.astype(np.float32) / 255.0)[..., None]
    blended = alpha * (photo.astype(np.float32) / 255.0) + (1 - alpha) * upscaled
    return (blended * 255).round().astype(np.uint8)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="6000x4000", help="photo size WxH (default: %(default)s)")
    args = parser.parse_args()
    for ramp in (4, 16):
        halo(ramp)
    full_resolution(*parse_size(args.size))


if __name__ == "__main__":
    main()
