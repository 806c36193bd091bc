"""Architecture configs of the models photobg builds on, kept in the package so nothing is downloaded.

`MODEL_CONFIGS` is the registry: the real Stable Diffusion 2 inpainting / base architectures (for
full-size random-weight benchmarks and for converting `.pth` ControlNets offline) and tiny versions of
the same architectures (for tests on CPU). Each entry holds one diffusers/transformers config per
component, in the format of the component's `config.json` on the Hub.
"""

import copy

# SD2 schedulers are PNDM with the scaled-linear betas of latent diffusion; both models predict epsilon.
_SD2_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
}

_SD2_UNET = {
    "act_fn": "silu",
    "attention_head_dim": [5, 10, 20, 20],
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 1024,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 9,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "use_linear_projection": True,
}

_SD2_VAE = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

# The OpenCLIP ViT-H/14 text tower as SD2 ships it (a transformers CLIPTextModel).
_SD2_TEXT_ENCODER = {
    "architectures": ["CLIPTextModel"],
    "model_type": "clip_text_model",
    "hidden_act": "gelu",
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_attention_heads": 16,
    "num_hidden_layers": 23,
    "max_position_embeddings": 77,
    "projection_dim": 512,
    "vocab_size": 49408,
    "layer_norm_eps": 1e-05,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}

# Tiny versions: same block types, same 8x VAE downscale, a few thousand parameters per block.
_TINY_UNET = {
    **_SD2_UNET,
    "attention_head_dim": [2, 4],
    "block_out_channels": [32, 64],
    "cross_attention_dim": 32,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "layers_per_block": 1,
    "sample_size": 8,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
}

_TINY_VAE = {
    **_SD2_VAE,
    "block_out_channels": [8, 16, 16, 16],
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 64,
}

_TINY_TEXT_ENCODER = {
    **_SD2_TEXT_ENCODER,
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "projection_dim": 32,
    "vocab_size": 1000,
}

# The ControlNet's conditioning encoder (image -> first feature map); diffusers' default for SD.
_CONDITIONING_CHANNELS = [16, 32, 96, 256]
_TINY_CONDITIONING_CHANNELS = [8, 16, 16, 32]

MODEL_CONFIGS = {
    "sd2-inpainting": {
        "unet": {**_SD2_UNET, "in_channels": 9},
        "vae": _SD2_VAE,
        "text_encoder": _SD2_TEXT_ENCODER,
        "scheduler": _SD2_SCHEDULER,
        "conditioning_channels": _CONDITIONING_CHANNELS,
    },
    "sd2-base": {
        "unet": {**_SD2_UNET, "in_channels": 4},
        "vae": _SD2_VAE,
        "text_encoder": _SD2_TEXT_ENCODER,
        "scheduler": _SD2_SCHEDULER,
        "conditioning_channels": _CONDITIONING_CHANNELS,
    },
    "tiny-inpainting": {
        "unet": {**_TINY_UNET, "in_channels": 9},
        "vae": _TINY_VAE,
        "text_encoder": _TINY_TEXT_ENCODER,
        "scheduler": _SD2_SCHEDULER,
        "conditioning_channels": _TINY_CONDITIONING_CHANNELS,
    },
    "tiny-base": {
        "unet": {**_TINY_UNET, "in_channels": 4},
        "vae": _TINY_VAE,
        "text_encoder": _TINY_TEXT_ENCODER,
        "scheduler": _SD2_SCHEDULER,
        "conditioning_channels": _TINY_CONDITIONING_CHANNELS,
    },
}


def get_config(name):
    """Return a deep copy of a registered architecture config.

    Args:
        name: a key of `MODEL_CONFIGS` (`sd2-inpainting`, `sd2-base`, `tiny-inpainting`, `tiny-base`).

    Returns:
        dict with `unet`, `vae`, `text_encoder`, `scheduler` configs and `conditioning_channels`.
    """
    if name not in MODEL_CONFIGS:
        raise ValueError(f"Unknown model config {name!r}; choose one of: {', '.join(MODEL_CONFIGS)}.")
    return copy.deepcopy(MODEL_CONFIGS[name])
