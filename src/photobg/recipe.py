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

The named recipes (`RECIPES`, `--recipe NAME`) are the few-step sampling recipes of distilled LoRAs, each with its
source; docs/recipes.md lists them with their cost. This module imports nothing, so command-line help can read
it without loading torch.
"""

SCHEDULER = "UniPCMultistepScheduler"
SCHEDULER_CONFIG = {"final_sigmas_type": "sigma_min"}  # diffusers 0.27's UniPC ending, see above
MODEL_SCHEDULER = "model"  # the scheduler name that keeps the checkpoint's own scheduler
NUM_INFERENCE_STEPS = 20
GUIDANCE_SCALE = 7.5
CONTROLNET_CONDITIONING_SCALE = 1.0


# ----------------------------------------------------------------------------- named recipes (`--recipe NAME`)

# A recipe's backbone families: the backbones whose base model its LoRA was distilled from (or fits: the
# inpainting UNets are fine-tunes of the base ones). Keyed by the family part of a backbone's name.
SD2, SDXL = "sd2", "sdxl"
FAMILIES = {SD2: ("sd2-inpainting", "sd2-base"), SDXL: ("sdxl-inpainting", "sdxl-base")}


class Recipe:
    """A sampling recipe: the scheduler and its options, fixed timesteps, steps, guidance and `eta`, as its
    authors' documented diffusers usage runs it, and the LoRA it needs per backbone family.

    Attributes:
        scheduler: a diffusers scheduler class name (None: the authors' UniPC, `SCHEDULER`).
        options: scheduler config values (`--scheduler-option KEY=VALUE`), on top of the model's config.
        timesteps: fixed timesteps (diffusers' `timesteps=`), or None; their count is the number of steps.
        steps, guidance: `--steps`, `--guidance` (0: no classifier-free guidance, one UNet batch a step).
        eta: the scheduler step's `eta` (TCD's gamma), or None for the pipeline's default.
        loras: {family: (Hub id, weights file)} of the LoRA the recipe needs; the families it is for. An
            empty dict: no LoRA, every backbone.
        source: where the values come from.
    """

    def __init__(self, steps, guidance, *, scheduler=None, options=None, timesteps=None, eta=None, loras=None,
                 source):  # fmt: skip
        self.scheduler, self.options, self.timesteps = scheduler, dict(options or {}), timesteps
        self.steps, self.guidance, self.eta = steps, guidance, eta
        self.loras, self.source = dict(loras or {}), source

    @property
    def backbones(self):
        """The backbone names the recipe is for (None: every backbone)."""
        return None if not self.loras else [name for family in self.loras for name in FAMILIES[family]]

    def settings(self):
        """{`GenerationSettings` field: value} that the recipe sets."""
        return dict(
            scheduler=self.scheduler,
            scheduler_options=[f"{key}={value}" for key, value in self.options.items()],
            timesteps=self.timesteps,
            num_inference_steps=self.steps,
            guidance_scale=self.guidance,
            eta=self.eta,
        )


HF = "https://huggingface.co/"
TRAILING = {"timestep_spacing": "trailing"}


def _lightning(steps):
    return Recipe(
        steps, 0, scheduler="EulerDiscreteScheduler", options=TRAILING,
        loras={SDXL: ("ByteDance/SDXL-Lightning", f"sdxl_lightning_{steps}step_lora.safetensors")},
        source=f"{HF}ByteDance/SDXL-Lightning (model card, '2-Step, 4-Step, 8-Step LoRA': Euler, trailing "
        "timesteps, guidance 0)",
    )  # fmt: skip


DEFAULT_RECIPE = "authors"
RECIPES = {
    DEFAULT_RECIPE: Recipe(
        NUM_INFERENCE_STEPS,
        GUIDANCE_SCALE,
        source="the authors' notebook (UniPC as diffusers 0.27 ran it, 20 steps, guidance 7.5; see above)",
    ),
    "lcm-lora": Recipe(
        4,
        0,
        scheduler="LCMScheduler",
        loras={SDXL: ("latent-consistency/lcm-lora-sdxl", "pytorch_lora_weights.safetensors")},
        source=f"{HF}latent-consistency/lcm-lora-sdxl (model card: LCMScheduler, 2-8 steps, guidance off or 1-2)",
    ),
    "tcd": Recipe(
        4,
        0,
        scheduler="TCDScheduler",
        eta=0.3,
        loras={
            SD2: ("h1t/TCD-SD21-base-LoRA", "pytorch_lora_weights.safetensors"),
            SDXL: ("h1t/TCD-SDXL-LoRA", "pytorch_lora_weights.safetensors"),
        },
        source=f"{HF}h1t/TCD-SD21-base-LoRA (model card: TCDScheduler, 4 steps, guidance 0, eta 0.3), "
        f"{HF}h1t/TCD-SDXL-LoRA and diffusers' TCD guide, {HF}docs/diffusers/using-diffusers/inference_with_tcd_lora "
        "(the same for SDXL)",
    ),
    "hyper-sd-4": Recipe(
        4,
        0,
        scheduler="DDIMScheduler",
        options=TRAILING,
        loras={SDXL: ("ByteDance/Hyper-SD", "Hyper-SDXL-4steps-lora.safetensors")},
        source=f"{HF}ByteDance/Hyper-SD (model card, '2-Steps, 4-Steps, 8-steps LoRA': DDIM, trailing, guidance 0)",
    ),
    "hyper-sd-1": Recipe(
        1,
        0,
        scheduler="TCDScheduler",
        eta=1.0,
        loras={SDXL: ("ByteDance/Hyper-SD", "Hyper-SDXL-1step-lora.safetensors")},
        source=f"{HF}ByteDance/Hyper-SD (model card, '1-Step Unified LoRA': TCDScheduler, 1 step, guidance 0, "
        "eta 1.0): the one-step, SDXL-Turbo-style recipe that needs only a LoRA",
    ),
    "sdxl-lightning-2": _lightning(2),
    "sdxl-lightning-4": _lightning(4),
    "sdxl-lightning-8": _lightning(8),
    "dmd2-4": Recipe(
        4,
        0,
        scheduler="LCMScheduler",
        timesteps=[999, 749, 499, 249],
        loras={SDXL: ("tianweiy/DMD2", "dmd2_sdxl_4step_lora_fp16.safetensors")},
        source=f"{HF}tianweiy/DMD2 (model card: LCMScheduler, guidance 0, and the timesteps it was trained at, "
        "999, 749, 499, 249, which differ from LCMScheduler's own for 4 steps)",
    ),
}
