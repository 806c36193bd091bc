"""What is added to a loaded model: a replacement VAE, LoRAs and an IP-Adapter, each checked with errors naming it.

`check_vae` compares a VAE's latent space with the model's from the configs alone; `parse_lora` (`PATH[:SCALE]`)
checks a LoRA file before the model loads, `load_loras` loads and (by default) fuses them, `set_lora_scales`
changes unfused ones; `ip_adapter_weights` finds an IP-Adapter's file and image encoder, `load_ip_adapter` loads it.
"""

import contextlib
import logging
import os
import re
import tempfile
from dataclasses import dataclass

import torch

from ..hub import load_component_config, load_config
from .specs import resolve_model
from .state_dict import unreadable_weights

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
    config = load_config(spec, subfolder, "VAE")
    if config.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
        raise ValueError(f"VAE {vae!r} is a {config['_class_name']}, not an AutoencoderKL.")
    own = load_component_config(model, "vae")
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
