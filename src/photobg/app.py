"""`photobg app`: a Gradio web app on the one pipeline (through `BackgroundGenerator`).

The flow a product photographer expects: upload a photo (or a cutout, or a photo and its mask); see the object
the app found, tinted on the photo; click points on it or off it (SAM) and touch it up with a brush; choose
the canvas and see the object placed on it; generate, with per-step progress and a Stop button; compare each
result with the input or with plain SD2-inpainting (SI2) on a slider; download full-resolution PNGs; copy the
`photobg generate` command that makes the same image. The model is loaded once at start; generations run one
at a time. `/generate` is the API endpoint (see `App.api_generate`).
"""

import contextlib
import dataclasses
import functools
import itertools
import threading

from .settings import GenerationSettings, app_range, label

HELP = "A web app (Gradio): click or paint the object, place it, generate new backgrounds, compare, download."

ASPECTS = ["photo's own", "1:1", "4:5", "3:4", "2:3", "16:9", "9:16", "3:2", "4:3"]
POINT_MODES = ["on the object (add)", "off the object (remove)"]
# What one request may ask for: the page's sliders' ranges, and the API's (`check_limits`), as the settings say.
# The app makes one generation at a time, so these bound how long a request can keep everyone else waiting.
LIMITS = {"num_images": app_range("num_images"), "steps": app_range("num_inference_steps")}
DEFAULT = GenerationSettings()  # the defaults of the page's fields and of the API's arguments
# The app's names of its adapter scales, for messages (the single LoRA's scale is the app's own field).
ADAPTER_FIELDS = {"lora_scale": "LoRA scale", "ip_adapter_scale": label("ip_adapter_scale")}
# System fonts only: the app must not fetch anything (fonts included) from the internet.
FONTS = dict(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
API_DESCRIPTION = """New backgrounds around the object of a photo. Arguments: photo (image file; an RGBA cutout's
alpha is its object), prompt, mask (optional object mask file, white = object; without one and without alpha
the app's segmenter finds the object), negative_prompt, num_images, seed (image k uses seed + k), steps,
guidance, controlnet_scale (0 = plain SD2-inpainting), aspect ('W:H' or ''), size ('WxH' or ''), object_scale
(0 = keep the framing), position, reference (optional image file whose style the background follows, for an app
started with --ip-adapter), ip_adapter_scale, lora_scale (of the app's single --lora). Returns the full-resolution
PNGs and, per image, its parameters and the `photobg generate` command that makes it again. num_images and steps
take the page's limits: 1-8 images, 1-100 steps. The files are sent as each image is made; a request whose client
has gone stops after its current image."""


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


@dataclasses.dataclass
class Result:
    """One generated image, what it is compared with, and how to make it again."""

    path: str  # the full-resolution PNG (with `parameters` in its text chunk), until the request ends
    image: object  # the same image (PIL), for the slider
    label: str  # "ours, seed 0"
    before: object  # PIL image for the slider's left side: the SI2 image of the same seed, or the input
    parameters: dict  # every setting, and the `photobg generate` command
    object_file: str | None  # the selection as an RGBA cutout, when the command needs it


class App:
    """The app's behaviour, apart from its layout: every handler takes and returns plain values (and raises
    `ValueError` with a message for the user), so it is tested without a browser.

    Args:
        generator: the loaded `BackgroundGenerator`.
        sam_model: SAM for clicked points (loaded on the first click).
        max_megapixels: larger photos are refused.
        settings: the `GenerationSettings` the model was loaded with (its model, adapters, segmenter, default
            steps); each image's settings are these with the page's fields (`settings_of`).
    """

    def __init__(self, generator, *, sam_model=None, max_megapixels=40, settings=None):
        self.generator = generator
        self.sam_model = sam_model
        self.max_megapixels = max_megapixels
        self._sam = None
        self._pipe_lock = threading.Lock()  # one pipeline call at a time, whatever the queue does
        self.loras = list(getattr(generator, "loras", []))  # the page's slider sets the scale of a single one
        self.settings = dataclasses.replace(settings or GenerationSettings(), loras=self.loras)
        self._stops = {}  # session -> threading.Event of its running generation

    # ------------------------------------------------------------------------- the object

    def open(self, photo, mask=None):
        """A `Selection` for uploaded files; errors name the uploaded files, not their temporary paths."""
        import PIL.Image

        from .selection import open_selection

        try:
            return open_selection(self.generator, photo, mask, max_megapixels=self.max_megapixels)
        except ValueError as err:
            message = str(err)
        except PIL.Image.DecompressionBombError:
            message = f"{photo}: too many pixels; this app takes photos up to {self.max_megapixels:g} megapixels."
        except OSError:
            message = f"{photo}: not a readable image."
        raise ValueError(_uploaded_names(message, photo, mask))

    def click(self, selection, x, y, label):
        """Add a clicked point (display coordinates; label 1 = on the object) and let SAM redo the mask."""
        from .segment import SegmenterUnavailable
        from .selection import add_point

        if selection is None:
            raise ValueError("Upload a photo first.")
        try:
            return add_point(selection, self.sam(), x, y, label)
        except SegmenterUnavailable as err:
            raise ValueError(f"Clicks need SAM, which is not available: {err}") from None

    def sam(self):
        from .segment import Sam

        if self._sam is None:
            self._sam = Sam(self.sam_model)
        return self._sam

    def prepare(self, selection, canvas):
        """`BackgroundGenerator.prepare` of the selected object (`selection.object_mask`, the mask the overlay
        shows) on the canvas: the one function behind the preview and generation."""
        from .selection import object_mask

        try:
            return self.generator.prepare(selection.image, object_mask(selection), **canvas)
        except ValueError as err:
            raise ValueError(f"{selection.name}: {str(err).removeprefix('image: ')}") from None

    def describe(self, selection, prepared):
        from .selection import describe

        width, height = prepared.image.size
        work_width, work_height = self.generator.working_size(prepared.image.size)
        return f"{describe(selection)} Output {width}x{height}, generated at {work_width}x{work_height}."

    # ------------------------------------------------------------------------- generating

    def generate(self, selection, prompt, num_images, seed, compare, options, canvas, folder, stop, on_step=None):
        """Generate, yielding each `Result` as it is done; stops between steps once `stop` is set.

        Args:
            selection: the `Selection`.
            prompt: the prompt; num_images: how many seeds; seed: the first (None: drawn).
            compare: also generate SI2 (ControlNet scale 0) for each seed, first, so that ours is compared with it.
            options: `negative_prompt`, `num_inference_steps`, `guidance_scale`, `controlnet_conditioning_scale`.
            canvas: `size`, `aspect`, `object_scale`, `position` (see `canvas_options`).
            folder: where the PNGs are written.
            stop: `threading.Event`; once set, the running image stops after its current step and is dropped.
            on_step: `on_step(fraction_done, text)` after every denoising step.

        Yields:
            `Result`s.
        """
        from pathlib import Path

        from .api import make_jobs
        from .manifest import RECORD_CHUNK, save_png
        from .selection import cutout

        prepared = self.prepare(selection, canvas)
        jobs = make_jobs([prompt or ""], int(num_images), seed)
        runs = ([("SI2", 0.0)] if compare else []) + [("ours", options["controlnet_conditioning_scale"])]
        stem = Path(selection.name).stem
        object_file = None
        if selection.edited:  # the command reads the edited selection from this file
            object_file = str(Path(folder, f"{stem}_object.png"))
            save_png(cutout(selection), Path(object_file))
        si2 = None  # the SI2 image of the current seed, which ours is compared with
        for index, (job, (name, scale)) in enumerate(itertools.product(jobs, runs)):
            label = f"{name}, seed {job.seed}"
            run_options = {**options, "controlnet_conditioning_scale": scale}
            report = on_step and functools.partial(_report_step, on_step, index, len(jobs) * len(runs), label)
            image = self._run(prepared, job, run_options, stop, report)
            if image is None:
                return
            parameters = self.parameters(selection, prepared, job, self.settings_of(run_options, canvas), object_file)
            path = Path(folder, f"{stem}_s{job.seed}{'' if name == 'ours' else '_si2'}.png")
            save_png(image, path, {RECORD_CHUNK: parameters})
            before = si2 if name == "ours" and si2 is not None else prepared.image
            yield Result(str(path), image, label, before, parameters, object_file)
            si2 = image if name == "SI2" else None

    def _run(self, prepared, job, options, stop, report=None):
        """One image, with a step callback that calls `report(step, steps)` and stops; None when stopped. The
        options' `lora_scale` and `ip_adapter_scale` are set on the model for this image."""
        options = dict(options)
        lora_scale, ip_adapter_scale = options.pop("lora_scale", None), options.pop("ip_adapter_scale", None)

        def step_end(pipe, i, t, tensors):
            if report is not None:
                report(i + 1, len(pipe.scheduler.timesteps))
            if stop.is_set():
                pipe._interrupt = True  # diffusers' convention: the loop skips the remaining steps
            return {}

        with self._pipe_lock:
            if lora_scale is not None and len(self.loras) == 1:
                self.generator.set_lora_scales([lora_scale])
            if ip_adapter_scale is not None and self.generator.has_ip_adapter:
                self.generator.pipe.set_ip_adapter_scale(ip_adapter_scale)
            (image,) = self.generator.run(prepared, [job], **options, callback_on_step_end=step_end)
        return None if stop.is_set() else image

    def settings_of(self, options, canvas):
        """The `GenerationSettings` of one image: the app's, with the page's sampling `options` (as
        `sampling_options` makes them; the single LoRA's scale too) and `canvas` (as `canvas_options` makes it)."""
        loras = self.loras
        if options.get("lora_scale") is not None and len(loras) == 1:
            loras = [dataclasses.replace(loras[0], scale=options["lora_scale"])]
        reference_strength = options.get("ip_adapter_scale")
        return dataclasses.replace(
            self.settings,
            negative_prompt=options["negative_prompt"],
            num_inference_steps=options["num_inference_steps"],
            guidance_scale=options["guidance_scale"],
            controlnet_conditioning_scale=options["controlnet_conditioning_scale"],
            **canvas,
            loras=loras,
            reference_image=options.get("ip_adapter_image"),
            ip_adapter_scale=self.settings.ip_adapter_scale if reference_strength is None else reference_strength,
        )

    def parameters(self, selection, prepared, job, settings, object_file):
        """Every setting of one image, and the `photobg generate` command that makes it again: the CLI's record
        (`manifest.output_record`), with the uploaded files by their names and the object's description."""
        from pathlib import Path

        from .manifest import generated_with, output_record
        from .selection import describe

        if object_file is not None:  # the edited object, as an RGBA cutout: its alpha is the object
            input_file, source = Path(object_file).name, "alpha"
        else:
            input_file, source = selection.name, selection.source
        reference = settings.reference_image
        return output_record(
            settings,
            job,
            generated_with(self.generator, prepared, settings.working_size),
            input_file=input_file,
            object_source=source,
            mask_file=selection.mask_name,
            reference_image=Path(reference).name if reference else None,
            photo=selection.name,
            object=describe(selection),
        )

    @contextlib.contextmanager
    def stoppable(self, session):
        """A `threading.Event` that `stop(session)` sets while the session's generation runs in this block."""
        event = threading.Event()
        self._stops[session] = event
        try:
            yield event
        finally:
            if self._stops.get(session) is event:
                del self._stops[session]

    def stop(self, session):
        """Ask the session's running generation to stop after its current step; False if none runs."""
        event = self._stops.get(session)
        if event is not None:
            event.set()
        return event is not None


def check_limits(names=None, **values):
    """Refuse values outside `LIMITS`, naming the field and its range.

    Args:
        names: how the caller's user knows each field, e.g. {"steps": "--steps"}; by default the API's names.
        **values: `num_images`, `steps`.

    Raises:
        ValueError: naming the field, the range and the value.
    """
    for field, value in values.items():
        low, high = LIMITS[field]
        if value is None or not low <= value <= high:  # NaN compares False: refused too
            name = (names or {}).get(field, field)
            raise ValueError(f"{name} must be between {low} and {high} (the app's limit), not {value}.")


def canvas_options(aspect, size, object_scale, position):
    """The canvas keyword arguments of `BackgroundGenerator.prepare` from the app's fields; an exact size
    replaces the aspect ratio. Raises `ValueError` naming the bad value."""
    from .masks import parse_aspect, parse_size

    size = (size or "").strip() or None
    aspect = None if size or aspect in (None, "", ASPECTS[0]) else str(aspect).strip()
    if size:
        parse_size(size)  # its message names the size
    if aspect:
        parse_aspect(aspect)
    return dict(
        size=size, aspect=aspect, object_scale=float(object_scale) or None, position=position or DEFAULT.position
    )


def sampling_options(
    negative_prompt, steps, guidance, controlnet_scale, lora_scale=None, reference=None, ip_adapter_scale=None
):
    """The pipeline's keyword arguments from the app's fields; values that mean nothing are a `ValueError`
    naming the field by its label (`GenerationSettings.check_sampling`). `lora_scale` (of a single LoRA), the
    `reference` image file and the `ip_adapter_scale` are added when given (`App._run` sets the scales on the
    model)."""
    import math

    options = dict(
        num_inference_steps=int(steps),
        guidance_scale=float(guidance),
        controlnet_conditioning_scale=float(controlnet_scale),
    )
    GenerationSettings(**options).check_sampling(names="label")
    scales = {"lora_scale": lora_scale, "ip_adapter_scale": ip_adapter_scale if reference else None}
    extras = {name: float(value) for name, value in scales.items() if value is not None}
    for name, value in extras.items():
        if not math.isfinite(value):
            raise ValueError(f"{ADAPTER_FIELDS[name]} must be a finite number, not {value}.")
    if reference:
        extras["ip_adapter_image"] = str(reference)
    return dict(negative_prompt=negative_prompt or None, **options, **extras)


def _report_step(on_step, index, count, label, step, steps):
    """Progress of image `index` of `count` at `step` of `steps`, as `on_step(fraction_done, text)`."""
    on_step((index + step / steps) / count, f"{label}: step {step} of {steps}")


def _uploaded_names(message, *paths):
    """Messages name uploaded files by their own names, not by the server's temporary paths."""
    from pathlib import Path

    for path in paths:
        if path is not None:
            message = message.replace(str(path), Path(path).name)
    return message


def _highlight(prepared):
    """The canvas with everything but the object dimmed: what will be kept, and where."""
    import PIL.Image

    dimmed = PIL.Image.blend(prepared.image, PIL.Image.new("RGB", prepared.image.size, "white"), 0.7)
    preview = PIL.Image.composite(prepared.image, dimmed, prepared.object_mask)
    preview.thumbnail((768, 768))
    return preview


# ----------------------------------------------------------------------------- the page


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
