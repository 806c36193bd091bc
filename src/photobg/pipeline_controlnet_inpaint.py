"""Salient-object-aware background generation: Stable Diffusion 2 (inpainting or base) + a ControlNet.

The method itself (conventions, the numbered generation steps) is in `method.py` beside this file; this class is
diffusers' `StableDiffusionControlNetInpaintPipeline` with the method in front and SD2's text conditioning.
The two files import only torch, diffusers, transformers, numpy and PIL, so this one also works as a Hub custom
pipeline (diffusers copies `method.py` with it):

    DiffusionPipeline.from_pretrained(model, custom_pipeline="pipeline_controlnet_inpaint.py")

The method's conventions are re-exported here: training, `photobg.masks` and the original code's scripts import
them from this module.
"""

import torch
from diffusers import StableDiffusionControlNetInpaintPipeline as _DiffusersControlNetInpaintPipeline
from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput

from .method import *  # noqa: F403  (the method's conventions, re-exported)
from .method import BackgroundMethodMixin, Conditioning, call_arguments, guidance_batch


class StableDiffusionControlNetInpaintPipeline(BackgroundMethodMixin, _DiffusersControlNetInpaintPipeline):
    r"""Background generation around a salient object with SD2(-inpainting) and a salient-aware ControlNet.

    Components and loading methods are those of diffusers' `StableDiffusionControlNetInpaintPipeline`;
    `__call__` differs: the ControlNet of a 9-channel UNet receives the UNet's 9-channel input, and an
    object-centric mode takes the object mask directly and keeps the object's pixels exact. `save_pretrained`
    also writes this file and `method.py` into the folder and names this class in `model_index.json`, so that
    plain diffusers (`DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`) builds this class
    rather than diffusers' own of the same name, which cannot run the 9-channel ControlNet.
    """

    variant_backbones = {9: "sd2-inpainting", 4: "sd2-base"}

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
                own size; otherwise diffusers' rule (rounded down).
            strength, num_inference_steps, guidance_scale, negative_prompt, num_images_per_prompt, eta,
            generator, latents, prompt_embeds, negative_prompt_embeds, cross_attention_kwargs, clip_skip:
                as in diffusers' Stable Diffusion pipelines.
            ip_adapter_image, ip_adapter_image_embeds: a reference image (or its embeddings) for an IP-Adapter
                loaded with `load_ip_adapter`, as in diffusers; it conditions the UNet.
            output_type (`str`): "pil", "np" (float in [0, 1]), "pt" (tensor (B, 3, H, W) in [0, 1]) or "latent".
            controlnet_conditioning_scale (`float`): weight of the ControlNet's residuals; 0 is plain
                SD2-inpainting (the ControlNet is then not run at all).
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

        Returns:
            `StableDiffusionPipelineOutput` with `.images` (or a tuple `(images, nsfw_flags)`).
        """
        images, nsfw = self.generate(**call_arguments(locals()))
        if not return_dict:
            return images, nsfw
        return StableDiffusionPipelineOutput(images=images, nsfw_content_detected=nsfw)

    def encode_conditioning(
        self,
        prompt,
        negative_prompt,
        num_images_per_prompt,
        device,
        *,
        height,
        width,
        prompt_embeds=None,
        negative_prompt_embeds=None,
        clip_skip=None,
    ):
        """SD2's conditioning: one CLIP text encoder's hidden states (diffusers' `encode_prompt`), no added
        conditions. `height` and `width` are not used."""
        guided = self.do_classifier_free_guidance
        positive, negative = self.encode_prompt(
            prompt,
            device,
            num_images_per_prompt,
            guided,
            negative_prompt,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            lora_scale=self._lora_scale,
            clip_skip=clip_skip,
        )
        return Conditioning(
            {"prompt_embeds": guidance_batch(negative, positive, guided), "negative_prompt_embeds": negative}
        )

    def finish_decoded(self, image, dtype):
        """diffusers' safety checker, where the pipeline has one."""
        return self.run_safety_checker(image, self._execution_device, dtype)
