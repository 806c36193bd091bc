"""The optimisation loop: from the run's step to its last, each batch's loss, backward and update (gradients
accumulated over --gradient_accumulation_steps batches), the losses read back once per logging interval (a
non-finite one stops the run before the next checkpoint), checkpoints and validation when due, and the count of
bad examples that were replaced.

The loop calls `training_loss` and `read_losses` through this module, where tests wrap them.
"""

import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field

from ..checkpoints import latest_checkpoint, save_checkpoint
from .batch import training_loss
from .saving import validate

logger = logging.getLogger(__name__)


@dataclass
class Run:
    """What the loop works with, built by `photobg.train.main`: the ControlNet, optimizer, loader and schedule as
    `accelerator.prepare` returned them, the frozen modules, the training state and the plan."""

    config: object  # the run's `TrainConfig`
    accelerator: object
    models: object  # `Models`: the frozen modules and the pipeline around them
    controlnet: object  # `models.controlnet`, prepared (wrapped under DDP, DeepSpeed, FSDP)
    optimizer: object
    lr_scheduler: object
    loader: object  # the prepared DataLoader: this process's share of each epoch's batches
    sampler: object  # the loader's `EpochSampler`
    examples: object  # the dataset (`TrainExamples` or `CachedExamples`); its epoch seeds crops and flips
    state: object  # `TrainState`: step, seed, this process's noise generator
    steps: dict  # `plan_steps`: updates_per_epoch, max_train_steps, num_train_epochs
    resolved: dict  # the configuration as run, saved with every checkpoint


@dataclass
class Tally:
    """What the loop keeps from step to step."""

    progress: object  # the progress bar
    losses: list = field(default_factory=list)  # each step's loss, read back (floats)
    step_times: list = field(default_factory=list)  # when each step ended (`time.perf_counter()`)
    micro_losses: list = field(default_factory=list)  # the losses of this step's batches, on the device
    pending: list = field(default_factory=list)  # the losses of steps not yet read back, on the device
    bad: Counter = field(default_factory=Counter)  # bad examples replaced in this process, by kind
    validated: int = None  # the last step validated


def train(run):
    """The optimisation loop from `run.state.step` to `max_train_steps`; returns the loss and end time of each step,
    and this process's count of bad examples that were replaced, by kind."""
    from tqdm.auto import tqdm

    accelerator, state, max_steps = run.accelerator, run.state, run.steps["max_train_steps"]
    progress = tqdm(total=max_steps, initial=state.step, desc="Steps", disable=not accelerator.is_local_main_process)
    tally = Tally(progress)
    while state.step < max_steps:
        first = state.step == 0
        for k, batch in enumerate(epoch_batches(run)):
            if k == 0 and first:
                logger.info(f"Process {accelerator.process_index} starts with examples {batch['names']}")
            tally.bad.update(kind for kind in batch["bad"] if kind)
            tally.micro_losses.append(train_on(run, batch))
            if accelerator.sync_gradients:
                end_step(run, tally)
                if state.step >= max_steps:
                    break
    progress.close()
    if run.config.validation_prompt and tally.validated != state.step:
        validate(run.config, accelerator, run.models, run.controlnet, state)
    return tally.losses, tally.step_times, tally.bad


def epoch_batches(run):
    """The batches of the epoch that `run.state.step` is in; the sampler and the dataset are told the epoch."""
    per_epoch = run.steps["updates_per_epoch"]
    epoch = run.state.step // per_epoch
    run.sampler.epoch = run.examples.epoch = epoch
    # Data position: the batches of this epoch already consumed before the checkpoint are skipped.
    done = (run.state.step % per_epoch) * run.config.gradient_accumulation_steps
    return run.accelerator.skip_first_batches(run.loader, done) if done else run.loader


def train_on(run, batch):
    """Loss and backward of one batch; the optimizer steps (clipped) once the gradients of
    --gradient_accumulation_steps batches are in. Returns the loss, detached."""
    accelerator, controlnet, config = run.accelerator, run.controlnet, run.config
    with accelerator.accumulate(controlnet):
        loss = training_loss(run.models, controlnet, batch, run.state.noise, accelerator)
        accelerator.backward(loss)
        if accelerator.sync_gradients:
            accelerator.clip_grad_norm_(controlnet.parameters(), config.max_grad_norm)
        run.optimizer.step()
        run.lr_scheduler.step()
        run.optimizer.zero_grad(set_to_none=config.set_grads_to_none)
    return loss.detach()  # stays on the device: no host sync inside the step


def end_step(run, tally):
    """Count the optimisation step just made; read the losses back, save a checkpoint and validate when due."""
    import torch

    config, accelerator, state = run.config, run.accelerator, run.state
    state.step += 1
    tally.step_times.append(time.perf_counter())
    tally.pending.append(torch.stack(tally.micro_losses).mean())
    tally.micro_losses = []
    tally.progress.update(1)
    checkpoint = state.step % config.checkpointing_steps == 0
    validation = config.validation_prompt and state.step % config.validation_steps == 0
    last = state.step >= run.steps["max_train_steps"]
    if checkpoint or validation or state.step % config.logging_steps == 0 or last:
        # One host sync per logging interval, and always before anything is saved: a non-finite loss
        # stops the run before it can reach a checkpoint.
        lr = run.lr_scheduler.get_last_lr()[0]
        tally.losses += read_losses(config, accelerator, tally.pending, state.step, lr)
        tally.progress.set_postfix(loss=f"{tally.losses[-1]:.4f}", lr=f"{lr:.2e}")
        tally.pending = []
    if checkpoint:
        save_checkpoint(config, accelerator, state, run.resolved)
    if validation:
        tally.validated = validate(config, accelerator, run.models, run.controlnet, state)


def report_bad_examples(accelerator, bad):
    """Sum every process's count of replaced bad examples and log it once; returns the sum ({kind: count})."""
    from accelerate.utils import gather_object

    from ..data import describe_bad

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
