"""Shared fixtures: tiny random models in the Hub folder layout, written once per test session."""

import os
import tempfile
from pathlib import Path

# No test may reach the Hub; huggingface_hub reads this once, at import.
os.environ["HF_HUB_OFFLINE"] = "1"
# diffusers copies custom pipeline files into its modules cache (read at import): one of this run's own, so that a
# test never loads a copy another run (or an older checkout) left in the user's shared cache.
os.environ["HF_MODULES_CACHE"] = tempfile.mkdtemp(prefix="photobg-test-modules-")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from photobg.models import load_pipeline, write_test_model  # noqa: E402

# The tiny models' tensors are too small for threads to pay off, and on a shared 2-core machine torch's
# spinning worker threads made the suite several times slower.
torch.set_num_threads(1)

SDXL_TEST_MODELS = {"inpaint": "tiny-sdxl-inpainting", "base": "tiny-sdxl-base"}


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    # Test models named on the command line (`--model tiny-inpainting`) go to a per-session cache.
    mp = pytest.MonkeyPatch()
    mp.setenv("PHOTOBG_CACHE", str(tmp_path_factory.mktemp("photobg-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def inpaint_model(tmp_path_factory):
    """Complete tiny inpaint-variant model (the published model's layout, with controlnet/)."""
    return write_test_model(tmp_path_factory.mktemp("models") / "tiny-inpainting", "tiny-inpainting")


@pytest.fixture(scope="session")
def base_variant_model(tmp_path_factory):
    """Complete tiny base-variant model (SD2-base-shaped UNet + ControlNet)."""
    return write_test_model(tmp_path_factory.mktemp("models") / "tiny-base", "tiny-base")


@pytest.fixture(scope="session")
def inpaint_base_model(tmp_path_factory):
    """Tiny SD2-inpainting-layout base model without a ControlNet."""
    path = tmp_path_factory.mktemp("models") / "tiny-sd2-inpainting"
    return write_test_model(path, "tiny-inpainting", with_controlnet=False)


@pytest.fixture(scope="session")
def tiny_sam(tmp_path_factory):
    """A random SamModel (64 px input, one-block decoder) and its processor, saved in the Hub layout."""
    from photobg.segment import write_test_sam

    return write_test_sam(tmp_path_factory.mktemp("models") / "tiny-sam")


@pytest.fixture()
def pipe(inpaint_model):
    pipe = load_pipeline(inpaint_model, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture()
def base_pipe(base_variant_model):
    pipe = load_pipeline(base_variant_model, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def sdxl_models(tmp_path_factory):
    """Complete tiny SDXL models: "inpaint" (SDXL-inpainting layout: two text encoders, a text_time UNet, a
    9-channel ControlNet) and "base" (SDXL-base: 4-channel UNet and ControlNet, the base variant)."""
    root = tmp_path_factory.mktemp("models")
    return {variant: write_test_model(root / name, name) for variant, name in SDXL_TEST_MODELS.items()}


def make_photo(width=72, height=48, seed=0):
    """A drawn photo: a smooth gradient with noise, and its object mask (an off-centre soft-edged ellipse)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    photo = np.stack([xx / width, yy / height, 0.5 + 0 * xx], -1) * 200 + rng.integers(0, 55, (height, width, 3))
    dist = ((xx - width * 0.45) / (width * 0.25)) ** 2 + ((yy - height * 0.55) / (height * 0.3)) ** 2
    object_mask = np.clip((1.2 - dist) * 5, 0, 1) * 255
    return Image.fromarray(photo.astype(np.uint8)), Image.fromarray(object_mask.round().astype(np.uint8), "L")


def output_image(folder, stem, seed=0):
    """The one image `photobg generate` wrote in `folder` for photo `stem` and `seed` (STEM_PROMPT_KEY_sSEED.png)."""
    (path,) = Path(folder).glob(f"{stem}_*_s{seed}.png")
    return path


def generator(seed=0):
    return torch.Generator("cpu").manual_seed(seed)


@pytest.fixture(scope="module")
def shared_pipe(inpaint_model):
    """The tiny inpaint model, loaded once per test module."""
    pipe = load_pipeline(inpaint_model, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture()
def fast(monkeypatch, shared_pipe):
    """`photobg generate` on one already loaded tiny model, whatever --model says (the key still sees it)."""
    from photobg.api import BackgroundGenerator
    from photobg.generation import run as generation_run

    monkeypatch.setattr(
        generation_run, "load_generator", lambda args: BackgroundGenerator(pipe=shared_pipe, segmenter=args.segmenter)
    )


def cutouts(n, size=(64, 48)):
    """`n` RGBA cutouts of one size, each with its own pixels and its object in another place."""
    images = []
    for k in range(n):
        photo, object_mask = make_photo(*size, seed=k)
        cutout = photo.copy()
        cutout.putalpha(Image.fromarray(np.roll(np.asarray(object_mask), 5 * k, axis=1)))
        images.append(cutout)
    return images


def assert_objects_kept(outputs, inputs):
    """Every output's opaque object pixels are its own input's."""
    assert len(outputs) == len(inputs)
    for out, cutout in zip(outputs, inputs):
        rgba = np.asarray(cutout)
        full = rgba[..., 3] == 255
        np.testing.assert_array_equal(np.asarray(out)[full], rgba[..., :3][full])


def write_ip_adapter(folder, unet):
    """A tiny random IP-Adapter for `unet` in the layout of h94/IP-Adapter: `ip-adapter.safetensors` with
    `image_proj.` / `ip_adapter.` keys, and an `image_encoder/` folder (CLIP vision model with projection)."""
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    vision = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, image_size=32)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(projection_dim=16, patch_size=8, **vision))
    encoder.save_pretrained(folder / "image_encoder")
    cross = unet.config.cross_attention_dim
    weights = {
        "image_proj.proj.weight": torch.randn(4 * cross, 16) * 0.5,
        "image_proj.proj.bias": torch.zeros(4 * cross),
        "image_proj.norm.weight": torch.ones(cross),
        "image_proj.norm.bias": torch.zeros(cross),
    }
    cross_attentions = [name for name in unet.attn_processors if not name.endswith("attn1.processor")]
    for k, name in enumerate(cross_attentions):  # diffusers numbers them 1, 3, 5, ...
        shape = unet.get_submodule(name.removesuffix(".processor")).to_k.weight.shape  # (hidden, cross)
        for proj in ("to_k_ip", "to_v_ip"):
            weights[f"ip_adapter.{2 * k + 1}.{proj}.weight"] = torch.randn(shape) * 0.5
    save_file(weights, folder / "ip-adapter.safetensors")
    return folder
