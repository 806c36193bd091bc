"""Salient-object-aware background generation: Stable Diffusion 2 (inpainting or base) + a ControlNet.

The method itself is in the rooms beside this file (`method.py`: the numbered generation steps; `conventions.py`;
`matting.py`: the paste-back); this class is diffusers' `StableDiffusionControlNetInpaintPipeline` with the
method in front and SD2's text conditioning. The files import only torch, diffusers, transformers, numpy and PIL,
so this one also works as a Hub custom pipeline (diffusers copies the rooms with it):

    DiffusionPipeline.from_pretrained(model, custom_pipeline="pipeline_controlnet_inpaint.py")

The method's conventions are re-exported here for the original code's scripts, which import them from this
module (photobg's own modules import them from `conventions.py`).
"""

# The method first: it binds transformers' image processors before diffusers' pipelines import them. Each of its
# rooms is imported by name: for a local folder diffusers copies the files a pipeline file imports relatively,
# not the files those import.
from .conventions import *  # noqa: F403  (the method's conventions, re-exported)
from .matting import *  # noqa: F403  (the paste-back, re-exported)
from .method import *  # noqa: F403  (the mixin and the rest of the method's names, re-exported)
from .method import BackgroundMethodMixin, Conditioning, guidance_batch

# isort: split
from diffusers import StableDiffusionControlNetInpaintPipeline as _DiffusersControlNetInpaintPipeline
from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput


class StableDiffusionControlNetInpaintPipeline(BackgroundMethodMixin, _DiffusersControlNetInpaintPipeline):
    r"""Background generation around a salient object with SD2(-inpainting) and a salient-aware ControlNet.

    Components and loading methods are those of diffusers' `StableDiffusionControlNetInpaintPipeline`;
    `__call__` (`BackgroundMethodMixin.__call__`, with diffusers' argument names) differs: the ControlNet of a
    9-channel UNet receives the UNet's 9-channel input, and an object-centric mode takes the object mask
    directly and keeps the object's pixels exact. `save_pretrained`
    also writes this file and the method's files into the folder and names this class in `model_index.json`, so
    that plain diffusers (`DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`) builds this class
    rather than diffusers' own of the same name, which cannot run the 9-channel ControlNet.
    """

    variant_backbones = {9: "sd2-inpainting", 4: "sd2-base"}

    def pipeline_output(self, images, nsfw, return_dict):
        """diffusers' `StableDiffusionPipelineOutput`, or `(images, nsfw_flags)`."""
        if not return_dict:
            return images, nsfw
        return StableDiffusionPipelineOutput(images=images, nsfw_content_detected=nsfw)

    def encode_conditioning(self, prompt_kwargs, height, width):
        """SD2's conditioning: one CLIP text encoder's hidden states (diffusers' `encode_prompt`), no added
        conditions; the working size plays no part."""
        positive, negative = self.encode_prompt(**prompt_kwargs)
        guided = prompt_kwargs["do_classifier_free_guidance"]
        return Conditioning(
            {"prompt_embeds": guidance_batch(negative, positive, guided), "negative_prompt_embeds": negative}
        )

    def finish_decoded(self, image, dtype):
        """diffusers' safety checker, where the pipeline has one."""
        return self.run_safety_checker(image, self._execution_device, dtype)
