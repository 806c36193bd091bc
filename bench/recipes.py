"""What a sampling recipe costs: FLOPs per image of every named recipe on every backbone it is for, at the
backbone's native size, and wall time of the authors' recipe next to a 4-step one (and compiled next to eager).

FLOPs are counted on meta tensors (shapes only: seconds, no weights); a fused LoRA adds none. Guidance off (0
or 1) runs the UNet and ControlNet on one batch a step instead of two, which the counts include. Times are of
real-size models with random weights (no download): the images are noise, the compute is the real one.

    python bench/recipes.py flops
    python bench/recipes.py time --config sd2-inpainting --size 512 --repeats 1              # CPU: minutes
    python bench/recipes.py time --config sd2-inpainting --size 512 --repeats 1 --compile    # + compiled, after
    python bench/recipes.py time --config sdxl-inpainting --size 1024 --repeats 3 --device cuda --dtype fp16 \\
        --fast sdxl-lightning-4 --compile                                                     # the GPU figure
"""

import argparse
import time
from contextlib import contextmanager

import torch

from photobg.backbones import BACKBONES
from photobg.bench import build_pipelines, count_flops, time_variants
from photobg.models import DTYPES, make_scheduler, optimize, scheduler_options_of
from photobg.recipe import DEFAULT_RECIPE, RECIPES


def flop_table():
    """Markdown rows: recipe, backbone, steps, guidance, TFLOPs per image (photobg: UNet + ControlNet + VAE +
    text encoders), and the fraction of the authors' recipe on the same backbone."""
    rows = ["| recipe | backbone | steps | guidance | TFLOPs/image | vs authors' |", "|---|---|---|---|---|---|"]
    for name, recipe in RECIPES.items():
        for backbone in recipe.backbones or list(BACKBONES):
            size = BACKBONES[backbone].native_size
            flops = count_flops(backbone, size, recipe.steps, guidance=recipe.guidance > 1)["photobg"]
            authors = count_flops(backbone, size, RECIPES[DEFAULT_RECIPE].steps)["photobg"]
            rows.append(
                f"| {name} | {backbone} ({size} px) | {recipe.steps} | {recipe.guidance:g} | {flops / 1e12:.2f} | "
                f"{flops / authors:.3f} |"
            )
    return "\n".join(rows)


@contextmanager
def sampling_with(pipe, recipe):
    """`pipe` with the recipe's scheduler (and options) for the duration."""
    kept, config = pipe.scheduler, pipe.scheduler.config
    pipe.scheduler = make_scheduler(
        recipe.scheduler, config, scheduler_options_of(recipe.scheduler, recipe.options, config)
    )
    try:
        yield
    finally:
        pipe.scheduler = kept


def recipe_variant(pipe, name):
    recipe = RECIPES[name]
    kwargs = dict(num_inference_steps=recipe.steps, guidance_scale=recipe.guidance)
    kwargs.update({key: value for key, value in (("timesteps", recipe.timesteps), ("eta", recipe.eta)) if value})
    return pipe, kwargs, lambda: sampling_with(pipe, recipe)


def time_recipes(args):
    """Time the authors' recipe and `args.fast` side by side (alternating rounds); with `args.compile`, compile
    after (regional), report the compiling call's time and time both again. Prints each table as it is done."""
    pipe, _ = build_pipelines(args.config, args.device, DTYPES[args.dtype])
    names = [DEFAULT_RECIPE, args.fast]
    print(
        f"{args.config}, {args.size} px, {args.device} {args.dtype}, torch {torch.__version__}, best of {args.repeats}"
    )
    print("| recipe | s/image | CPU s/image | vs authors' eager |\n|---|---|---|---|")
    eager = time_variants({name: recipe_variant(pipe, name) for name in names}, args.size, 1, args.repeats)
    print_rows(eager, eager[DEFAULT_RECIPE])
    if args.compile:
        optimize(pipe, compile=True)
        start = time.perf_counter()
        with sampling_with(pipe, RECIPES[args.fast]):
            pipe("warm-up", **_inputs(args.size), num_inference_steps=1, output_type="np")
        print(f"compiling: the first call after --compile (1 step): {time.perf_counter() - start:.1f} s", flush=True)
        compiled = time_variants({name: recipe_variant(pipe, name) for name in names}, args.size, 1, args.repeats)
        print_rows({f"{name}, compiled": value for name, value in compiled.items()}, eager[DEFAULT_RECIPE])


def print_rows(results, reference):
    for name, result in results.items():
        ratio = result["seconds_per_image"] / reference["seconds_per_image"]
        print(f"| {name} | {result['seconds_per_image']:.1f} | {result['cpu_seconds_per_image']:.1f} | {ratio:.3f} |")
    print(end="", flush=True)


def _inputs(size):
    from photobg.bench import _square_inputs

    image, mask = _square_inputs(size)
    return dict(image=image, mask_image=mask, control_image=mask, height=size, width=size, strength=1.0)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("flops", "time"))
    parser.add_argument("--config", default="sd2-inpainting", help="a photobg.configs name (default: %(default)s)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    parser.add_argument("--fast", default="tcd", choices=list(RECIPES), help="the few-step recipe (default: tcd)")
    parser.add_argument("--compile", action="store_true", help="then compile (regional) and time both again")
    args = parser.parse_args()
    if args.what == "flops":
        print(flop_table())
    else:
        time_recipes(args)


if __name__ == "__main__":
    main()
