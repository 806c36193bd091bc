"""GPU memory of an SDXL ControlNet training step at 1024 px, and the settings that fit 24, 48 and 80 GB.

    python bench/train_memory.py --sizes full       # count (about 3 minutes here), print the tables
    python bench/train_memory.py --sizes mid small  # the compact ControlNets (about 1 minute)
    python bench/train_memory.py --check 256        # also run the real step on this CPU at 256 px and compare
    python bench/train_memory.py --json out.json    # keep every figure

How the figures are made (bench/README.md, "Training memory at 1024 px", has the results):

- Activations are counted, not modelled: the real training step (cached latents: ControlNet forward under autocast,
  then the frozen UNet in half precision with the ControlNet's residuals, MSE, backward, as
  `photobg.train.training_loss` runs it) runs on real-size SDXL-inpainting modules built from the package's configs
  on fake tensors (`torch._subclasses.FakeTensorMode`: shapes and dtypes, no memory, no arithmetic), and a
  dispatch mode (`LiveBytes`) adds up the bytes of every tensor storage the step creates, as long as it lives. Its
  maximum is the step's activation peak: saved activations, autocast's half-precision copies of the ControlNet's
  fp32 weights, gradients of activations, temporaries. It is counted at batch 1 and `LARGE_BATCH` (4) for each
  ControlNet size and gradient-checkpointing setting (per sample = the slope between the two; the counts grow
  linearly with the batch: full ControlNet, autocast, no checkpointing: 8.80, 15.60 and 29.19 GiB at batch 1, 2
  and 4; with checkpointing 2.93, 3.53, 4.72 GiB; larger batches are extrapolated), with the ControlNet in fp32
  under autocast (DDP) and, for the full ControlNet, with its weights in half precision (ZeRO-2, FSDP: the
  strategies for a ControlNet too large for DDP; the compact ones fit with DDP). CUDA's autocast runs group and
  layer norms in fp32 (CPU's does not), so the count does too (`cuda_autocast_norms`).
- `--check` runs the same step for real on this CPU (fp32: bf16 is emulated on this CPU and 60-200x slower) and
  compares the count with what the step allocated (`LiveBytes` on real tensors) and with the process's peak
  resident memory (VmHWM, independent of the counter).
- Weights, gradients and optimizer states are parameter counts times bytes per parameter, per strategy, as
  `static_bytes` documents: what each one keeps per GPU by its documentation, not measured on a GPU (none was
  available). A setting "fits" a card when its estimate plus 10% (allocator fragmentation, cuDNN workspaces)
  stays under the card's memory minus 1 GB (CUDA context).
"""

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import time
import weakref
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

CONFIG = "sdxl-inpainting"  # the default architecture
SIZES = ("full", "mid", "small")
# Gradient checkpointing: none, or the ControlNet's and the frozen UNet's (photobg.train's --gradient_checkpointing,
# as diffusers' SDXL ControlNet example: the UNet's blocks are recomputed in the backward pass to the residuals).
CHECKPOINTING = ("none", "controlnet+unet")
CARDS_GB = (24, 48, 80)
LARGE_BATCH = 4  # the second batch size counted (per-sample memory = the slope from batch 1)
GIB = 2**30


# ----------------------------------------------------------------------------- counting


class LiveBytes(TorchDispatchMode):
    """Adds up the bytes of the tensor storages created inside the mode while they live; `peak` is the maximum.

    Storages that existed before (weights, inputs: `exclude`) are not counted, nor views of them.
    """

    def __init__(self, exclude=()):
        super().__init__()
        self.live = self.peak = 0
        self._before = {tensor.untyped_storage()._cdata for tensor in exclude}
        self._sizes = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key = storage._cdata
            if key not in self._sizes and key not in self._before:
                self._sizes[key] = storage.nbytes()
                self.live += self._sizes[key]
                weakref.finalize(storage, self._free, key)
        self.peak = max(self.peak, self.live)
        return out

    def _free(self, key):
        self.live -= self._sizes.pop(key)


@contextmanager
def cuda_autocast_norms():
    """Run group and layer norms in fp32 under (CPU) autocast, as CUDA's autocast does (they are on its fp32 list,
    not on the CPU's), so that a CPU count sees the tensors a CUDA step keeps."""
    originals = F.group_norm, F.layer_norm

    def in_fp32(norm):
        def run(input, shape_or_groups, weight=None, bias=None, eps=1e-5):
            if not torch.is_autocast_enabled("cpu"):
                return norm(input, shape_or_groups, weight, bias, eps)
            with torch.autocast("cpu", enabled=False):
                weight, bias = (None if t is None else t.float() for t in (weight, bias))
                return norm(input.float(), shape_or_groups, weight, bias, eps)

        return run

    F.group_norm, F.layer_norm = in_fp32(F.group_norm), in_fp32(F.layer_norm)
    try:
        yield
    finally:
        F.group_norm, F.layer_norm = originals


# ----------------------------------------------------------------------------- the models and the step


def build_models(config_name, size, unet_dtype, controlnet_dtype=torch.float32, weights="fake"):
    """A real-size UNet (frozen) and a ControlNet of `size`, built on the meta device and given weights.

    Args:
        config_name: a `photobg.configs` architecture.
        size: a ControlNet size of `photobg.controlnets.CONTROLNET_SIZES`.
        unet_dtype, controlnet_dtype: the frozen UNet's and the ControlNet's weight dtypes.
        weights: "fake" (inside a `FakeTensorMode`), "meta" (FLOP counts), "shared" (real random tensors; every
            parameter of one shape and dtype shares one storage, so that the real-size SDXL models fit in a few GB;
            the values do not change what is computed or kept) or "own-controlnet" (as "shared", but the ControlNet's
            parameters each have their own storage, so a timing of its part is not flattered by caches).
    """
    from diffusers import ControlNetModel, UNet2DConditionModel

    from photobg.configs import get_config
    from photobg.controlnets import controlnet_config

    unet_config = get_config(config_name)["unet"]
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config)
        controlnet = ControlNetModel.from_config(controlnet_config(unet_config, size))
    if weights != "meta":
        pool = {}
        _materialize(unet, unet_dtype, pool if weights != "fake" else None, weights)
        own = weights in ("fake", "own-controlnet")
        _materialize(controlnet, controlnet_dtype, None if own else pool, weights)
    unet.requires_grad_(False)
    controlnet.train()
    return unet, controlnet


def _materialize(module, dtype, pool, weights):
    """Give every parameter of `module` a tensor of `dtype`: fake, or random (shared through `pool` by shape)."""
    for sub in module.modules():
        for name, param in sub._parameters.items():
            if param is None:
                continue
            if weights == "fake":
                data = torch.empty(param.shape, dtype=dtype)
            elif pool is not None and (param.shape, dtype) in pool:
                data = pool[param.shape, dtype]
            else:
                data = _random(param.shape, dtype)
                if pool is not None:
                    pool[param.shape, dtype] = data
            sub._parameters[name] = torch.nn.Parameter(data, requires_grad=param.requires_grad)


def _random(shape, dtype):
    # Scaled so that activations stay of order one through the real depth (values do not change the work done).
    if len(shape) < 2:
        return torch.ones(shape, dtype=dtype)
    return (torch.randn(shape) * math.prod(shape[1:]) ** -0.5).to(dtype)


def step_inputs(unet, resolution, batch, dtype):
    """What one training step gets with cached latents and text embeddings, shaped as the configs say."""
    config = unet.config
    latent = resolution // 8
    inputs = dict(
        sample=torch.randn(batch, config.in_channels, latent, latent, dtype=dtype),  # noisy latents, mask, masked
        timestep=torch.randint(0, 1000, (batch,)),
        encoder_hidden_states=torch.randn(batch, 77, config.cross_attention_dim, dtype=dtype),
        added_cond_kwargs=None,
    )
    if config.addition_embed_type == "text_time":
        time_ids = 6  # original size, crop top-left, target size
        pooled = config.projection_class_embeddings_input_dim - time_ids * config.addition_time_embed_dim
        inputs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, pooled, dtype=dtype),
            "time_ids": torch.full((batch, time_ids), float(resolution), dtype=dtype),
        }
    control_image = torch.rand(batch, 3, resolution, resolution, dtype=dtype)
    target = torch.randn(batch, config.out_channels, latent, latent)
    return inputs, control_image, target


def training_step(unet, controlnet, inputs, control_image, target, weight_dtype, autocast=True):
    """Forward and backward of `photobg.train.training_loss` after encoding: the ControlNet under autocast (as
    accelerate runs a prepared model, outputs returned in fp32; `autocast=False` where the strategy keeps the
    ControlNet's weights in half precision itself, as DeepSpeed and FSDP do), the frozen UNet in `weight_dtype`
    with the residuals, MSE against the target; returns the loss."""
    autocast = autocast and weight_dtype != torch.float32
    with torch.autocast(unet.device.type, dtype=weight_dtype) if autocast else contextlib.nullcontext():
        down, mid = controlnet(**inputs, controlnet_cond=control_image, return_dict=False)
    down, mid = [r.float() for r in down], mid.float()
    prediction = unet(
        **inputs,
        down_block_additional_residuals=[r.to(weight_dtype) for r in down],
        mid_block_additional_residual=mid.to(weight_dtype),
        return_dict=False,
    )[0]
    loss = F.mse_loss(prediction.float(), target, reduction="mean")
    loss.backward()
    return loss


def set_checkpointing(unet, controlnet, checkpointing):
    """Gradient checkpointing as `CHECKPOINTING` names it."""
    for module, on in ((controlnet, checkpointing != "none"), (unet, checkpointing == "controlnet+unet")):
        module.enable_gradient_checkpointing() if on else module.disable_gradient_checkpointing()


def drop_gradients(controlnet):
    """Free each parameter's gradient as soon as it is complete: the activation peak is counted without them
    (each strategy keeps gradients its own way: `static_bytes`)."""
    for param in controlnet.parameters():
        param.register_post_accumulate_grad_hook(lambda p: setattr(p, "grad", None))


def count_activations(config_name, size, runs, weight_dtype=torch.bfloat16, autocast=True):
    """Activation peaks of the training step, counted on fake tensors.

    Args:
        size: the ControlNet size.
        runs: [(resolution, batch, checkpointing)].
        weight_dtype: the frozen models' dtype and autocast's (fp16 and bf16 count the same).
        autocast: the ControlNet in fp32 under autocast (DDP); False: its weights in `weight_dtype` (ZeRO-2, FSDP).

    Returns:
        {(resolution, batch, checkpointing): peak bytes}.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    peaks = {}
    with FakeTensorMode(), cuda_autocast_norms():
        unet, controlnet = build_models(config_name, size, weight_dtype, torch.float32 if autocast else weight_dtype)
        drop_gradients(controlnet)
        for resolution, batch, checkpointing in runs:
            set_checkpointing(unet, controlnet, checkpointing)
            tensors = step_inputs(unet, resolution, batch, weight_dtype)
            weights = [*unet.parameters(), *controlnet.parameters()]
            with LiveBytes(exclude=[*weights, *tree_leaves(tensors)]) as counter:
                training_step(unet, controlnet, *tensors, weight_dtype, autocast)
            peaks[resolution, batch, checkpointing] = counter.peak
            run = f"{size} ({'autocast' if autocast else 'half'}), {resolution} px, batch {batch}, {checkpointing}"
            print(f"  {run}: {counter.peak / GIB:.2f} GiB", flush=True)
    return peaks


def vae_encode_peak(config_name, resolution, dtype=torch.float32):
    """Peak bytes of one VAE encode (no gradients) of the SDXL VAE, counted on fake tensors: what training
    without --cache_latents adds before the step (the SDXL VAE overflows in fp16, so it encodes in fp32)."""
    from diffusers import AutoencoderKL
    from torch._subclasses.fake_tensor import FakeTensorMode

    from photobg.configs import get_config

    with FakeTensorMode():
        with torch.device("meta"):
            vae = AutoencoderKL.from_config(get_config(config_name)["vae"])
        _materialize(vae, dtype, None, "fake")
        pixels = torch.empty(1, 3, resolution, resolution, dtype=dtype)
        with torch.no_grad(), LiveBytes(exclude=[*vae.parameters(), pixels]) as counter:
            vae.encode(pixels).latent_dist.sample()
    return counter.peak


# ----------------------------------------------------------------------------- the real step on the CPU


def measure_on_cpu(config_name, size, resolution, checkpointing):
    """Run the real step (fp32, shared weights, gradients dropped) in this process; returns the bytes the step
    allocated at its peak (`LiveBytes`) and the peak rise of the process's resident memory (VmHWM)."""
    torch.manual_seed(0)
    unet, controlnet = build_models(config_name, size, torch.float32, weights="shared")
    drop_gradients(controlnet)
    set_checkpointing(unet, controlnet, checkpointing)
    tensors = step_inputs(unet, resolution, 1, torch.float32)
    exclude = [*unet.parameters(), *controlnet.parameters(), *tree_leaves(tensors)]
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident size
    before = _status("VmRSS")
    with LiveBytes(exclude=exclude) as counter:
        training_step(unet, controlnet, *tensors, torch.float32)
    return {"allocated_peak": counter.peak, "rss_peak_rise": _status("VmHWM") - before}


def _status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def check_against_cpu(config_name, resolution, sizes=("small", "full"), checkpointing=CHECKPOINTING):
    """For each (size, checkpointing): the fp32 count on fake tensors next to the real step's figures (each real
    step in its own process, so that its resident-memory peak is its own)."""
    rows = []
    for size in sizes:
        runs = [(resolution, 1, setting) for setting in checkpointing]
        counted = count_activations(config_name, size, runs, weight_dtype=torch.float32)
        for setting in checkpointing:
            code = "import json, sys; sys.path.insert(0, 'bench'); from train_memory import measure_on_cpu as m; "
            code += f"print(json.dumps(m({config_name!r}, {size!r}, {resolution}, {setting!r})))"
            env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")  # big tensors mmap'ed: freed memory leaves RSS
            out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
            real = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(dict(size=size, resolution=resolution, checkpointing=setting, **real))
            rows[-1]["counted"] = counted[resolution, 1, setting]
            gib = {key: f"{rows[-1][key] / GIB:.2f}" for key in ("counted", "allocated_peak", "rss_peak_rise")}
            print(f"  check {size} {setting} (GiB): {gib}", flush=True)
    return rows


# ----------------------------------------------------------------------------- what fits


# Per-GPU memory of the trained ControlNet by strategy (P its parameters, N GPUs), from each tool's documentation:
# - DDP (accelerate, autocast): fp32 weights 4P, fp32 gradients 4P, DDP's gradient buckets 4P (a second copy of the
#   gradients: accelerate leaves `gradient_as_bucket_view` off), AdamW's two fp32 moments 8P (8-bit AdamW: 2P).
# - ZeRO-2 (DeepSpeed fp16/bf16): the model in half precision 2P; fp32 master weights, the moments and the half
#   gradients partitioned (4P + 8P + 2P) / N; DeepSpeed's gradient reduce bucket (5e8 elements by default, 1 GB).
# - ZeRO-2 + CPU offload: master weights and moments on the CPU: 2P + 2P / N + the bucket.
# - FSDP FULL_SHARD (mixed precision): fp32 weights, gradients and moments partitioned (4P + 4P + 8P) / N, plus the
#   half-precision copies of the wrapped blocks being computed (this one and the prefetched next one).
# The frozen UNet is in half precision on every GPU (2 bytes a parameter) under every strategy.
STRATEGIES = ("DDP", "ZeRO-2", "ZeRO-2 + CPU offload", "FSDP")
ZERO_BUCKET = 5e8 * 2


def static_bytes(strategy, trainable, largest_block, gpus, optimizer="adamw"):
    """Bytes per GPU of the ControlNet's weights, gradients and optimizer states under `strategy`.

    Args:
        strategy: one of `STRATEGIES`.
        trainable: the ControlNet's parameter count.
        largest_block: the parameter count of its largest block (a FSDP unit).
        gpus: GPUs the sharded strategies shard over.
        optimizer: "adamw" (fp32 moments) or "adamw-8bit" (bitsandbytes; with DDP only here).
    """
    moments = {"adamw": 8, "adamw-8bit": 2}[optimizer]
    bucket = min(ZERO_BUCKET, 2 * trainable)
    if strategy == "DDP":
        return (4 + 4 + 4 + moments) * trainable
    if strategy == "ZeRO-2":
        return 2 * trainable + (4 + moments + 2) * trainable / gpus + bucket
    if strategy == "ZeRO-2 + CPU offload":
        return 2 * trainable + 2 * trainable / gpus + bucket
    if strategy == "FSDP":
        return (4 + 4 + moments) * trainable / gpus + 2 * 2 * largest_block
    raise ValueError(f"Unknown strategy {strategy!r}")


def parameter_counts(config_name):
    """Parameters of the frozen models and of each ControlNet size (and of its largest block), on the meta device."""
    from diffusers import AutoencoderKL

    from photobg.bench import meta_models
    from photobg.configs import get_config

    def count(module):
        return sum(p.numel() for p in module.parameters())

    models = meta_models(config_name)
    counts = {"unet": count(models["unet"]), "text_encoders": count(models["text_encoder"])}
    counts["text_encoders"] += count(models["text_encoder_2"])
    with torch.device("meta"):
        counts["vae"] = count(AutoencoderKL.from_config(get_config(config_name)["vae"]))
    for size in SIZES:
        _, controlnet = build_models(config_name, size, torch.float32, weights="meta")
        blocks = [m for m in controlnet.modules() if type(m).__name__ in ("BasicTransformerBlock", "ResnetBlock2D")]
        counts[size] = count(controlnet)
        counts[size + "_largest_block"] = max(count(block) for block in blocks)
    return counts


def fit_rows(counts, activations, vae_peak, gpus, cached=True):
    """Per setting: the per-GPU memory at batch 1, the memory each further sample adds, and the largest batch per GPU
    that fits each of `CARDS_GB` (0: not even one sample).

    Args:
        counts: `parameter_counts()`.
        activations: {(size, kind, checkpointing): (fixed bytes, bytes per sample)}, kind "autocast" (DDP) or "half".
        vae_peak: one VAE encode's peak bytes (per sample), for `cached=False`.
        gpus: GPUs of the sharded strategies.
        cached: latents and text embeddings cached (VAE and text encoders not on the GPU).
    """
    frozen = 2 * counts["unet"] + (0 if cached else 2 * counts["text_encoders"] + 4 * counts["vae"])
    rows = []
    for strategy in STRATEGIES:
        kind = "autocast" if strategy == "DDP" else "half"
        for size in [size for size in SIZES if (size, kind, CHECKPOINTING[0]) in activations]:
            for optimizer in ("adamw", "adamw-8bit") if strategy == "DDP" else ("adamw",):
                for checkpointing in CHECKPOINTING:
                    fixed, per_sample = activations[size, kind, checkpointing]
                    if not cached:
                        # The VAE encode runs before the step: it matters only when its peak is the larger one.
                        per_sample = max(per_sample, vae_peak)
                    weights = static_bytes(strategy, counts[size], counts[size + "_largest_block"], gpus, optimizer)
                    base = frozen + weights + fixed
                    rows.append(
                        dict(
                            strategy=strategy,
                            controlnet=size,
                            optimizer=optimizer,
                            checkpointing=checkpointing,
                            batch_1_gb=(base + per_sample) / 1e9,
                            per_sample_gb=per_sample / 1e9,
                            **{f"batch_{card}gb": _largest_batch(base, per_sample, card) for card in CARDS_GB},
                        )
                    )
    return rows


def _largest_batch(base, per_sample, card_gb):
    usable = (card_gb - 1) * 1e9 / 1.1  # 1 GB CUDA context; 10% for fragmentation and workspaces
    return max(0, math.floor((usable - base) / per_sample))


def markdown(rows, columns):
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append(
            "| " + " | ".join(f"{row[c]:.2f}" if isinstance(row[c], float) else str(row[c]) for c in columns) + " |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=CONFIG, help="a photobg.configs architecture (default: %(default)s)")
    parser.add_argument("--resolution", type=int, default=1024, help="training resolution (default: %(default)s)")
    parser.add_argument("--gpus", type=int, default=8, help="GPUs the sharded strategies shard over (default: 8)")
    parser.add_argument("--sizes", nargs="+", choices=SIZES, default=SIZES, help="ControlNet sizes (default: all)")
    parser.add_argument(
        "--check", type=int, nargs="*", default=[], help="also run the real step on the CPU at these sizes"
    )
    parser.add_argument("--json", help="write every figure to this file")
    args = parser.parse_args()
    started = time.perf_counter()
    counts = parameter_counts(args.config)
    activations, counted = {}, {}
    for size in args.sizes:
        for kind in ("autocast", "half") if size == "full" else ("autocast",):
            runs = [(args.resolution, batch, setting) for setting in CHECKPOINTING for batch in (1, LARGE_BATCH)]
            peaks = count_activations(args.config, size, runs, autocast=kind == "autocast")
            for setting in CHECKPOINTING:
                one, large = peaks[args.resolution, 1, setting], peaks[args.resolution, LARGE_BATCH, setting]
                per_sample = (large - one) / (LARGE_BATCH - 1)
                activations[size, kind, setting] = (one - per_sample, per_sample)
                counted[f"{size}/{kind}/{setting}"] = {"batch_1": one, f"batch_{LARGE_BATCH}": large}
    vae_peak = vae_encode_peak(args.config, args.resolution)
    checks = [row for resolution in args.check for row in check_against_cpu(args.config, resolution)]
    tables = {cached: fit_rows(counts, activations, vae_peak, args.gpus, cached) for cached in (True, False)}
    activation_rows = [
        dict(controlnet=size, kind=kind, checkpointing=setting, fixed_gib=fixed / GIB, per_sample_gib=per / GIB)
        for (size, kind, setting), (fixed, per) in activations.items()
    ]
    print(f"\nParameters: {json.dumps({k: f'{v / 1e6:.1f} M' for k, v in counts.items()})}")
    print(f"VAE encode peak at {args.resolution} px (fp32, one sample): {vae_peak / GIB:.2f} GiB")
    print(f"\nActivation peak of the step at {args.resolution} px (fixed + per sample):")
    print(markdown(activation_rows, ["controlnet", "kind", "checkpointing", "fixed_gib", "per_sample_gib"]))
    columns = ["strategy", "controlnet", "optimizer", "checkpointing", "batch_1_gb", "per_sample_gb"]
    columns += [f"batch_{card}gb" for card in CARDS_GB]
    for cached, rows in tables.items():
        what = "cached latents and text embeddings" if cached else "VAE and text encoders on the GPU"
        print(f"\nLargest batch per GPU at {args.resolution} px, {what}, sharded over {args.gpus} GPUs:")
        print(markdown(rows, columns))
    if checks:
        print("\nCounted (fake tensors) vs the real step on this CPU (fp32, batch 1):")
        in_gib = ("counted", "allocated_peak", "rss_peak_rise")
        rows = [{**row, **{key: row[key] / GIB for key in in_gib}} for row in checks]
        print(markdown(rows, ["size", "resolution", "checkpointing", *in_gib]))
    print(f"\n({time.perf_counter() - started:.0f} s)")
    if args.json:
        result = dict(settings=vars(args), parameters=counts, vae_encode_peak=vae_peak, counted=counted)
        result.update(activations=activation_rows, fits=tables[True], fits_uncached=tables[False], checks=checks)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
