"""The method of salient-object-aware background generation, written once for every backbone.

Eshratifar et al., "Salient Object-Aware Background Generation using Text-Guided Diffusion Models" (CVPR 2024
GCV workshop): inpainting models tend to grow the object into the new background ("object expansion"). A
ControlNet trained on salient-object masks steers the UNet away from that.

- Inpaint variant (9-channel inpainting UNet: SD2- or SDXL-inpainting): the ControlNet was initialised from
  the UNet, so it takes the UNet's own 9-channel input (noisy latents, latent-size mask, masked-image
  latents); its `controlnet_cond` is the soft inpaint mask as a 3-channel image in [0, 1].
- Base variant (4-channel text-to-image UNet: SD2- or SDXL-base): the ControlNet sees the 4 noisy latents
  and, as `controlnet_cond`, the object's pixels on black in [0, 1]; the object region is kept by blending
  the known image's latents back after every step.

The method's rooms, side by side (flat, so that they travel with a pipeline file as a Hub custom pipeline):
`conventions.py` (the masks, the control image, the UNet's input, the lining-up of inputs with outputs, the
working size; training uses the same ones), `matting.py` (the paste-back of the original object), and this
module: `BackgroundMethodMixin`, the whole generation (`__call__`, in numbered steps). Each backbone's pipeline
class is diffusers' ControlNet-inpaint pipeline of that backbone with this mixin in front, and adds only its
text conditioning (`encode_conditioning`, which also takes the backbone's own `__call__` arguments) and its
output class. The conventions and the paste-back are re-exported here (`__all__`).

The rooms import only torch, diffusers, transformers, numpy and PIL, and one another relatively, so a pipeline
file that imports each of them relatively (`from .method import ...`; for a local folder diffusers copies only
the files the pipeline file imports itself) works as a Hub custom pipeline with them beside it.
"""

import functools
import inspect
import json
import os
import shutil
import sys
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
import transformers
from transformers.utils import is_torchvision_available

from .conventions import (
    OBJECT_THRESHOLD,
    as_object_mask,
    has_alpha,
    inpaint_mask_from_object,
    line_up,
    make_control_image,
    object_coverage_problem,
    object_mask_to_tensor,
    split_cutout,
    split_object,
    unet_input,
    working_size,
)
from .matting import PASTE_MARGIN, PASTE_ROWS, PASTE_TILE, estimate_foreground, paste_object, restore_size


def _prefer_pil_image_processors():
    """Bind `CLIPImageProcessor` and `SiglipImageProcessor` to their PIL classes when torchvision is missing.

    diffusers imports both names at import time (the safety checker's feature extractor, IP-Adapter's image
    encoder). In transformers 5 they name the torchvision backend; without torchvision, transformers falls
    back to the PIL classes and warns on every run. This pipeline needs no image processor, so it asks for the
    PIL classes directly: the same classes, without the warning. The pipeline files import this module before
    diffusers' pipelines for this reason.
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
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback  # noqa: E402
from diffusers.image_processor import VaeImageProcessor  # noqa: E402
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps  # noqa: E402
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import retrieve_latents  # noqa: E402
from diffusers.utils.dynamic_modules_utils import get_relative_import_files  # noqa: E402

__all__ = [
    "OBJECT_THRESHOLD",
    "OUTPUT_TYPES",
    "PASTE_MARGIN",
    "PASTE_ROWS",
    "PASTE_TILE",
    "BackgroundMethodMixin",
    "Conditioning",
    "as_object_mask",
    "estimate_foreground",
    "guidance_batch",
    "has_alpha",
    "inpaint_mask_from_object",
    "line_up",
    "make_control_image",
    "object_coverage_problem",
    "object_mask_to_tensor",
    "paste_object",
    "restore_size",
    "split_cutout",
    "split_object",
    "unet_input",
    "working_size",
]

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
# The UNet's added conditions (`added_cond_kwargs` keys) and the names diffusers' callbacks know them by.
ADDED_CONDITIONS = {"text_embeds": "add_text_embeds", "time_ids": "add_time_ids"}


# ----------------------------------------------------------------------------- the method on a pipeline


@dataclass
class Conditioning:
    """A call's text conditioning, with the backbone's added conditions, as the UNet and the ControlNet take it.

    The tensors are in the guidance batch's layout (diffusers' order: the unconditional half first when
    classifier-free guidance is on) and keyed by diffusers' callback names, so that a step-end callback can
    read and replace them (diffusers' CFG-cutoff callbacks keep only the conditional half).

    Attributes:
        tensors: `prompt_embeds` (the guidance batch) and `negative_prompt_embeds`; SDXL adds `add_text_embeds`
            and `add_time_ids` (the guidance batches of the pooled embeddings and the time ids),
            `negative_pooled_prompt_embeds` and `add_neg_time_ids`.
        image_embeds: IP-Adapter image embeddings, one (negative or None, positive) pair per adapter, or None.
            They condition the UNet only, as in diffusers' ControlNet pipelines.
    """

    tensors: dict
    image_embeds: list | None = None

    def for_controlnet(self, conditional_half=False):
        """The ControlNet's `encoder_hidden_states` and `added_cond_kwargs` (None without added conditions);
        with `conditional_half` (guess mode) those of the guidance batch's conditional half only."""

        def pick(x):
            return x.chunk(2)[1] if conditional_half else x

        added = {key: pick(self.tensors[name]) for key, name in ADDED_CONDITIONS.items() if name in self.tensors}
        return dict(encoder_hidden_states=pick(self.tensors["prompt_embeds"]), added_cond_kwargs=added or None)

    def for_unet(self, guided):
        """The UNet's `encoder_hidden_states` and `added_cond_kwargs`: the ControlNet's, plus the IP-Adapter's
        image embeddings (both halves when `guided`)."""
        kwargs = self.for_controlnet()
        if self.image_embeds is not None:
            images = [
                torch.cat([negative, positive]) if guided else positive for negative, positive in self.image_embeds
            ]
            kwargs["added_cond_kwargs"] = {**(kwargs["added_cond_kwargs"] or {}), "image_embeds": images}
        return kwargs


def guidance_batch(negative, positive, guided):
    """The guidance batch of a conditioning tensor: negative then positive rows when `guided`, else positive."""
    return torch.cat([negative, positive]) if guided else positive


class BackgroundMethodMixin:
    """The method on a diffusers ControlNet-inpaint pipeline, placed before diffusers' class of a backbone (which
    brings the components, `encode_prompt`, `prepare_latents`, `prepare_mask_latents`, `get_timesteps`, ...).

    `__call__` takes the arguments every backbone shares, by diffusers' names, and passes the rest
    (`backbone_kwargs`, e.g. SDXL's `prompt_2` and `original_size`) to the backbone's `encode_conditioning`; each
    class's `__call__` signature names them (`__init_subclass__`). The class takes one ControlNet. A
    backbone's class adds `encode_conditioning` and `pipeline_output`; it may override `vae_needs_upcast` and
    `finish_decoded`. `save_pretrained` writes the class's file and the method's into the folder and names the class
    in `model_index.json`, so that plain diffusers (`DiffusionPipeline.from_pretrained(folder,
    trust_remote_code=True)`) builds the class rather than diffusers' own of the same name, which cannot run the
    9-channel ControlNet.
    """

    # The registry names (`photobg.backbones`) of the class's backbones by UNet input channels, for messages.
    variant_backbones = {}

    def __init_subclass__(cls, **kwargs):
        """Give each class a `__call__` whose signature names every argument it takes: the shared ones, then the
        backbone's own (`encode_conditioning`'s keyword-only parameters) in place of `**backbone_kwargs`. Tools
        that read the signature (diffusers' tests pass only the `encode_prompt` outputs it names) see SDXL's
        `pooled_prompt_embeds` and the rest; the call itself is the inherited one."""
        super().__init_subclass__(**kwargs)
        if "__call__" in vars(cls):
            return
        inherited = cls.__call__

        @functools.wraps(inherited)
        def __call__(self, *args, **kwargs):
            return inherited(self, *args, **kwargs)

        shared = inspect.signature(BackgroundMethodMixin.__call__).parameters.values()
        own = inspect.signature(cls.encode_conditioning).parameters.values()
        __call__.__signature__ = inspect.Signature(
            [p for p in shared if p.kind is not p.VAR_KEYWORD] + [p for p in own if p.kind is p.KEYWORD_ONLY]
        )
        cls.__call__ = __call__

    def register_modules(self, **kwargs):
        """diffusers' `register_modules`, which its `__init__` calls: refuses several ControlNets when the
        pipeline is built (diffusers' `__init__` has wrapped a list in a `MultiControlNetModel` by then)."""
        if kwargs.get("controlnet") is not None:  # None: a pipeline of some components only, as in diffusers
            _check_one_controlnet(kwargs["controlnet"], type(self).__name__)
        super().register_modules(**kwargs)

    # ------------------------------------------------------------------------- a backbone's hooks

    def encode_conditioning(self, prompt_kwargs, height, width, **backbone_kwargs):
        """The call's `Conditioning` (without IP-Adapter embeddings): the backbone's text encoding and added
        conditions.

        Args:
            prompt_kwargs: the arguments of diffusers' `encode_prompt` that every backbone shares: `prompt`,
                `negative_prompt`, `prompt_embeds`, `negative_prompt_embeds`, `num_images_per_prompt`, `device`,
                `do_classifier_free_guidance`, `lora_scale`, `clip_skip`.
            height, width: the working size.
            backbone_kwargs: the backbone's own `__call__` arguments, keyword-only parameters of its override.
        """
        raise NotImplementedError

    def pipeline_output(self, images, nsfw, return_dict):
        """`__call__`'s result: the backbone's diffusers output class, or a tuple when not `return_dict`."""
        raise NotImplementedError

    def vae_needs_upcast(self):
        """Whether the VAE must decode in float32 (SDXL's VAE overflows in fp16)."""
        return False

    def finish_decoded(self, image, dtype):
        """The backbone's last touch on decoded images (B, 3, H, W) in [-1, 1], before the object is pasted back:
        (images, NSFW flags or None)."""
        return image, None

    # ------------------------------------------------------------------------- generation

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
        timesteps=None,
        guidance_scale=7.5,
        negative_prompt=None,
        num_images_per_prompt=1,
        eta=0.0,
        generator=None,
        latents=None,
        prompt_embeds=None,
        negative_prompt_embeds=None,
        ip_adapter_image=None,
        ip_adapter_image_embeds=None,
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
        **backbone_kwargs,
    ):
        r"""Generate a background around the object in `image`.

        Args:
            prompt (`str` or `list[str]`): what to generate; or pass `prompt_embeds`.
            image (PIL image, array, tensor, or a list): the photo. An RGBA image (with neither `mask_image`
                nor `object_mask`) is read as a cutout: its alpha is the object. A list holds one image for
                every output, one per prompt or one per output (`line_up`); so do lists of `mask_image`,
                `control_image`, `object_mask` and `generator`, each lined up on its own.
            mask_image: region to generate, white = generate (the original code's and diffusers' convention);
                binarised at 0.5 for the UNet.
            control_image: the ControlNet's conditioning image; by default derived from the soft mask
                (`make_control_image`: inpaint variant, the inpaint mask; base variant, the object on black).
            height, width (`int`): working size, multiples of 8. Default: in object mode the image's size
                rounded to the nearest multiple of 8 (`working_size`), and the result is returned at the input's
                own size (so with `height` and `width` given, the images of one call may differ in size: each
                comes back at its own, as PIL images); otherwise diffusers' rule (rounded down).
            timesteps (`list[int]`): fixed timesteps, in descending order, for schedulers whose `set_timesteps`
                takes them (diffusers' `timesteps=`); their count is then the number of steps.
            strength, num_inference_steps, guidance_scale, negative_prompt, num_images_per_prompt, eta,
            generator, latents, prompt_embeds, negative_prompt_embeds, cross_attention_kwargs, clip_skip:
                as in diffusers' Stable Diffusion pipelines.
            ip_adapter_image, ip_adapter_image_embeds: a reference image (or its embeddings) for an IP-Adapter
                loaded with `load_ip_adapter`, as in diffusers; it conditions the UNet.
            output_type (`str`): "pil", "np" (float in [0, 1]), "pt" (tensor (B, 3, H, W) in [0, 1]) or "latent".
            controlnet_conditioning_scale (`float`): weight of the ControlNet's residuals; 0 is the base model
                alone (plain SD2- or SDXL-inpainting; the ControlNet is then not run at all).
            guess_mode (`bool`): run the ControlNet on the conditional half of the guidance batch only.
            control_guidance_start, control_guidance_end (`float`): fraction of the steps during which the
                ControlNet is applied; outside it the ControlNet is not run.
            callback_on_step_end: `callback(pipe, step, timestep, tensors)` after each step, or one of
                diffusers' `PipelineCallback`s (whose own `tensor_inputs` are used); may return replacements for
                the tensors named in `callback_on_step_end_tensor_inputs`, and may switch guidance off
                (`pipe._guidance_scale = 0`, as diffusers' `SDCFGCutoffCallback` does).
            object_mask: object mode: white (255) = the object to keep (soft values allowed: the UNet's mask is
                binarised at 128, the ControlNet's control image and the paste-back stay soft). Must have the
                image's size.
            preserve_object (`bool`): object mode only (default True there): composite the original object
                pixels back with the soft object mask (`paste_object`), so the object is pixel-exact and its
                soft edge carries no halo of the photo's old background.
            backbone_kwargs: the backbone's own arguments, by diffusers' names (SDXL: `prompt_2`,
                `pooled_prompt_embeds`, `original_size`, ...; see the SDXL pipeline's docstring).

        Returns:
            The backbone's diffusers output (`.images`; SD2's also `.nsfw_content_detected`), or a tuple.
        """
        parameters = inspect.signature(self.encode_conditioning).parameters.values()
        own = {parameter.name for parameter in parameters if parameter.kind is parameter.KEYWORD_ONLY}
        unknown = sorted(set(backbone_kwargs) - own)
        if unknown:
            raise TypeError(f"{type(self).__name__} takes no argument {', '.join(map(repr, unknown))}.")
        # 1. Inputs: in object mode derive the region to generate from the object; check everything
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        batch_size = _prompt_count(prompt, prompt_embeds)
        total = batch_size * num_images_per_prompt
        objects = outputs = None
        if object_mask is not None or (mask_image is None and _any_alpha(image)):
            objects, outputs = self._load_objects(
                image, object_mask, mask_image, control_image, batch_size, num_images_per_prompt
            )
            if (height is None or width is None) and any(rgb.size != objects[0][0].size for rgb, _ in objects):
                raise ValueError("Images of different sizes in one call need `height` and `width` (the working size).")
            default_width, default_height = working_size(objects[0][0].size, multiple=self.vae_scale_factor)
            height, width = height or default_height, width or default_width
        else:
            self._check_seed_inputs(image, mask_image, preserve_object)
            height, width = self.image_processor.get_default_height_width(_first(image), height, width)
        self.check_inputs(
            prompt=prompt,
            prompt_embeds=prompt_embeds,
            height=height,
            width=width,
            strength=strength,
            control_guidance_start=control_guidance_start,
            control_guidance_end=control_guidance_end,
            output_type=output_type,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            ip_adapter_image=ip_adapter_image,
            ip_adapter_image_embeds=ip_adapter_image_embeds,
        )
        generator = _line_up_generators(generator, batch_size, num_images_per_prompt)
        self._guidance_scale = guidance_scale
        self._clip_skip = clip_skip
        self._cross_attention_kwargs = cross_attention_kwargs
        self._interrupt = False
        device = self._execution_device
        guess_mode = guess_mode or self.controlnet.config.global_pool_conditions

        # 2. Encode the prompt (negative first, then positive, for classifier-free guidance) with the backbone's
        # added conditions, and the IP-Adapter image
        prompt_kwargs = dict(
            prompt=prompt,
            negative_prompt=negative_prompt,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            num_images_per_prompt=num_images_per_prompt,
            device=device,
            do_classifier_free_guidance=self.do_classifier_free_guidance,
            lora_scale=(cross_attention_kwargs or {}).get("scale"),
            clip_skip=clip_skip,
        )
        conditioning = self.encode_conditioning(prompt_kwargs, height, width, **backbone_kwargs)
        conditioning.image_embeds = self._ip_adapter_embeds(ip_adapter_image, ip_adapter_image_embeds, device, total)
        dtype = conditioning.tensors["prompt_embeds"].dtype

        # 3. Image, inpaint mask and control image at the working size, lined up with the outputs. Tensors
        # that differ between the two halves of the guidance batch are kept single and doubled per step.
        counts = (batch_size, num_images_per_prompt)
        init_image, mask_condition, control_image = self._prepare_images(
            image, mask_image, control_image, objects, outputs, counts, (height, width), generator
        )
        control_image = control_image.to(device=device, dtype=self.controlnet.dtype)
        masked_image = init_image * (mask_condition < 0.5)  # the region to generate zeroed

        # 4. Timesteps
        _, num_inference_steps = retrieve_timesteps(self.scheduler, num_inference_steps, device, timesteps)
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
            dtype,
            device,
            generator,
            latents,
            image=init_image,
            timestep=timesteps[:1].repeat(total),
            is_strength_max=strength == 1.0,
            return_noise=True,
            return_image_latents=in_channels == 4,
        )

        # 6. Latent-size mask and masked-image latents
        mask, masked_image_latents = self.prepare_mask_latents(
            mask_condition, masked_image, total, height, width, dtype, device, generator, False
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
                    conditioning,
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
                    latents, control_image, mask, masked_image_latents = self._step_end(
                        callback_on_step_end,
                        callback_on_step_end_tensor_inputs,
                        i,
                        t,
                        conditioning,
                        latents=latents,
                        control_image=control_image,
                        mask=mask,
                        masked_image_latents=masked_image_latents,
                    )
                progress_bar.update()

        # 8. Decode; in object mode return the input's size with the original object pasted back
        preserve_object = preserve_object is None or preserve_object
        images, nsfw = self._decode(latents, generator, output_type, objects, outputs, preserve_object)
        self.maybe_free_model_hooks()
        return self.pipeline_output(images, nsfw, return_dict)

    # ------------------------------------------------------------------------- saving and loading

    def save_pretrained(self, save_directory, *args, **kwargs):
        """diffusers' `save_pretrained`, plus the class's pipeline file and every file it imports relatively
        (directly or through another: the method's rooms) beside it, the class named in `model_index.json` as
        `[file name, class name]`: plain `DiffusionPipeline.from_pretrained(folder)` then asks for
        `trust_remote_code=True` and, given it, builds this class instead of diffusers' namesake. The class itself
        and `photobg.load_pipeline` load such folders, folders saved before, and the published model's layout alike.
        """
        super().save_pretrained(save_directory, *args, **kwargs)
        class_file = inspect.getfile(type(self))
        module = os.path.splitext(os.path.basename(class_file))[0]
        # diffusers' own reading of relative imports, the one it follows when it loads the folder's code
        for file in [class_file, *get_relative_import_files(class_file)]:
            shutil.copyfile(file, os.path.join(save_directory, os.path.basename(file)))
        index_path = os.path.join(save_directory, "model_index.json")
        with open(index_path) as f:
            index = json.load(f)
        index["_class_name"] = [module, type(self).__name__]
        with open(index_path, "w") as f:
            json.dump(index, f, indent=2, sort_keys=True)
            f.write("\n")

    @classmethod
    def _dict_from_json_file(cls, json_file):
        # A folder saved by `save_pretrained` names a pipeline file and this class as its custom pipeline; loaded
        # through this class, that code is this class, so it is used directly (no remote code is run).
        config = super()._dict_from_json_file(json_file)
        name = config.get("_class_name")
        if isinstance(name, list) and len(name) == 2 and name[1] == cls.__name__:
            config["_class_name"] = cls.__name__
        return config

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
        ip_adapter_image=None,
        ip_adapter_image_embeds=None,
    ):
        """Raise a `ValueError` that says what is wrong with the call's inputs or with the loaded models."""
        _check_one_controlnet(self.controlnet, type(self).__name__)  # it may have been replaced since
        unet_channels, controlnet_channels = self.unet.config.in_channels, self.controlnet.config.in_channels
        if unet_channels not in (4, 9):
            raise ValueError(f"The UNet takes {unet_channels} input channels; expected 9 (inpainting) or 4 (base).")
        if controlnet_channels != unet_channels:
            names = ", ".join(f"{channels} = {name}" for channels, name in self.variant_backbones.items())
            raise ValueError(
                f"The ControlNet takes {controlnet_channels} input channels but the UNet takes {unet_channels}: "
                f"the ControlNet must be trained on this base model ({names})."
            )
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("Pass exactly one of `prompt` and `prompt_embeds`.")
        if prompt is not None and not isinstance(prompt, (str, list)):
            raise ValueError(f"`prompt` must be a string or a list of strings, not {type(prompt).__name__}.")
        factor = self.vae_scale_factor
        if height < factor or width < factor or height % factor or width % factor:
            raise ValueError(
                f"The working size {width}x{height} must be multiples of {factor} (and at least {factor})."
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
        if ip_adapter_image is not None and ip_adapter_image_embeds is not None:
            raise ValueError("Pass either `ip_adapter_image` or `ip_adapter_image_embeds`, not both.")
        if (ip_adapter_image is not None or ip_adapter_image_embeds is not None) and not self._has_ip_adapter():
            raise ValueError("`ip_adapter_image` needs an IP-Adapter: load one first with `pipe.load_ip_adapter(...)`.")

    def _has_ip_adapter(self):
        unet = getattr(self.unet, "_orig_mod", self.unet)
        return unet.encoder_hid_proj is not None and unet.config.encoder_hid_dim_type == "ip_image_proj"

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

    def _load_objects(self, image, object_mask, mask_image, control_image, batch_size, num_images_per_prompt):
        """Object mode: the call's distinct (RGB image, object mask "L" image) pairs, checked, and for each output
        the index of its pair; images and masks are lined up with the outputs by `line_up`, each on its own."""
        if mask_image is not None or control_image is not None:
            raise ValueError(
                "Pass either `object_mask` / an RGBA image (object mode) or `mask_image`/`control_image`, not both."
            )
        if image is None:
            raise ValueError("Pass the photo as `image`.")
        images, masks = _as_list(image), None if object_mask is None else _as_list(object_mask)
        image_rows = line_up(len(images), batch_size, num_images_per_prompt, "image")
        mask_rows = (
            image_rows if masks is None else line_up(len(masks), batch_size, num_images_per_prompt, "object_mask")
        )
        pairs = list(dict.fromkeys(zip(image_rows, mask_rows)))
        objects = [_load_object(images[i], None if masks is None else masks[j], i) for i, j in pairs]
        return objects, [pairs.index(pair) for pair in zip(image_rows, mask_rows)]

    def _prepare_images(self, image, mask_image, control_image, objects, outputs, counts, size, generator):
        """(image in [-1, 1], binary inpaint mask, control image in [0, 1]) at the working size `size` = (height,
        width), one row per output of the call's `counts` = (prompts, images per prompt); one image and mask
        serving every output stay a batch of 1 for the VAE (as in diffusers) unless each output has its own
        generator. The control image is made from the soft mask."""
        (batch_size, num_images_per_prompt), (height, width) = counts, size
        if objects is not None:
            init_image = self.image_processor.preprocess([rgb for rgb, _ in objects], height=height, width=width)
            object_soft = torch.cat([object_mask_to_tensor(obj, (width, height)) for _, obj in objects])
            mask, soft_inpaint = inpaint_mask_from_object(object_soft), 1 - object_soft
            image_rows = mask_rows = outputs
        else:
            init_image = self.image_processor.preprocess(_drop_alpha(image), height=height, width=width)
            soft_inpaint = self._soft_mask_processor().preprocess(mask_image, height=height, width=width)
            mask = (soft_inpaint >= 0.5).to(soft_inpaint.dtype)  # diffusers' binarisation of `mask_image`
            image_rows = line_up(len(init_image), batch_size, num_images_per_prompt, "image")
            mask_rows = line_up(len(mask), batch_size, num_images_per_prompt, "mask_image")
        init_image = init_image.to(dtype=torch.float32)
        if control_image is None:
            control_image = make_control_image(
                init_image[image_rows], soft_inpaint[mask_rows], self.unet.config.in_channels
            )
        else:
            control_image = self.control_image_processor.preprocess(control_image, height=height, width=width)
            control_image = control_image[
                line_up(len(control_image), batch_size, num_images_per_prompt, "control_image")
            ]
        if not isinstance(generator, list) and len(set(image_rows)) == len(set(mask_rows)) == 1:
            image_rows, mask_rows = image_rows[:1], mask_rows[:1]
        return init_image[image_rows], mask[mask_rows], control_image.to(dtype=torch.float32)

    def _soft_mask_processor(self):
        """diffusers' `mask_processor` without its binarisation: the control image is made from the soft mask."""
        return VaeImageProcessor(vae_scale_factor=self.vae_scale_factor, do_normalize=False, do_convert_grayscale=True)

    def _ip_adapter_embeds(self, ip_adapter_image, ip_adapter_image_embeds, device, total):
        """The IP-Adapter image embeddings per adapter as (negative or None, positive), or None without one."""
        if ip_adapter_image is None and ip_adapter_image_embeds is None:
            return None
        cfg = self.do_classifier_free_guidance
        embeds = self.prepare_ip_adapter_image_embeds(ip_adapter_image, ip_adapter_image_embeds, device, total, cfg)
        return [embed.chunk(2) if cfg else (None, embed) for embed in embeds]

    def _predict_noise(self, latents, t, conditioning, mask, masked_image_latents, control_image, scale, guess_mode):
        """One guided noise prediction; the ControlNet is skipped when its scale is 0 at this step. Guidance is
        read at every step, since a callback may switch it off (diffusers' CFG cutoff callbacks)."""
        cfg = self.do_classifier_free_guidance

        def guided(x):  # the guidance batch: unconditional half, then conditional half
            return torch.cat([x] * 2) if cfg else x

        latent_model_input = self.scheduler.scale_model_input(guided(latents), t)
        if mask is not None:
            mask, masked_image_latents = guided(mask), guided(masked_image_latents)
        model_input = unet_input(latent_model_input, mask, masked_image_latents)  # (2B, 9 or 4, h, w)
        down_residuals = mid_residual = None
        if scale != 0:
            halved = guess_mode and cfg  # guess mode: the ControlNet sees the conditional half only
            down_residuals, mid_residual = self.controlnet(
                model_input.chunk(2)[1] if halved else model_input,
                t,
                **conditioning.for_controlnet(conditional_half=halved),
                controlnet_cond=control_image if halved else guided(control_image),
                conditioning_scale=scale,
                guess_mode=guess_mode,
                return_dict=False,
            )
            if halved:
                down_residuals = [torch.cat([torch.zeros_like(d), d]) for d in down_residuals]
                mid_residual = torch.cat([torch.zeros_like(mid_residual), mid_residual])
        noise_pred = self.unet(
            model_input,
            t,
            **conditioning.for_unet(guided=cfg),
            cross_attention_kwargs=self.cross_attention_kwargs,
            down_block_additional_residuals=down_residuals,
            mid_block_additional_residual=mid_residual,
            return_dict=False,
        )[0]
        if cfg:
            noise_uncond, noise_text = noise_pred.chunk(2)
            noise_pred = noise_uncond + self.guidance_scale * (noise_text - noise_uncond)
        return noise_pred

    def _step_end(self, callback, names, i, t, conditioning, **tensors):
        """Call a step-end callback with the tensors it asks for (`names`, of `tensors` and the conditioning's);
        the conditioning's tensors it returns replace them there. Returns the values of `tensors`, replaced by
        those the callback returned."""
        offered = {**tensors, **conditioning.tensors}
        returned = callback(self, i, t, {name: offered[name] for name in names}) or {}
        conditioning.tensors.update({name: value for name, value in returned.items() if name in conditioning.tensors})
        return [returned.get(name, value) for name, value in tensors.items()]

    def _keep_known_region(self, latents, image_latents, noise, mask, timesteps, i):
        """Base variant: put the known image back outside the region to generate, noised to the next step."""
        known = image_latents
        if i < len(timesteps) - 1:
            known = self.scheduler.add_noise(image_latents, noise, timesteps[i + 1 : i + 2])
        return (1 - mask) * known + mask * latents

    def _decode(self, latents, generator, output_type, objects, outputs, preserve_object):
        if output_type == "latent":
            return latents, None
        image, nsfw = self.finish_decoded(self._vae_decode(latents, generator), latents.dtype)
        if objects is None:
            return self.image_processor.postprocess(image, output_type=output_type), nsfw
        image = (image.float() / 2 + 0.5).clamp(0, 1)  # (N, 3, h, w) in [0, 1]
        foregrounds = {}  # the soft edge's foreground colours, estimated once per input object
        restored = []
        for generated, k in zip(image, outputs):
            rgb, obj = objects[k]
            obj = np.asarray(obj)
            if preserve_object and k not in foregrounds:
                foregrounds[k] = estimate_foreground(np.asarray(rgb), obj, self._execution_device)
            restored.append(restore_size(generated, rgb.size, foregrounds.get(k), obj, as_uint8=output_type == "pil"))
        if output_type == "pil":
            return [PIL.Image.fromarray(array) for array in restored], nsfw
        restored = np.stack(restored)
        return (torch.from_numpy(restored).permute(0, 3, 1, 2) if output_type == "pt" else restored), nsfw

    def _encode_vae_image(self, image, generator):
        """diffusers' VAE encode, as `prepare_latents` and `prepare_mask_latents` call it: latents sampled with the
        generator (a list: one per row), times the scaling factor; in float32 where the backbone says its VAE
        needs it (`vae_needs_upcast`). diffusers' SDXL pipelines cast the VAE to float32 and back around every
        encode whenever its config sets `force_upcast`, even a float32 VAE, and each cast logs a warning."""
        dtype, upcast = image.dtype, self.vae_needs_upcast()
        if upcast:
            self.vae.float()  # not .to(): diffusers logs a warning at every .to(dtype)
        image = image.to(self.vae.dtype)
        if isinstance(generator, list):
            rows = [retrieve_latents(self.vae.encode(image[i : i + 1]), g) for i, g in enumerate(generator)]
            latents = torch.cat(rows)
        else:
            latents = retrieve_latents(self.vae.encode(image), generator)  # AutoencoderKL's sample, TAESD's latents
        if upcast:
            self.vae.half()
        return self.vae.config.scaling_factor * latents.to(dtype)

    def _vae_decode(self, latents, generator):
        """Latents -> images (B, 3, H, W) in [-1, 1]; in float32 where the backbone says its VAE needs it."""
        upcast = self.vae_needs_upcast()
        if upcast:
            self.vae.float()  # not .to(): diffusers logs a warning at every .to(dtype)
        scaled = latents.to(self.vae.dtype) / self.vae.config.scaling_factor
        image = self.vae.decode(scaled, return_dict=False, generator=generator)[0]
        if upcast:
            self.vae.half()
        return image


# ----------------------------------------------------------------------------- helpers


def _load_object(image, object_mask, k):
    """(RGB image, object mask) of input image `k`, checked: the mask is there, fits, and leaves something to
    keep and something to generate."""
    rgb, obj = split_object(image, object_mask)
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
    return rgb, obj


def _check_one_controlnet(controlnet, pipeline_name):
    """Raise a `ValueError` unless `controlnet` is one `ControlNetModel` (maybe compiled)."""
    if not isinstance(getattr(controlnet, "_orig_mod", controlnet), ControlNetModel):
        raise ValueError(
            f"{pipeline_name} runs exactly one ControlNetModel, not {type(controlnet).__name__}: the method gives "
            "its ControlNet the UNet's own input, so it takes one ControlNet trained on this base model."
        )


def _prompt_count(prompt, prompt_embeds):
    """The call's batch size: its number of prompts (`check_inputs` says what is wrong with bad ones)."""
    if isinstance(prompt, list):
        return len(prompt)
    if prompt is None and prompt_embeds is not None:
        return len(prompt_embeds)
    return 1


def _line_up_generators(generator, batch_size, num_images_per_prompt):
    """A list of generators lined up with the outputs (`line_up`); one generator or None as it is."""
    if not isinstance(generator, list):
        return generator
    return [generator[k] for k in line_up(len(generator), batch_size, num_images_per_prompt, "generator")]


def _controlnet_scales(num_steps, scale, start, end):
    """Per-step ControlNet scale: `scale` inside [start, end] of the schedule, 0 outside (diffusers' rule)."""
    return [0.0 if (i / num_steps < start or (i + 1) / num_steps > end) else float(scale) for i in range(num_steps)]


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
