"""Salient-object-aware background generation: Stable Diffusion XL (inpainting or base) + a ControlNet.

The method itself (conventions, the numbered generation steps) is in `method.py` beside this file, shared with
the SD2 pipeline; this class is diffusers' `StableDiffusionXLControlNetInpaintPipeline` with the method in front
and SDXL's conditioning: both text encoders (penultimate hidden states side by side, the second one's pooled
embedding), the time ids (original size, crop top-left, target size; an aesthetic score instead of the target
size where the model requires it), `force_zeros_for_empty_prompt` (a `negative_prompt` of None is the zero
embedding), and the fp16 VAE's upcast for decoding. Like the SD2 file it works as a Hub custom pipeline.
"""

import torch
from diffusers import StableDiffusionXLControlNetInpaintPipeline as _DiffusersXLControlNetInpaintPipeline
from diffusers.pipelines.stable_diffusion_xl.pipeline_output import StableDiffusionXLPipelineOutput

from .method import BackgroundMethodMixin, Conditioning, call_arguments, guidance_batch


class StableDiffusionXLControlNetInpaintPipeline(BackgroundMethodMixin, _DiffusersXLControlNetInpaintPipeline):
    r"""Background generation around a salient object with SDXL(-inpainting) and a salient-aware ControlNet.

    Components and loading methods (LoRA, IP-Adapter, ...) are those of diffusers'
    `StableDiffusionXLControlNetInpaintPipeline`; `__call__` is the SD2 pipeline's
    (`StableDiffusionControlNetInpaintPipeline`, the same method) with SDXL's arguments: the ControlNet of a
    9-channel UNet receives the UNet's 9-channel input (diffusers' namesake gives it 4 channels and fails), and
    the object mode keeps the object's pixels exact. `save_pretrained` writes this file and `method.py` into the
    folder, so that plain diffusers (`DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`) builds
    this class.
    """

    variant_backbones = {9: "sdxl-inpainting", 4: "sdxl-base"}

    @torch.no_grad()
    def __call__(
        self,
        prompt=None,
        prompt_2=None,
        image=None,
        mask_image=None,
        control_image=None,
        height=None,
        width=None,
        strength=1.0,
        num_inference_steps=50,
        guidance_scale=5.0,
        negative_prompt=None,
        negative_prompt_2=None,
        num_images_per_prompt=1,
        eta=0.0,
        generator=None,
        latents=None,
        prompt_embeds=None,
        negative_prompt_embeds=None,
        pooled_prompt_embeds=None,
        negative_pooled_prompt_embeds=None,
        ip_adapter_image=None,
        ip_adapter_image_embeds=None,
        output_type="pil",
        return_dict=True,
        cross_attention_kwargs=None,
        controlnet_conditioning_scale=1.0,
        guess_mode=False,
        control_guidance_start=0.0,
        control_guidance_end=1.0,
        original_size=None,
        crops_coords_top_left=(0, 0),
        target_size=None,
        negative_original_size=None,
        negative_crops_coords_top_left=(0, 0),
        negative_target_size=None,
        aesthetic_score=6.0,
        negative_aesthetic_score=2.5,
        clip_skip=None,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs=("latents",),
        object_mask=None,
        preserve_object=None,
    ):
        r"""Generate a background around the object in `image`.

        The arguments SDXL shares with SD2 mean what they mean in the SD2 pipeline
        (`StableDiffusionControlNetInpaintPipeline.__call__`): `image`, `object_mask`, `mask_image`,
        `control_image` and the lining-up of lists with the outputs, the working size, `preserve_object`,
        `controlnet_conditioning_scale` (0: the SDXL base model alone, the ControlNet not run), `guess_mode`,
        the guidance window, IP-Adapter inputs, callbacks and output types. SDXL's own:

        Args:
            prompt_2, negative_prompt_2 (`str` or `list[str]`): the prompts for the second text encoder
                (default: `prompt` and `negative_prompt`), as in diffusers' SDXL pipelines.
            negative_prompt: None (the default) gives the zero negative embedding where the model says so
                (`force_zeros_for_empty_prompt`, as SDXL's models do); "" encodes the empty string instead.
            pooled_prompt_embeds, negative_pooled_prompt_embeds: the second encoder's pooled embeddings; needed
                with `prompt_embeds` / `negative_prompt_embeds`.
            original_size, crops_coords_top_left, target_size: SDXL's micro-conditioning, (height, width) pairs
                (default: original and target size = the working size, crop (0, 0), as diffusers does);
                `negative_*`: those of the negative prompt (default: the positive ones).
            aesthetic_score, negative_aesthetic_score: used only by models that require an aesthetic score
                (`requires_aesthetics_score`, e.g. SDXL's refiner) in place of the target size.
            guidance_scale: default 5.0, diffusers' for SDXL ControlNet pipelines.

        Returns:
            `StableDiffusionXLPipelineOutput` with `.images` (or a tuple `(images,)`).
        """
        images, _ = self.generate(**call_arguments(locals()))
        return StableDiffusionXLPipelineOutput(images=images) if return_dict else (images,)

    def encode_conditioning(
        self,
        prompt,
        negative_prompt,
        num_images_per_prompt,
        device,
        *,
        height,
        width,
        prompt_2=None,
        negative_prompt_2=None,
        prompt_embeds=None,
        negative_prompt_embeds=None,
        pooled_prompt_embeds=None,
        negative_pooled_prompt_embeds=None,
        original_size=None,
        crops_coords_top_left=(0, 0),
        target_size=None,
        negative_original_size=None,
        negative_crops_coords_top_left=(0, 0),
        negative_target_size=None,
        aesthetic_score=6.0,
        negative_aesthetic_score=2.5,
        clip_skip=None,
    ):
        """SDXL's conditioning: both text encoders through diffusers' `encode_prompt`, the pooled embeddings and
        the time ids as the UNet's (and the ControlNet's) added conditions."""
        for embeds, pooled, name in (
            (prompt_embeds, pooled_prompt_embeds, ""),
            (negative_prompt_embeds, negative_pooled_prompt_embeds, "negative_"),
        ):
            if embeds is not None and pooled is None:
                raise ValueError(f"With `{name}prompt_embeds` pass `{name}pooled_prompt_embeds` too (SDXL needs both).")
        guided = self.do_classifier_free_guidance
        positive, negative, pooled, negative_pooled = self.encode_prompt(
            prompt,
            prompt_2,
            device,
            num_images_per_prompt,
            guided,
            negative_prompt,
            negative_prompt_2,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
            lora_scale=self._lora_scale,
            clip_skip=clip_skip,
        )
        original_size, target_size = tuple(original_size or (height, width)), tuple(target_size or (height, width))
        size_ids = self._time_ids(original_size, crops_coords_top_left, target_size, aesthetic_score, pooled)
        negative_ids = self._time_ids(
            tuple(negative_original_size or original_size),
            negative_crops_coords_top_left,
            tuple(negative_target_size or target_size),
            negative_aesthetic_score,
            pooled,
        )
        size_ids, negative_ids = (ids.to(device).repeat(len(positive), 1) for ids in (size_ids, negative_ids))
        tensors = {
            "prompt_embeds": guidance_batch(negative, positive, guided),
            "negative_prompt_embeds": negative,
            "add_text_embeds": guidance_batch(negative_pooled, pooled, guided),
            "negative_pooled_prompt_embeds": negative_pooled,
            "add_time_ids": guidance_batch(negative_ids, size_ids, guided),
            "add_neg_time_ids": negative_ids,
        }
        return Conditioning(tensors)

    def _time_ids(self, original_size, crops_coords_top_left, target_size, aesthetic_score, pooled):
        """(1, 5 or 6) time ids: original size + crop top-left + target size, or + aesthetic score where the model
        requires it (`requires_aesthetics_score`); diffusers' `_get_add_time_ids` checks the UNet takes them."""
        projection_dim = pooled.shape[-1] if self.text_encoder_2 is None else self.text_encoder_2.config.projection_dim
        time_ids, _ = self._get_add_time_ids(
            original_size,
            tuple(crops_coords_top_left),
            target_size,
            aesthetic_score,
            aesthetic_score,
            dtype=pooled.dtype,
            text_encoder_projection_dim=projection_dim,
        )
        return time_ids

    def vae_needs_upcast(self):
        """SDXL's VAE overflows in fp16: it decodes in float32 unless its config says it need not (`force_upcast`
        is false in fp16-safe VAEs such as madebyollin/sdxl-vae-fp16-fix), as in diffusers' SDXL pipelines."""
        return self.vae.dtype == torch.float16 and self.vae.config.force_upcast

    def finish_decoded(self, image, dtype):
        """diffusers' invisible watermark, where the pipeline has one (the `invisible-watermark` package)."""
        if self.watermark is not None:
            image = self.watermark.apply_watermark(image)
        return image, None
