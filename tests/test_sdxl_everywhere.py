"""SDXL end to end on the tiny SDXL models: the API (which the app and `photobg generate` go through), the CLI,
`photobg evaluate` (the SDXL model at ControlNet scale 0 is its SI2 counterpart) and the notebook all run it, at
the backbone's native working size, with the object's pixels exact."""

import json

import numpy as np
import pytest
from conftest import make_photo
from PIL import Image

import photobg
from photobg.api import BackgroundGenerator
from photobg.backbones import get_backbone
from photobg.cli import main
from photobg.configs import get_config
from photobg.models import load_pipeline

STEPS = ["--steps", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def generator(sdxl_models):
    generator = BackgroundGenerator(sdxl_models["inpaint"], device="cpu", segmenter="threshold")
    generator.pipe.set_progress_bar_config(disable=True)
    return generator


def assert_object_exact(output, photo, mask):
    solid = np.asarray(mask) == 255
    assert output.size == photo.size and solid.any()
    np.testing.assert_array_equal(np.asarray(output.convert("RGB"))[solid], np.asarray(photo)[solid])


def test_api_generates_at_the_native_size_without_a_negative_prompt(generator):
    tiny_native = get_config("tiny-sdxl-inpainting")["unet"]["sample_size"] * 8  # 128, as 1024 for the real model
    assert generator.native_size == tiny_native and get_backbone("sdxl-inpainting").native_size == 1024
    assert generator.backbone.name == "sdxl-inpainting" and photobg.load_pipeline is load_pipeline
    calls = []
    hook = generator.pipe.unet.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append((args[0].shape, kwargs["encoder_hidden_states"])), with_kwargs=True
    )
    photo, mask = make_photo(72, 48)
    try:
        images = generator(photo, ["a cat", "a dog"], mask, seed=3, num_inference_steps=2)
    finally:
        hook.remove()
    assert generator.working_size(photo.size) == (128, 88)  # the long side at the native 128 px
    assert calls[0][0][-2:] == (11, 16)  # latents of 88x128
    # No negative prompt given: None reaches the pipeline, so SDXL's negative embedding is zeros
    # (force_zeros_for_empty_prompt), not the encoding of "". One prompt per call: (negative, positive).
    negative, positive = calls[0][1]
    assert negative.abs().max() == 0 and positive.abs().max() > 0
    for image in images:
        assert_object_exact(image, photo, mask)
    assert not np.array_equal(np.asarray(images[0]), np.asarray(images[1]))


def test_photobg_generate_with_an_sdxl_model(tmp_path, sdxl_models):
    photo, mask = make_photo(64, 48)
    photo.save(tmp_path / "photo.png")
    mask.save(tmp_path / "mask.png")
    args = [tmp_path / "photo.png", "--mask", tmp_path / "mask.png", "--prompt", "a cat", "--compare"]
    args += ["--model", sdxl_models["base"], "--output-dir", tmp_path / "out"]
    assert main(["generate", *map(str, args), *STEPS]) == 0
    [record] = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert record["working_size"] == [128, 96]  # the tiny SDXL model's native 128 px on the long side
    with Image.open(record["output"]) as output:
        assert_object_exact(output, photo, mask)
    (grid,) = (tmp_path / "out").glob("photo_compare_*.png")  # SI2's counterpart: the same model at scale 0
    assert grid.is_file()


def test_photobg_evaluate_compares_an_sdxl_model_with_itself_at_scale_0(tmp_path, sdxl_models):
    data = tmp_path / "bench"
    for folder in ("images", "masks"):
        (data / folder).mkdir(parents=True)
    for k in range(2):
        photo, mask = make_photo(96, 64, seed=k)
        photo.save(data / "images" / f"item{k}.png")
        mask.point(lambda v: 255 if v >= 128 else 0).save(data / "masks" / f"item{k}.png")
    model = sdxl_models["inpaint"]
    argv = ["evaluate", "--data", data, "--output-dir", tmp_path / "eval", "--steps", "2", "--device", "cpu"]
    argv += ["--model", f"{model}@name=SDXL,scale=0", "--model", f"{model}@name=Ours"]
    argv += ["--segmenter", "threshold", "--metrics", "expansion"]
    main(list(map(str, argv)))
    table = (tmp_path / "eval" / "report" / "results.md").read_text()
    assert "| SDXL |" in table and "| Ours |" in table and "× less expansion than SDXL" in table
    assert "resolution: 128" in table  # by default the samples are resized to the model's native size
    generated = sorted((tmp_path / "eval" / "generated" / "Ours").glob("*.png"))
    assert len(generated) == 2 and Image.open(generated[0]).size == (128, 85)


def test_notebook_runs_an_sdxl_model(sdxl_models):
    from test_notebook import run_notebook

    printed, images = run_notebook(sdxl_models["inpaint"])
    assert "backbone sdxl-inpainting" in printed and "working size 128x" in printed
    assert "base model alone: object expansion" in printed and "ours: object expansion" in printed
    assert len(images) == 3
