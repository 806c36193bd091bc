"""Salient-object-aware background generation: Stable Diffusion XL (inpainting or base) + a ControlNet.

The method itself is in the rooms beside this file (`method.py`: the numbered generation steps; `conventions.py`;
`matting.py`: the paste-back), shared with the SD2 pipeline; this class is diffusers'
`StableDiffusionXLControlNetInpaintPipeline` with the method in front and SDXL's conditioning: both text encoders
(penultimate hidden states side by side, the second one's pooled embedding), the time ids (original size, crop
top-left, target size; an aesthetic score instead of the target size where the model requires it),
`force_zeros_for_empty_prompt` (a `negative_prompt` of None is the zero embedding), and the fp16 VAE's upcast for
decoding. Like the SD2 file it works as a Hub custom pipeline.
"""

# The method first: it binds transformers' image processors before diffusers' pipelines import them. Each of its
# rooms is imported by name, used here or not: for a local folder diffusers copies the files a pipeline file
# imports relatively, not the files those import.
from .conventions import OBJECT_THRESHOLD  # noqa: F401
from .matting import restore_size  # noqa: F401
from .method import BackgroundMethodMixin, Conditioning, guidance_batch

# isort: split
import torch
from diffusers import StableDiffusionXLControlNetInpaintPipeline as _DiffusersXLControlNetInpaintPipeline
from diffusers.pipelines.stable_diffusion_xl.pipeline_output import StableDiffusionXLPipelineOutput


class StableDiffusionXLControlNetInpaintPipeline(BackgroundMethodMixin, _DiffusersXLControlNetInpaintPipeline):
    r"""Background generation around a salient object with SDXL(-inpainting) and a salient-aware ControlNet.

    Components and loading methods (LoRA, IP-Adapter, ...) are those of diffusers'
    `StableDiffusionXLControlNetInpaintPipeline`. `__call__` is the SD2 pipeline's (`BackgroundMethodMixin.__call__`,
    the same method): the ControlNet of a 9-channel UNet receives the UNet's 9-channel input (diffusers' namesake
    gives it 4 channels and fails) and the object mode keeps the object's pixels exact. `guidance_scale` defaults
    to 7.5 as in diffusers' SDXL inpainting pipeline. `save_pretrained` writes this file and the method's files into
    the folder, so that plain diffusers (`DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`) builds
    this class.

    SDXL's own `__call__` arguments, keyword-only (diffusers' names, taken by `encode_conditioning`; the call's
    signature lists them after the shared ones):
        prompt_2, negative_prompt_2 (`str` or `list[str]`): the prompts for the second text encoder (default:
            `prompt` and `negative_prompt`).
        negative_prompt: None (the default) gives the zero negative embedding where the model says so
            (`force_zeros_for_empty_prompt`, as SDXL's models do); "" encodes the empty string instead.
        pooled_prompt_embeds, negative_pooled_prompt_embeds: the second encoder's pooled embeddings; needed with
            `prompt_embeds` / `negative_prompt_embeds`.
        original_size, crops_coords_top_left, target_size: SDXL's micro-conditioning, (height, width) pairs
            (default: original and target size = the working size, crop (0, 0), as in diffusers); `negative_*`:
            those of the negative prompt (default: the positive ones).
        aesthetic_score, negative_aesthetic_score: used only by models that require an aesthetic score
            (`requires_aesthetics_score`, e.g. SDXL's refiner) in place of the target size.
    """

    variant_backbones = {9: "sdxl-inpainting", 4: "sdxl-base"}

    def pipeline_output(self, images, nsfw, return_dict):
        """diffusers' `StableDiffusionXLPipelineOutput`, or `(images,)`."""
        return StableDiffusionXLPipelineOutput(images=images) if return_dict else (images,)

    def encode_conditioning(
        self,
        prompt_kwargs,
        height,
        width,
        *,
        prompt_2=None,
        negative_prompt_2=None,
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
    ):
        """SDXL's conditioning: both text encoders through diffusers' `encode_prompt`, the pooled embeddings and
        the time ids as the UNet's (and the ControlNet's) added conditions."""
        for name, pooled in (("", pooled_prompt_embeds), ("negative_", negative_pooled_prompt_embeds)):
            if prompt_kwargs[f"{name}prompt_embeds"] is not None and pooled is None:
                raise ValueError(f"With `{name}prompt_embeds` pass `{name}pooled_prompt_embeds` too (SDXL needs both).")
        positive, negative, pooled, negative_pooled = self.encode_prompt(
            **prompt_kwargs,
            prompt_2=prompt_2,
            negative_prompt_2=negative_prompt_2,
            pooled_prompt_embeds=pooled_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
        )
        guided = prompt_kwargs["do_classifier_free_guidance"]
        device = prompt_kwargs["device"]
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
