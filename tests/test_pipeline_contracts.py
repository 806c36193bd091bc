"""What a diffusers user relies on, checked on our pipeline class: loading a saved folder with plain diffusers,
callback objects, IP-Adapters, and the contracts of diffusers' fast pipeline tests (output types, batches,
num_images_per_prompt, prompt embeddings, callbacks, interruption, schedulers, save/load)."""

import json
import os

import numpy as np
import pytest
import torch
from conftest import generator, make_photo
from diffusers import (
    DDIMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    PNDMScheduler,
)
from diffusers.callbacks import MultiPipelineCallbacks, SDCFGCutoffCallback
from PIL import Image

from photobg.models import load_pipeline
from photobg.pipeline_controlnet_inpaint import StableDiffusionControlNetInpaintPipeline

PROMPT = "a photo of a bottle on the beach"


def call(pipe, **kwargs):
    photo, object_mask = make_photo(64, 48)
    kwargs = {"image": photo, "object_mask": object_mask, "num_inference_steps": 2, "generator": generator(0), **kwargs}
    return pipe(kwargs.pop("prompt", PROMPT), **kwargs)


# ----------------------------------------------------------------------------- a saved folder in plain diffusers


def test_plain_diffusers_loads_a_saved_folder_as_this_pipeline(pipe, tmp_path):
    before = call(pipe, output_type="np").images
    pipe.save_pretrained(tmp_path / "saved")
    # Without trust_remote_code diffusers says what to pass, instead of building its own namesake class that
    # fails later with "expected input ... to have 9 channels, but got 4".
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        DiffusionPipeline.from_pretrained(tmp_path / "saved")
    plain = DiffusionPipeline.from_pretrained(tmp_path / "saved", trust_remote_code=True)
    plain.set_progress_bar_config(disable=True)
    assert type(plain).__name__ == "StableDiffusionControlNetInpaintPipeline"
    assert type(plain) is not StableDiffusionControlNetInpaintPipeline  # built from the folder's own file
    np.testing.assert_array_equal(call(plain, output_type="np").images, before)
    ours = StableDiffusionControlNetInpaintPipeline.from_pretrained(tmp_path / "saved")  # no remote code needed
    assert type(ours) is StableDiffusionControlNetInpaintPipeline


def test_folders_saved_before_and_the_published_layout_still_load(pipe, tmp_path):
    before = call(pipe, output_type="np").images
    pipe.save_pretrained(tmp_path / "old")
    index_path = tmp_path / "old" / "model_index.json"
    index = json.loads(index_path.read_text())
    index["_class_name"] = "StableDiffusionControlNetInpaintPipeline"  # the published model's model_index.json
    index_path.write_text(json.dumps(index))
    os.remove(tmp_path / "old" / "pipeline_controlnet_inpaint.py")
    loaded = load_pipeline(tmp_path / "old", device="cpu", scheduler="model")
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded) is StableDiffusionControlNetInpaintPipeline
    np.testing.assert_array_equal(call(loaded, output_type="np").images, before)


# ----------------------------------------------------------------------------- callbacks


def test_diffusers_cfg_cutoff_callback_switches_guidance_off_halfway(pipe):
    batches = []
    pipe.unet.register_forward_pre_hook(lambda m, args: batches.append(args[0].shape[0]))
    cutoff = SDCFGCutoffCallback(cutoff_step_ratio=0.5)
    out = call(pipe, num_inference_steps=4, callback_on_step_end=cutoff, output_type="np").images
    assert batches == [2, 2, 2, 1]  # cut after step 2 (index 2): the last step runs the conditional half only
    assert pipe.guidance_scale == 0.0
    pipe._guidance_scale = 7.5
    batches.clear()
    guided = call(pipe, num_inference_steps=4, output_type="np").images
    assert batches == [2, 2, 2, 2] and np.abs(out - guided).max() > 1e-4
    both = MultiPipelineCallbacks([SDCFGCutoffCallback(cutoff_step_ratio=None, cutoff_step_index=1)])
    assert np.isfinite(call(pipe, num_inference_steps=3, callback_on_step_end=both, output_type="np").images).all()


def test_every_callback_tensor_is_offered_and_interrupt_stops_the_loop(pipe):
    seen = {}

    def stop_after_first(pipeline, step, timestep, tensors):
        seen[step] = {name: tensor.shape for name, tensor in tensors.items()}
        pipeline._interrupt = True
        return tensors

    call(pipe, callback_on_step_end=stop_after_first, callback_on_step_end_tensor_inputs=pipe._callback_tensor_inputs)
    assert list(seen) == [0] and set(seen[0]) == set(pipe._callback_tensor_inputs)


# ----------------------------------------------------------------------------- IP-Adapter


@pytest.fixture(scope="module")
def ip_adapter(tmp_path_factory, inpaint_model):
    """A tiny random IP-Adapter in the layout of h94/IP-Adapter: weights with `image_proj.` / `ip_adapter.` keys
    and an `image_encoder/` folder (CLIP vision model with projection)."""
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    folder = tmp_path_factory.mktemp("ip-adapter")
    torch.manual_seed(0)
    encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=32,
            projection_dim=16,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            image_size=32,
            patch_size=8,
        )
    )
    encoder.save_pretrained(folder / "image_encoder")
    unet = load_pipeline(inpaint_model, device="cpu").unet
    cross = unet.config.cross_attention_dim
    weights = {
        "image_proj.proj.weight": torch.randn(4 * cross, 16) * 0.5,
        "image_proj.proj.bias": torch.zeros(4 * cross),
        "image_proj.norm.weight": torch.ones(cross),
        "image_proj.norm.bias": torch.zeros(cross),
    }
    cross_attentions = [name for name in unet.attn_processors if not name.endswith("attn1.processor")]
    for k, name in enumerate(cross_attentions):  # diffusers numbers them 1, 3, 5, ...
        shape = unet.get_submodule(name.removesuffix(".processor")).to_k.weight.shape  # (hidden, cross)
        for proj in ("to_k_ip", "to_v_ip"):
            weights[f"ip_adapter.{2 * k + 1}.{proj}.weight"] = torch.randn(shape) * 0.5
    save_file(weights, folder / "ip-adapter.safetensors")
    return folder


def test_ip_adapter_image_conditions_the_unet(pipe, ip_adapter):
    with pytest.raises(ValueError, match="load one first with `pipe.load_ip_adapter"):
        call(pipe, ip_adapter_image=Image.new("RGB", (32, 32)))
    plain = call(pipe, output_type="np").images
    pipe.load_ip_adapter(str(ip_adapter), subfolder="", weight_name="ip-adapter.safetensors")
    rng = np.random.default_rng(0)
    references = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(2)]
    first = call(pipe, ip_adapter_image=references[0], output_type="np").images
    second = call(pipe, ip_adapter_image=references[1], output_type="np").images
    assert np.abs(first - plain).max() > 1e-3 and np.abs(first - second).max() > 1e-3
    embeds = pipe.prepare_ip_adapter_image_embeds(references[0], None, pipe.device, 1, True)
    from_embeds = call(pipe, ip_adapter_image_embeds=embeds, output_type="np").images
    np.testing.assert_allclose(from_embeds, first, atol=1e-6)
    two = call(pipe, prompt=[PROMPT, "a cat"], num_images_per_prompt=2, ip_adapter_image=references[0])
    assert len(two.images) == 4
    cut = call(pipe, num_inference_steps=3, ip_adapter_image=references[0], callback_on_step_end=SDCFGCutoffCallback())
    assert len(cut.images) == 1
    with pytest.raises(ValueError, match="not both"):
        call(pipe, ip_adapter_image=references[0], ip_adapter_image_embeds=embeds)


# ----------------------------------------------------------------------------- diffusers' fast-test contracts


def test_output_types_and_return_dict(pipe):
    np_images = call(pipe, output_type="np").images
    assert np_images.shape == (1, 48, 64, 3) and np_images.dtype == np.float32
    assert 0 <= np_images.min() and np_images.max() <= 1
    pt_images = call(pipe, output_type="pt").images
    assert pt_images.shape == (1, 3, 48, 64)
    np.testing.assert_allclose(pt_images.permute(0, 2, 3, 1).numpy(), np_images, atol=1e-6)
    (pil,) = call(pipe).images
    assert pil.size == (64, 48) and pil.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(pil), np.round(np_images[0] * 255).astype(np.uint8))
    latents = call(pipe, output_type="latent").images
    assert latents.shape == (1, 4, 6, 8)
    images, nsfw = call(pipe, output_type="np", return_dict=False)
    np.testing.assert_array_equal(images, np_images)


@pytest.mark.parametrize("output_type", ["pil", "np", "pt", "latent"])
def test_num_images_per_prompt(pipe, output_type):
    for prompts, per_prompt in [(1, 1), (1, 2), (2, 1), (2, 3)]:
        images = call(pipe, prompt=[PROMPT] * prompts, num_images_per_prompt=per_prompt, output_type=output_type).images
        assert len(images) == prompts * per_prompt


def test_prompt_embeds_give_the_prompts_images(pipe):
    embeds, negative = pipe.encode_prompt(PROMPT, pipe.device, 1, True, "")
    by_prompt = call(pipe, negative_prompt="", output_type="np").images
    by_embeds = call(pipe, prompt=None, prompt_embeds=embeds, negative_prompt_embeds=negative, output_type="np").images
    np.testing.assert_allclose(by_embeds, by_prompt, atol=1e-6)


def test_attention_slicing_and_dict_tuple_outputs_agree(pipe):
    before = call(pipe, output_type="np").images
    pipe.enable_attention_slicing(slice_size=1)
    np.testing.assert_allclose(call(pipe, output_type="np").images, before, atol=1e-5)


@pytest.mark.parametrize(
    "scheduler_cls", [PNDMScheduler, DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler]
)
def test_schedulers_give_finite_images_and_same_seed_same_image(pipe, scheduler_cls):
    pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config)
    first = call(pipe, output_type="np").images
    assert np.isfinite(first).all()
    np.testing.assert_array_equal(call(pipe, output_type="np").images, first)
