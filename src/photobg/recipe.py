"""The sampling recipe of the authors' notebook: the default of every photobg entry point.

The authors sample the published model with diffusers' `UniPCMultistepScheduler` built from the checkpoint's
scheduler config, 20 steps, ControlNet conditioning scale 1.0 and guidance scale 7.5, on diffusers 0.27.
`photobg.load_pipeline`, `photobg.generate` / `BackgroundGenerator`, `photobg generate`, `photobg app`,
`photobg evaluate` and the notebook all use it unless told otherwise (`--scheduler model` keeps the
checkpoint's own scheduler, `--scheduler NAME` takes any diffusers scheduler class). The pipeline classes' own
`__call__` keep diffusers' defaults and scheduler, but for the three defaults listed (and tested) in
docs/python-api.md: SD2's ControlNet scale 1.0, SDXL's strength 1.0 and guidance 7.5.

UniPC changed under the published model: diffusers 0.27 ended its schedule on the smallest training sigma
(`final_sigmas_type="sigma_min"`), later versions on zero (`"zero"`, their default). We keep 0.27's ending,
the schedule the published model was sampled and evaluated with; `bench/unipc_final_sigmas.py` measures the
difference (figures in bench/README.md). `--scheduler UniPCMultistepScheduler` gives today's diffusers default.

This module imports nothing, so command-line help can read it without loading torch.
"""

SCHEDULER = "UniPCMultistepScheduler"
SCHEDULER_CONFIG = {"final_sigmas_type": "sigma_min"}  # diffusers 0.27's UniPC ending, see above
MODEL_SCHEDULER = "model"  # the scheduler name that keeps the checkpoint's own scheduler
NUM_INFERENCE_STEPS = 20
GUIDANCE_SCALE = 7.5
CONTROLNET_CONDITIONING_SCALE = 1.0
