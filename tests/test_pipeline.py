"""The salient-aware pipeline on tiny random models: it is SI2 plus the ControlNet, nothing else."""

import numpy as np
import pytest
import torch
from conftest import assert_objects_kept, cutouts, generator, make_photo
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    StableDiffusionInpaintPipeline,
    UniPCMultistepScheduler,
)
from PIL import Image

import photobg.pipeline_controlnet_inpaint as pipeline_file
from photobg.pipeline_controlnet_inpaint import (
    StableDiffusionControlNetInpaintPipeline,
    make_control_image,
    unet_input,
)

PROMPT = "a photo of a bottle on the beach"


def seed_inputs(size=64):
    """Seed-style inputs at a working size: photo, binary inpaint mask (white = generate)."""
    photo, object_mask = make_photo(size, size)
    inpaint = Image.fromarray(np.where(np.asarray(object_mask) >= 128, 0, 255).astype(np.uint8))
    return photo, inpaint


def run(pipe, **kwargs):
    kwargs = {"num_inference_steps": 3, "output_type": "np", "generator": generator(0), **kwargs}
    return pipe(kwargs.pop("prompt", PROMPT), **kwargs).images


def test_scale_zero_equals_diffusers_sd_inpainting(pipe):
    photo, inpaint = seed_inputs()
    si2 = StableDiffusionInpaintPipeline(
        **{k: pipe.components[k] for k in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")},
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    si2.set_progress_bar_config(disable=True)
    for scheduler_cls in (None, DDPMScheduler):  # PNDM (the model's) and a stochastic one
        if scheduler_cls is not None:
            pipe.scheduler = si2.scheduler = scheduler_cls.from_config(pipe.scheduler.config)
        inputs = dict(image=photo, mask_image=inpaint, height=64, width=64)
        ours = run(pipe, **inputs, control_image=inpaint, controlnet_conditioning_scale=0.0)
        theirs = run(si2, **inputs)
        np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_controlnet_changes_result_and_guidance_window_switches_it_off(pipe):
    photo, inpaint = seed_inputs()
    inputs = dict(image=photo, mask_image=inpaint, control_image=inpaint)
    off = run(pipe, **inputs, controlnet_conditioning_scale=0.0)
    on = run(pipe, **inputs, controlnet_conditioning_scale=1.0)
    assert np.abs(on - off).mean() > 1e-3
    np.testing.assert_array_equal(run(pipe, **inputs, control_guidance_end=0.0), off)


def record_first_inputs(pipe):
    """{"unet"/"controlnet": (sample, controlnet_cond)} of each model's first call, filled as the pipeline runs."""
    seen = {}

    def record(name):
        def hook(module, args, kwargs):
            seen.setdefault(name, (args[0].clone(), kwargs.get("controlnet_cond")))

        return hook

    pipe.unet.register_forward_pre_hook(record("unet"), with_kwargs=True)
    pipe.controlnet.register_forward_pre_hook(record("controlnet"), with_kwargs=True)
    return seen


def test_inpaint_controlnet_receives_the_unets_nine_channel_input(pipe):
    photo, inpaint = seed_inputs()
    seen = record_first_inputs(pipe)
    run(pipe, image=photo, mask_image=inpaint, num_inference_steps=1)
    unet_sample, _ = seen["unet"]
    control_sample, control_cond = seen["controlnet"]
    assert control_sample.shape[1] == 9
    torch.testing.assert_close(control_sample, unet_sample)
    # controlnet_cond: the inpaint mask, 3 channels in [0, 1], white = region to generate.
    expected = torch.from_numpy(np.asarray(inpaint) / 255.0).float().expand(3, -1, -1)
    torch.testing.assert_close(control_cond[0], expected)
    torch.testing.assert_close(control_cond[1], expected)  # the guidance batch's other half


def test_object_mode_keeps_every_object_pixel_and_the_input_size(pipe):
    photo, object_mask = make_photo(70, 45)  # not a multiple of 8
    result = pipe(PROMPT, image=photo, object_mask=object_mask, num_inference_steps=2, generator=generator()).images
    assert result[0].size == photo.size
    full = np.asarray(object_mask) == 255
    assert full.sum() > 100
    np.testing.assert_array_equal(np.asarray(result[0])[full], np.asarray(photo)[full])
    background = np.asarray(object_mask) == 0
    assert np.abs(np.asarray(result[0])[background].astype(int) - np.asarray(photo)[background]).mean() > 5


def test_rgba_cutout_is_object_mode(pipe):
    photo, object_mask = make_photo()
    cutout = photo.copy()
    cutout.putalpha(object_mask)
    from_alpha = run(pipe, image=cutout)
    from_mask = run(pipe, image=photo, object_mask=object_mask)
    np.testing.assert_array_equal(from_alpha, from_mask)


def test_preserve_object_false_leaves_generated_pixels(pipe):
    photo, object_mask = make_photo()
    kept = run(pipe, image=photo, object_mask=object_mask)
    raw = run(pipe, image=photo, object_mask=object_mask, preserve_object=False)
    full = np.asarray(object_mask) == 255
    np.testing.assert_allclose(kept[0][full], np.asarray(photo)[full] / 255.0, atol=1e-6)
    assert not np.allclose(raw[0][full], kept[0][full], atol=1e-3)


def test_two_prompts_in_one_call_equal_two_calls(pipe):
    photo, object_mask = make_photo(64, 64)
    prompts = ["a photo of a cat", "a dog on the table"]
    batch = run(pipe, prompt=prompts, image=photo, object_mask=object_mask, generator=[generator(1), generator(2)])
    for k, prompt in enumerate(prompts):
        single = run(pipe, prompt=prompt, image=photo, object_mask=object_mask, generator=generator(k + 1))
        np.testing.assert_allclose(batch[k], single[0], atol=1e-5)


def test_list_prompts_and_images_per_prompt_batch_in_prompt_order(pipe):
    photo, object_mask = make_photo(64, 64)
    prompts = ["a photo of a cat", "a dog on the table"]
    out = run(pipe, prompt=prompts, image=photo, object_mask=object_mask, num_images_per_prompt=2)
    assert out.shape == (4, 64, 64, 3)
    gens = [generator(s) for s in range(4)]
    out = run(pipe, prompt=prompts, image=photo, object_mask=object_mask, num_images_per_prompt=2, generator=gens)
    third = run(pipe, prompt=prompts[1], image=photo, object_mask=object_mask, generator=generator(2))
    np.testing.assert_allclose(out[2], third[0], atol=1e-5)


def test_guess_mode_with_guidance_runs_controlnet_on_conditional_half(pipe):
    photo, inpaint = seed_inputs()
    batches = []
    pipe.controlnet.register_forward_pre_hook(lambda m, args: batches.append(args[0].shape[0]))
    guessed = run(pipe, image=photo, mask_image=inpaint, guess_mode=True)
    assert set(batches) == {1}  # guidance batch is 2; the ControlNet saw only the conditional half
    assert not np.allclose(guessed, run(pipe, image=photo, mask_image=inpaint), atol=1e-4)


@pytest.mark.parametrize("scheduler_cls", [DDIMScheduler, EulerDiscreteScheduler, UniPCMultistepScheduler])
def test_any_diffusers_scheduler(pipe, scheduler_cls):
    photo, object_mask = make_photo()
    pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config)
    out = run(pipe, image=photo, object_mask=object_mask)
    assert out.shape == (1, 48, 72, 3) and np.isfinite(out).all()


def test_base_variant_keeps_object_by_latent_blending(base_pipe):
    photo, object_mask = make_photo(64, 64)
    latents = []
    base_pipe.controlnet.register_forward_pre_hook(
        lambda m, args, kwargs: latents.append((args[0].shape[1], kwargs["controlnet_cond"])),
        with_kwargs=True,
    )
    raw = run(base_pipe, image=photo, object_mask=object_mask, preserve_object=False, output_type="latent")
    channels, control = latents[0]
    assert channels == 4
    # Conditioning: the object's pixels on black, in [0, 1], weighted by the soft object mask.
    obj = torch.from_numpy(np.asarray(object_mask) >= 128)
    soft = torch.from_numpy(np.asarray(object_mask) / 255.0).float()
    photo01 = torch.from_numpy(np.asarray(photo) / 255.0).permute(2, 0, 1).float()
    assert control[0][:, soft == 0].abs().max() == 0
    torch.testing.assert_close(control[0], photo01 * soft, atol=0.02, rtol=0)
    # After the last step the latents outside the region to generate are the photo's own latents.
    image = base_pipe.image_processor.preprocess(photo)
    known = base_pipe.vae.encode(image).latent_dist.mean * base_pipe.vae.config.scaling_factor
    keep = torch.nn.functional.interpolate((obj[None, None] >= 1).float(), size=known.shape[-2:]) == 1
    assert (raw - known).abs()[keep.expand_as(raw)].mean() < 0.5 * (raw - known).abs()[~keep.expand_as(raw)].mean()


def test_base_variant_object_pixels_exact(base_pipe):
    photo, object_mask = make_photo(70, 45)
    out = base_pipe(PROMPT, image=photo, object_mask=object_mask, num_inference_steps=2).images[0]
    full = np.asarray(object_mask) == 255
    np.testing.assert_array_equal(np.asarray(out)[full], np.asarray(photo)[full])


def test_conditioning_conventions():
    image = torch.rand(1, 3, 8, 8) * 2 - 1
    inpaint = torch.zeros(1, 1, 8, 8)
    inpaint[..., :4] = 1
    control = make_control_image(image, inpaint, 9)
    assert control.shape == (1, 3, 8, 8) and set(control.unique().tolist()) == {0.0, 1.0}
    torch.testing.assert_close(control[:, 0:1], inpaint)
    control = make_control_image(image, inpaint, 4)
    assert control[..., :4].abs().max() == 0
    torch.testing.assert_close(control[..., 4:], (image[..., 4:] + 1) / 2)
    latents, mask, masked = torch.randn(2, 4, 8, 8), torch.ones(2, 1, 8, 8), torch.randn(2, 4, 8, 8)
    assert unet_input(latents, mask, masked).shape == (2, 9, 8, 8)
    assert unet_input(latents, None, masked) is latents


def test_save_load_round_trip_and_hub_custom_pipeline(pipe, tmp_path):
    photo, object_mask = make_photo()
    before = run(pipe, image=photo, object_mask=object_mask)
    pipe.save_pretrained(tmp_path / "saved")
    again = StableDiffusionControlNetInpaintPipeline.from_pretrained(tmp_path / "saved")
    again.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(run(again, image=photo, object_mask=object_mask), before)
    custom = DiffusionPipeline.from_pretrained(
        tmp_path / "saved", custom_pipeline=pipeline_file.__file__, trust_remote_code=True
    )
    custom.set_progress_bar_config(disable=True)
    assert type(custom).__name__ == "StableDiffusionControlNetInpaintPipeline"
    assert type(custom).__module__ != pipeline_file.__name__  # really loaded from the file
    np.testing.assert_array_equal(run(custom, image=photo, object_mask=object_mask), before)


def test_model_cpu_offload_is_not_tied_to_cuda(pipe):
    photo, object_mask = make_photo()
    before = run(pipe, image=photo, object_mask=object_mask)
    pipe.enable_model_cpu_offload(device="cpu")
    np.testing.assert_allclose(run(pipe, image=photo, object_mask=object_mask), before, atol=1e-6)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "make_inputs, message",
    [
        (
            lambda p, m: dict(image=p, object_mask=m.resize((60, 40))),
            "object mask is 60x40 but image 0 is 72x48",
        ),
        (lambda p, m: dict(image=p, object_mask=Image.new("L", p.size, 0)), "is empty"),
        (lambda p, m: dict(image=p, object_mask=Image.new("L", p.size, 255)), "covers the whole image"),
        (lambda p, m: dict(image=p, object_mask=m, height=50), "multiples of 8"),
        (lambda p, m: dict(image=p, object_mask=m, width=20), "multiples of 8"),
        (
            lambda p, m: dict(image=p, mask_image=m.resize((60, 40))),
            "`mask_image` is (60, 40) but `image` is (72, 48)",
        ),
        (lambda p, m: dict(image=p), "Say where the object is"),
        (lambda p, m: dict(image=p, object_mask=m, mask_image=m), "not both"),
        (lambda p, m: dict(image=p, object_mask=m, strength=1.5), "strength"),
        (lambda p, m: dict(image=p, object_mask=m, output_type="jpg"), "output_type"),
    ],
)
def test_bad_input_is_a_clear_value_error(pipe, make_inputs, message):
    photo, object_mask = make_photo()
    with pytest.raises(ValueError, match=_literal(message)):
        pipe(PROMPT, num_inference_steps=1, **make_inputs(photo, object_mask))


def test_controlnet_unet_channel_mismatch_is_a_value_error(pipe, base_pipe):
    photo, object_mask = make_photo()
    mixed = StableDiffusionControlNetInpaintPipeline(**{**pipe.components, "controlnet": base_pipe.controlnet})
    with pytest.raises(ValueError, match="ControlNet takes 4 input channels but the UNet takes 9"):
        mixed(PROMPT, image=photo, object_mask=object_mask, num_inference_steps=1)


def _literal(text):
    import re

    return re.escape(text)


def test_callback_on_step_end_sees_every_step_and_can_replace_latents(pipe):
    photo, object_mask = make_photo()
    steps = []

    def zero_latents(pipeline, step, timestep, tensors):
        steps.append((step, set(tensors)))
        return {"latents": torch.zeros_like(tensors["latents"])}

    out = run(
        pipe,
        image=photo,
        object_mask=object_mask,
        preserve_object=False,
        output_type="latent",
        callback_on_step_end=zero_latents,
        callback_on_step_end_tensor_inputs=["latents", "mask"],
    )
    assert [s for s, _ in steps] == list(range(len(steps))) and len(steps) >= 3
    assert steps[0][1] == {"latents", "mask"}
    assert out.abs().max() == 0


# ----------------------------------------------------------------------------- lining up inputs with outputs


@pytest.mark.parametrize(
    "prompts, per_prompt, n_images, own",
    [
        (1, 2, 1, [0, 0]),  # one image for all outputs
        (1, 2, 2, [0, 1]),  # one per output of one prompt
        (2, 2, 2, [0, 0, 1, 1]),  # one per prompt
        (2, 2, 4, [0, 1, 2, 3]),  # one per output
        (2, 1, 2, [0, 1]),
        (3, 1, 1, [0, 0, 0]),
    ],
)
def test_every_output_is_made_from_and_keeps_its_own_input(pipe, prompts, per_prompt, n_images, own):
    images = cutouts(n_images)
    prompt_list = ["a photo of a cat", "a dog on the table", "a bottle on the beach"][:prompts]
    seeds = list(range(prompts * per_prompt))
    batch = pipe(
        prompt_list,
        image=images if n_images > 1 else images[0],
        num_images_per_prompt=per_prompt,
        num_inference_steps=2,
        generator=[generator(s) for s in seeds],
    ).images
    own = [images[i] for i in own]
    assert_objects_kept(batch, own)
    for k in (0, len(batch) - 1):  # the first and last outputs equal a call with only their own input
        single = pipe(prompt_list[k // per_prompt], image=own[k], num_inference_steps=2, generator=generator(seeds[k]))
        difference = np.abs(np.asarray(batch[k], dtype=int) - np.asarray(single.images[0], dtype=int))
        assert difference.max() <= 1


def test_object_masks_and_generators_line_up_on_their_own(pipe):
    photo, _ = make_photo(64, 48)
    masks = [np.asarray(c)[..., 3] for c in cutouts(2)]  # one object per prompt in the same photo
    out = pipe(
        ["a photo of a cat", "a dog on the table"],
        image=photo,
        object_mask=masks,
        num_images_per_prompt=2,
        num_inference_steps=2,
        generator=[generator(0), generator(1)],  # one per prompt: that prompt's images draw from it in turn
    ).images
    for k, image in enumerate(out):
        full = masks[k // 2] == 255
        np.testing.assert_array_equal(np.asarray(image)[full], np.asarray(photo)[full])
    assert not np.array_equal(np.asarray(out[0]), np.asarray(out[1]))


@pytest.mark.parametrize(
    "inputs, what, given",
    [
        (lambda c, m: dict(image=c[:3]), "image", 3),
        (lambda c, m: dict(image=c[0].convert("RGB"), object_mask=[m] * 3), "object_mask", 3),
        (lambda c, m: dict(image=c[0], generator=[generator(s) for s in range(3)]), "generator", 3),
        (lambda c, m: dict(image=c[0].convert("RGB"), mask_image=[m] * 3), "mask_image", 3),
        (lambda c, m: dict(image=c[0].convert("RGB"), mask_image=m, control_image=[m] * 3), "control_image", 3),
    ],
)
def test_inputs_that_do_not_line_up_name_the_argument_and_both_counts(pipe, inputs, what, given):
    images = cutouts(3)
    mask = Image.fromarray(255 - np.asarray(images[0])[..., 3])
    with pytest.raises(ValueError, match=_literal(f"Got {given} `{what}` for 4 outputs (2 prompts x 2 per prompt)")):
        pipe(["a cat", "a dog"], num_images_per_prompt=2, num_inference_steps=1, **inputs(images, mask))


def test_working_size_rounds_to_the_nearest_multiple_of_8_as_the_api_does(pipe):
    from photobg.api import BackgroundGenerator
    from photobg.pipeline_controlnet_inpaint import working_size

    shapes = []
    pipe.unet.register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[0].shape[-2:])))
    photo, object_mask = make_photo(70, 45)  # rounded down this would be 64x40
    pipe(PROMPT, image=photo, object_mask=object_mask, num_inference_steps=1)
    assert shapes[0] == (6, 9)  # latents of 72x48
    api = BackgroundGenerator(pipe=pipe, segmenter=None)
    for size in [(70, 45), (1000, 333), (333, 1000), (12, 4), (6000, 4000)]:
        assert api.working_size(size, max(size)) == working_size(size, multiple=8)
    assert working_size((1000, 333), 512) == (512, 168)


# ----------------------------------------------------------------------------- soft control image


def test_control_image_is_the_soft_mask_and_only_the_unets_mask_is_binary(pipe):
    photo, object_mask = make_photo(64, 64)
    soft = np.asarray(object_mask) / 255.0
    assert ((soft > 0.05) & (soft < 0.95)).sum() > 50  # the photo's object has a soft edge
    seen = record_first_inputs(pipe)
    run(pipe, image=photo, object_mask=object_mask, num_inference_steps=1)
    expected = torch.from_numpy(1 - soft).float().expand(3, -1, -1)
    torch.testing.assert_close(seen["controlnet"][1][0], expected)  # soft: 1 - object mask, 3 channels
    unet_mask = seen["unet"][0][:, 4]
    assert set(unet_mask.unique().tolist()) == {0.0, 1.0}  # the UNet's mask is binarised (at 128)

    # The original code's call (seed mode) without a control image: the same, from the soft `mask_image`.
    seen.clear()
    run(pipe, image=photo, mask_image=Image.fromarray(255 - np.asarray(object_mask)), num_inference_steps=1)
    torch.testing.assert_close(seen["controlnet"][1][0], expected, atol=1e-6, rtol=0)
    assert set(seen["unet"][0][:, 4].unique().tolist()) == {0.0, 1.0}


def test_training_builds_the_same_soft_control_image(pipe):
    from photobg.train import Models, encode_batch

    photo, object_mask = make_photo(32, 32)
    object_soft = torch.from_numpy(np.asarray(object_mask) / 255.0).float()[None, None]
    models = Models.from_pipeline(pipe)
    batch = {
        "pixel_values": pipe.image_processor.preprocess(photo),
        "object_mask": object_soft,
        "captions": [""],
        "crop": torch.tensor([[32, 32, 0, 0]]),
    }
    inputs = encode_batch(models, batch, generator(0))
    torch.testing.assert_close(inputs["control_image"], (1 - object_soft).expand(-1, 3, -1, -1))
    assert set(inputs["mask"].unique().tolist()) <= {0.0, 1.0}
