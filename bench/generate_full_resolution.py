"""Time and peak memory of one full-resolution generation (default: a 6000x4000 photo on the tiny model).

The background is generated at the model's working size and upscaled; the object is pasted back at full
size, its soft edge's foreground colour estimated first. What grows with the photo is only the upscale and the
paste (tiles around the soft edge, row strips), so memory stays a few bytes per pixel:

    python bench/generate_full_resolution.py --size 6000x4000 --model tiny-inpainting --device cpu
"""

import argparse
import resource
import time

import numpy as np
import skimage.data
from PIL import Image, ImageDraw, ImageFilter

from photobg.api import BackgroundGenerator
from photobg.masks import parse_size


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="6000x4000", help="photo size WxH (default: %(default)s)")
    parser.add_argument("--model", default="tiny-inpainting")
    parser.add_argument("--device", default=None)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()

    width, height = parse_size(args.size)
    photo = Image.fromarray(skimage.data.coffee()).resize((width, height), Image.BICUBIC)
    mask = Image.new("L", photo.size)
    ImageDraw.Draw(mask).ellipse((width // 4, height // 10, width * 3 // 4, height * 9 // 10), fill=255)
    mask = mask.filter(ImageFilter.GaussianBlur(4))  # a soft edge, whose foreground colour is estimated
    generator = BackgroundGenerator(args.model, device=args.device)
    generator.pipe.set_progress_bar_config(disable=True)
    generator(photo.resize((64, 64)), "warm-up", mask.resize((64, 64)), num_inference_steps=1)
    before = peak_rss_mb()
    start, cpu_start = time.perf_counter(), time.process_time()
    (image,) = generator(photo, "a cup of coffee on a marble table", mask, num_inference_steps=args.steps, seed=0)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    solid = np.asarray(mask) == 255
    exact = np.array_equal(np.asarray(image)[solid], np.asarray(photo)[solid])
    megapixels = width * height / 1e6
    print(
        f"{width}x{height} ({megapixels:.0f} MP) on {args.model}, working size "
        f"{'x'.join(map(str, generator.working_size(photo.size)))}, {args.steps} steps: "
        f"{seconds:.1f} s ({cpu_seconds:.1f} s CPU); "
        f"peak RSS {before:.0f} MB before, {peak_rss_mb():.0f} MB after "
        f"(+{(peak_rss_mb() - before) / megapixels:.0f} MB per megapixel); output {image.size}, object exact: {exact}"
    )


if __name__ == "__main__":
    main()
