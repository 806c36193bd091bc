"""`photobg.generate`, `BackgroundGenerator` and `photobg generate` on the tiny model, with real photos from
skimage and drawn ones: the object is exact at full resolution, every option does what it says, bad inputs
are reported and skipped, and a manifest line regenerates its image exactly."""

import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from conftest import make_photo, output_image
from PIL import Image, ImageDraw

import photobg
from photobg.api import BackgroundGenerator
from photobg.cli import main
from photobg.segment import SEGMENTERS

STEPS = ["--steps", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def generator(inpaint_model):
    generator = BackgroundGenerator(inpaint_model, device="cpu", segmenter="threshold")
    generator.pipe.set_progress_bar_config(disable=True)
    return generator


def coffee():
    """skimage's coffee photo and a hand-placed ellipse over the cup (white = object)."""
    mask = Image.new("L", (600, 400))
    ImageDraw.Draw(mask).ellipse((150, 40, 430, 330), fill=255)
    return Image.fromarray(skimage.data.coffee()), mask


def chelsea():
    mask = Image.new("L", (451, 300))
    ImageDraw.Draw(mask).ellipse((120, 20, 360, 290), fill=255)
    return Image.fromarray(skimage.data.chelsea()), mask


def assert_object_exact(output, photo, mask):
    """Where the mask is fully object, the output's pixels are the photo's."""
    output, photo = np.asarray(output.convert("RGB")), np.asarray(photo.convert("RGB"))
    assert output.shape == photo.shape
    solid = np.asarray(mask) == 255
    assert solid.any()
    np.testing.assert_array_equal(output[solid], photo[solid])
    assert np.abs(output[~solid].astype(int) - photo[~solid]).mean() > 5  # the background is new


def cli(tmp_path, model, *args):
    return main(["generate", *map(str, args), "--model", str(model), *STEPS])


def manifest(folder):
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------- Python API


def test_import_is_light_and_generate_is_the_api_function(capsys):
    code = "import sys, photobg; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout == "False\n"
    with pytest.raises(SystemExit):
        main(["generate", "--help"])  # imports the CLI module, which must not shadow the function
    assert "--masks" in capsys.readouterr().out

    assert callable(photobg.generate) and photobg.generate.__module__ == "photobg.api"


def test_real_photo_keeps_its_object_and_size(generator):
    photo, mask = coffee()
    images = generator(
        photo, ["a cup on a table", "a cup on the beach"], mask, num_images_per_prompt=2, seed=7, num_inference_steps=2
    )
    assert [(im.info["prompt_index"], im.info["seed"]) for im in images] == [(0, 7), (0, 8), (1, 7), (1, 8)]
    for image in images:
        assert_object_exact(image, photo, mask)
    assert np.abs(np.asarray(images[0], int) - np.asarray(images[1])).mean() > 1  # seeds differ
    again = generator(photo, "a cup on the beach", mask, seed=8, num_inference_steps=2)[0]
    np.testing.assert_array_equal(np.asarray(again), np.asarray(images[3]))  # same prompt and seed, same image


def test_module_level_generate_loads_once_and_draws_a_recorded_seed(inpaint_model):
    photo, mask = make_photo(64, 48)
    kwargs = dict(model=str(inpaint_model), device="cpu", num_inference_steps=2)
    first = photobg.generate(photo, "a photo", mask, **kwargs)[0]
    assert 0 <= first.info["seed"] < 2**31
    again = photobg.generate(photo, "a photo", mask, seed=first.info["seed"], **kwargs)[0]
    np.testing.assert_array_equal(np.asarray(first), np.asarray(again))
    from photobg.api import _cached_generator

    assert _cached_generator.cache_info().hits >= 1


def test_full_resolution_photo_is_generated_at_the_working_size_and_returned_whole(generator):
    photo, small_mask = coffee()  # a real photo upscaled to 24 megapixels, its mask drawn at full size
    photo = photo.resize((6000, 4000), Image.BICUBIC)
    mask = Image.new("L", photo.size)
    ImageDraw.Draw(mask).ellipse((1500, 400, 4300, 3300), fill=255)
    shapes = []
    hook = generator.pipe.unet.register_forward_pre_hook(lambda module, args: shapes.append(args[0].shape))
    try:
        (image,) = generator(photo, "a photo of a product", mask, num_inference_steps=1)
    finally:
        hook.remove()
    assert generator.working_size((6000, 4000)) == (64, 40)  # the tiny model's native 64 px, multiples of 8
    assert shapes[0][-2:] == (5, 8)  # latents of 40x64
    assert image.size == (6000, 4000)
    assert_object_exact(image, photo, mask)
    assert generator.working_size((6000, 4000), 512) == (512, 344)


def test_working_size_of_sd2_is_512_on_the_long_side(generator):
    class Config:
        sample_size = 64

    sd2 = BackgroundGenerator(pipe=type("Pipe", (), {"unet": type("U", (), {"config": Config}), "vae_scale_factor": 8}))
    assert sd2.native_size == 512
    assert sd2.working_size((6000, 4000)) == (512, 344)
    assert sd2.working_size((300, 1000)) == (152, 512)


def test_canvas_options_through_the_api(generator):
    photo, mask = chelsea()
    (wide,) = generator(photo, "a cat", mask, aspect="16:9", num_inference_steps=1, seed=0)
    assert wide.size == (534, 300)
    placed, shifted = Image.new("RGB", wide.size), Image.new("L", wide.size)
    placed.paste(photo, (42, 0))
    shifted.paste(mask, (42, 0))
    assert_object_exact(wide, placed, shifted)  # padded, not scaled: the object's pixels are the photo's
    (square,) = generator(
        photo, "a cat", mask, size=(128, 128), object_scale=0.5, position="bottom", num_inference_steps=1
    )
    assert square.size == (128, 128)


def test_bad_objects_are_clear_errors(generator, tmp_path):
    photo, mask = make_photo(64, 48)
    with pytest.raises(ValueError, match="object mask is empty"):
        generator(photo, "p", Image.new("L", photo.size))
    with pytest.raises(ValueError, match="fills the whole image.*--aspect"):
        generator(photo, "p", Image.new("L", photo.size, 255))
    (padded,) = generator(photo, "p", Image.new("L", photo.size, 255), aspect="2:1", num_inference_steps=1)
    assert padded.size == (96, 48)  # an object that fills the photo is fine once it has room
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match="notes.png: not a readable image"):
        generator(tmp_path / "notes.png", "p")
    with pytest.raises(ValueError, match="no alpha channel, no object mask"):
        BackgroundGenerator(pipe=generator.pipe, segmenter=None)(photo, "p")


def test_rgba_alpha_comes_first_and_the_segmenter_last(generator):
    photo, mask = make_photo(64, 48)
    cutout = photo.copy()
    cutout.putalpha(mask)
    with pytest.warns(UserWarning, match="alpha channel is the object"):
        prepared = generator.prepare(cutout, Image.new("L", photo.size, 255))
    assert prepared.object_source == "alpha"
    np.testing.assert_array_equal(np.asarray(prepared.object_mask), np.asarray(mask))
    prepared = generator.prepare(photo)  # no alpha, no mask: the threshold segmenter
    assert prepared.object_source == "segmenter:threshold"
    np.testing.assert_array_equal(np.asarray(prepared.object_mask), np.asarray(SEGMENTERS["threshold"]()(photo)))


# ----------------------------------------------------------------------------- the command


def write_folder(folder, masks):
    """A folder of photos in many formats (+ masks by stem), with a broken file and two bad objects."""
    folder.mkdir()
    masks.mkdir()
    photo, mask = coffee()
    cutout = photo.copy()
    cutout.putalpha(mask)
    cutout.save(folder / "cutout.png")
    cat, cat_mask = chelsea()
    cat.save(folder / "cat.png")
    cat_mask.save(masks / "cat.png")
    cat.convert("L").save(folder / "gray.png")
    cat_mask.resize((451 // 2 + 1, 150)).save(masks / "gray.png")  # another size, same aspect: resized
    drawn, drawn_mask = make_photo(96, 64, seed=1)
    drawn.convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    drawn_mask.save(masks / "cmyk.png")
    Image.fromarray(np.asarray(drawn.convert("L"), np.uint16) * 257).save(folder / "deep.png")
    Image.fromarray((np.asarray(drawn_mask) >= 128).astype(np.uint16) * 65535).save(masks / "deep.png")
    palette = drawn.quantize(colors=63)
    indices = np.where(np.asarray(drawn_mask) >= 128, np.asarray(palette), 63).astype(np.uint8)
    transparent = Image.fromarray(indices, "P")
    transparent.putpalette(palette.getpalette() + [0, 0, 0])
    transparent.save(folder / "palette.png", transparency=63)  # index 63 = transparent background
    rotated = drawn.transpose(Image.Transpose.ROTATE_270)  # what the camera stored
    exif = Image.Exif()
    exif[0x0112] = 8  # orientation: rotate the stored image 90 degrees to display it
    rotated.save(folder / "exif.jpg", exif=exif, quality=95)
    drawn_mask.save(masks / "exif.png")  # drawn on the photo as displayed
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    drawn.save(folder / "empty.png")
    Image.new("L", drawn.size).save(masks / "empty.png")
    drawn.save(folder / "full.png")
    Image.new("L", drawn.size, 255).save(masks / "full.png")
    (folder / "notes.txt").write_text("ignored: not an image file")


def test_folder_of_every_format_skips_only_the_bad_photos(tmp_path, inpaint_model, capsys):
    folder, masks, out = tmp_path / "photos", tmp_path / "masks", tmp_path / "out"
    write_folder(folder, masks)
    code = cli(tmp_path, inpaint_model, folder, "--masks", masks, "--prompt", "a photo", "--output-dir", out)
    printed, err = capsys.readouterr()
    assert "warning: the mask " in err and "gray.png is 226x150 but the image is 451x300: resized" in err
    assert code == 1
    assert "3 of 10 photos failed" in printed
    assert "broken.png: not a readable image" in printed
    assert "empty.png: the object mask is empty" in printed and "full.png: the object fills the whole image" in printed
    good = ["cutout", "cat", "gray", "cmyk", "deep", "palette", "exif"]
    assert sorted(p.name.rsplit("_", 3)[0] for p in out.glob("*.png")) == sorted(good)
    records = {r["input"].rsplit("/", 1)[-1]: r for r in manifest(out)}
    assert len(records) == 7 and records["cutout.png"]["object_source"] == "alpha"
    assert records["cat.png"]["object_source"] == "mask" and records["palette.png"]["object_source"] == "alpha"
    for stem, (photo, mask) in {"cutout": coffee(), "cat": chelsea()}.items():
        assert_object_exact(Image.open(output_image(out, stem)), photo, mask)
    drawn, drawn_mask = make_photo(96, 64, seed=1)
    palette = Image.open(folder / "palette.png")
    assert_object_exact(
        Image.open(output_image(out, "palette")), palette.convert("RGB"), palette.convert("RGBA").getchannel("A")
    )
    assert_object_exact(Image.open(output_image(out, "deep")), drawn.convert("L"), drawn_mask)  # 16-bit, scaled
    for stem in ("cmyk", "exif"):  # JPEGs: the object is the decoded photo's pixels, upright
        decoded = photobg.masks.load_image(folder / f"{stem}.jpg").convert("RGB")
        assert decoded.size == (96, 64)
        assert_object_exact(Image.open(output_image(out, stem)), decoded, drawn_mask)


def test_mask_of_another_aspect_and_unreadable_files_are_reported(tmp_path, inpaint_model, capsys):
    photo, mask = make_photo(64, 48)
    photo.save(tmp_path / "photo.png")
    mask.resize((64, 64)).save(tmp_path / "square.png")
    out = tmp_path / "out"
    assert cli(tmp_path, inpaint_model, tmp_path / "photo.png", "--mask", tmp_path / "square.png", "--prompt", "p",
               "--output-dir", out) == 1  # fmt: skip
    assert "photo.png: the mask" in capsys.readouterr().out
    assert cli(tmp_path, inpaint_model, tmp_path / "missing.jpg", "--prompt", "p", "--output-dir", out) == 1
    assert "missing.jpg: no such file" in capsys.readouterr().out
    assert not list(out.glob("*.png"))


def test_unwritable_output_folder_fails_before_loading_anything(tmp_path, inpaint_model):
    photo, mask = make_photo(64, 48)
    photo.save(tmp_path / "photo.png")
    (tmp_path / "taken").write_text("a file, not a folder")
    for folder in (tmp_path / "taken", tmp_path / "taken" / "sub"):
        with pytest.raises(SystemExit, match="--output-dir .*taken.*cannot write there"):
            main(["generate", str(tmp_path / "photo.png"), "--prompt", "p", "--model", "nowhere/none", "--output-dir",
                  str(folder)])  # fmt: skip
    if hasattr(__import__("os"), "geteuid") and __import__("os").geteuid() != 0:  # root may write anywhere
        (tmp_path / "locked").mkdir(mode=0o500)
        with pytest.raises(SystemExit, match="cannot write there"):
            main(["generate", str(tmp_path / "photo.png"), "--prompt", "p", "--output-dir", str(tmp_path / "locked")])


def test_manifest_command_regenerates_its_image_exactly(tmp_path, inpaint_model):
    photo, mask = coffee()
    photo.save(tmp_path / "coffee.png")
    mask.save(tmp_path / "mask.png")
    (tmp_path / "prompts.txt").write_text("# studio shots\na cup in a studio\n\na cup on the beach\n")
    args = [tmp_path / "coffee.png", "--mask", tmp_path / "mask.png", "--prompt", "a cup on a table"]
    args += ["--prompts-file", tmp_path / "prompts.txt", "--num-images", "2", "--seed", "11"]
    args += ["--negative-prompt", "blurry", "--guidance", "5", "--scheduler", "DDPMScheduler", "--aspect", "1:1"]
    args += ["--controlnet-scale", "0.8"]
    assert cli(tmp_path, inpaint_model, *args, "--output-dir", tmp_path / "out") == 0
    records = manifest(tmp_path / "out")
    assert [(r["prompt_index"], r["seed"]) for r in records] == [(p, s) for p in range(3) for s in (11, 12)]
    record = records[3]
    assert record["prompt"] == "a cup in a studio" and record["negative_prompt"] == "blurry"
    assert (
        record["scheduler"] == "DDPMScheduler" and record["size"] == [600, 600] and record["working_size"] == [64, 64]
    )
    assert record["guidance_scale"] == 5 and record["controlnet_conditioning_scale"] == 0.8
    assert json.loads(Image.open(record["output"]).text["photobg"]) == record  # parameters travel with the file
    command = shlex.split(record["command"])
    command[command.index("--output-dir") + 1] = str(tmp_path / "rerun")
    assert main(command[1:]) == 0
    (again,) = (tmp_path / "rerun").glob("*.png")
    np.testing.assert_array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(record["output"])))
    # Batches of 3 differ from single images only by floating-point rounding (documented).
    assert cli(tmp_path, inpaint_model, *args, "--batch-size", "3", "--output-dir", tmp_path / "batched") == 0
    for record in records:
        batched = np.asarray(Image.open(tmp_path / "batched" / Path(record["output"]).name), int)
        difference = np.abs(batched - np.asarray(Image.open(record["output"])))
        assert difference.max() <= 1 and (difference > 0).mean() < 1e-3


def test_skip_existing_resumes_and_compare_writes_a_grid(tmp_path, inpaint_model):
    photo, mask = chelsea()
    cutout = photo.copy()
    cutout.putalpha(mask)
    cutout.save(tmp_path / "cat.png")
    out = tmp_path / "out"
    args = [tmp_path / "cat.png", "--prompt", "a cat", "--num-images", "2", "--output-dir", out]
    assert cli(tmp_path, inpaint_model, *args, "--compare") == 0
    (grid,) = out.glob("cat_compare_*.png")
    assert Image.open(grid).width == 4 * 512 and Image.open(grid).height > 2 * 512 * 300 / 451
    first = {seed: output_image(out, "cat", seed).stat().st_mtime_ns for seed in (0, 1)}
    output_image(out, "cat", 1).unlink()
    assert cli(tmp_path, inpaint_model, *args, "--skip-existing") == 0
    assert output_image(out, "cat", 0).stat().st_mtime_ns == first[0]
    assert output_image(out, "cat", 1).exists()  # only the missing image was generated again
    assert [r["seed"] for r in manifest(out)] == [0, 1]  # one record per image


def test_segmenter_finds_the_object_and_a_missing_one_says_how_to_give_a_mask(tmp_path, inpaint_model, monkeypatch):
    photo, _ = make_photo(64, 48)
    photo.save(tmp_path / "photo.png")
    out = tmp_path / "out"
    assert cli(tmp_path, inpaint_model, tmp_path / "photo.png", "--segmenter", "threshold", "--prompt", "p",
               "--output-dir", out) == 0  # fmt: skip
    assert manifest(out)[0]["object_source"] == "segmenter:threshold"
    monkeypatch.setitem(sys.modules, "transparent_background", None)  # the package is not installed
    with pytest.raises(SystemExit, match="pip install transparent-background.*--mask"):
        cli(tmp_path, inpaint_model, tmp_path / "photo.png", "--prompt", "p", "--output-dir", out)


def test_option_errors_name_the_flag(tmp_path, inpaint_model):
    photo, _ = make_photo(64, 48)
    photo.save(tmp_path / "photo.png")
    for args, message in [
        ([], "at least one prompt"),
        (["--prompt", "p", "--size", "big"], "--size"),
        (["--prompt", "p", "--object-scale", "2"], "--object-scale"),
        (["--prompt", "p", "--num-images", "0"], "--num-images"),
        (["--prompt", "p", "--prompts-file", str(tmp_path / "none.txt")], "--prompts-file"),
    ]:
        with pytest.raises(SystemExit, match=message):
            main(["generate", str(tmp_path / "photo.png"), *args])
    with pytest.raises(SystemExit, match="no image files match"):
        main(["generate", str(tmp_path / "*.jpg"), "--prompt", "p"])


def test_canvas_working_size_and_base_model_options(tmp_path, inpaint_model, inpaint_base_model):
    photo, mask = make_photo(72, 48)
    cutout = photo.copy()
    cutout.putalpha(mask)
    cutout.save(tmp_path / "drawn.png")
    out = tmp_path / "out"
    args = ["generate", str(tmp_path / "drawn.png"), "--prompt", "p", "--size", "96x64", "--object-scale", "0.5"]
    args += ["--position", "bottom-left", "--working-size", "32", "--dtype", "fp32", "--output-dir", str(out)]
    args += ["--model", str(inpaint_base_model), "--controlnet", str(inpaint_model / "controlnet"), *STEPS]
    assert main(args) == 0
    (record,) = manifest(out)
    assert record["size"] == [96, 64] and record["working_size"] == [32, 24] and record["controlnet"]
    placed = Image.open(output_image(out, "drawn"))
    assert placed.size == (96, 64)
    _, expected_mask = photobg.masks.place_on_canvas(photo, mask, (96, 64), 0.5, "bottom-left")
    left, top, right, bottom = expected_mask.getbbox()
    assert left == 0 and bottom == 64 and bottom - top == 32  # half the canvas, in the bottom-left corner
    canvas, _ = photobg.masks.place_on_canvas(photo, mask, (96, 64), 0.5, "bottom-left")
    assert_object_exact(placed, canvas, expected_mask)


# ----------------------------------------------------------------------------- lining up and the recipe


def cutouts(sizes):
    """RGBA cutouts, one per size, each with its own pixels and its object in another place."""
    images = []
    for k, (width, height) in enumerate(sizes):
        photo, object_mask = make_photo(width, height, seed=k)
        photo.putalpha(Image.fromarray(np.roll(np.asarray(object_mask), 4 * k, axis=1)))
        images.append(photo)
    return images


def assert_own_objects(outputs, inputs):
    for out, cutout in zip(outputs, inputs, strict=True):
        rgba = np.asarray(cutout)
        full = rgba[..., 3] == 255
        assert out.size == cutout.size
        np.testing.assert_array_equal(np.asarray(out)[full], rgba[..., :3][full])


@pytest.mark.parametrize(
    "prompts, per_prompt, sizes, own",
    [
        (2, 2, [(64, 48)], [0, 0, 0, 0]),  # one image for all
        (2, 2, [(64, 48), (64, 48)], [0, 0, 1, 1]),  # one per prompt
        (1, 3, [(64, 48)] * 3, [0, 1, 2]),  # one per output
        (2, 1, [(64, 48), (40, 56)], [0, 1]),  # one per prompt, of different sizes
    ],
)
def test_background_generator_gives_every_output_its_own_input(generator, prompts, per_prompt, sizes, own):
    images = cutouts(sizes)
    prompt_list = ["a cat", "a dog"][:prompts]
    given = images if len(images) > 1 else images[0]
    outputs = generator(
        given, prompt_list, num_images_per_prompt=per_prompt, seed=3, num_inference_steps=2, batch_size=3
    )
    assert_own_objects(outputs, [images[k] for k in own])
    assert [image.info["seed"] for image in outputs] == [3 + k for _ in range(prompts) for k in range(per_prompt)]
    single = generator(images[own[-1]], prompt_list[-1], seed=outputs[-1].info["seed"], num_inference_steps=2)
    assert np.abs(np.asarray(single[0], int) - np.asarray(outputs[-1], int)).max() <= 1


def test_background_generator_masks_line_up_and_mismatches_name_the_argument(generator):
    photo, _ = make_photo(64, 48)
    masks = [Image.fromarray(np.asarray(c)[..., 3]) for c in cutouts([(64, 48)] * 2)]
    outputs = generator(photo, ["a cat", "a dog"], masks, num_inference_steps=2)  # one mask per prompt
    for out, mask in zip(outputs, masks, strict=True):
        full = np.asarray(mask) == 255
        np.testing.assert_array_equal(np.asarray(out)[full], np.asarray(photo)[full])
    with pytest.raises(ValueError, match=r"Got 2 `image` for 1 output \(1 prompt x 1 per prompt\)"):
        generator([photo, photo], "a cat", [masks[0]] * 3)
    with pytest.raises(ValueError, match=r"Got 3 `object_mask` for 2 outputs \(1 prompt x 2 per prompt\)"):
        generator([photo, photo], "a cat", [masks[0]] * 3, num_images_per_prompt=2)


def test_photobg_generate_keeps_each_photos_own_object(tmp_path, inpaint_model):
    images = cutouts([(64, 48)] * 3)
    for k, image in enumerate(images):
        image.save(tmp_path / f"photo{k}.png")
    args = [tmp_path / "photo0.png", tmp_path / "photo1.png", tmp_path / "photo2.png", "--prompt", "a cat"]
    args += ["--prompt", "a dog", "--num-images", "2", "--batch-size", "3", "--output-dir", tmp_path / "out"]
    assert cli(tmp_path, inpaint_model, *args) == 0
    records = manifest(tmp_path / "out")
    assert len(records) == 12
    for record in records:
        cutout = images[int(Path(record["input"]).stem[-1])]
        assert_own_objects([Image.open(record["output"]).convert("RGB")], [cutout])
        assert record["scheduler"] == "UniPCMultistepScheduler"  # the authors' recipe


def test_every_entry_point_samples_with_the_authors_recipe(generator, inpaint_model):
    import argparse
    import inspect

    from photobg import app_page, recipe, settings
    from photobg.evaluate import command, runner
    from photobg.generation import cli as generate_cli
    from photobg.models import load_pipeline

    scheduler = generator.pipe.scheduler
    assert type(scheduler).__name__ == "UniPCMultistepScheduler"
    assert scheduler.config.final_sigmas_type == "sigma_min"  # diffusers 0.27's UniPC, as the authors ran it
    assert type(load_pipeline(inpaint_model, device="cpu", scheduler="model").scheduler).__name__ == "PNDMScheduler"
    recipe_values = {
        "num_inference_steps": recipe.NUM_INFERENCE_STEPS,
        "guidance_scale": recipe.GUIDANCE_SCALE,
        "controlnet_conditioning_scale": recipe.CONTROLNET_CONDITIONING_SCALE,
    }
    assert recipe_values == {"num_inference_steps": 20, "guidance_scale": 7.5, "controlnet_conditioning_scale": 1.0}
    for function in (BackgroundGenerator.__call__, BackgroundGenerator.run):
        defaults = {k: p.default for k, p in inspect.signature(function).parameters.items() if k in recipe_values}
        assert defaults == dict(recipe_values, num_inference_steps=None, guidance_scale=None)  # None: the recipe's
    sampling = dict(num_inference_steps=20, guidance_scale=7.5, timesteps=None, eta=None)
    assert generator.sampling() == sampling  # a generator without a recipe: the authors'
    parsers = {}
    for name, module in (("generate", generate_cli), ("app", app_page), ("evaluate", command)):
        parsers[name] = argparse.ArgumentParser()
        module.add_arguments(parsers[name])
    generate_defaults = parsers["generate"].parse_args(["x.png"])
    assert (generate_defaults.steps, generate_defaults.guidance, generate_defaults.controlnet_scale) == (20, 7.5, 1.0)
    assert generate_defaults.scheduler is None and parsers["app"].parse_args([]).scheduler is None
    app_settings = settings.GenerationSettings.from_args(parsers["app"].parse_args([]))  # the page's first values
    assert (app_settings.num_inference_steps, app_settings.guidance_scale, app_settings.recipe) == (20, 7.5, None)
    evaluate_defaults = parsers["evaluate"].parse_args(["--data", "d", "--model", "m", "--output-dir", "o"])
    assert (evaluate_defaults.steps, evaluate_defaults.guidance) == (20, 7.5)
    assert (runner.EvalSettings().steps, runner.EvalSettings().guidance) == (20, 7.5)
    notebook = json.loads((Path(__file__).resolve().parents[1] / "inference.ipynb").read_text())
    parameters = next(cell for cell in notebook["cells"] if "parameters" in cell["metadata"].get("tags", []))
    assert "STEPS = 20" in "".join(parameters["source"])
