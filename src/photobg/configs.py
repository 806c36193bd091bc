"""Architecture configs of the models photobg builds on, kept in the package so nothing is downloaded.

`MODEL_CONFIGS` holds the real Stable Diffusion 2 and SDXL inpainting / base architectures (for
full-size random-weight benchmarks and for converting `.pth` ControlNets offline) and tiny versions of
the same architectures (for tests on CPU). Each entry holds one diffusers/transformers config per
component, in the format of the component's `config.json` on the Hub, plus `tokenizer*` settings
(the padding token), `pipeline` (the attributes `model_index.json` carries) and the ControlNet's
`conditioning_channels`. Which backbone each entry belongs to is `photobg.backbones`' business.
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

_TINY_TEXT_SIZE = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "projection_dim": 32,
    "vocab_size": 1000,
}
_TINY_TEXT_ENCODER = {**_SD2_TEXT_ENCODER, **_TINY_TEXT_SIZE}

# SDXL (stabilityai/stable-diffusion-xl-base-1.0 and diffusers/stable-diffusion-xl-1.0-inpainting-0.1): the Hub's
# config.json values, without the metadata keys (`_class_name`, `_diffusers_version`, `_name_or_path`) and, for the
# inpainting UNet, without the EMA trainer's state its file also holds (decay, inv_gamma, min_decay,
# optimization_step, power, update_after_step, use_ema_warmup), which diffusers ignores. The UNet is conditioned on
# both text encoders' hidden states concatenated (cross_attention_dim 2048 = 768 + 1280) and, through
# `addition_embed_type="text_time"`, on the second encoder's pooled embedding plus 6 time ids (original size, crop
# top-left, target size) of 256 sinusoidal features each: 1280 + 6 * 256 = 2816 (2560 for the refiner's 5 ids
# with an aesthetic score, not supported here).
_SDXL_SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}

_SDXL_UNET = {
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "center_input_sample": False,
    "class_embed_type": None,
    "class_embeddings_concat": False,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "cross_attention_dim": 2048,
    "cross_attention_norm": None,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_only_cross_attention": None,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_attention_heads": None,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "default",
    "sample_size": 128,
    "time_cond_proj_dim": None,
    "time_embedding_act_fn": None,
    "time_embedding_dim": None,
    "time_embedding_type": "positional",
    "timestep_post_act": None,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "upcast_attention": None,
    "use_linear_projection": True,
}

# SDXL's VAE: SD2's architecture, retrained. It overflows in fp16 (`force_upcast`: the pipelines decode in fp32);
# madebyollin/sdxl-vae-fp16-fix is the same architecture with force_upcast false.
_SDXL_VAE = {**_SD2_VAE, "force_upcast": True, "sample_size": 1024, "scaling_factor": 0.13025}

# OpenAI CLIP ViT-L/14's text tower: SD2's encoder layout at ViT-L's size (penultimate hidden states used).
_SDXL_TEXT_ENCODER = {
    **_SD2_TEXT_ENCODER,
    "attention_dropout": 0.0,
    "dropout": 0.0,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "projection_dim": 768,
}

# OpenCLIP ViT-bigG/14's text tower with its projection: penultimate hidden states and the pooled, projected embedding.
_SDXL_TEXT_ENCODER_2 = {
    **_SDXL_TEXT_ENCODER,
    "architectures": ["CLIPTextModelWithProjection"],
    "hidden_act": "gelu",
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_attention_heads": 20,
    "num_hidden_layers": 32,
    "projection_dim": 1280,
}

# model_index.json attributes. The SDXL inpainting model has the base model's 6 time ids (no aesthetic score) and,
# like the base model, uses zero embeddings for an empty negative prompt.
_SD2_PIPELINE = {"requires_safety_checker": False}
_SDXL_PIPELINE = {"force_zeros_for_empty_prompt": True}
_SDXL_INPAINT_PIPELINE = {**_SDXL_PIPELINE, "requires_aesthetics_score": False}

# SD2's and SDXL's second tokenizer (OpenCLIP) pad with "!"; SDXL's first (OpenAI CLIP) with its end token.
_PAD_BANG = {"pad_token": "!"}
_PAD_END = {"pad_token": "<|endoftext|>"}

_TINY_SDXL_TEXT_ENCODER = {**_SDXL_TEXT_ENCODER, **_TINY_TEXT_SIZE}

# Wider than the first encoder, as in SDXL, so that mixing the two up changes shapes.
_TINY_SDXL_TEXT_ENCODER_2 = {**_SDXL_TEXT_ENCODER_2, **_TINY_TEXT_SIZE, "hidden_size": 64, "projection_dim": 64}

_TINY_TIME_EMBED_DIM = 8
_TINY_SDXL_UNET = {
    **_SDXL_UNET,
    "addition_time_embed_dim": _TINY_TIME_EMBED_DIM,
    "attention_head_dim": [2, 4],
    "block_out_channels": [32, 64],
    "cross_attention_dim": _TINY_SDXL_TEXT_ENCODER["hidden_size"] + _TINY_SDXL_TEXT_ENCODER_2["hidden_size"],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
    "layers_per_block": 1,
    "projection_class_embeddings_input_dim": _TINY_SDXL_TEXT_ENCODER_2["projection_dim"] + 6 * _TINY_TIME_EMBED_DIM,
    "sample_size": 16,  # 128 px: twice the tiny SD2 models' 64 px, like the real models
    "transformer_layers_per_block": [1, 2],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
}

_TINY_SDXL_VAE = {**_TINY_VAE, "force_upcast": True, "sample_size": 128, "scaling_factor": 0.13025}

# The ControlNet's conditioning encoder (image -> first feature map); diffusers' default for SD and SDXL.
_CONDITIONING_CHANNELS = [16, 32, 96, 256]
_TINY_CONDITIONING_CHANNELS = [8, 16, 16, 32]


def _sd2(unet, vae, text_encoder, conditioning_channels):
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": _PAD_BANG,
        "scheduler": _SD2_SCHEDULER,
        "pipeline": _SD2_PIPELINE,
        "conditioning_channels": conditioning_channels,
    }


def _sdxl(unet, vae, text_encoders, pipeline, conditioning_channels):
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoders[0],
        "text_encoder_2": text_encoders[1],
        "tokenizer": _PAD_END,
        "tokenizer_2": _PAD_BANG,
        "scheduler": _SDXL_SCHEDULER,
        "pipeline": pipeline,
        "conditioning_channels": conditioning_channels,
    }


_SDXL_TEXT_ENCODERS = (_SDXL_TEXT_ENCODER, _SDXL_TEXT_ENCODER_2)
_TINY_SDXL_TEXT_ENCODERS = (_TINY_SDXL_TEXT_ENCODER, _TINY_SDXL_TEXT_ENCODER_2)

MODEL_CONFIGS = {
    "sd2-inpainting": _sd2({**_SD2_UNET, "in_channels": 9}, _SD2_VAE, _SD2_TEXT_ENCODER, _CONDITIONING_CHANNELS),
    "sd2-base": _sd2({**_SD2_UNET, "in_channels": 4}, _SD2_VAE, _SD2_TEXT_ENCODER, _CONDITIONING_CHANNELS),
    "sdxl-inpainting": _sdxl(
        {**_SDXL_UNET, "in_channels": 9, "attention_type": "default"},
        _SDXL_VAE,
        _SDXL_TEXT_ENCODERS,
        _SDXL_INPAINT_PIPELINE,
        _CONDITIONING_CHANNELS,
    ),
    "sdxl-base": _sdxl(_SDXL_UNET, _SDXL_VAE, _SDXL_TEXT_ENCODERS, _SDXL_PIPELINE, _CONDITIONING_CHANNELS),
    "tiny-inpainting": _sd2(
        {**_TINY_UNET, "in_channels": 9}, _TINY_VAE, _TINY_TEXT_ENCODER, _TINY_CONDITIONING_CHANNELS
    ),
    "tiny-base": _sd2({**_TINY_UNET, "in_channels": 4}, _TINY_VAE, _TINY_TEXT_ENCODER, _TINY_CONDITIONING_CHANNELS),
    "tiny-sdxl-inpainting": _sdxl(
        {**_TINY_SDXL_UNET, "in_channels": 9},
        _TINY_SDXL_VAE,
        _TINY_SDXL_TEXT_ENCODERS,
        _SDXL_INPAINT_PIPELINE,
        _TINY_CONDITIONING_CHANNELS,
    ),
    "tiny-sdxl-base": _sdxl(
        _TINY_SDXL_UNET, _TINY_SDXL_VAE, _TINY_SDXL_TEXT_ENCODERS, _SDXL_PIPELINE, _TINY_CONDITIONING_CHANNELS
    ),
}


def get_config(name):
    """Return a deep copy of a registered architecture config.

    Args:
        name: a key of `MODEL_CONFIGS`: a backbone's real architecture (`sd2-inpainting`, `sd2-base`,
            `sdxl-inpainting`, `sdxl-base`) or its tiny test version (`tiny-inpainting`, `tiny-base`,
            `tiny-sdxl-inpainting`, `tiny-sdxl-base`).

    Returns:
        dict with the `unet`, `vae`, `text_encoder` (and for SDXL `text_encoder_2`) configs, `tokenizer`
        (and `tokenizer_2`) settings, the `scheduler` config, the `pipeline` attributes of `model_index.json`
        and the ControlNet's `conditioning_channels`.
    """
    if name not in MODEL_CONFIGS:
        raise ValueError(f"Unknown model config {name!r}; choose one of: {', '.join(MODEL_CONFIGS)}.")
    return copy.deepcopy(MODEL_CONFIGS[name])
