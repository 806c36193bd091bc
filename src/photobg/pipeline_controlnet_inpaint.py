"""Salient-object-aware background generation: Stable Diffusion 2 (inpainting or base) + a ControlNet.

This file is self-contained (torch, diffusers, transformers, numpy, PIL only), so it also works as a Hub
custom pipeline:

    DiffusionPipeline.from_pretrained(model, custom_pipeline="pipeline_controlnet_inpaint.py")

The method (Eshratifar et al., "Salient Object-Aware Background Generation using Text-Guided Diffusion
Models", CVPR 2024 GCV workshop): inpainting models tend to grow the object into the new background
("object expansion"). A ControlNet trained on salient-object masks steers the UNet away from that.

- Inpaint variant (9-channel SD2-inpainting UNet): the ControlNet was initialised from the UNet, so it
  takes the UNet's own 9-channel input (noisy latents, latent-size mask, masked-image latents); its
  `controlnet_cond` is the inpaint mask as a 3-channel image in [0, 1].
- Base variant (4-channel SD2-base UNet): the ControlNet sees the 4 noisy latents and, as
  `controlnet_cond`, the object's pixels on black in [0, 1]; the object region is kept by blending the
  known image's latents back after every step.

Mask conventions: `object_mask` is white (255) on the object to keep, soft values allowed, binarised at
128. `mask_image`/`control_image` (diffusers' and the original code's inputs) are white on the region to
generate. The functions below are the only place these conventions are turned into tensors; training
uses the same ones.
"""

import sys

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
import transformers
from transformers.utils import is_torchvision_available


def _prefer_pil_image_processors():
    """Bind `CLIPImageProcessor` and `SiglipImageProcessor` to their PIL classes when torchvision is missing.

    diffusers imports both names at import time (the safety checker's feature extractor, IP-Adapter's image
    encoder). In transformers 5 they name the torchvision backend; without torchvision, transformers falls
    back to the PIL classes and warns on every run. This pipeline needs no image processor, so it asks for the
    PIL classes directly: the same classes, without the warning.
    """
    if is_torchvision_available():
        return
    for name in ("CLIPImageProcessor", "SiglipImageProcessor"):
        pil_class = getattr(transformers, f"{name}Pil", None)
        if pil_class is not None:
            # Loading a class can put a fresh lazy module in sys.modules; `from transformers import` reads that one.
            setattr(sys.modules["transformers"], name, pil_class)


_prefer_pil_image_processors()  # before diffusers binds the names

from diffusers import ControlNetModel  # noqa: E402
from diffusers import StableDiffusionControlNetInpaintPipeline as _DiffusersControlNetInpaintPipeline  # noqa: E402
from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput  # noqa: E402

OBJECT_THRESHOLD = 128  # object_mask >= 128 (of 255) is object
OUTPUT_TYPES = ("pil", "np", "pt", "latent")


# ----------------------------------------------------------------------------- conventions


def split_object(image, object_mask=None):
    """Split an input into its RGB image and its object mask.

    Args:
        image: PIL image (any mode) or uint8 array (H, W), (H, W, 3) or (H, W, 4). Its transparency (RGBA, LA,
            or a palette with transparency) is the object mask when `object_mask` is not given.
        object_mask: anything `as_object_mask` reads, white = object.

    Returns:
        (RGB PIL image, object mask as an "L" PIL image, or None when there is neither mask nor transparency).
    """
    rgb, alpha = split_cutout(image)
    return rgb, alpha if object_mask is None else as_object_mask(object_mask)


def has_alpha(image):
    """Whether `image` (PIL or array) has transparency, i.e. is a cutout whose alpha is the object."""
    if not isinstance(image, PIL.Image.Image):
        array = np.asarray(image)
        if array.ndim != 3 or array.shape[2] not in (2, 4):
            return False
        image = PIL.Image.fromarray(array)
    return _transparency(image) is not None


# Pillow's own conversion of these modes to "L"/"RGB" clips at 255 instead of scaling, so they are scaled here.
_WIDE_GRAY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def _gray_array(image):
    """A gray PIL image as a uint8 array: 16-bit scaled from 0..65535, float from 0..1, 8-bit as it is."""
    array = np.asarray(image)
    if image.mode == "F":
        scale = 255.0 if array.max(initial=0) <= 1 else 1.0
        return np.clip(np.round(array * scale), 0, 255).astype(np.uint8)
    if image.mode in _WIDE_GRAY_MODES:
        return np.clip(np.round(array.astype(np.float64) / 257), 0, 255).astype(np.uint8)
    return np.asarray(image.convert("L"))


def split_cutout(image):
    """An input photo as (RGB image, alpha or None): the alpha only where the image has transparency.

    Any Pillow mode is accepted: grayscale (8- or 16-bit), palette (its transparency is an alpha channel),
    CMYK, RGBA/LA. An alpha channel that is opaque everywhere carries no object and is dropped.

    Args:
        image: PIL image, or uint8 array (H, W), (H, W, 3) or (H, W, 4).

    Returns:
        (RGB PIL image, "L" alpha image or None).
    """
    if not isinstance(image, PIL.Image.Image):
        image = PIL.Image.fromarray(np.asarray(image))
    alpha = _transparency(image)
    if image.mode in _WIDE_GRAY_MODES:
        image = PIL.Image.fromarray(_gray_array(image), "L")
    return image.convert("RGB"), alpha


def _transparency(image):
    """The alpha channel ("L") of an image that has one and is not opaque everywhere, else None."""
    if image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
        alpha = image.convert("RGBA").getchannel("A")
        if alpha.getextrema()[0] < 255:
            return alpha
    return None


def as_object_mask(mask):
    """An object mask in any common form as an "L" image, white (255) = object. The rules, one per kind:

    - an alpha channel with transparency (a cutout, an RGBA/LA mask, a palette with transparency): the alpha;
    - 16-bit gray: scaled from 0..65535 to 0..255 when it uses that range (has values above 255);
    - float arrays: scaled from 0..1; bool arrays: True = object;
    - RGB, CMYK and palette masks: the brightest channel, so a white or a coloured object on black both count;
    - a mask whose only values are 0 and 1 (a label map): 1 = object.

    Soft values are kept; `OBJECT_THRESHOLD` binarises where needed.

    Args:
        mask: PIL image or array (H, W) / (H, W, C) of uint8, uint16, bool or float.

    Returns:
        "L" PIL image.
    """
    if not isinstance(mask, PIL.Image.Image):
        array = np.asarray(mask)
        if array.dtype == bool:
            return PIL.Image.fromarray(array.astype(np.uint8) * 255, "L")
        if np.issubdtype(array.dtype, np.floating):
            return PIL.Image.fromarray(np.clip(np.round(array * 255), 0, 255).astype(np.uint8), "L")
        mask = PIL.Image.fromarray(array)
    alpha = _transparency(mask)
    if alpha is not None:
        return alpha
    if mask.mode == "F":
        gray = _gray_array(mask)
    elif mask.mode in _WIDE_GRAY_MODES:
        gray = np.asarray(mask, dtype=np.float64)
        gray = np.round(gray / 257 if gray.max(initial=0) > 255 else gray).clip(0, 255).astype(np.uint8)
    elif mask.mode in ("L", "1"):
        gray = np.asarray(mask.convert("L"))
    else:
        gray = np.asarray(mask.convert("RGB")).max(axis=2)
    if gray.max(initial=0) == 1:  # a label map: 1 = object
        gray = gray * 255
    return PIL.Image.fromarray(gray, "L")


def object_coverage_problem(object_mask):
    """Why an object mask cannot be used: "empty" (no pixel >= `OBJECT_THRESHOLD`, nothing to keep), "full"
    (every pixel is object, nothing to generate), or None when it can."""
    binary = np.asarray(object_mask) >= OBJECT_THRESHOLD
    if not binary.any():
        return "empty"
    return "full" if binary.all() else None


def object_mask_to_tensor(object_mask, size):
    """An object mask ("L" PIL image) resized (bilinear) to `size` = (width, height), as (1, 1, H, W) in [0, 1]."""
    if object_mask.size != tuple(size):
        object_mask = object_mask.resize(tuple(size), PIL.Image.BILINEAR)
    return torch.from_numpy(np.asarray(object_mask, dtype=np.float32) / 255.0)[None, None]


def inpaint_mask_from_object(object_mask):
    """Binary inpaint mask (1 = region to generate) from an object mask tensor in [0, 1] (>= 128/255 = object)."""
    return (object_mask < 0.5).to(object_mask.dtype)


def make_control_image(image, inpaint_mask, unet_in_channels):
    """The ControlNet's conditioning image, the same in training and at inference.

    Args:
        image: (B, 3, H, W) in [-1, 1].
        inpaint_mask: (B, 1, H, W), 1 = region to generate.
        unet_in_channels: 9 (inpaint variant) or 4 (base variant).

    Returns:
        (B, 3, H, W) in [0, 1]: the inpaint mask as 3 channels (inpaint variant), or the object's pixels on
        black (base variant).
    """
    if unet_in_channels == 9:
        return inpaint_mask.expand(-1, 3, -1, -1).clone()
    return (image + 1) / 2 * (1 - inpaint_mask)


def unet_input(latents, mask, masked_image_latents):
    """The UNet's (and the inpaint ControlNet's) input: 4 latent channels, plus for a 9-channel UNet the
    latent-size inpaint mask and the masked-image latents. Pass `mask=None` for a 4-channel UNet."""
    if mask is None:
        return latents  # (B, 4, h, w)
    return torch.cat([latents, mask, masked_image_latents], dim=1)  # (B, 9, h, w)


def paste_object(generated, original, object_mask):
    """Composite the original object over a generated image with the soft object mask.

    Args:
        generated: (H, W, 3) float array in [0, 1].
        original: (H, W, 3) uint8 array.
        object_mask: (H, W) uint8 array, 255 = object.

    Returns:
        (H, W, 3) float32 array; where the mask is 255 it equals `original / 255` exactly.
    """
    alpha = (np.asarray(object_mask, dtype=np.float32) / 255.0)[..., None]
    return alpha * (np.asarray(original, dtype=np.float32) / 255.0) + (1 - alpha) * generated


# ----------------------------------------------------------------------------- pipeline


class StableDiffusionControlNetInpaintPipeline(_DiffusersControlNetInpaintPipeline):
    r"""Background generation around a salient object with SD2(-inpainting) and a salient-aware ControlNet.

    Components and loading methods are those of diffusers' `StableDiffusionControlNetInpaintPipeline`
    (same `model_index.json`); `__call__` differs: the ControlNet of a 9-channel UNet receives the UNet's
    9-channel input, and an object-centric mode takes the object mask directly and keeps the object's
    pixels exact.
    """

    @torch.no_grad()
    def __call__(
        self,
        prompt=None,
        image=None,
        mask_image=None,
        control_image=None,
        height=None,
        width=None,
        strength=1.0,
        num_inference_steps=50,
        guidance_scale=7.5,
        negative_prompt=None,
        num_images_per_prompt=1,
        eta=0.0,
        generator=None,
        latents=None,
        prompt_embeds=None,
        negative_prompt_embeds=None,
        output_type="pil",
        return_dict=True,
        cross_attention_kwargs=None,
        controlnet_conditioning_scale=1.0,
        guess_mode=False,
        control_guidance_start=0.0,
        control_guidance_end=1.0,
        clip_skip=None,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs=("latents",),
        object_mask=None,
        preserve_object=None,
    ):
        r"""Generate a background around the object in `image`.

        Args:
            prompt (`str` or `list[str]`): what to generate; or pass `prompt_embeds`.
            image (PIL image, array, tensor, or a list of one per prompt): the photo. An RGBA image (with
                neither `mask_image` nor `object_mask`) is read as a cutout: its alpha is the object.
            mask_image: region to generate, white = generate (the original code's and diffusers' convention).
            control_image: the ControlNet's conditioning image; by default derived from the mask (inpaint
                variant: the inpaint mask; base variant: the object on black).
            height, width (`int`): working size, multiples of 8. Default: the image's size rounded down to a
                multiple of 8. In object mode the result is returned at the input's own size.
            strength, num_inference_steps, guidance_scale, negative_prompt, num_images_per_prompt, eta,
            generator, latents, prompt_embeds, negative_prompt_embeds, cross_attention_kwargs, clip_skip:
                as in diffusers' Stable Diffusion pipelines.
            output_type (`str`): "pil", "np" (float in [0, 1]), "pt" (tensor (B, 3, H, W) in [0, 1]) or "latent".
            controlnet_conditioning_scale (`float`): weight of the ControlNet's residuals; 0 is plain
                SD2-inpainting (the ControlNet is then not run at all).
            guess_mode (`bool`): run the ControlNet on the conditional half of the guidance batch only.
            control_guidance_start, control_guidance_end (`float`): fraction of the steps during which the
                ControlNet is applied; outside it the ControlNet is not run.
            callback_on_step_end: `callback(pipe, step, timestep, tensors)` after each step; may return
                replacements for the tensors named in `callback_on_step_end_tensor_inputs`.
            object_mask: object mode: white (255) = the object to keep (soft values allowed; binarised at
                128 for generation). Must have the image's size.
            preserve_object (`bool`): object mode only (default True there): composite the original object
                pixels back with the soft object mask, so the object is pixel-exact.

        Returns:
            `StableDiffusionPipelineOutput` with `.images` (or a tuple `(images, nsfw_flags)`).
        """
        # 1. Inputs: in object mode derive the region to generate from the object; check everything
        objects = None
        if object_mask is not None or (mask_image is None and _any_alpha(image)):
            objects = self._load_objects(image, object_mask, mask_image, control_image)
            height = height or objects[0][0].height // self.vae_scale_factor * self.vae_scale_factor
            width = width or objects[0][0].width // self.vae_scale_factor * self.vae_scale_factor
        else:
            self._check_seed_inputs(image, mask_image, preserve_object)
            height, width = self.image_processor.get_default_height_width(_first(image), height, width)
        self.check_inputs(
            prompt,
            prompt_embeds,
            height,
            width,
            strength,
            control_guidance_start,
            control_guidance_end,
            output_type,
            callback_on_step_end_tensor_inputs,
        )
        self._guidance_scale = guidance_scale
        self._clip_skip = clip_skip
        self._cross_attention_kwargs = cross_attention_kwargs
        self._interrupt = False
        batch_size = 1 if isinstance(prompt, str) else len(prompt) if prompt is not None else len(prompt_embeds)
        total = batch_size * num_images_per_prompt
        device = self._execution_device
        guess_mode = guess_mode or self.controlnet.config.global_pool_conditions

        # 2. Encode the prompt (negative first, then positive, for classifier-free guidance)
        lora_scale = (cross_attention_kwargs or {}).get("scale")
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt,
            device,
            num_images_per_prompt,
            self.do_classifier_free_guidance,
            negative_prompt,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            lora_scale=lora_scale,
            clip_skip=clip_skip,
        )
        if self.do_classifier_free_guidance:
            prompt_embeds = torch.cat([negative_prompt_embeds, prompt_embeds])

        # 3. Image, inpaint mask and control image at the working size
        init_image, mask_condition, control_image = self._prepare_images(
            image, mask_image, control_image, objects, height, width
        )
        expand = dict(batch_size=batch_size, num_images_per_prompt=num_images_per_prompt, generator=generator)
        init_image, mask_condition = (_expand(x, **expand) for x in (init_image, mask_condition))
        control_image = _expand(control_image, batch_size, num_images_per_prompt, always=True)
        control_image = control_image.to(device=device, dtype=self.controlnet.dtype)
        if self.do_classifier_free_guidance and not guess_mode:
            control_image = torch.cat([control_image] * 2)
        masked_image = init_image * (mask_condition < 0.5)  # the region to generate zeroed

        # 4. Timesteps
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps, num_inference_steps = self.get_timesteps(num_inference_steps, strength, device)
        if num_inference_steps < 1:
            raise ValueError(f"strength={strength} leaves no denoising steps out of {num_inference_steps}.")
        self._num_timesteps = len(timesteps)

        # 5. Initial latents (and, for the 4-channel UNet, the known image's latents to blend back)
        in_channels = self.unet.config.in_channels
        latents, noise, *image_latents = self.prepare_latents(
            total,
            self.vae.config.latent_channels,
            height,
            width,
            prompt_embeds.dtype,
            device,
            generator,
            latents,
            image=init_image,
            timestep=timesteps[:1].repeat(total),
            is_strength_max=strength == 1.0,
            return_noise=True,
            return_image_latents=in_channels == 4,
        )

        # 6. Latent-size mask and masked-image latents (doubled for guidance)
        mask, masked_image_latents = self.prepare_mask_latents(
            mask_condition,
            masked_image,
            total,
            height,
            width,
            prompt_embeds.dtype,
            device,
            generator,
            self.do_classifier_free_guidance,
        )

        # 7. Denoising loop
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)
        scales = _controlnet_scales(
            len(timesteps), controlnet_conditioning_scale, control_guidance_start, control_guidance_end
        )
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                noise_pred = self._predict_noise(
                    latents,
                    t,
                    prompt_embeds,
                    mask if in_channels == 9 else None,
                    masked_image_latents,
                    control_image,
                    scales[i],
                    guess_mode,
                )
                latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]
                if in_channels == 4:
                    latents = self._keep_known_region(latents, image_latents[0], noise, mask, timesteps, i)
                if callback_on_step_end is not None:
                    tensors = dict(
                        latents=latents,
                        prompt_embeds=prompt_embeds,
                        negative_prompt_embeds=negative_prompt_embeds,
                        control_image=control_image,
                        mask=mask,
                        masked_image_latents=masked_image_latents,
                    )
                    inputs = {k: tensors[k] for k in callback_on_step_end_tensor_inputs}
                    outputs = callback_on_step_end(self, i, t, inputs) or {}
                    latents = outputs.pop("latents", latents)
                    prompt_embeds = outputs.pop("prompt_embeds", prompt_embeds)
                    control_image = outputs.pop("control_image", control_image)
                progress_bar.update()

        # 8. Decode; in object mode return the input's size with the original object pasted back
        preserve_object = preserve_object is None or preserve_object
        images, nsfw = self._decode(latents, generator, output_type, objects, num_images_per_prompt, preserve_object)
        self.maybe_free_model_hooks()
        if not return_dict:
            return images, nsfw
        return StableDiffusionPipelineOutput(images=images, nsfw_content_detected=nsfw)

    # ------------------------------------------------------------------------- steps of __call__

    def check_inputs(
        self,
        prompt,
        prompt_embeds,
        height,
        width,
        strength,
        control_guidance_start,
        control_guidance_end,
        output_type,
        callback_on_step_end_tensor_inputs,
    ):
        """Raise a `ValueError` that says what is wrong with the call's inputs or with the loaded models."""
        if not isinstance(getattr(self.controlnet, "_orig_mod", self.controlnet), ControlNetModel):  # maybe compiled
            raise ValueError("This pipeline runs exactly one ControlNetModel.")
        unet_channels, controlnet_channels = self.unet.config.in_channels, self.controlnet.config.in_channels
        if unet_channels not in (4, 9):
            raise ValueError(f"The UNet takes {unet_channels} input channels; expected 9 (inpainting) or 4 (base).")
        if controlnet_channels != unet_channels:
            raise ValueError(
                f"The ControlNet takes {controlnet_channels} input channels but the UNet takes {unet_channels}: "
                "the ControlNet must be trained on this base model (9 = SD2-inpainting, 4 = SD2-base)."
            )
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("Pass exactly one of `prompt` and `prompt_embeds`.")
        if prompt is not None and not isinstance(prompt, (str, list)):
            raise ValueError(f"`prompt` must be a string or a list of strings, not {type(prompt).__name__}.")
        factor = self.vae_scale_factor
        if height < factor or width < factor or height % factor or width % factor:
            raise ValueError(
                f"The working size {width}x{height} must be multiples of {factor} (and at least {factor}); "
                f"without height/width the image's size is rounded down to a multiple of {factor}."
            )
        if not 0 <= strength <= 1:
            raise ValueError(f"`strength` must be in [0, 1], not {strength}.")
        if not 0 <= control_guidance_start <= control_guidance_end <= 1:
            raise ValueError(
                "Expected 0 <= control_guidance_start <= control_guidance_end <= 1, got "
                f"{control_guidance_start} and {control_guidance_end}."
            )
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, not {output_type!r}.")
        unknown = set(callback_on_step_end_tensor_inputs) - set(self._callback_tensor_inputs)
        if unknown:
            raise ValueError(f"Unknown callback tensors {sorted(unknown)}; choose from {self._callback_tensor_inputs}.")

    def _check_seed_inputs(self, image, mask_image, preserve_object):
        if image is None:
            raise ValueError("Pass the photo as `image`.")
        if mask_image is None:
            raise ValueError(
                "Say where the object is: `object_mask` (white = object), an RGBA `image` whose alpha is the "
                "object, or `mask_image` (white = region to generate)."
            )
        if preserve_object:
            raise ValueError("`preserve_object` needs the object: pass `object_mask` or an RGBA image.")
        for img, msk in zip(_as_list(image), _as_list(mask_image)):
            if _size(img) is not None and _size(msk) is not None and _size(img) != _size(msk):
                raise ValueError(f"`mask_image` is {_size(msk)} but `image` is {_size(img)}: they must match.")

    def _load_objects(self, image, object_mask, mask_image, control_image):
        """Object mode: [(RGB image, object mask "L" image)] per input image, checked."""
        if mask_image is not None or control_image is not None:
            raise ValueError(
                "Pass either `object_mask` / an RGBA image (object mode) or `mask_image`/`control_image`, not both."
            )
        if image is None:
            raise ValueError("Pass the photo as `image`.")
        images, masks = _as_list(image), _as_list(object_mask) if object_mask is not None else None
        if masks is not None and len(masks) not in (1, len(images)):
            raise ValueError(f"Got {len(masks)} object masks for {len(images)} images.")
        objects = []
        for k, img in enumerate(images):
            rgb, obj = split_object(img, masks[min(k, len(masks) - 1)] if masks else None)
            if obj is None:
                raise ValueError(f"Image {k} has no alpha channel and no `object_mask` was given.")
            if obj.size != rgb.size:
                raise ValueError(
                    f"The object mask is {obj.size[0]}x{obj.size[1]} but image {k} is {rgb.size[0]}x{rgb.size[1]}: "
                    "they must have the same size."
                )
            problem = object_coverage_problem(obj)
            if problem == "empty":
                raise ValueError(f"The object mask of image {k} is empty (no pixel >= {OBJECT_THRESHOLD}).")
            if problem == "full":
                raise ValueError(f"The object mask of image {k} covers the whole image: nothing to generate.")
            if objects and rgb.size != objects[0][0].size:
                raise ValueError("All images of one call must have the same size.")
            objects.append((rgb, obj))
        return objects

    def _prepare_images(self, image, mask_image, control_image, objects, height, width):
        """(image in [-1, 1], binary inpaint mask, control image in [0, 1]) at the working size."""
        if objects is not None:
            init_image = self.image_processor.preprocess([rgb for rgb, _ in objects], height=height, width=width)
            masks = [object_mask_to_tensor(obj, (width, height)) for _, obj in objects]
            mask = inpaint_mask_from_object(torch.cat(masks))
        else:
            init_image = self.image_processor.preprocess(_drop_alpha(image), height=height, width=width)
            mask = self.mask_processor.preprocess(mask_image, height=height, width=width)
        init_image = init_image.to(dtype=torch.float32)
        if control_image is None:
            control_image = make_control_image(init_image, mask, self.unet.config.in_channels)
        else:
            control_image = self.control_image_processor.preprocess(control_image, height=height, width=width)
        return init_image, mask, control_image.to(dtype=torch.float32)

    def _predict_noise(self, latents, t, prompt_embeds, mask, masked_image_latents, control_image, scale, guess_mode):
        """One guided noise prediction; the ControlNet is skipped when its scale is 0 at this step."""
        cfg = self.do_classifier_free_guidance
        latent_model_input = self.scheduler.scale_model_input(torch.cat([latents] * 2) if cfg else latents, t)
        model_input = unet_input(latent_model_input, mask, masked_image_latents)  # (2B, 9 or 4, h, w)
        down_residuals = mid_residual = None
        if scale != 0:
            control_input, control_embeds = model_input, prompt_embeds
            if guess_mode and cfg:  # ControlNet on the conditional half only
                control_input, control_embeds = model_input.chunk(2)[1], prompt_embeds.chunk(2)[1]
            down_residuals, mid_residual = self.controlnet(
                control_input,
                t,
                encoder_hidden_states=control_embeds,
                controlnet_cond=control_image,
                conditioning_scale=scale,
                guess_mode=guess_mode,
                return_dict=False,
            )
            if guess_mode and cfg:
                down_residuals = [torch.cat([torch.zeros_like(d), d]) for d in down_residuals]
                mid_residual = torch.cat([torch.zeros_like(mid_residual), mid_residual])
        noise_pred = self.unet(
            model_input,
            t,
            encoder_hidden_states=prompt_embeds,
            cross_attention_kwargs=self.cross_attention_kwargs,
            down_block_additional_residuals=down_residuals,
            mid_block_additional_residual=mid_residual,
            return_dict=False,
        )[0]
        if cfg:
            noise_uncond, noise_text = noise_pred.chunk(2)
            noise_pred = noise_uncond + self.guidance_scale * (noise_text - noise_uncond)
        return noise_pred

    def _keep_known_region(self, latents, image_latents, noise, mask, timesteps, i):
        """Base variant: put the known image back outside the region to generate, noised to the next step."""
        init_mask = mask.chunk(2)[0] if self.do_classifier_free_guidance else mask
        known = image_latents
        if i < len(timesteps) - 1:
            known = self.scheduler.add_noise(image_latents, noise, timesteps[i + 1 : i + 2])
        return (1 - init_mask) * known + init_mask * latents

    def _decode(self, latents, generator, output_type, objects, num_images_per_prompt, preserve_object):
        if output_type == "latent":
            return latents, None
        scaled = latents / self.vae.config.scaling_factor
        image = self.vae.decode(scaled, return_dict=False, generator=generator)[0]
        image, nsfw = self.run_safety_checker(image, self._execution_device, latents.dtype)
        if objects is None:
            return self.image_processor.postprocess(image, output_type=output_type), nsfw
        image = (image.float() / 2 + 0.5).clamp(0, 1)  # (N, 3, h, w) in [0, 1]
        restored = []
        for k, generated in enumerate(image):
            rgb, obj = objects[0] if len(objects) == 1 else objects[k // num_images_per_prompt]
            if generated.shape[-2:] != (rgb.height, rgb.width):
                generated = F.interpolate(generated[None], (rgb.height, rgb.width), mode="bicubic", antialias=True)
                generated = generated[0].clamp(0, 1)
            generated = generated.permute(1, 2, 0).cpu().numpy()  # (H, W, 3)
            restored.append(paste_object(generated, np.asarray(rgb), np.asarray(obj)) if preserve_object else generated)
        restored = np.stack(restored).astype(np.float32)
        if output_type == "pt":
            return torch.from_numpy(restored).permute(0, 3, 1, 2), nsfw
        return (self.numpy_to_pil(restored) if output_type == "pil" else restored), nsfw


# ----------------------------------------------------------------------------- helpers


def _controlnet_scales(num_steps, scale, start, end):
    """Per-step ControlNet scale: `scale` inside [start, end] of the schedule, 0 outside (diffusers' rule)."""
    return [0.0 if (i / num_steps < start or (i + 1) / num_steps > end) else float(scale) for i in range(num_steps)]


def _expand(images, batch_size, num_images_per_prompt, generator=None, always=False):
    """Line up a (n, C, H, W) batch of conditioning images with the (batch_size * num_images_per_prompt) outputs.

    One image serves every output (left at batch 1 for the VAE, as diffusers does, unless each output has its
    own generator or `always`); one image per prompt is repeated for that prompt's images.
    """
    n, total = images.shape[0], batch_size * num_images_per_prompt
    if n == 1:
        return images.repeat(total, 1, 1, 1) if always or isinstance(generator, list) else images
    if n == batch_size:
        return images.repeat_interleave(num_images_per_prompt, dim=0)
    if n == total:
        return images
    raise ValueError(f"Got {n} images for {batch_size} prompts: pass one image, or one per prompt.")


def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _first(x):
    return x[0] if isinstance(x, (list, tuple)) else x


def _any_alpha(image):
    return image is not None and any(has_alpha(img) for img in _as_list(image))


def _drop_alpha(image):
    """PIL images with alpha or palettes -> RGB (diffusers' image processor expects 3 channels)."""
    if isinstance(image, (list, tuple)):
        return [_drop_alpha(img) for img in image]
    if isinstance(image, PIL.Image.Image) and image.mode != "RGB":
        return image.convert("RGB")
    return image


def _size(image):
    """(width, height) of a PIL image or an (H, W[, C]) array; None for tensors (sized by diffusers)."""
    if isinstance(image, PIL.Image.Image):
        return image.size
    if isinstance(image, np.ndarray) and image.ndim in (2, 3):
        return (image.shape[1], image.shape[0])
    return None
