"""`photobg app`: a Gradio web app on the one pipeline (through `BackgroundGenerator`).

The flow a product photographer expects: upload a photo (or a cutout, or a photo and its mask); see the object
the app found, tinted on the photo; click points on it or off it (SAM) and touch it up with a brush; choose
the canvas and see the object placed on it; generate, with per-step progress and a Stop button; compare each
result with the input or with plain SD2-inpainting (SI2) on a slider; download full-resolution PNGs; copy the
`photobg generate` command that makes the same image. The model is loaded once at start; generations run one
at a time. `/generate` is the API endpoint.

This room is the app's behaviour apart from Gradio: the `App` (the loaded generator, the selection's handlers,
generating with Stop, each result's record through `manifest.output_record`), the checks of the page's values, and
previews. The page itself, its wiring and the command's entry point are `photobg.app_page`.
"""

import contextlib
import dataclasses
import functools
import itertools
import shutil
import tempfile
import threading
from pathlib import Path

from .settings import GenerationSettings, app_range, label, parse_timesteps

ASPECTS = ["photo's own", "1:1", "4:5", "3:4", "2:3", "16:9", "9:16", "3:2", "4:3"]
POINT_MODES = ["on the object (add)", "off the object (remove)"]
# What one request may ask for: the page's sliders' ranges, and the API's (`check_limits`), as the settings say.
# The app makes one generation at a time, so these bound how long a request can keep everyone else waiting.
LIMITS = {
    "num_images": app_range("num_images"),
    "steps": app_range("num_inference_steps"),
    "guidance": app_range("guidance_scale"),
}
DEFAULT = GenerationSettings()  # the defaults of the page's fields and of the API's arguments
# The app's names of its adapter scales, for messages (the single LoRA's scale is the app's own field).
ADAPTER_FIELDS = {"lora_scale": "LoRA scale", "ip_adapter_scale": label("ip_adapter_scale")}
# The long side of the images the page shows (a result's full-resolution PNG is its download): enough for a
# screen, and sent at once even for a 24 MP photo.
PREVIEW_SIZE = 1600
# The app's words for what `BackgroundGenerator`'s messages say in `photobg generate`'s flags.
APP_WORDS = {
    "an aspect ratio, a size or an object scale (--aspect, --size, --object-scale)": "the aspect ratio, the exact "
    "size or the object scale",
}
# The session strip's tiles stay small however few results it has (Gradio widens them to fill the row).

API_DESCRIPTION = """New backgrounds around the object of a photo. Arguments: photo (image file; an RGBA cutout's
alpha is its object), prompt, mask (optional object mask file, white = object; without one and without alpha
the app's segmenter finds the object), negative_prompt, num_images, seed (image k uses seed + k), steps,
guidance, controlnet_scale (0 = plain SD2-inpainting), aspect ('W:H' or ''), size ('WxH' or ''), object_scale
(0 = keep the framing), position, reference (optional image file whose style the background follows, for an app
started with --ip-adapter), ip_adapter_scale, lora_scale (of the app's single --lora), timesteps (fixed timesteps,
'999,499' or '', for a scheduler that takes them; they set the steps), eta (of a scheduler whose step takes it).
steps, guidance, timesteps and eta default to the page's first values (the app's --recipe, --steps, ...); steps
that differ from them drop the first timesteps, as --steps drops a recipe's. Returns the full-resolution PNGs and,
per image, its parameters and the `photobg generate` command that makes it again. num_images, steps and guidance
take the page's limits: 1-8 images, 1-100 steps, guidance 0-20. The files are sent as each image is made; a
request whose client has gone stops after its current image."""


@dataclasses.dataclass
class Result:
    """One generated image, what it is compared with, and how to make it again."""

    path: str  # the full-resolution PNG (with `parameters` in its text chunk), kept while the session lasts
    preview: str  # the PNG the page shows: `path` scaled to at most `PREVIEW_SIZE` (`path` itself when smaller)
    label: str  # "ours, seed 0"
    before: str  # the slider's left side, a preview PNG: of the SI2 image of the same seed, or of the input canvas
    parameters: dict  # every setting, and the `photobg generate` command
    object_file: str | None  # the selection as an RGBA cutout, when the command needs it


class App:
    """The app's behaviour, apart from its layout: every handler takes and returns plain values (and raises
    `ValueError` with a message for the user), so it is tested without a browser.

    Args:
        generator: the loaded `BackgroundGenerator`.
        sam_model: SAM for clicked points (loaded on the first click).
        max_megapixels: larger photos are refused.
        settings: the `GenerationSettings` the model was loaded with (its model, scheduler, adapters, segmenter,
            recipe), resolved: their steps, guidance, timesteps and eta are the page's first values; each image's
            settings are these with the page's fields (`settings_of`).
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
        self._folders = {}  # session -> the folder of its runs' PNGs (`run_folder`)
        self.segmenter_problem = segmenter_problem(generator)  # None when photos get their object automatically

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
        except SegmenterUnavailable:  # its message speaks to the command line; this one says what to do here
            model = Path(str(self.sam_model))
            name = model.name if model.is_absolute() or model.exists() else str(model)
            raise ValueError(
                f"Clicks need SAM, which could not be loaded ({name}): paint the object with the brush instead "
                "(Brush tab: green adds to the object, red removes from it)."
            ) from None

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
            message = str(err).removeprefix("image: ")
            for cli_words, app_words in APP_WORDS.items():
                message = message.replace(cli_words, app_words)
            raise ValueError(f"{selection.name}: {message}") from None

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

        from .api import make_jobs
        from .manifest import RECORD_CHUNK, FileHashes, save_png
        from .selection import cutout

        prepared = self.prepare(selection, canvas)
        jobs = make_jobs([prompt or ""], int(num_images), seed)
        runs = ([("SI2", 0.0)] if compare else []) + [("ours", options["controlnet_conditioning_scale"])]
        # Each run's settings, checked before any image is made.
        settings = {
            name: self.settings_of({**options, "controlnet_conditioning_scale": scale}, canvas) for name, scale in runs
        }
        object_file = None
        if selection.edited:  # the command reads the edited selection from this file
            object_file = str(Path(folder, f"{Path(selection.name).stem}_object.png"))
            save_png(cutout(selection), Path(object_file))
        si2 = None  # the preview of the SI2 image of the current seed, which ours is compared with
        canvas_preview = save_preview(prepared.image, Path(folder, "previews", "canvas.png"))
        files = FileHashes()  # digests of the files the outputs' keys hash (read once per request)
        count = len(jobs) * len(runs)
        for index, (job, (name, _)) in enumerate(itertools.product(jobs, runs)):
            label = f"{name}, seed {job.seed}"
            which = f"{label} (image {index + 1} of {count})"  # for the progress bar
            report = on_step and functools.partial(_report_step, on_step, index, count, which)
            image = self._run(prepared, job, settings[name], stop, report)
            if image is None:
                return
            if on_step:
                on_step((index + 1) / count, f"{which}: saving the full-resolution PNG…")
            output = self.output_job(selection, job, settings[name], object_file, folder, files)
            parameters = self.parameters(selection, prepared, output, settings[name], object_file, files)
            save_png(image, output.output, {RECORD_CHUNK: parameters})
            preview = _preview_file(image, output.output)
            before = si2 if name == "ours" and si2 is not None else canvas_preview
            yield Result(str(output.output), preview, label, before, parameters, object_file)
            si2 = preview if name == "SI2" else None

    def _run(self, prepared, job, settings, stop, report=None):
        """One image of `settings` (`settings_of`), with a step callback that calls `report(step, steps)` and stops;
        None when stopped. The settings' single LoRA's scale and IP-Adapter scale are set on the model for it."""

        def step_end(pipe, i, t, tensors):
            if report is not None:
                report(i + 1, len(pipe.scheduler.timesteps))
            if stop.is_set():
                pipe._interrupt = True  # diffusers' convention: the loop skips the remaining steps
            return {}

        with self._pipe_lock:
            if len(settings.loras) == 1:
                self.generator.set_lora_scales([settings.loras[0].scale])
            if self.generator.has_ip_adapter:
                self.generator.pipe.set_ip_adapter_scale(settings.ip_adapter_scale)
            (image,) = self.generator.run(prepared, [job], **settings.sampling(), callback_on_step_end=step_end)
        return None if stop.is_set() else image

    def settings_of(self, options, canvas):
        """The `GenerationSettings` of one image: the app's, with the page's sampling `options` (as
        `sampling_options` makes them; the single LoRA's scale too) and `canvas` (as `canvas_options` makes it).
        The page's steps and fixed timesteps follow the command line's rule (`GenerationSettings.changed`: steps
        changed on the page drop the timesteps the app started with). Checked against the loaded scheduler
        (`ValueError`s name the page's fields)."""
        loras = self.loras
        if options.get("lora_scale") is not None and len(loras) == 1:
            loras = [dataclasses.replace(loras[0], scale=options["lora_scale"])]
        reference_strength = options.get("ip_adapter_scale")
        settings = self.settings.changed(
            negative_prompt=options["negative_prompt"],
            num_inference_steps=options["num_inference_steps"],
            guidance_scale=options["guidance_scale"],
            controlnet_conditioning_scale=options["controlnet_conditioning_scale"],
            timesteps=options.get("timesteps"),
            eta=options.get("eta"),
            **canvas,
            loras=loras,
            reference_image=options.get("ip_adapter_image"),
            ip_adapter_scale=self.settings.ip_adapter_scale if reference_strength is None else reference_strength,
        )
        settings.check_sampling(names="label")
        settings.check_steps(type(self.generator.pipe.scheduler), names="label")
        return settings

    def output_job(self, selection, job, settings, object_file, folder, files):
        """The `generation.plan.OutputJob` that the command shown for this image plans: the files it reads (the
        uploaded ones, or the edited object's) and the file `photobg generate` names its output (`output_name`),
        in `folder`. The app names its PNGs so, and keys them so, that `--skip-existing` recognises them. `files`:
        the request's `manifest.FileHashes`."""

        from .generation.plan import OutputJob, output_name
        from .manifest import settings_key

        photo, mask = (object_file, None) if object_file is not None else selection.files
        photo, mask = Path(photo), mask and Path(mask)
        key = settings_key(settings, job.prompt, mask is not None, files)
        return OutputJob(photo, mask, job, Path(folder, output_name(photo.stem, job, key)))

    def parameters(self, selection, prepared, output, settings, object_file, files):
        """Every setting of one image, and the `photobg generate` command that makes it again: the CLI's record
        (`manifest.output_record`) and key, with the files by their names and the object's description."""

        from .manifest import generated_with, output_key, output_record
        from .selection import describe

        if object_file is not None:  # the edited object, as an RGBA cutout: its alpha is the object
            input_file, source = Path(object_file).name, "alpha"
        else:
            input_file, source = selection.name, selection.source
        reference = settings.reference_image
        return output_record(
            settings,
            output.job,
            generated_with(self.generator, prepared, settings.working_size),
            input_file=input_file,
            object_source=source,
            mask_file=selection.mask_name,
            output=output.output.name,
            reference_image=Path(reference).name if reference else None,
            key=output_key(settings, output, files),
            photo=selection.name,
            object=describe(selection),
        )

    def run_folder(self, session):
        """A new folder for one run's PNGs, inside the session's folder, which is kept until the session ends
        (`end_session`): the session's strip shows and zips them. One folder a run: two runs may make files of
        one name (another object under the same photo name)."""
        if session not in self._folders:
            self._folders[session] = tempfile.mkdtemp(prefix="photobg-session-")
        return tempfile.mkdtemp(prefix="run-", dir=self._folders[session])

    def end_session(self, session):
        """Remove the session's PNGs (its browser tab has closed)."""
        folder = self._folders.pop(session, None)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

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


def segmenter_problem(generator):
    """None when the generator's segmenter loads; else, in words for the page, that it is missing, what to do in
    the app instead, and how to get it. Photos without alpha or mask still load then, with no object yet."""
    from .segment import SegmenterUnavailable

    try:
        generator.load_segmenter()
        return None
    except SegmenterUnavailable as err:
        installed = not isinstance(err.__cause__, ImportError)
    name = generator.segmenter
    what = f"The automatic object finder (the {name} segmenter)"
    if installed:
        return f"{what} could not be loaded: click on the object or paint it with the brush."
    return (
        f"{what} is not installed: click on the object or paint it with the brush. To have objects found "
        f"automatically, install it (pip install {name}) and restart the app."
    )


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
    negative_prompt,
    steps,
    guidance,
    controlnet_scale,
    lora_scale=None,
    reference=None,
    ip_adapter_scale=None,
    timesteps=None,
    eta=None,
):
    """The sampling settings from the app's fields (`App.settings_of` takes them); values that mean nothing are a
    `ValueError` naming the field by its label (`GenerationSettings.check_sampling`). `timesteps`: the fixed
    timesteps' text (blank: none); `eta`: None for the pipeline's. `lora_scale` (of a single LoRA), the `reference`
    image file and the `ip_adapter_scale` are added when given (`App._run` sets the scales on the model)."""
    import math

    options = dict(
        num_inference_steps=int(steps),
        guidance_scale=float(guidance),
        controlnet_conditioning_scale=float(controlnet_scale),
        timesteps=parse_timesteps(timesteps, label("timesteps")),
        eta=None if eta is None else float(eta),
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
    """Progress of image `index` of `count` at `step` of `steps`, as `on_step(fraction_done, text)`: the text says
    which image (`label`) and which of its steps, and after the last what comes next; the fraction is of the run."""
    done = ", pasting the object back at full size…" if step == steps else ""
    on_step((index + step / steps) / count, f"{label}: step {step} of {steps}{done}")


def _preview_file(image, path):
    """The file the page shows for a full-resolution output `path`: `path` itself where the image is small enough,
    else its preview (`save_preview`) of the same name in the `previews` folder beside it."""
    if max(image.size) <= PREVIEW_SIZE:
        return str(path)
    return save_preview(image, Path(path).parent / "previews" / Path(path).name)


def save_preview(image, file):
    """Save an image scaled to at most `PREVIEW_SIZE` on its long side, as a quickly compressed PNG; returns the
    file. The page gets files, which Gradio sends as they are (a PIL image is encoded again at every update)."""
    import PIL.Image

    if max(image.size) > PREVIEW_SIZE:
        image = image.copy()
        # Bilinear after an integer reduction (`reducing_gap`): a third of Lanczos' time at 24 MP, as sharp here.
        image.thumbnail((PREVIEW_SIZE, PREVIEW_SIZE), PIL.Image.BILINEAR, reducing_gap=2.0)
    Path(file).parent.mkdir(exist_ok=True)
    image.save(file, compress_level=1)
    return str(file)


def _uploaded_names(message, *paths):
    """Messages name uploaded files by their own names, not by the server's temporary paths."""

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
