"""Resumable training checkpoints: written atomically, rotated, checked, found again.

A checkpoint is `OUTPUT_DIR/checkpoint-STEP/`: accelerate's state (model, optimizer, LR scheduler, RNGs),
each process's noise generator, the resolved config, and `train_state.json` (the step, the seed and the size
of every file), written last. It is written under a hidden temporary name and renamed when complete, so a
crash mid-write never leaves a folder that `--resume_from_checkpoint latest` would take; a checkpoint damaged
later (a truncated or deleted file) is found by its file sizes and named, and `latest` takes the newest
complete one instead.
"""

import json
import logging
import os
import re
import shutil
from pathlib import Path

from .files import write_atomic

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
CONFIG_FILE = "training_config.json"
STATE_FILE = "train_state.json"

logger = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from; the message names it and says what to do."""


class TrainState:
    """What a checkpoint adds to accelerate's state: the step, the seed and this process's noise generator."""

    def __init__(self, seed, noise):
        self.seed = seed
        self.noise = noise
        self.step = 0


def list_checkpoints(output_dir):
    """Checkpoints in `output_dir`, complete or not, oldest first (half-written ones have another name)."""
    found = []
    for path in Path(output_dir).glob("checkpoint-*"):
        match = CHECKPOINT.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def checkpoint_problem(path):
    """Why the checkpoint folder `path` cannot be resumed from (a missing or truncated file), or None.

    Every file's size is recorded in `train_state.json` when the checkpoint is written, so this reads no
    weights. (Checkpoints written before the sizes were recorded are only checked for `train_state.json`.)
    """
    try:
        state = json.loads((Path(path) / STATE_FILE).read_text())
    except FileNotFoundError:
        return f"{STATE_FILE} is missing"
    except (OSError, ValueError) as err:
        return f"{STATE_FILE} cannot be read ({err})"
    for name, size in state.get("files", {}).items():
        file = Path(path, name)
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} is {file.stat().st_size} bytes instead of {size} (truncated or overwritten)"
    return None


def latest_checkpoint(output_dir):
    """The newest complete checkpoint in `output_dir`, or None."""
    return next((p for p in reversed(list_checkpoints(output_dir)) if checkpoint_problem(p) is None), None)


def resolve_checkpoint(output_dir, spec):
    """`latest` (the newest complete checkpoint), a checkpoint folder, or a checkpoint's name in `output_dir`
    -> its path (None if there is none)."""
    if spec == "latest":
        return latest_checkpoint(output_dir)
    for path in (Path(spec), Path(output_dir, spec), Path(output_dir, os.path.basename(spec))):
        if path.is_dir() and (CHECKPOINT.match(path.name) or (path / STATE_FILE).exists()):
            return path
    return None


def named_checkpoint(output_dir, spec):
    """The checkpoint named `spec` (a path, or a name in `output_dir`), or a `CheckpointError` saying that there
    is none or what is missing in it, and which is the newest complete one."""
    path = resolve_checkpoint(output_dir, spec)
    if path is None:
        raise CheckpointError(
            f"no checkpoint {spec!r} (as a path or in {output_dir!r}); use `latest` to take the newest complete "
            "one if any."
        )
    problem = checkpoint_problem(path)
    if problem:
        newest = latest_checkpoint(output_dir)
        hint = f"the newest complete one is {newest}" if newest else "there is no complete one"
        raise CheckpointError(f"checkpoint {path} is incomplete: {problem}; {hint}.")
    return path


def checkpoint_to_resume(config, num_processes, log=True):
    """The checkpoint that --resume_from_checkpoint names, checked before anything loads; None to start anew.

    `latest` skips incomplete checkpoints with a warning naming each; a named checkpoint that is incomplete,
    or one saved by another number of processes with another total batch (the LR schedule and the position
    in the data are counted in optimisation steps of that batch), is a `CheckpointError`.

    Args:
        config: the `TrainConfig`.
        num_processes: this run's process count.
        log: whether to log the warnings (the main process only).

    Returns:
        The checkpoint's path, or None when there is nothing to resume from.
    """
    spec, output_dir = config.resume_from_checkpoint, config.output_dir
    if not spec:
        return None
    if spec != "latest":
        path = named_checkpoint(output_dir, spec)
    else:
        path, broken = None, []
        for candidate in reversed(list_checkpoints(output_dir)):
            problem = checkpoint_problem(candidate)
            if problem is None:
                path = candidate
                break
            broken.append(f"{candidate} ({problem})")
        if broken and path is None:
            raise CheckpointError(
                f"No complete checkpoint in {output_dir!r}: {'; '.join(broken)}. Remove them to start anew."
            )
        for text in broken if log else ():
            logger.warning(f"Checkpoint {text} is incomplete: skipped; resuming from {path}.")
    if path is not None:
        _check_processes(path, config, num_processes)
    return path


def saved_config(path):
    """The resolved training config saved in checkpoint `path` ({} if it has none)."""
    file = Path(path, CONFIG_FILE)
    return json.loads(file.read_text()) if file.exists() else {}


def _check_processes(path, config, num_processes):
    """A checkpoint may be resumed on another number of processes only with the same total batch."""
    saved = saved_config(path)
    old_processes, old_total = saved.get("num_processes", num_processes), saved.get("total_batch_size")
    total = config.train_batch_size * num_processes * config.gradient_accumulation_steps
    if old_processes != num_processes and old_total not in (None, total):
        raise CheckpointError(
            f"Checkpoint {path} was saved by {old_processes} processes with a total batch of {old_total}; this run "
            f"has {num_processes} processes and a total batch of {total}, so its learning-rate schedule and its "
            f"position in the data would not line up. Resume on {old_processes} processes, or keep the total batch "
            f"(processes x --train_batch_size x --gradient_accumulation_steps) at {old_total}."
        )


def save_checkpoint(config, accelerator, state, resolved):
    """Write `checkpoint-STEP` atomically: everything goes to a hidden temporary folder that is renamed once
    complete, so an interrupted write leaves nothing that `--resume_from_checkpoint latest` would take.
    Then the oldest checkpoints beyond --checkpoints_total_limit are removed."""
    import torch

    final = Path(config.output_dir, f"checkpoint-{state.step}")
    tmp = Path(config.output_dir, f".checkpoint-{state.step}.tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    torch.save(state.noise.get_state(), tmp / f"noise_rng_{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(tmp / CONFIG_FILE, resolved)
        # Written last: the size of every file, by which `checkpoint_problem` finds a damaged checkpoint.
        files = {str(f.relative_to(tmp)): f.stat().st_size for f in sorted(tmp.rglob("*")) if f.is_file()}
        write_json(tmp / STATE_FILE, {"step": state.step, "seed": state.seed, "files": files})
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        limit = config.checkpoints_total_limit
        for old in list_checkpoints(config.output_dir)[: -limit if limit else 0]:
            shutil.rmtree(old)
        logger.info(f"Saved {final}")
    accelerator.wait_for_everyone()


def resume(path, accelerator, state, lr_scheduler):
    """Restore model, optimizer, LR scheduler, RNGs and step from the checkpoint `path` (see
    `checkpoint_to_resume`).

    On another number of processes (same total batch, checked before) the LR schedule's position is carried
    over and each process's noise generator is seeded anew from (seed, step, process), since the saved ones
    belong to other processes.

    Raises:
        CheckpointError: naming the checkpoint, when it cannot be loaded.
    """
    import numpy as np
    import torch

    processes = accelerator.num_processes
    old_processes = saved_config(path).get("num_processes", processes)
    try:
        accelerator.load_state(str(path))
        if old_processes == processes:
            noise_state = torch.load(path / f"noise_rng_{accelerator.process_index}.pt", weights_only=True)
    except Exception as err:  # whatever the damage (truncated pickle, bad safetensors header, missing file)
        reason = (str(err).splitlines() or [""])[0]  # one line; --debug shows the whole chain
        raise CheckpointError(
            f"Checkpoint {path} cannot be loaded ({type(err).__name__}: {reason}); it is damaged: resume from an "
            "earlier checkpoint or remove this one."
        ) from err
    state.step = json.loads((path / STATE_FILE).read_text())["step"]
    if old_processes == processes:
        state.noise.set_state(noise_state)
    else:
        _rescale_lr_schedule(lr_scheduler, old_processes, processes)
        seed = np.random.SeedSequence([state.seed, state.step, accelerator.process_index]).generate_state(1)[0]
        state.noise.manual_seed(int(seed))
        logger.info(f"{path} was saved by {old_processes} processes; resuming on {processes}.")
    logger.info(f"Resumed from {path} at step {state.step}.")


def _rescale_lr_schedule(lr_scheduler, old_processes, processes):
    """accelerate steps a prepared LR scheduler once per process at each optimisation step (and its schedule is
    built with counts x processes), so its position is steps x processes: carry it over to the new count. The
    learning rate itself depends only on the optimisation step, and is restored with the optimizer."""
    scheduler = getattr(lr_scheduler, "scheduler", lr_scheduler)
    scheduler.last_epoch = scheduler.last_epoch * processes // old_processes


def write_json(path, data):
    """Write JSON atomically (`photobg.files.write_atomic`: temporary file + rename)."""
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
