"""The Python API: new backgrounds around an object, at any resolution, through the one pipeline.

    import photobg

    images = photobg.generate("photo.jpg", "a bottle on a beach", object_mask="mask.png", seed=0)

    generator = photobg.BackgroundGenerator("yahoo-inc/photo-background-generation")  # loads once
    for path in paths:
        generator(path, "a bottle on a beach", num_images_per_prompt=4)

The CLI (`photobg generate`), the notebook and the app all go through `BackgroundGenerator`, which calls
the pipeline's object mode: the photo is placed on the output canvas (`masks.place_on_canvas`), the
background is generated at the model's working size, upscaled to the canvas, and the object is pasted back
from the canvas's own pixels with its soft mask, so it is exact at full resolution.
"""

import contextlib
import functools
import secrets
import warnings
from dataclasses import dataclass
from pathlib import Path

import PIL.Image
import PIL.ImageDraw

from . import recipe
from .defaults import DEFAULT_POSITION, DEFAULT_SEGMENTER, IP_ADAPTER_SCALE, PHOTO_SEGMENTERS  # noqa: F401 (re-export)
from .masks import (
    OBJECT_THRESHOLD,
    as_object_mask,
    canvas_size,
    fit_mask_to_image,
    line_up,
    load_image,
    load_object_mask,
    object_coverage_problem,
    place_on_canvas,
    split_cutout,
    working_size,
)
from .segment import SegmenterUnavailable, get_segmenter, segment_image
from .settings import MAX_CANVAS_PIXELS, MAX_WORKING_SIZE, check_canvas_size, check_sampling  # noqa: F401 (re-export)

SEED_RANGE = 2**31  # seeds drawn when none is given are below this, so they survive JSON and int32 tools


@dataclass
class Prepared:
    """An input ready to generate from: the photo and its object mask, placed on the output canvas."""

    image: PIL.Image.Image  # RGB, at the output size
    object_mask: PIL.Image.Image  # "L", white = object, soft edges kept
    object_source: str  # "alpha", "mask" or "segmenter:NAME"
    name: str  # how messages refer to the input (its file name, or "image")


@dataclass
class Job:
    """One output: the prompt (and its index among the call's prompts), the seed of its noise, and which of the
    prepared inputs it is made from (an index into the list given to `BackgroundGenerator.run`)."""

    prompt_index: int
    prompt: str
    seed: int
    input_index: int = 0


class BackgroundGenerator:
    """Loads a model once and generates backgrounds for any number of photos.

    Args:
        model: Hub id or folder of a complete model (default: the published one), or a base model with
            `controlnet`; `tiny-inpainting` builds a random test model offline. See `models.load_pipeline`.
        controlnet: ControlNet (Hub id, folder or state-dict file) for a base `model`.
        device, dtype, scheduler: as in `models.load_pipeline` (scheduler None: the authors' recipe, UniPC;
            "model": the checkpoint's own; or a diffusers scheduler class name).
        scheduler_options: the scheduler's config values to set, a dict or `KEY=VALUE` specs typed from the
            scheduler class's own defaults (e.g. {"timestep_spacing": "trailing"}); see `photobg.recipe.RECIPES`.
        recipe: a named sampling recipe (`photobg.recipe.RECIPES`, `--recipe`): its scheduler and options, and the
            default steps, guidance, timesteps and eta of every call; `scheduler`, `scheduler_options` and a call's
            own arguments override it, as flags do (`settings.GenerationSettings.resolve`). A recipe made for other
            backbones is refused before the model loads; one whose LoRA is not in `loras` warns.
        segmenter: name (see `photobg.segment.SEGMENTERS`) or callable `PIL image -> "L" mask` that finds
            the object in photos that come with neither an alpha channel nor a mask; None to require one.
            Built on first use, so a missing package only matters for photos that need it.
        pipe: an already loaded pipeline to use instead of loading `model`.
        compile, vae_tiling: opt-in speed/memory settings, see `models.optimize`.
        vae: a VAE to use instead of the model's (Hub id or folder), e.g. the fp16-safe SDXL VAE
            `madebyollin/sdxl-vae-fp16-fix`; see `models.check_vae`.
        loras: LoRAs for the UNet and text encoders, each `PATH[:SCALE]`, (path, scale) or `models.Lora`; see
            `models.load_loras` (a LoRA's `conv_in` trained for another number of UNet input channels is left out,
            with a warning).
        fuse_loras: merge the LoRAs into the weights (no cost per step); False keeps them as adapters whose scales
            `set_lora_scales` changes (the app's scale slider).
        ip_adapter: an IP-Adapter (weights file, or folder holding one, with `image_encoder/` beside it), so that
            calls take a reference image for the background's style (`ip_adapter_image`).
        ip_adapter_scale: how strongly the reference image steers the UNet (0 = not at all; diffusers' default 1).

    Missing LoRA and IP-Adapter files are reported before the model loads.
    """

    def __init__(
        self,
        model=None,
        controlnet=None,
        *,
        device=None,
        dtype=None,
        scheduler=None,
        scheduler_options=None,
        recipe=None,
        segmenter=DEFAULT_SEGMENTER,
        pipe=None,
        compile=False,
        vae_tiling=False,
        vae=None,
        loras=(),
        fuse_loras=True,
        ip_adapter=None,
        ip_adapter_scale=IP_ADAPTER_SCALE,
    ):
        from .models.adapters import ip_adapter_weights, load_ip_adapter, load_loras, parse_lora
        from .models.loading import load_pipeline, make_scheduler, optimize

        self.loras = [parse_lora(lora) for lora in loras]  # files checked before the model loads
        if ip_adapter is not None:
            ip_adapter_weights(ip_adapter)
        self.recipe = recipe
        if recipe is not None:  # checked before the model loads, as `photobg generate` checks --recipe
            chosen = _recipe_settings(recipe, model, pipe, self.loras, scheduler=scheduler, options=scheduler_options)
            scheduler, scheduler_options = chosen.scheduler, chosen.scheduler_options
            if pipe is not None:
                pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config, scheduler_options)
        if pipe is None:
            pipe = load_pipeline(
                model,
                controlnet,
                device=device,
                dtype=dtype,
                scheduler=scheduler,
                scheduler_options=scheduler_options,
                vae=vae,
            )
        self.lora_names = load_loras(pipe, self.loras, fuse=fuse_loras)
        self.loras_fused = fuse_loras
        self.ip_adapter_scale = ip_adapter_scale if ip_adapter is not None else None
        if ip_adapter is not None:
            load_ip_adapter(pipe, ip_adapter, ip_adapter_scale)
        self.pipe = optimize(pipe, compile=compile, vae_tiling=vae_tiling)
        self.segmenter = segmenter  # as given: a name or a callable
        self._segment = None if isinstance(segmenter, str) else segmenter  # a named one is built on first use
        self._segmenter_error = None

    def set_lora_scales(self, scales):
        """Change the scales of the LoRAs (one per LoRA, in order); needs `fuse_loras=False`."""
        from .models.adapters import set_lora_scales

        if self.loras_fused:
            raise ValueError("The LoRAs are fused into the weights: load with fuse_loras=False to change their scales.")
        set_lora_scales(self.pipe, self.lora_names, scales)

    @property
    def has_ip_adapter(self):
        """Whether an IP-Adapter is loaded, so that generation takes a reference image (`ip_adapter_image`)."""
        return self.pipe._has_ip_adapter()

    @property
    def backbone(self):
        """The loaded model's backbone (`photobg.backbones`), read from the pipeline's components and UNet config."""
        from .backbones import backbone_from_configs

        return backbone_from_configs(dict(self.pipe.config), dict(self.pipe.unet.config))

    @property
    def native_size(self):
        """The long side (pixels) the model was trained at, the default working size (512 for SD2, 1024 for SDXL):
        the UNet's sample size times the VAE's downscale."""
        return self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor

    def working_size(self, size, long_side=None):
        """The size to generate at for an output of `size` = (width, height): its aspect ratio with the long
        side at `long_side` (default `native_size`), each side rounded to the nearest multiple of the VAE's
        downscale factor (the pipeline's own rule, `masks.working_size`)."""
        return working_size(size, long_side or self.native_size, self.pipe.vae_scale_factor)

    def load_segmenter(self):
        """Build the named segmenter now, so that a missing package or model shows before a batch starts.

        Returns:
            The segmenter (a callable), or None when none is set.

        Raises:
            SegmenterUnavailable: its package or weights are missing; the failure is remembered, so later calls
                (one per photo) raise it again at once instead of trying again.
        """
        if self._segment is None and self.segmenter is not None:
            if self._segmenter_error is not None:
                raise self._segmenter_error
            try:
                self._segment = get_segmenter(self.segmenter)
            except SegmenterUnavailable as err:
                self._segmenter_error = err
                raise
        return self._segment

    def find_object(self, image):
        """The segmenter's object mask ("L") for an RGB image."""
        if self.segmenter is None:
            raise ValueError("no segmenter is set.")
        return segment_image(self.load_segmenter(), image)

    def prepare(self, image, object_mask=None, *, size=None, aspect=None, object_scale=None, position=DEFAULT_POSITION):
        """Read a photo, find its object and place both on the output canvas.

        The object comes from the first of: the photo's alpha channel (where it has transparency),
        `object_mask`, the segmenter. A mask of another size is resized by `masks.fit_mask_to_image`'s rule.

        Args:
            image: file path, PIL image or uint8 array; any Pillow mode (16-bit, CMYK, palette, ...).
            object_mask: file path, PIL image or array, white = object (see `masks.as_object_mask`).
            size: output (width, height) or 'WxH'; aspect: 'W:H'; object_scale, position: see
                `masks.place_on_canvas`. By default the output has the photo's own size.

        Returns:
            `Prepared`.

        Raises:
            ValueError: naming the input, when it is unreadable, has no usable object, or its object leaves
                nothing to generate.
        """
        is_file = isinstance(image, (str, Path))
        name = str(image) if is_file else "image"
        photo = load_image(image) if is_file else image  # its errors name the file already
        try:
            rgb, mask, source = self._find_object(photo, object_mask, name)
            size = canvas_size(rgb.size, size, aspect)
            check_canvas_size(size)
            canvas, canvas_mask = place_on_canvas(rgb, mask, size, object_scale, position)
            _check_object(canvas_mask)
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from err
        return Prepared(canvas, canvas_mask, source, name)

    def _find_object(self, photo, object_mask, name):
        """(RGB image, object mask, where the mask came from), by the order documented in `prepare`."""
        rgb, alpha = split_cutout(photo)
        if alpha is not None:
            if object_mask is not None:
                warnings.warn(
                    f"{name}: its alpha channel is the object; the mask given as well is not used.", stacklevel=3
                )
            return rgb, alpha, "alpha"
        if object_mask is not None:
            is_file = isinstance(object_mask, (str, Path))
            mask = load_object_mask(object_mask) if is_file else as_object_mask(object_mask)
            what = f"the mask {object_mask}" if is_file else "the object mask"
            return rgb, fit_mask_to_image(mask, rgb.size, what), "mask"
        if self.segmenter is None:
            raise ValueError("it has no alpha channel, no object mask was given and no segmenter is set.")
        source = self.segmenter if isinstance(self.segmenter, str) else getattr(self.segmenter, "__name__", "custom")
        return rgb, self.find_object(rgb), f"segmenter:{source}"

    def run(
        self,
        prepared,
        jobs,
        *,
        negative_prompt=None,
        num_inference_steps=None,
        guidance_scale=None,
        controlnet_conditioning_scale=recipe.CONTROLNET_CONDITIONING_SCALE,
        working_size=None,
        batch_size=1,
        callback_on_step_end=None,
        ip_adapter_image=None,
        timesteps=None,
        eta=None,
    ):
        """Generate one image per `Job`, up to `batch_size` jobs of one working size per pipeline call.

        Args:
            prepared: a `Prepared` from `prepare`, or a list of them that each job's `input_index` picks from.
                Jobs whose inputs have one working size share a call (one image and mask per output); each
                image comes back at its own input's canvas size.
            jobs: list of `Job`.
            working_size: long side to generate at (default: the model's native size).
            ip_adapter_image: a reference image (file path, PIL image or array) for the background's style, used by
                every output; needs the generator's `ip_adapter`.
            num_inference_steps, guidance_scale: None for the generator's recipe's (default the authors' 20 and
                7.5; `sampling`).
            timesteps: fixed timesteps (diffusers' `timesteps=`, descending) for schedulers that take them; their
                count is the number of steps (None: the recipe's, where `num_inference_steps` is not given).
            eta: the scheduler step's `eta` (None: the recipe's, else the pipeline's, 0).
            The rest are the pipeline's arguments of the same names (`callback_on_step_end` is called in
            every pipeline call; setting `pipe._interrupt` there skips the call's remaining steps).

        Returns:
            list of RGB PIL images of their input's canvas size, in the order of `jobs`.
        """
        import torch

        sampling = self.sampling(num_inference_steps, guidance_scale, timesteps, eta)
        num_inference_steps, guidance_scale, timesteps, eta = sampling.values()
        check_sampling(
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            controlnet_conditioning_scale=controlnet_conditioning_scale,
            working_size=working_size,
        )
        inputs = prepared if isinstance(prepared, list) else [prepared]
        reference = None if ip_adapter_image is None else self.reference_image(ip_adapter_image)
        images = []
        with self._reference_or_placeholder(reference) as reference:
            for batch in _batches(
                jobs, batch_size, key=lambda job: self.working_size(inputs[job.input_index].image.size, working_size)
            ):
                chosen = [inputs[job.input_index] for job in batch]
                shared = len({job.input_index for job in batch}) == 1  # one image for all outputs of the call
                width, height = self.working_size(chosen[0].image.size, working_size)
                result = self.pipe(
                    [job.prompt for job in batch],
                    image=chosen[0].image if shared else [p.image for p in chosen],
                    object_mask=chosen[0].object_mask if shared else [p.object_mask for p in chosen],
                    height=height,
                    width=width,
                    negative_prompt=None if negative_prompt is None else [negative_prompt] * len(batch),
                    num_inference_steps=num_inference_steps,
                    guidance_scale=guidance_scale,
                    controlnet_conditioning_scale=controlnet_conditioning_scale,
                    # CPU generators: the same seed gives the same noise on every device.
                    generator=[torch.Generator("cpu").manual_seed(job.seed) for job in batch],
                    callback_on_step_end=callback_on_step_end,
                    timesteps=timesteps,
                    **({} if reference is None else {"ip_adapter_image": reference}),
                    **({} if eta is None else {"eta": eta}),
                )
                images.extend(result.images)
        return images

    def sampling(self, num_inference_steps=None, guidance_scale=None, timesteps=None, eta=None):
        """A call's sampling values: those given (not None), the rest the generator's recipe's (default the authors'),
        by the command line's rule (`settings.GenerationSettings.resolve`: steps given drop the recipe's timesteps;
        timesteps given set the steps).

        Returns:
            {"num_inference_steps", "guidance_scale", "timesteps", "eta": value}, in that order.
        """
        from .settings import GenerationSettings

        values = dict(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale)
        values.update(timesteps=timesteps, eta=eta)
        given = {name: value for name, value in values.items() if value is not None}
        settings = GenerationSettings(recipe=self.recipe, **given).resolve(set(given))
        return {name: getattr(settings, name) for name in values}

    @contextlib.contextmanager
    def _reference_or_placeholder(self, reference):
        """The reference image to generate with. A UNet with an IP-Adapter needs one; without one, the outputs are
        the model's own: a placeholder image at IP-Adapter scale 0 (which adds exactly nothing), the scale restored
        after."""
        if reference is not None or not self.has_ip_adapter:
            yield reference
            return
        self.pipe.set_ip_adapter_scale(0.0)
        try:
            yield PIL.Image.new("RGB", (64, 64))
        finally:
            self.pipe.set_ip_adapter_scale(self.ip_adapter_scale)

    def reference_image(self, image):
        """An IP-Adapter reference image as RGB: a file (its errors name it), PIL image or array.

        Raises:
            ValueError: no IP-Adapter is loaded, or the file cannot be read."""
        import numpy as np

        if not self.has_ip_adapter:
            raise ValueError(
                "a reference image (ip_adapter_image) needs an IP-Adapter: BackgroundGenerator(..., ip_adapter=PATH)."
            )
        if isinstance(image, (str, Path)):
            image = load_image(image)
        elif isinstance(image, np.ndarray):
            image = PIL.Image.fromarray(image)
        return image.convert("RGB")

    def __call__(
        self,
        image,
        prompt,
        object_mask=None,
        *,
        negative_prompt=None,
        num_images_per_prompt=1,
        seed=None,
        num_inference_steps=None,
        guidance_scale=None,
        controlnet_conditioning_scale=recipe.CONTROLNET_CONDITIONING_SCALE,
        size=None,
        aspect=None,
        object_scale=None,
        position=DEFAULT_POSITION,
        working_size=None,
        batch_size=1,
        ip_adapter_image=None,
        timesteps=None,
        eta=None,
    ):
        """New backgrounds around the object in `image`.

        Args:
            image: file path, PIL image or array; an RGBA cutout's alpha is its object. Or a list: one image
                per prompt or one per output (`masks.line_up`).
            prompt: a prompt or a list of prompts.
            object_mask: path, PIL image or array, white = object (when the image has no alpha channel); or a
                list, lined up with the outputs like the images.
            negative_prompt: what to avoid, for every prompt.
            num_images_per_prompt: images per prompt; image k of every prompt uses seed `seed + k`.
            seed: int; default a random one. Each image's seed is in its `.info["seed"]`.
            num_inference_steps, guidance_scale, controlnet_conditioning_scale: as in the pipeline
                (`controlnet_conditioning_scale=0` is the base model alone: plain SD2-inpainting, "SI2", or SDXL's);
                steps and guidance None: the generator's recipe's (default the authors' 20 and 7.5).
            size, aspect, object_scale, position: the output canvas (see `prepare`).
            working_size: long side to generate at (default: the model's native size, 512 for SD2, 1024 for SDXL).
            batch_size: images per pipeline call.
            ip_adapter_image: a reference image (path, PIL image or array) for the background's style; needs the
                generator's `ip_adapter`.
            timesteps, eta: see `run`.

        Returns:
            list of RGB PIL images, prompt by prompt, at the canvas size (by default the input's), with
            the object's pixels exact; `.info` holds `prompt`, `prompt_index` and `seed`.

        Raises:
            ValueError: naming the argument and both counts when a list of images or masks does not line up
                with the outputs; naming the input when it cannot be used.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        jobs = make_jobs(prompts, num_images_per_prompt, seed)
        images, masks = _as_list(image), _as_list(object_mask)
        rows = list(
            zip(
                line_up(len(images), len(prompts), num_images_per_prompt, "image"),
                line_up(len(masks), len(prompts), num_images_per_prompt, "object_mask"),
            )
        )
        pairs = list(dict.fromkeys(rows))  # each distinct (image, mask) is read and placed once
        canvas = dict(size=size, aspect=aspect, object_scale=object_scale, position=position)
        prepared = [self.prepare(images[i], masks[j], **canvas) for i, j in pairs]
        for job, row in zip(jobs, rows, strict=True):
            job.input_index = pairs.index(row)
        images = self.run(
            prepared,
            jobs,
            negative_prompt=negative_prompt,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            controlnet_conditioning_scale=controlnet_conditioning_scale,
            working_size=working_size,
            batch_size=batch_size,
            ip_adapter_image=ip_adapter_image,
            timesteps=timesteps,
            eta=eta,
        )
        for job, result in zip(jobs, images, strict=True):
            result.info.update(prompt=job.prompt, prompt_index=job.prompt_index, seed=job.seed)
        return images

    generate = __call__


def make_jobs(prompts, num_images_per_prompt=1, seed=None):
    """One `Job` per (prompt, image): image k of every prompt gets seed `seed + k` (`seed` drawn if None)."""
    if num_images_per_prompt < 1:
        raise ValueError(f"num_images_per_prompt must be at least 1, not {num_images_per_prompt}.")
    seed = secrets.randbelow(SEED_RANGE) if seed is None else int(seed)
    return [Job(p, prompt, seed + k) for p, prompt in enumerate(prompts) for k in range(num_images_per_prompt)]


def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _batches(jobs, batch_size, key):
    """Consecutive jobs in groups of at most `batch_size` whose `key` is the same."""
    batch = []
    for job in jobs:
        if batch and (len(batch) == batch_size or key(job) != key(batch[0])):
            yield batch
            batch = []
        batch.append(job)
    if batch:
        yield batch


def _check_object(object_mask):
    problem = object_coverage_problem(object_mask)
    if problem == "empty":
        raise ValueError(f"the object mask is empty (no pixel >= {OBJECT_THRESHOLD}): there is no object to keep.")
    if problem == "full":
        raise ValueError(
            "the object fills the whole image, so there is no background to generate: give it room with "
            "an aspect ratio, a size or an object scale (--aspect, --size, --object-scale)."
        )


@functools.lru_cache(maxsize=1)
def _cached_generator(model, controlnet, device, dtype, scheduler, segmenter, loading):
    return BackgroundGenerator(
        model, controlnet, device=device, dtype=dtype, scheduler=scheduler, segmenter=segmenter, **dict(loading)
    )


def generate(
    image,
    prompt,
    object_mask=None,
    *,
    model=None,
    controlnet=None,
    device=None,
    dtype=None,
    scheduler=None,
    scheduler_options=None,
    recipe=None,
    segmenter=DEFAULT_SEGMENTER,
    vae=None,
    loras=(),
    ip_adapter=None,
    ip_adapter_scale=IP_ADAPTER_SCALE,
    **kwargs,
):
    """New backgrounds around the object in `image`, with a model loaded on first use and kept for the
    next call with the same model settings.

    Args:
        image, prompt, object_mask: see `BackgroundGenerator.__call__`, which takes the other keyword
            arguments too (`seed`, `num_images_per_prompt`, `num_inference_steps`, `aspect`,
            `ip_adapter_image`, ...).
        model, controlnet, device, dtype, scheduler, scheduler_options, recipe, segmenter, vae, loras, ip_adapter,
            ip_adapter_scale: see `BackgroundGenerator` (e.g. `recipe="sdxl-lightning-4"` with its LoRA in `loras`;
            `num_inference_steps=...` and the other sampling arguments override the recipe's).

    Returns:
        list of PIL images (see `BackgroundGenerator.__call__`).
    """
    from .models.adapters import parse_lora

    loading = dict(
        scheduler_options=tuple(
            scheduler_options.items() if isinstance(scheduler_options, dict) else scheduler_options or ()
        ),
        recipe=recipe,
        vae=vae,
        loras=tuple(parse_lora(lora) for lora in loras),
        ip_adapter=ip_adapter,
        ip_adapter_scale=ip_adapter_scale,
    )
    generator = _cached_generator(model, controlnet, device, dtype, scheduler, segmenter, tuple(loading.items()))
    return generator(image, prompt, object_mask, **kwargs)


def _recipe_settings(name, model, pipe, loras, scheduler, options):
    """The `settings.GenerationSettings` of recipe `name` for `BackgroundGenerator`, the scheduler and options given
    (not None) overriding the recipe's, checked as `photobg generate` checks them (the backbone read from `pipe`
    where given, else from `model`'s configs).

    Raises:
        ValueError: the message `photobg generate` gives, naming the arguments instead of the flags.
    """
    from .backbones import backbone_from_configs
    from .settings import GenerationSettings, SettingsError

    given = {key: value for key, value in (("scheduler", scheduler), ("scheduler_options", options)) if value}
    backbone = None if pipe is None else backbone_from_configs(dict(pipe.config), dict(pipe.unet.config)).name
    if pipe is not None:  # what messages call the model
        model = type(pipe).__name__
    model = {} if model is None else {"model": str(model)}
    settings = GenerationSettings(recipe=name, loras=list(loras), **model, **given).resolve(set(given))
    try:
        settings.check_scheduler_settings(names="name", backbone=backbone)
    except SettingsError as err:
        raise ValueError(str(err)) from None
    return settings


def load_generator(settings, fuse_loras=True):
    """A `BackgroundGenerator` of checked `settings.GenerationSettings`, for `photobg generate` and the app: a
    model that cannot be loaded ends the command with the loader's message. `fuse_loras`: see
    `BackgroundGenerator`."""
    try:
        generator = BackgroundGenerator(**settings.loading(), fuse_loras=fuse_loras)
    except (OSError, ValueError, ImportError) as err:
        raise SystemExit(f"Could not load the model: {err}") from None
    generator.pipe.set_progress_bar_config(disable=True)  # one bar, over the photos
    return generator


def comparison_grid(rows, labels, row_labels=None, tile=512):
    """A labelled grid of images, one row per list in `rows`, each image fitted into a `tile`-pixel square.

    Args:
        rows: list of lists of PIL images (any mode; masks are shown in gray).
        labels: one column title per image of a row.
        row_labels: optional text per row, written on the row's first image.
        tile: the long side of each cell in pixels.

    Returns:
        RGB PIL image.
    """
    import PIL.ImageFont

    first = rows[0][0]
    scale = tile / max(first.size)
    cell = (max(1, round(first.width * scale)), max(1, round(first.height * scale)))
    font = PIL.ImageFont.load_default(size=max(12, tile // 24))
    header = font.size + 12
    grid = PIL.Image.new("RGB", (cell[0] * len(labels), header + cell[1] * len(rows)), "white")
    draw = PIL.ImageDraw.Draw(grid)
    for column, label in enumerate(labels):
        draw.text((column * cell[0] + 6, 6), label, fill="black", font=font)
    for r, row in enumerate(rows):
        top = header + r * cell[1]
        for column, image in enumerate(row):
            grid.paste(image.convert("RGB").resize(cell, PIL.Image.LANCZOS), (column * cell[0], top))
        if row_labels:
            draw.text((6, top + 6), row_labels[r], fill="white", font=font, stroke_width=2, stroke_fill="black")
    return grid
