"""Train the salient-aware ControlNet: one accelerate training loop for every backbone and both variants.

- `inpaint` variant: an inpainting UNet (SD2- or SDXL-inpainting, 9 channels); the ControlNet (from that UNet)
  takes the same 9-channel input (noisy latents, latent-size inpaint mask, masked-image latents) and, as
  `controlnet_cond`, the inpaint mask (3 channels, [0, 1]).
- `base` variant: a text-to-image UNet (SD2- or SDXL-base, 4 channels); `controlnet_cond` is the object's pixels
  on black.

Only the ControlNet trains (fp32 weights); UNet, VAE and text encoder(s) are frozen in `weight_dtype`. The
backbone (`photobg.backbones`, detected from the base model's folder) picks the pipeline class; training builds
the ControlNet's inputs with the method's convention functions and the text conditioning (SDXL: both encoders,
pooled embedding, time ids from each example's crop) with that pipeline's own `encode_conditioning`, so training
and inference agree by construction. The ControlNet is full-size or compact (`--controlnet_size`,
`photobg.controlnets`).

Entry points: `train_controlnet_inpaint.py` / `train_controlnet.py` at the repository root (the diffusers
ControlNet example's flags) and `photobg train --variant inpaint|base`. `main(config)` is the loop.
"""

import argparse
import dataclasses
import json
import logging
import math
import os
import random
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from .checkpoints import (
    CONFIG_FILE,
    CheckpointError,
    TrainState,
    checkpoint_to_resume,
    latest_checkpoint,
    resume,
    save_checkpoint,
    saved_config,
    write_json,
)
from .train_config import (
    ConfigError,
    add_arguments,
    build_parser,
    check_config,
    config_from_args,
    short_side,
)

HELP = "Train the salient-aware ControlNet (inpaint or base variant) with accelerate."
# Where the final save is staged, and where the previous pipeline waits while the new one is renamed in.
FINAL_TMP, PIPELINE_OLD = ".final.tmp", ".pipeline.old"

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- entry points


def cli_main(variant, argv=None):
    """Entry scripts: parse flags (bad flags exit with a usage error naming them), then train."""
    parser = build_parser(variant)
    args = parser.parse_args(argv)
    config = config_from_args(args, variant)
    try:
        check_config(config)
    except ConfigError as err:
        parser.error(str(err))
    return main_reporting_errors(config, parser.prog, args.debug)


def run(args):
    """`photobg train`."""
    config = config_from_args(args)
    try:
        check_config(config)
    except ConfigError as err:
        raise SystemExit(f"photobg train: error: {err}") from None
    return main_reporting_errors(config, "photobg train", args.debug)


# Failures that a user's data, flags or files cause: reported in one line (the traceback with --debug).
EXPECTED_ERRORS = (ConfigError, CheckpointError, FloatingPointError)


def main_reporting_errors(config, prog, debug=False):
    """`main(config)`; an expected failure prints `PROG: error: MESSAGE` and exits with status 2 (a bad flag)
    or 1, unless `debug` asks for the traceback."""
    from .data import BadExample

    try:
        main(config)
    except (*EXPECTED_ERRORS, BadExample) as err:
        if debug:
            raise
        print(f"{prog}: error: {err} (--debug shows the traceback)", file=sys.stderr)
        raise SystemExit(2 if isinstance(err, ConfigError) else 1) from None
    return 0


# ----------------------------------------------------------------------------- the loop


@dataclass
class TrainResult:
    """What `main` returns: the output folder, the last step, the loss of every optimisation step of this run and
    when each ended (`time.perf_counter()`, for throughput measurements), and how many bad examples were
    replaced, by kind (summed over the processes)."""

    output_dir: str
    step: int
    losses: list
    step_times: list
    bad_examples: dict = dataclasses.field(default_factory=dict)


def main(config):
    """Train a ControlNet as `config` says; returns a `TrainResult`."""
    import torch

    check_config(config)
    accelerator = make_accelerator(config)
    checkpoint = checkpoint_to_resume(config, accelerator.num_processes, log=accelerator.is_main_process)
    seed = resolve_seed(config, checkpoint)
    prepare_output_dir(config, accelerator)
    examples = make_examples(config, seed)  # columns checked before any model loads
    models = load_models(config, accelerator)
    if config.cache_latents:
        examples = cache_latents(config, examples, models, accelerator)
    loader, sampler = make_loader(config, examples, seed)
    steps = plan_steps(config, len(loader), accelerator.num_processes)
    optimizer = make_optimizer(config, models.controlnet, accelerator.num_processes)
    lr_scheduler = make_lr_scheduler(config, optimizer, steps["max_train_steps"], accelerator.num_processes)
    controlnet, optimizer, loader, lr_scheduler = accelerator.prepare(
        models.controlnet, optimizer, loader, lr_scheduler
    )
    resolved = resolved_config(config, accelerator, seed, steps, optimizer)
    start_trackers(config, accelerator, resolved)
    state = TrainState(
        seed=seed, noise=torch.Generator(accelerator.device).manual_seed(seed + accelerator.process_index)
    )
    if checkpoint is not None:
        resume(checkpoint, accelerator, state, lr_scheduler)
    elif config.resume_from_checkpoint:
        logger.info(f"No checkpoint in {config.output_dir!r} yet: starting a new run.")
    log_plan(accelerator, len(examples), steps, resolved)
    losses, step_times, bad = train(
        config,
        accelerator,
        models,
        controlnet,
        optimizer,
        lr_scheduler,
        loader,
        sampler,
        examples,
        state,
        steps,
        resolved,
    )
    bad = report_bad_examples(accelerator, bad)
    save_outputs(config, accelerator, models, controlnet, resolved)
    accelerator.end_training()
    return TrainResult(
        output_dir=config.output_dir, step=state.step, losses=losses, step_times=step_times, bad_examples=bad
    )


def train(
    config, accelerator, models, controlnet, optimizer, lr_scheduler, loader, sampler, examples, state, steps, resolved
):
    """The optimisation loop from `state.step` to `max_train_steps`; returns the loss and end time of each step,
    and this process's count of bad examples that were replaced, by kind."""
    import time
    from collections import Counter

    import torch
    from tqdm.auto import tqdm

    max_steps, per_epoch = steps["max_train_steps"], steps["updates_per_epoch"]
    progress = tqdm(total=max_steps, initial=state.step, desc="Steps", disable=not accelerator.is_local_main_process)
    losses, step_times, micro_losses, pending, validated, bad = [], [], [], [], None, Counter()
    while state.step < max_steps:
        epoch = state.step // per_epoch
        sampler.epoch = examples.epoch = epoch
        # Data position: the batches of this epoch already consumed before the checkpoint are skipped.
        done = (state.step % per_epoch) * config.gradient_accumulation_steps
        batches = accelerator.skip_first_batches(loader, done) if done else loader
        for k, batch in enumerate(batches):
            if k == 0 and epoch == 0 and not done:
                logger.info(f"Process {accelerator.process_index} starts with examples {batch['names']}")
            bad.update(kind for kind in batch["bad"] if kind)
            with accelerator.accumulate(controlnet):
                loss = training_loss(models, controlnet, batch, state.noise, accelerator)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(controlnet.parameters(), config.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=config.set_grads_to_none)
            micro_losses.append(loss.detach())  # stays on the device: no host sync inside the step
            if not accelerator.sync_gradients:
                continue
            state.step += 1
            step_times.append(time.perf_counter())
            pending.append(torch.stack(micro_losses).mean())
            micro_losses = []
            progress.update(1)
            checkpoint = state.step % config.checkpointing_steps == 0
            validation = config.validation_prompt and state.step % config.validation_steps == 0
            if checkpoint or validation or state.step % config.logging_steps == 0 or state.step >= max_steps:
                # One host sync per logging interval, and always before anything is saved: a non-finite loss
                # stops the run before it can reach a checkpoint.
                losses += read_losses(config, accelerator, pending, state.step, lr_scheduler.get_last_lr()[0])
                progress.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lr_scheduler.get_last_lr()[0]:.2e}")
                pending = []
            if checkpoint:
                save_checkpoint(config, accelerator, state, resolved)
            if validation:
                validated = validate(config, accelerator, models, controlnet, state)
            if state.step >= max_steps:
                break
    progress.close()
    if config.validation_prompt and validated != state.step:
        validate(config, accelerator, models, controlnet, state)
    return losses, step_times, bad


def report_bad_examples(accelerator, bad):
    """Sum every process's count of replaced bad examples and log it once; returns the sum ({kind: count})."""
    from collections import Counter

    from accelerate.utils import gather_object

    from .data import describe_bad

    total = Counter()
    for counts in gather_object([dict(bad)]):
        total.update(counts)
    if total and accelerator.is_main_process:
        logger.warning(
            f"{sum(total.values())} bad training examples were skipped (each replaced by the next good one): "
            f"{describe_bad(total)}; the warnings above name them."
        )
    return dict(total)


def read_losses(config, accelerator, pending, step, lr):
    """Bring the losses of the last `len(pending)` steps to the host (averaged over processes), stop on a
    non-finite one, and log them; returns them as floats."""
    import torch

    values = accelerator.reduce(torch.stack(pending), "mean").tolist()
    first_step = step - len(values) + 1
    for offset, value in enumerate(values):
        if not math.isfinite(value):
            stop_non_finite(config, accelerator, value, first_step + offset)
        accelerator.log({"loss": value}, step=first_step + offset)
    accelerator.log({"lr": lr}, step=step)
    return values


def stop_non_finite(config, accelerator, value, step):
    """Stop on a NaN/inf loss; it is caught before the next checkpoint, so every saved checkpoint is intact."""
    accelerator.end_training()
    last = latest_checkpoint(config.output_dir)
    kept = f"the last checkpoint, {last}, is intact" if last else "no checkpoint had been saved yet"
    raise FloatingPointError(
        f"The loss is {value} at step {step}: training stopped; {kept}. Try a lower "
        "--learning_rate, --mixed_precision bf16 instead of fp16, or look for broken examples."
    )


# ----------------------------------------------------------------------------- setup


def make_accelerator(config):
    """The `Accelerator`: mixed precision, gradient accumulation, trackers, logging."""
    import diffusers
    import transformers
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    logging_dir = Path(config.output_dir, config.logging_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        log_with=None if config.report_to == "none" else config.report_to,
        project_config=ProjectConfiguration(project_dir=config.output_dir, logging_dir=str(logging_dir)),
    )
    # Every process logs (per-process facts such as its first examples); the libraries only on the main one.
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if not accelerator.is_local_main_process:
        transformers.utils.logging.set_verbosity_error()
        diffusers.utils.logging.set_verbosity_error()
    else:
        transformers.utils.logging.set_verbosity_warning()
        diffusers.utils.logging.set_verbosity_warning()
    if config.allow_tf32:
        import torch

        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return accelerator


def resolve_seed(config, checkpoint=None):
    """The run's seed: --seed, else the resumed run's (from `checkpoint`), else one drawn by the main process
    and shared."""
    from accelerate.utils import broadcast_object_list, set_seed

    seed = config.seed
    if seed is None and checkpoint is not None:
        seed = saved_config(checkpoint).get("seed")
    if seed is None:
        seed = broadcast_object_list([random.SystemRandom().randrange(2**31)])[0]
    set_seed(seed)
    return seed


def prepare_output_dir(config, accelerator):
    """Create --output_dir, clean up after a run killed while writing (a half-written checkpoint or final
    model is removed; a pipeline caught between its two renames is put back), create the Hub repo."""
    if accelerator.is_main_process:
        output_dir = Path(config.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        for stale in [*output_dir.glob(".checkpoint-*.tmp"), output_dir / FINAL_TMP, output_dir / ".pipeline.tmp"]:
            if stale.exists():
                logger.warning(f"Removing {stale}, left by a run killed while writing it.")
                shutil.rmtree(stale)
        old, pipeline = output_dir / PIPELINE_OLD, output_dir / "pipeline"
        if old.exists() and not pipeline.exists():
            os.replace(old, pipeline)
        shutil.rmtree(old, ignore_errors=True)
        if config.push_to_hub:
            from huggingface_hub import create_repo

            repo = config.hub_model_id or Path(config.output_dir).name
            config.hub_model_id = create_repo(repo_id=repo, exist_ok=True, token=config.hub_token).repo_id
    accelerator.wait_for_everyone()


@dataclass
class Models:
    """The modules of a training run; only `controlnet` trains.

    `backbone` (`photobg.backbones.Backbone`) names the text encoders and tokenizers (SDXL adds `text_encoder_2`
    and `tokenizer_2`); `pipeline_attributes` are the base model's `model_index.json` settings (e.g.
    `force_zeros_for_empty_prompt`); `pipeline` is photobg's pipeline around these very modules, whose
    `encode_conditioning` builds the text conditioning in training as in inference."""

    tokenizer: object
    text_encoder: object
    vae: object
    unet: object
    noise_scheduler: object
    controlnet: object
    scheduler_config: dict
    weight_dtype: object
    in_channels: int
    backbone: object
    tokenizer_2: object = None
    text_encoder_2: object = None
    pipeline_attributes: dict = dataclasses.field(default_factory=dict)
    pipeline: object = None

    @classmethod
    def from_pipeline(cls, pipe, weight_dtype=None):
        """The training modules of a loaded photobg pipeline (its own modules, no copies)."""
        from diffusers import DDPMScheduler

        from .backbones import get_backbone

        backbone = get_backbone(pipe.variant_backbones[pipe.unet.config.in_channels])
        models = cls(
            vae=pipe.vae,
            unet=pipe.unet,
            noise_scheduler=DDPMScheduler.from_config(pipe.scheduler.config),
            controlnet=pipe.controlnet,
            scheduler_config=dict(pipe.scheduler.config),
            weight_dtype=weight_dtype or pipe.unet.dtype,
            in_channels=pipe.unet.config.in_channels,
            backbone=backbone,
            pipeline_attributes=pipeline_settings(pipe.config),
            **{name: getattr(pipe, name) for name in (*backbone.text_encoders, *backbone.tokenizers)},
        )
        models.pipeline = pipe
        return models

    @property
    def frozen(self):
        """The frozen modules: VAE, UNet and the text encoders."""
        return [self.vae, self.unet, *(getattr(self, name) for name in self.backbone.text_encoders)]


def pipeline_settings(model_index):
    """The settings of a `model_index.json` (e.g. `force_zeros_for_empty_prompt`), without its components."""
    return {k: v for k, v in model_index.items() if not k.startswith("_") and not isinstance(v, (list, tuple))}


def load_models(config, accelerator):
    """Load the base model's components (frozen, `weight_dtype`, on the device) and the ControlNet (fp32).

    The backbone, detected from the folder, says which text encoders and tokenizers there are; each text
    encoder's class is the one its `model_index.json` entry names (SDXL's second: `CLIPTextModelWithProjection`)."""
    import torch
    import transformers
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer

    from .backbones import detect_backbone
    from .models import _load_config, resolve_model

    model = resolve_model(config.pretrained_model_name_or_path, "Base model")
    backbone = detect_backbone(model)
    index = _load_config(model, None, "Model", filename="model_index.json")
    hub = dict(revision=config.revision, cache_dir=config.cache_dir)
    text = {}
    for name in backbone.tokenizers:
        source = dict(pretrained_model_name_or_path=model, subfolder=name)
        if config.tokenizer_name and name == "tokenizer":
            source = dict(pretrained_model_name_or_path=config.tokenizer_name)
        text[name] = AutoTokenizer.from_pretrained(**source, **hub)
    for name in backbone.text_encoders:
        cls = getattr(transformers, index[name][1])
        text[name] = cls.from_pretrained(model, subfolder=name, variant=config.variant, **hub)
    vae = AutoencoderKL.from_pretrained(model, subfolder="vae", variant=config.variant, **hub)
    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet", variant=config.variant, **hub)
    noise_scheduler = DDPMScheduler.from_pretrained(model, subfolder="scheduler", **hub)
    scheduler_config = dict(DDPMScheduler.load_config(model, subfolder="scheduler", **hub))
    controlnet = load_controlnet(config, unet)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    models = Models(
        vae=vae,
        unet=unet,
        noise_scheduler=noise_scheduler,
        controlnet=controlnet,
        scheduler_config=scheduler_config,
        weight_dtype=weight_dtype,
        in_channels=unet.config.in_channels,
        backbone=backbone,
        pipeline_attributes=pipeline_settings(index),
        **text,
    )
    for frozen in models.frozen:
        frozen.requires_grad_(False)
        frozen.to(accelerator.device)
        if weight_dtype != torch.float32:
            frozen.to(dtype=weight_dtype)
    controlnet.train()
    if config.gradient_checkpointing:
        # Both, as diffusers' SDXL ControlNet example: the loss reaches the ControlNet through the frozen UNet,
        # whose activations are most of the step's memory.
        controlnet.enable_gradient_checkpointing()
        unet.enable_gradient_checkpointing()
    if config.enable_xformers_memory_efficient_attention:
        unet.enable_xformers_memory_efficient_attention()
        controlnet.enable_xformers_memory_efficient_attention()
    register_checkpoint_hooks(accelerator)
    models.pipeline = make_pipeline(models, controlnet)
    if models.pipeline.vae_needs_upcast():  # the pipeline's rule: SDXL's VAE overflows in fp16
        vae.to(dtype=torch.float32)
    return models


def load_controlnet(config, unet):
    """--controlnet_model_name_or_path (folder, a complete model's `controlnet/`, Hub id or state-dict file),
    else a ControlNet of --controlnet_size initialised from the UNet (`photobg.controlnets.make_controlnet`);
    always fp32, with the UNet's input channels. Its `config.json` records its architecture (a compact one
    loads with plain `ControlNetModel.from_pretrained`)."""
    import torch
    from diffusers import ControlNetModel

    from .controlnets import make_controlnet
    from .models import STATE_DICT_SUFFIXES, controlnet_from_state_dict, resolve_model

    spec = config.controlnet_model_name_or_path
    if spec is None:
        return make_controlnet(unet, config.controlnet_size)
    if os.path.isfile(spec) and spec.endswith(STATE_DICT_SUFFIXES):
        controlnet = controlnet_from_state_dict(spec, dict(unet.config))
    else:
        folder = resolve_model(spec, "ControlNet")
        subfolder = "controlnet" if os.path.isdir(os.path.join(folder, "controlnet")) else None
        controlnet = ControlNetModel.from_pretrained(folder, subfolder=subfolder, cache_dir=config.cache_dir)
    if controlnet.config.in_channels != unet.config.in_channels:
        raise ConfigError(
            f"--controlnet_model_name_or_path {spec!r} takes {controlnet.config.in_channels} input channels but the "
            f"base model's UNet takes {unet.config.in_channels}."
        )
    return controlnet.to(torch.float32)


def register_checkpoint_hooks(accelerator):
    """Checkpoints hold the ControlNet as a diffusers folder (`controlnet/`), like diffusers' example. Under FSDP
    accelerate saves and loads the sharded model itself."""
    from accelerate.utils import DistributedType
    from diffusers import ControlNetModel

    if accelerator.distributed_type == DistributedType.FSDP:
        return

    def save_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            for model in models:
                accelerator.unwrap_model(model).save_pretrained(os.path.join(output_dir, "controlnet"))
        weights.clear()  # saved above; accelerate must not save them again

    def load_hook(models, input_dir):
        while models:
            model = accelerator.unwrap_model(models.pop())
            saved = ControlNetModel.from_pretrained(input_dir, subfolder="controlnet")
            model.load_state_dict(saved.state_dict())

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def make_examples(config, seed):
    """The training examples (see `photobg.data.TrainExamples`), columns checked."""
    from .data import TrainExamples, load_train_dataset

    columns = (config.image_column, config.conditioning_image_column, config.caption_column)
    dataset = load_train_dataset(
        dataset_name=config.dataset_name,
        dataset_config_name=config.dataset_config_name,
        train_data_dir=config.train_data_dir,
        cache_dir=config.cache_dir,
        columns=columns,
        max_train_samples=config.max_train_samples,
        seed=seed,
    )
    examples = TrainExamples(
        dataset,
        columns=columns,
        resolution=config.resolution,
        resize_short_side=short_side(config),
        center_crop=config.center_crop,
        random_flip=config.random_flip,
        proportion_empty_prompts=config.proportion_empty_prompts,
        seed=seed,
        bad_examples=config.bad_examples,
    )
    examples[0]  # fails now, before any model loads, when the data has no usable example
    return examples


def make_loader(config, examples, seed):
    """The DataLoader (before `accelerator.prepare` shards it) and its sampler, whose `epoch` the loop sets."""
    import torch

    from .data import Collate, EpochSampler

    sampler = EpochSampler(len(examples), seed)
    loader = torch.utils.data.DataLoader(
        examples,
        batch_size=config.train_batch_size,
        sampler=sampler,
        collate_fn=Collate(),
        num_workers=config.dataloader_num_workers,
        # Workers decode the next batches while the device computes; pinned pages make the copy asynchronous.
        # (Not persistent: each epoch's workers must see the dataset's new `epoch`, which seeds crop and flip.)
        pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(seed),  # keeps the global RNG out of data loading
    )
    return loader, sampler


def plan_steps(config, batches_per_process, num_processes):
    """Steps per epoch, total steps and epochs (accelerate shards the batches over the processes)."""
    per_process = math.ceil(batches_per_process / num_processes)
    updates_per_epoch = math.ceil(per_process / config.gradient_accumulation_steps)
    max_steps = config.max_train_steps or config.num_train_epochs * updates_per_epoch
    return {
        "updates_per_epoch": updates_per_epoch,
        "max_train_steps": max_steps,
        "num_train_epochs": math.ceil(max_steps / updates_per_epoch),
    }


def make_optimizer(config, controlnet, num_processes):
    """AdamW (or 8-bit AdamW) over the ControlNet's parameters; --scale_lr applied."""
    import torch

    lr = config.learning_rate
    if config.scale_lr:
        lr *= config.gradient_accumulation_steps * config.train_batch_size * num_processes
    kwargs = dict(lr=lr, betas=(config.adam_beta1, config.adam_beta2), weight_decay=config.adam_weight_decay)
    kwargs["eps"] = config.adam_epsilon
    if config.use_8bit_adam:
        import bitsandbytes

        return bitsandbytes.optim.AdamW8bit(controlnet.parameters(), **kwargs)
    # One fused kernel for the whole update instead of a loop over ~300 parameter tensors (CUDA and CPU).
    return torch.optim.AdamW(controlnet.parameters(), fused=True, **kwargs)


def make_lr_scheduler(config, optimizer, max_train_steps, num_processes):
    """diffusers' schedule; counts are multiplied by the processes because the prepared scheduler steps once
    per process at each optimisation step."""
    from diffusers.optimization import get_scheduler

    return get_scheduler(
        config.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=config.lr_warmup_steps * num_processes,
        num_training_steps=max_train_steps * num_processes,
        num_cycles=config.lr_num_cycles,
        power=config.lr_power,
    )


def resolved_config(config, accelerator, seed, steps, optimizer):
    """The configuration as run: the flags plus what was derived from them (saved with every checkpoint)."""
    from . import __version__

    resolved = dataclasses.asdict(config)
    resolved.update(
        seed=seed,
        learning_rate=optimizer.param_groups[0]["lr"],
        resize_short_side=short_side(config),
        max_train_steps=steps["max_train_steps"],
        num_train_epochs=steps["num_train_epochs"],
        num_processes=accelerator.num_processes,
        mixed_precision=accelerator.mixed_precision,
        total_batch_size=config.train_batch_size * accelerator.num_processes * config.gradient_accumulation_steps,
        photobg_version=__version__,
    )
    if accelerator.is_main_process:
        write_json(Path(config.output_dir, CONFIG_FILE), resolved)
    return resolved


def start_trackers(config, accelerator, resolved):
    """Start the trackers with the flat (scalar) part of the configuration."""
    if config.report_to == "none":
        return
    flat = {k: v for k, v in resolved.items() if isinstance(v, (int, float, str, bool))}
    accelerator.init_trackers(config.tracker_project_name, config=flat)


def log_plan(accelerator, num_examples, steps, resolved):
    if not accelerator.is_main_process:
        return
    logger.info(
        f"Training the {resolved['controlnet_variant']} variant on {num_examples} examples: "
        f"{steps['max_train_steps']} steps ({steps['num_train_epochs']} epochs of {steps['updates_per_epoch']}), "
        f"{resolved['num_processes']} processes, total batch {resolved['total_batch_size']}, "
        f"mixed precision {resolved['mixed_precision']}."
    )


# ----------------------------------------------------------------------------- latent caching


def cache_latents(config, examples, models, accelerator):
    """Encode every example once (see `photobg.data.CachedExamples`); each process encodes its share."""
    import hashlib

    from .data import CachedExamples, Collate

    key = json.dumps(
        [
            config.pretrained_model_name_or_path,
            config.revision,
            config.variant,
            config.resolution,
            examples.resize_short_side,
            config.center_crop,
            config.random_flip,
            examples.seed,
            examples.dataset._fingerprint,
            str(models.weight_dtype),
        ]
    )
    folder = Path(config.output_dir, "latent_cache", hashlib.sha256(key.encode()).hexdigest()[:16])
    fixed_prompts = config.proportion_empty_prompts == 0 and _captions_are_strings(examples)
    return CachedExamples.build(
        examples,
        folder,
        encode=lambda batch: encode_for_cache(models, batch, fixed_prompts, accelerator.device),
        process_index=accelerator.process_index,
        num_processes=accelerator.num_processes,
        barrier=accelerator.wait_for_everyone,
        batch_size=config.train_batch_size,
        collate=Collate(),
        fixed_prompts=fixed_prompts,
        num_workers=config.dataloader_num_workers,
    )


def _captions_are_strings(examples):
    feature = examples.dataset.features[examples.caption_column]
    return getattr(feature, "dtype", None) in ("string", "large_string")


def encode_for_cache(models, batch, fixed_prompts, device):
    """What `--cache_latents` stores per example: the VAE's latent distributions (sampled anew each step),
    the object mask (uint8), the photo (uint8, base variant: its control image needs the pixels), the crop
    (SDXL's time ids) and, with fixed prompts, the text embeddings (`text_conditioning`'s, without time ids:
    `prompt_embeds`, and SDXL's `pooled_prompt_embeds`)."""
    import torch

    from .conventions import inpaint_mask_from_object

    with torch.no_grad():
        pixel_values = batch["pixel_values"].to(device, models.vae.dtype)
        cached = {"latent_params": models.vae.encode(pixel_values).latent_dist.parameters, "crop": batch["crop"]}
        if models.in_channels == 9:
            inpaint_mask = inpaint_mask_from_object(batch["object_mask"]).to(device, models.vae.dtype)
            masked_image = pixel_values * (inpaint_mask < 0.5)
            cached["masked_latent_params"] = models.vae.encode(masked_image).latent_dist.parameters
        else:
            cached["pixels_uint8"] = ((batch["pixel_values"] + 1) * 127.5).round().to(torch.uint8)
        cached["mask_uint8"] = (batch["object_mask"] * 255).round().to(torch.uint8)
        if fixed_prompts:
            conditioning = text_conditioning(models, batch, pixel_values.shape[-2:], device)
            cached["prompt_embeds"] = conditioning["encoder_hidden_states"]
            if conditioning["added_cond_kwargs"]:
                cached["pooled_prompt_embeds"] = conditioning["added_cond_kwargs"]["text_embeds"]
    return {k: v.cpu() for k, v in cached.items()}


# ----------------------------------------------------------------------------- text conditioning


# What a batch may carry instead of captions (cached embeddings), under the names of `encode_conditioning`.
CACHED_TEXT = ("prompt_embeds", "pooled_prompt_embeds")


def text_conditioning(models, batch, size, device):
    """The ControlNet's and the UNet's text conditioning of a batch: `encoder_hidden_states` and
    `added_cond_kwargs` (None on SD2), built by the pipeline's own `encode_conditioning` (the function inference
    calls; once per group of examples that share their micro-conditioning), so that training conditions exactly
    as inference does:

    - a caption "" (dropped by --proportion_empty_prompts, or missing) is inference's unconditional input, the
      classifier-free-guidance negative of `negative_prompt=None`: zero embeddings where the model sets
      `force_zeros_for_empty_prompt` (SDXL), the encoded "" otherwise (SD2);
    - SDXL's time ids: the example's original size and crop corner (`batch["crop"]`, see `data.Crop`), target
      size = the training size;
    - cached embeddings (`CACHED_TEXT` keys of the batch) stand for the captions.

    Args:
        models: the run's `Models`.
        batch: a collated batch: `captions` and `crop`, or cached embeddings and `crop`.
        size: (height, width) of the training images.
        device: where the conditioning goes.

    Returns:
        dict(encoder_hidden_states=(B, 77, D), added_cond_kwargs=None or {"text_embeds", "time_ids"}).
    """
    import inspect

    import torch

    pipe = models.pipeline
    accepted = inspect.signature(pipe.encode_conditioning).parameters
    height, width = (int(s) for s in size)
    # Examples that share the micro-conditioning the backbone takes (all of them on SD2) and whether they are
    # unconditional are encoded in one call.
    groups = {}
    for k, caption in enumerate(batch["captions"]):
        original_height, original_width, top, left = (int(v) for v in batch["crop"][k])
        micro = dict(
            original_size=(original_height, original_width),
            crops_coords_top_left=(top, left),
            target_size=(height, width),
        )
        micro = tuple((key, value) for key, value in micro.items() if key in accepted)
        groups.setdefault((not _cached(batch) and caption == "", micro), []).append(k)
    order, parts = [], []
    for (unconditional, micro), members in groups.items():
        cached = {key: batch[key][members].to(device, models.weight_dtype) for key in CACHED_TEXT if key in batch}
        prompt_kwargs = dict(
            prompt=None if cached else [batch["captions"][k] for k in members],
            negative_prompt=None,
            prompt_embeds=cached.get("prompt_embeds"),
            negative_prompt_embeds=None,
            num_images_per_prompt=1,
            device=device,
            do_classifier_free_guidance=unconditional,
            lora_scale=None,
            clip_skip=None,
        )
        if "pooled_prompt_embeds" in cached:
            micro += (("pooled_prompt_embeds", cached["pooled_prompt_embeds"]),)
        conditioning = pipe.encode_conditioning(prompt_kwargs, height, width, **dict(micro))
        # The guidance batch is [negatives; positives]: unconditional examples are its negative half.
        pick = _negative_half if unconditional else _whole
        parts.append(_join([conditioning.for_controlnet()], pick))
        order += members
    inverse = torch.argsort(torch.tensor(order))
    return _join(parts, lambda tensors: torch.cat(tensors)[inverse.to(tensors[0].device)])


def _negative_half(tensors):
    return tensors[0].chunk(2)[0]


def _whole(tensors):
    return tensors[0]


def _cached(batch):
    return any(key in batch for key in CACHED_TEXT)


def _join(rows, function):
    """`for_controlnet()`-style dicts -> one, each tensor (also inside `added_cond_kwargs`) being `function` of
    the list of the rows' tensors."""
    added = rows[0]["added_cond_kwargs"]
    return {
        "encoder_hidden_states": function([row["encoder_hidden_states"] for row in rows]),
        "added_cond_kwargs": {key: function([row["added_cond_kwargs"][key] for row in rows]) for key in added}
        if added
        else None,
    }


# ----------------------------------------------------------------------------- one step


def encode_batch(models, batch, generator=None):
    """A batch -> the diffusion inputs, built with the pipeline's convention functions.

    Returns:
        dict: `latents` (B, 4, h, w) scaled, `mask` (B, 1, h, w) latent-size inpaint mask (None for the base
        variant), `masked_image_latents` (B, 4, h, w) (None for the base variant), `control_image`
        (B, 3, H, W) in [0, 1], `conditioning` (`text_conditioning`'s dict: the ControlNet's and UNet's
        `encoder_hidden_states` and `added_cond_kwargs`).
    """
    import torch
    import torch.nn.functional as F
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    from .conventions import inpaint_mask_from_object, make_control_image
    from .data import uint8_to_pixels

    # The VAE may run in float32 where the frozen models are in half precision (`load_models`: SDXL's VAE).
    vae, dtype, device = models.vae, models.weight_dtype, models.vae.device
    scale = vae.config.scaling_factor
    with torch.no_grad():
        if "latent_params" in batch:  # --cache_latents
            object_mask = batch["mask_uint8"].to(device, torch.float32) / 255.0
            pixel_values = uint8_to_pixels(batch["pixels_uint8"]).to(device) if "pixels_uint8" in batch else None
            latent_dist = DiagonalGaussianDistribution(batch["latent_params"].to(device, vae.dtype))
        else:
            object_mask = batch["object_mask"].to(device)
            pixel_values = batch["pixel_values"].to(device)
            latent_dist = vae.encode(pixel_values.to(vae.dtype)).latent_dist
        latents = (latent_dist.sample(generator) * scale).to(dtype)  # (B, 4, h, w)
        inpaint_mask = inpaint_mask_from_object(object_mask)  # (B, 1, H, W), 1 = generate, binary (the UNet's)
        control_image = make_control_image(pixel_values, 1 - object_mask, models.in_channels)  # (B, 3, H, W), soft
        mask = masked_image_latents = None
        if models.in_channels == 9:
            # As diffusers' prepare_mask_latents: nearest resize of the binary mask to the latent size.
            mask = F.interpolate(inpaint_mask, size=latents.shape[-2:]).to(dtype)
            if "masked_latent_params" in batch:
                masked_dist = DiagonalGaussianDistribution(batch["masked_latent_params"].to(device, vae.dtype))
            else:
                masked_dist = vae.encode((pixel_values * (inpaint_mask < 0.5)).to(vae.dtype)).latent_dist
            masked_image_latents = (masked_dist.sample(generator) * scale).to(dtype)
        conditioning = text_conditioning(models, batch, control_image.shape[-2:], device)
    return {
        "latents": latents,
        "mask": mask,
        "masked_image_latents": masked_image_latents,
        "control_image": control_image.to(dtype),
        "conditioning": conditioning,
    }


def training_loss(models, controlnet, batch, generator, accelerator=None, noise=None, timesteps=None):
    """The loss of one batch: noise the latents, run ControlNet + UNet on the pipeline's inputs, MSE against the
    noise (epsilon) or the velocity (v_prediction), as the scheduler's config says.

    `noise` and `timesteps` are drawn from `generator` unless given (tests pass them to compare with the pipeline).
    """
    import torch
    import torch.nn.functional as F

    from .conventions import unet_input

    inputs = encode_batch(models, batch, generator)
    latents, scheduler = inputs["latents"], models.noise_scheduler
    if noise is None:
        noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    if timesteps is None:
        timesteps = torch.randint(
            0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator, device=latents.device
        )
    noisy_latents = scheduler.add_noise(latents, noise, timesteps)
    model_input = unet_input(noisy_latents, inputs["mask"], inputs["masked_image_latents"])  # (B, 9 or 4, h, w)
    down_residuals, mid_residual = controlnet(
        model_input,
        timesteps,
        **inputs["conditioning"],
        controlnet_cond=inputs["control_image"],
        return_dict=False,
    )
    dtype = models.weight_dtype
    prediction = models.unet(
        model_input,
        timesteps,
        **inputs["conditioning"],
        down_block_additional_residuals=[r.to(dtype) for r in down_residuals],
        mid_block_additional_residual=mid_residual.to(dtype),
        return_dict=False,
    )[0]
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        raise ValueError(f"Unsupported prediction_type {prediction_type!r} in the base model's scheduler config.")
    return F.mse_loss(prediction.float(), target.float(), reduction="mean")


# ----------------------------------------------------------------------------- validation and outputs


def make_pipeline(models, controlnet, scheduler=None):
    """The photobg pipeline of the backbone (`photobg.models.pipeline_class`) around the modules being trained (no
    copies), with the base model's `model_index.json` settings and no safety checker."""
    from .models import _pipeline, make_scheduler, pipeline_class

    config = models.scheduler_config
    components = dict(
        vae=models.vae,
        unet=models.unet,
        controlnet=controlnet,
        scheduler=make_scheduler(scheduler or config["_class_name"], config),
        **{name: getattr(models, name) for name in (*models.backbone.text_encoders, *models.backbone.tokenizers)},
    )
    attributes = {**models.pipeline_attributes, "requires_safety_checker": False}
    return _pipeline(pipeline_class(models.backbone), components, attributes)


def validation_pairs(config):
    """[(prompt, object-mask file, photo file or None)] from the validation flags (one may be broadcast)."""
    prompts, masks = config.validation_prompt, config.validation_image
    photos = config.validation_inpainting_image or [None] * len(masks)
    n = max(len(prompts), len(masks))
    pairs = []
    for k in range(n):
        j = k if len(masks) > 1 else 0
        pairs.append((prompts[k if len(prompts) > 1 else 0], masks[j], photos[j]))
    return pairs


def validate(config, accelerator, models, controlnet, state):
    """Generate with the real pipeline on the validation pairs, seeded with the run's seed (the drawn one when
    --seed is not given); log to the trackers and save a PNG grid. Returns the step validated."""
    import torch
    from accelerate.utils import DistributedType

    step = state.step
    if not accelerator.is_main_process:
        return step
    if accelerator.distributed_type == DistributedType.FSDP:
        logger.warning("Validation is skipped under FSDP (the sharded ControlNet cannot run in one process).")
        return step
    from .conventions import split_object
    from .masks import load_image

    pipe = make_pipeline(models, accelerator.unwrap_model(controlnet), scheduler="UniPCMultistepScheduler")
    pipe.set_progress_bar_config(disable=True)
    rows = []
    for prompt, mask_file, photo_file in validation_pairs(config):
        if photo_file is None:
            photo, object_mask = split_object(load_image(mask_file))
            if object_mask is None:
                raise ValueError(
                    f"--validation_image {mask_file!r} has no alpha: give its photo with --validation_inpainting_image."
                )
        else:
            photo, object_mask = split_object(load_image(photo_file), load_image(mask_file))
        photo, object_mask = _validation_size(photo, object_mask, config.resolution)
        generator = torch.Generator(accelerator.device).manual_seed(state.seed)
        with accelerator.autocast():
            images = pipe(
                [prompt] * config.num_validation_images,
                image=photo,
                object_mask=object_mask,
                num_inference_steps=config.validation_num_inference_steps,
                generator=generator,
            ).images
        rows.append((prompt, [photo, object_mask.convert("RGB"), *images]))
    log_validation_images(config, accelerator, rows, step)
    return step


def _validation_size(photo, object_mask, resolution):
    """Resize so that the short side is `resolution` (and both sides multiples of 8), by training's rule."""
    from .data import resize

    scale = resolution / min(photo.size)
    size = tuple(max(8, round(s * scale) // 8 * 8) for s in photo.size)
    return resize(photo, size), resize(object_mask, size)


def log_validation_images(config, accelerator, rows, step):
    """Rows of (prompt, [photo, mask, generated...]) -> `validation/step-N.png`, TensorBoard, wandb."""
    import numpy as np
    import PIL.Image

    width, height = rows[0][1][0].size
    grid = PIL.Image.new("RGB", (width * len(rows[0][1]), height * len(rows)))
    for r, (_, images) in enumerate(rows):
        for c, image in enumerate(images):
            grid.paste(image.resize((width, height)), (c * width, r * height))
    folder = Path(config.output_dir, "validation")
    folder.mkdir(exist_ok=True)
    grid.save(folder / f"step-{step:06d}.png")
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            for prompt, images in rows:
                stacked = np.stack([np.asarray(image.resize((width, height))) for image in images])
                tracker.writer.add_images(prompt, stacked, step, dataformats="NHWC")
        elif tracker.name == "wandb":
            import wandb

            logged = [wandb.Image(image, caption=prompt) for prompt, images in rows for image in images]
            tracker.log({"validation": logged}, step=step)


def save_outputs(config, accelerator, models, controlnet, resolved):
    """The ControlNet in diffusers format in --output_dir, and `OUTPUT_DIR/pipeline`, a complete model that
    `photobg.models.load_pipeline` opens; both with the resolved configuration. Pushed with --push_to_hub.

    Everything is written to a hidden temporary folder first and then moved into place by renames, so a run
    killed while saving leaves the previous model (if any) loadable, never a half-written one."""
    accelerator.wait_for_everyone()
    state_dict = accelerator.get_state_dict(controlnet)  # gathers shards under DeepSpeed/FSDP
    if not accelerator.is_main_process:
        return
    output_dir = Path(config.output_dir)
    controlnet = accelerator.unwrap_model(controlnet)
    staging = output_dir / FINAL_TMP
    shutil.rmtree(staging, ignore_errors=True)
    controlnet.save_pretrained(staging / "controlnet", state_dict=state_dict, safe_serialization=True)
    make_pipeline(models, controlnet).save_pretrained(staging / "pipeline", safe_serialization=True)
    write_json(staging / "pipeline" / CONFIG_FILE, resolved)
    # One rename per file, the weights first: a kill between the renames (a moment) leaves the new weights
    # beside the previous run's config (if any), which describes the same architecture.
    for name in (*sorted(p.name for p in (staging / "controlnet").glob("*.safetensors")), "config.json"):
        os.replace(staging / "controlnet" / name, output_dir / name)
    final, old = output_dir / "pipeline", output_dir / PIPELINE_OLD
    if final.exists():
        os.replace(final, old)  # put back by `prepare_output_dir` if a kill comes before the next rename
    os.replace(staging / "pipeline", final)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(staging)
    write_json(output_dir / CONFIG_FILE, resolved)
    logger.info(f"Saved the ControlNet to {output_dir} and the complete pipeline to {final}")
    if config.push_to_hub:
        from huggingface_hub import upload_folder

        upload_folder(
            repo_id=config.hub_model_id,
            folder_path=str(output_dir),
            token=config.hub_token,
            commit_message="End of training",
            ignore_patterns=[
                "checkpoint-*",
                ".checkpoint-*",
                "latent_cache/*",
                "logs/*",
                f"{FINAL_TMP}/*",
                f"{PIPELINE_OLD}/*",
            ],
        )


if __name__ == "__main__":
    parser = add_arguments(argparse.ArgumentParser(prog="python -m photobg.train", description=HELP))
    sys.exit(run(parser.parse_args()))
