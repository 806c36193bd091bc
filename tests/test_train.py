"""Training: both variants learn, training builds the pipeline's ControlNet inputs, resume is exact, a killed run
resumes, two processes share the work, bad flags are named. Tiny models, CPU, synthetic shapes."""

import ast
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from conftest import generator, make_photo
from diffusers import ControlNetModel
from safetensors.torch import load_file
from train_recorder import read_records, record_into

from photobg import cli
from photobg.checkpoints import list_checkpoints
from photobg.data import TrainExamples, write_synthetic_dataset
from photobg.models import load_pipeline
from photobg.train import Models, cli_main, main, training_loss
from photobg.train_config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"inpaint": "tiny-inpainting", "base": "tiny-base"}


@pytest.fixture(autouse=True)
def _one_thread_fresh_accelerate():
    # The tiny models run fastest on one thread (and the CI machine is shared); accelerate keeps process-wide
    # state that a second in-process run must not inherit.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """16 drawn shapes at 40x32 (non-square: the crop matters), in the training-set format, 2 shards."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("data") / "shapes", 16, (40, 32), seed=0, shards=2)


@pytest.fixture(scope="module")
def fixed_batch(tmp_path_factory):
    """4 examples at exactly the training size: with batch size 4 every step sees the same batch."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("data") / "fixed", 4, (32, 32), seed=1)


def config(output_dir, data, variant="inpaint", **overrides):
    values = dict(
        controlnet_variant=variant,
        pretrained_model_name_or_path=MODELS[variant],
        train_data_dir=str(data),
        output_dir=str(output_dir),
        resolution=32,
        train_batch_size=4,
        learning_rate=1e-3,
        lr_warmup_steps=0,
        seed=0,
        report_to="none",
        checkpointing_steps=1000,
    )
    return TrainConfig(**{**values, **overrides})


def validation_settings(folder, **overrides):
    """Validation flags for `config`, with `make_photo`'s photo and mask written to `folder`."""
    photo, object_mask = make_photo(48, 40)
    photo.save(folder / "photo.png")
    object_mask.save(folder / "mask.png")
    values = dict(
        validation_prompt=["a red ellipse"],
        validation_image=[str(folder / "mask.png")],
        validation_inpainting_image=[str(folder / "photo.png")],
        validation_num_inference_steps=2,
    )
    return {**values, **overrides}


def controlnet_weights(folder):
    return load_file(Path(folder, "diffusion_pytorch_model.safetensors"))


def assert_same_weights(a, b, atol=1e-6):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=1e-5, msg=key)


# ----------------------------------------------------------------------------- learning


@pytest.mark.parametrize("variant", ["inpaint", "base"])
def test_loss_falls_and_the_output_generates(variant, fixed_batch, tmp_path):
    photo, object_mask = make_photo(48, 40)
    validation = validation_settings(tmp_path, num_validation_images=2, validation_steps=60, report_to="tensorboard")
    # The crop spans the whole (32 px) photo, so every step sees the same batch.
    settings = dict(max_train_steps=60, resize_short_side=32)
    result = main(config(tmp_path / "out", fixed_batch, variant, **settings, **validation))

    losses = np.array(result.losses)
    assert len(losses) == 60 and np.isfinite(losses).all()
    assert losses[-20:].mean() < 0.95 * losses[:20].mean(), (losses[:20].mean(), losses[-20:].mean())
    out = tmp_path / "out"
    ControlNetModel.from_pretrained(out)  # the ControlNet in diffusers format
    resolved = json.loads((out / "training_config.json").read_text())
    assert resolved["controlnet_variant"] == variant and resolved["max_train_steps"] == 60
    assert (out / "pipeline" / "training_config.json").exists()
    grid = out / "validation" / "step-000060.png"
    assert grid.exists() and len(list((out / "logs" / "train_controlnet").glob("events.out.tfevents*"))) == 1

    pipe = load_pipeline(out / "pipeline", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    assert_same_weights(pipe.controlnet.state_dict(), controlnet_weights(out))
    image = pipe("a red ellipse", image=photo, object_mask=object_mask, num_inference_steps=2, output_type="np")
    generated = image.images[0]
    assert generated.shape == (40, 48, 3) and np.isfinite(generated).all()
    inside = np.asarray(object_mask) == 255
    np.testing.assert_allclose(generated[inside], np.asarray(photo)[inside] / 255, atol=1e-6)  # object kept


# ----------------------------------------------------------------------------- training == inference


@pytest.mark.parametrize("backbone", ["sd2-inpainting", "sd2-base", "sdxl-inpainting", "sdxl-base"])
def test_training_and_inference_build_identical_controlnet_inputs(
    backbone, fixed_batch, inpaint_model, base_variant_model, sdxl_models, monkeypatch
):
    import datasets
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    from photobg.data import Collate, load_train_dataset, read_object_mask

    # Compare the conditioning, not the VAE's sampling: both sides take the latent distribution's mean.
    monkeypatch.setattr(DiagonalGaussianDistribution, "sample", lambda self, generator=None: self.mean)
    folders = {"sd2-inpainting": inpaint_model, "sd2-base": base_variant_model}
    folders.update({"sdxl-inpainting": sdxl_models["inpaint"], "sdxl-base": sdxl_models["base"]})
    pipe = load_pipeline(folders[backbone], device="cpu")
    pipe.set_progress_bar_config(disable=True)
    models = Models.from_pipeline(pipe)
    sdxl = backbone.startswith("sdxl")

    dataset = load_train_dataset(train_data_dir=str(fixed_batch))
    example = TrainExamples(dataset, resolution=32)[0]
    row = datasets.load_dataset(str(fixed_batch))["train"][0]
    photo, object_mask, caption = row["image"], read_object_mask(row["conditioning_image"]), row["text"]
    # SDXL's time ids: an example cropped at (top 4, left 8) from a 64x48 photo, and the same at inference.
    crop = torch.tensor([[64, 48, 4, 8]])
    micro = dict(original_size=(64, 48), crops_coords_top_left=(4, 8)) if sdxl else {}

    calls = []
    pipe.controlnet.register_forward_pre_hook(lambda m, args, kwargs: calls.append((args, kwargs)), with_kwargs=True)
    for guidance in (1.0, 2.0):  # without CFG: the caption's conditioning; with: the unconditional half too
        pipe(
            caption,
            image=photo,
            object_mask=object_mask,
            strength=0.5,
            num_inference_steps=4,
            guidance_scale=guidance,
            generator=generator(7),
            output_type="latent",
            **micro,
        )
    (sample, t), at_inference = calls[0]
    unconditional = calls[2][1]  # the first step with CFG: (negative=None's form, caption)
    noise = torch.randn(sample[:, :4].shape, generator=generator(7))  # the pipeline's first draw (the VAE draws none)
    batch = Collate()([example])
    training_loss(models, pipe.controlnet, {**batch, "crop": crop}, None, noise=noise, timesteps=t.reshape(1))
    (train_sample, train_t), at_training = calls[-1]
    training_loss(
        models, pipe.controlnet, {**batch, "crop": crop, "captions": [""]}, None, noise=noise, timesteps=t.reshape(1)
    )
    at_training_dropped = calls[-1][1]
    # In a batch, each example gets its own conditioning, in its place: (caption, dropped, caption).
    three = Collate()([example] * 3)
    three.update(crop=crop.repeat(3, 1), captions=[caption, "", caption])
    training_loss(models, pipe.controlnet, three, None, noise=noise.repeat(3, 1, 1, 1), timesteps=t.repeat(3))
    at_training_three = calls[-1][1]

    assert sample.shape[1] == (9 if backbone.endswith("inpainting") else 4)
    # Equal up to float rounding in the VAE (the latent-size mask channel is exact).
    torch.testing.assert_close(train_sample, sample, rtol=0, atol=1e-5)
    assert train_t.item() == t.item()
    for key in ("encoder_hidden_states", "controlnet_cond", "added_cond_kwargs"):
        torch.testing.assert_close(at_training[key], at_inference[key], rtol=0, atol=0, msg=key)
    # A dropped caption trains the unconditional input inference uses (SDXL: zeros, force_zeros_for_empty_prompt).
    halves = {"encoder_hidden_states": unconditional["encoder_hidden_states"].chunk(2)[0]}
    if sdxl:
        halves["added_cond_kwargs"] = {k: v.chunk(2)[0] for k, v in unconditional["added_cond_kwargs"].items()}
        assert at_training["added_cond_kwargs"]["time_ids"].tolist() == [[64, 48, 4, 8, 32, 32]]
        assert halves["encoder_hidden_states"].abs().max() == 0
    else:
        assert at_training["added_cond_kwargs"] is None
    for key, value in halves.items():
        torch.testing.assert_close(at_training_dropped[key], value, rtol=0, atol=0, msg=key)
    rows = [at_training, at_training_dropped, at_training]
    for key in ("encoder_hidden_states", "added_cond_kwargs"):
        expected = [row[key] for row in rows]
        if key == "added_cond_kwargs":
            expected = None if not sdxl else {k: torch.cat([e[k] for e in expected]) for k in expected[0]}
        else:
            expected = torch.cat(expected)
        torch.testing.assert_close(at_training_three[key], expected, rtol=0, atol=1e-6, msg=key)
    if backbone.endswith("inpainting"):
        assert torch.equal(train_sample[:, 4], sample[:, 4])
    control = at_training["controlnet_cond"]
    assert control.min() >= 0 and control.max() <= 1 and control.shape == (1, 3, 32, 32)


# ----------------------------------------------------------------------------- checkpoints and resume


def test_resume_is_exact_and_the_checkpoint_limit_is_kept(shapes, tmp_path):
    settings = dict(max_train_steps=8, checkpointing_steps=2, checkpoints_total_limit=2, random_flip=True)
    straight = main(config(tmp_path / "straight", shapes, train_batch_size=3, **settings))
    AcceleratorState._reset_state(reset_partial_state=True)

    first = main(config(tmp_path / "split", shapes, train_batch_size=3, **{**settings, "max_train_steps": 4}))
    AcceleratorState._reset_state(reset_partial_state=True)
    second = main(config(tmp_path / "split", shapes, train_batch_size=3, resume_from_checkpoint="latest", **settings))

    # 16 examples in batches of 3: 6 steps an epoch, so the resumed run starts mid-epoch 0 and crosses into epoch 1.
    assert second.step == 8 and len(second.losses) == 4
    np.testing.assert_allclose(first.losses + second.losses, straight.losses, rtol=1e-5)
    assert_same_weights(controlnet_weights(tmp_path / "split"), controlnet_weights(tmp_path / "straight"))
    for run in ("straight", "split"):
        assert [p.name for p in list_checkpoints(tmp_path / run)] == ["checkpoint-6", "checkpoint-8"]
        assert not list((tmp_path / run).glob(".checkpoint-*"))


def test_cached_latents_train_like_uncached_ones(shapes, tmp_path):
    settings = dict(max_train_steps=4, center_crop=True)
    plain = main(config(tmp_path / "plain", shapes, **settings))
    AcceleratorState._reset_state(reset_partial_state=True)
    cached = main(config(tmp_path / "cached", shapes, cache_latents=True, **settings))
    assert list((tmp_path / "cached" / "latent_cache").rglob("part-0-of-1-latent_params.npy"))
    np.testing.assert_allclose(cached.losses, plain.losses, rtol=1e-5)
    assert_same_weights(controlnet_weights(tmp_path / "cached"), controlnet_weights(tmp_path / "plain"))


def test_a_non_finite_loss_stops_the_run_naming_the_step(shapes, tmp_path, monkeypatch):
    import photobg.train.loop

    calls = []

    def loss_that_explodes(*args, **kwargs):
        loss = training_loss(*args, **kwargs)
        calls.append(1)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(photobg.train.loop, "training_loss", loss_that_explodes)
    with pytest.raises(FloatingPointError, match="at step 3.*checkpoint-2"):
        main(config(tmp_path / "out", shapes, max_train_steps=6, checkpointing_steps=2))
    assert [p.name for p in list_checkpoints(tmp_path / "out")] == ["checkpoint-2"]
    saved = ControlNetModel.from_pretrained(tmp_path / "out" / "checkpoint-2" / "controlnet")
    assert all(torch.isfinite(p).all() for p in saved.parameters())


def script_command(script, output_dir, data, *extra):
    return [
        script,
        "--pretrained_model_name_or_path",
        MODELS["inpaint"] if "inpaint" in script else MODELS["base"],
        "--train_data_dir",
        str(data),
        "--output_dir",
        str(output_dir),
        "--resolution",
        "32",
        "--train_batch_size",
        "2",
        "--seed",
        "0",
        "--report_to",
        "none",
        *extra,
    ]


def script_env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def test_a_killed_run_resumes_from_its_last_complete_checkpoint(shapes, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, *script_command(str(ROOT / "train_controlnet_inpaint.py"), out, shapes)]
    args = ["--max_train_steps", "10000", "--checkpointing_steps", "2"]
    process = subprocess.Popen(command + args, env=script_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while len(list_checkpoints(out)) < 2 and time.time() < deadline and process.poll() is None:
            time.sleep(0.2)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL
    last = list_checkpoints(out)[-1]
    step = int(last.name.split("-")[1])
    (out / f".checkpoint-{step + 2}.tmp" / "controlnet").mkdir(parents=True, exist_ok=True)  # a half-written one

    resumed = subprocess.run(
        command
        + ["--max_train_steps", str(step + 2), "--checkpointing_steps", "2", "--resume_from_checkpoint", "latest"],
        env=script_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resumed from {last} at step {step}" in resumed.stderr
    assert (out / f"checkpoint-{step + 2}").is_dir() and not list(out.glob(".checkpoint-*"))
    state = json.loads((out / f"checkpoint-{step + 2}" / "train_state.json").read_text())
    assert state["step"] == step + 2
    load_pipeline(out / "pipeline", device="cpu")


def test_two_processes_share_the_data_and_only_the_main_one_writes(shapes, tmp_path, monkeypatch):
    out = tmp_path / "out"
    photo, object_mask = make_photo(48, 40)
    photo.save(tmp_path / "photo.png")
    object_mask.save(tmp_path / "mask.png")
    # accelerate's `--cpu` launcher starts one process (several need MPI); `--multi_gpu` starts them with torchrun
    # and ACCELERATE_USE_CPU keeps them on the CPU, talking over gloo.
    launch = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    launch += ["--mixed_precision", "no", "--dynamo_backend", "no"]
    validation = ["--validation_prompt", "a red ellipse", "--validation_image", str(tmp_path / "mask.png")]
    validation += ["--validation_inpainting_image", str(tmp_path / "photo.png"), "--num_validation_images", "1"]
    validation += ["--validation_steps", "4", "--validation_num_inference_steps", "2"]
    # A learning rate that changes every step, read back every step.
    schedule = ["--lr_scheduler", "linear", "--lr_warmup_steps", "1", "--learning_rate", "1e-4", "--logging_steps", "1"]
    steps = ["--max_train_steps", "4", "--checkpointing_steps", "2", *schedule]
    flags = script_command("train_controlnet_inpaint.py", out, shapes, *steps, "--report_to", "tensorboard")[1:]
    # The entry script's `cli_main`, recording each process's batches and learning rates.
    command = [sys.executable, *launch, str(ROOT / "tests" / "train_recorder.py"), str(tmp_path / "two"), "inpaint"]
    env = {**script_env(), "ACCELERATE_USE_CPU": "true"}
    result = subprocess.run(
        command + flags + validation, env=env, capture_output=True, text=True, timeout=400, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-4000:]

    starts = dict(re.findall(r"Process (\d) starts with examples (\[.*?\])", result.stderr))
    assert set(starts) == {"0", "1"}
    first_batches = [set(ast.literal_eval(starts[k])) for k in ("0", "1")]
    assert len(first_batches[0]) == len(first_batches[1]) == 2 and not first_batches[0] & first_batches[1]
    resolved = json.loads((out / "training_config.json").read_text())
    assert resolved["num_processes"] == 2 and resolved["total_batch_size"] == 4
    # One writer: one tracker log, one validation grid; each process only adds its own RNG states to checkpoints.
    assert len(list((out / "logs" / "train_controlnet").glob("events.out.tfevents*"))) == 1
    assert [p.name for p in (out / "validation").iterdir()] == ["step-000004.png"]
    checkpoint = out / "checkpoint-2"
    assert sorted(p.name for p in checkpoint.glob("*_rng_*.pt")) == ["noise_rng_0.pt", "noise_rng_1.pt"]
    pipe = load_pipeline(out / "pipeline", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    assert pipe("a cup", image=photo, object_mask=object_mask, num_inference_steps=2).images[0].size == (48, 40)

    # Resumed from checkpoint-2 on one process with the same total batch (1 x 4 instead of 2 x 2): the same
    # remaining examples at each step and the same learning rates as the uninterrupted two-process run.
    record_into(str(tmp_path / "one"), monkeypatch.setattr)
    resumed = script_command(
        "train_controlnet_inpaint.py", tmp_path / "resumed", shapes, *steps, "--train_batch_size", "4"
    )
    assert cli_main("inpaint", [*resumed[1:], "--resume_from_checkpoint", str(checkpoint)]) == 0
    (batches_0, lrs), (batches_1, _) = (read_records(tmp_path / "two", k) for k in (0, 1))
    one_batches, one_lrs = read_records(tmp_path / "one", 0)
    assert [set(b) for b in one_batches] == [set(batches_0[k]) | set(batches_1[k]) for k in (2, 3)]
    assert one_lrs == {3: lrs[3], 4: lrs[4]} and len(set(lrs.values())) == 4


# ----------------------------------------------------------------------------- entry points and flags


def test_the_seed_scripts_default_to_the_authors_recipe():
    from photobg.train_config import build_parser, config_from_args, short_side

    for variant in ("inpaint", "base"):
        parser = build_parser(variant)
        defaults = config_from_args(parser.parse_args(["--pretrained_model_name_or_path", "x"]), variant)
        assert defaults.proportion_empty_prompts == 0.1  # the method's 10% empty captions
        assert defaults.resolution == 512 and short_side(defaults) == 768  # short side 768, random 512 crop
        flags = ["--pretrained_model_name_or_path", "x", "--resolution", "64"]
        assert short_side(config_from_args(parser.parse_args(flags), variant)) == 96  # 1.5 x the crop
        flags += ["--resize_short_side", "64"]
        assert short_side(config_from_args(parser.parse_args(flags), variant)) == 64


def test_validation_images_use_the_runs_seed_even_when_it_was_drawn(fixed_batch, tmp_path, monkeypatch):
    from photobg.pipeline_controlnet_inpaint import StableDiffusionControlNetInpaintPipeline

    seeds, call = [], StableDiffusionControlNetInpaintPipeline.__call__

    def recording_call(self, *args, generator=None, **kwargs):
        seeds.append(generator.initial_seed())
        return call(self, *args, generator=generator, **kwargs)

    monkeypatch.setattr(StableDiffusionControlNetInpaintPipeline, "__call__", recording_call)
    validation = validation_settings(tmp_path, num_validation_images=1, validation_num_inference_steps=1)
    main(config(tmp_path / "out", fixed_batch, seed=None, max_train_steps=1, **validation))
    drawn = json.loads((tmp_path / "out" / "training_config.json").read_text())["seed"]
    assert seeds == [drawn] and drawn != 0  # not `seed or 0`: no seed and seed 0 no longer give the same images


def test_photobg_train_runs_the_base_variant(shapes, tmp_path):
    argv = [
        "train",
        "--variant",
        "base",
        "--pretrained_model_name_or_path",
        "tiny-base",
        "--train_data_dir",
        str(shapes),
        "--output_dir",
        str(tmp_path / "out"),
        "--resolution",
        "32",
        "--max_train_steps",
        "2",
        "--report_to",
        "none",
        "--seed",
        "0",
    ]
    assert cli.main(argv) == 0
    resolved = json.loads((tmp_path / "out" / "training_config.json").read_text())
    assert resolved["controlnet_variant"] == "base"
    pipe = load_pipeline(tmp_path / "out" / "pipeline", device="cpu")
    assert pipe.unet.config.in_channels == pipe.controlnet.config.in_channels == 4


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--resolution", "30"], "--resolution must be a positive multiple of 8"),
        (["--proportion_empty_prompts", "1.5"], "--proportion_empty_prompts must be in [0, 1]"),
        (["--dataset_name", "x"], "--dataset_name / --train_data_dir: give exactly one"),
        (["--validation_prompt", "a", "b", "--validation_image", "m1", "m2", "m3"], "--validation_prompt: 2 prompts"),
        (["--validation_prompt", "a"], "--validation_prompt and --validation_image go together"),
        (["--checkpoints_total_limit", "0"], "--checkpoints_total_limit must be at least 1"),
        (["--resume_from_checkpoint", "checkpoint-7"], "--resume_from_checkpoint: no checkpoint 'checkpoint-7'"),
        (["--pretrained_model_name_or_path", "tiny-base"], "needs 9; this is a base model for the base variant"),
        (["--pretrained_model_name_or_path", "./no/such/model"], "--pretrained_model_name_or_path: "),
        (["--lr_scheduler", "sawtooth"], "invalid choice: 'sawtooth'"),
    ],
)
def test_bad_flags_are_named_before_anything_loads(flags, message, shapes, tmp_path, capsys):
    argv = [
        "--pretrained_model_name_or_path",
        "tiny-inpainting",
        "--train_data_dir",
        str(shapes),
        "--output_dir",
        str(tmp_path / "out"),
        *flags,
    ]
    with pytest.raises(SystemExit) as exit_info:
        cli_main("inpaint", argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_missing_column_lists_the_columns(shapes, tmp_path):
    with pytest.raises(
        ValueError, match=r"--caption_column 'caption': no such column .* image, conditioning_image, text"
    ):
        main(config(tmp_path / "out", shapes, caption_column="caption", max_train_steps=1))


def test_help_documents_the_diffusers_flags(capsys):
    with pytest.raises(SystemExit):
        cli_main("inpaint", ["--help"])
    text = capsys.readouterr().out
    for flag in (
        "--pretrained_model_name_or_path",
        "--controlnet_model_name_or_path",
        "--variant",
        "--proportion_empty_prompts",
        "--validation_inpainting_image",
        "--cache_latents",
        "--bad_examples",
        "--checkpoints_total_limit",
        "--enable_xformers_memory_efficient_attention",
        "--tracker_project_name",
        "--set_grads_to_none",
    ):
        assert flag in text


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("ddp", "MULTI_GPU"),
        ("deepspeed_zero2", "DEEPSPEED"),
        ("deepspeed_zero2_offload", "DEEPSPEED"),
        ("fsdp", "FSDP"),
    ],
)
def test_the_shipped_accelerate_configs_load(name, kind):
    from accelerate.commands.config.config_args import load_config_from_file

    loaded = load_config_from_file(str(ROOT / "configs" / "accelerate" / f"{name}.yaml"))
    assert loaded.distributed_type == kind and loaded.num_processes == 8
