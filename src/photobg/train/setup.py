"""Setting up a training run: the accelerator, the seed, the examples and their loader, the step plan, the
optimizer and learning-rate schedule, the configuration as run (saved with every checkpoint), the trackers, and
the training state, new or resumed.
"""

import dataclasses
import logging
import math
import random
from pathlib import Path

from ..checkpoints import CONFIG_FILE, TrainState, resume, saved_config, write_json
from ..train_config import short_side

logger = logging.getLogger(__name__)


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


def make_examples(config, seed):
    """The training examples (see `photobg.data.TrainExamples`), columns checked."""
    from ..data import TrainExamples, load_train_dataset

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

    from ..data import Collate, EpochSampler

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
    from .. import __version__

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


def start_state(config, accelerator, seed, checkpoint, lr_scheduler):
    """The training state at step 0 with this process's noise generator, or, from `checkpoint`, the state it saved
    (`photobg.checkpoints.resume` also restores the models, optimizer, `lr_scheduler` and RNGs)."""
    import torch

    state = TrainState(
        seed=seed, noise=torch.Generator(accelerator.device).manual_seed(seed + accelerator.process_index)
    )
    if checkpoint is not None:
        resume(checkpoint, accelerator, state, lr_scheduler)
    elif config.resume_from_checkpoint:
        logger.info(f"No checkpoint in {config.output_dir!r} yet: starting a new run.")
    return state


def log_plan(accelerator, num_examples, steps, resolved):
    """Log the run's plan once: variant, examples, steps and epochs, processes, total batch, precision."""
    if not accelerator.is_main_process:
        return
    logger.info(
        f"Training the {resolved['controlnet_variant']} variant on {num_examples} examples: "
        f"{steps['max_train_steps']} steps ({steps['num_train_epochs']} epochs of {steps['updates_per_epoch']}), "
        f"{resolved['num_processes']} processes, total batch {resolved['total_batch_size']}, "
        f"mixed precision {resolved['mixed_precision']}."
    )
