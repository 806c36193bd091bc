"""Sampling recipes (issue 22): scheduler options and fixed timesteps as settings, the named few-step recipes (each
equal to diffusers' own inpainting pipeline run the same way, at ControlNet scale 0 and without paste-back), and
guidance off costing one model batch a step."""

import argparse
import json
import re
import shlex

import numpy as np
import pytest
from conftest import generator, make_photo, output_image
from diffusers import StableDiffusionInpaintPipeline, StableDiffusionXLInpaintPipeline
from PIL import Image

import photobg
from photobg.api import BackgroundGenerator
from photobg.backbones import detect_backbone
from photobg.cli import main
from photobg.models import load_pipeline, make_scheduler, scheduler_options_of
from photobg.recipe import DEFAULT_RECIPE, RECIPES
from photobg.settings import GenerationSettings

PROMPT = "a photo of a bottle on the beach"


def parse(*flags):
    """The resolved settings of `photobg generate x.png FLAGS`."""
    from photobg.generation.cli import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return GenerationSettings.from_args(parser.parse_args(["x.png", *flags]))


# ----------------------------------------------------------------------------- --recipe, and flags that override it


def test_a_recipe_sets_what_was_not_given_and_explicit_flags_win():
    lightning = parse("--recipe", "sdxl-lightning-4")
    assert (lightning.scheduler, lightning.scheduler_options) == (
        "EulerDiscreteScheduler",
        ["timestep_spacing=trailing"],
    )
    assert (lightning.num_inference_steps, lightning.guidance_scale, lightning.timesteps) == (4, 0, None)
    # an explicit flag wins even when it gives the flag's default value
    assert parse("--recipe", "sdxl-lightning-4", "--guidance", "7.5").guidance_scale == 7.5
    assert parse("--recipe", "tcd", "--eta", "0.5").eta == 0.5 and parse("--recipe", "tcd").eta == 0.3
    dmd2 = parse("--recipe", "dmd2-4")
    assert (dmd2.scheduler, dmd2.timesteps, dmd2.num_inference_steps) == ("LCMScheduler", [999, 749, 499, 249], 4)
    eight = parse("--recipe", "dmd2-4", "--steps", "8")  # other steps: the recipe's fixed timesteps are dropped
    assert (eight.timesteps, eight.num_inference_steps) == (None, 8)
    # fixed timesteps set the steps where --steps is not given
    assert parse("--scheduler", "LCMScheduler", "--timesteps", "999,499").num_inference_steps == 2
    authors = dict(vars(parse("--recipe", DEFAULT_RECIPE)), recipe=None)
    assert authors == vars(parse())  # the authors' recipe is the default


def test_every_recipe_names_its_source_and_the_lora_it_needs():
    for name, recipe in RECIPES.items():
        assert recipe.source, name
        if name != DEFAULT_RECIPE:
            assert recipe.loras and all(hub_id.count("/") == 1 for hub_id, _ in recipe.loras.values()), name
            assert recipe.guidance == 0  # few-step recipes run without classifier-free guidance
        assert recipe.timesteps is None or len(recipe.timesteps) == recipe.steps


def test_scheduler_settings_are_recorded_keyed_and_repeated_by_the_command(tmp_path):
    photo, mask = make_photo(64, 48)
    photo.putalpha(mask)
    photo.save(tmp_path / "a.png")
    common = ["generate", str(tmp_path / "a.png"), "--prompt", "p", "--model", "tiny-inpainting", "--device", "cpu"]
    flags = ["--scheduler", "TCDScheduler", "--scheduler-option", "timestep_spacing=trailing"]
    flags += ["--scheduler-option", "rescale_betas_zero_snr=false", "--timesteps", "999,499", "--eta", "0.3"]
    assert main([*common, *flags, "--output-dir", str(tmp_path / "out")]) == 0
    (record,) = [json.loads(line) for line in (tmp_path / "out/manifest.jsonl").read_text().splitlines()]
    assert record["scheduler"] == "TCDScheduler" and record["timesteps"] == [999, 499] and record["eta"] == 0.3
    assert record["scheduler_options"] == {"timestep_spacing": "trailing", "rescale_betas_zero_snr": False}
    assert record["num_inference_steps"] == 2
    command = record["command"]
    assert "--scheduler-option timestep_spacing=trailing --scheduler-option rescale_betas_zero_snr=false" in command
    assert "--timesteps 999,499" in command and "--eta 0.3" in command
    # the recorded command remakes the same key (so --skip-existing keeps the image)
    again = parse(*shlex.split(command)[3:])
    again.check()
    from photobg.manifest import settings_key

    class Files:
        def sha256(self, path):
            return "x"

    first = parse("--model", "tiny-inpainting", *flags)
    first.check()
    assert settings_key(again, "p", False, Files()) == settings_key(first, "p", False, Files())
    first.scheduler_options["timestep_spacing"] = "leading"
    assert settings_key(again, "p", False, Files()) != settings_key(first, "p", False, Files())


# ----------------------------------------------------------------------------- the Python API takes a recipe

LORA_WARNING = (
    "recipe tcd expects the LoRA pytorch_lora_weights.safetensors of h1t/TCD-SD21-base-LoRA, and none is given"
)


def test_the_api_takes_a_recipe_by_name_as_the_command_line_does(tmp_path, inpaint_model):
    photo, mask = make_photo(64, 48)
    photo.putalpha(mask)
    photo.save(tmp_path / "a.png")
    common = ["generate", str(tmp_path / "a.png"), "--prompt", PROMPT, "--model", str(inpaint_model), "--device", "cpu"]
    assert main([*common, "--recipe", "tcd", "--output-dir", str(tmp_path / "cli")]) == 0
    expected = np.asarray(Image.open(output_image(tmp_path / "cli", "a")))
    with pytest.warns(UserWarning, match=f"^{LORA_WARNING} \\(loras\\)"):
        (image,) = photobg.generate(tmp_path / "a.png", PROMPT, model=inpaint_model, device="cpu", recipe="tcd", seed=0)
    np.testing.assert_array_equal(np.asarray(image), expected)
    # an explicit argument overrides the recipe's value, as a flag does: steps counted by the UNet's calls (guidance
    # 0: one a step), the recipe's scheduler and eta kept
    with pytest.warns(UserWarning, match=LORA_WARNING):
        generator_ = BackgroundGenerator(inpaint_model, device="cpu", recipe="tcd")
    assert type(generator_.pipe.scheduler).__name__ == "TCDScheduler"
    calls = []
    handle = generator_.pipe.unet.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    try:
        generator_(tmp_path / "a.png", PROMPT, seed=0, num_inference_steps=2)
        assert calls == [1, 1]
        calls.clear()
        generator_(tmp_path / "a.png", PROMPT, seed=0, guidance_scale=7.5)
        assert calls == [2] * 4
    finally:
        handle.remove()


def test_the_api_refuses_a_recipe_as_the_command_line_does(inpaint_model):
    message = (
        "^recipe sdxl-lightning-4 is made for sdxl-inpainting and sdxl-base, "
        f"but model {re.escape(str(inpaint_model))} is sd2-inpainting\\.$"
    )
    with pytest.raises(ValueError, match=message):  # before loading: the configs alone are read
        BackgroundGenerator(inpaint_model, device="cpu", recipe="sdxl-lightning-4")
    with pytest.raises(ValueError, match="^recipe 'lightning' is not one of: authors, lcm-lora, tcd, "):
        BackgroundGenerator(inpaint_model, device="cpu", recipe="lightning")
    # a scheduler given overrides the recipe's, whose eta it cannot take
    with pytest.raises(ValueError, match="^eta: UniPCMultistepScheduler's step takes no eta"):
        BackgroundGenerator(inpaint_model, device="cpu", recipe="tcd", scheduler="UniPCMultistepScheduler")


# ----------------------------------------------------------------------------- each recipe is diffusers' sampling


def seed_inputs(size=(64, 48)):
    photo, object_mask = make_photo(*size)
    inpaint = Image.fromarray(np.where(np.asarray(object_mask) >= 128, 0, 255).astype(np.uint8))
    return dict(image=photo, mask_image=inpaint, width=size[0], height=size[1])


def diffusers_inpainting(ours):
    """diffusers' own inpainting pipeline over our pipeline's modules."""
    if "text_encoder_2" in ours.components:
        parts = ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "scheduler")
        theirs = StableDiffusionXLInpaintPipeline(
            **{name: ours.components[name] for name in parts},
            requires_aesthetics_score=ours.config.requires_aesthetics_score,
            force_zeros_for_empty_prompt=ours.config.force_zeros_for_empty_prompt,
        )
    else:
        parts = ("vae", "text_encoder", "tokenizer", "unet", "scheduler")
        theirs = StableDiffusionInpaintPipeline(
            **{name: ours.components[name] for name in parts},
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    theirs.set_progress_bar_config(disable=True)
    return theirs


@pytest.fixture(scope="module")
def tiny_inpainting(inpaint_model, sdxl_models):
    """{backbone name: our loaded pipeline} for the tiny SD2- and SDXL-inpainting models."""
    pipes = {}
    for folder in (inpaint_model, sdxl_models["inpaint"]):
        pipe = load_pipeline(folder, device="cpu")
        pipe.set_progress_bar_config(disable=True)
        pipes[detect_backbone(folder).name] = pipe
    return pipes


MADE_FOR = [
    (backbone, name)
    for name, recipe in RECIPES.items()
    for backbone in ("sd2-inpainting", "sdxl-inpainting")
    if recipe.backbones is None or backbone in recipe.backbones
]


@pytest.mark.parametrize(("backbone", "name"), MADE_FOR)
def test_each_recipe_equals_diffusers_inpainting_at_scale_zero(tiny_inpainting, backbone, name):
    recipe = RECIPES[name]
    ours = tiny_inpainting[backbone]
    config = ours.scheduler.config
    options = scheduler_options_of(recipe.scheduler, recipe.options, config)
    ours.scheduler = make_scheduler(recipe.scheduler, config, options)
    theirs = diffusers_inpainting(ours)
    theirs.scheduler = make_scheduler(recipe.scheduler, config, options)
    assert type(theirs.scheduler).__name__ == (recipe.scheduler or "UniPCMultistepScheduler")
    sampling = dict(num_inference_steps=recipe.steps, guidance_scale=recipe.guidance, strength=1.0)
    if recipe.timesteps is not None:
        sampling["timesteps"] = recipe.timesteps
    if recipe.eta is not None:
        sampling["eta"] = recipe.eta
    inputs = dict(seed_inputs(), **sampling, output_type="np")
    expected = theirs(PROMPT, **inputs, generator=generator(0)).images
    got = ours(PROMPT, **inputs, controlnet_conditioning_scale=0.0, generator=generator(0)).images
    assert np.isfinite(got).all() and got.std() > 0.01  # an image, not NaN or a flat field
    np.testing.assert_allclose(got, expected, atol=1e-5)
    if recipe.timesteps is not None:
        assert ours.scheduler.timesteps.tolist() == recipe.timesteps


# ----------------------------------------------------------------------------- guidance off: one batch a step


@pytest.mark.parametrize("backbone", ["sd2-inpainting", "sdxl-inpainting"])
def test_guidance_off_runs_the_unet_and_controlnet_once_a_step_on_the_undoubled_batch(tiny_inpainting, backbone):
    pipe = tiny_inpainting[backbone]
    pipe.scheduler = make_scheduler(None, pipe.scheduler.config)
    batches = {"unet": [], "controlnet": []}
    handles = [
        getattr(pipe, name).register_forward_pre_hook(lambda module, args, calls=calls: calls.append(args[0].shape[0]))
        for name, calls in batches.items()
    ]
    try:
        for guidance, rows in ((0.0, 1), (1.0, 1), (7.5, 2)):
            for calls in batches.values():
                calls.clear()
            pipe(PROMPT, **seed_inputs(), num_inference_steps=3, guidance_scale=guidance, output_type="latent")
            assert batches == {"unet": [rows] * 3, "controlnet": [rows] * 3}, guidance
    finally:
        for handle in handles:
            handle.remove()
