"""The app's behaviour without a browser: the object selection (automatic mask, SAM clicks, brush strokes),
the one mask the overlay shows and generation keeps, placement, stopping between steps, the command that
regenerates a result, messages (never tracebacks) for bad input, and the `/generate` endpoint's limits."""

import json
import re
import shlex
import threading
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageDraw

from photobg.api import BackgroundGenerator
from photobg.app import App, canvas_options, sampling_options
from photobg.app_page import _same_layer, _selection_views, _stream
from photobg.cli import main
from photobg.selection import ADD_COLOUR, REMOVE_COLOUR, apply_strokes, display_size, object_mask, overlay
from photobg.settings import GenerationSettings

CANVAS = ("photo's own", "", 0, "center")  # the app's canvas fields: aspect, size, object scale, position


@pytest.fixture(scope="module")
def app(inpaint_model, tiny_sam):
    generator = BackgroundGenerator(inpaint_model, device="cpu", segmenter="threshold")
    generator.pipe.set_progress_bar_config(disable=True)
    settings = GenerationSettings(model=str(inpaint_model), segmenter="threshold", num_inference_steps=2)
    return App(generator, sam_model=str(tiny_sam), max_megapixels=1, settings=settings)


@pytest.fixture()
def cat(tmp_path):
    """cat.png (a 120x80 photo) and cat_mask.png (an ellipse), as uploaded files."""
    photo = Image.fromarray(skimage.data.chelsea()).resize((120, 80))
    mask = Image.new("L", photo.size)
    ImageDraw.Draw(mask).ellipse((30, 5, 95, 75), fill=255)
    photo.save(tmp_path / "cat.png")
    mask.save(tmp_path / "cat_mask.png")
    return tmp_path / "cat.png", tmp_path / "cat_mask.png"


def strokes(size, add=None, remove=None):
    """An editor layer (RGBA) with an add stroke and a remove stroke (boxes), in the brush's colours at 60%."""
    layer = Image.new("RGBA", size)
    draw = ImageDraw.Draw(layer)
    for box, colour in ((add, ADD_COLOUR), (remove, REMOVE_COLOUR)):
        if box is not None:
            draw.rectangle(box, fill=(*colour, 153))
    return layer


def generate(app, selection, folder, steps=2, stop=None, on_step=None, canvas=CANVAS, num_images=1):
    options = sampling_options(None, steps, 7.5, 1.0)
    stop = stop or threading.Event()
    return list(
        app.generate(selection, "a cat", num_images, 0, False, options, canvas_options(*canvas), folder, stop, on_step)
    )


def api_endpoint(app):
    """The `/generate` endpoint's function, as Gradio calls it."""
    from photobg.app_page import build_app

    demo = build_app(app)
    return next(fn.fn for fn in demo.fns.values() if fn.api_name == "generate")


def test_overlay_shows_exactly_what_generation_keeps(app, cat, tmp_path):
    selection = app.open(*map(str, cat))
    assert selection.source == "mask" and not selection.edited
    selection = apply_strokes(selection, strokes(display_size(selection.image.size), (0, 0, 20, 79), (55, 30, 70, 50)))
    kept = np.asarray(object_mask(selection)) == 255
    assert kept[:, :21].all() and not kept[30:51, 55:71].any()  # painted in, painted out
    # The overlay tints exactly the kept pixels (the photo is shown at its own size here).
    photo = np.asarray(selection.image)
    tinted = (np.asarray(overlay(selection, with_points=False)) != photo).any(-1)
    np.testing.assert_array_equal(tinted, kept)
    # Generation keeps exactly those pixels, and the selection file the command reads carries the same mask.
    (result,) = generate(app, selection, tmp_path)
    generated = np.asarray(Image.open(result.path))
    np.testing.assert_array_equal(generated[kept], photo[kept])
    assert not np.array_equal(generated[~kept], photo[~kept])
    cutout = Image.open(result.object_file)
    np.testing.assert_array_equal(np.asarray(cutout.getchannel("A")), np.asarray(object_mask(selection)))


def test_a_plain_photo_loads_without_the_segmenter_and_the_brush_gives_its_object(inpaint_model, cat, monkeypatch):
    import sys

    from photobg.app import segmenter_problem

    monkeypatch.setitem(sys.modules, "transparent_background", None)  # not installed, wherever this runs
    generator = BackgroundGenerator(inpaint_model, device="cpu")  # the default segmenter: transparent-background
    plain = App(generator, settings=GenerationSettings(model=str(inpaint_model)))
    assert segmenter_problem(generator) == (
        "The automatic object finder (the transparent-background segmenter) is not installed: click on the object "
        "or paint it with the brush. To have objects found automatically, install it (pip install "
        "transparent-background) and restart the app."
    )
    selection = plain.open(str(cat[0]))  # the photo loads, with no object yet
    assert selection.source == "none" and object_mask(selection).getbbox() is None
    _, view, editor, preview, status = _selection_views(plain, selection, CANVAS)
    assert view.size == (120, 80) and editor["background"].size == (120, 80) and preview is None
    assert status == "No object yet. " + segmenter_problem(generator)
    painted = apply_strokes(selection, strokes(display_size(selection.image.size), (30, 10, 90, 70)))
    *_, preview, status = _selection_views(plain, painted, CANVAS)
    assert preview is not None and status.startswith("Object from your brush strokes. Output 120x80")


def test_clicks_and_strokes_are_cleared_apart_and_undone_one_by_one(app, cat):
    from photobg.app_page import remember, undo
    from photobg.selection import clear_clicks, clear_strokes

    selection = app.open(*map(str, cat))
    size = display_size(selection.image.size)
    layer = strokes(size, (0, 0, 20, 79))
    history = remember([], selection, None)  # before each edit, the page remembers the selection and strokes
    clicked = app.click(selection, 60, 40, 1)
    history = remember(history, clicked, None)
    painted = apply_strokes(clicked, layer)
    # Clearing the clicks keeps the strokes, and clearing the strokes keeps the clicks.
    no_clicks, no_strokes = clear_clicks(painted), clear_strokes(painted)
    assert no_clicks.points == [] and no_clicks.added is painted.added
    np.testing.assert_array_equal(
        np.asarray(object_mask(no_clicks)), np.asarray(object_mask(apply_strokes(selection, layer)))
    )
    assert no_strokes.points == painted.points and no_strokes.added is None
    np.testing.assert_array_equal(np.asarray(object_mask(no_strokes)), np.asarray(object_mask(clicked)))
    # Undo takes back the last edit, the stroke, then the click; with nothing left it changes nothing.
    (back, back_layer), history = undo(history)
    assert back is clicked and back_layer is None
    (back, _), history = undo(history)
    assert back is selection and history == []
    assert undo(history) == (None, [])


def test_brush_edges_are_soft_where_the_mask_is_soft(app, cat, tmp_path):
    from PIL import ImageFilter

    photo, mask = cat
    Image.open(mask).filter(ImageFilter.GaussianBlur(3)).save(tmp_path / "soft_mask.png")
    size = display_size((120, 80))
    layer = strokes(size, (40, 20, 80, 60))
    layer.putalpha(layer.getchannel("A").filter(ImageFilter.GaussianBlur(2)))  # the brush's antialiased edge

    def values(selection):  # of the stroke, as it enters the object mask
        return set(np.unique(np.asarray(apply_strokes(selection, layer).added)))

    assert values(app.open(str(photo), str(mask))) <= {0, 255}  # a hard mask stays hard
    soft = values(app.open(str(photo), str(tmp_path / "soft_mask.png")))
    assert len(soft - {0, 255}) > 10  # a soft one gets a soft stroke edge


def test_strokes_are_taken_back_by_the_eraser(app, cat):
    selection = app.open(*map(str, cat))
    size = display_size(selection.image.size)
    edited = apply_strokes(selection, strokes(size, (0, 0, 20, 79)))
    assert edited.edited
    erased = apply_strokes(edited, Image.new("RGBA", size))  # the eraser leaves a transparent layer
    assert not erased.edited
    np.testing.assert_array_equal(np.asarray(object_mask(erased)), np.asarray(selection.automatic))


def test_a_layer_the_editor_sends_again_is_no_new_stroke():
    """The editor re-sends its layer when a handler sets its value (seconds late, under load): the same strokes are
    not a new edit, an empty layer is no strokes, and any changed pixel is a stroke."""
    size = (80, 60)
    layer = strokes(size, (0, 0, 20, 30))
    assert _same_layer(layer.copy(), layer) and _same_layer(None, None)
    assert _same_layer(Image.new("RGBA", size), None)  # the eraser's transparent layer: no strokes
    assert not _same_layer(layer, None) and not _same_layer(None, layer)
    changed = layer.copy()
    changed.putpixel((70, 50), (*ADD_COLOUR, 255))
    assert not _same_layer(changed, layer)


def test_clicks_refine_the_object_and_bad_clicks_are_messages(app, cat, inpaint_model):
    selection = app.open(*map(str, cat))
    automatic = np.asarray(selection.automatic)
    clicked = app.click(selection, 60, 40, 1)
    assert clicked.points == [[60, 40, 1]] and clicked.edited
    (region,) = map(np.asarray, clicked.regions)  # what SAM finds at the click, at the photo's size
    assert region.shape == automatic.shape and region.any()
    # The first click adds to the uploaded mask's object: it refines it, never replaces it.
    np.testing.assert_array_equal(np.asarray(object_mask(clicked)), np.maximum(automatic, region))
    # A click off the object takes SAM's region at that point away; an undo-able list of clicks.
    both = app.click(clicked, 10, 10, 0)
    assert both.points == [[60, 40, 1], [10, 10, 0]]
    off = np.asarray(both.regions[1])
    np.testing.assert_array_equal(np.asarray(object_mask(both)), np.minimum(np.maximum(automatic, region), 255 - off))
    with pytest.raises(ValueError, match=r"the click at \(120, 5\) is outside the photo \(120x80 as shown\)"):
        app.click(selection, 120, 5, 1)
    with pytest.raises(ValueError, match="Upload a photo first"):
        app.click(None, 1, 1, 1)
    no_sam = App(app.generator, sam_model=str(inpaint_model / "no-such-sam"))
    with pytest.raises(ValueError) as error:
        no_sam.click(selection, 60, 40, 1)
    assert str(error.value) == (
        "Clicks need SAM, which could not be loaded (no-such-sam): paint the object with the brush instead "
        "(Brush tab: green adds to the object, red removes from it)."
    )


def test_empty_or_full_mask_after_editing_is_a_message_and_the_app_stays_usable(app, cat, tmp_path):
    selection = app.open(*map(str, cat))
    size = display_size(selection.image.size)
    everything = (0, 0, size[0], size[1])

    empty = apply_strokes(selection, strokes(size, remove=everything))
    _, _, _, preview, status = _selection_views(app, empty, CANVAS)
    assert preview is None and "cat.png: the object mask is empty" in status
    run = (empty, "a cat", 1, 0, False, sampling_options(None, 2, 7.5, 1), {})
    (outputs,) = _stream(app, run, str(tmp_path), threading.Event(), None, 1, [])
    assert "⚠ cat.png: the object mask is empty" in outputs[6]

    full = apply_strokes(selection, strokes(size, add=everything))
    _, _, _, preview, status = _selection_views(app, full, CANVAS)
    assert preview is None and "cat.png: the object fills the whole image" in status
    assert status.endswith("give it room with the aspect ratio, the exact size or the object scale.")  # no flags
    # Room on the canvas makes the same selection usable.
    _, _, _, preview, status = _selection_views(app, full, ("1:1", "", 0, "center"))
    assert preview.size == (120, 120) and status.endswith("Output 120x120, generated at 64x64.")
    (result,) = generate(app, full, tmp_path, canvas=("1:1", "", 0, "center"))
    assert Image.open(result.path).size == (120, 120)


def test_the_session_keeps_every_run_s_results_and_zips_them(app, cat):
    import zipfile

    selection = app.open(*map(str, cat))
    session, outputs = [], None
    for prompt, seed in (("a cat", 0), ("a cat on a sofa", 5)):
        run = (selection, prompt, 1, seed, False, sampling_options(None, 2, 7.5, 1), canvas_options(*CANVAS))
        *_, outputs = _stream(app, run, app.run_folder("session"), threading.Event(), None, 1, session)
        gallery, status, strip, session, download = outputs[0], outputs[6], outputs[8], outputs[9], outputs[10]
        assert status == "Done: 1 image(s)." and len(gallery) == 1  # this run's
    # The strip: every result of the session, captioned with its prompt, seed and settings.
    assert [caption for _, caption in strip] == [
        "ours, seed 0 · a cat · 2 steps, guidance 7.5, ControlNet 1",
        "ours, seed 5 · a cat on a sofa · 2 steps, guidance 7.5, ControlNet 1",
    ]
    with zipfile.ZipFile(download["value"]) as archive:  # "Download all": the PNGs as they are
        names = archive.namelist()
        assert [Path(name).name for name in names] == [Path(result.path).name for result in session]
        for name, result in zip(names, session, strict=True):
            assert archive.read(name) == Path(result.path).read_bytes()
    app.end_session("session")
    assert not any(Path(result.path).exists() for result in session)


def test_the_page_gets_previews_and_the_download_the_full_file(app, cat, tmp_path, monkeypatch):
    import photobg.app
    from photobg.app_page import _show_results

    monkeypatch.setattr(photobg.app, "PREVIEW_SIZE", 64)  # a "large" photo: larger than the previews
    (result,) = generate(app, app.open(*map(str, cat)), tmp_path)
    full = Image.open(result.path)
    assert full.size == (120, 80) and json.loads(full.info["photobg"])["seed"] == 0
    assert Image.open(result.preview).size == Image.open(result.before).size == (64, 43)
    assert Path(result.preview).name == Path(result.path).name  # the name photobg generate gives it
    gallery, slider, _, _, _, download = _show_results([result])
    assert gallery == [(result.preview, "ours, seed 0")] and slider == (result.before, result.preview)
    assert download["value"] == result.path  # the download button gives the full-resolution PNG


def test_placement_preview_uses_the_canvas_functions(app, cat):
    from photobg.masks import place_on_canvas

    selection = app.open(*map(str, cat))
    prepared = app.prepare(selection, canvas_options("4:5", "", 0.5, "bottom"))
    canvas, mask = place_on_canvas(selection.image, object_mask(selection), (120, 150), 0.5, "bottom")
    np.testing.assert_array_equal(np.asarray(prepared.image), np.asarray(canvas))
    np.testing.assert_array_equal(np.asarray(prepared.object_mask), np.asarray(mask))
    assert canvas_options("4:5", " 300x200 ", 0, None) == dict(
        size="300x200", aspect=None, object_scale=None, position="center"
    )
    with pytest.raises(ValueError, match="Size '10' is not WIDTHxHEIGHT"):
        canvas_options(None, "10", 0, "center")
    with pytest.raises(ValueError, match="Aspect ratio 'wide' is not W:H"):
        canvas_options("wide", "", 0, "center")
    with pytest.raises(ValueError, match="Guidance scale must be "):
        sampling_options(None, 2, 0.5, 1.0)


def test_progress_per_step_and_stop_between_steps(app, cat, tmp_path):
    selection = app.open(*map(str, cat))
    reports = []
    generate(app, selection, tmp_path, steps=3, num_images=2, on_step=lambda *report: reports.append(report))
    fractions = [fraction for fraction, _ in reports]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(reports) >= 6
    # Which image of how many, which step of it, and what comes after the steps; the page adds the run's share.
    texts = [text for _, text in reports]
    assert texts[:5] == [
        "ours, seed 0 (image 1 of 2): step 1 of 3",
        "ours, seed 0 (image 1 of 2): step 2 of 3",
        "ours, seed 0 (image 1 of 2): step 3 of 3, pasting the object back at full size…",
        "ours, seed 0 (image 1 of 2): saving the full-resolution PNG…",
        "ours, seed 1 (image 2 of 2): step 1 of 3",
    ]
    assert texts[-1] == "ours, seed 1 (image 2 of 2): saving the full-resolution PNG…"

    stop, seen = threading.Event(), []

    def stop_after_first_step(fraction, text):
        seen.append(text)
        stop.set()

    assert generate(app, selection, tmp_path, steps=5, num_images=2, stop=stop, on_step=stop_after_first_step) == []
    assert seen == [seen[0]] and seen[0].startswith("ours, seed 0 (image 1 of 2): step 1 of ")  # none after Stop


@pytest.mark.parametrize("edit", [False, True])
def test_the_command_of_a_result_makes_the_same_image(app, cat, tmp_path, monkeypatch, edit):
    selection = app.open(*map(str, cat))
    if edit:
        selection = apply_strokes(selection, strokes(display_size(selection.image.size), (0, 0, 20, 79)))
    (result,) = generate(app, selection, tmp_path, canvas=("4:5", "", 0.8, "top"))
    command = shlex.split(result.parameters["command"])
    assert command[:3] == ["photobg", "generate", "cat_object.png" if edit else "cat.png"]
    assert ("--mask" in command) != edit and command[command.index("--object-scale") + 1] == "0.8"
    monkeypatch.chdir(tmp_path)  # the command names the uploaded files (and the selection file) by their names
    assert main([*command[1:], "--output-dir", "cli"]) == 0
    (again,) = (tmp_path / "cli").glob("*.png")
    # The same name (photobg generate's scheme), the same pixels, the same key in the same PNG chunk.
    assert again.name == Path(result.path).name
    assert Image.open(again).tobytes() == Image.open(result.path).tobytes()
    app_record, cli_record = (json.loads(Image.open(path).info["photobg"]) for path in (result.path, again))
    assert app_record["key"] == cli_record["key"] and app_record["output"] == again.name
    # So --skip-existing keeps the app's image where the command would write it.
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / again.name).write_bytes(Path(result.path).read_bytes())
    assert main([*command[1:], "--output-dir", "kept", "--skip-existing"]) == 0
    assert (kept / again.name).read_bytes() == Path(result.path).read_bytes()
    # The app shows the command the CLI records for the same photo and settings (the CLI names the files by their
    # absolute paths, and its output folder).
    (record,) = [json.loads(line) for line in (tmp_path / "cli" / "manifest.jsonl").read_text().splitlines()]
    recorded = shlex.split(record["command"])
    at = recorded.index("--output-dir")
    del recorded[at : at + 2]
    assert [Path(word).name if word in (record["input"], record["mask"]) else word for word in recorded] == command


@pytest.fixture(scope="module")
def tcd_app(inpaint_model):
    """The app as `photobg app --recipe tcd --timesteps 999,666,333` starts it: TCD, guidance 0, eta 0.3, the
    timesteps setting the steps (3)."""
    from photobg.api import load_generator

    settings = GenerationSettings(model=str(inpaint_model), segmenter="threshold", device="cpu", recipe="tcd")
    settings.timesteps = [999, 666, 333]
    settings.resolve()
    return App(load_generator(settings), settings=settings)


def page_fields(demo):
    """({elem_id: component} of the page, {argument: component} of the `/generate` endpoint)."""
    page = {block.elem_id: block for block in demo.blocks.values() if getattr(block, "elem_id", None)}
    endpoint = next(fn for fn in demo.fns.values() if fn.api_name == "generate")
    return page, {block.label: block for block in endpoint.inputs}


def test_the_page_and_the_api_start_from_the_apps_settings(app, tcd_app):
    from photobg.app import LIMITS
    from photobg.app_page import build_app
    from photobg.settings import app_range

    page, api = page_fields(build_app(tcd_app))
    first = {name: page[name].value for name in ("steps", "guidance", "timesteps", "eta")}
    assert first == {"steps": 3, "guidance": 0, "timesteps": "999,666,333", "eta": 0.3}  # the recipe's, the flag's
    assert first == {name: api[name].value for name in first}  # the API's arguments start from the same values
    assert (page["steps"].minimum, page["steps"].maximum) == LIMITS["steps"] == app_range("num_inference_steps")
    assert (page["guidance"].minimum, page["guidance"].maximum) == LIMITS["guidance"] == (0, 20)
    assert page["timesteps"].visible and page["eta"].visible  # TCD takes both
    assert page["sampler"].value.startswith(
        "Scheduler: TCDScheduler; the tcd recipe's steps, guidance, timesteps and eta to start with. Chosen when "
    )
    # UniPC (the authors' recipe) takes neither fixed timesteps nor eta: the page does not offer them.
    page, api = page_fields(build_app(app))
    assert (page["steps"].value, page["guidance"].value, api["steps"].value, api["guidance"].value) == (2, 7.5, 2, 7.5)
    assert not page["timesteps"].visible and not page["eta"].visible
    assert page["controlnet-scale"].value == api["controlnet_scale"].value == 1.0
    assert page["sampler"].value.startswith("Scheduler: UniPCMultistepScheduler. Chosen when the app starts")


def test_the_pages_steps_and_timesteps_follow_the_command_lines_rule(app, tcd_app, cat):
    import gradio as gr

    canvas = canvas_options(*CANVAS)

    def sampled(on=tcd_app, steps=3, timesteps="999,666,333", eta=0.3):
        settings = on.settings_of(sampling_options(None, steps, 0, 1.0, timesteps=timesteps, eta=eta), canvas)
        return settings.num_inference_steps, settings.timesteps, settings.eta

    assert sampled() == (3, [999, 666, 333], 0.3)  # as the app started
    assert sampled(steps=5) == (5, None, 0.3)  # other steps drop the timesteps, as --steps drops a recipe's
    assert sampled(timesteps="999, 499") == (2, [999, 499], 0.3)  # other timesteps set the steps
    assert sampled(timesteps="", eta=None) == (3, None, None)  # evenly spread; the pipeline's eta
    for values, message in [
        (dict(steps=4, timesteps="999,499"), "Denoising steps 4 does not match Fixed timesteps (2 timesteps): the "),
        (dict(timesteps="999,x"), "Fixed timesteps '999,x' is not a comma-separated list of integers."),
        (dict(timesteps="499,999"), "Fixed timesteps: [499, 999] must be distinct timesteps in [0, 1000), in "),
        (dict(eta=-1), "Eta must be a finite number of at least 0, not -1.0."),
        (dict(on=app, steps=2, timesteps="", eta=0.5), "Eta: UniPCMultistepScheduler's step takes no eta"),
        (dict(on=app, steps=2, timesteps="999,499"), "Fixed timesteps: UniPCMultistepScheduler takes no fixed timest"),
    ]:
        with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
            sampled(**values)
    # The API takes the same fields, by the same rule.
    request = api_endpoint(tcd_app)(*map(str, cat[:1]), "a cat", mask=str(cat[1]), steps=2)
    _, (parameters,) = next(request)
    assert (parameters["num_inference_steps"], parameters["timesteps"], parameters["eta"]) == (2, None, 0.3)
    with pytest.raises(gr.Error) as error:
        next(api_endpoint(app)(*map(str, cat[:1]), "a cat", mask=str(cat[1]), timesteps="999,499"))
    assert error.value.message.startswith("Fixed timesteps: UniPCMultistepScheduler takes no fixed timesteps")


def run_page_generate(demo, selection, **fields):
    """The page's Generate handler, called as Gradio calls it with the fields' values (by elem_id; the rest as the
    page starts), until its run ends: the run's `Result`s."""
    import types

    import gradio as gr

    handler = next(fn for fn in demo.fns.values() if getattr(fn.fn, "__name__", "") == "generate_in_page")
    values = [
        (selection if i == 0 else []) if isinstance(block, gr.State) else fields.get(block.elem_id, block.value)
        for i, block in enumerate(handler.inputs)
    ]
    session = types.SimpleNamespace(session_hash="test")
    *_, last = handler.fn(*values, request=session, progress=lambda *args, **kwargs: None)
    status, results = last[6], last[7]
    assert status.startswith("Done"), status
    return results


def test_a_few_step_image_from_the_page_is_remade_by_its_command(tcd_app, cat, tmp_path, monkeypatch, capsys):
    from photobg.app_page import build_app

    demo = build_app(tcd_app)
    selection = tcd_app.open(*map(str, cat))
    (result,) = run_page_generate(demo, selection, prompt="a cat", timesteps="999,499", eta=0.5)
    parameters = result.parameters
    assert (parameters["num_inference_steps"], parameters["timesteps"], parameters["eta"]) == (2, [999, 499], 0.5)
    command = shlex.split(parameters["command"])
    for flag, value in [("--recipe", "tcd"), ("--timesteps", "999,499"), ("--eta", "0.5"), ("--guidance", "0.0")]:
        assert command[command.index(flag) + 1] == value
    monkeypatch.chdir(Path(cat[0]).parent)  # the command names the uploaded files by their names
    assert main([*command[1:], "--output-dir", str(tmp_path / "cli")]) == 0
    assert "warning: --recipe tcd expects the LoRA" in capsys.readouterr().err  # none on the tiny model
    (again,) = (tmp_path / "cli").glob("*.png")
    assert again.name == Path(result.path).name
    assert Image.open(again).tobytes() == Image.open(result.path).tobytes()


def test_uploads_that_cannot_be_used_are_messages_naming_them(app, tmp_path):
    uploads = tmp_path / "upload-cache"
    uploads.mkdir()
    Image.new("RGB", (2000, 1000)).save(uploads / "big.png")
    with pytest.raises(ValueError) as error:
        app.open(str(uploads / "big.png"))
    assert str(error.value) == "big.png: 2 megapixels; this app takes photos up to 1."
    Image.new("RGB", (100, 80)).save(uploads / "small.png")
    (uploads / "mask.png").write_text("text")
    with pytest.raises(ValueError, match=r"^small.png: mask.png: not a readable image \(cannot identify image file "):
        app.open(str(uploads / "small.png"), str(uploads / "mask.png"))
    (uploads / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match=r"^notes.png: not a readable image.$"):
        app.open(str(uploads / "notes.png"))


def test_sam_embeds_an_image_once_for_all_its_clicks(tiny_sam, monkeypatch):
    from photobg.segment import Sam

    sam = Sam(str(tiny_sam), device="cpu")
    embedded = []
    embed = sam.model.get_image_embeddings
    monkeypatch.setattr(sam.model, "get_image_embeddings", lambda *a, **k: embedded.append(1) or embed(*a, **k))
    photo = Image.fromarray(skimage.data.chelsea()).resize((90, 60))
    first = sam(photo, [[40, 30]])
    both = sam(photo, [[40, 30], [5, 5]], labels=[1, 0])
    assert first.size == both.size == photo.size and first.mode == "L"
    assert len(embedded) == 1  # the image encoder ran once; a new image runs it again
    sam(photo.copy(), [[40, 30]])
    assert len(embedded) == 2
    with pytest.raises(ValueError, match="SAM needs a prompt"):
        sam(photo)


def test_the_api_refuses_what_the_page_cannot_ask_for(app, cat, monkeypatch):
    import gradio as gr

    from photobg.app import LIMITS
    from photobg.app_page import build_app

    demo = build_app(app)
    sliders = {block.elem_id: block for block in demo.blocks.values() if isinstance(block, gr.Slider)}
    assert (sliders["num-images"].minimum, sliders["num-images"].maximum) == LIMITS["num_images"] == (1, 8)
    assert (sliders["steps"].minimum, sliders["steps"].maximum) == LIMITS["steps"] == (1, 100)

    def no_image(*args, **kwargs):
        raise AssertionError("refused values must make no image")

    monkeypatch.setattr(app.generator, "run", no_image)
    generate = api_endpoint(app)
    photo, mask = map(str, cat)
    for field, value, allowed in [
        ("num_images", 1000, "1 and 8"),
        ("num_images", 0, "1 and 8"),
        ("steps", 101, "1 and 100"),
        ("steps", 0, "1 and 100"),
        ("steps", float("nan"), "1 and 100"),
    ]:
        with pytest.raises(gr.Error) as error:
            next(generate(photo, "a cat", mask=mask, **{field: value}))
        assert error.value.message == f"{field} must be between {allowed} (the app's limit), not {value}."


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--steps", "150"], "--steps must be between 1 and 100 (the app's limit), not 150."),
        (["--guidance", "25"], "--guidance must be between 0 and 20 (the app's limit), not 25.0."),
        (["--eta", "0.5"], "--eta: UniPCMultistepScheduler's step takes no eta (DDIMScheduler and TCDScheduler do)."),
        (["--recipe", "sdxl-lightning-4"], "--recipe sdxl-lightning-4 is made for sdxl-inpainting and sdxl-base, but "),
        (["--recipe", "tcd", "--timesteps", "999,499", "--steps", "3"], "--steps 3 does not match --timesteps (2 "),
    ],
)
def test_the_app_refuses_first_values_the_page_cannot_take(inpaint_model, flags, message, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("refused values must load no model")

    monkeypatch.setattr("photobg.api.load_generator", no_loading)
    with pytest.raises(SystemExit) as error:  # checked before the model loads
        main(["app", "--model", str(inpaint_model), *flags])
    assert str(error.value.code).startswith(message)


def test_the_app_says_in_one_line_that_a_recipe_runs_without_its_lora(inpaint_model, monkeypatch, capsys):
    def loaded(settings, **kwargs):
        raise SystemExit(f"loading {settings.scheduler}")  # the checks have passed: the model would load now

    monkeypatch.setattr("photobg.api.load_generator", loaded)
    with pytest.raises(SystemExit, match="^loading TCDScheduler$"):
        main(["app", "--model", str(inpaint_model), "--recipe", "tcd"])
    assert capsys.readouterr().err.startswith("warning: --recipe tcd expects the LoRA pytorch_lora_weights.safetensors")


def test_an_api_request_whose_client_has_gone_stops_after_its_current_image(app, cat, monkeypatch):
    from pathlib import Path

    made = []
    run = app.generator.run
    monkeypatch.setattr(app.generator, "run", lambda *args, **kwargs: made.append(1) or run(*args, **kwargs))
    photo, mask = map(str, cat)
    request = api_endpoint(app)(photo, "a cat", mask=mask, num_images=3, steps=2)
    files, parameters = next(request)  # the first image, sent to the client as soon as it is made
    assert len(files) == len(parameters) == 1 and Path(files[0]).exists()
    request.close()  # what Gradio does at that point when the client has gone
    assert len(made) == 1  # no further image
    assert not Path(files[0]).exists()  # and the request's folder is removed
