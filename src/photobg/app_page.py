"""`photobg app`: its flags and entry point, the Gradio page, its wiring to the `App`'s handlers (`photobg.app`),
and the `/generate` API endpoint.

`photobg.app` holds the app's behaviour apart from Gradio (the `App`, its handlers and checks); this room only lays
out the page and connects its events to them.
"""

import threading

from .app import (
    API_DESCRIPTION,
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
from .settings import GenerationSettings, app_range, label

HELP = "A web app (Gradio): click or paint the object, place it, generate new backgrounds, compare, download."
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
    GenerationSettings.add_argument(
        parser, "num_inference_steps", help="default denoising steps (default: %(default)s)"
    )
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

    settings = GenerationSettings.from_args(args)
    try:
        check_limits({"steps": "--steps"}, steps=settings.num_inference_steps)  # the steps slider's initial value
        settings.check_model()
    except ValueError as err:
        raise SystemExit(str(err)) from None
    generator = load_generator(settings, fuse_loras=False)  # LoRAs stay adapters: the page changes the scale
    app = App(generator, sam_model=args.sam_model, max_megapixels=args.max_megapixels, settings=settings)
    demo = build_app(app, default_steps=settings.num_inference_steps)
    demo.queue(default_concurrency_limit=1).launch(
        server_name=args.host,
        server_port=args.port,
        max_file_size=f"{args.max_upload_mb:g}mb",
        theme=gr.themes.Default(**FONTS),
        show_error=True,
    )


def build_app(app, default_steps=DEFAULT.num_inference_steps):
    """The Gradio Blocks of the app.

    Args:
        app: the `App` (the generator and the settings it serves).
        default_steps: initial value of the steps slider.

    Returns:
        `gradio.Blocks`, ready to `.queue()` and `.launch()`.
    """
    import gradio as gr

    # Uploads and results are cached on disk; an hourly sweep removes those older than an hour.
    with gr.Blocks(title="photobg", delete_cache=(3600, 3600)) as demo:
        ui = _layout(default_steps, app)
        _wire_object(app, ui)
        _wire_generation(app, ui)
        _api_endpoint(app, default_steps)
    return demo


def _layout(default_steps, app):
    """The components, in a namespace (the LoRA scale and the reference image only where the model has them)."""
    import types
    from pathlib import Path

    import gradio as gr

    from .defaults import POSITIONS
    from .selection import ADD_COLOUR, REMOVE_COLOUR

    ui = types.SimpleNamespace(selection=gr.State(None), results=gr.State([]))
    shown = dict(type="pil", format="png", interactive=False)  # images the app draws (PNG: no lossy colours)
    gr.Markdown(
        "# photobg\nA new background around your object, which stays exactly as it is. **1.** Upload a photo "
        "(an RGBA cutout, or a photo and optionally its mask, white = object) and check the object, tinted blue: "
        "click points on or off it, or paint with the brush. **2.** Place it on the canvas. **3.** Generate."
    )
    with gr.Row():
        with gr.Column(scale=1):
            with gr.Row():
                ui.photo = gr.File(label="Photo or RGBA cutout", file_types=["image"], elem_id="photo")
                ui.mask = gr.File(label="Object mask (optional, white = object)", file_types=["image"], elem_id="mask")
            with gr.Tabs():
                with gr.Tab("Click", id="click-tab"):
                    ui.view = gr.Image(
                        label="Click to mark points (blue = the object kept)", elem_id="selection", **shown
                    )
                    with gr.Row():
                        ui.point_mode = gr.Radio(
                            POINT_MODES, value=POINT_MODES[0], label="A click is", elem_id="point-mode"
                        )
                        ui.reset = gr.Button("Reset to the automatic object", elem_id="reset")
                with gr.Tab("Brush", id="brush-tab"):
                    colours = ["#{:02x}{:02x}{:02x}".format(*ADD_COLOUR), "#{:02x}{:02x}{:02x}".format(*REMOVE_COLOUR)]
                    ui.editor = gr.ImageEditor(
                        label="Green adds to the object, red removes from it; the eraser takes strokes back",
                        type="pil",
                        sources=(),
                        transforms=(),
                        layers=gr.LayerOptions(allow_additional_layers=False),
                        brush=gr.Brush(colors=[(c, 0.6) for c in colours], color_mode="fixed", default_size="auto"),
                        eraser=gr.Eraser(),
                        elem_id="editor",
                    )
            ui.object_status = gr.Markdown("Upload a photo (or an RGBA cutout) to start.", elem_id="object-status")
            with gr.Row():
                ui.aspect = gr.Dropdown(
                    ASPECTS, value=ASPECTS[0], allow_custom_value=True, label="Aspect ratio", elem_id="aspect"
                )
                ui.size = gr.Textbox(label="or exact size WxH", placeholder="1024x1024", elem_id="size")
            with gr.Row():
                ui.object_scale = gr.Slider(
                    *app_range("object_scale"),
                    value=0,  # 0 = None: the photo's own framing
                    step=0.05,
                    label=f"{label('object_scale')} (0 = keep the framing)",
                    elem_id="object-scale",
                )
                ui.position = gr.Dropdown(list(POSITIONS), value=DEFAULT.position, label="Position", elem_id="position")
            ui.preview = gr.Image(label="Preview: the canvas with the object placed", elem_id="preview", **shown)
        with gr.Column(scale=1):
            ui.prompt = gr.Textbox(
                label="Prompt", placeholder="a bottle of perfume on a marble table, soft light", elem_id="prompt"
            )
            with gr.Row():
                ui.num_images = gr.Slider(
                    *LIMITS["num_images"], value=1, step=1, label="Number of images", elem_id="num-images"
                )
                ui.seed = gr.Number(value=0, precision=0, label="Seed (-1: random)", elem_id="seed")
            ui.compare = gr.Checkbox(label="Compare with plain SD2-inpainting (SI2, ControlNet off)", elem_id="compare")
            with gr.Accordion("Sampling", open=False):
                ui.negative_prompt = gr.Textbox(label="Negative prompt")
                ui.steps = gr.Slider(
                    *LIMITS["steps"], value=default_steps, step=1, label=label("num_inference_steps"), elem_id="steps"
                )
                ui.guidance = gr.Slider(
                    *app_range("guidance_scale"),
                    value=DEFAULT.guidance_scale,
                    step=0.5,
                    label=label("guidance_scale"),
                )
                ui.controlnet_scale = gr.Slider(
                    *app_range("controlnet_conditioning_scale"),
                    value=DEFAULT.controlnet_conditioning_scale,
                    step=0.05,
                    label=f"{label('controlnet_conditioning_scale')} (0 = SI2)",
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
            with gr.Row():
                ui.generate = gr.Button("Generate", variant="primary", elem_id="generate")
                ui.stop = gr.Button("Stop", variant="stop", elem_id="stop")
            ui.status = gr.Markdown(elem_id="status")
            ui.gallery = gr.Gallery(
                label="Results: full-resolution PNGs",
                format="png",
                columns=2,
                buttons=["download", "fullscreen"],
                elem_id="results",
            )
            ui.slider = gr.ImageSlider(label="Before | after", type="pil", format="png", elem_id="slider")
            ui.command = gr.Textbox(label="The same image from the command line", buttons=["copy"], elem_id="command")
            ui.object_file = gr.File(
                label="Your edited object (RGBA PNG; the command reads it)", visible=False, elem_id="object-file"
            )
            ui.parameters = gr.JSON(label="Parameters", elem_id="parameters")
    return ui


def _selection_views(app, selection, canvas_fields, layer=None):
    """What the page shows for a selection: (selection, click view, editor value, preview, object status).

    The editor gets the photo with the object before brush strokes tinted, and `layer` (its strokes) kept."""
    from .selection import overlay

    if selection is None:
        return None, None, None, None, "Upload a photo (or an RGBA cutout) to start."
    base = selection.clicked if selection.clicked is not None else selection.automatic
    editor = {
        "background": overlay(selection, with_points=False, mask=base),
        "layers": [layer] if layer else [],
        "composite": None,
    }
    return selection, overlay(selection), editor, *_preview(app, selection, canvas_fields)


def _preview(app, selection, canvas_fields):
    """(preview image, status) for the canvas fields; a problem is the status and no preview."""
    try:
        prepared = app.prepare(selection, canvas_options(*canvas_fields))
    except ValueError as err:
        return None, f"⚠ {err}"
    return _highlight(prepared), app.describe(selection, prepared)


def _wire_object(app, ui):
    """Upload, clicks, brush, reset and the canvas: each updates the selection and the preview."""
    import gradio as gr

    canvas = [ui.aspect, ui.size, ui.object_scale, ui.position]
    views = [ui.selection, ui.view, ui.editor, ui.preview, ui.object_status]

    def load(photo, mask, *canvas_fields):
        if photo is None:
            return _selection_views(app, None, canvas_fields)
        try:
            selection = app.open(photo, mask)
        except ValueError as err:
            return None, None, None, None, f"⚠ {err}"
        return _selection_views(app, selection, canvas_fields)

    def click(selection, mode, editor, aspect, size, object_scale, position, evt: gr.SelectData):
        canvas_fields = (aspect, size, object_scale, position)
        x, y = evt.index if isinstance(evt.index, (list, tuple)) else (-1, -1)
        try:
            selection = app.click(selection, x, y, 1 if mode == POINT_MODES[0] else 0)
        except ValueError as err:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), f"⚠ {err}"
        return _selection_views(app, selection, canvas_fields, _layer(editor))

    def brush(selection, editor, *canvas_fields):
        from .selection import apply_strokes, overlay

        if selection is None:
            return gr.skip(), gr.skip(), gr.skip(), "Upload a photo first."
        selection = apply_strokes(selection, _layer(editor))
        return selection, overlay(selection), *_preview(app, selection, canvas_fields)

    def reset(selection, *canvas_fields):
        from .selection import reset

        return _selection_views(app, None if selection is None else reset(selection), canvas_fields)

    def preview(selection, *canvas_fields):
        if selection is None:
            return None, gr.skip()
        return _preview(app, selection, canvas_fields)

    private = dict(api_visibility="private")
    for upload in (ui.photo, ui.mask):
        upload.change(load, [ui.photo, ui.mask, *canvas], views, **private)
    ui.view.select(click, [ui.selection, ui.point_mode, ui.editor, *canvas], views, **private)
    # A stroke sends the layer; while one is being handled, only the latest waiting one runs.
    ui.editor.input(
        brush,
        [ui.selection, ui.editor, *canvas],
        [ui.selection, ui.view, ui.preview, ui.object_status],
        trigger_mode="always_last",
        **private,
    )
    ui.reset.click(reset, [ui.selection, *canvas], views, **private)
    for field in (ui.aspect, ui.object_scale, ui.position):
        field.change(preview, [ui.selection, *canvas], [ui.preview, ui.object_status], **private)
    for event in (ui.size.submit, ui.size.blur):
        event(preview, [ui.selection, *canvas], [ui.preview, ui.object_status], **private)


def _layer(editor):
    """The strokes layer of the editor's value (None when there is none)."""
    layers = (editor or {}).get("layers") or []
    return layers[0] if layers else None


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
        lora_scale,
        reference,
        ip_adapter_scale,
        request: gr.Request,
        progress=gr.Progress(),  # noqa: B008 (Gradio fills it in)
    ):
        if selection is None:
            yield _status_only("⚠ Upload a photo (or an RGBA cutout) first.")
            return
        try:
            lora_scale = lora_scale if len(app.loras) == 1 else None
            options = sampling_options(
                negative_prompt, steps, guidance, controlnet_scale, lora_scale, reference, ip_adapter_scale
            )
            canvas = canvas_options(aspect, size, object_scale, position)
        except ValueError as err:
            yield _status_only(f"⚠ {err}")
            return

        def on_step(fraction, text):
            progress(fraction, desc=text)

        seed = None if seed is None or seed < 0 else int(seed)
        run = (selection, prompt, num_images, seed, compare, options, canvas)
        with app.stoppable(request.session_hash) as stop:
            yield from _stream(app, run, stop, on_step, int(num_images) * (2 if compare else 1))

    def stop(request: gr.Request):
        app.stop(request.session_hash)  # the generation itself says when it has stopped

    def show(results, evt: gr.SelectData):
        if not results or not 0 <= evt.index < len(results):
            return (gr.skip(),) * 3
        slider, command, _, parameters = _show_result(results[evt.index])
        return slider, command, parameters  # the object file is the generation's, shown already

    inputs = [ui.selection, ui.prompt, ui.num_images, ui.seed, ui.compare, ui.negative_prompt, ui.steps]
    inputs += [ui.guidance, ui.controlnet_scale, ui.aspect, ui.size, ui.object_scale, ui.position]
    inputs += [ui.lora_scale, ui.reference, ui.ip_adapter_scale]
    outputs = [ui.gallery, ui.slider, ui.command, ui.object_file, ui.parameters, ui.status, ui.results]
    ui.generate.click(generate_in_page, inputs, outputs, api_visibility="private", show_progress_on=ui.gallery)
    # Stop must not wait behind the generation it stops.
    ui.stop.click(stop, None, None, concurrency_limit=None, api_visibility="private")
    ui.gallery.select(show, ui.results, [ui.slider, ui.command, ui.parameters], api_visibility="private")


def _stream(app, run, stop, on_step, wanted):
    """The generate event's outputs after each image, then a last status; problems are the status."""
    import tempfile

    results = []
    with tempfile.TemporaryDirectory(prefix="photobg-app-") as folder:  # Gradio copies what it shows
        try:
            for result in app.generate(*run, folder, stop, on_step):
                results.append(result)
                yield (*_show_results(results), f"{len(results)} of {wanted} image(s) done…", results)
        except ValueError as err:
            yield _status_only(f"⚠ {err}")
            return
        status = f"Stopped: {len(results)} of {wanted} image(s) done." if stop.is_set() else f"Done: {wanted} image(s)."
        yield _status_only(status) if not results else (*_show_results(results), status, results)


def _status_only(status):
    """The generate event's outputs that change only the status."""
    import gradio as gr

    return (gr.skip(),) * 5 + (status, gr.skip())


def _show_results(results):
    """(gallery, then the last result's details) for the results so far."""
    gallery = [(result.path, result.label) for result in results]
    return (gallery, *_show_result(results[-1]))


def _show_result(result):
    """(slider, command, object file, parameters) of one result, while its files exist."""
    import gradio as gr

    object_file = gr.update(value=result.object_file, visible=result.object_file is not None)
    return (result.before, result.image), result.parameters["command"], object_file, result.parameters


def _api_endpoint(app, default_steps):
    """`/generate`: photo (+ mask) and settings in, PNGs and their parameters out, for `gradio_client`."""
    import gradio as gr

    def generate(
        photo,
        prompt,
        mask=None,
        negative_prompt="",
        num_images=1,
        seed=0,
        steps=default_steps,
        guidance=DEFAULT.guidance_scale,
        controlnet_scale=DEFAULT.controlnet_conditioning_scale,
        aspect="",
        size="",
        object_scale=0.0,
        position=DEFAULT.position,
        reference=None,
        ip_adapter_scale=None,
        lora_scale=None,
    ):
        import tempfile

        # A generator that yields the PNGs so far after each image; its folder is removed once Gradio has copied
        # the last. Between yields Gradio checks that the client is still there, and closes this generator when it
        # is not: a request whose client has gone stops after its current image.
        with tempfile.TemporaryDirectory(prefix="photobg-api-") as folder:
            try:
                check_limits(num_images=num_images, steps=steps)  # the page's sliders take the same limits
                selection = app.open(photo, mask)
                if ip_adapter_scale is None:
                    ip_adapter_scale = app.generator.ip_adapter_scale
                options = sampling_options(
                    negative_prompt, steps, guidance, controlnet_scale, lora_scale, reference, ip_adapter_scale
                )
                canvas = canvas_options(aspect, size, object_scale, position)
                seed = None if seed is None or seed < 0 else int(seed)
                stop = threading.Event()  # never set: an API call runs to the end, or until its client has gone
                done = []
                for result in app.generate(selection, prompt, num_images, seed, False, options, canvas, folder, stop):
                    done.append(result)
                    yield [each.path for each in done], [each.parameters for each in done]
            except ValueError as err:
                raise gr.Error(str(err)) from None

    with gr.Column(visible=False):
        inputs = [
            gr.File(label="photo"),
            gr.Textbox(label="prompt"),
            gr.File(label="mask"),
            gr.Textbox("", label="negative_prompt"),
            gr.Number(1, label="num_images", precision=0),
            gr.Number(0, label="seed", precision=0),
            gr.Number(default_steps, label="steps", precision=0),
            gr.Number(DEFAULT.guidance_scale, label="guidance"),
            gr.Number(DEFAULT.controlnet_conditioning_scale, label="controlnet_scale"),
            gr.Textbox("", label="aspect"),
            gr.Textbox("", label="size"),
            gr.Number(0, label="object_scale"),
            gr.Textbox(DEFAULT.position, label="position"),
            gr.File(label="reference"),
            gr.Number(None, label="ip_adapter_scale"),
            gr.Number(None, label="lora_scale"),
        ]
        outputs = [gr.File(file_count="multiple", label="images"), gr.JSON(label="parameters")]
        trigger = gr.Button(visible=False)
    trigger.click(generate, inputs, outputs, api_name="generate", api_description=API_DESCRIPTION)
