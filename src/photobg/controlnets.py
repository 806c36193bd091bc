"""ControlNets of three sizes, built from the UNet they control with diffusers' `ControlNetModel`.

A full ControlNet is a copy of the UNet's encoder (`ControlNetModel.from_unet`): on SDXL 1.25 B parameters and
45% of the UNet's compute per step, most of it in the 10-layer transformers of the 1280-channel level. The
compact sizes keep every ResNet, downsampler and zero convolution of the encoder, so they give the UNet the
same residuals (same count, same channels), and drop transformer layers:

| size | transformer layers kept | SDXL parameters |
| --- | --- | --- |
| `full` | all (the UNet's encoder) | 1,251 M |
| `mid` | one in the deepest cross-attention block and one in the mid block | 271 M |
| `small` | none (the mid block keeps its ResNets and the transformer's projections) | 160 M |

`mid` and `small` are the architectures of the diffusers team's `diffusers/controlnet-{canny,depth}-sdxl-1.0-mid`
and `-small` ControlNets (`transformer_layers_per_block` [0, 0, 1] and [0, 0, 0], blocks without layers as
`DownBlock2D`): the same rule gives their parameter counts (1.09 GB and 0.64 GB of fp32 weights) on SDXL. Every
weight a compact ControlNet has is initialised from the UNet, as `from_unet` does for the full one; what it
lacks is the dropped layers. It is a plain `ControlNetModel`: `save_pretrained` / `from_pretrained` need
nothing of photobg. Figures (parameters, FLOPs, time per training step, memory): `bench/README.md`.
"""

CROSS_ATTENTION_BLOCK, PLAIN_BLOCK = "CrossAttnDownBlock2D", "DownBlock2D"

# Transformer layers each compact size keeps in the deepest cross-attention block and in the mid block
# (every other down block keeps none); None: all of them.
CONTROLNET_SIZES = {"full": None, "mid": 1, "small": 0}

# diffusers' default widths of the conditioning image's encoder (`ControlNetModel.from_unet`).
CONDITIONING_CHANNELS = (16, 32, 96, 256)

# The UNet modules a ControlNet starts from (as `ControlNetModel.from_unet` copies them); `class_embedding` and
# `add_embedding` exist only where the UNet has them.
_FROM_UNET = ("conv_in", "time_embedding", "class_embedding", "add_embedding", "down_blocks", "mid_block")


def controlnet_config(unet_config, size="full", conditioning_embedding_out_channels=CONDITIONING_CHANNELS):
    """The `ControlNetModel` config of a ControlNet of `size` for a UNet.

    Args:
        unet_config: the UNet's config (a dict, or `unet.config`).
        size: a key of `CONTROLNET_SIZES`.
        conditioning_embedding_out_channels: widths of the conditioning image's encoder.

    Returns:
        dict for `ControlNetModel.from_config`; its input channels are the UNet's (9 for an inpainting UNet).

    Raises:
        ValueError: an unknown size, or a UNet whose down blocks a compact size cannot thin out.
    """
    from .models.state_dict import controlnet_config_from_unet

    if size not in CONTROLNET_SIZES:
        raise ValueError(f"Unknown ControlNet size {size!r}; choose one of: {', '.join(CONTROLNET_SIZES)}.")
    unet_config = dict(unet_config)
    config = controlnet_config_from_unet(unet_config, embedding_channels=conditioning_embedding_out_channels)
    keep = CONTROLNET_SIZES[size]
    if keep is None:
        return config
    block_types = list(unet_config["down_block_types"])
    unknown = sorted(set(block_types) - {CROSS_ATTENTION_BLOCK, PLAIN_BLOCK})
    if unknown:
        raise ValueError(
            f"A {size!r} ControlNet thins out {CROSS_ATTENTION_BLOCK} blocks only; this UNet has {unknown}."
        )
    layers = unet_config.get("transformer_layers_per_block", 1)
    layers = [layers] * len(block_types) if isinstance(layers, int) else list(layers)
    attention = [k for k, block in enumerate(block_types) if block == CROSS_ATTENTION_BLOCK]
    kept = [min(layers[k], keep) if attention and k == attention[-1] else 0 for k in range(len(block_types))]
    # ControlNetModel gives its mid block the last entry's layer count (a plain last block has no layers to clash).
    kept[-1] = min(layers[-1], keep)
    config["down_block_types"] = [
        CROSS_ATTENTION_BLOCK if block == CROSS_ATTENTION_BLOCK and n else PLAIN_BLOCK
        for block, n in zip(block_types, kept, strict=True)
    ]
    config["transformer_layers_per_block"] = kept
    return config


def make_controlnet(unet, size="full", conditioning_embedding_out_channels=CONDITIONING_CHANNELS):
    """A ControlNet for `unet`, initialised from it (the size `full` equals `ControlNetModel.from_unet`).

    Args:
        unet: the `UNet2DConditionModel` the ControlNet will control (an inpainting UNet's 9 input channels
            become the ControlNet's).
        size: `full`, `mid` or `small` (see the module's docstring and `CONTROLNET_SIZES`).
        conditioning_embedding_out_channels: widths of the conditioning image's encoder.

    Returns:
        A `ControlNetModel` (fp32 on the CPU, as `from_unet` builds it) whose residuals fit the UNet unchanged.
    """
    from diffusers import ControlNetModel

    config = controlnet_config(unet.config, size, conditioning_embedding_out_channels)
    controlnet = ControlNetModel.from_config(config)
    for name in _FROM_UNET:
        module = getattr(controlnet, name, None)
        if module is None:
            continue
        # The compact sizes lack some of the UNet's transformer layers (unexpected here); every weight they have
        # must come from the UNet (nothing missing), with the UNet's shape (load_state_dict checks it).
        missing = module.load_state_dict(getattr(unet, name).state_dict(), strict=False).missing_keys
        if missing:
            raise ValueError(f"ControlNet {name} weights {missing[:3]} have no counterpart in the UNet.")
    return controlnet
