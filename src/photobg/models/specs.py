"""What a model option names (`--model`, `--controlnet`, `--vae`, a base model) turned into what `from_pretrained`
takes: a local folder, a Hub id, or a test model (`tiny-inpainting`, ...) built on first use.
"""

import os

from ..backbones import TEST_MODELS
from ..hub import photobg_cache


def resolve_model(spec, what="Model"):
    """Turn a model spec into something `from_pretrained` takes: a local folder or a Hub id.

    Test model names (`TEST_MODELS`: `tiny-inpainting`, `tiny-sdxl-base`, ...) are written to `$PHOTOBG_CACHE`
    (default `~/.cache/photobg`) on first use. A spec that is plainly a path (absolute, `./`, `~`) must exist.
    """
    spec = str(spec)
    if spec in TEST_MODELS:
        folder = photobg_cache() / spec
        if not (folder / "model_index.json").exists():
            from .testing import write_test_model  # fixture writers: imported only when a test model is named

            write_test_model(folder, spec)
        return str(folder)
    if os.path.isdir(os.path.expanduser(spec)):
        return os.path.expanduser(spec)
    if spec.startswith(("/", ".", "~")) or spec.count("/") > 1 or os.path.exists(spec):
        raise FileNotFoundError(f"{what} folder {spec!r} does not exist.")
    return spec
