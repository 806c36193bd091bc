"""Shared fixtures: tiny random models in the Hub folder layout, written once per test session."""

import os

# No test may reach the Hub; huggingface_hub reads this once, at import.
os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from photobg.models import load_pipeline, write_test_model  # noqa: E402

# The tiny models' tensors are too small for threads to pay off, and on a shared 2-core machine torch's
# spinning worker threads made the suite several times slower.
torch.set_num_threads(1)


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


def make_photo(width=72, height=48, seed=0):
    """A drawn photo: a smooth gradient with noise, and its object mask (an off-centre soft-edged ellipse)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    photo = np.stack([xx / width, yy / height, 0.5 + 0 * xx], -1) * 200 + rng.integers(0, 55, (height, width, 3))
    dist = ((xx - width * 0.45) / (width * 0.25)) ** 2 + ((yy - height * 0.55) / (height * 0.3)) ** 2
    object_mask = np.clip((1.2 - dist) * 5, 0, 1) * 255
    return Image.fromarray(photo.astype(np.uint8)), Image.fromarray(object_mask.round().astype(np.uint8), "L")


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
    from photobg import generate_cli
    from photobg.api import BackgroundGenerator

    monkeypatch.setattr(
        generate_cli, "load_generator", lambda args: BackgroundGenerator(pipe=shared_pipe, segmenter=args.segmenter)
    )
