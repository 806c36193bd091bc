"""Train the inpaint variant of the salient-aware ControlNet (SD2-inpainting, 9-channel input).

    accelerate launch train_controlnet_inpaint.py \
        --pretrained_model_name_or_path stabilityai/stable-diffusion-2-inpainting \
        --train_data_dir DIR --proportion_empty_prompts 0.1 ...

Flags are those of diffusers' ControlNet training example (`--help` lists them); the loop is
`photobg.train.main`, shared with `train_controlnet.py` (the base variant).
"""

import sys

from photobg.train import cli_main

if __name__ == "__main__":
    sys.exit(cli_main("inpaint"))
