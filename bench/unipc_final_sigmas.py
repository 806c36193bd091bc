"""How much UniPC's last step matters: diffusers 0.27's `final_sigmas_type="sigma_min"` vs today's `"zero"`.

Same model, photo, prompt, seed and recipe (20 steps, guidance 7.5, ControlNet scale 1); only the final sigma
of UniPC's schedule differs. Prints the difference of the generated backgrounds (0-255 levels, outside the
object, no paste-back) next to the difference between two seeds, for scale. Random weights, so the images are
noise; what the figures show is how far the two endings move an output, not which looks better:

    python bench/unipc_final_sigmas.py --config tiny-inpainting --size 256
    python bench/unipc_final_sigmas.py --config sd2-inpainting --size 256   # real size, random weights (CPU: minutes)
"""

import argparse
import time

import numpy as np
import skimage.data
import torch
from diffusers import UniPCMultistepScheduler
from PIL import Image, ImageDraw, ImageFilter

from photobg.bench import build_pipelines


def photo_and_mask(size):
    photo = Image.fromarray(skimage.data.coffee()).resize((size, size * 2 // 3), Image.LANCZOS)
    mask = Image.new("L", photo.size)
    w, h = photo.size
    ImageDraw.Draw(mask).ellipse((w // 4, h // 10, w * 3 // 4, h * 9 // 10), fill=255)
    return photo, mask.filter(ImageFilter.GaussianBlur(2))


def generate(pipe, photo, mask, final_sigmas_type, seed, steps):
    config = dict(pipe.scheduler.config)
    pipe.scheduler = UniPCMultistepScheduler.from_config(config, final_sigmas_type=final_sigmas_type)
    result = pipe(
        "a cup of coffee on a marble table",
        image=photo,
        object_mask=mask,
        num_inference_steps=steps,
        guidance_scale=7.5,
        controlnet_conditioning_scale=1.0,
        generator=torch.Generator().manual_seed(seed),
        preserve_object=False,
        output_type="np",
    )
    return result.images[0] * 255


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny-inpainting", help="a photobg.configs name (default: %(default)s)")
    parser.add_argument("--size", type=int, default=256, help="photo width in pixels (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()

    pipe, _ = build_pipelines(args.config, "cpu", torch.float32)
    scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config)
    alpha0 = scheduler.alphas_cumprod[0].item()
    photo, mask = photo_and_mask(args.size)
    background = np.asarray(mask) == 0
    start = time.perf_counter()
    sigma_min = generate(pipe, photo, mask, "sigma_min", 0, args.steps)
    zero = generate(pipe, photo, mask, "zero", 0, args.steps)
    other_seed = generate(pipe, photo, mask, "sigma_min", 1, args.steps)
    seconds = time.perf_counter() - start

    def levels(a, b):
        difference = np.abs(a - b)[background]
        percentile = np.percentile(difference, 99)
        return f"mean {difference.mean():.2f}, 99th percentile {percentile:.1f}, max {difference.max():.1f}"

    print(f"{args.config}, {photo.size[0]}x{photo.size[1]}, {args.steps} UniPC steps ({seconds:.0f} s for 3 images)")
    print(f"  final sigma: sigma_min = {((1 - alpha0) / alpha0) ** 0.5:.4f} vs zero")
    print(f"  sigma_min vs zero, background levels: {levels(sigma_min, zero)}")
    print(f"  seed 0 vs seed 1 (sigma_min), for scale: {levels(sigma_min, other_seed)}")


if __name__ == "__main__":
    main()
