"""ControlNets saved as one state-dict file (`.pth`, `.safetensors`, ...), such as the authors' checkpoint.

`read_controlnet_state_dict` reads one (weights only, keys normalised), `controlnet_from_state_dict` builds the
`ControlNetModel` whose architecture the weights and a UNet config say (`controlnet_config_from_unet`), and
`convert_controlnet` writes it as a diffusers ControlNet folder (`photobg convert`). `unreadable_weights` is the
one-line error for a weights file that cannot be read, here and for LoRAs.
"""

import os
import shutil
import tempfile
from pathlib import Path

import torch

from ..configs import get_config
from ..hub import load_component_config
from .specs import resolve_model

STATE_DICT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")

_KEY_PREFIXES = ("module.", "controlnet.", "_orig_mod.")


def is_state_dict_file(spec):
    """Whether `spec` is one state-dict file (an existing file with a suffix of `STATE_DICT_SUFFIXES`)."""
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


def unreadable_weights(what, path, err):
    """A one-line `ValueError` for a weights file that cannot be read (torch's own message runs over many lines)."""
    if isinstance(err, OSError):  # missing, a folder, no permission
        reason = f"cannot be read ({err.strerror or err})"
    elif str(path).endswith(".safetensors"):
        reason = f"is not a safetensors file ({err})"
    else:
        reason = f"is not a weights file that torch.load reads weights-only ({type(err).__name__})"
    return ValueError(f"{what} {str(path)!r} {reason}.")


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
        unet_config = load_component_config(resolve_model(base, "Base model"), "unet")
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
