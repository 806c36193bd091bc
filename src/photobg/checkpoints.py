"""Resumable training checkpoints: written atomically, rotated, found again.

A checkpoint is `OUTPUT_DIR/checkpoint-STEP/`: accelerate's state (model, optimizer, LR scheduler, RNGs),
each process's noise generator, the step and seed (`train_state.json`) and the resolved config. It is
written under a hidden temporary name and renamed when complete, so a crash mid-write never leaves a
folder that `--resume_from_checkpoint latest` would take.
"""

import json
import logging
import os
import re
import shutil
from pathlib import Path

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
CONFIG_FILE = "training_config.json"
STATE_FILE = "train_state.json"

logger = logging.getLogger(__name__)


class TrainState:
    """What a checkpoint adds to accelerate's state: the step, the seed and this process's noise generator."""

    def __init__(self, seed, noise):
        self.seed = seed
        self.noise = noise
        self.step = 0


def list_checkpoints(output_dir):
    """Complete checkpoints in `output_dir`, oldest first (half-written ones have another name)."""
    found = []
    for path in Path(output_dir).glob("checkpoint-*"):
        match = CHECKPOINT.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def latest_checkpoint(output_dir):
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def resolve_checkpoint(output_dir, spec):
    """`latest`, a checkpoint folder, or a checkpoint's name in `output_dir` -> its path (None if none)."""
    if spec == "latest":
        return latest_checkpoint(output_dir)
    for path in (Path(spec), Path(output_dir, spec), Path(output_dir, os.path.basename(spec))):
        if path.is_dir() and (path / STATE_FILE).exists():
            return path
    return None


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
        write_json(tmp / STATE_FILE, {"step": state.step, "seed": state.seed})
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        limit = config.checkpoints_total_limit
        for old in list_checkpoints(config.output_dir)[: -limit if limit else 0]:
            shutil.rmtree(old)
        logger.info(f"Saved {final}")
    accelerator.wait_for_everyone()


def resume(config, accelerator, state):
    """Restore model, optimizer, LR scheduler, RNGs and step from --resume_from_checkpoint (if any)."""
    import torch

    if not config.resume_from_checkpoint:
        return
    path = resolve_checkpoint(config.output_dir, config.resume_from_checkpoint)
    if path is None:
        logger.info(f"No checkpoint in {config.output_dir!r} yet: starting a new run.")
        return
    accelerator.load_state(str(path))
    state.step = json.loads((path / STATE_FILE).read_text())["step"]
    noise_state = path / f"noise_rng_{accelerator.process_index}.pt"
    if not noise_state.exists():
        raise ValueError(f"{path} was saved by fewer processes than this run has ({noise_state.name} is missing).")
    state.noise.set_state(torch.load(noise_state, weights_only=True))
    logger.info(f"Resumed from {path} at step {state.step}.")


def write_json(path, data):
    """Write JSON atomically (temporary file + rename)."""
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)
