"""The training job's configuration: one typed `TrainConfig`, its command-line flags, and its checks.

Field names are the flags of diffusers' ControlNet training example (`--field_name`), so existing command
lines keep working. `check_config` runs before any model loads; each error names its flag.
"""

import argparse
import dataclasses
import os
from dataclasses import dataclass, field

from .checkpoints import CheckpointError, named_checkpoint
from .controlnets import CONTROLNET_SIZES

VARIANTS = {"inpaint": 9, "base": 4}  # variant -> the UNet input channels it needs
SCRIPTS = {"inpaint": "train_controlnet_inpaint.py", "base": "train_controlnet.py"}
# The authors' crop recipe: the short side resized to 768 for 512 crops, i.e. 1.5 x the crop size.
AUTHORS_SHORT_SIDE_FACTOR = 1.5
# The method's share of empty captions (the paper trains with 10% empty prompts).
METHOD_EMPTY_PROMPTS = 0.1
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
TRACKERS = ("tensorboard", "wandb", "comet_ml", "all", "none")


class ConfigError(ValueError):
    """A bad training flag; the message starts with the flag."""


def arg(default, help, **argparse_kwargs):
    """A config field with its command-line help (and argparse options such as `type` or `choices`)."""
    return field(default=default, metadata={"help": help, **argparse_kwargs})


@dataclass
class TrainConfig:
    """Every training option. Field names are the flags (`--field_name`), as in diffusers' ControlNet example."""

    controlnet_variant: str = arg(
        "inpaint", "inpaint (SD2- or SDXL-inpainting, 9 channels) or base (SD2- or SDXL-base, 4 channels)"
    )
    # Models
    pretrained_model_name_or_path: str = arg(
        None,
        "base model: Hub id or folder (SD2- or SDXL-inpainting for the inpaint variant, SD2- or SDXL-base for the "
        "base variant; the backbone is detected from the folder); `tiny-inpainting`, `tiny-base`, "
        "`tiny-sdxl-inpainting`, `tiny-sdxl-base` build a tiny random model locally",
    )
    controlnet_model_name_or_path: str = arg(
        None, "ControlNet to start from (folder, Hub id or .pth state dict); default: initialised from the UNet"
    )
    controlnet_size: str = arg(
        "full",
        "ControlNet built from the UNet: full (a copy of its encoder), mid or small (compact: fewer transformer "
        "layers, see photobg.controlnets); ignored with --controlnet_model_name_or_path",
        choices=tuple(CONTROLNET_SIZES),
    )
    revision: str = arg(None, "revision (branch, tag or commit) of the Hub model")
    variant: str = arg(None, "variant of the model files, e.g. fp16 (diffusers' --variant)")
    tokenizer_name: str = arg(None, "tokenizer name or path, if not the model's own")
    cache_dir: str = arg(None, "where downloaded models and datasets are stored")
    # Output, checkpoints, logging
    output_dir: str = arg("controlnet-model", "where the ControlNet, the pipeline, checkpoints and logs go")
    checkpointing_steps: int = arg(500, "save a resumable checkpoint every N optimisation steps", type=int)
    logging_steps: int = arg(
        10, "read the loss back from the device, log it and check it is finite every N steps", type=int
    )
    checkpoints_total_limit: int = arg(None, "keep at most this many checkpoints (oldest removed)", type=int)
    resume_from_checkpoint: str = arg(
        None, "resume from a checkpoint folder (path or name in --output_dir), or `latest`"
    )
    logging_dir: str = arg("logs", "TensorBoard log folder, relative to --output_dir")
    report_to: str = arg("tensorboard", "tracker: tensorboard, wandb, comet_ml, all or none", choices=TRACKERS)
    tracker_project_name: str = arg("train_controlnet", "project name passed to the trackers")
    push_to_hub: bool = arg(False, "push the trained ControlNet to the Hub at the end")
    hub_token: str = arg(None, "Hub token for --push_to_hub")
    hub_model_id: str = arg(None, "Hub repository for --push_to_hub (default: the name of --output_dir)")
    # Data
    dataset_name: str = arg(
        None, "dataset: Hub id, local dataset folder, or data files (*.parquet, *.arrow, *.jsonl, *.csv)"
    )
    dataset_config_name: str = arg(None, "the dataset's configuration, if it has several")
    train_data_dir: str = arg(None, "local dataset folder (photobg prepare output, Hub layout or image folder)")
    image_column: str = arg("image", "column of the photos")
    conditioning_image_column: str = arg("conditioning_image", "column of the object masks (white = object)")
    caption_column: str = arg("text", "column of the captions (a string or a list of strings)")
    max_train_samples: int = arg(None, "train on this many examples (a seeded random subset)", type=int)
    proportion_empty_prompts: float = arg(
        METHOD_EMPTY_PROMPTS,
        "fraction of captions replaced by the empty prompt (the method's share; 0 trains on every caption)",
        type=float,
    )
    resolution: int = arg(512, "training size: the side of the square crop", type=int)
    resize_short_side: int = arg(
        None,
        "short side of each photo before the crop, resized with area averaging (default: 1.5 x --resolution, "
        "the authors' recipe: 768 for 512; give --resolution's value to crop the whole short side)",
        type=int,
    )
    center_crop: bool = arg(False, "crop the centre instead of a random square")
    random_flip: bool = arg(False, "flip photo and mask horizontally half the time")
    dataloader_num_workers: int = arg(0, "data loading worker processes (0 = in the main process)", type=int)
    bad_examples: str = arg(
        "skip",
        "an unreadable image, a mask of another size or an empty mask: skip it (warn) or fail",
        choices=("skip", "fail"),
    )
    cache_latents: bool = arg(
        False,
        "encode VAE latents (and text embeddings when prompts are fixed) once and reuse them every epoch; the "
        "random crop and flip are then drawn once",
    )
    # Optimisation
    seed: int = arg(None, "seed for reproducible training (default: drawn at random and recorded)", type=int)
    train_batch_size: int = arg(4, "batch size per device", type=int)
    num_train_epochs: int = arg(1, "epochs (unless --max_train_steps is given)", type=int)
    max_train_steps: int = arg(None, "optimisation steps; overrides --num_train_epochs", type=int)
    gradient_accumulation_steps: int = arg(1, "batches accumulated per optimisation step", type=int)
    gradient_checkpointing: bool = arg(
        False, "recompute the ControlNet's and the frozen UNet's activations in backward to save memory"
    )
    learning_rate: float = arg(5e-6, "learning rate after warmup", type=float)
    scale_lr: bool = arg(False, "multiply the learning rate by processes x accumulation x batch size")
    lr_scheduler: str = arg("constant", "learning-rate schedule", choices=LR_SCHEDULERS)
    lr_warmup_steps: int = arg(500, "warmup steps of the schedule", type=int)
    lr_num_cycles: int = arg(1, "hard restarts of cosine_with_restarts", type=int)
    lr_power: float = arg(1.0, "power of the polynomial schedule", type=float)
    use_8bit_adam: bool = arg(False, "8-bit AdamW from bitsandbytes (optional dependency)")
    adam_beta1: float = arg(0.9, "AdamW beta1", type=float)
    adam_beta2: float = arg(0.999, "AdamW beta2", type=float)
    adam_weight_decay: float = arg(1e-2, "AdamW weight decay", type=float)
    adam_epsilon: float = arg(1e-08, "AdamW epsilon", type=float)
    max_grad_norm: float = arg(1.0, "gradient clipping norm", type=float)
    set_grads_to_none: bool = arg(False, "free gradients (set to None) instead of zeroing them")
    mixed_precision: str = arg(
        None, "no, fp16 or bf16 (default: accelerate's config / launch flag)", choices=("no", "fp16", "bf16")
    )
    allow_tf32: bool = arg(False, "allow TF32 matmuls on Ampere+ GPUs")
    enable_xformers_memory_efficient_attention: bool = arg(
        False, "use xformers attention (default: PyTorch's scaled-dot-product attention)"
    )
    # Validation
    validation_prompt: list = arg(None, "prompts for validation images", nargs="+")
    validation_image: list = arg(
        None, "object masks (white = object) for validation, or RGBA cutouts (alpha = object)", nargs="+"
    )
    validation_inpainting_image: list = arg(None, "the photos of the --validation_image masks", nargs="+")
    num_validation_images: int = arg(4, "images generated per validation pair", type=int)
    validation_steps: int = arg(100, "validate every N optimisation steps", type=int)
    validation_num_inference_steps: int = arg(20, "denoising steps of validation images", type=int)


def short_side(config):
    """The short side photos are resized to before the crop: --resize_short_side, else the authors' recipe."""
    return config.resize_short_side or round(config.resolution * AUTHORS_SHORT_SIDE_FACTOR)


def add_arguments(parser, variant=None):
    """Add every `TrainConfig` field as a flag. Without `variant`, `--variant inpaint|base` chooses the
    variant and the model-file variant is `--weights_variant`; an entry script fixes the variant and keeps
    diffusers' `--variant` for the model files."""
    for f in dataclasses.fields(TrainConfig):
        meta = dict(f.metadata)
        names = [f"--{f.name}"]
        if f.name == "controlnet_variant":
            if variant is not None:
                continue
            names, meta["choices"], meta["required"] = ["--variant"], tuple(VARIANTS), True
            meta["help"] = "which ControlNet to train: " + meta["help"]
        elif f.name == "variant":
            names = ["--weights_variant"] if variant is None else ["--variant", "--weights_variant"]
        if f.type is bool:
            meta["action"] = "store_true"
        if f.default is not None and f.type is not bool:
            meta["help"] += " (default: %(default)s)"
        parser.add_argument(*names, dest=f.name, default=f.default, **meta)
    parser.add_argument(
        "--debug", action="store_true", help="show the full traceback of an error (by default: one line)"
    )
    return parser


def build_parser(variant):
    """The argument parser of an entry script for `variant`."""
    parser = argparse.ArgumentParser(
        prog=SCRIPTS[variant],
        description=f"Train the {variant} variant of the salient-aware ControlNet. Flags follow diffusers' "
        "ControlNet training example; launch with `accelerate launch`.",
    )
    return add_arguments(parser, variant)


def config_from_args(args, variant=None):
    """A `TrainConfig` from parsed arguments (`variant` fixes the variant, as the entry scripts do)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    if variant is not None:
        values["controlnet_variant"] = variant
    return TrainConfig(**values)


def check_config(config):
    """Raise `ConfigError` (naming the flag) for any bad option; nothing is loaded yet.

    Also checks that the base model's UNet has the channels the variant needs (reads its config only).
    """
    c = config
    if c.controlnet_variant not in VARIANTS:
        raise ConfigError(f"--variant: {c.controlnet_variant!r} is not one of {', '.join(VARIANTS)}.")
    if not c.pretrained_model_name_or_path:
        raise ConfigError("--pretrained_model_name_or_path is required.")
    if c.controlnet_size not in CONTROLNET_SIZES:
        raise ConfigError(f"--controlnet_size: {c.controlnet_size!r} is not one of {', '.join(CONTROLNET_SIZES)}.")
    if (c.dataset_name is None) == (c.train_data_dir is None):
        raise ConfigError("--dataset_name / --train_data_dir: give exactly one of them.")
    if not 0 <= c.proportion_empty_prompts <= 1:
        raise ConfigError(f"--proportion_empty_prompts must be in [0, 1], not {c.proportion_empty_prompts}.")
    if c.resolution <= 0 or c.resolution % 8:
        raise ConfigError(f"--resolution must be a positive multiple of 8, not {c.resolution}.")
    if c.resize_short_side is not None and c.resize_short_side < c.resolution:
        raise ConfigError(
            f"--resize_short_side {c.resize_short_side} is smaller than --resolution {c.resolution}: the crop "
            "would not fit."
        )
    if c.train_data_dir is not None and not os.path.exists(os.path.expanduser(c.train_data_dir)):
        raise ConfigError(f"--train_data_dir {c.train_data_dir!r}: no such folder.")
    positive = (
        "train_batch_size",
        "num_train_epochs",
        "max_train_steps",
        "checkpointing_steps",
        "logging_steps",
        "checkpoints_total_limit",
        "gradient_accumulation_steps",
        "validation_steps",
        "num_validation_images",
        "validation_num_inference_steps",
        "max_train_samples",
    )
    for name in positive:
        value = getattr(c, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name} must be at least 1, not {value}.")
    for name in ("lr_warmup_steps", "dataloader_num_workers"):
        if getattr(c, name) < 0:
            raise ConfigError(f"--{name} must be >= 0, not {getattr(c, name)}.")
    if c.learning_rate <= 0:
        raise ConfigError(f"--learning_rate must be positive, not {c.learning_rate}.")
    if c.lr_scheduler not in LR_SCHEDULERS:
        raise ConfigError(f"--lr_scheduler: {c.lr_scheduler!r} is not one of {', '.join(LR_SCHEDULERS)}.")
    if c.report_to == "wandb" and c.hub_token is not None:
        raise ConfigError("--hub_token: do not combine with --report_to wandb (the token would be logged).")
    _check_validation(c)
    _check_optional_packages(c)
    _check_resume(c)
    _check_base_model(c)
    return config


def _check_validation(c):
    if (c.validation_prompt is None) != (c.validation_image is None):
        raise ConfigError("--validation_prompt and --validation_image go together: give both or neither.")
    if c.validation_prompt is None:
        if c.validation_inpainting_image is not None:
            raise ConfigError("--validation_inpainting_image needs --validation_image and --validation_prompt.")
        return
    images, prompts = len(c.validation_image), len(c.validation_prompt)
    if images != 1 and prompts != 1 and images != prompts:
        raise ConfigError(
            f"--validation_prompt: {prompts} prompts for {images} --validation_image files; give one prompt, one "
            "image, or as many prompts as images."
        )
    photos = c.validation_inpainting_image
    if photos is not None and len(photos) != images:
        raise ConfigError(
            f"--validation_inpainting_image: {len(photos)} photos for {images} --validation_image masks; give one "
            "photo per mask."
        )
    for flag, paths in (("--validation_image", c.validation_image), ("--validation_inpainting_image", photos)):
        for path in paths or ():
            if not os.path.isfile(path):
                raise ConfigError(f"{flag}: no such file {path!r}.")


def _check_optional_packages(c):
    import importlib.util

    needs = {
        "use_8bit_adam": ("bitsandbytes", c.use_8bit_adam),
        "enable_xformers_memory_efficient_attention": ("xformers", c.enable_xformers_memory_efficient_attention),
        "report_to": ("wandb", c.report_to in ("wandb",)),
        "push_to_hub": ("huggingface_hub", c.push_to_hub),
    }
    for flag, (package, wanted) in needs.items():
        if wanted and importlib.util.find_spec(package) is None:
            raise ConfigError(f"--{flag} needs the `{package}` package: pip install {package}")


def _check_resume(c):
    if c.resume_from_checkpoint in (None, "latest"):
        return
    try:
        named_checkpoint(c.output_dir, c.resume_from_checkpoint)
    except CheckpointError as err:
        raise ConfigError(f"--resume_from_checkpoint: {err}") from None


def _check_base_model(c):
    from diffusers import UNet2DConditionModel

    from .backbones import detect_backbone
    from .models.specs import resolve_model

    try:
        model = resolve_model(c.pretrained_model_name_or_path, "Base model")
        unet_config = UNet2DConditionModel.load_config(
            model, subfolder="unet", revision=c.revision, cache_dir=c.cache_dir
        )
        detect_backbone(model)  # an unsupported layout is named here, before anything loads
    except (OSError, ValueError) as err:
        raise ConfigError(f"--pretrained_model_name_or_path: {err}") from err
    channels, want = unet_config["in_channels"], VARIANTS[c.controlnet_variant]
    if channels != want:
        other = next(v for v, n in VARIANTS.items() if n == channels) if channels in VARIANTS.values() else None
        hint = f"; this is a base model for the {other} variant ({SCRIPTS[other]})" if other else ""
        raise ConfigError(
            f"--pretrained_model_name_or_path {c.pretrained_model_name_or_path!r}: its UNet takes {channels} input "
            f"channels but the {c.controlnet_variant} variant needs {want}{hint}."
        )
