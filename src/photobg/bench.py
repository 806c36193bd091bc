"""`photobg bench`: what generation costs, measured against its floor and its FLOPs.

Inference variants, all on the same random-weight models (built from `photobg.configs`, nothing
downloaded) and measured in one run so that ratios compare like with like:

- `photobg`: our pipeline as users run it (fp16 on CUDA, PyTorch SDPA attention, ControlNet skipped where its
  scale is 0), at ControlNet scale 1;
- `scale0`: the same at ControlNet scale 0 (the base model alone, through our pipeline);
- `si2`: the floor: diffusers' own inpainting pipeline of the backbone (`StableDiffusionInpaintPipeline` for SD2,
  `StableDiffusionXLInpaintPipeline` for SDXL) with the same UNet/VAE/text encoders, so the ControlNet's extra
  cost, and any of our pipeline's own, shows as a ratio;
- `unoptimised`: our pipeline in fp32 with diffusers' classic (non-SDPA) attention.

FLOPs are counted with `torch.utils.flop_counter` on the meta device (no compute, exact for the real
architectures). Results go to `bench/results/<name>.json` and a Markdown table; `bench/README.md` explains them.
"""

import functools
import json
import math
import os
import platform
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from .backbones import TEXT_CLIP, TEXT_SDXL

HELP = (
    "Benchmark generation (photobg vs the base model vs unoptimised) and count FLOPs; writes JSON + a Markdown table."
)
VARIANTS = ("photobg", "scale0", "si2", "unoptimised")
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

    models = meta_models(config_name)
    batch, latent = 2 if guidance else 1, size // 8
    unet_in, text_dim = models["unet"].config.in_channels, models["unet"].config.cross_attention_dim

    def flops(fn, *args):
        with torch.device("meta"), FlopCounterMode(display=False) as counter:
            fn(*args)
        return counter.get_total_flops()

    with torch.device("meta"):
        sample, timestep = torch.empty(batch, unet_in, latent, latent), torch.zeros(batch)
        embeds, control = torch.empty(batch, 77, text_dim), torch.empty(batch, 3, size, size)
        added = _added_conditions(models, batch)  # (B, d) inputs of SDXL's added conditions; None for SD2
        tokens = torch.zeros(batch, 77, dtype=torch.long)
    text_encoders = [model for name, model in models.items() if name.startswith("text_encoder")]
    counts = {
        "unet_step": flops(lambda: models["unet"](sample, timestep, embeds, added_cond_kwargs=added)),
        "controlnet_step": flops(
            lambda: models["controlnet"](sample, timestep, embeds, controlnet_cond=control, added_cond_kwargs=added)
        ),
        "vae_encode": flops(lambda: models["vae"].encode(torch.empty(1, 3, size, size))),
        "vae_decode": flops(lambda: models["vae"].decode(torch.empty(1, 4, latent, latent))),
        "text_encoder": sum(flops(encoder, tokens) for encoder in text_encoders),
    }
    once = counts["vae_encode"] * (1 if unet_in == 9 else 2) + counts["vae_decode"] + counts["text_encoder"]
    counts["si2"] = steps * counts["unet_step"] + once
    counts["photobg"] = counts["si2"] + steps * counts["controlnet_step"]
    counts["ratio"] = counts["photobg"] / counts["si2"]
    return counts


@functools.cache  # meta models hold no memory; building the real SDXL ones takes seconds
def meta_models(config_name):
    """The models of a `photobg.configs` architecture on the meta device (shapes, no weights), built once.

    Returns:
        dict with `unet`, `controlnet` (from the UNet, as training builds it), `vae` and the text encoders.
    """
    from .backbones import backbone_for_config

    names = ("unet", "controlnet", "vae", *backbone_for_config(config_name).text_encoders)
    with torch.device("meta"):
        return {name: random_model(config_name, name) for name in names}


def random_model(config_name, name):
    """One model of a `photobg.configs` architecture with random weights, on torch's default device.

    Args:
        config_name: a `photobg.configs` name.
        name: `unet`, `controlnet` (the config `ControlNetModel.from_unet` gives, freshly initialised), `vae`,
            `text_encoder` or `text_encoder_2`.
    """
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel

    from .configs import get_config
    from .models.state_dict import controlnet_config_from_unet
    from .models.testing import text_encoder_from_config

    config = get_config(config_name)
    if name == "unet":
        return UNet2DConditionModel.from_config(config["unet"])
    if name == "controlnet":
        embedding = config["conditioning_channels"]
        return ControlNetModel.from_config(controlnet_config_from_unet(config["unet"], embedding_channels=embedding))
    if name == "vae":
        return AutoencoderKL.from_config(config["vae"])
    return text_encoder_from_config(config[name])


def random_model_folder(config_name, with_controlnet=True):
    """A folder of random-weight models with a `photobg.configs` architecture, in a complete photobg model's
    layout (or, without the ControlNet, its base model's), written once to the photobg cache (`$PHOTOBG_CACHE`,
    default `~/.cache/photobg`): `CONFIG-random-controlnet` or `CONFIG-random`.

    The models are written one at a time, so a real-size SDXL model (19 GB in fp32) is never whole in memory;
    diffusers loads safetensors by mapping the files, so its weights are page cache the system can reclaim.
    """
    import shutil
    import tempfile

    import diffusers

    from .backbones import backbone_for_config
    from .configs import get_config
    from .hub import photobg_cache
    from .models.pipelines import pipeline_class, pipeline_from_components
    from .models.testing import write_tokenizer

    cache = photobg_cache()
    folder = cache / f"{config_name}-random{'-controlnet' if with_controlnet else ''}"
    if (folder / "model_index.json").exists():
        return folder
    backbone, config = backbone_for_config(config_name), get_config(config_name)
    models = {
        name: model for name, model in meta_models(config_name).items() if with_controlnet or name != "controlnet"
    }
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".model-", dir=cache))
    try:
        components = dict(models)
        for name in backbone.tokenizers:
            components[name] = write_tokenizer(tmp / name, **config[name])
        scheduler_config = dict(config["scheduler"])
        components["scheduler"] = getattr(diffusers, scheduler_config.pop("_class_name")).from_config(scheduler_config)
        components["scheduler"].save_pretrained(tmp / "scheduler")
        cls = pipeline_class(backbone) if with_controlnet else getattr(diffusers, backbone.pipeline_class)
        pipe = pipeline_from_components(cls, components, config["pipeline"])
        pipe.save_config(tmp)  # model_index.json, from the meta models
        for name in models:
            torch.manual_seed(0)
            random_model(config_name, name).save_pretrained(tmp / name, max_shard_size="1GB")  # small copies
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _added_conditions(models, batch):
    """SDXL's `added_cond_kwargs` for a batch (the second text encoder's pooled embedding and the time ids, sized
    from the configs), or None for a UNet without added conditions."""
    unet_config = models["unet"].config
    if unet_config.addition_embed_type != "text_time":
        return None
    pooled = models["text_encoder_2"].config.projection_dim
    time_ids = (unet_config.projection_class_embeddings_input_dim - pooled) // unet_config.addition_time_embed_dim
    return {"text_embeds": torch.empty(batch, pooled), "time_ids": torch.empty(batch, time_ids)}


def flop_rows(runs):
    """FLOPs of every (config, size) of `runs` [(config, sizes, steps)], in TFLOP, with classifier-free guidance.

    Returns:
        one dict per (config, size) with the columns of `FLOP_COLUMNS`: per denoising step (a batch of 2), per
        VAE call, per image, and the ControlNet's cost as a fraction of the UNet's.
    """
    rows = []
    for config_name, sizes, steps in runs:
        for size in sizes:
            flops = count_flops(config_name, size, steps)
            tflop = {key: value / 1e12 for key, value in flops.items()}
            rows.append(
                dict(
                    model=config_name,
                    size=size,
                    steps=steps,
                    unet_tflop_per_step=tflop["unet_step"],
                    controlnet_tflop_per_step=tflop["controlnet_step"],
                    controlnet_vs_unet=flops["controlnet_step"] / flops["unet_step"],
                    vae_encode_tflop=tflop["vae_encode"],
                    vae_decode_tflop=tflop["vae_decode"],
                    text_encoders_tflop=tflop["text_encoder"],
                    si2_tflop_per_image=tflop["si2"],
                    photobg_tflop_per_image=tflop["photobg"],
                    flop_ratio_vs_si2=flops["ratio"],
                )
            )
    return rows


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


def _peak_rss_of_this_process():
    # VmHWM belongs to this process's memory map; getrusage's ru_maxrss would also count the parent's memory
    # at the fork before `exec`.
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def _rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def time_variants(variants, size, steps, repeats):
    """Time pipelines on one input: wall seconds per image, the process's CPU seconds and peak memory.

    Each variant gets a one-step warm-up call (kernels chosen, memory allocated, weights paged in); then the
    variants are timed in turn, `repeats` rounds, so that a load that changes during the run (a shared machine)
    reaches them alike, and the best of the rounds is kept. Every pipeline starts from pure noise (`strength=1`;
    diffusers' SDXL inpainting defaults to 0.9999).

    Args:
        variants: {name: (pipeline, extra call kwargs, a context manager factory or None)}.
        size, steps, repeats: the working size, denoising steps and timed rounds.

    Returns:
        {name: {"seconds_per_image", "cpu_seconds_per_image", "peak_mb"}}.
    """
    from contextlib import nullcontext

    from .method import BackgroundMethodMixin

    image, mask = _square_inputs(size)
    calls = {}
    for name, (pipe, call_kwargs, context) in variants.items():
        kwargs = dict(image=image, mask_image=mask, height=size, width=size, num_inference_steps=steps, strength=1.0)
        if isinstance(pipe, BackgroundMethodMixin):
            kwargs["control_image"] = mask
        calls[name] = (pipe, {**kwargs, **call_kwargs}, context or nullcontext)
        with calls[name][2]():
            pipe(PROMPT, output_type="np", **{**calls[name][1], "num_inference_steps": 1})
    results = {name: {"seconds_per_image": math.inf, "cpu_seconds_per_image": math.inf} for name in calls}
    for _ in range(repeats):
        for name, (pipe, kwargs, context) in calls.items():
            device = pipe.unet.device
            with context(), peak_memory(device) as memory:
                _sync(device)
                start, cpu_start = time.perf_counter(), time.process_time()
                pipe(PROMPT, output_type="np", generator=torch.Generator("cpu").manual_seed(0), **kwargs)
                _sync(device)
                seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
            best = results[name]
            best["seconds_per_image"] = min(best["seconds_per_image"], seconds)
            best["cpu_seconds_per_image"] = min(best["cpu_seconds_per_image"], cpu_seconds)
            best["peak_mb"] = memory["peak_mb"]
    return results


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


# ----------------------------------------------------------------------------- training


TRAINING_SETTINGS = [
    dict(cache_latents=False, gradient_checkpointing=False),
    dict(cache_latents=True, gradient_checkpointing=False),
    dict(cache_latents=False, gradient_checkpointing=True),
    dict(cache_latents=True, gradient_checkpointing=True),
]


def measure_training(
    config_name, resolution, batch, steps, examples, mixed_precision="no", controlnet_size="full", **settings
):
    """Train the inpaint variant on drawn shapes in this process; samples/s over the steps after the first.

    Args:
        config_name: a `photobg.configs` name (SD2 or SDXL); real-size ones are written once (random weights) to
            the cache, in the complete model's layout that the inference benchmark shares (training reads its base
            model's components and builds its own ControlNet).
        resolution, batch, steps, examples: the run's size.
        mixed_precision: "no", "fp16" or "bf16".
        controlnet_size: the ControlNet trained (`--controlnet_size`: full, mid or small).
        settings: `TrainConfig` fields, e.g. `cache_latents`, `gradient_checkpointing`.

    Returns:
        dict with the settings, `samples_per_second`, `seconds_before_first_step` and `peak_mb`.
    """
    import tempfile

    from .data import write_synthetic_dataset
    from .train import main
    from .train_config import TrainConfig

    folder = random_model_folder(config_name)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as work:
        data = write_synthetic_dataset(Path(work, "data"), examples, (resolution * 5 // 4, resolution), seed=0)
        config = TrainConfig(
            pretrained_model_name_or_path=str(folder),
            train_data_dir=str(data),
            output_dir=str(Path(work, "out")),
            resolution=resolution,
            train_batch_size=batch,
            max_train_steps=steps,
            checkpointing_steps=10**9,
            report_to="none",
            seed=0,
            mixed_precision=mixed_precision,
            controlnet_size=controlnet_size,
            proportion_empty_prompts=0,  # fixed prompts: --cache_latents caches the text embeddings too
            **settings,
        )
        started = time.perf_counter()
        times = main(config).step_times
    if device == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = _peak_rss_of_this_process() / 2**20
    return dict(
        model=config_name,
        resolution=resolution,
        batch_size=batch,
        steps=steps,
        mixed_precision=mixed_precision,
        controlnet_size=controlnet_size,
        **settings,
        samples_per_second=(len(times) - 1) * batch / (times[-1] - times[0]),
        seconds_before_first_step=times[0] - started,
        peak_mb=peak_mb,
    )


def run_training_suite(config_name, resolution, batch, steps, examples, controlnet_size="full", mixed_precision="no"):
    """Every setting of `TRAINING_SETTINGS`, each in its own process (peak memory is per process)."""
    import subprocess
    import sys

    rows = []
    for settings in TRAINING_SETTINGS:
        kwargs = dict(settings, config_name=config_name, resolution=resolution, batch=batch, steps=steps)
        kwargs.update(examples=examples, mixed_precision=mixed_precision, controlnet_size=controlnet_size)
        code = "import json, sys; from photobg.bench import measure_training as m; "
        code += "print(json.dumps(m(**json.loads(sys.argv[1]))))"
        out = subprocess.run(
            [sys.executable, "-c", code, json.dumps(kwargs)], check=True, capture_output=True, text=True
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"  training {settings}: {rows[-1]['samples_per_second']:.3g} samples/s", flush=True)
    uncached = {r["gradient_checkpointing"]: r["samples_per_second"] for r in rows if not r["cache_latents"]}
    for row in rows:
        row["speedup_vs_uncached"] = row["samples_per_second"] / uncached[row["gradient_checkpointing"]]
    return rows


# ----------------------------------------------------------------------------- the suite


# The floor of each text conditioning: diffusers' own inpainting pipeline of that family (it takes 9- and 4-channel
# UNets alike), which runs the base model alone.
FLOOR_PIPELINES = {TEXT_CLIP: "StableDiffusionInpaintPipeline", TEXT_SDXL: "StableDiffusionXLInpaintPipeline"}


def build_pipelines(config_name, device, dtype):
    """Our pipeline and the floor, diffusers' inpainting pipeline of the same backbone (`FLOOR_PIPELINES`), over
    the same random-weight modules, loaded from `random_model_folder` with the model's own scheduler."""
    import diffusers

    from .backbones import backbone_for_config
    from .models.loading import load_pipeline
    from .models.pipelines import pipeline_from_components

    ours = load_pipeline(random_model_folder(config_name), device=device, dtype=dtype, scheduler="model")
    floor_class = getattr(diffusers, FLOOR_PIPELINES[backbone_for_config(config_name).text_conditioning])
    settings = {
        key: value for key, value in ours.config.items() if not key.startswith("_") and key not in ours.components
    }
    parts = {name: module for name, module in ours.components.items() if module is not None and name != "controlnet"}
    floor = pipeline_from_components(floor_class, parts, settings)
    for pipe in (ours, floor):
        pipe.set_progress_bar_config(disable=True)
    return ours, floor


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
        variants = {
            "photobg": (ours, {}, None),
            "scale0": (ours, {"controlnet_conditioning_scale": 0.0}, None),
            "si2": (si2, {}, None),
            "unoptimised": (ours, {}, lambda: unoptimised(ours)),
        }
        timings = time_variants(variants, size, steps, repeats)
        for variant in VARIANTS:
            variant_flops = flops["photobg"] if variant in ("photobg", "unoptimised") else flops["si2"]
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
                    cpu_vs_si2=timings[variant]["cpu_seconds_per_image"] / timings["si2"]["cpu_seconds_per_image"],
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


INFERENCE_COLUMNS = ["model", "size", "steps", "variant", "seconds_per_image", "cpu_seconds_per_image", "peak_mb"]
INFERENCE_COLUMNS += ["vs_si2", "cpu_vs_si2"]
INFERENCE_COLUMNS += ["flop_ratio_vs_si2", "gflops_per_image", "achieved_tflops"]
TRAINING_COLUMNS = ["model", "controlnet_size", "resolution", "batch_size", "mixed_precision", "cache_latents"]
TRAINING_COLUMNS += ["gradient_checkpointing"]
TRAINING_COLUMNS += ["samples_per_second", "speedup_vs_uncached", "peak_mb"]
FLOP_COLUMNS = ["model", "size", "steps", "unet_tflop_per_step", "controlnet_tflop_per_step", "controlnet_vs_unet"]
FLOP_COLUMNS += ["vae_encode_tflop", "vae_decode_tflop", "text_encoders_tflop", "si2_tflop_per_image"]
FLOP_COLUMNS += ["photobg_tflop_per_image", "flop_ratio_vs_si2"]


def markdown_table(rows, columns=INFERENCE_COLUMNS):
    """The rows as a Markdown table, one line per row."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [f"{row[c]:.3g}" if isinstance(row[c], float) else str(row[c]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI


# Each mode: inference runs (config, sizes, steps) and training runs (config, resolution, batch, steps, examples[,
# ControlNet size]). On a CPU with 23 GB the real-size SDXL step fits with the small ControlNet only (the full
# one's fp32 weights, gradients and AdamW moments alone are 20 GB): see bench/README.md's memory table.
MODES = {
    "quick": dict(
        inference=[("tiny-inpainting", [256, 512], 20), ("sd2-inpainting", [256], 1)],
        training=[("tiny-inpainting", 64, 4, 150, 32)],
    ),
    "cpu": dict(
        inference=[("tiny-inpainting", [256, 512], 20), ("sd2-inpainting", [512], 2), ("sdxl-inpainting", [256], 1)],
        training=[
            ("tiny-inpainting", 64, 4, 150, 32),
            ("sd2-inpainting", 64, 1, 4, 4),
            ("sdxl-inpainting", 64, 1, 4, 4, "small"),
        ],
    ),
    "full": dict(
        inference=[
            ("tiny-inpainting", [512, 1024], 20),
            ("sd2-inpainting", [512, 1024], 20),
            ("sdxl-inpainting", [1024], 20),
        ],
        training=[("sd2-inpainting", 512, 4, 20, 64), ("sdxl-inpainting", 1024, 1, 20, 32)],
    ),
}


def add_arguments(parser):
    from .configs import MODEL_CONFIGS
    from .models.loading import DTYPES

    parser.add_argument(
        "--mode",
        choices=sorted(MODES),
        help="quick: CPU-sized, under 10 minutes; cpu: real-size models at 1-4 steps; full: the GPU suite at "
        "real size, 512 and 1024 px, 20 steps (default: full on CUDA, cpu otherwise)",
    )
    parser.add_argument("--quick", dest="mode", action="store_const", const="quick", help="same as --mode quick")
    parser.add_argument("--full", dest="mode", action="store_const", const="full", help="same as --mode full")
    parser.add_argument(
        "--config",
        action="append",
        choices=sorted(MODEL_CONFIGS),
        help="inference model config(s) instead of the mode's",
    )
    parser.add_argument("--sizes", type=int, nargs="+", help="square working sizes in pixels")
    parser.add_argument("--steps", type=int, help="denoising steps")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per variant, best kept (default: 2)")
    parser.add_argument("--skip-training", action="store_true", help="inference only")
    parser.add_argument("--skip-inference", action="store_true", help="training only")
    parser.add_argument(
        "--train-config",
        action="append",
        choices=sorted(MODEL_CONFIGS),
        help="only the mode's training runs of these model config(s)",
    )
    parser.add_argument(
        "--flops-only",
        action="store_true",
        help="count the inference runs' FLOPs (meta device, any size, SDXL included) without timing anything",
    )
    parser.add_argument("--device", help="default: CUDA if present, else CPU")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="default: fp16 on CUDA, fp32 on CPU")
    parser.add_argument("--output-dir", default="bench/results", help="where JSON + Markdown go (default: %(default)s)")
    parser.add_argument("--name", help="result file name (default: MODE-DEVICE)")


def plan(args, device):
    """The mode's inference runs [(config, sizes, steps)] with the flags' overrides, and its training runs."""
    mode = MODES[args.mode or ("full" if device.type == "cuda" else "cpu")]
    by_config = {config: (sizes, steps) for config, sizes, steps in mode["inference"]}
    configs = args.config or list(by_config)
    inference = [
        (c, args.sizes or by_config.get(c, ([512], 1))[0], args.steps or by_config.get(c, ([512], 1))[1])
        for c in configs
    ]
    training = [run for run in mode["training"] if not args.train_config or run[0] in args.train_config]
    return [] if args.skip_inference else inference, [] if args.skip_training else training


def run(args):
    from .models.loading import resolve_device, resolve_dtype

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    inference_runs, training_runs = plan(args, device)
    flops = flop_rows(inference_runs) if args.flops_only else []
    if args.flops_only:
        inference_runs, training_runs = [], []
    inference, training = [], []
    for config_name, sizes, steps in inference_runs:
        print(f"inference: {config_name} at {sizes} px, {steps} steps on {device} ({dtype})", flush=True)
        inference += run_inference_suite(config_name, sizes, steps, device, dtype, args.repeats)
    precision = "no" if device.type == "cpu" else {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "no")
    for run_args in training_runs:
        print(f"training: {run_args[0]} at {run_args[1]} px, batch {run_args[2]}, {run_args[3]} steps", flush=True)
        training += run_training_suite(*run_args, mixed_precision=precision)
    result = dict(
        machine=machine_info(device, dtype),
        peak_tflops=None if args.flops_only else measure_peak_tflops(device, dtype),
        settings={k: v for k, v in vars(args).items() if k != "run"},
        inference=inference,
        training=training,
        flops=flops,
        created=time.strftime("%Y-%m-%dT%H:%M:%S"),
    )
    mode = args.mode or ("full" if device.type == "cuda" else "cpu")
    name = args.name or ("flops" if args.flops_only else f"{mode}-{device.type}")
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    tables = [
        markdown_table(rows, columns)
        for rows, columns in ((inference, INFERENCE_COLUMNS), (training, TRAINING_COLUMNS), (flops, FLOP_COLUMNS))
        if rows
    ]
    (output_dir / f"{name}.json").write_text(json.dumps(result, indent=2, default=str))
    (output_dir / f"{name}.md").write_text("\n\n".join(tables) + "\n")
    print("\n\n".join(tables))
    print(f"wrote {output_dir / name}.json and .md")
