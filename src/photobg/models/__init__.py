"""Build and load the models behind photobg.

- `load_pipeline`: a background-generation pipeline from a complete model (the published
  `yahoo-inc/photo-background-generation` layout: model_index.json + component folders including
  `controlnet/`), or from a base model (SD2- or SDXL-inpainting, SD2- or SDXL-base) plus a ControlNet given as
  a Hub id, a folder, or a single state-dict file. The backbone is detected from the folder
  (`photobg.backbones`) and picks the pipeline class (SD2's or SDXL's, both over `photobg.method`).
- `check_vae`, `load_loras` (`parse_lora`: `PATH[:SCALE]`), `load_ip_adapter`: a replacement VAE, LoRAs and an
  IP-Adapter, each checked (files, fit with the model) with errors naming it.
- `convert_controlnet`: a single `.pth`/`.safetensors` ControlNet state dict -> a diffusers ControlNet folder.
- `build_components` / `write_test_model`: random-weight models from the configs in `photobg.configs`, in
  the exact folder layout of a Hub model (tiny ones for tests, real-size ones for benchmarks).
"""

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import recipe
from ..backbones import BACKBONES, TEST_MODELS, TEXT_CLIP, backbone_for_config, detect_backbone
from ..configs import get_config
from ..defaults import DEFAULT_MODEL, DTYPE_NAMES

DEFAULT_BASE_MODEL = BACKBONES["sd2-inpainting"].hub_id
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
STATE_DICT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")
_KEY_PREFIXES = ("module.", "controlnet.", "_orig_mod.")
DTYPES = dict(zip(DTYPE_NAMES, (torch.float32, torch.float16, torch.bfloat16), strict=True))


# ----------------------------------------------------------------------------- devices and dtypes


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


# ----------------------------------------------------------------------------- loading


def load_pipeline(model=None, controlnet=None, *, device=None, dtype=None, scheduler=None, vae=None):
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
        vae: a VAE to use instead of the model's (Hub id or folder of an `AutoencoderKL`, or a model folder with
            `vae/`), e.g. the fp16-safe SDXL VAE `madebyollin/sdxl-vae-fp16-fix`; see `check_vae`.

    Returns:
        A `StableDiffusionControlNetInpaintPipeline` (SD2) or `StableDiffusionXLControlNetInpaintPipeline` (SDXL)
        on `device` in `dtype`.
    """
    import inspect

    from diffusers import AutoencoderKL, ControlNetModel

    device, dtype = resolve_device(device), resolve_dtype(dtype, device)
    model, controlnet, unet_config = check_model(model, controlnet, scheduler)
    vae_source = check_vae(vae, model) if vae is not None else None
    cls = pipeline_class(detect_backbone(model))
    kwargs = {"dtype": dtype}
    if "safety_checker" in inspect.signature(cls.__init__).parameters:  # SD2's pipelines: loaded without one
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    if controlnet is not None and _is_state_dict_file(controlnet):
        kwargs["controlnet"] = controlnet_from_state_dict(controlnet, unet_config).to(dtype=dtype)
    elif controlnet is not None:
        kwargs["controlnet"] = _from_pretrained(ControlNetModel, controlnet, "ControlNet", dtype=dtype)
    if vae_source is not None:
        spec, subfolder = vae_source
        kwargs["vae"] = _from_pretrained(AutoencoderKL, spec, "VAE", subfolder=subfolder, dtype=dtype)
    pipe = _from_pretrained(cls, model, "Model", **kwargs)
    pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    return pipe.to(device)


def pipeline_class(backbone):
    """photobg's pipeline class for a `Backbone`: the SD2 or the SDXL one (the same method, `photobg.method`)."""
    if backbone.text_conditioning == TEXT_CLIP:
        from ..pipeline_controlnet_inpaint import StableDiffusionControlNetInpaintPipeline

        return StableDiffusionControlNetInpaintPipeline
    from ..pipeline_controlnet_inpaint_sd_xl import StableDiffusionXLControlNetInpaintPipeline

    return StableDiffusionXLControlNetInpaintPipeline


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
    unet_config = _load_component_config(model, "unet")
    if controlnet is not None and not _is_state_dict_file(controlnet):
        controlnet = resolve_model(controlnet, what="ControlNet")
        _check_channels(controlnet, _load_config(controlnet, None, "ControlNet"), model, backbone, unet_config)
    elif controlnet is None:
        if not _has_component(model, "controlnet"):
            raise ValueError(
                f"Model {model!r} has no 'controlnet/' component: pass a ControlNet "
                "(`controlnet=` / `--controlnet`) to use it as a base model."
            )
        controlnet_config = _load_component_config(model, "controlnet")
        _check_channels(f"{model}/controlnet", controlnet_config, model, backbone, unet_config)
    return model, controlnet, unet_config


def native_size(model):
    """A model's native size in pixels, the default working size (512 for SD2, 1024 for SDXL): its UNet's sample
    size times its VAE's downscale, as `BackgroundGenerator.native_size` reads them from a loaded pipeline. Reads
    only the two config files of `model` (a folder or Hub id, as `resolve_model` gives it)."""
    unet, vae = _load_component_config(model, "unet"), _load_component_config(model, "vae")
    return unet["sample_size"] * 2 ** (len(vae["block_out_channels"]) - 1)


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
        compile: `torch.compile` the UNet and ControlNet. Shapes do not depend on the prompt or the seed, so
            new prompts and seeds reuse the compiled graphs; a new size or batch size compiles once more.
            `True` uses the default backend; a string names another (e.g. "aot_eager").
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
        pipe.unet = torch.compile(pipe.unet, backend=backend, dynamic=False)
        pipe.controlnet = torch.compile(pipe.controlnet, backend=backend, dynamic=False)
    return pipe


def make_scheduler(name, config):
    """A scheduler built from a checkpoint's scheduler `config`.

    Args:
        name: None for the authors' recipe (`photobg.recipe.SCHEDULER` with its `SCHEDULER_CONFIG`), "model" for
            the checkpoint's own class, or a diffusers scheduler class name (with diffusers' defaults).
        config: the checkpoint's scheduler config.

    Returns:
        The scheduler; unknown names are a `ValueError`.
    """
    if name is None:
        return scheduler_class(recipe.SCHEDULER).from_config(config, **recipe.SCHEDULER_CONFIG)
    if name == recipe.MODEL_SCHEDULER:
        name = config["_class_name"]
    return scheduler_class(name).from_config(config)


def check_scheduler(name):
    """Check a scheduler choice as `load_pipeline` takes it (None, "model" or a class name); a `ValueError` naming
    it and some valid names when diffusers has no such scheduler class."""
    if name not in (None, recipe.MODEL_SCHEDULER):
        scheduler_class(name)


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


def resolve_model(spec, what="Model"):
    """Turn a model spec into something `from_pretrained` takes: a local folder or a Hub id.

    Test model names (`TEST_MODELS`: `tiny-inpainting`, `tiny-sdxl-base`, ...) are written to `$PHOTOBG_CACHE`
    (default `~/.cache/photobg`) on first use. A spec that is plainly a path (absolute, `./`, `~`) must exist.
    """
    spec = str(spec)
    if spec in TEST_MODELS:
        folder = photobg_cache() / spec
        if not (folder / "model_index.json").exists():
            write_test_model(folder, spec)
        return str(folder)
    if os.path.isdir(os.path.expanduser(spec)):
        return os.path.expanduser(spec)
    if spec.startswith(("/", ".", "~")) or spec.count("/") > 1 or os.path.exists(spec):
        raise FileNotFoundError(f"{what} folder {spec!r} does not exist.")
    return spec


def photobg_cache():
    """Where test models named on the command line are built: `$PHOTOBG_CACHE`, default `~/.cache/photobg`."""
    return Path(os.environ.get("PHOTOBG_CACHE", "~/.cache/photobg")).expanduser()


def _from_pretrained(cls, spec, what, **kwargs):
    try:
        return cls.from_pretrained(spec, **kwargs)
    except OSError as err:
        if os.path.isdir(spec):
            raise
        raise hub_error(what, spec, err) from err


def hub_error(what, spec, err):
    """The error for a model that is neither a local folder nor provided by the Hub; says why and what to do."""
    reason = (str(err).strip().splitlines() or [""])[0][:200]
    return OSError(
        f"Could not load {what.lower()} {spec!r}: there is no local folder of that name and the Hub did not "
        f"provide it ({err.__class__.__name__}{': ' + reason if reason else ''}). Pass a local folder, or run "
        "where the Hub is reachable (or where the model is cached, with HF_HUB_OFFLINE=1)."
    )


def _has_component(model, name):
    if os.path.isdir(model):
        return os.path.isdir(os.path.join(model, name))
    index = _load_config(model, None, "Model", filename="model_index.json")
    return name in index and index[name][0] is not None


def _load_component_config(model, name):
    if os.path.isdir(model):
        if not os.path.exists(os.path.join(model, "model_index.json")):
            raise FileNotFoundError(
                f"Model folder {model!r} has no model_index.json: expected a diffusers model folder "
                f"(model_index.json plus {', '.join(COMPONENTS)} folders)."
            )
        if not os.path.isdir(os.path.join(model, name)):
            raise FileNotFoundError(f"Model folder {model!r} has no '{name}/' component folder.")
    return _load_config(model, name, "Model")


def _load_config(spec, subfolder, what, filename="config.json"):
    if os.path.isdir(spec):
        path = os.path.join(spec, subfolder or "", filename)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{what} folder {spec!r} has no {os.path.join(subfolder or '', filename)}.")
        with open(path) as f:
            return json.load(f)
    from huggingface_hub import hf_hub_download

    try:
        check_hub_file(spec, filename, subfolder)
        with open(hf_hub_download(spec, filename, subfolder=subfolder)) as f:
            return json.load(f)
    except Exception as err:
        raise hub_error(what, spec, err) from err


def check_hub_file(repo_id, filename, subfolder=None):
    """Fail at once when a Hub file is neither in the local cache nor reachable.

    For a file that is not cached, huggingface_hub retries an unreachable Hub five times with backoff (about
    half a minute) before giving up; one request without retries tells the same. A cached file, or
    `HF_HUB_OFFLINE=1`, needs no request (huggingface_hub then answers from the cache at once). The request
    waits at most `HF_HUB_ETAG_TIMEOUT` seconds (default 10) for a Hub that does not answer.

    Raises:
        huggingface_hub's errors: a connection error or timeout when the Hub is out of reach, HTTP errors
        (missing repository or file, gated model) as they are.
    """
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url, try_to_load_from_cache

    path = f"{subfolder}/{filename}" if subfolder else filename
    if constants.is_offline_mode() or isinstance(try_to_load_from_cache(repo_id, path), str):
        return
    get_hf_file_metadata(hf_hub_url(repo_id, filename, subfolder=subfolder))


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


# ----------------------------------------------------------------------------- VAE, LoRA, IP-Adapter

# What a replacement VAE must share with the model's own: the latent space (channels, scale, shift); and its downscale.
VAE_SETTINGS = ("latent_channels", "scaling_factor", "shift_factor")
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # what diffusers' `save_lora_weights` writes
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
# Keys of the UNet's first convolution in the LoRA formats diffusers reads: peft/diffusers (`unet.conv_in.`, or
# unprefixed) and kohya (`lora_unet_conv_in.`).
_CONV_IN_KEY = re.compile(r"^(?:unet\.|lora_unet_)?conv_in[._]")


def check_vae(vae, model):
    """Check, from the configs alone, that `vae` can replace the VAE of `model`.

    Args:
        vae: Hub id or folder of an `AutoencoderKL` (its `config.json` at the top, as madebyollin/sdxl-vae-fp16-fix),
            or a model folder whose `vae/` holds one.
        model: the model folder or Hub id, as `check_model` returns it.

    Returns:
        (spec, subfolder) as `AutoencoderKL.from_pretrained` takes them.

    Raises:
        FileNotFoundError, OSError: the VAE cannot be found; ValueError: its latent space or downscale differs from
        the model's VAE (a VAE of another model family), naming the setting.
    """
    vae = str(vae)
    spec = resolve_model(vae, what="VAE")
    subfolder = "vae" if os.path.isdir(os.path.join(spec, "vae")) else None
    config = _load_config(spec, subfolder, "VAE")
    if config.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
        raise ValueError(f"VAE {vae!r} is a {config['_class_name']}, not an AutoencoderKL.")
    own = _load_component_config(model, "vae")
    settings = {key: (config.get(key), own.get(key)) for key in VAE_SETTINGS}
    settings["downscale"] = tuple(2 ** (len(c.get("block_out_channels", [])) - 1) for c in (config, own))
    for key, (theirs, ours) in settings.items():
        if theirs != ours:
            raise ValueError(
                f"VAE {vae!r} does not fit {model!r}: its {key} is {theirs!r}, the model's VAE has {ours!r} "
                "(a VAE of another model family; SDXL models take an SDXL VAE)."
            )
    return spec, subfolder


@dataclass(frozen=True)
class Lora:
    """A LoRA to load: its weights file and the scale it is applied with (0 = no effect, 1 = as trained)."""

    path: str
    scale: float = 1.0


def parse_lora(spec):
    """A `Lora` from `PATH[:SCALE]` (or a (path, scale) pair, or a `Lora`), its file checked.

    A spec that exists as a file or folder is a path, even if it contains ':'; otherwise the text after the last
    ':' is the scale (default 1.0).

    Args:
        spec: `PATH[:SCALE]`: a LoRA weights file (`.safetensors`, ...) or a folder holding one (as diffusers'
            `save_lora_weights` writes it).

    Returns:
        `Lora` with the weights file's path.

    Raises:
        FileNotFoundError: naming the path, when it does not exist or a folder holds no single weights file.
        ValueError: when the scale is not a finite number, or the file is not a LoRA (`lora_shapes`).
    """
    import math

    if isinstance(spec, Lora):
        return spec
    if isinstance(spec, (tuple, list)):
        path, scale = spec
    else:
        path, scale = str(spec), 1.0
        head, colon, tail = path.rpartition(":")
        if colon and head and not os.path.exists(os.path.expanduser(path)):
            try:
                path, scale = head, float(tail)
            except ValueError:
                if os.path.exists(os.path.expanduser(head)):
                    raise ValueError(f"LoRA {spec!r}: the scale {tail!r} after ':' is not a number.") from None
    if not math.isfinite(float(scale)):
        raise ValueError(f"LoRA {spec!r}: the scale must be a finite number, not {scale}.")
    path = _weights_file(os.path.expanduser(str(path)), "LoRA", LORA_WEIGHT_NAME)
    lora_shapes(path)  # a file that is not a LoRA is refused now, not after the model has loaded
    return Lora(path, float(scale))


def lora_shapes(path):
    """{key: shape} of a LoRA weights file, read as diffusers reads it (safetensors by its suffix, else `torch.load`
    weights-only); of a `.safetensors` file only the header is read.

    Raises:
        ValueError: naming the file, when it cannot be read as weights, holds no state dict, or none of its keys is
            a LoRA layer's (diffusers' rule: a LoRA's keys contain "lora").
    """
    from safetensors import safe_open

    try:
        if path.endswith(".safetensors"):
            with safe_open(path, "pt") as f:
                state = {key: f.get_slice(key).get_shape() for key in f.keys()}  # from the header alone
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # whatever the reader raises, the file is not one it reads
        raise unreadable_weights("LoRA", path, err) from err
    if not isinstance(state, dict) or not all(isinstance(value, (list, torch.Tensor)) for value in state.values()):
        raise ValueError(f"LoRA {path!r} holds no state dict (a mapping of names to tensors).")
    if not any("lora" in str(key).lower() for key in state):
        example = f" (e.g. {next(iter(state))!r})" if state else ""
        raise ValueError(f"LoRA {path!r} holds no LoRA weights: none of its keys{example} contains 'lora'.")
    return {key: tuple(getattr(value, "shape", value)) for key, value in state.items()}


def unreadable_weights(what, path, err):
    """A one-line `ValueError` for a weights file that cannot be read (torch's own message runs over many lines)."""
    if isinstance(err, OSError):  # missing, a folder, no permission
        reason = f"cannot be read ({err.strerror or err})"
    elif str(path).endswith(".safetensors"):
        reason = f"is not a safetensors file ({err})"
    else:
        reason = f"is not a weights file that torch.load reads weights-only ({type(err).__name__})"
    return ValueError(f"{what} {str(path)!r} {reason}.")


def _weights_file(path, what, default_name):
    """The weights file `path` names: the file itself, or in a folder `default_name` or its only weights file."""
    if os.path.isfile(path):
        return path
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{what} {path!r} does not exist.")
    if os.path.isfile(os.path.join(path, default_name)):
        return os.path.join(path, default_name)
    found = sorted(name for name in os.listdir(path) if name.endswith(WEIGHT_SUFFIXES))
    if len(found) != 1:
        held = f"holds {', '.join(found)}" if found else "holds no weights file"
        raise FileNotFoundError(f"{what} folder {path!r} {held}: name the file.")
    return os.path.join(path, found[0])


def load_loras(pipe, loras, *, fuse=True):
    """Load LoRAs into a pipeline's UNet and text encoders (diffusers' `load_lora_weights`, which needs `peft`) and
    apply each with its scale (`set_adapters`). The ControlNet is not changed.

    A LoRA trained on a UNet with another number of input channels (a text-to-image model's 4, on a 9-channel
    inpainting UNet) cannot change this UNet's first convolution: its `conv_in` layers are left out with a warning
    naming them, and the rest is loaded.

    Args:
        pipe: a loaded pipeline; changed in place.
        loras: `Lora`s or `PATH[:SCALE]` specs (`parse_lora`).
        fuse: merge the LoRAs into the weights (`fuse_lora`, then the LoRA layers are removed): generation costs
            what it costs without them. Without, the adapters stay and `set_lora_scales` changes their scales.

    Returns:
        The adapter names, one per LoRA.

    Raises:
        ImportError: `peft` is not installed; ValueError: a LoRA does not fit the model, naming it.
    """
    import importlib.util

    loras = [parse_lora(lora) for lora in loras]
    if not loras:
        return []
    if importlib.util.find_spec("peft") is None:
        raise ImportError("LoRAs need the peft package: pip install 'photobg[lora]' (or pip install peft).")
    names = [f"lora_{k}" for k in range(len(loras))]
    for lora, name in zip(loras, names, strict=True):
        with tempfile.TemporaryDirectory(prefix="photobg-lora-") as scratch, _quiet_lora_loading():
            path = _fit_conv_in(lora.path, pipe.unet.config.in_channels, scratch)
            folder, weight_name = os.path.split(os.path.abspath(path))  # a bare file name's folder is "": the Hub
            try:
                pipe.load_lora_weights(folder, weight_name=weight_name, adapter_name=name)
            except (RuntimeError, ValueError, KeyError) as err:
                reason = (str(err).strip().splitlines() or [""])[-1][:300]
                raise ValueError(
                    f"LoRA {lora.path!r} does not fit this model (was it trained for another base model?): {reason}"
                ) from err
    pipe.set_adapters(names, adapter_weights=[lora.scale for lora in loras])
    if fuse:
        pipe.fuse_lora(adapter_names=names)
        pipe.unload_lora_weights()  # the fused weights stay; the LoRA layers go
    return names


@contextlib.contextmanager
def _quiet_lora_loading():
    """Without diffusers' warning, for every text encoder a LoRA leaves alone (most adapt the UNet only), that it
    found no keys for it: the warning says itself that it is safe to ignore."""

    def keep(record):
        return not record.getMessage().startswith("No LoRA keys associated to")

    logger = logging.getLogger("diffusers.loaders.lora_base")
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def set_lora_scales(pipe, names, scales):
    """Set the scales of LoRAs loaded with `load_loras(..., fuse=False)` (exact: scale 0 is the model without)."""
    pipe.set_adapters(list(names), adapter_weights=[float(scale) for scale in scales])


def _fit_conv_in(path, in_channels, scratch):
    """`path`, or when its LoRA changes the UNet's `conv_in` for another number of input channels, a copy in folder
    `scratch` without those layers, with a warning naming them."""
    import warnings

    from safetensors import safe_open
    from safetensors.torch import save_file

    shapes = lora_shapes(path)
    downs = [key for key in shapes if _CONV_IN_KEY.match(key) and re.search(r"lora_A|lora_down|lora\.down", key)]
    trained_for = {shapes[key][1] for key in downs if len(shapes[key]) == 4}
    if not trained_for or trained_for == {in_channels}:
        return path
    dropped = sorted(key for key in shapes if _CONV_IN_KEY.match(key))
    warnings.warn(
        f"LoRA {path}: its conv_in layers were trained on a UNet with {min(trained_for)} input channels, this "
        f"model's takes {in_channels}; left out: {', '.join(dropped)}. The rest of the LoRA is loaded.",
        stacklevel=3,
    )
    if path.endswith(".safetensors"):
        with safe_open(path, "pt") as f:
            state, metadata = {key: f.get_tensor(key) for key in f.keys()}, f.metadata()
    else:
        state, metadata = torch.load(path, map_location="cpu", weights_only=True), None
    kept = {key: value for key, value in state.items() if key not in dropped}
    # The adapter metadata (rank, alpha) is kept: diffusers adapts only the layers the weights hold.
    metadata = metadata or {"format": "pt"}
    fitted = os.path.join(scratch, "lora.safetensors")
    save_file(kept, fitted, metadata=metadata)
    return fitted


def ip_adapter_weights(path):
    """The IP-Adapter weights file `path` names (a file, or a folder holding one next to its `image_encoder/`),
    checked: it exists and has its image encoder beside it.

    Raises:
        FileNotFoundError: naming what is missing.
    """
    path = os.path.expanduser(str(path))
    weights = _weights_file(path, "IP-Adapter", "ip-adapter.safetensors")
    encoder = os.path.join(os.path.dirname(weights), "image_encoder")
    if not os.path.isfile(os.path.join(encoder, "config.json")):
        raise FileNotFoundError(
            f"IP-Adapter {path!r} has no image encoder: expected its CLIP vision model in {encoder!r} (as in "
            "h94/IP-Adapter, where `sdxl_models/image_encoder` sits beside `sdxl_models/ip-adapter_sdxl.safetensors`)."
        )
    return weights


def load_ip_adapter(pipe, path, scale=1.0):
    """Load an IP-Adapter and its image encoder (diffusers' `load_ip_adapter`), so that `ip_adapter_image` (a
    reference image) conditions the UNet, with weight `scale` (`set_ip_adapter_scale`; 0 = no effect).

    Args:
        pipe: a loaded pipeline; changed in place.
        path: the IP-Adapter's weights file, or a folder holding one; its `image_encoder/` folder beside it.
        scale: how strongly the reference image steers the UNet.

    Raises:
        FileNotFoundError: see `ip_adapter_weights`; ValueError: the IP-Adapter does not fit the model, naming it.
    """
    path = str(path)
    weights = ip_adapter_weights(path)
    try:
        folder, weight_name = os.path.split(os.path.abspath(weights))  # a bare file name's folder is "": the Hub
        pipe.load_ip_adapter(folder, subfolder="", weight_name=weight_name)
    except (RuntimeError, ValueError, KeyError) as err:
        reason = (str(err).strip().splitlines() or [""])[-1][:300]
        raise ValueError(
            f"IP-Adapter {path!r} does not fit this model (was it made for another base model?): {reason}"
        ) from err
    pipe.set_ip_adapter_scale(scale)


# ----------------------------------------------------------------------------- state-dict ControlNets


def _is_state_dict_file(spec):
    return os.path.isfile(str(spec)) and str(spec).endswith(STATE_DICT_SUFFIXES)


def read_controlnet_state_dict(path):
    """Read a ControlNet saved as one state-dict file and normalise its keys.

    Loads `.safetensors` with safetensors and anything else with `torch.load(..., weights_only=True)` (no
    pickled code runs). Unwraps a top-level `state_dict`/`model`/`controlnet` entry and strips the
    `module.`, `controlnet.` and `_orig_mod.` key prefixes left by DDP, wrappers and `torch.compile`.
    """
    path = str(path)
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise unreadable_weights("ControlNet", path, err) from err
    for wrapper in ("state_dict", "model", "controlnet"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{path!r} does not hold a state dict (a mapping of parameter names to tensors).")
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ValueError(f"{path!r} is not a plain state dict: {not_tensors[:3]} are not tensors.")
    clean = {}
    for key, value in state.items():
        while key.startswith(_KEY_PREFIXES):
            key = key.split(".", 1)[1]
        clean[key] = value
    if "conv_in.weight" not in clean or "controlnet_cond_embedding.conv_in.weight" not in clean:
        raise ValueError(
            f"{path!r} is not a diffusers ControlNet state dict: it lacks 'conv_in.weight' / "
            f"'controlnet_cond_embedding.conv_in.weight' (keys look like {sorted(clean)[:3]})."
        )
    return clean


def controlnet_config_from_unet(unet_config, in_channels=None, conditioning_channels=3, embedding_channels=None):
    """The config of a ControlNet built from a UNet config, as `ControlNetModel.from_unet` would build it."""
    import inspect

    from diffusers import ControlNetModel

    accepted = inspect.signature(ControlNetModel.__init__).parameters
    config = {k: v for k, v in unet_config.items() if k in accepted}
    config.update(in_channels=in_channels or unet_config["in_channels"], conditioning_channels=conditioning_channels)
    if embedding_channels is not None:
        config["conditioning_embedding_out_channels"] = list(embedding_channels)
    return config


def controlnet_from_state_dict(path, unet_config):
    """Build a `ControlNetModel` with the architecture of `unet_config` and the weights in file `path`.

    The input channels (9 for the inpaint variant, 4 for the base variant) and the conditioning encoder's
    widths are read from the weights; every other setting comes from `unet_config`.
    """
    from accelerate import init_empty_weights
    from diffusers import ControlNetModel

    state = read_controlnet_state_dict(path)
    # The conditioning encoder is conv_in, then per width step a (c_i -> c_i, c_i -> c_i+1) pair of blocks.
    prefix = "controlnet_cond_embedding."
    widths = [state[prefix + "conv_in.weight"].shape[0]]
    while prefix + f"blocks.{2 * len(widths) - 1}.weight" in state:
        widths.append(state[prefix + f"blocks.{2 * len(widths) - 1}.weight"].shape[0])
    config = controlnet_config_from_unet(
        unet_config,
        in_channels=state["conv_in.weight"].shape[1],
        conditioning_channels=state[prefix + "conv_in.weight"].shape[1],
        embedding_channels=widths,
    )
    with init_empty_weights():
        controlnet = ControlNetModel.from_config(config)
    expected = {k: v.shape for k, v in controlnet.state_dict().items()}
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    mismatched = sorted(k for k in expected.keys() & state.keys() if state[k].shape != expected[k])
    if missing or unexpected or mismatched:
        raise ValueError(
            f"{path!r} does not match the ControlNet architecture of the base model: "
            f"{len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} unexpected keys "
            f"(e.g. {unexpected[:3]}), {len(mismatched)} of another shape (e.g. {mismatched[:3]})."
        )
    controlnet.load_state_dict(state, strict=True, assign=True)
    return controlnet


def convert_controlnet(checkpoint, output_dir, base=None):
    """Convert a single-file ControlNet state dict into a diffusers ControlNet folder (safetensors).

    Args:
        checkpoint: a `.pth`/`.pt`/`.bin`/`.safetensors` file, e.g. the authors'
            `controlnet_inpainting_salient_aware.pth`.
        output_dir: folder to write (`config.json` + `diffusion_pytorch_model.safetensors`); written to a
            temporary folder first and moved into place, so a failure leaves nothing half-written.
        base: where the architecture comes from: a config name of `photobg.configs` (default
            `sd2-inpainting`; the input channels are read from the weights, so this also fits SD2-base
            ControlNets) or a base model folder / Hub id whose `unet/config.json` is used.

    Returns:
        The output folder as a `Path`.
    """
    base = base or "sd2-inpainting"
    try:
        unet_config = get_config(base)["unet"]
    except ValueError:
        unet_config = _load_component_config(resolve_model(base, "Base model"), "unet")
    controlnet = controlnet_from_state_dict(checkpoint, unet_config)
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()):
        raise FileExistsError(f"Output folder {str(output_dir)!r} exists and is not empty.")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=output_dir.parent))
    try:
        controlnet.save_pretrained(tmp, safe_serialization=True)
        if output_dir.exists():
            output_dir.rmdir()
        tmp.rename(output_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return output_dir


# ----------------------------------------------------------------------------- random-weight models


def build_components(config_name="tiny-inpainting", seed=0, with_controlnet=True):
    """Random-weight models with a registered architecture (see `photobg.configs.MODEL_CONFIGS`).

    The ControlNet is built with `ControlNetModel.from_unet` like in training; its zero-initialised output
    layers then get small random weights so that, unlike a fresh ControlNet, it changes the UNet's output.

    Args:
        config_name: a `photobg.configs` name: a backbone's real architecture or its tiny test version.
        seed: seed of the random weights.
        with_controlnet: also build a ControlNet from the UNet.

    Returns:
        dict with `unet`, `vae`, the text encoders and tokenizers of the backbone (`text_encoder`, `tokenizer`;
        SDXL adds `text_encoder_2`, `tokenizer_2`), `scheduler` and (optionally) `controlnet`.
    """
    import diffusers
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel

    config = get_config(config_name)
    backbone = backbone_for_config(config_name)
    torch.manual_seed(seed)
    components = {
        "unet": UNet2DConditionModel.from_config(config["unet"]),
        "vae": AutoencoderKL.from_config(config["vae"]),
    }
    for name in backbone.text_encoders:
        components[name] = text_encoder_from_config(config[name])
    scheduler_config = dict(config["scheduler"])
    components["scheduler"] = getattr(diffusers, scheduler_config.pop("_class_name")).from_config(scheduler_config)
    with tempfile.TemporaryDirectory() as folder:
        for name in backbone.tokenizers:
            components[name] = _write_tokenizer(Path(folder, name), **config[name])
    if with_controlnet:
        controlnet = ControlNetModel.from_unet(
            components["unet"], conditioning_embedding_out_channels=config["conditioning_channels"]
        )
        zero_initialised = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]
        for layer in [*zero_initialised, controlnet.controlnet_cond_embedding.conv_out]:
            torch.nn.init.normal_(layer.weight, std=0.05)
        components["controlnet"] = controlnet
    return components


def text_encoder_from_config(config):
    """A random-weight text encoder from its Hub `config.json` contents: the class its `architectures` names
    (`CLIPTextModel`, or `CLIPTextModelWithProjection` for SDXL's second encoder)."""
    import transformers

    cls = getattr(transformers, config["architectures"][0])
    return cls(transformers.CLIPTextConfig(**config))


def write_test_model(path, config_name="tiny-inpainting", seed=0, with_controlnet=True):
    """Write random-weight models in the folder layout of a Hub model.

    With `with_controlnet=True` the layout is a complete photobg model's (model_index.json of the backbone's
    ControlNet pipeline plus `controlnet/`); without, it is the base model's (e.g. SD2-inpainting's, or
    SDXL-inpainting's with two tokenizers and text encoders). Each tokenizer folder holds
    `vocab.json`/`merges.txt` written by the factory, like the real models'.

    Args:
        path: the folder to write; replaced if it exists (written next to it first, then moved into place).
        config_name, seed, with_controlnet: as in `build_components`.

    Returns:
        The folder as a `Path`.
    """
    import diffusers

    backbone = backbone_for_config(config_name)
    config = get_config(config_name)
    components = build_components(config_name, seed, with_controlnet)
    # With a ControlNet: ours, which also writes its pipeline files (a complete photobg model's layout).
    cls = pipeline_class(backbone) if with_controlnet else getattr(diffusers, backbone.pipeline_class)
    pipe = _pipeline(cls, components, config["pipeline"])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".model-", dir=path.parent))
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        for name in backbone.tokenizers:
            shutil.rmtree(tmp / name)
            _write_tokenizer(tmp / name, **config[name])
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _pipeline(cls, components, attributes):
    """`cls(**components)` with no safety checker, feature extractor or image encoder, and those of the
    `model_index.json` `attributes` that `cls` takes (e.g. `force_zeros_for_empty_prompt`)."""
    import inspect

    accepted = inspect.signature(cls.__init__).parameters
    absent = {name: None for name in ("safety_checker", "feature_extractor", "image_encoder") if name in accepted}
    return cls(**components, **absent, **{key: value for key, value in attributes.items() if key in accepted})


def _write_tokenizer(folder, pad_token="!"):
    """Write a small byte-level BPE CLIP tokenizer (vocab.json, merges.txt, configs) and load it.

    Args:
        folder: where to write it.
        pad_token: `!` like SD2's tokenizer and SDXL's second, `<|endoftext|>` like SDXL's first.

    Returns:
        The `CLIPTokenizer`.
    """
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = _byte_chars()
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars])}
    merges = []
    for word in (
        "a",
        "photo",
        "of",
        "on",
        "the",
        "table",
        "bottle",
        "product",
        "cat",
        "dog",
        "beach",
        "studio",
    ):
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            merges.append(f"{parts[0]} {parts[1]}")
            parts = [parts[0] + parts[1], *parts[2:]]
            vocab.setdefault(parts[0], len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    special["pad_token"] = pad_token
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
    config = {**special, "model_max_length": 77, "do_lower_case": True, "tokenizer_class": "CLIPTokenizer"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return CLIPTokenizer.from_pretrained(folder)


def _byte_chars():
    # Byte-level BPE alphabet: printable bytes stand for themselves, the rest map to code points from 256.
    printable = {*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    chars, shifted = [], 0
    for byte in range(256):
        if byte in printable:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + shifted))
            shifted += 1
    return chars
