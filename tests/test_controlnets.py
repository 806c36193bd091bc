"""ControlNet sizes: the compact ones are diffusers ControlNets built from the UNet whose residuals fit it unchanged."""

import numpy as np
import pytest
import torch
from conftest import generator, make_photo
from diffusers import ControlNetModel, UNet2DConditionModel

from photobg.controlnets import CONTROLNET_SIZES, controlnet_config, make_controlnet
from photobg.models import build_components, load_pipeline

TINY = ("tiny-sdxl-inpainting", "tiny-inpainting", "tiny-sdxl-base")
COMPACT = ("mid", "small")


@pytest.fixture(scope="module")
def unets():
    return {name: build_components(name, with_controlnet=False)["unet"] for name in TINY}


def unet_inputs(unet, seed=0):
    """(sample, timestep, context, control image, added conditions) for a 96 x 128 px batch of 2."""
    torch.manual_seed(seed)
    config = unet.config
    inputs = dict(
        sample=torch.randn(2, config.in_channels, 12, 16),
        timestep=torch.tensor([10, 500]),
        encoder_hidden_states=torch.randn(2, 77, config.cross_attention_dim),
        added_cond_kwargs=None,
    )
    if config.addition_embed_type == "text_time":
        pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        time_ids = torch.tensor([[96.0, 128.0, 0.0, 0.0, 96.0, 128.0]] * 2)  # original size, crop, target size
        inputs["added_cond_kwargs"] = {"text_embeds": torch.randn(2, pooled), "time_ids": time_ids}
    return inputs, torch.rand(2, 3, 96, 128)


def residuals(controlnet, inputs, control_image):
    with torch.no_grad():
        return controlnet(**inputs, controlnet_cond=control_image, return_dict=False)


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("size", COMPACT)
def test_compact_residuals_plug_into_the_unet_unchanged(unets, name, size):
    unet = unets[name]
    controlnet = make_controlnet(unet, size)
    assert controlnet.config.in_channels == unet.config.in_channels  # 9 for an inpainting UNet
    inputs, control_image = unet_inputs(unet)
    down, mid = residuals(controlnet, inputs, control_image)
    full_down, full_mid = residuals(make_controlnet(unet), inputs, control_image)
    assert [r.shape for r in down] == [r.shape for r in full_down] and mid.shape == full_mid.shape
    # Fresh, like a full ControlNet, it leaves the UNet as it is: its output layers start at zero.
    assert all(r.abs().max() == 0 for r in (*down, mid))
    for layer in (*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block):
        torch.nn.init.normal_(layer.weight, std=0.05)
    down, mid = residuals(controlnet, inputs, control_image)
    with torch.no_grad():
        plain = unet(**inputs).sample
        controlled = unet(**inputs, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
    assert controlled.shape == plain.shape
    assert (controlled - plain).abs().max() > 1e-3


@pytest.mark.parametrize("name", TINY)
def test_compact_sizes_drop_exactly_the_unets_transformer_layers(unets, name):
    unet = unets[name]
    full = make_controlnet(unet)
    unet_weights = {
        key: value for key, value in unet.state_dict().items() if key.startswith(("down_blocks.", "mid_block."))
    }
    counts = {"full": sum(p.numel() for p in full.parameters())}
    for size in COMPACT:
        controlnet = make_controlnet(unet, size)
        kept = controlnet.state_dict()
        dropped = {key: value for key, value in unet_weights.items() if key not in kept}
        assert all(".transformer_blocks." in key or ".attentions." in key for key in dropped)
        counts[size] = sum(p.numel() for p in controlnet.parameters())
        assert counts["full"] - counts[size] == sum(value.numel() for value in dropped.values())
        # Everything it has of the UNet starts as the UNet's weights.
        assert all(torch.equal(kept[key], value) for key, value in unet_weights.items() if key in kept)
        assert torch.equal(kept["conv_in.weight"], unet.conv_in.weight)
    # Tiny SD2 has one 1-layer attention block, which `mid` keeps: there it is the full size.
    assert counts["full"] >= counts["mid"] > counts["small"]
    if name.startswith("tiny-sdxl"):
        assert counts["full"] > counts["mid"]


def test_full_size_is_diffusers_from_unet(unets):
    unet = unets["tiny-sdxl-inpainting"]
    ours, theirs = make_controlnet(unet), ControlNetModel.from_unet(unet)
    assert ours.config.transformer_layers_per_block == theirs.config.transformer_layers_per_block
    assert ours.config.down_block_types == theirs.config.down_block_types
    ours, theirs = ours.state_dict(), theirs.state_dict()
    assert ours.keys() == theirs.keys()
    copied = [key for key in ours if not key.startswith("controlnet_")]  # the zero convolutions are fresh
    assert all(torch.equal(ours[key], theirs[key]) for key in copied)


def test_real_sdxl_sizes_are_the_diffusers_teams_mid_and_small_controlnets():
    from photobg.configs import get_config

    unet_config = get_config("sdxl-inpainting")["unet"]
    counts = {}
    for size in CONTROLNET_SIZES:
        with torch.device("meta"):
            controlnet = ControlNetModel.from_config(controlnet_config(unet_config, size))
        counts[size] = sum(p.numel() for p in controlnet.parameters())
    # diffusers/controlnet-canny-sdxl-1.0-mid and -small hold 1.09 GB and 0.64 GB of fp32 weights.
    assert counts["mid"] * 4 == pytest.approx(1.09e9, rel=0.01)
    assert counts["small"] * 4 == pytest.approx(0.64e9, rel=0.01)
    assert counts["full"] / counts["small"] == pytest.approx(7.8, abs=0.1)  # "7x smaller"
    mid = controlnet_config(unet_config, "mid")
    assert mid["transformer_layers_per_block"] == [0, 0, 1]
    assert mid["down_block_types"] == ["DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"]


def test_compact_controlnet_saves_loads_and_generates_with_plain_diffusers(unets, inpaint_base_model, tmp_path):
    unet = unets["tiny-sdxl-inpainting"]
    controlnet = make_controlnet(unet, "small")
    controlnet.save_pretrained(tmp_path / "sdxl-small")
    loaded = ControlNetModel.from_pretrained(tmp_path / "sdxl-small")
    assert loaded.config.down_block_types == controlnet.config.down_block_types
    assert all(torch.equal(value, loaded.state_dict()[key]) for key, value in controlnet.state_dict().items())
    # load_pipeline on SD2 (its SDXL support comes with the SDXL pipeline): a base model plus a compact ControlNet.
    base_unet = UNet2DConditionModel.from_pretrained(inpaint_base_model / "unet")
    sd2_small = make_controlnet(base_unet, "small")
    for layer in (*sd2_small.controlnet_down_blocks, sd2_small.controlnet_mid_block):
        torch.nn.init.normal_(layer.weight, std=0.05)
    sd2_small.save_pretrained(tmp_path / "sd2-small")
    pipe = load_pipeline(inpaint_base_model, controlnet=tmp_path / "sd2-small", device="cpu")
    assert pipe.controlnet.config.down_block_types == ["DownBlock2D", "DownBlock2D"]
    photo, object_mask = make_photo()
    pipe.set_progress_bar_config(disable=True)
    images = {
        scale: pipe(
            "a photo",
            image=photo,
            object_mask=object_mask,
            num_inference_steps=2,
            generator=generator(),
            controlnet_conditioning_scale=scale,
            output_type="np",
        ).images
        for scale in (0.0, 1.0)
    }
    assert np.abs(images[1.0] - images[0.0]).max() > 1e-3  # the compact ControlNet acts


def test_unknown_size_is_an_error_naming_the_choices(unets):
    with pytest.raises(ValueError, match="Unknown ControlNet size 'tiny'; choose one of: full, mid, small"):
        make_controlnet(unets["tiny-inpainting"], "tiny")
