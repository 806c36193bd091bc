"""`photobg app`, its page: the Gradio Blocks (one canvas for the photo, the results beside it, advanced settings
folded), and their wiring to the `App`'s handlers (photobg.app); the `/generate` API endpoint is `app_endpoint`'s.

`photobg.app` holds the app's behaviour apart from Gradio (the `App`, its handlers and checks); this room only lays
out the page and connects its events to them.
"""

from pathlib import Path

from .app import (
    ASPECTS,
    DEFAULT,
    LIMITS,
    POINT_MODES,
    App,
    _highlight,
    canvas_options,
    check_limits,
    sampling_options,
)
from .app_endpoint import api_endpoint
from .settings import GenerationSettings, app_range, label, timesteps_text

HELP = "A web app (Gradio): click or paint the object, place it, generate new backgrounds, compare, download."
CSS = "#strip .grid-container { grid-template-columns: repeat(auto-fill, minmax(140px, 1fr)) !important; }"
# System fonts only: the app must not fetch anything (fonts included) from the internet.
FONTS = dict(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


def add_arguments(parser):
    from .defaults import DEFAULT_APP_SAM_MODEL, TEST_SAM_MODEL

    GenerationSettings.add_arguments(parser, {"model": parser})
    GenerationSettings.add_argument(
        parser, "segmenter", help="finds the object in photos uploaded without alpha or mask (default: %(default)s)"
    )
    parser.add_argument(
        "--sam-model",
        default=DEFAULT_APP_SAM_MODEL,
        help=f"SAM for clicked points: Hub id or folder with a SamModel and its SamProcessor; {TEST_SAM_MODEL} "
        "builds a random one offline (default: %(default)s)",
    )
    # The scheduler is the app's (chosen at start, as a recipe's LoRA loads at start); the rest start the page's fields.
    GenerationSettings.add_argument(
        parser,
        "recipe",
        help="a named sampling recipe (docs/recipes.md): the scheduler and its options, and the page's first steps, "
        "guidance, timesteps and eta; --lora loads its LoRA; explicit flags override it",
    )
    for name, what in [
        ("num_inference_steps", "denoising steps"),
        ("guidance_scale", "guidance scale"),
        ("timesteps", "fixed timesteps (a scheduler that takes them; they set the steps)"),
        ("eta", "eta (a scheduler whose step takes it; default: the pipeline's, 0)"),
    ]:
        default = (
            " (default: %(default)s, or the recipe's)" if name in ("num_inference_steps", "guidance_scale") else ""
        )
        GenerationSettings.add_argument(parser, name, help=f"the page's first {what}{default}")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: %(default)s)")
    parser.add_argument("--max-upload-mb", type=float, default=25, help="largest upload (default: %(default)s MB)")
    parser.add_argument(
        "--max-megapixels", type=float, default=40, help="largest photo, in megapixels (default: %(default)s)"
    )


def run(args):
    import os

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    from .api import load_generator
    from .generation.run import warnings_as_lines

    settings = GenerationSettings.from_args(args)
    try:  # the sliders' first values, then the model's settings (a recipe without its LoRA: one `warning:` line)
        check_limits({"steps": "--steps", "guidance": "--guidance"}, steps=settings.num_inference_steps,
                     guidance=settings.guidance_scale)  # fmt: skip
        with warnings_as_lines():
            settings.check_model()
    except ValueError as err:
        raise SystemExit(str(err)) from None
    generator = load_generator(settings, fuse_loras=False)  # LoRAs stay adapters: the page changes the scale
    app = App(generator, sam_model=args.sam_model, max_megapixels=args.max_megapixels, settings=settings)
    found_by = app.segmenter_problem or f"the {settings.segmenter} segmenter finds their object."
    print(f"Photos without alpha or mask: {found_by}", flush=True)
    demo = build_app(app)
    demo.queue(default_concurrency_limit=1).launch(
        server_name=args.host,
        server_port=args.port,
        max_file_size=f"{args.max_upload_mb:g}mb",
        theme=gr.themes.Default(**FONTS),
        css=CSS,
        show_error=True,
    )


def build_app(app):
    """The Gradio Blocks of the app.

    Args:
        app: the `App` (the generator and the settings it serves; its settings give the fields' first values).

    Returns:
        `gradio.Blocks`, ready to `.queue()` and `.launch()`.
    """
    import gradio as gr

    # Uploads and results are cached on disk; an hourly sweep removes those older than an hour.
    with gr.Blocks(title="photobg", delete_cache=(3600, 3600)) as demo:
        ui = _layout(app)
        _wire_object(app, ui)
        _wire_generation(app, ui)
        api_endpoint(app)

        def end_session(request: gr.Request):  # a closed tab: its PNGs go
            app.end_session(request.session_hash)

        demo.unload(end_session)
        demo.load(None, js=DROP_ON_CANVAS)
    return demo


# The canvas is a drop target: a photo dropped anywhere on it is uploaded as the photo.
DROP_ON_CANVAS = """() => {
    const area = document.querySelector('#canvas-area');
    area.addEventListener('dragover', (event) => event.preventDefault());
    area.addEventListener('drop', (event) => {
        const input = document.querySelector('#photo input[type=file]');
        if (!event.dataTransfer?.files?.length || !input || event.target.closest('#photo, #mask')) return;
        event.preventDefault();
        input.files = event.dataTransfer.files;
        input.dispatchEvent(new Event('change', {bubbles: true}));
    });
    area.dataset.dropTarget = 'ready';
}"""


def _layout(app):
    """The components, in a namespace (the LoRA scale and the reference image only where the model has them)."""
    import types

    import gradio as gr

    ui = types.SimpleNamespace(selection=gr.State(None), results=gr.State([]), history=gr.State([]), layer=gr.State())
    ui.session = gr.State([])  # the `Result`s of every run of the session, which the strip shows
    ui.placement = gr.State(())  # the canvas fields as of the last upload or placement change, kept by the server
    shown = dict(type="pil", format="png", interactive=False)  # images the app draws (PNG: no lossy colours)
    gr.Markdown(
        "**photobg**: a new background around your object, which stays exactly as it is. **1.** Drop a photo on "
        "the canvas (an RGBA cutout, or a photo and optionally its mask, white = object) and check the object, "
        "tinted blue: click on or off it, or paint it. **2.** Place it. **3.** Generate."
    )
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=360, elem_id="canvas-area"):  # the canvas: drop a photo anywhere on it
            with gr.Row():
                ui.photo = gr.File(label="Photo or RGBA cutout", file_types=["image"], height=90, elem_id="photo")
                ui.mask = gr.File(
                    label="Object mask (optional, white = object)", file_types=["image"], height=90, elem_id="mask"
                )
            _canvas_tabs(ui, shown)
            with gr.Row():
                ui.undo = gr.Button("Undo", size="sm", elem_id="undo")
                ui.clear_clicks = gr.Button("Clear clicks", size="sm", elem_id="clear-clicks")
                ui.clear_strokes = gr.Button("Clear strokes", size="sm", elem_id="clear-strokes")
            ui.object_status = gr.Markdown(_welcome(app), elem_id="object-status")
            _placement(ui)
        with gr.Column(scale=4, min_width=320, elem_id="results-area"):
            ui.prompt = gr.Textbox(
                label="Prompt", placeholder="a bottle of perfume on a marble table, soft light", elem_id="prompt"
            )
            with gr.Row():
                ui.generate = gr.Button("Generate", variant="primary", scale=4, min_width=120, elem_id="generate")
                # Stop: small, and enabled only while a run goes on (`_wire_generation`).
                ui.stop = gr.Button(
                    "Stop", variant="stop", size="sm", scale=1, min_width=60, interactive=False, elem_id="stop"
                )
            with gr.Row():
                ui.num_images = gr.Slider(
                    *LIMITS["num_images"], value=1, step=1, label="Number of images", elem_id="num-images"
                )
                ui.seed = gr.Number(value=0, precision=0, label="Seed (-1: random)", elem_id="seed")
            ui.compare = gr.Checkbox(label="Compare with plain SD2-inpainting (SI2, ControlNet off)", elem_id="compare")
            ui.status = gr.Markdown(elem_id="status")
            ui.gallery = gr.Gallery(  # previews: the full-resolution PNG is the download button's
                label="Results (select one to compare it)",
                format="png",
                columns=2,
                height=240,
                object_fit="contain",
                buttons=["fullscreen"],
                elem_id="results",
            )
            ui.slider = gr.ImageSlider(
                label="Before | after", type="pil", format="png", max_height=320, elem_id="slider"
            )
            ui.download = gr.DownloadButton(
                "Download this image (full-resolution PNG)", visible=False, size="sm", elem_id="download"
            )
            ui.command = gr.Textbox(label="The same image from the command line", buttons=["copy"], elem_id="command")
            ui.object_file = gr.File(
                label="Your edited object (RGBA PNG; the command reads it)", visible=False, elem_id="object-file"
            )
            with gr.Accordion("Parameters", open=False):
                ui.parameters = gr.JSON(label="Parameters", elem_id="parameters")
            _advanced(ui, app)
    with gr.Row():
        ui.strip = gr.Gallery(
            label="This session's results (select one to compare it; prompt, seed and settings below each)",
            format="png",
            columns=8,
            height=190,
            object_fit="contain",  # whole images, not cropped (`CSS`: small tiles however few)
            allow_preview=False,
            elem_id="strip",
        )
    ui.download_all = gr.DownloadButton("Download all (zip)", visible=False, size="sm", elem_id="download-all")
    ui.result_views = [ui.gallery, ui.slider, ui.command, ui.object_file, ui.parameters, ui.download, ui.status]
    ui.result_views += [ui.results]
    return ui


def _canvas_tabs(ui, shown):
    """The one canvas: the photo with its object tinted, to click on, to paint on, or placed on the output canvas."""
    import gradio as gr

    from .selection import ADD_COLOUR, REMOVE_COLOUR, STROKE_OPACITY

    with gr.Tabs(elem_id="canvas-tabs") as ui.tabs:
        with gr.Tab("Click", id="click-tab"):
            ui.view = gr.Image(label="Click on or off the object (blue = kept)", elem_id="selection", **shown)
            ui.point_mode = gr.Radio(
                POINT_MODES, value=POINT_MODES[0], label="A click is", container=False, elem_id="point-mode"
            )
        with gr.Tab("Brush", id="brush-tab"):
            colours = ["#{:02x}{:02x}{:02x}".format(*ADD_COLOUR), "#{:02x}{:02x}{:02x}".format(*REMOVE_COLOUR)]
            swatch = '<span style="display:inline-block;width:1em;height:1em;background:{}"></span>'
            gr.HTML(  # the editor's colour swatches carry no names: this says what each does
                f"{swatch.format(colours[0])} Green: adds to the object &nbsp; {swatch.format(colours[1])} "
                "Red: removes from it &nbsp; Eraser: takes strokes back",
                elem_id="brush-legend",
            )
            ui.editor = gr.ImageEditor(
                label="Paint the object",
                type="pil",
                sources=(),
                transforms=(),
                layers=gr.LayerOptions(allow_additional_layers=False),
                brush=gr.Brush(colors=[(c, STROKE_OPACITY) for c in colours], color_mode="fixed", default_size="auto"),
                eraser=gr.Eraser(),
                elem_id="editor",
            )
        with gr.Tab("Placement", id="placement-tab"):
            ui.preview = gr.Image(label="The output canvas with the object placed", elem_id="preview", **shown)


def _placement(ui):
    """The placement fields, under the canvas (a change shows the Placement tab)."""
    import gradio as gr

    from .defaults import POSITIONS

    with gr.Row():
        ui.aspect = gr.Dropdown(
            ASPECTS, value=ASPECTS[0], allow_custom_value=True, label="Aspect ratio", min_width=120, elem_id="aspect"
        )
        ui.size = gr.Textbox(label="or exact size WxH", placeholder="1024x1024", min_width=120, elem_id="size")
        ui.object_scale = gr.Slider(
            *app_range("object_scale"),
            value=0,  # 0 = None: the photo's own framing
            step=0.05,
            label=f"{label('object_scale')} (0 = keep the framing)",
            min_width=160,
            elem_id="object-scale",
        )
        ui.position = gr.Dropdown(
            list(POSITIONS), value=DEFAULT.position, label="Position", min_width=120, elem_id="position"
        )


def _advanced(ui, app):
    """The advanced settings, folded: negative prompt, sampling (starting from the app's settings: its recipe's), the
    timesteps and eta where the scheduler takes them, and the adapters' scales where the model has them."""
    import gradio as gr

    from .models import takes_eta, takes_timesteps

    settings, scheduler = app.settings, type(app.generator.pipe.scheduler)
    with gr.Accordion("Advanced settings", open=False, elem_id="advanced"):
        gr.Markdown(_sampler_note(app), elem_id="sampler")
        ui.negative_prompt = gr.Textbox(label="Negative prompt")
        ui.steps = gr.Slider(
            *LIMITS["steps"], value=settings.num_inference_steps, step=1, label=label("num_inference_steps"),
            elem_id="steps",
        )  # fmt: skip
        ui.guidance = gr.Slider(
            *LIMITS["guidance"], value=settings.guidance_scale, step=0.5, label=label("guidance_scale"),
            elem_id="guidance",
        )  # fmt: skip
        ui.timesteps = gr.Textbox(
            timesteps_text(settings.timesteps),
            label=f"{label('timesteps')} (descending, comma-separated; they set the steps; empty: evenly spread)",
            visible=takes_timesteps(scheduler),
            elem_id="timesteps",
        )
        ui.eta = gr.Number(
            settings.eta,
            label=f"{label('eta')} (the scheduler step's noise; empty: the pipeline's, 0)",
            visible=takes_eta(scheduler),
            elem_id="eta",
        )
        ui.controlnet_scale = gr.Slider(
            *app_range("controlnet_conditioning_scale"),
            value=DEFAULT.controlnet_conditioning_scale,
            step=0.05,
            label=f"{label('controlnet_conditioning_scale')} (0 = SI2)",
            elem_id="controlnet-scale",
        )
        one_lora = app.loras[0] if len(app.loras) == 1 else None
        ui.lora_scale = gr.Slider(
            -1,
            2,
            value=one_lora.scale if one_lora else 0,  # hidden without a single LoRA
            step=0.05,
            label=f"LoRA scale ({Path(one_lora.path).name if one_lora else ''}; 0 = off)",
            visible=one_lora is not None,
            elem_id="lora-scale",
        )
        has_ip_adapter = app.generator.has_ip_adapter
        ui.reference = gr.Image(
            type="filepath",
            label="Reference image: the background's style (IP-Adapter; optional)",
            visible=has_ip_adapter,
            elem_id="reference",
        )
        ui.ip_adapter_scale = gr.Slider(
            *app_range("ip_adapter_scale"),
            value=app.generator.ip_adapter_scale if has_ip_adapter else DEFAULT.ip_adapter_scale,
            step=0.05,
            label="Reference strength (IP-Adapter scale; 0 = off)",
            visible=has_ip_adapter,
            elem_id="ip-adapter-scale",
        )


def _sampler_note(app):
    """Which scheduler the app samples with, and its recipe: both chosen when the app starts."""
    options = app.settings.scheduler_options
    options = options.items() if isinstance(options, dict) else [option.split("=", 1) for option in options]
    text = f"Scheduler: {type(app.generator.pipe.scheduler).__name__}"
    text += "".join(f", {key}={value}" for key, value in options)
    recipe = app.settings.recipe
    text += f"; the {recipe} recipe's steps, guidance, timesteps and eta to start with" if recipe else ""
    return f"{text}. Chosen when the app starts (`photobg app --recipe NAME`, `--scheduler NAME`; docs/recipes.md)."


def _selection_views(app, selection, canvas_fields, layer=None):
    """What the page shows for a selection: (selection, click view, editor value, preview, object status).

    The editor gets the photo with the object before brush strokes tinted, and `layer` (its strokes) kept."""
    from .selection import object_mask, overlay

    if selection is None:
        return None, None, None, None, _welcome(app)
    editor = {
        "background": overlay(selection, with_points=False, mask=object_mask(selection, strokes=False)),
        "layers": [layer] if layer else [],
        "composite": None,
    }
    return selection, overlay(selection), editor, *_preview(app, selection, canvas_fields)


def _welcome(app):
    """The object status before a photo is uploaded: what to upload, and what finds the object of a plain photo."""
    found_by = app.segmenter_problem or f"the {app.generator.segmenter} segmenter finds the object of a plain photo."
    return f"Upload a photo (or an RGBA cutout, or a photo and its mask) to start. {found_by}"


def _preview(app, selection, canvas_fields):
    """(preview image, status) for the canvas fields; a problem is the status and no preview."""
    from .selection import describe

    if selection.source == "none" and not selection.edited:  # no segmenter: the user gives the object
        return None, f"{describe(selection)} {app.segmenter_problem}"
    try:
        prepared = app.prepare(selection, canvas_options(*canvas_fields))
    except ValueError as err:
        return None, f"⚠ {err}"
    return _highlight(prepared), app.describe(selection, prepared)


def _wire_object(app, ui):
    """Upload, clicks, brush, undo and clearing, and the canvas: each updates the selection and the preview."""
    import gradio as gr

    from .selection import apply_strokes, clear_clicks, clear_strokes, overlay

    canvas = [ui.aspect, ui.size, ui.object_scale, ui.position]
    views = [ui.selection, ui.view, ui.editor, ui.preview, ui.object_status]
    edits = [ui.history, ui.layer]  # the undo history and the strokes layer the selection holds

    def load(photo, mask, *canvas_fields):  # a new photo: the last one's edits and results are cleared too
        if photo is None:
            return *_selection_views(app, None, canvas_fields), [], None, *_no_results(), canvas_fields
        try:
            selection = app.open(photo, mask)
        except ValueError as err:
            return None, None, None, None, f"⚠ {err}", [], None, *_no_results(), canvas_fields
        return *_selection_views(app, selection, canvas_fields), [], None, *_no_results(), canvas_fields

    def edited(history, selection, layer, new_selection, new_layer, canvas_fields):
        """The outputs after an edit: the new views, and the state before it remembered for Undo."""
        views = _selection_views(app, new_selection, canvas_fields, new_layer)
        return *views, remember(history, selection, layer), new_layer

    def click(selection, history, layer, mode, canvas_fields, evt: gr.SelectData):
        x, y = evt.index if isinstance(evt.index, (list, tuple)) else (-1, -1)
        try:
            clicked = app.click(selection, x, y, 1 if mode == POINT_MODES[0] else 0)
        except ValueError as err:
            return *(gr.skip(),) * 4, f"⚠ {err}", gr.skip(), gr.skip()
        return edited(history, selection, layer, clicked, layer, canvas_fields)

    def brush(selection, history, layer, editor, canvas_fields):
        if selection is None:
            return gr.skip(), gr.skip(), gr.skip(), "Upload a photo first.", gr.skip(), gr.skip()
        new_layer = _layer(editor)
        if _same_layer(new_layer, layer):  # the editor re-sends its strokes when a handler sets its value
            return (gr.skip(),) * 6
        painted = apply_strokes(selection, new_layer)
        history = remember(history, selection, layer)
        return painted, overlay(painted), *_preview(app, painted, canvas_fields), history, new_layer

    def clear(which):
        def handler(selection, history, layer, canvas_fields):
            if selection is None:
                return (gr.skip(),) * 7
            cleared = clear_clicks(selection) if which == "clicks" else clear_strokes(selection)
            return edited(history, selection, layer, cleared, layer if which == "clicks" else None, canvas_fields)

        return handler

    def undo_edit(history, canvas_fields):
        last, history = undo(history)
        if last is None:
            return (gr.skip(),) * 4 + ("Nothing to undo.", [], gr.skip())
        selection, layer = last
        return *_selection_views(app, selection, canvas_fields, layer), history, layer

    def preview(selection, *canvas_fields):  # shown on the canvas's Placement tab
        if selection is None:
            return None, gr.skip(), gr.skip(), canvas_fields
        return *_preview(app, selection, canvas_fields), gr.Tabs(selected="placement-tab"), canvas_fields

    # The selection's events run one at a time, in the order they were sent, and the edits read the canvas fields
    # the server keeps (`ui.placement`), not the ones their event carries: the editor may send a stroke seconds
    # late, with the fields of its own time, which would show an old placement over the newer one.
    private = dict(api_visibility="private", concurrency_id="selection", concurrency_limit=1)
    loaded = views + edits + ui.result_views + [ui.placement]
    for upload in (ui.photo, ui.mask):
        upload.change(load, [ui.photo, ui.mask, *canvas], loaded, **private)
    ui.view.select(click, [ui.selection, *edits, ui.point_mode, ui.placement], views + edits, **private)
    # A stroke sends the layer; while one is being handled, only the latest waiting one runs. No overlay on the
    # views while it runs: the editor sends its layer again whenever a handler sets its value.
    ui.editor.input(
        brush,
        [ui.selection, *edits, ui.editor, ui.placement],
        [ui.selection, ui.view, ui.preview, ui.object_status, *edits],
        trigger_mode="always_last",
        show_progress="minimal",
        **private,
    )
    ui.clear_clicks.click(clear("clicks"), [ui.selection, *edits, ui.placement], views + edits, **private)
    ui.clear_strokes.click(clear("strokes"), [ui.selection, *edits, ui.placement], views + edits, **private)
    ui.undo.click(undo_edit, [ui.history, ui.placement], views + edits, **private)
    placed = [ui.preview, ui.object_status, ui.tabs, ui.placement]
    for field in (ui.aspect, ui.object_scale, ui.position):
        field.change(preview, [ui.selection, *canvas], placed, **private)
    for event in (ui.size.submit, ui.size.blur):
        event(preview, [ui.selection, *canvas], placed, **private)


UNDO_DEPTH = 20  # edits that Undo can take back


def remember(history, selection, layer):
    """The page's undo history with the state before an edit added: (selection, strokes layer); the last
    `UNDO_DEPTH` are kept."""
    return [*history, (selection, layer)][-UNDO_DEPTH:]


def undo(history):
    """(the state before the last edit, the history without it); (None, []) when there is nothing to undo."""
    if not history:
        return None, []
    return history[-1], history[:-1]


def _layer(editor):
    """The strokes layer of the editor's value (None when there is none)."""
    layers = (editor or {}).get("layers") or []
    return layers[0] if layers else None


def _same_layer(new, old):
    """Whether two strokes layers (PIL images or None; an empty layer is none) hold the same strokes."""
    import numpy as np

    def strokes(layer):
        rgba = None if layer is None else np.asarray(layer.convert("RGBA"))
        return None if rgba is None or not rgba[..., 3].any() else rgba

    new, old = strokes(new), strokes(old)
    return new is old if new is None or old is None else np.array_equal(new, old)  # (unequal shapes: not equal)


def _wire_generation(app, ui):
    """Generate (streaming results, per-step progress), Stop, and a result's details when it is selected."""
    import gradio as gr

    def generate_in_page(
        selection,
        prompt,
        num_images,
        seed,
        compare,
        negative_prompt,
        steps,
        guidance,
        controlnet_scale,
        aspect,
        size,
        object_scale,
        position,
        timesteps,
        eta,
        lora_scale,
        reference,
        ip_adapter_scale,
        session,
        request: gr.Request,
        progress=gr.Progress(),  # noqa: B008 (Gradio fills it in)
    ):
        if selection is None:
            yield _status_only("⚠ Upload a photo (or an RGBA cutout) first.")
            return
        try:
            lora_scale = lora_scale if len(app.loras) == 1 else None
            options = sampling_options(
                negative_prompt, steps, guidance, controlnet_scale, lora_scale, reference, ip_adapter_scale,
                timesteps, eta,
            )  # fmt: skip
            canvas = canvas_options(aspect, size, object_scale, position)
        except ValueError as err:
            yield _status_only(f"⚠ {err}")
            return

        def on_step(fraction, text):
            progress(fraction, desc=f"{text}. All images:")  # the bar adds the share of the run: "- 40.0%"

        seed = None if seed is None or seed < 0 else int(seed)
        run = (selection, prompt, num_images, seed, compare, options, canvas)
        yield (*_no_results("Starting…"), *(gr.skip(),) * 3)  # nothing of the last run stays as if this one's
        folder, wanted = app.run_folder(request.session_hash), int(num_images) * (2 if compare else 1)
        with app.stoppable(request.session_hash) as stop:
            yield from _stream(app, run, folder, stop, on_step, wanted, session)

    def stop(request: gr.Request):
        app.stop(request.session_hash)  # the generation itself says when it has stopped

    def show(results, evt: gr.SelectData):
        if not results or not 0 <= evt.index < len(results):
            return (gr.skip(),) * 5
        return _show_result(results[evt.index])

    inputs = [ui.selection, ui.prompt, ui.num_images, ui.seed, ui.compare, ui.negative_prompt, ui.steps]
    inputs += [ui.guidance, ui.controlnet_scale, ui.aspect, ui.size, ui.object_scale, ui.position]
    inputs += [ui.timesteps, ui.eta, ui.lora_scale, ui.reference, ui.ip_adapter_scale]
    outputs = ui.result_views + [ui.strip, ui.session, ui.download_all]
    # Generate is disabled and Stop enabled while the run goes on; both as they were when it ends, however.
    buttons = dict(fn=_buttons, outputs=[ui.generate, ui.stop], queue=False, show_progress="hidden")
    ui.generate.click(inputs=gr.State(True), **buttons, api_visibility="private").then(
        generate_in_page, inputs + [ui.session], outputs, api_visibility="private", show_progress_on=ui.gallery
    ).then(inputs=gr.State(False), **buttons, api_visibility="private")
    # A setting or the object changed after a run: the results shown are marked as those of earlier settings
    # (in the browser, so that it does not wait behind a running generation).
    for field in inputs[1:] + [ui.view, ui.editor]:
        event = {ui.view: ui.view.select, ui.editor: ui.editor.input}.get(field, field.change)
        event(None, None, ui.status, js=MARK_STALE, queue=False, api_visibility="private")
    # Stop must not wait behind the generation it stops.
    ui.stop.click(stop, None, None, concurrency_limit=None, api_visibility="private")
    details = [ui.slider, ui.command, ui.object_file, ui.parameters, ui.download]
    ui.gallery.select(show, ui.results, details, api_visibility="private")
    ui.strip.select(show, ui.session, details, api_visibility="private")


def _buttons(running):
    """(Generate, Stop): only one of them can be pressed."""
    import gradio as gr

    return gr.update(interactive=not running), gr.update(interactive=running)


def _stream(app, run, folder, stop, on_step, wanted, session):
    """The generate event's outputs after each image, then a last status; problems are the status.

    Args:
        app: the `App`; run: `App.generate`'s first arguments; folder: the run's (`App.run_folder`); stop,
            on_step: as `App.generate` takes them; wanted: how many images the run makes; session: the
            `Result`s of the session's earlier runs.

    Yields:
        The values of the gallery, slider, command, object file, parameters, status, this run's results, the
        session's strip, the session's results and "Download all".
    """
    import gradio as gr

    results = []
    try:
        for result in app.generate(*run, folder, stop, on_step):
            results.append(result)
            done = [*session, *results]
            shown = (*_show_results(results), f"{len(results)} of {wanted} image(s) done…", results)
            yield (*shown, _strip(done), done, gr.skip())
    except ValueError as err:
        yield _status_only(f"⚠ {err}")
        return
    status = f"Stopped: {len(results)} of {wanted} image(s) done." if stop.is_set() else f"Done: {wanted} image(s)."
    if not results:
        yield _status_only(status)
        return
    done = [*session, *results]
    zipped = zip_results(done, Path(folder).parent / "photobg-results.zip")
    download = gr.update(value=str(zipped), visible=True)
    yield (*(gr.skip(),) * 6, status, results, _strip(done), done, download)  # the rest is shown already


def _strip(results):
    """The session strip's value: each result's preview with its label, prompt and sampling settings."""
    return [(result.preview, _caption(result)) for result in results]


def _caption(result):
    p = result.parameters
    prompt = p["prompt"] if len(p["prompt"]) <= 40 else p["prompt"][:39] + "…"
    settings = f"{p['num_inference_steps']} steps, guidance {p['guidance_scale']:g}"
    return f"{result.label} · {prompt or '(no prompt)'} · {settings}, ControlNet {p['controlnet_conditioning_scale']:g}"


def zip_results(results, path):
    """One zip of results' PNGs, each under its run's folder name (two runs may make files of one name), and
    the edited objects their commands read. Stored, not compressed: PNGs are compressed already.

    Returns:
        `path`.
    """
    import zipfile

    written = set()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for result in results:
            for file in filter(None, [result.path, result.object_file]):
                name = f"{Path(file).parent.name}/{Path(file).name}"
                if name not in written:
                    archive.write(file, name)
                    written.add(name)
    return path


# The status after a setting or the object changed: kept while nothing is shown or a run is going on.
MARK_STALE = """() => {
    const status = document.querySelector('#status');
    const shown = document.querySelector('#command textarea')?.value;
    const text = status ? status.innerText.trim() : '';
    if (!shown || text.startsWith('Starting') || text.includes('done…')) return text;
    return 'Settings or object changed since these results: the command and parameters shown are theirs. '
        + 'Generate to make new ones.';
}"""


def _no_results(status=""):
    """The generate event's outputs with nothing shown: gallery, slider, command, object file, parameters,
    download, status, results."""
    import gradio as gr

    hidden = gr.update(value=None, visible=False)
    return [], None, "", hidden, None, hidden, status, []


def _status_only(status):
    """The generate event's outputs that change only the status."""
    import gradio as gr

    return (gr.skip(),) * 6 + (status,) + (gr.skip(),) * 4


def _show_results(results):
    """(gallery, then the last result's details) for the results so far; the gallery shows previews."""
    gallery = [(result.preview, result.label) for result in results]
    return (gallery, *_show_result(results[-1]))


def _show_result(result):
    """(slider, command, object file, parameters, download) of one result: previews on the slider, the
    full-resolution PNG on the download button."""
    import gradio as gr

    object_file = gr.update(value=result.object_file, visible=result.object_file is not None)
    download = gr.update(value=result.path, visible=True)
    return (result.before, result.preview), result.parameters["command"], object_file, result.parameters, download
