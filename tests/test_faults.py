"""Faults and bad inputs of `photobg generate` and `photobg evaluate` (issue 11): fault -> expected behaviour
-> test. "Stops" means before anything is loaded unless said otherwise; "skipped" means the photo is reported,
the batch goes on and the exit status is 1.

11.1  --skip-existing after a change of prompt, steps, scale, model, photo or mask
      -> the image is made again, the summary counts it; unchanged images are kept untouched
      -> test_skip_existing_keys_each_image_by_its_parameters
11.1  a rerun without --skip-existing  -> exactly one manifest record per image
      -> test_a_rerun_keeps_one_record_per_image
11.2  --guidance < 0 or in (0, 1), NaN or inf anywhere, --controlnet-scale < 0, --seed < 0,
      --negative-prompt without guidance, --steps 0, --working-size 4
      -> stops; the message names the flag and the values it accepts
      -> test_meaningless_values_are_refused_naming_the_flag
11.2  evaluate --guidance -5, a spec's scale=-1  -> stops, naming the flag or the spec
      -> test_meaningless_evaluate_values_are_refused
11.2  the same values through the Python API  -> a ValueError naming the argument
      -> test_the_api_refuses_the_same_values
11.2  --guidance 0 and 1  -> accepted; both mean "no classifier-free guidance", as in diffusers
      -> test_guidance_zero_and_one_mean_off
11.4  one output cannot be written (a folder in its place, no permission, an I/O error), one photo runs out of
      memory, an unexpected error  -> that photo is skipped with the reason, the others are written
      -> test_a_failing_photo_is_skipped_and_the_batch_goes_on
11.4  the output folder vanishes, the disk is full, the device is lost
      -> the batch stops with one line saying why; what was written is complete and recorded
      -> test_failures_that_hit_every_photo_stop_the_batch
11.5  the segmenter is missing and some photos need it
      -> checked once before the batch: a warning, those photos skipped, the cutouts generated
      -> test_missing_segmenter_skips_only_the_photos_that_need_it
11.5  a named segmenter  -> built once for the batch; every photo's record names it
      -> test_a_named_segmenter_is_built_once_and_named_in_every_record
11.5  every photo needs the missing segmenter  -> stops before generating, saying how to give a mask
      -> test_generate.py::test_segmenter_finds_the_object_and_a_missing_one_says_how_to_give_a_mask
11.6  --size / --working-size above the bound (evaluate: --resolution)  -> stops, naming the bound
      -> test_sizes_above_the_bound_stop_before_loading, test_meaningless_evaluate_values_are_refused
11.6  an --aspect that makes one photo's canvas too large  -> refused before the canvas is allocated
      -> test_sizes_above_the_bound_stop_before_loading
11.9  a kill while a PNG is written, between a PNG and its manifest line, a line left twice
      -> no half-written image under an output's name; the rerun with --skip-existing restores one record
         per image from the PNGs' own records and makes nothing again
      -> test_a_kill_between_png_and_manifest_is_repaired_on_resume
11.11 evaluate with a missing model folder, an unknown Hub id as the second model, an unknown scheduler
      -> stops before generating anything, naming the spec; no settings.json is left behind
      -> test_evaluate_checks_every_model_before_generating
11.11 evaluate into a model folder holding only a settings.json  -> taken as empty: the run goes on
      -> test_evaluate_checks_every_model_before_generating
11.12 Ctrl-C during generation (generate, evaluate)
      -> one line with the state of the outputs, exit status 130; the traceback only with --debug
      -> test_ctrl_c_ends_with_one_line_and_a_consistent_folder
19.4  a second run into the same folder with another prompt or setting (with --compare)
      -> its images and grid get other names; the first run's are untouched; the manifest lists both
      -> test_another_prompt_or_setting_keeps_the_earlier_images
19.4  --skip-existing over an image named as before issue 19 (STEM_p0_s0.png) with the same key
      -> kept under its old name, not made again; with another key, the new image is made beside it
      -> test_an_image_named_as_before_is_kept_by_skip_existing
19.4  a prompt given twice  -> made once, with a warning  -> test_a_prompt_given_twice_is_made_once
19.7  the model fails to load  -> no manifest.jsonl is left behind
      -> test_a_model_that_fails_to_load_leaves_no_manifest
19.7  manifest.jsonl is a folder  -> the image is written and counted; the summary says the manifest could not
      be written and why; exit status 1
      -> test_a_manifest_that_cannot_be_written_does_not_count_the_image_as_failed
19.7  a mask of another size (same aspect)  -> one line `warning: the mask ... resized ...`, no source line
      -> test_a_resized_mask_is_one_line_above_the_progress_bar
today unreadable or missing files; CMYK, 16-bit, palette-with-transparency and EXIF-rotated photos; masks of
      another size or aspect; empty or full masks  -> read correctly, or a ValueError naming the file
      -> test_bad_and_unusual_photos, test_generate.py::test_folder_of_every_format_skips_only_the_bad_photos
today same-stem inputs, two masks for one stem, --mask with several photos, no prompt  -> stops, naming them
      -> test_clashes_stop_before_loading
today an output folder that cannot be written  -> stops before loading
      -> test_generate.py::test_unwritable_output_folder_fails_before_loading_anything
19.1  --lora FILE(:SCALE) (or --ip-adapter FILE) with FILE a bare file name in the current folder
      -> loaded (not looked up on the Hub)
      -> test_a_lora_named_by_its_bare_file_name_loads
19.2  --lora of a file that is not a LoRA (not a weights file, a tensor, no LoRA keys)
      -> stops before loading, one line naming --lora and the file; the API raises a ValueError saying the same
      -> test_a_file_that_is_not_a_lora_is_refused_before_loading
19.2  --device foo, --device cuda where torch has no CUDA  -> stops before loading, naming --device (API: ValueError)
      -> test_meaningless_values_are_refused_naming_the_flag, test_an_unavailable_device_is_refused_before_loading
19.2  photobg convert of a missing file, or of a file that is not a state dict  -> one line naming the file
      -> test_convert_of_a_missing_or_unreadable_file_says_so_in_one_line
19.7  --scheduler NotAScheduler  -> stops before loading, naming --scheduler and some valid names
      -> test_meaningless_values_are_refused_naming_the_flag
22.1  --scheduler-option of a key the scheduler lacks (-> the keys it has), of the wrong type, not KEY=VALUE;
      --timesteps with a scheduler that cannot take them, not integers, or not as many as --steps; --eta with a
      scheduler whose step takes none  -> stops before loading, naming the flag (API: a ValueError, the same)
      -> test_meaningless_values_are_refused_naming_the_flag, test_an_unavailable_device_is_refused_before_loading
22.4  --compile where torch cannot compile (Dynamo unsupported, no C++ compiler for CPU, no Triton for CUDA)
      -> stops before loading, naming --compile and what is missing
      -> test_compile_where_torch_cannot_is_refused_before_loading
22.4  --compile  -> the first batch's time (compiling included) is reported once
      -> test_compile_reports_the_first_batchs_time_once
22.2  --recipe on a backbone it was not made for  -> stops before loading, naming the recipe's backbones and the
      model's  -> test_a_recipe_on_another_backbone_is_refused_before_loading;
      evaluate: a spec's recipe=NAME on another backbone -> test_evaluate_checks_every_model_before_generating
22.2  --recipe of a few-step LoRA without --lora  -> one line `warning: --recipe NAME expects the LoRA FILE of HUB_ID
      ...` before loading, naming the LoRA for the model's backbone; none with --lora or a recipe that needs no LoRA
      -> test_a_recipe_without_its_lora_warns_once
22.1  --scheduler-option with a text value the scheduler class does not take (timestep_spacing=bogus,
      prediction_type, algorithm_type, solver_type, beta_schedule)  -> stops before loading, naming the values it
      takes (API: a ValueError, the same)
      -> test_meaningless_values_are_refused_naming_the_flag, test_an_unavailable_device_is_refused_before_loading
"""

import errno
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_photo, output_image
from PIL import Image

from photobg.api import MAX_CANVAS_PIXELS, MAX_WORKING_SIZE, BackgroundGenerator
from photobg.cli import main
from photobg.evaluate import runner
from photobg.generation import plan as generation_plan
from photobg.generation import run as generation_run
from photobg.manifest import save_png

FAST = ["--steps", "1", "--device", "cpu"]


def cutouts(folder, count=3, size=(64, 48)):
    """`count` RGBA cutouts a.png, b.png, ... (alpha = the object) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(count):
        photo, mask = make_photo(*size, seed=k)
        photo.putalpha(mask)
        paths.append(folder / f"{'abcdefgh'[k]}.png")
        photo.save(paths[-1])
    return paths


def generate(*args, model="tiny-inpainting"):
    return main(["generate", *FAST, *map(str, args), "--model", str(model)])


def manifest(folder):
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]


def png_record(path):
    """The record an output carries in its `photobg` PNG text chunk."""
    with Image.open(path) as image:
        return json.loads(image.info["photobg"])


def outputs_of(folder):
    """{file name: (modification time, record)} of the images (not the grids) in `folder`."""
    return {
        p.name: (p.stat().st_mtime_ns, png_record(p)) for p in folder.glob("*.png") if "photobg" in Image.open(p).info
    }


def assert_manifest_matches_pngs(folder):
    """One record per image, each equal to the record inside its PNG."""
    records = manifest(folder)
    pngs = sorted(p.name for p in folder.glob("*.png") if p.is_file() and re.search(r"_s\d+\.png$", p.name))
    assert sorted(r["output"].rsplit("/", 1)[-1] for r in records) == pngs
    for record in records:
        assert png_record(folder / record["output"].rsplit("/", 1)[-1]) == record


# ----------------------------------------------------------------------------- 11.1 keys


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, shared_pipe):
    """Two photos + a mask, generated once: (input folder, output folder)."""
    root = tmp_path_factory.mktemp("first")
    photo, mask = make_photo(64, 48, seed=3)
    (root / "in").mkdir()
    photo.save(root / "in" / "photo.png")
    mask.save(root / "in" / "mask.png")
    mp = pytest.MonkeyPatch()
    mp.setattr(generation_run, "load_generator", lambda args: BackgroundGenerator(pipe=shared_pipe))
    try:
        args = [root / "in" / "photo.png", "--mask", root / "in" / "mask.png", "--prompt", "a cup", "--num-images", 2]
        assert generate(*args, "--output-dir", root / "out") == 0
    finally:
        mp.undo()
    return root


@pytest.mark.parametrize(
    "change",
    [None, "prompt", "steps", "controlnet-scale", "model", "photo", "mask"],
)
def test_skip_existing_keys_each_image_by_its_parameters(first_run, tmp_path, fast, inpaint_model, capsys, change):
    shutil.copytree(first_run, tmp_path / "run")  # copies keep their modification times
    photo, mask, out = tmp_path / "run/in/photo.png", tmp_path / "run/in/mask.png", tmp_path / "run/out"
    before = outputs_of(out)
    args = [photo, "--mask", mask, "--prompt", "a cup", "--num-images", 2, "--output-dir", out, "--skip-existing"]
    if change == "prompt":
        args[args.index("a cup")] = "a mug"
    elif change in ("steps", "controlnet-scale"):
        args += [f"--{change}", "0.5" if change == "controlnet-scale" else "2"]
    # change == "model": the test model's folder instead of its name, i.e. another model as far as names go
    elif change in ("photo", "mask"):
        edited = Image.open({"photo": photo, "mask": mask}[change])
        edited.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save({"photo": photo, "mask": mask}[change])
    capsys.readouterr()
    assert generate(*args, model=inpaint_model if change == "model" else "tiny-inpainting") == 0
    printed = capsys.readouterr().out
    after = outputs_of(out)
    if change is None:
        assert after == before and "2 were already there" in printed.replace("2 of 2", "2")
    elif change in ("photo", "mask"):  # the photo's images keep their names: made again in their place
        assert after.keys() == before.keys() and len(after) == 2
        assert all(after[name][1] != before[name][1] for name in after), "the old image was kept"
        assert "2 there were made with other parameters and generated again" in printed
    else:  # names carry the prompt and settings: the new images are written beside the earlier ones, untouched
        assert {name: after[name] for name in before} == before and len(after) == 4
        assert "2 images written" in printed and "other parameters" not in printed
    assert_manifest_matches_pngs(out)


def test_a_rerun_keeps_one_record_per_image(first_run, tmp_path, fast):
    shutil.copytree(first_run, tmp_path / "run")
    out = tmp_path / "run/out"
    args = [tmp_path / "run/in/photo.png", "--mask", tmp_path / "run/in/mask.png", "--prompt", "a cup"]
    assert generate(*args, "--num-images", 2, "--output-dir", out) == 0
    assert [(r["prompt_index"], r["seed"]) for r in manifest(out)] == [(0, 0), (0, 1)]
    assert_manifest_matches_pngs(out)


# ----------------------------------------------------------------------------- 11.2 values that mean nothing


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--guidance", "-5"], "--guidance must be 0 or at least 1"),
        (["--guidance", "0.5"], "--guidance must be 0 or at least 1"),
        (["--guidance", "nan"], "--guidance must be 0 or at least 1.*not nan"),
        (["--controlnet-scale", "-1"], "--controlnet-scale must be at least 0"),
        (["--controlnet-scale", "inf"], "--controlnet-scale must be at least 0"),
        (["--seed", "-1"], "--seed must be at least 0"),
        (["--seed", str(2**64)], "--seed plus --num-images must stay below"),
        (["--negative-prompt", "blur", "--guidance", "1"], "--negative-prompt .* needs --guidance above 1"),
        (["--steps", "0"], "--steps must be at least 1"),
        (["--working-size", "4"], "--working-size must be between 8 and"),
        (["--object-scale", "nan"], "--object-scale"),  # works today
        (["--num-images", "0"], "--num-images"),  # works today
        (["--device", "foo"], "^--device: Device 'foo' is not a torch device: expected cpu, cuda, mps"),
        (["--scheduler", "NotAScheduler"], "^--scheduler: Unknown scheduler 'NotAScheduler'.*e.g. DDIMScheduler"),
        (
            ["--scheduler-option", "nonsense=1"],
            "^--scheduler-option: UniPCMultistepScheduler has no option 'nonsense'; its options are: "
            "num_train_timesteps, .*solver_order, ",
        ),
        (
            ["--scheduler", "LCMScheduler", "--scheduler-option", "original_inference_steps=many"],
            "^--scheduler-option: original_inference_steps=many: LCMScheduler's original_inference_steps takes an "
            "integer \\(default 50\\)",
        ),
        (["--scheduler-option", "timestep_spacing"], "^--scheduler-option: 'timestep_spacing' is not KEY=VALUE"),
        (
            ["--timesteps", "999,499"],
            "^--timesteps: UniPCMultistepScheduler takes no fixed timesteps .*e.g. --scheduler LCMScheduler",
        ),
        (["--scheduler", "LCMScheduler", "--timesteps", "999,x"], "^--timesteps '999,x' is not a comma-separated"),
        (["--scheduler", "LCMScheduler", "--timesteps", "499,999"], "^--timesteps: \\[499, 999\\] must be distinct"),
        (
            ["--scheduler", "LCMScheduler", "--timesteps", "999,499", "--steps", "4"],
            "^--steps 4 does not match --timesteps \\(2 timesteps\\)",
        ),
        (["--eta", "0.3"], "^--eta: UniPCMultistepScheduler's step takes no eta"),
        (
            ["--scheduler-option", "timestep_spacing=bogus"],
            "^--scheduler-option: timestep_spacing=bogus: UniPCMultistepScheduler's timestep_spacing takes one of "
            "linspace, leading, trailing \\(default 'linspace'\\)\\.$",
        ),
        (
            ["--scheduler", "LCMScheduler", "--scheduler-option", "timestep_spacing=Trailing"],
            "^--scheduler-option: timestep_spacing=Trailing: LCMScheduler's timestep_spacing takes one of linspace, "
            "leading, trailing",
        ),
        (
            ["--scheduler", "EulerDiscreteScheduler", "--scheduler-option", "prediction_type=v-prediction"],
            "^--scheduler-option: prediction_type=v-prediction: EulerDiscreteScheduler's prediction_type takes one of "
            "epsilon, sample, v_prediction",
        ),
        (
            ["--scheduler", "DPMSolverMultistepScheduler", "--scheduler-option", "algorithm_type=dpm++"],
            "^--scheduler-option: algorithm_type=dpm\\+\\+: DPMSolverMultistepScheduler's algorithm_type takes one "
            "of dpmsolver, dpmsolver\\+\\+, sde-dpmsolver, sde-dpmsolver\\+\\+",
        ),
        (
            ["--scheduler-option", "solver_type=midpoint"],
            "^--scheduler-option: solver_type=midpoint: UniPCMultistepScheduler's solver_type takes one of bh1, bh2",
        ),
        (
            ["--scheduler", "DDIMScheduler", "--scheduler-option", "beta_schedule=cosine"],
            "^--scheduler-option: beta_schedule=cosine: DDIMScheduler's beta_schedule takes one of linear, "
            "scaled_linear, squaredcos_cap_v2",
        ),
    ],
)
def test_meaningless_values_are_refused_naming_the_flag(tmp_path, extra, message):
    (path,) = cutouts(tmp_path / "in", 1)
    with pytest.raises(SystemExit, match=message):  # "nowhere/none" would fail to load: nothing loads first
        main(["generate", str(path), "--prompt", "p", *extra, "--model", "nowhere/none"])


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        ("dynamo", "^--compile: torch .* cannot compile on this Python \\(Dynamo is not supported\\)"),
        ("compiler", "^--compile: torch compiles CPU code with a C\\+\\+ compiler, and none was found"),
    ],
)
def test_compile_where_torch_cannot_is_refused_before_loading(tmp_path, monkeypatch, broken, message):
    import shutil

    (path,) = cutouts(tmp_path / "in", 1)
    if broken == "dynamo":
        monkeypatch.setattr(torch._dynamo, "is_dynamo_supported", lambda: False)
    else:
        monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(SystemExit, match=message):  # "nowhere/none" cannot load: the check comes first
        main(["generate", str(path), "--prompt", "p", "--compile", "--device", "cpu", "--model", "nowhere/none"])


def test_compile_reports_the_first_batchs_time_once(tmp_path, fast, capsys):
    paths = cutouts(tmp_path / "in", 2)
    assert generate(*paths, "--prompt", "p", "--compile", "--output-dir", tmp_path / "out") == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("--compile:")]
    assert len(lines) == 1 and re.match(r"--compile: the first batch took \d+\.\d s, compiling included", lines[0])


@pytest.mark.parametrize(
    ("model", "recipe", "message"),
    [
        ("tiny-inpainting", "sdxl-lightning-4", "is made for sdxl-inpainting and sdxl-base, but --model .* is sd2-"),
        ("tiny-sdxl-base", "tcd", None),  # made for both families
        ("tiny-base", "dmd2-4", "is made for sdxl-inpainting and sdxl-base, but --model .* is sd2-base"),
    ],
)
def test_a_recipe_on_another_backbone_is_refused_before_loading(tmp_path, monkeypatch, model, recipe, message):
    (path,) = cutouts(tmp_path / "in", 1)
    monkeypatch.setattr(generation_run, "load_generator", lambda settings: pytest.fail("the model was loaded"))
    args = ["generate", str(path), "--prompt", "p", "--recipe", recipe, "--model", model]
    args += ["--output-dir", str(tmp_path / "out")]
    if message is None:
        with pytest.raises(pytest.fail.Exception, match="the model was loaded"):
            main(args)
    else:
        with pytest.raises(SystemExit, match=f"^--recipe {recipe} {message}"):
            main(args)


@pytest.mark.parametrize(
    ("extra", "warned"),
    [
        (["--recipe", "tcd"], "pytorch_lora_weights.safetensors of h1t/TCD-SD21-base-LoRA"),
        (["--recipe", "tcd", "--lora", "LORA"], None),
        (["--recipe", "authors"], None),  # needs no LoRA
        ([], None),
    ],
)
def test_a_recipe_without_its_lora_warns_once(tmp_path, fast, shared_pipe, capsys, extra, warned):
    from test_lora_vae_ipadapter import write_lora

    (path,) = cutouts(tmp_path / "in", 1)
    lora = write_lora(tmp_path / "lora", shared_pipe)
    extra = [str(lora) if arg == "LORA" else arg for arg in extra]
    assert generate(path, "--prompt", "p", *extra, "--output-dir", tmp_path / "out") == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    if warned is None:
        assert lines == []
    else:
        assert lines == [
            f"warning: --recipe tcd expects the LoRA {warned}, and none is given (--lora): without it (or the LoRA "
            "fused into the model), its 4 steps make a poor image; docs/recipes.md lists each recipe's LoRA."
        ]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--guidance", "-5"], "--guidance must be 0 or at least 1"),
        (["--model", "tiny-inpainting@name=Ours,scale=-1"], "scale must be at least 0"),
        (["--resolution", str(MAX_WORKING_SIZE + 8)], "--resolution must be between 8 and"),
    ],
)
def test_meaningless_evaluate_values_are_refused(tmp_path, extra, message):
    cutouts(tmp_path / "bench" / "images", 1)
    args = ["evaluate", "--data", str(tmp_path / "bench"), "--output-dir", str(tmp_path / "eval"), "--steps", "1"]
    args += ["--segmenter", "threshold", "--metrics", "expansion", *extra]
    if "--model" not in extra:
        args += ["--model", "tiny-inpainting"]
    with pytest.raises(SystemExit, match=message):
        main(args)
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"guidance_scale": -5}, "guidance_scale must be 0 or at least 1"),
        ({"controlnet_conditioning_scale": -1}, "controlnet_conditioning_scale must be at least 0"),
        ({"num_inference_steps": 0}, "num_inference_steps must be at least 1"),
        ({"working_size": MAX_WORKING_SIZE * 2}, "working_size must be between 8 and"),
    ],
)
def test_the_api_refuses_the_same_values(value, message):
    with pytest.raises(ValueError, match=message):  # before anything runs: no model is needed
        BackgroundGenerator(pipe=object()).run(None, [], **value)


def test_guidance_zero_and_one_mean_off(tmp_path, fast):
    (path,) = cutouts(tmp_path / "in", 1)
    for guidance in ("0", "1"):
        assert generate(path, "--prompt", "p", "--guidance", guidance, "--output-dir", tmp_path / guidance) == 0
    zero, one = (np.asarray(Image.open(output_image(tmp_path / g, "a"))) for g in ("0", "1"))
    np.testing.assert_array_equal(zero, one)  # as diffusers: guidance is applied only above 1


# ----------------------------------------------------------------------------- 11.4 one photo, or every photo


@pytest.mark.parametrize(
    "fault",
    [
        "folder-in-the-way",
        MemoryError(),
        torch.OutOfMemoryError("CUDA out of memory"),
        PermissionError(errno.EACCES, "Permission denied"),
        OSError(errno.EIO, "Input/output error"),
        RuntimeError("an unexpected error"),
    ],
    ids=["IsADirectoryError", "MemoryError", "OutOfMemoryError", "PermissionError", "EIO", "RuntimeError"],
)
def test_a_failing_photo_is_skipped_and_the_batch_goes_on(tmp_path, fast, monkeypatch, capsys, fault):
    paths = cutouts(tmp_path / "in", 3)
    out = tmp_path / "out"
    save_png = generation_run.save_png

    def failing_save(image, path, chunks=None):
        if path.name.startswith("b_") and fault == "folder-in-the-way":
            path.mkdir()  # saving b's image fails with IsADirectoryError
        elif path.name.startswith("b_"):
            raise fault
        save_png(image, path, chunks)

    monkeypatch.setattr(generation_run, "save_png", failing_save)
    assert generate(*paths, "--prompt", "p", "--output-dir", out) == 1
    printed = capsys.readouterr().out
    assert "1 of 3 photos failed" in printed and f"{paths[1]}: " in printed
    assert sorted(p.name[:2] for p in out.glob("*.png") if p.is_file()) == ["a_", "c_"]
    assert_manifest_matches_pngs(out)


@pytest.mark.parametrize("fault", ["folder-gone", "disk-full", "device-lost"])
def test_failures_that_hit_every_photo_stop_the_batch(tmp_path, fast, monkeypatch, capsys, fault):
    paths = cutouts(tmp_path / "in", 3)
    out = tmp_path / "out"
    calls = []
    save_png, run = generation_run.save_png, BackgroundGenerator.run

    def save(image, path, chunks=None):
        calls.append(path.name)
        if path.name.startswith("b_") and fault == "folder-gone":
            shutil.rmtree(out)
        if path.name.startswith("b_") and fault == "disk-full":
            raise OSError(errno.ENOSPC, "No space left on device")
        save_png(image, path, chunks)

    def generate_images(self, prepared, jobs, **kwargs):
        if prepared.name.endswith("b.png") and fault == "device-lost":
            raise RuntimeError("CUDA error: unspecified launch failure")
        return run(self, prepared, jobs, **kwargs)

    monkeypatch.setattr(generation_run, "save_png", save)
    monkeypatch.setattr(BackgroundGenerator, "run", generate_images)
    monkeypatch.setattr(generation_run, "_device_works", lambda device: fault != "device-lost", raising=False)
    assert generate(*paths, "--prompt", "p", "--output-dir", out) == 1
    printed = capsys.readouterr()
    reason = {"folder-gone": "is gone", "disk-full": "No space left", "device-lost": "stopped working"}[fault]
    assert "Stopped: " in printed.err and reason in printed.err
    assert "Traceback" not in printed.err
    assert not any(name.startswith("c_") for name in calls)  # the batch did not go on
    if fault != "folder-gone":
        assert [p.name[:2] for p in out.glob("*.png")] == ["a_"]
        assert_manifest_matches_pngs(out)


# ----------------------------------------------------------------------------- 11.5 the segmenter


def test_missing_segmenter_skips_only_the_photos_that_need_it(tmp_path, fast, monkeypatch, capsys):
    paths = cutouts(tmp_path / "in", 2)
    photo, _ = make_photo(64, 48, seed=5)
    photo.save(tmp_path / "in" / "c.png")  # no alpha, no mask: needs the segmenter
    monkeypatch.setitem(__import__("sys").modules, "transparent_background", None)  # the package is missing
    code = generate(*paths, tmp_path / "in" / "c.png", "--prompt", "p", "--output-dir", tmp_path / "out")
    printed = capsys.readouterr()
    assert code == 1
    assert "c.png will be skipped" in printed.err and "pip install transparent-background" in printed.err
    assert "1 of 3 photos failed" in printed.out
    assert sorted(p.name[:2] for p in (tmp_path / "out").glob("*.png")) == ["a_", "b_"]


def test_a_named_segmenter_is_built_once_and_named_in_every_record(monkeypatch):
    from photobg import api

    built = []
    get_segmenter = api.get_segmenter
    monkeypatch.setattr(api, "get_segmenter", lambda name: built.append(name) or get_segmenter(name))
    generator = BackgroundGenerator(pipe=object(), segmenter="threshold")
    sources = [generator.prepare(make_photo(64, 48, seed=k)[0]).object_source for k in range(3)]
    assert sources == ["segmenter:threshold"] * 3 and built == ["threshold"]


# ----------------------------------------------------------------------------- 11.6 sizes


def test_sizes_above_the_bound_stop_before_loading(tmp_path):
    (path,) = cutouts(tmp_path / "in", 1)
    side = int(MAX_CANVAS_PIXELS**0.5)
    for extra, message in [
        (["--size", "100000x100000"], "--size 100000x100000 is 100000x100000 .* above photobg's limit"),
        (["--working-size", "100000"], f"--working-size must be between 8 and {MAX_WORKING_SIZE}"),
        (["--size", f"{side}x{side}"], "Could not load the model"),  # the bound itself is accepted
        (["--working-size", str(MAX_WORKING_SIZE)], "Could not load the model"),
    ]:
        with pytest.raises(SystemExit, match=message):  # "nowhere/none" cannot load: the checks come first
            main(["generate", str(path), "--prompt", "p", *extra, "--model", "nowhere/none"])
    generator = BackgroundGenerator(pipe=object())  # placing a photo needs no model
    with pytest.raises(ValueError, match=r"a.png: the canvas is 3840000x48 \(184 megapixels\), above photobg's"):
        generator.prepare(path, aspect="80000:1")  # refused before the canvas is allocated


# ----------------------------------------------------------------------------- 11.9 a kill at any moment


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (the manifest is not rewritten either)."""


def test_a_kill_between_png_and_manifest_is_repaired_on_resume(tmp_path, fast, monkeypatch):
    paths = cutouts(tmp_path / "in", 2)
    out = tmp_path / "out"
    args = [*paths, "--prompt", "p", "--num-images", 2, "--output-dir", out]
    save = Image.Image.save

    def killed_while_writing(image, fp, *a, **kw):
        Path(fp).write_bytes(b"\x89PNG half an image")
        raise Killed

    with monkeypatch.context() as m:  # SIGKILL: nothing after it runs, the manifest is not rewritten either
        m.setattr(generation_run, "write_manifest", lambda *args: None, raising=False)
        m.setattr(Image.Image, "save", killed_while_writing)
        with pytest.raises(Killed):
            generate(*args)
        assert not list(out.glob("*.png"))  # written under a temporary name: never taken for a finished image
        m.setattr(Image.Image, "save", save)
        m.setattr(generation_run, "append_line", lambda manifest, record: (_ for _ in ()).throw(Killed()))
        with pytest.raises(Killed):
            generate(*args, "--skip-existing")  # killed after the PNG is renamed into place, before its line
    first = output_image(out, "a")
    assert not (out / "manifest.jsonl").exists()
    written = first.stat().st_mtime_ns
    assert generate(*args, "--skip-existing") == 0
    assert first.stat().st_mtime_ns == written  # kept, and its record recovered from the PNG
    assert_manifest_matches_pngs(out)
    with open(out / "manifest.jsonl", "a") as f:  # a line left twice (e.g. by an older version)
        f.write(json.dumps(manifest(out)[0]) + "\n")
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    assert generate(*args, "--skip-existing") == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")} == mtimes  # nothing made again
    assert len(manifest(out)) == 4
    assert_manifest_matches_pngs(out)


# ----------------------------------------------------------------------------- 11.11 evaluate's models


def test_evaluate_checks_every_model_before_generating(tmp_path, capsys):
    cutouts(tmp_path / "bench" / "images", 1)
    out = tmp_path / "eval"
    args = ["evaluate", "--data", str(tmp_path / "bench"), "--output-dir", str(out), "--steps", "1"]
    args += ["--resolution", "64", "--segmenter", "threshold", "--metrics", "expansion", "--device", "cpu"]
    for second, message in [
        (str(tmp_path / "missing-model") + "@name=Ours", "--model Ours: Model folder .*missing-model.* not exist"),
        ("unknown-org/unknown-model@name=Ours", "--model Ours: Could not load model 'unknown-org/unknown-model'"),
        ("tiny-inpainting@name=Ours,scheduler=NoSuchScheduler", "--model Ours: Unknown scheduler"),
        (
            "tiny-inpainting@name=Ours,recipe=sdxl-lightning-4",
            "--model Ours: recipe sdxl-lightning-4 is made for sdxl-inpainting and sdxl-base, but the model "
            "tiny-inpainting is sd2-inpainting",
        ),
    ]:
        with pytest.raises(SystemExit, match=message):
            main([*args, "--model", "tiny-inpainting@name=SI2,scale=0", "--model", second])
        assert not list(out.rglob("*.png")) and not list(out.rglob("settings.json"))
    (out / "generated" / "Ours").mkdir(parents=True)  # what an older version left behind: settings, no images
    (out / "generated" / "Ours" / "settings.json").write_text(json.dumps({"model": "elsewhere"}))
    assert main([*args, "--model", "tiny-inpainting@name=Ours"]) == 0
    assert json.loads((out / "generated" / "Ours" / "settings.json").read_text())["model"] == "tiny-inpainting"


# ----------------------------------------------------------------------------- 11.12 Ctrl-C


def test_ctrl_c_ends_with_one_line_and_a_consistent_folder(tmp_path, fast, monkeypatch, capsys):
    paths = cutouts(tmp_path / "in", 3)
    run = BackgroundGenerator.run

    def interrupted(self, prepared, jobs, **kwargs):
        if prepared.name.endswith("b.png"):
            raise KeyboardInterrupt
        return run(self, prepared, jobs, **kwargs)

    monkeypatch.setattr(BackgroundGenerator, "run", interrupted)
    assert generate(*paths, "--prompt", "p", "--output-dir", tmp_path / "out") == 130
    printed = capsys.readouterr()
    assert "Traceback" not in printed.err
    assert "Interrupted. Every image written has its record in the manifest; 2 images are left" in printed.err
    assert_manifest_matches_pngs(tmp_path / "out")
    with pytest.raises(KeyboardInterrupt):
        generate(*paths, "--prompt", "p", "--output-dir", tmp_path / "debug", "--debug")
    assert_manifest_matches_pngs(tmp_path / "debug")  # rewritten on the way out all the same

    cutouts(tmp_path / "bench" / "images", 1)
    monkeypatch.setattr(runner, "generate_image", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt()))
    args = ["evaluate", "--data", str(tmp_path / "bench"), "--output-dir", str(tmp_path / "eval"), "--steps", "1"]
    args += ["--model", "tiny-inpainting", "--segmenter", "threshold", "--metrics", "expansion", "--device", "cpu"]
    assert main(args) == 130
    assert "interrupted" in capsys.readouterr().err


# ----------------------------------------------------------------------------- what works today


def unusual_photos(folder):
    """{file name: (expected object source, or the error's words)} for photos in many formats and states."""
    folder.mkdir()
    drawn, mask = make_photo(96, 64, seed=1)
    drawn.convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    Image.fromarray(np.asarray(drawn.convert("L"), np.uint16) * 257).save(folder / "deep.png")
    palette = drawn.quantize(colors=63)
    indices = np.where(np.asarray(mask) >= 128, np.asarray(palette), 63).astype(np.uint8)
    transparent = Image.fromarray(indices, "P")
    transparent.putpalette(palette.getpalette() + [0, 0, 0])
    transparent.save(folder / "palette.png", transparency=63)
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate the stored image 90 degrees to display it
    drawn.transpose(Image.Transpose.ROTATE_270).save(folder / "exif.jpg", exif=exif, quality=95)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    mask.save(folder / "mask.png")
    mask.resize((48, 32)).save(folder / "half-mask.png")
    mask.resize((64, 64)).save(folder / "square-mask.png")
    Image.new("L", mask.size).save(folder / "empty-mask.png")
    Image.new("L", mask.size, 255).save(folder / "full-mask.png")
    drawn.save(folder / "plain.png")
    return {
        ("cmyk.jpg", "mask.png"): "mask",
        ("deep.png", "mask.png"): "mask",
        ("palette.png", None): "alpha",
        ("exif.jpg", "mask.png"): "mask",  # upright once its EXIF orientation is applied: the mask fits
        ("plain.png", "half-mask.png"): "mask",  # another size, same aspect: resized with a warning
        ("broken.png", None): "broken.png: not a readable image",
        ("missing.png", None): "missing.png: no such file",
        ("plain.png", "square-mask.png"): "aspect ratios differ",
        ("plain.png", "empty-mask.png"): "object mask is empty",
        ("plain.png", "full-mask.png"): "fills the whole image",
    }


def test_bad_and_unusual_photos(tmp_path):
    generator = BackgroundGenerator(pipe=object(), segmenter=None)  # reading photos needs no model
    for (name, mask), expected in unusual_photos(tmp_path / "in").items():
        mask = tmp_path / "in" / mask if mask else None
        if expected in ("mask", "alpha"):
            with pytest.warns(UserWarning) if "half" in str(mask) else _no_warning():
                prepared = generator.prepare(tmp_path / "in" / name, mask)
            assert prepared.object_source == expected and prepared.image.size == (96, 64), name
        else:
            with pytest.raises(ValueError, match=expected):
                generator.prepare(tmp_path / "in" / name, mask)


def _no_warning():
    import contextlib

    return contextlib.nullcontext()


def test_clashes_stop_before_loading(tmp_path):
    cutouts(tmp_path / "one", 1)
    cutouts(tmp_path / "two", 2)
    (tmp_path / "masks").mkdir()
    Image.new("L", (4, 4)).save(tmp_path / "masks" / "a.png")
    Image.new("L", (4, 4)).save(tmp_path / "masks" / "a.jpg")
    for extra, message in [
        ([tmp_path / "one", tmp_path / "two", "--prompt", "p"], "same file stem"),
        ([tmp_path / "one", "--masks", tmp_path / "masks", "--prompt", "p"], "two masks for 'a'"),
        ([tmp_path / "one", tmp_path / "two" / "b.png", "--mask", tmp_path / "masks/a.png", "--prompt", "p"], "single"),
        ([tmp_path / "one"], "at least one prompt"),
    ]:
        with pytest.raises(SystemExit, match=message):
            main(["generate", *map(str, extra), "--model", "nowhere/none"])


# ----------------------------------------------------------------------------- 19.4 names that keep every run


def test_another_prompt_or_setting_keeps_the_earlier_images(tmp_path, fast, capsys):
    (path,) = cutouts(tmp_path / "in", 1)
    out = tmp_path / "out"
    assert generate(path, "--prompt", "a cup", "--num-images", 2, "--compare", "--output-dir", out) == 0
    first = outputs_of(out)
    assert sorted(r["seed"] for _, r in first.values()) == [0, 1]
    assert all(name.startswith("a_a-cup_") for name in first)
    assert generate(path, "--prompt", "A mug!", "--num-images", 2, "--compare", "--output-dir", out) == 0
    assert generate(path, "--prompt", "a cup", "--steps", 2, "--output-dir", out) == 0
    after = outputs_of(out)
    assert {name: after[name] for name in first} == first  # untouched
    assert sorted((r["prompt"], r["num_inference_steps"], r["seed"]) for _, r in after.values()) == [
        ("A mug!", 1, 0),
        ("A mug!", 1, 1),
        ("a cup", 1, 0),
        ("a cup", 1, 1),
        ("a cup", 2, 0),
    ]
    assert sum(name.startswith("a_a-mug_") for name in after) == 2
    assert len(list(out.glob("a_compare*.png"))) == 2  # one grid per run, neither overwritten
    assert len(manifest(out)) == 5
    assert_manifest_matches_pngs(out)
    capsys.readouterr()
    assert generate(path, "--prompt", "a cup", "--num-images", 2, "--output-dir", out, "--skip-existing") == 0
    assert "2 of 2 were already there" in capsys.readouterr().out
    assert outputs_of(out) == after


def test_an_image_named_as_before_is_kept_by_skip_existing(tmp_path, fast, capsys):
    (path,) = cutouts(tmp_path / "in", 1)
    out = tmp_path / "out"
    assert generate(path, "--prompt", "a cup", "--output-dir", out) == 0
    (name,) = outputs_of(out)
    old = out / "a_p0_s0.png"  # what photobg before issue 19 named it, with its record
    image = Image.open(out / name)
    save_png(image, old, {"photobg": {**png_record(out / name), "output": str(old)}})
    (out / name).unlink()
    (out / "manifest.jsonl").unlink()
    kept = old.stat().st_mtime_ns
    capsys.readouterr()
    assert generate(path, "--prompt", "a cup", "--output-dir", out, "--skip-existing") == 0
    assert "0 images written" in capsys.readouterr().out
    assert old.stat().st_mtime_ns == kept and [p.name for p in out.glob("*.png")] == ["a_p0_s0.png"]
    assert_manifest_matches_pngs(out)
    assert generate(path, "--prompt", "a mug", "--output-dir", out, "--skip-existing") == 0  # another key
    assert old.stat().st_mtime_ns == kept and len(manifest(out)) == 2


# ----------------------------------------------------------------------------- 19.7 small ones


def test_a_prompt_given_twice_is_made_once(capsys):
    assert generation_plan.read_prompts(["a cup", "a mug", "a cup"], None) == ["a cup", "a mug"]
    assert "warning: 1 repeated prompt left out: each prompt is made once." in capsys.readouterr().err


def test_a_model_that_fails_to_load_leaves_no_manifest(tmp_path):
    (path,) = cutouts(tmp_path / "in", 1)
    with pytest.raises(SystemExit, match="Could not load the model"):
        generate(path, "--prompt", "p", "--output-dir", tmp_path / "out", model="nowhere/none")
    assert list((tmp_path / "out").iterdir()) == []


def test_a_manifest_that_cannot_be_written_does_not_count_the_image_as_failed(tmp_path, fast, capsys):
    (path,) = cutouts(tmp_path / "in", 1)
    out = tmp_path / "out"
    (out / "manifest.jsonl").mkdir(parents=True)
    assert generate(path, "--prompt", "p", "--output-dir", out) == 1
    printed = capsys.readouterr()
    assert len(outputs_of(out)) == 1
    assert "failed" not in printed.out and "1 images written to" in printed.out
    assert f"the manifest {out / 'manifest.jsonl'} could not be written (Is a directory)" in printed.out
    assert "Traceback" not in printed.err


def test_a_resized_mask_is_one_line_above_the_progress_bar(tmp_path, fast, capsys):
    photo, mask = make_photo(64, 48, seed=1)
    photo.save(tmp_path / "photo.png")
    mask.resize((32, 24)).save(tmp_path / "mask.png")
    assert (
        generate(tmp_path / "photo.png", "--mask", tmp_path / "mask.png", "--prompt", "p", "--output-dir", tmp_path)
        == 0
    )
    err = capsys.readouterr().err
    line = f"warning: the mask {tmp_path / 'mask.png'} is 32x24 but the image is 64x48: resized to the image's size."
    assert line in err.splitlines()
    assert "UserWarning" not in err and "warnings.warn" not in err


# ----------------------------------------------------------------------------- 19 LoRAs, devices, convert


def test_a_lora_named_by_its_bare_file_name_loads(tmp_path, monkeypatch, shared_pipe):
    from conftest import write_ip_adapter
    from test_lora_vae_ipadapter import write_lora

    monkeypatch.chdir(tmp_path)
    write_lora(Path("lora"), shared_pipe).rename("style.safetensors")
    (path,) = cutouts(tmp_path / "in", 1)
    for spec, scale in [("style.safetensors", 1.0), ("style.safetensors:0.5", 0.5)]:  # no folder part, no Hub id
        out = tmp_path / str(scale)
        assert generate(path, "--prompt", "p", "--lora", spec, "--output-dir", out) == 0
        assert [r["loras"] for r in manifest(out)] == [
            [{"path": str(Path("style.safetensors").resolve()), "scale": scale}]
        ]
    write_ip_adapter(Path("."), shared_pipe.unet)  # the same for an IP-Adapter: ./ip-adapter.safetensors
    ip_adapter = ["--ip-adapter", "ip-adapter.safetensors", "--reference-image", path]
    assert generate(path, "--prompt", "p", *ip_adapter, "--output-dir", tmp_path / "ip") == 0


def not_a_lora(folder, kind):
    """A file given as a LoRA that is not one: not a weights file, a tensor alone, weights without LoRA keys."""
    from safetensors.torch import save_file

    path = folder / {"text": "notes.safetensors", "garbage": "style.bin", "tensor": "t.pt", "model": "unet.st"}[kind]
    if kind in ("text", "garbage"):
        path.write_bytes(b"not a LoRA at all")  # safetensors: "header too small"; torch.load: a KeyError
    elif kind == "tensor":
        torch.save(torch.zeros(3), path)
    else:
        path = path.with_suffix(".safetensors")
        save_file({"conv_in.weight": torch.zeros(4, 9, 3, 3)}, path)
    return path


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("text", "is not a safetensors file"),
        ("garbage", "is not a weights file"),
        ("tensor", "holds no state dict"),
        ("model", "holds no LoRA weights"),
    ],
)
def test_a_file_that_is_not_a_lora_is_refused_before_loading(tmp_path, capsys, kind, reason):
    (photo,) = cutouts(tmp_path / "in", 1)
    path = not_a_lora(tmp_path, kind)
    with pytest.raises(SystemExit) as stop:  # "nowhere/none" cannot load: the check comes first
        main(["generate", str(photo), "--prompt", "p", "--lora", f"{path}:0.5", "--model", "nowhere/none"])
    message = str(stop.value.code)
    assert message.startswith(f"--lora: LoRA {str(path)!r} {reason}") and "\n" not in message
    with pytest.raises(ValueError, match=f"^LoRA '.*{path.name}' {reason}"):
        BackgroundGenerator("nowhere/none", loras=[path])


def test_an_unavailable_device_is_refused_before_loading(tmp_path, monkeypatch):
    (photo,) = cutouts(tmp_path / "in", 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a CPU build of torch, or no GPU
    with pytest.raises(SystemExit, match=r"^--device: Device 'cuda' is not available: (this torch|no CUDA)"):
        main(["generate", str(photo), "--prompt", "p", "--device", "cuda", "--model", "nowhere/none"])
    for option, message in [
        ({"device": "cuda:1"}, "^Device 'cuda:1' is not available"),
        ({"device": "foo"}, "^Device 'foo' is not a torch device"),
        ({"scheduler": "NotAScheduler"}, "^Unknown scheduler 'NotAScheduler'"),
        ({"scheduler_options": {"nonsense": 1}}, "^UniPCMultistepScheduler has no option 'nonsense'"),
        ({"scheduler_options": ["solver_order=two"]}, "^solver_order=two: .* takes an integer"),
        ({"scheduler_options": {"timestep_spacing": "bogus"}}, "^timestep_spacing=bogus: .* takes one of linspace,"),
    ]:
        with pytest.raises(ValueError, match=message):  # the API's errors: the same, before loading
            BackgroundGenerator("nowhere/none", **option)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "cannot be read (No such file or directory)"),
        (b"not weights at all", "is not a weights file"),
        ([1, 2, 3], "does not hold a state dict"),
    ],
)
def test_convert_of_a_missing_or_unreadable_file_says_so_in_one_line(tmp_path, content, reason):
    path = tmp_path / "controlnet.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(SystemExit) as stop:
        main(["convert", str(path), "--output", str(tmp_path / "out")])
    message = str(stop.value.code)
    assert repr(str(path)) in message and reason in message and "\n" not in message, message
    assert not (tmp_path / "out").exists()
