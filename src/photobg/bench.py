"""`photobg bench`: what generation costs, measured against its floor and its FLOPs.

Inference variants, all on the same random-weight models (built from `photobg.configs`, nothing
downloaded) and measured in one run so that ratios compare like with like:

- `photobg`: our pipeline as users run it (fp16 on CUDA, PyTorch SDPA attention, ControlNet skipped where its
  scale is 0);
- `si2`: diffusers' own `StableDiffusionInpaintPipeline` with the same UNet/VAE/text encoder: the floor, so the
  ControlNet's extra cost shows as a ratio;
- `unoptimised`: our pipeline in fp32 with diffusers' classic (non-SDPA) attention.

FLOPs are counted with `torch.utils.flop_counter` on the meta device (no compute, exact for the real
architectures). Results go to `bench/results/<name>.json` and a Markdown table; `bench/README.md` explains them.
"""

import json
import os
import platform
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch

HELP = "Benchmark generation (photobg vs SI2 vs unoptimised) and count FLOPs; writes JSON + a Markdown table."
VARIANTS = ("photobg", "si2", "unoptimised")
PROMPT = "a product photo on a marble table, soft light"


# ----------------------------------------------------------------------------- FLOPs


def count_flops(config_name, size, steps, guidance=True):
    """Model FLOPs of one generated image (meta device: shapes only, nothing is computed).

    Args:
        config_name: a `photobg.configs` name.
        size: square working size in pixels.
        steps: denoising steps.
        guidance: classifier-free guidance (UNet and ControlNet see a batch of 2 per step).

    Returns:
        dict of FLOPs: `unet_step`, `controlnet_step`, `vae_encode`, `vae_decode`, `text_encoder`, and the
        per-image totals `si2`, `photobg` and their `ratio`.
    """
    from torch.utils.flop_counter import FlopCounterMode

    models = _meta_models(config_name)
    batch, latent = 2 if guidance else 1, size // 8
    unet_in, text_dim = models["unet"].config.in_channels, models["unet"].config.cross_attention_dim

    def flops(fn):
        with torch.device("meta"), FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops()

    with torch.device("meta"):
        sample, timestep = torch.empty(batch, unet_in, latent, latent), torch.zeros(batch)
        embeds, control = torch.empty(batch, 77, text_dim), torch.empty(batch, 3, size, size)
    counts = {
        "unet_step": flops(lambda: models["unet"](sample, timestep, embeds)),
        "controlnet_step": flops(lambda: models["controlnet"](sample, timestep, embeds, controlnet_cond=control)),
        "vae_encode": flops(lambda: models["vae"].encode(torch.empty(1, 3, size, size))),
        "vae_decode": flops(lambda: models["vae"].decode(torch.empty(1, 4, latent, latent))),
        "text_encoder": flops(lambda: models["text_encoder"](torch.zeros(batch, 77, dtype=torch.long))),
    }
    once = counts["vae_encode"] * (1 if unet_in == 9 else 2) + counts["vae_decode"] + counts["text_encoder"]
    counts["si2"] = steps * counts["unet_step"] + once
    counts["photobg"] = counts["si2"] + steps * counts["controlnet_step"]
    counts["ratio"] = counts["photobg"] / counts["si2"]
    return counts


def _meta_models(config_name):
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .configs import get_config
    from .models import controlnet_config_from_unet

    config = get_config(config_name)
    control_config = controlnet_config_from_unet(config["unet"], embedding_channels=config["conditioning_channels"])
    with torch.device("meta"):
        return {
            "unet": UNet2DConditionModel.from_config(config["unet"]),
            "controlnet": ControlNetModel.from_config(control_config),
            "vae": AutoencoderKL.from_config(config["vae"]),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**config["text_encoder"])),
        }


# ----------------------------------------------------------------------------- timing


@contextmanager
def peak_memory(device):
    """Yield a dict that holds, afterwards, `peak_mb`: GPU memory allocated at peak (CUDA) or the peak rise of
    the process's resident memory, sampled every 5 ms (CPU)."""
    result = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        yield result
        torch.cuda.synchronize(device)
        result["peak_mb"] = (torch.cuda.max_memory_allocated(device) - start) / 2**20
        return
    start, peak, running = _rss(), [0], [True]

    def sample():
        while running[0]:
            peak[0] = max(peak[0], _rss())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield result
    finally:
        running[0] = False
        sampler.join()
        result["peak_mb"] = max(0, max(peak[0], _rss()) - start) / 2**20


def _rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def time_generation(pipe, size, steps, repeats, **call_kwargs):
    """Seconds per image (best of `repeats`, after one warm-up call when `repeats` > 1) and peak memory."""
    from .pipeline_controlnet_inpaint import StableDiffusionControlNetInpaintPipeline

    image, mask = _square_inputs(size)
    device = pipe.unet.device
    if isinstance(pipe, StableDiffusionControlNetInpaintPipeline):
        call_kwargs.setdefault("control_image", mask)
    kwargs = dict(image=image, mask_image=mask, height=size, width=size, num_inference_steps=steps, **call_kwargs)
    if repeats > 1:
        pipe(PROMPT, output_type="np", generator=torch.Generator("cpu").manual_seed(0), **kwargs)
    times = []
    for _ in range(repeats):
        with peak_memory(device) as memory:
            _sync(device)
            start = time.perf_counter()
            pipe(PROMPT, output_type="np", generator=torch.Generator("cpu").manual_seed(0), **kwargs)
            _sync(device)
            times.append(time.perf_counter() - start)
    return {"seconds_per_image": min(times), "peak_mb": memory["peak_mb"]}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _square_inputs(size):
    from PIL import Image, ImageDraw

    image = Image.linear_gradient("L").resize((size, size)).convert("RGB")
    mask = Image.new("L", (size, size), 255)  # white = region to generate
    ImageDraw.Draw(mask).ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4), fill=0)
    return image, mask


def measure_peak_tflops(device, dtype, n=8192, repeats=10):
    """Achievable dense matmul TFLOP/s of the device in `dtype` (the denominator of the utilisation figure)."""
    n = n if device.type == "cuda" else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12


# ----------------------------------------------------------------------------- the suite


def build_pipelines(config_name, device, dtype):
    """Our pipeline and diffusers' SI2 pipeline over the same random-weight modules."""
    from diffusers import StableDiffusionInpaintPipeline

    from .models import build_components
    from .pipeline_controlnet_inpaint import StableDiffusionControlNetInpaintPipeline

    parts = build_components(config_name)
    optional = dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    ours = StableDiffusionControlNetInpaintPipeline(**parts, **optional).to(device, dtype)
    si2_parts = {
        k: v for k, v in ours.components.items() if k in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")
    }
    si2 = StableDiffusionInpaintPipeline(**si2_parts, **optional)
    for pipe in (ours, si2):
        pipe.set_progress_bar_config(disable=True)
    return ours, si2


@contextmanager
def unoptimised(pipe):
    """Temporarily switch `pipe` to fp32 weights and diffusers' classic attention (no SDPA)."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    dtype = pipe.unet.dtype
    modules = (pipe.unet, pipe.controlnet, pipe.vae)
    pipe.to(dtype=torch.float32)
    for module in modules:
        module.set_attn_processor(AttnProcessor())
    try:
        yield pipe
    finally:
        for module in modules:
            module.set_attn_processor(AttnProcessor2_0())
        pipe.to(dtype=dtype)


def run_inference_suite(config_name, sizes, steps, device, dtype, repeats):
    """Time every variant at every size in one process; return one row per (size, variant)."""
    ours, si2 = build_pipelines(config_name, device, dtype)
    rows = []
    for size in sizes:
        flops = count_flops(config_name, size, steps)
        timings = {
            "photobg": time_generation(ours, size, steps, repeats),
            "si2": time_generation(si2, size, steps, repeats),
        }
        with unoptimised(ours):
            timings["unoptimised"] = time_generation(ours, size, steps, repeats)
        for variant in VARIANTS:
            variant_flops = flops["si2"] if variant == "si2" else flops["photobg"]
            seconds = timings[variant]["seconds_per_image"]
            rows.append(
                dict(
                    model=config_name,
                    size=size,
                    steps=steps,
                    variant=variant,
                    **timings[variant],
                    gflops_per_image=variant_flops / 1e9,
                    achieved_tflops=variant_flops / seconds / 1e12,
                    vs_si2=seconds / timings["si2"]["seconds_per_image"],
                    flop_ratio_vs_si2=variant_flops / flops["si2"],
                )
            )
    return rows


def machine_info(device, dtype):
    """Machine, versions and device facts stored with every result."""
    import diffusers
    import transformers

    info = dict(
        platform=platform.platform(),
        python=platform.python_version(),
        torch=torch.__version__,
        diffusers=diffusers.__version__,
        transformers=transformers.__version__,
        device=str(device),
        dtype=str(dtype).replace("torch.", ""),
        cpu_count=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
    )
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def markdown_table(rows):
    """The rows as a Markdown table, one line per (model, size, variant)."""
    columns = ["model", "size", "steps", "variant", "seconds_per_image", "peak_mb", "vs_si2", "flop_ratio_vs_si2"]
    columns += ["gflops_per_image", "achieved_tflops"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [f"{row[c]:.3g}" if isinstance(row[c], float) else str(row[c]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI


def add_arguments(parser):
    from .models import DTYPES

    parser.add_argument("--quick", action="store_true", help="CPU-sized run: tiny models + real size at 1 step")
    parser.add_argument("--full", action="store_true", help="GPU run: real size, 512 and 1024, 20 steps")
    parser.add_argument("--config", action="append", help="model config(s) (default per mode)")
    parser.add_argument("--sizes", type=int, nargs="+", help="square working sizes in pixels")
    parser.add_argument("--steps", type=int, help="denoising steps")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per variant, best kept (default: 2)")
    parser.add_argument("--device", help="default: CUDA if present, else CPU")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="default: fp16 on CUDA, fp32 on CPU")
    parser.add_argument("--output-dir", default="bench/results", help="where JSON + Markdown go (default: %(default)s)")
    parser.add_argument("--name", help="result file name (default: derived from mode and device)")


def plan(args, device):
    """(config, sizes, steps) runs for the chosen mode; explicit flags override."""
    if args.full or (device.type == "cuda" and not args.quick):
        default = [("tiny-inpainting", [512, 1024], 20), ("sd2-inpainting", [512, 1024], 20)]
    else:
        default = [("tiny-inpainting", [256, 512], 20), ("sd2-inpainting", [256], 1)]
    configs = args.config or [c for c, _, _ in default]
    by_config = {c: (s, n) for c, s, n in default}
    return [
        (c, args.sizes or by_config.get(c, ([512], 1))[0], args.steps or by_config.get(c, ([512], 1))[1])
        for c in configs
    ]


def run(args):
    from .models import resolve_device, resolve_dtype

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    rows = []
    for config_name, sizes, steps in plan(args, device):
        print(f"benchmarking {config_name} at {sizes} px, {steps} steps on {device} ({dtype})", flush=True)
        rows += run_inference_suite(config_name, sizes, steps, device, dtype, args.repeats)
    result = dict(
        machine=machine_info(device, dtype),
        peak_tflops=measure_peak_tflops(device, dtype),
        settings=dict(vars(args), run=None),
        inference=rows,
        created=time.strftime("%Y-%m-%dT%H:%M:%S"),
    )
    name = args.name or f"{'quick' if args.quick else 'full'}-{device.type}"
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    table = markdown_table(rows)
    (output_dir / f"{name}.json").write_text(json.dumps(result, indent=2, default=str))
    (output_dir / f"{name}.md").write_text(table + "\n")
    print(table)
    print(f"wrote {output_dir / name}.json and .md")
