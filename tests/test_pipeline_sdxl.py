"""The method on SDXL, on tiny random SDXL models: at ControlNet scale 0 it is diffusers' SDXL inpainting,
the 9-channel ControlNet gets the UNet's input and SDXL's added conditions, and everything the SD2 pipeline
does (object mode, lining up, guess mode, guidance window, prompt embeddings, IP-Adapter, saving) holds."""

import copy
import json

import numpy as np
import pytest
import torch
from conftest import assert_objects_kept, cutouts, generator, make_photo, write_ip_adapter
from diffusers import DDPMScheduler, DiffusionPipeline, StableDiffusionXLInpaintPipeline
from diffusers.callbacks import SDXLCFGCutoffCallback
from PIL import Image

import photobg.pipeline_controlnet_inpaint_sd_xl as sdxl_file
from photobg.backbones import BACKBONES
from photobg.models import load_pipeline
from photobg.pipeline_controlnet_inpaint import StableDiffusionControlNetInpaintPipeline
from photobg.pipeline_controlnet_inpaint_sd_xl import StableDiffusionXLControlNetInpaintPipeline

PROMPT = "a photo of a bottle on the beach"


@pytest.fixture(scope="module")
def loaded(sdxl_models):
    """The tiny SDXL-inpainting and SDXL-base pipelines, loaded once for the module."""
    return {variant: load_pipeline(folder, device="cpu") for variant, folder in sdxl_models.items()}


def fresh(pipe):
    """A new pipeline object over `pipe`'s models: its own scheduler and settings, the same weights."""
    pipe = type(pipe)(**pipe.components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture()
def xl(loaded):
    return fresh(loaded["inpaint"])


@pytest.fixture()
def xl_base(loaded):
    return fresh(loaded["base"])


@pytest.fixture()
def record():
    """`record(pipe)` -> {"unet": [...], "controlnet": [...]}: each call's (sample, keyword arguments), filled as
    the pipeline runs; the hooks are removed after the test (the models are shared)."""
    handles = []

    def start(pipe):
        seen = {"unet": [], "controlnet": []}
        for name, calls in seen.items():
            hook = lambda module, args, kwargs, calls=calls: calls.append((args[0].clone(), kwargs))  # noqa: E731
            handles.append(getattr(pipe, name).register_forward_pre_hook(hook, with_kwargs=True))
        return seen

    yield start
    for handle in handles:
        handle.remove()


def seed_inputs(size=(64, 48)):
    """The photo and its binary inpaint mask (white = generate), the original code's inputs."""
    photo, object_mask = make_photo(*size)
    return photo, Image.fromarray(np.where(np.asarray(object_mask) >= 128, 0, 255).astype(np.uint8))


def run(pipe, **kwargs):
    kwargs = {"num_inference_steps": 3, "output_type": "np", "generator": generator(0), **kwargs}
    return pipe(kwargs.pop("prompt", PROMPT), **kwargs).images


def diffusers_sdxl_inpainting(pipe):
    """diffusers' own SDXL inpainting pipeline over the same modules (what photobg is at ControlNet scale 0)."""
    parts = ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "scheduler")
    theirs = StableDiffusionXLInpaintPipeline(
        **{name: pipe.components[name] for name in parts},
        requires_aesthetics_score=pipe.config.requires_aesthetics_score,
        force_zeros_for_empty_prompt=pipe.config.force_zeros_for_empty_prompt,
    )
    theirs.set_progress_bar_config(disable=True)
    return theirs


# ----------------------------------------------------------------------------- SDXL at scale 0 is diffusers' SDXL


@pytest.mark.parametrize("variant", ["inpaint", "base"])
def test_scale_zero_equals_diffusers_sdxl_inpainting(loaded, variant):
    ours = fresh(loaded[variant])
    theirs = diffusers_sdxl_inpainting(ours)
    photo, inpaint = seed_inputs()
    inputs = dict(image=photo, mask_image=inpaint, height=48, width=64, strength=1.0, guidance_scale=5.0)
    for scheduler_cls in (None, DDPMScheduler):  # the recipe's UniPC and a stochastic one
        if scheduler_cls is not None:
            ours.scheduler = theirs.scheduler = scheduler_cls.from_config(ours.scheduler.config)
        expected = run(theirs, **inputs)
        np.testing.assert_allclose(run(ours, **inputs, controlnet_conditioning_scale=0.0), expected, atol=1e-5)
    two = dict(inputs, prompt=[PROMPT, "a cat"], negative_prompt=["", "a dog"], num_images_per_prompt=2)
    np.testing.assert_allclose(run(ours, **two, controlnet_conditioning_scale=0.0), run(theirs, **two), atol=1e-5)


# ----------------------------------------------------------------------------- the ControlNet and SDXL's conditions


def test_nine_channel_controlnet_gets_the_unets_input_and_added_conditions(xl, record):
    photo, inpaint = seed_inputs()
    seen = record(xl)
    off = run(xl, image=photo, mask_image=inpaint, controlnet_conditioning_scale=0.0)
    assert not seen["controlnet"]  # skipped at scale 0
    on = run(xl, image=photo, mask_image=inpaint)
    assert np.abs(on - off).mean() > 1e-3  # the 9-channel ControlNet changes the output
    (unet_sample, unet_kwargs), (control_sample, control_kwargs) = seen["unet"][-1], seen["controlnet"][-1]
    assert control_sample.shape[1] == 9
    torch.testing.assert_close(control_sample, unet_sample)
    for key in ("text_embeds", "time_ids"):
        torch.testing.assert_close(control_kwargs["added_cond_kwargs"][key], unet_kwargs["added_cond_kwargs"][key])
    torch.testing.assert_close(control_kwargs["encoder_hidden_states"], unet_kwargs["encoder_hidden_states"])
    # Time ids: original size (48, 64), crop (0, 0), target size (48, 64), for both halves of the guidance batch.
    assert unet_kwargs["added_cond_kwargs"]["time_ids"].tolist() == [[48.0, 64.0, 0.0, 0.0, 48.0, 64.0]] * 2
    # controlnet_cond: the inpaint mask, 3 channels in [0, 1], white = region to generate.
    expected = torch.from_numpy(np.asarray(inpaint) / 255.0).float().expand(3, -1, -1)
    torch.testing.assert_close(control_kwargs["controlnet_cond"][1], expected)
    # force_zeros_for_empty_prompt: without a negative prompt the unconditional half is all zeros.
    negative_half = unet_kwargs["encoder_hidden_states"][0]
    assert negative_half.abs().max() == 0 and unet_kwargs["added_cond_kwargs"]["text_embeds"][0].abs().max() == 0
    run(xl, image=photo, mask_image=inpaint, negative_prompt="", num_inference_steps=1)
    assert seen["unet"][-1][1]["encoder_hidden_states"][0].abs().max() > 0  # "" is encoded


def test_micro_conditioning_reaches_the_time_ids(xl, record):
    photo, inpaint = seed_inputs()
    seen = record(xl)
    sizes = dict(original_size=(480, 640), crops_coords_top_left=(8, 16), target_size=(96, 128))
    run(xl, image=photo, mask_image=inpaint, num_inference_steps=1, **sizes, negative_original_size=(24, 32))
    negative, positive = seen["unet"][0][1]["added_cond_kwargs"]["time_ids"].tolist()
    assert positive == [480.0, 640.0, 8.0, 16.0, 96.0, 128.0]
    assert negative == [24.0, 32.0, 0.0, 0.0, 96.0, 128.0]


def test_guidance_window_and_guess_mode(xl, record):
    photo, inpaint = seed_inputs()
    inputs = dict(image=photo, mask_image=inpaint)
    off = run(xl, **inputs, controlnet_conditioning_scale=0.0)
    seen = record(xl)
    np.testing.assert_array_equal(run(xl, **inputs, control_guidance_end=0.0), off)
    assert not seen["controlnet"]  # outside the window the ControlNet is not run
    run(xl, **inputs, control_guidance_start=0.5)
    assert len(seen["controlnet"]) == 1  # the last of 3 steps only
    seen["controlnet"].clear()
    guessed = run(xl, **inputs, guess_mode=True)
    sample, kwargs = seen["controlnet"][0]
    assert sample.shape[0] == 1 and kwargs["added_cond_kwargs"]["text_embeds"].shape[0] == 1  # conditional half
    assert not np.allclose(guessed, run(xl, **inputs), atol=1e-4)


def test_prompt_embeds_give_the_prompts_images(xl):
    photo, object_mask = make_photo(64, 48)
    embeds, negative, pooled, negative_pooled = xl.encode_prompt(PROMPT, device=xl.device)
    by_prompt = run(xl, image=photo, object_mask=object_mask)
    by_embeds = run(
        xl,
        prompt=None,
        image=photo,
        object_mask=object_mask,
        prompt_embeds=embeds,
        negative_prompt_embeds=negative,
        pooled_prompt_embeds=pooled,
        negative_pooled_prompt_embeds=negative_pooled,
    )
    np.testing.assert_allclose(by_embeds, by_prompt, atol=1e-6)
    with pytest.raises(ValueError, match="With `prompt_embeds` pass `pooled_prompt_embeds` too"):
        run(xl, prompt=None, image=photo, object_mask=object_mask, prompt_embeds=embeds)


# ----------------------------------------------------------------------------- object mode, both variants


@pytest.mark.parametrize("variant", ["inpaint", "base"])
@pytest.mark.parametrize(
    "prompts, per_prompt, n_images, own",
    [
        (1, 2, 1, [0, 0]),  # one image for all outputs
        (2, 2, 2, [0, 0, 1, 1]),  # one per prompt
        (2, 1, 2, [0, 1]),  # one per output
    ],
)
def test_object_pixels_exact_in_every_lining_up(loaded, variant, prompts, per_prompt, n_images, own):
    pipe = fresh(loaded[variant])
    images = cutouts(n_images, size=(70, 45))  # not a multiple of 8
    outputs = pipe(
        ["a photo of a cat", "a dog on the table"][:prompts],
        image=images if n_images > 1 else images[0],
        num_images_per_prompt=per_prompt,
        num_inference_steps=2,
        generator=[generator(s) for s in range(prompts * per_prompt)],
    ).images
    assert all(out.size == (70, 45) for out in outputs)
    assert_objects_kept(outputs, [images[i] for i in own])
    assert not np.array_equal(np.asarray(outputs[0]), np.asarray(outputs[1]))  # own seeds, own backgrounds


def test_base_variant_keeps_the_object_by_latent_blending(xl_base, record):
    photo, object_mask = make_photo(64, 64)
    seen = record(xl_base)
    raw = run(xl_base, image=photo, object_mask=object_mask, preserve_object=False, output_type="latent")
    sample, kwargs = seen["controlnet"][0]
    assert sample.shape[1] == 4 and "text_embeds" in kwargs["added_cond_kwargs"]
    soft = torch.from_numpy(np.asarray(object_mask) / 255.0).float()
    photo01 = torch.from_numpy(np.asarray(photo) / 255.0).permute(2, 0, 1).float()
    torch.testing.assert_close(kwargs["controlnet_cond"][1], photo01 * soft, atol=0.02, rtol=0)  # object on black
    known = xl_base.vae.encode(xl_base.image_processor.preprocess(photo)).latent_dist.mean
    known = known * xl_base.vae.config.scaling_factor
    obj = torch.from_numpy(np.asarray(object_mask) >= 128).float()[None, None]
    keep = (torch.nn.functional.interpolate(obj, size=known.shape[-2:]) == 1).expand_as(raw)
    assert (raw - known).abs()[keep].mean() < 0.5 * (raw - known).abs()[~keep].mean()


# ----------------------------------------------------------------------------- what diffusers users rely on


def test_saved_folder_loads_in_plain_diffusers(xl, tmp_path):
    photo, object_mask = make_photo(64, 48)
    before = run(xl, image=photo, object_mask=object_mask)
    xl.save_pretrained(tmp_path / "saved")
    index = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_controlnet_inpaint_sd_xl", "StableDiffusionXLControlNetInpaintPipeline"]
    assert (tmp_path / "saved" / "method.py").is_file()  # imported by the pipeline file, relatively
    for custom in ({}, {"custom_pipeline": sdxl_file.__file__}):  # the folder's own file, or the package's
        plain = DiffusionPipeline.from_pretrained(tmp_path / "saved", trust_remote_code=True, **custom)
        plain.set_progress_bar_config(disable=True)
        assert type(plain).__name__ == "StableDiffusionXLControlNetInpaintPipeline"
        assert type(plain) is not StableDiffusionXLControlNetInpaintPipeline  # built from the copied file
        np.testing.assert_array_equal(run(plain, image=photo, object_mask=object_mask), before)
    ours = StableDiffusionXLControlNetInpaintPipeline.from_pretrained(tmp_path / "saved")
    assert type(ours) is StableDiffusionXLControlNetInpaintPipeline


def test_ip_adapter_image_conditions_the_unet_only(sdxl_models, tmp_path, record):
    pipe = load_pipeline(sdxl_models["inpaint"], device="cpu")  # its own models: the IP-Adapter changes the UNet
    pipe.set_progress_bar_config(disable=True)
    photo, object_mask = make_photo(64, 48)
    plain = run(pipe, image=photo, object_mask=object_mask)
    pipe.load_ip_adapter(str(write_ip_adapter(tmp_path, pipe.unet)), subfolder="", weight_name="ip-adapter.safetensors")
    rng = np.random.default_rng(0)
    references = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(2)]
    seen = record(pipe)
    first = run(pipe, image=photo, object_mask=object_mask, ip_adapter_image=references[0])
    second = run(pipe, image=photo, object_mask=object_mask, ip_adapter_image=references[1])
    assert np.abs(first - plain).max() > 1e-3 and np.abs(first - second).max() > 1e-3
    assert "image_embeds" in seen["unet"][0][1]["added_cond_kwargs"]
    assert set(seen["controlnet"][0][1]["added_cond_kwargs"]) == {"text_embeds", "time_ids"}
    embeds = pipe.prepare_ip_adapter_image_embeds(references[0], None, pipe.device, 1, True)
    by_embeds = run(pipe, image=photo, object_mask=object_mask, ip_adapter_image_embeds=embeds)
    np.testing.assert_allclose(by_embeds, first, atol=1e-6)


def test_cfg_cutoff_callback_and_every_callback_tensor(xl, record):
    photo, object_mask = make_photo(64, 48)
    seen = record(xl)
    cut = run(
        xl,
        image=photo,
        object_mask=object_mask,
        num_inference_steps=4,
        callback_on_step_end=SDXLCFGCutoffCallback(cutoff_step_ratio=0.5),
    )
    assert [sample.shape[0] for sample, _ in seen["unet"]] == [2, 2, 2, 1]  # guidance off for the last step
    assert np.isfinite(cut).all()
    offered = {}

    def look(pipeline, step, timestep, tensors):
        offered.update({name: tensor.shape for name, tensor in tensors.items()})
        return {}

    names = xl._callback_tensor_inputs
    run(
        xl,
        image=photo,
        object_mask=object_mask,
        num_inference_steps=1,
        guidance_scale=5.0,
        callback_on_step_end=look,
        callback_on_step_end_tensor_inputs=names,
    )
    assert set(offered) == set(names) and offered["add_time_ids"] == (2, 6)


def test_fp16_vae_decodes_in_float32(xl, loaded):
    latents = torch.randn(1, 4, 6, 8)
    with torch.no_grad():
        reference = xl._vae_decode(latents, None)
        xl.vae = copy.deepcopy(xl.vae).to(torch.float16)
        assert xl.vae_needs_upcast()
        decoded = xl._vae_decode(latents.half(), None)
    assert decoded.dtype == torch.float32 and xl.vae.dtype == torch.float16  # decoded in float32, then back
    torch.testing.assert_close(decoded, reference, atol=1e-2, rtol=0)
    sd2 = StableDiffusionControlNetInpaintPipeline.__new__(StableDiffusionControlNetInpaintPipeline)
    assert not sd2.vae_needs_upcast()  # SD2 pipelines decode in the VAE's own dtype, as diffusers' do


def test_pipeline_classes_name_their_backbones_as_the_registry_does():
    for cls, family in (
        (StableDiffusionControlNetInpaintPipeline, "sd2"),
        (StableDiffusionXLControlNetInpaintPipeline, "sdxl"),
    ):
        expected = {b.unet_in_channels: b.name for b in BACKBONES.values() if b.name.startswith(family + "-")}
        assert cls.variant_backbones == expected


def test_arguments_of_another_backbone_are_named_in_the_error(xl, loaded):
    photo, object_mask = make_photo(64, 48)
    with pytest.raises(TypeError, match="StableDiffusionXLControlNetInpaintPipeline takes no argument 'prompt_3'"):
        xl(PROMPT, image=photo, object_mask=object_mask, prompt_3="a cat")
    sd2 = StableDiffusionControlNetInpaintPipeline.__new__(StableDiffusionControlNetInpaintPipeline)
    with pytest.raises(TypeError, match="takes no argument 'original_size', 'prompt_2'"):  # SDXL's, not SD2's
        sd2(PROMPT, image=photo, object_mask=object_mask, prompt_2="a cat", original_size=(64, 64))
