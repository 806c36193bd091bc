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
ControlNet example's flags) and `photobg train --variant inpaint|base`. `main(config)` is the run, step by step;
the rooms of this package:

- `setup.py`: accelerator, seed, examples and loader, step plan, optimizer and schedule, the configuration as run,
  trackers, the training state (new or resumed);
- `modules.py`: `Models`, the base model's frozen modules and the ControlNet, and the pipeline around them;
- `batch.py`: one batch's encoding, text conditioning and loss (`encode_batch`, `text_conditioning`,
  `training_loss`), and the latent cache;
- `loop.py`: the optimisation loop (`train`, over a `Run`);
- `saving.py`: the output folder, validation, the final save.
"""

import dataclasses
import sys
from dataclasses import dataclass

from ..checkpoints import CheckpointError, checkpoint_to_resume
from ..train_config import (
    ConfigError,
    add_arguments,
    build_parser,
    check_config,
    config_from_args,
)
from .batch import cache_latents, encode_batch, encode_for_cache, text_conditioning, training_loss
from .loop import Run, read_losses, report_bad_examples, train
from .modules import Models, load_models, make_pipeline
from .saving import prepare_output_dir, save_outputs
from .setup import (
    log_plan,
    make_accelerator,
    make_examples,
    make_loader,
    make_lr_scheduler,
    make_optimizer,
    plan_steps,
    resolve_seed,
    resolved_config,
    start_state,
    start_trackers,
)

HELP = "Train the salient-aware ControlNet (inpaint or base variant) with accelerate."

# What callers use: the entry points, the `photobg` command's `add_arguments`, and the pieces of a step that tests
# and benchmarks run on their own.
__all__ = [
    "HELP",
    "Models",
    "Run",
    "TrainResult",
    "add_arguments",
    "cli_main",
    "encode_batch",
    "encode_for_cache",
    "load_models",
    "main",
    "main_reporting_errors",
    "make_pipeline",
    "read_losses",
    "run",
    "text_conditioning",
    "train",
    "training_loss",
]


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
    """`photobg train`: a bad flag value exits with status 2, as the entry scripts' usage errors do (`main` checks
    the flags first)."""
    return main_reporting_errors(config_from_args(args), "photobg train", args.debug)


# Failures that a user's data, flags or files cause: reported in one line (the traceback with --debug).
EXPECTED_ERRORS = (ConfigError, CheckpointError, FloatingPointError)


def main_reporting_errors(config, prog, debug=False):
    """`main(config)`; an expected failure prints `PROG: error: MESSAGE` and exits with status 2 for a usage error
    (a `ConfigError`: a bad flag or flag value, such as a missing dataset folder or column, as argparse does) or 1
    (the data, a checkpoint or the run failed), unless `debug` asks for the traceback."""
    from ..data import BadExample

    try:
        main(config)
    except (*EXPECTED_ERRORS, BadExample) as err:
        if debug:
            raise
        print(f"{prog}: error: {err} (--debug shows the traceback)", file=sys.stderr)
        raise SystemExit(2 if isinstance(err, ConfigError) else 1) from None
    return 0


# ----------------------------------------------------------------------------- the run


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
    state = start_state(config, accelerator, seed, checkpoint, lr_scheduler)
    log_plan(accelerator, len(examples), steps, resolved)
    run = Run(
        config=config,
        accelerator=accelerator,
        models=models,
        controlnet=controlnet,
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        loader=loader,
        sampler=sampler,
        examples=examples,
        state=state,
        steps=steps,
        resolved=resolved,
    )
    losses, step_times, bad = train(run)
    bad = report_bad_examples(accelerator, bad)
    save_outputs(config, accelerator, models, controlnet, resolved)
    accelerator.end_training()
    return TrainResult(
        output_dir=config.output_dir, step=state.step, losses=losses, step_times=step_times, bad_examples=bad
    )
