"""SDXL training in the one loop, on the tiny SDXL models: the loss falls, resume is exact, the seed's command trains
on two processes a 9-channel SDXL ControlNet that `photobg generate --controlnet` uses, the base variant's script
likewise (cached latents, gradient checkpointing, bf16), and a compact ControlNet trains and loads. That training
builds inference's ControlNet inputs and added conditions is `test_train.py`'s
`test_training_and_inference_build_identical_controlnet_inputs` (every backbone)."""

import ast
import dataclasses
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from accelerate.state import AcceleratorState
from conftest import make_photo
from diffusers import ControlNetModel
from PIL import Image
from test_train import (  # noqa: F401  (an autouse fixture: one thread, fresh accelerate state)
    ROOT,
    _one_thread_fresh_accelerate,
    assert_same_weights,
    config,
    controlnet_weights,
    script_env,
)

from photobg.cli import main as photobg_main
from photobg.controlnets import make_controlnet
from photobg.data import write_synthetic_dataset
from photobg.models import load_pipeline
from photobg.train import cli_main, main


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """8 drawn shapes at 40x32 (non-square: crops and time ids differ between examples)."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("data") / "shapes", 8, (40, 32), seed=0)


@pytest.fixture(scope="module")
def overfit(sdxl_models, tmp_path_factory):
    """One SDXL-inpainting run on 4 examples (one batch): random 32 px crops of 40 px photos, flips, a quarter of
    the captions dropped; checkpoint at step 40 of 60. Returns (result, config)."""
    data = write_synthetic_dataset(tmp_path_factory.mktemp("data") / "four", 4, (40, 40), seed=1)
    settings = sdxl_config(sdxl_models["inpaint"], data, tmp_path_factory.mktemp("runs") / "overfit")
    settings.max_train_steps, settings.checkpointing_steps = 60, 40
    settings.random_flip, settings.proportion_empty_prompts = True, 0.25
    result = main(settings)
    AcceleratorState._reset_state(reset_partial_state=True)
    return result, settings


def sdxl_config(model, data, output_dir, **overrides):
    """`test_train.config` on an SDXL base model, 32 px crops of photos resized to a 40 px short side."""
    return config(output_dir, data, pretrained_model_name_or_path=str(model), **{"resize_short_side": 40, **overrides})


def flags(model, data, output_dir, *extra):
    values = dict(
        pretrained_model_name_or_path=model, train_data_dir=data, output_dir=output_dir, resolution=32, seed=0
    )
    values.update(train_batch_size=2, max_train_steps=2, report_to="none")
    return [str(x) for key, value in values.items() for x in (f"--{key}", value)] + list(extra)


def generate_with(model, controlnet, tmp_path):
    """`photobg generate --model MODEL --controlnet CONTROLNET` on a photo; returns (output, photo, mask)."""
    photo, mask = make_photo(64, 48)
    photo.save(tmp_path / "photo.png")
    mask.save(tmp_path / "mask.png")
    args = [tmp_path / "photo.png", "--mask", tmp_path / "mask.png", "--prompt", "a cat", "--model", model]
    args += ["--controlnet", controlnet, "--output-dir", tmp_path / "generated", "--steps", "2", "--device", "cpu"]
    assert photobg_main(["generate", *map(str, args)]) == 0
    [record] = [json.loads(line) for line in (tmp_path / "generated" / "manifest.jsonl").read_text().splitlines()]
    with Image.open(record["output"]) as output:
        return output.convert("RGB"), photo, mask


def assert_object_kept(output, photo, mask):
    solid = np.asarray(mask) == 255
    assert output.size == photo.size and solid.any()
    np.testing.assert_array_equal(np.asarray(output)[solid], np.asarray(photo)[solid])


def test_the_loss_falls_when_overfitting_four_examples(overfit):
    result, _ = overfit
    losses = np.array(result.losses)
    assert len(losses) == 60 and np.isfinite(losses).all()
    assert losses[-20:].mean() < 0.95 * losses[:20].mean(), (losses[:20].mean(), losses[-20:].mean())


def test_resume_equals_the_uninterrupted_run(overfit, tmp_path):
    straight, settings = overfit
    split = tmp_path / "split"
    shutil.copytree(settings.output_dir, split)
    resumed = main(dataclasses.replace(settings, output_dir=str(split), resume_from_checkpoint="checkpoint-40"))
    assert resumed.step == 60 and len(resumed.losses) == 20
    np.testing.assert_allclose(resumed.losses, straight.losses[40:], rtol=1e-5)
    assert_same_weights(controlnet_weights(split), controlnet_weights(settings.output_dir))


def test_the_seed_command_trains_on_two_processes_an_sdxl_controlnet_that_generate_uses(sdxl_models, shapes, tmp_path):
    out = tmp_path / "out"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    command = [*launch, str(ROOT / "train_controlnet_inpaint.py"), *flags(sdxl_models["inpaint"], shapes, out)]
    env = {**script_env(), "ACCELERATE_USE_CPU": "true"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]

    starts = dict(re.findall(r"Process (\d) starts with examples (\[.*?\])", result.stderr))
    batches = [set(ast.literal_eval(starts[k])) for k in ("0", "1")]
    assert len(batches[0]) == len(batches[1]) == 2 and not batches[0] & batches[1]
    resolved = json.loads((out / "training_config.json").read_text())
    assert resolved["num_processes"] == 2 and resolved["total_batch_size"] == 4
    trained = ControlNetModel.from_pretrained(out)
    assert trained.config.in_channels == 9 and trained.config.addition_embed_type == "text_time"

    output, photo, mask = generate_with(sdxl_models["inpaint"], out, tmp_path)
    assert_object_kept(output, photo, mask)
    pipe = load_pipeline(sdxl_models["inpaint"], controlnet=out, device="cpu")  # what generate loaded
    assert_same_weights(pipe.controlnet.state_dict(), controlnet_weights(out))


def test_the_base_variant_script_trains_an_sdxl_base_controlnet_with_cached_latents_in_bf16(
    sdxl_models, shapes, tmp_path
):
    out = tmp_path / "out"
    extra = [
        "--cache_latents",
        "--proportion_empty_prompts",
        "0",
        "--gradient_checkpointing",
        "--mixed_precision",
        "bf16",
    ]
    assert cli_main("base", flags(sdxl_models["base"], shapes, out, *extra)) == 0
    resolved = json.loads((out / "training_config.json").read_text())
    assert resolved["controlnet_variant"] == "base" and resolved["mixed_precision"] == "bf16"
    assert list((out / "latent_cache").rglob("part-0-of-1-pooled_prompt_embeds.npy"))  # SDXL's pooled, cached
    trained = ControlNetModel.from_pretrained(out)
    assert trained.config.in_channels == 4 and trained.config.addition_embed_type == "text_time"
    output, photo, mask = generate_with(sdxl_models["base"], out, tmp_path)
    assert_object_kept(output, photo, mask)


def test_a_compact_controlnet_trains_and_loads(sdxl_models, shapes, tmp_path):
    out = tmp_path / "out"
    main(sdxl_config(sdxl_models["inpaint"], shapes, out, max_train_steps=2, controlnet_size="small"))
    compact = ControlNetModel.from_pretrained(out)  # plain diffusers: config.json records the architecture
    pipe = load_pipeline(sdxl_models["inpaint"], controlnet=out, device="cpu")
    full = make_controlnet(pipe.unet, "full")
    assert compact.num_parameters() < full.num_parameters()
    assert compact.config.transformer_layers_per_block == [0] * len(full.config.down_block_types)
    assert_same_weights(pipe.controlnet.state_dict(), controlnet_weights(out))
    complete = load_pipeline(out / "pipeline", device="cpu")  # the complete model the run wrote
    assert complete.controlnet.config.down_block_types == compact.config.down_block_types
    pipe.set_progress_bar_config(disable=True)
    photo, mask = make_photo(64, 48)
    output = pipe("a cat", image=photo, object_mask=mask, num_inference_steps=2).images[0]
    assert_object_kept(output.convert("RGB"), photo, mask)
