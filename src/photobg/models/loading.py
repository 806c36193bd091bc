"""Loading a background-generation pipeline, and what is checked before it loads.

`load_pipeline` loads a complete model (the published `yahoo-inc/photo-background-generation` layout:
model_index.json + component folders including `controlnet/`), or a base model (SD2- or SDXL-inpainting, SD2- or
SDXL-base) plus a ControlNet given as a Hub id, a folder, or a single state-dict file. The backbone is detected from
the folder (`photobg.backbones`) and picks the pipeline class (`photobg.models.pipelines`). `check_model` reads the
configs alone (channels, text conditioning) so that a misfit is named before any weight loads. Here too: the
device and weight dtype (`resolve_device`, `resolve_dtype`), schedulers (`make_scheduler`, `check_scheduler`), the
opt-in speed settings (`optimize`) and `free_device_memory`.
"""

import os

import torch

from .. import recipe
from ..backbones import BACKBONES, detect_backbone
from ..defaults import DEFAULT_MODEL, DTYPE_NAMES
from ..hub import has_component, hub_error, load_component_config, load_config
from .adapters import check_vae
from .pipelines import pipeline_class
from .specs import resolve_model
from .state_dict import controlnet_from_state_dict, is_state_dict_file

DEFAULT_BASE_MODEL = BACKBONES["sd2-inpainting"].hub_id

DTYPES = dict(zip(DTYPE_NAMES, (torch.float32, torch.float16, torch.bfloat16), strict=True))


def resolve_device(device=None):
    """The device to run on: the caller's choice, checked, else CUDA when present, else CPU.

    Raises:
        ValueError: naming the device, when torch has no such device type (`foo`) or this machine and torch build
            have no such device (`cuda` on a CPU build of torch, `cuda:1` with one GPU). Checked without starting
            the device, so that the processes of a multi-GPU run do not all start a context on the first GPU.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"Device {device!r} is not a torch device: expected cpu, cuda, mps, xpu, ..., optionally with an index "
            "(cuda:1)."
        ) from None
    backend = getattr(torch, device.type, None)  # torch.cuda, torch.mps, torch.xpu, ...
    if device.type == "cpu" or not hasattr(backend, "is_available"):
        return device
    kind = device.type.upper()
    if not backend.is_available():
        built_without = device.type == "cuda" and torch.version.cuda is None and torch.version.hip is None
        reason = f"this torch ({torch.__version__}) is built without CUDA" if built_without else f"no {kind} device"
        raise ValueError(f"Device {str(device)!r} is not available: {reason}.")
    count = backend.device_count()
    if device.index is not None and device.index >= count:
        raise ValueError(f"Device {str(device)!r} is not available: torch sees {count} {kind} device(s).")
    return device


def resolve_dtype(dtype=None, device=None):
    """The weight dtype: the caller's (`fp32`/`fp16`/`bf16` or a torch dtype), else fp16 on CUDA, fp32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None:
        device = resolve_device() if device is None else torch.device(device)  # its type only: not checked here
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}; choose one of: {', '.join(DTYPES)}.")
    return DTYPES[dtype]


def load_pipeline(
    model=None, controlnet=None, *, device=None, dtype=None, scheduler=None, scheduler_options=None, vae=None
):
    """Load a background-generation pipeline.

    Args:
        model: Hub id or local folder (Hub layout). Either a complete model with a `controlnet/` folder
            (default `yahoo-inc/photo-background-generation`), or a base model (SD2-inpainting, SD2-base,
            SDXL-inpainting, SDXL-base) when `controlnet` is given. Its backbone is detected from the folder
            (`photobg.backbones`) and picks the pipeline class (`pipeline_class`). The names of `TEST_MODELS`
            (`tiny-inpainting`, `tiny-sdxl-inpainting`, ...) are random test models built locally.
        controlnet: Hub id, local folder, or a single state-dict file (`.pth`, `.safetensors`, ...) of a
            ControlNet trained on `model`'s UNet; overrides the model's own `controlnet/`.
        device: torch device or name; default CUDA when present, else CPU.
        dtype: `fp32`, `fp16`, `bf16` or a torch dtype; default fp16 on CUDA, fp32 on CPU.
        scheduler: None for the authors' recipe (`photobg.recipe`: UniPC as diffusers 0.27 ran it), "model" for
            the checkpoint's own scheduler, or a diffusers scheduler class name (e.g. `DDIMScheduler`),
            configured from the model's scheduler config. See `make_scheduler`.
        scheduler_options: the scheduler's config values to set (`KEY=VALUE` specs or a dict), typed by
            `scheduler_options`, e.g. {"timestep_spacing": "trailing"}.
        vae: a VAE to use instead of the model's (Hub id or folder of an `AutoencoderKL`, or a model folder with
            `vae/`), e.g. the fp16-safe SDXL VAE `madebyollin/sdxl-vae-fp16-fix`; see `check_vae`.

    Returns:
        A `StableDiffusionControlNetInpaintPipeline` (SD2) or `StableDiffusionXLControlNetInpaintPipeline` (SDXL)
        on `device` in `dtype`.
    """
    import inspect

    from diffusers import AutoencoderKL, ControlNetModel

    device, dtype = resolve_device(device), resolve_dtype(dtype, device)
    if scheduler != recipe.MODEL_SCHEDULER:  # checked before anything is read where the class is known
        check_scheduler(scheduler)
        scheduler_options_of(scheduler, scheduler_options, {})
    model, controlnet, unet_config = check_model(model, controlnet, scheduler)
    vae_source = check_vae(vae, model) if vae is not None else None
    cls = pipeline_class(detect_backbone(model))
    kwargs = {"dtype": dtype}
    if "safety_checker" in inspect.signature(cls.__init__).parameters:  # SD2's pipelines: loaded without one
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    if controlnet is not None and is_state_dict_file(controlnet):
        kwargs["controlnet"] = controlnet_from_state_dict(controlnet, unet_config).to(dtype=dtype)
    elif controlnet is not None:
        kwargs["controlnet"] = _from_pretrained(ControlNetModel, controlnet, "ControlNet", dtype=dtype)
    if vae_source is not None:
        spec, subfolder = vae_source
        kwargs["vae"] = _from_pretrained(AutoencoderKL, spec, "VAE", subfolder=subfolder, dtype=dtype)
    pipe = _from_pretrained(cls, model, "Model", **kwargs)
    options = scheduler_options_of(scheduler, scheduler_options, pipe.scheduler.config)
    pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config, options)
    return pipe.to(device)


def check_model(model=None, controlnet=None, scheduler=None):
    """Check, without loading any weights, that a model (and ControlNet) exist and fit together: the configs
    are read (from the folder, or from the Hub or its cache) and the channel counts compared.

    Args:
        model, controlnet, scheduler: as in `load_pipeline`.

    Returns:
        (model, controlnet, unet_config): the model and ControlNet as `from_pretrained` takes them (test
        models are built on first use) and the UNet's config.

    Raises:
        FileNotFoundError, OSError, ValueError: naming the model or ControlNet and what is wrong.
    """
    check_scheduler(scheduler)
    model = resolve_model(model or (DEFAULT_MODEL if controlnet is None else DEFAULT_BASE_MODEL))
    backbone = detect_backbone(model)
    unet_config = load_component_config(model, "unet")
    if controlnet is not None and not is_state_dict_file(controlnet):
        controlnet = resolve_model(controlnet, what="ControlNet")
        _check_channels(controlnet, load_config(controlnet, None, "ControlNet"), model, backbone, unet_config)
    elif controlnet is None:
        if not has_component(model, "controlnet"):
            raise ValueError(
                f"Model {model!r} has no 'controlnet/' component: pass a ControlNet "
                "(`controlnet=` / `--controlnet`) to use it as a base model."
            )
        controlnet_config = load_component_config(model, "controlnet")
        _check_channels(f"{model}/controlnet", controlnet_config, model, backbone, unet_config)
    return model, controlnet, unet_config


def free_device_memory():
    """Return what Python and the CUDA allocator hold but no longer use (after a model is released, or after a
    failure such as running out of memory)."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def optimize(pipe, *, compile=False, channels_last=False, vae_tiling=False):
    """Opt-in speed/memory settings for a loaded pipeline (each measured in `bench/`; see bench/README.md).

    Args:
        pipe: a loaded pipeline; changed in place.
        compile: `torch.compile` the UNet's and ControlNet's transformer blocks, the repeated blocks of diffusers'
            regional compilation (`compile_repeated_blocks`): one block's graph serves all its copies, so compiling
            takes a fraction of the whole model's time for about its speed. Shapes do not depend on the prompt or
            the seed, so new prompts and seeds reuse the compiled graphs; a new size or batch size compiles once
            more. `True` uses the default backend (Inductor); a string names another (e.g. "aot_eager").
        channels_last: NHWC memory format for the convolution-heavy UNet, ControlNet and VAE.
        vae_tiling: decode/encode the VAE in overlapping tiles so 1024 px and larger canvases fit in memory.

    Returns:
        `pipe`.
    """
    if channels_last:
        for module in (pipe.unet, pipe.controlnet, pipe.vae):
            module.to(memory_format=torch.channels_last)
    if vae_tiling:
        pipe.vae.enable_tiling()
    if compile:
        backend = compile if isinstance(compile, str) else "inductor"
        pipe.unet.compile_repeated_blocks(backend=backend, dynamic=False)
        # diffusers' ControlNetModel names no repeated blocks (0.42), though it holds the UNet's: compiled alike.
        for block in pipe.controlnet.modules():
            if type(block).__name__ in pipe.unet._repeated_blocks:
                block.compile(backend=backend, dynamic=False)
    return pipe


def check_compile(device=None):
    """Raise a `ValueError` saying why, where torch cannot compile the models for `device` with its default
    backend (Inductor): Dynamo unsupported on this Python, no C++ compiler for CPU code, no Triton for GPU code.
    Checked before the model loads, rather than failing at the first generation."""
    import importlib.util
    import shutil

    device = resolve_device(device)
    if not torch._dynamo.is_dynamo_supported():
        raise ValueError(f"torch {torch.__version__} cannot compile on this Python (Dynamo is not supported).")
    if device.type == "cpu" and not any(shutil.which(cxx) for cxx in (os.environ.get("CXX", "g++"), "c++", "clang++")):
        raise ValueError("torch compiles CPU code with a C++ compiler, and none was found (g++, c++, clang++, $CXX).")
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        raise ValueError("torch compiles CUDA code with Triton, which is not installed (pip install triton).")


def make_scheduler(name, config, options=None):
    """A scheduler built from a checkpoint's scheduler `config`.

    Args:
        name: None for the authors' recipe (`photobg.recipe.SCHEDULER` with its `SCHEDULER_CONFIG`), "model" for
            the checkpoint's own class, or a diffusers scheduler class name (with diffusers' defaults).
        config: the checkpoint's scheduler config.
        options: {key: value} of the scheduler's config to set on top (`scheduler_options`, checked and typed).

    Returns:
        The scheduler; unknown names are a `ValueError`.
    """
    overrides = dict(recipe.SCHEDULER_CONFIG) if name is None else {}
    return scheduler_class(scheduler_name(name, config)).from_config(config, **overrides, **(options or {}))


def scheduler_name(name, config):
    """The class name a scheduler choice (None, "model" or a class name) means for a checkpoint's `config`."""
    if name is None:
        return recipe.SCHEDULER
    return config["_class_name"] if name == recipe.MODEL_SCHEDULER else name


def scheduler_options_of(name, specs, config):
    """The typed options (`scheduler_options`) of scheduler choice `name` for a checkpoint's scheduler `config`."""
    return scheduler_options(scheduler_class(scheduler_name(name, config)), specs or {})


def check_scheduler(name):
    """Check a scheduler choice as `load_pipeline` takes it (None, "model" or a class name); a `ValueError` naming
    it and some valid names when diffusers has no such scheduler class."""
    if name not in (None, recipe.MODEL_SCHEDULER):
        scheduler_class(name)


def scheduler_options(cls, specs):
    """`KEY=VALUE` specs (or a {key: value} dict) of a scheduler class's config, typed as the class's own default
    of each key is (a bool takes true/false, a number a number; a key whose default is None takes JSON, or the
    text as it is).

    Returns:
        {key: typed value}.

    Raises:
        ValueError: naming the spec: not KEY=VALUE, a key the class's config does not have (with those it has),
            or a value that is not of the key's type.
    """
    import inspect
    import json

    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(cls.__init__).parameters.items()
        if name != "self" and parameter.kind is parameter.POSITIONAL_OR_KEYWORD
    }
    items = specs.items() if isinstance(specs, dict) else [_split_option(spec) for spec in specs]  # or (key, value)
    options = {}
    for key, value in items:
        if key not in defaults:
            raise ValueError(f"{cls.__name__} has no option {key!r}; its options are: {', '.join(defaults)}.")
        default = defaults[key]
        try:
            options[key] = _typed(value, default, json)
        except ValueError:
            kind = {bool: "true or false", int: "an integer", float: "a number"}.get(type(default), "a value")
            raise ValueError(f"{key}={value}: {cls.__name__}'s {key} takes {kind} (default {default!r}).") from None
        choices = option_choices(cls, key)
        if choices and options[key] is not None and options[key] not in choices:  # None: an Optional's default
            raise ValueError(
                f"{key}={value}: {cls.__name__}'s {key} takes one of {', '.join(choices)} (default {default!r})."
            )
    return options


# The texts diffusers' schedulers take for config keys that some classes annotate only as `str` (LCM's and TCD's
# timestep_spacing, Euler's prediction_type, DDIM's beta_schedule, ...): the values of the `Literal` that diffusers
# 0.42 annotates the same key with on other classes (DDIM, DDPM, Euler, UniPC), on which these classes' code branches
# too (their `set_timesteps`, `step` and `__init__`). A key whose default is not among them (a flow-matching
# scheduler's prediction_type) is not checked; the rarer values of a few classes (Heun's beta_schedule "exp",
# SASolver's prediction_type "flow_prediction") are not taken here.
STRING_CHOICES = {
    "timestep_spacing": ("linspace", "leading", "trailing"),
    "prediction_type": ("epsilon", "sample", "v_prediction"),
    "beta_schedule": ("linear", "scaled_linear", "squaredcos_cap_v2"),
    "interpolation_type": ("linear", "log_linear"),
}


def option_choices(cls, key):
    """The texts scheduler class `cls` takes for its config `key`, or None where any value goes: diffusers' own
    `Literal` annotation of the key, else `STRING_CHOICES` where the class's default is one of them."""
    import inspect
    import typing

    try:
        annotation = typing.get_type_hints(cls.__init__).get(key)
    except (NameError, TypeError):  # an annotation that does not resolve: no table from it
        annotation = None
    for kind in (annotation, *typing.get_args(annotation)):  # a Literal, or an Optional[Literal]
        if typing.get_origin(kind) is typing.Literal:
            return typing.get_args(kind)
    default = inspect.signature(cls.__init__).parameters[key].default
    choices = STRING_CHOICES.get(key)
    return choices if isinstance(default, str) and default in (choices or ()) else None


def takes_timesteps(cls):
    """Whether scheduler class `cls` takes fixed timesteps: its `set_timesteps` has diffusers' `timesteps=`."""
    import inspect

    return "timesteps" in inspect.signature(cls.set_timesteps).parameters


def takes_eta(cls):
    """Whether scheduler class `cls`'s step takes an `eta` (DDIM's noise, TCD's gamma)."""
    import inspect

    return "eta" in inspect.signature(cls.step).parameters


def check_timesteps(cls, timesteps):
    """Raise a `ValueError` unless scheduler class `cls` takes fixed timesteps (`takes_timesteps`) and `timesteps`
    are distinct integers in [0, 1000) in descending order."""
    import inspect

    if not takes_timesteps(cls):
        raise ValueError(
            f"{cls.__name__} takes no fixed timesteps (its set_timesteps has no `timesteps`): choose a scheduler "
            "that does, e.g. --scheduler LCMScheduler, TCDScheduler or EulerDiscreteScheduler."
        )
    train_steps = inspect.signature(cls.__init__).parameters["num_train_timesteps"].default
    if list(timesteps) != sorted(set(timesteps), reverse=True) or not all(0 <= t < train_steps for t in timesteps):
        raise ValueError(f"{list(timesteps)} must be distinct timesteps in [0, {train_steps}), in descending order.")


def _split_option(spec):
    if isinstance(spec, tuple) and len(spec) == 2:
        return spec
    key, sep, value = str(spec).partition("=")
    if not sep or not key:
        raise ValueError(f"{spec!r} is not KEY=VALUE (e.g. timestep_spacing=trailing).")
    return key.strip(), value.strip()


def _typed(value, default, json):
    """`value` (text, or already typed) as the type of `default`; a ValueError when it is not of it."""
    if not isinstance(value, str):
        return value
    if isinstance(default, bool):
        if value.lower() not in ("true", "false"):
            raise ValueError(value)
        return value.lower() == "true"
    if isinstance(default, (int, float)):
        return type(default)(value)
    if default is None:
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def scheduler_class(name):
    """The diffusers scheduler class called `name`; a `ValueError` when there is none."""
    import diffusers

    cls = getattr(diffusers, name, None)
    if cls is None or not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        raise ValueError(
            f"Unknown scheduler {name!r}: expected the name of a scheduler class of diffusers (e.g. DDIMScheduler, "
            "EulerDiscreteScheduler, DPMSolverMultistepScheduler, LCMScheduler, UniPCMultistepScheduler; see "
            f"diffusers.schedulers), or {recipe.MODEL_SCHEDULER!r} for the model's own."
        )
    return cls


def _from_pretrained(cls, spec, what, **kwargs):
    try:
        return cls.from_pretrained(spec, **kwargs)
    except OSError as err:
        if os.path.isdir(spec):
            raise
        raise hub_error(what, spec, err) from err


def _check_channels(controlnet_name, controlnet_config, model, backbone, unet_config):
    got, want = controlnet_config["in_channels"], backbone.unet_in_channels
    if got != want:
        fits = [
            b.name
            for b in BACKBONES.values()
            if (b.unet_in_channels, b.text_conditioning) == (got, backbone.text_conditioning)
        ]
        raise ValueError(
            f"ControlNet {controlnet_name!r} takes {got} input channels but the UNet of {model!r} "
            f"({backbone.name}) takes {want}: a ControlNet runs on the backbone it was trained on "
            f"({' or '.join(fits) or 'none supported'} for {got} channels)."
        )
    _check_text_conditioning(controlnet_name, controlnet_config, model, backbone, unet_config)


def _check_text_conditioning(controlnet_name, controlnet_config, model, backbone, unet_config):
    """A ControlNet of another backbone family with the right channel count (an SD2 one on SDXL) takes other
    text embeddings: say so before any weight loads."""
    for key in ("cross_attention_dim", "addition_embed_type"):
        if controlnet_config.get(key) != unet_config.get(key):
            raise ValueError(
                f"ControlNet {controlnet_name!r} does not fit the UNet of {model!r} ({backbone.name}): its {key} "
                f"is {controlnet_config.get(key)!r}, the UNet's {unet_config.get(key)!r}; a ControlNet runs on the "
                "backbone it was trained on."
            )
