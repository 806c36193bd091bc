"""Backbones as data: the registry, detection from a model folder, tiny SDXL models, real-size SDXL configs."""

import json

import numpy as np
import pytest
import torch
from conftest import generator, make_photo
from diffusers import (
    ControlNetModel,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from torch.utils.flop_counter import FlopCounterMode

from photobg.backbones import (
    BACKBONES,
    TEST_MODELS,
    UnsupportedModelError,
    backbone_for_config,
    backbone_from_configs,
    detect_backbone,
    get_backbone,
)
from photobg.bench import count_flops, meta_models
from photobg.configs import get_config
from photobg.models import load_pipeline, resolve_model, write_test_model

# (tiny config, with a ControlNet) -> the backbone its folder must be detected as.
TINY_FOLDERS = {
    ("tiny-inpainting", True): "sd2-inpainting",
    ("tiny-inpainting", False): "sd2-inpainting",
    ("tiny-base", True): "sd2-base",
    ("tiny-base", False): "sd2-base",
    ("tiny-sdxl-inpainting", True): "sdxl-inpainting",
    ("tiny-sdxl-inpainting", False): "sdxl-inpainting",
    ("tiny-sdxl-base", True): "sdxl-base",
    ("tiny-sdxl-base", False): "sdxl-base",
}


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory):
    """Every tiny test model, with and without a ControlNet, written once; each folder named after another
    backbone, so that detection cannot read the name."""
    root = tmp_path_factory.mktemp("backbones")
    names = list(BACKBONES)
    folders = {}
    for k, (config_name, with_controlnet) in enumerate(TINY_FOLDERS):
        misleading = names[(names.index(TINY_FOLDERS[config_name, with_controlnet]) + 1) % len(names)]
        path = root / f"{k}-{misleading}"
        folders[config_name, with_controlnet] = write_test_model(path, config_name, with_controlnet=with_controlnet)
    return folders


def _write_configs(folder, model_index, unet_config=None):
    """A model folder holding only what detection reads."""
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps(model_index))
    if unet_config is not None:
        (folder / "unet").mkdir()
        (folder / "unet" / "config.json").write_text(json.dumps(unet_config))
    return folder


def _index_of(folder):
    return json.loads((folder / "model_index.json").read_text())


def _unet_config_of(folder):
    return json.loads((folder / "unet" / "config.json").read_text())


# ----------------------------------------------------------------------------- the registry


def test_registry_names_each_backbone_with_its_configs():
    assert list(BACKBONES) == ["sd2-inpainting", "sd2-base", "sdxl-inpainting", "sdxl-base"]
    assert TEST_MODELS == ("tiny-inpainting", "tiny-base", "tiny-sdxl-inpainting", "tiny-sdxl-base")
    for backbone in BACKBONES.values():
        for config_name in (backbone.config, backbone.tiny_config):
            config = get_config(config_name)
            assert backbone_for_config(config_name) is backbone
            assert config["unet"]["in_channels"] == backbone.unet_in_channels
            assert set(backbone.text_encoders) | set(backbone.tokenizers) <= set(config)
        assert backbone.native_size == get_config(backbone.config)["unet"]["sample_size"] * 8
    assert get_backbone("sdxl-base").variant == "base" and get_backbone("sdxl-inpainting").variant == "inpaint"
    with pytest.raises(ValueError, match="Unknown backbone 'sd3'; choose one of: sd2-inpainting, sd2-base"):
        get_backbone("sd3")


@pytest.mark.parametrize("name", ["sdxl-inpainting", "sdxl-base", "tiny-sdxl-inpainting", "tiny-sdxl-base"])
def test_sdxl_configs_are_consistent_with_the_added_conditions(name):
    config = get_config(name)
    unet, encoder, encoder_2 = config["unet"], config["text_encoder"], config["text_encoder_2"]
    # The UNet's context is both encoders' hidden states side by side; its added embedding takes the second
    # encoder's pooled projection and 6 time ids (no aesthetic score for these models).
    assert unet["cross_attention_dim"] == encoder["hidden_size"] + encoder_2["hidden_size"]
    time_ids = 6 * unet["addition_time_embed_dim"]
    assert unet["projection_class_embeddings_input_dim"] == encoder_2["projection_dim"] + time_ids
    assert unet["addition_embed_type"] == "text_time" and unet["down_block_types"][0] == "DownBlock2D"
    assert config["pipeline"]["force_zeros_for_empty_prompt"] is True
    assert config["pipeline"].get("requires_aesthetics_score", False) is False
    assert config["vae"]["scaling_factor"] == 0.13025 and config["vae"]["force_upcast"] is True
    assert (config["tokenizer"]["pad_token"], config["tokenizer_2"]["pad_token"]) == ("<|endoftext|>", "!")


# ----------------------------------------------------------------------------- detection


@pytest.mark.parametrize("config_name, with_controlnet", list(TINY_FOLDERS))
def test_detection_on_every_tiny_folder(tiny_folders, config_name, with_controlnet):
    folder = tiny_folders[config_name, with_controlnet]
    backbone = detect_backbone(str(folder))
    assert backbone.name == TINY_FOLDERS[config_name, with_controlnet]
    assert backbone.name not in folder.name.split("-", 1)[1]  # not read from the (misleading) name
    components = {name for name, entry in _index_of(folder).items() if isinstance(entry, list) and entry[1]}
    assert set(backbone.text_encoders) | set(backbone.tokenizers) <= components
    assert ("text_encoder_2" in components) == ("sdxl" in backbone.name)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_real_configs_are_detected_as_their_backbone(name):
    backbone = BACKBONES[name]
    index = {component: ["transformers", "CLIPTextModel"] for component in backbone.text_encoders}
    index.update(_class_name=backbone.pipeline_class, unet=["diffusers", "UNet2DConditionModel"])
    assert backbone_from_configs(index, get_config(backbone.config)["unet"]) is backbone


def _refiner(index, unet):
    """SDXL's refiner: only the second text encoder, an aesthetic score among the time ids."""
    index = {**index, "text_encoder": [None, None], "tokenizer": [None, None], "requires_aesthetics_score": True}
    unet = {**unet, "projection_class_embeddings_input_dim": 2560}
    return index, unet


def _pix2pix(index, unet):
    return index, {**unet, "in_channels": 8}


def _upscaler(index, unet):
    return index, {**unet, "in_channels": 7, "num_class_embeds": 1000}


def _sd3(index, unet):
    index = {key: value for key, value in index.items() if key != "unet"}
    return {
        **index,
        "_class_name": "StableDiffusion3Pipeline",
        "transformer": ["diffusers", "SD3Transformer2DModel"],
    }, None


@pytest.mark.parametrize(
    "source, change, found",
    [
        (
            ("tiny-sdxl-base", False),
            _refiner,
            r"a StableDiffusionXLPipeline with scheduler, text_encoder_2, tokenizer_2, unet, vae; .*"
            r"addition_embed_type='text_time'",
        ),
        (("tiny-inpainting", False), _pix2pix, r"its UNet has _class_name='UNet2DConditionModel', in_channels=8"),
        (("tiny-inpainting", False), _upscaler, r"in_channels=7, num_class_embeds=1000"),
        (("tiny-sdxl-inpainting", False), _sd3, r"has no UNet: a StableDiffusion3Pipeline with .*transformer"),
    ],
)
def test_unsupported_folders_get_an_error_naming_what_was_found(tiny_folders, tmp_path, source, change, found):
    index, unet = change(_index_of(tiny_folders[source]), _unet_config_of(tiny_folders[source]))
    folder = _write_configs(tmp_path / "other", index, unet)
    with pytest.raises(UnsupportedModelError, match=found) as caught:
        detect_backbone(str(folder))
    assert str(folder) in str(caught.value)
    for backbone in BACKBONES.values():  # the message lists what is supported
        assert backbone.name in str(caught.value) and backbone.hub_id in str(caught.value)
    with pytest.raises(UnsupportedModelError, match=found):  # loading fails the same way, before any weight
        load_pipeline(folder, device="cpu")


def test_folders_that_are_no_diffusers_model_fail_clearly(tiny_folders, tmp_path):
    with pytest.raises(FileNotFoundError, match=f"Model folder '{tmp_path}' has no model_index.json"):
        detect_backbone(str(tmp_path))
    folder = _write_configs(tmp_path / "no-unet-folder", _index_of(tiny_folders["tiny-sdxl-base", False]))
    with pytest.raises(FileNotFoundError, match="has no 'unet/' component folder"):
        detect_backbone(str(folder))


# ----------------------------------------------------------------------------- tiny SDXL models


def test_tiny_sdxl_inpainting_runs_in_diffusers_own_pipeline(tiny_folders):
    pipe = StableDiffusionXLInpaintPipeline.from_pretrained(tiny_folders["tiny-sdxl-inpainting", False])
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.config.in_channels == 9 and pipe.unet.config.addition_embed_type == "text_time"
    assert type(pipe.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert pipe.config.force_zeros_for_empty_prompt and not pipe.config.requires_aesthetics_score
    assert (pipe.tokenizer.pad_token, pipe.tokenizer_2.pad_token) == ("<|endoftext|>", "!")
    photo, object_mask = make_photo(128, 96)
    inpaint_mask = object_mask.point(lambda v: 255 if v < 128 else 0)

    def run(prompt):
        kwargs = dict(image=photo, mask_image=inpaint_mask, height=96, width=128, num_inference_steps=2, strength=1.0)
        return pipe(prompt, generator=generator(), output_type="np", **kwargs).images

    images = run("a photo of a cat on the beach")
    assert images.shape == (1, 96, 128, 3) and np.isfinite(images).all()
    assert np.abs(images - run("a bottle on the table")).max() > 1e-4  # both text encoders reach the UNet


def test_tiny_sdxl_base_runs_in_diffusers_own_pipeline(tiny_folders):
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_folders["tiny-sdxl-base", False])
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.config.in_channels == 4
    images = pipe("a photo", num_inference_steps=2, generator=generator(), output_type="np").images
    assert images.shape == (1, 128, 128, 3)  # the tiny model's native size, twice the tiny SD2 models'
    assert np.isfinite(images).all()


def test_tiny_sdxl_controlnet_takes_the_unets_nine_channels_and_added_conditions(tiny_folders):
    folder = tiny_folders["tiny-sdxl-inpainting", True]
    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    controlnet = ControlNetModel.from_pretrained(folder / "controlnet")
    assert controlnet.config.in_channels == 9 and controlnet.config.addition_embed_type == "text_time"
    time_ids = torch.tensor([[96.0, 128.0, 0.0, 0.0, 96.0, 128.0]])  # original size, crop top-left, target size
    added = {"text_embeds": torch.randn(1, 64), "time_ids": time_ids}
    sample, context = torch.randn(1, 9, 12, 16), torch.randn(1, 77, unet.config.cross_attention_dim)
    control_image = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        down, mid = controlnet(
            sample, 10, context, controlnet_cond=control_image, added_cond_kwargs=added, return_dict=False
        )
        plain = unet(sample, 10, context, added_cond_kwargs=added).sample
        controlled = unet(
            sample,
            10,
            context,
            added_cond_kwargs=added,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        ).sample
    assert plain.shape == controlled.shape == (1, 4, 12, 16)
    assert (controlled - plain).abs().max() > 1e-4


def test_test_model_names_build_tiny_sdxl_models(monkeypatch, tmp_path):
    monkeypatch.setenv("PHOTOBG_CACHE", str(tmp_path))
    folder = resolve_model("tiny-sdxl-base")
    assert folder == str(tmp_path / "tiny-sdxl-base") and detect_backbone(folder).name == "sdxl-base"
    assert _index_of(tmp_path / "tiny-sdxl-base")["controlnet"] == ["diffusers", "ControlNetModel"]


def test_load_pipeline_refuses_sdxl_clearly_until_its_pipeline_exists(tiny_folders):
    for name in ("sdxl-inpainting", "sdxl-base"):
        folder = tiny_folders[get_backbone(name).tiny_config, True]
        with pytest.raises(ValueError, match=f"is an {name} .*SDXL generation is not supported yet"):
            load_pipeline(folder, device="cpu")
    base = tiny_folders["tiny-sdxl-inpainting", False]
    with pytest.raises(ValueError, match="SDXL generation is not supported yet"):
        load_pipeline(base, controlnet=tiny_folders["tiny-sdxl-inpainting", True] / "controlnet", device="cpu")


def test_sd2_folders_load_as_before(tiny_folders):
    pipe = load_pipeline(tiny_folders["tiny-inpainting", True], device="cpu")
    assert type(pipe).__name__ == "StableDiffusionControlNetInpaintPipeline"
    assert not hasattr(pipe, "text_encoder_2") and pipe.tokenizer.pad_token == "!"
    with pytest.raises(ValueError, match=r"takes 4 input channels but the UNet of .* \(sd2-inpainting\) takes 9"):
        load_pipeline(tiny_folders["tiny-inpainting", False], controlnet=tiny_folders["tiny-base", True] / "controlnet")


# ----------------------------------------------------------------------------- real size


@pytest.mark.parametrize("name, conv_in", [("sdxl-inpainting", 9), ("sdxl-base", 4)])
def test_real_sdxl_configs_build_full_size_models_on_the_meta_device(name, conv_in):
    models = meta_models(name)
    count = {key: sum(p.numel() for p in model.parameters()) for key, model in models.items()}
    # SDXL base's published sizes; the inpainting UNet adds 5 input channels to conv_in (320 x 5 x 3 x 3).
    assert count["unet"] == 2_567_463_684 + (conv_in - 4) * 320 * 9
    assert count["vae"] == 83_653_863
    assert (count["text_encoder"], count["text_encoder_2"]) == (123_060_480, 694_659_840)
    assert 1.24e9 < count["controlnet"] < 1.26e9  # a full copy of the UNet's encoder, about 1.25 B
    assert type(models["text_encoder_2"]).__name__ == "CLIPTextModelWithProjection"
    assert models["controlnet"].config.in_channels == conv_in


def test_sdxl_flops_at_1024_px_match_the_issue_facts():
    flops = count_flops("sdxl-inpainting", 1024, steps=1, guidance=False)  # one forward of each model
    assert flops["unet_step"] == pytest.approx(6.8e12, rel=0.01)
    assert flops["controlnet_step"] == pytest.approx(3.0e12, rel=0.01)  # 45% of the UNet (SD2: 35%)
    assert 2 * flops["vae_encode"] == pytest.approx(9.8e12, rel=0.01)  # the two VAE encodes of a training sample


def test_sdxl_flop_counts_add_up_and_count_both_text_encoders():
    flops = count_flops("tiny-sdxl-inpainting", 128, steps=10)
    assert flops["photobg"] - flops["si2"] == pytest.approx(10 * flops["controlnet_step"])
    models, per_encoder = meta_models("tiny-sdxl-inpainting"), []
    for name in ("text_encoder", "text_encoder_2"):
        with torch.device("meta"), FlopCounterMode(display=False) as counter:
            models[name](torch.zeros(2, 77, dtype=torch.long))  # prompt and negative prompt
        per_encoder.append(counter.get_total_flops())
    assert flops["text_encoder"] == sum(per_encoder) and min(per_encoder) > 0


def test_tiny_and_real_sdxl_share_block_types():
    for name in ("sdxl-inpainting", "sdxl-base"):
        real, tiny = get_config(name)["unet"], get_config(get_backbone(name).tiny_config)["unet"]
        assert set(tiny["down_block_types"]) == set(real["down_block_types"])
        assert set(tiny["up_block_types"]) == set(real["up_block_types"])
        assert len(set(tiny["transformer_layers_per_block"])) > 1  # per-block transformer depth, like SDXL's
        for key in ("addition_embed_type", "mid_block_type", "use_linear_projection", "in_channels"):
            assert tiny[key] == real[key]
