"""`GenerationSettings`: the one place of generation's options. Its flags make the CLI's parser and the parser
gives back the same settings; the reproduce-command of a record parses back to the settings it was made with;
checks name the flag (the CLI) or the label (the app). No model is loaded here."""

import argparse
import shlex

import pytest

from photobg.api import Job
from photobg.generation.cli import add_arguments
from photobg.manifest import output_record
from photobg.settings import GenerationSettings, SettingsError


def parse(argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return GenerationSettings.from_args(parser.parse_args(argv))


def test_the_cli_defaults_are_the_settings_defaults():
    assert parse(["x.png", "--prompt", "a cup"]) == GenerationSettings()


@pytest.mark.parametrize(
    "canvas, object_source",
    [
        (["--aspect", "4:5", "--object-scale", "0.5", "--position", "top", "--working-size", "256"], "alpha"),
        (["--size", "96x64", "--segmenter", "threshold"], "segmenter:threshold"),
    ],
)
def test_args_to_settings_to_command_to_args_gives_the_same_settings(canvas, object_source):
    argv = ["photo.png", "--prompt", "a cup", "--seed", "7", "--negative-prompt", "blurry", *canvas]
    argv += ["--model", "some/model", "--controlnet", "some/controlnet", "--scheduler", "DDIMScheduler"]
    argv += ["--device", "cpu", "--dtype", "fp32", "--compile", "--vae-tiling", "--vae", "some/vae"]
    argv += ["--controlnet-scale", "0.8", "--steps", "9", "--guidance", "5"]
    argv += ["--scheduler-option", "timestep_spacing=trailing", "--scheduler-option", "clip_sample=false"]
    argv += ["--recipe", "tcd", "--eta", "0.5", "--timesteps", "999,749,499,399,299,199,99,49,9"]
    settings = parse(argv)
    assert (settings.num_inference_steps, settings.guidance_scale, settings.controlnet_conditioning_scale) == (
        9,
        5,
        0.8,
    )
    made = dict(scheduler="DDIMScheduler", device="cpu", dtype="fp32", size=[96, 64], working_size=[96, 64])
    job = Job(0, "a cup", 7)
    record = output_record(settings, job, made, input_file="/photos/photo.png", object_source=object_source)
    command = shlex.split(record["command"])
    assert command[:3] == ["photobg", "generate", "/photos/photo.png"]
    assert parse(command[2:]) == settings


def test_checks_name_the_flag_or_the_apps_label():
    steps = GenerationSettings(num_inference_steps=0)
    with pytest.raises(SettingsError, match=r"^--steps must be at least 1, not 0\.$"):
        steps.check_sampling()
    with pytest.raises(SettingsError, match=r"^Denoising steps must be at least 1, not 0\.$"):
        steps.check_sampling(names="label")
    with pytest.raises(SettingsError, match=r"^Guidance scale must be 0 or at least 1 "):
        GenerationSettings(guidance_scale=0.5).check_sampling(names="label")
    with pytest.raises(SettingsError, match=r"^--negative-prompt works through classifier-free guidance"):
        GenerationSettings(negative_prompt="blurry", guidance_scale=1).check()
