"""The seed's import path: `from pipeline_controlnet_inpaint import StableDiffusionControlNetInpaintPipeline`.

The pipeline lives in `src/photobg/pipeline_controlnet_inpaint.py` (with the method's files beside it, also
usable as a Hub custom pipeline file); this module re-exports it for scripts and notebooks run from the repository root.
"""

from photobg.pipeline_controlnet_inpaint import *  # noqa: F403
from photobg.pipeline_controlnet_inpaint import StableDiffusionControlNetInpaintPipeline  # noqa: F401
