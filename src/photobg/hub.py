"""Reading a model's configuration files, from a local folder or the Hugging Face Hub, without torch or diffusers.

A model is named by a local folder in the Hub layout (`model_index.json` plus component folders such as `unet/`,
`vae/`, `controlnet/`) or by a Hub id. What photobg decides before any weight loads (a model's backbone in
`photobg.backbones`, the checks of `photobg.models.loading`, training's and evaluation's defaults) is read here:
`load_config` and `load_component_config` (a folder's files, else the Hub's or its cache's, failing at once when
the Hub is out of reach: `check_hub_file`), `has_component`, `native_size`, and the one error for a model the
Hub did not provide (`hub_error`). `photobg_cache` is where test models named on the command line are built.
"""

import json
import os
from pathlib import Path

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def load_config(spec, subfolder, what, filename="config.json"):
    """A config file of a model, read from its folder or fetched from the Hub (or its cache).

    Args:
        spec: a local folder or a Hub id.
        subfolder: the component folder (`unet`, `vae`, ...), or None for a file at the top.
        what: what `spec` is, for messages (`Model`, `ControlNet`, `VAE`).
        filename: `config.json`, or e.g. `model_index.json`.

    Returns:
        The parsed JSON.

    Raises:
        FileNotFoundError: naming the folder and the missing file; OSError (`hub_error`): the Hub did not provide it.
    """
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


def load_component_config(model, name):
    """The `config.json` of component `name` (`unet`, `vae`, `controlnet`, ...) of a model in the Hub layout; a
    folder without `model_index.json` or without that component is a `FileNotFoundError` naming it."""
    if os.path.isdir(model):
        if not os.path.exists(os.path.join(model, "model_index.json")):
            raise FileNotFoundError(
                f"Model folder {model!r} has no model_index.json: expected a diffusers model folder "
                f"(model_index.json plus {', '.join(COMPONENTS)} folders)."
            )
        if not os.path.isdir(os.path.join(model, name)):
            raise FileNotFoundError(f"Model folder {model!r} has no '{name}/' component folder.")
    return load_config(model, name, "Model")


def has_component(model, name):
    """Whether a model (folder or Hub id) has component `name`: its folder, or its entry in `model_index.json`."""
    if os.path.isdir(model):
        return os.path.isdir(os.path.join(model, name))
    index = load_config(model, None, "Model", filename="model_index.json")
    return name in index and index[name][0] is not None


def native_size(model):
    """A model's native size in pixels, the default working size (512 for SD2, 1024 for SDXL): its UNet's sample
    size times its VAE's downscale, as `BackgroundGenerator.native_size` reads them from a loaded pipeline. Reads
    only the two config files of `model` (a folder or Hub id, as `resolve_model` gives it)."""
    unet, vae = load_component_config(model, "unet"), load_component_config(model, "vae")
    return unet["sample_size"] * 2 ** (len(vae["block_out_channels"]) - 1)


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


def hub_error(what, spec, err):
    """The error for a model that is neither a local folder nor provided by the Hub; says why and what to do."""
    reason = (str(err).strip().splitlines() or [""])[0][:200]
    return OSError(
        f"Could not load {what.lower()} {spec!r}: there is no local folder of that name and the Hub did not "
        f"provide it ({err.__class__.__name__}{': ' + reason if reason else ''}). Pass a local folder, or run "
        "where the Hub is reachable (or where the model is cached, with HF_HUB_OFFLINE=1)."
    )


def photobg_cache():
    """Where test models named on the command line are built: `$PHOTOBG_CACHE`, default `~/.cache/photobg`."""
    return Path(os.environ.get("PHOTOBG_CACHE", "~/.cache/photobg")).expanduser()
