"""What a diffusers user relies on, checked on our pipeline classes: loading a saved folder with plain diffusers,
callback objects, IP-Adapters, and the contracts of diffusers' fast pipeline tests (output types, batches,
num_images_per_prompt, prompt embeddings, callbacks, interruption, schedulers, save/load, a TAESD VAE, the
`__call__` signature, one ControlNet, the defaults we change on purpose).

diffusers' own test files are not in its PyPI sdist (0.42.1 ships only `tests/testing_utils.py`) and may not be
copied here, so the contracts of theirs that apply to our classes are written below; the last section runs them
on both classes (SD2 and SDXL)."""

import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from conftest import generator, make_photo, write_ip_adapter
from diffusers import (
    AutoencoderTiny,
    DDIMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    MultiControlNetModel,
    PNDMScheduler,
)
from diffusers.callbacks import MultiPipelineCallbacks, SDCFGCutoffCallback
from diffusers.utils.dynamic_modules_utils import get_relative_import_files, get_relative_imports
from PIL import Image

import photobg.pipeline_controlnet_inpaint as sd2_file
import photobg.pipeline_controlnet_inpaint_sd_xl as sdxl_file
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


# Plain diffusers in a fresh process, photobg not importable: the saved folder's own files only.
FRESH_LOAD = """
import sys
sys.modules["photobg"] = None
import numpy as np, torch
from diffusers import DiffusionPipeline
from PIL import Image
torch.set_num_threads(1)  # as in conftest: the same sums in the same order
folder, photo, object_mask, out = sys.argv[1:]
for k, how in enumerate(({}, {"custom_pipeline": folder})):
    pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True, **how)
    pipe.set_progress_bar_config(disable=True)
    print(type(pipe).__module__, type(pipe).__name__)
    generator = torch.Generator("cpu").manual_seed(0)
    images = pipe(
        "a photo of a bottle on the beach", image=Image.open(photo), object_mask=Image.open(object_mask),
        num_inference_steps=2, generator=generator, output_type="np",
    ).images
    np.save(f"{out}{k}.npy", images)
"""


def test_pipeline_files_import_every_file_they_need_directly():
    # For a local folder diffusers copies the pipeline file with the files it imports relatively, but not the
    # files those import in turn: each pipeline file names every room of the method itself.
    for module in (sd2_file, sdxl_file):
        needed = {Path(file).stem for file in get_relative_import_files(module.__file__)}
        assert needed == set(get_relative_imports(module.__file__)) >= {"method", "conventions", "matting"}


@pytest.mark.parametrize("backbone", ["sd2", "sdxl"])
def test_a_saved_folder_loads_in_plain_diffusers_in_a_fresh_process(loaded, backbone, tmp_path):
    pipe, saved = rebuilt(loaded[backbone]), tmp_path / "saved"
    before = call(pipe, output_type="np").images
    pipe.save_pretrained(saved)
    class_file = inspect.getfile(type(pipe))
    pipeline_file = Path(class_file).name
    code = {path.name for path in saved.glob("*.py")}
    assert code == {pipeline_file} | {Path(file).name for file in get_relative_import_files(class_file)}
    photo, object_mask = make_photo(64, 48)
    photo.save(tmp_path / "photo.png")
    object_mask.save(tmp_path / "mask.png")
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    args = [saved, tmp_path / "photo.png", tmp_path / "mask.png", tmp_path / "out"]
    result = subprocess.run(
        [sys.executable, "-c", FRESH_LOAD, *map(str, args)], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr
    module = "diffusers_modules.local." + Path(pipeline_file).stem
    assert result.stdout.split("\n")[:2] == [f"{module} {type(pipe).__name__}"] * 2
    for k in range(2):
        np.testing.assert_array_equal(np.load(tmp_path / f"out{k}.npy"), before)


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
    return write_ip_adapter(tmp_path_factory.mktemp("ip-adapter"), load_pipeline(inpaint_model, device="cpu").unet)


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


# ----------------------------------------------------------------------------- both classes (SD2 and SDXL)

PYTHON_API_PAGE = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"
# The defaults of `__call__` that differ from diffusers' namesake class on purpose: (ours, diffusers'), as
# docs/python-api.md lists them. Any other difference fails `test_only_the_listed_defaults_differ_from_diffusers`.
CHANGED_DEFAULTS = {
    "StableDiffusionControlNetInpaintPipeline": {"controlnet_conditioning_scale": (1.0, 0.5)},
    "StableDiffusionXLControlNetInpaintPipeline": {"strength": (1.0, 0.9999), "guidance_scale": (7.5, 5.0)},
}
# diffusers' `__call__` arguments our classes do not take, as docs/python-api.md lists them.
NOT_TAKEN = {
    "StableDiffusionControlNetInpaintPipeline": {"padding_mask_crop"},
    "StableDiffusionXLControlNetInpaintPipeline": {
        "padding_mask_crop",
        "denoising_start",
        "denoising_end",
        "guidance_rescale",
    },
}
# What `encode_prompt` returns, by the names `__call__` takes them (SD2: the first two).
ENCODED_PROMPT = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")


@pytest.fixture(scope="module")
def loaded(inpaint_model, sdxl_models):
    return {
        "sd2": load_pipeline(inpaint_model, device="cpu"),
        "sdxl": load_pipeline(sdxl_models["inpaint"], device="cpu"),
    }


def rebuilt(pipe, **components):
    """A new pipeline object of `pipe`'s class over its components, some replaced."""
    pipe = type(pipe)(**{**pipe.components, **components})
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(params=["sd2", "sdxl"])
def each(request, loaded):
    """Each class on its tiny inpainting model: a new pipeline object (own scheduler and settings), shared weights."""
    return rebuilt(loaded[request.param])


def call_parameters(pipe):
    return inspect.signature(type(pipe).__call__).parameters


def tiny_taesd(latent_channels):
    """A random `AutoencoderTiny` (TAESD's architecture: 3 downsamplings, scaling factor 1) with small channels."""
    torch.manual_seed(0)
    four = (1, 1, 1, 1)
    return AutoencoderTiny(
        encoder_block_out_channels=(8,) * 4,
        decoder_block_out_channels=(8,) * 4,
        num_encoder_blocks=four,
        num_decoder_blocks=four,
        latent_channels=latent_channels,
    )


def test_a_tiny_autoencoder_taesd_encodes_and_decodes(each):
    photo, object_mask = make_photo(64, 48)
    with_kl = np.asarray(call(each).images[0])
    taesd = rebuilt(each, vae=tiny_taesd(each.vae.config.latent_channels))
    assert taesd.vae_scale_factor == each.vae_scale_factor == 8
    decoded = []
    taesd.vae.decoder.register_forward_hook(lambda module, args, out: decoded.append(out.shape))
    (image,) = call(taesd).images
    assert image.size == (64, 48) and decoded == [(1, 3, 48, 64)]
    full = np.asarray(object_mask) == 255
    np.testing.assert_array_equal(np.asarray(image)[full], np.asarray(photo)[full])  # the object's pixels kept
    assert np.abs(np.asarray(image, float)[~full] - with_kl[~full]).mean() > 1  # TAESD drew the background
    latents = call(taesd, output_type="latent").images
    assert latents.shape == (1, 4, 6, 8) and torch.isfinite(latents).all()


def test_the_signature_lists_every_argument_the_class_takes(each):
    parameters = call_parameters(each)
    assert all(p.kind is not p.VAR_KEYWORD for p in parameters.values())
    own = [n for n, p in inspect.signature(each.encode_conditioning).parameters.items() if p.kind is p.KEYWORD_ONLY]
    assert set(own) <= set(parameters)
    if "XL" in type(each).__name__:
        assert {"prompt_2", "negative_prompt_2", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"} <= set(own)
        assert {"original_size", "crops_coords_top_left", "target_size", "aesthetic_score"} <= set(own)
        for name in own:  # by keyword: positional calls mean the same on both classes
            assert parameters[name].kind is inspect.Parameter.KEYWORD_ONLY
            assert parameters[name].default == inspect.signature(each.encode_conditioning).parameters[name].default
    photo, object_mask = make_photo(64, 48)
    with pytest.raises(TypeError, match="takes no argument 'prompt_3'"):
        each(PROMPT, image=photo, object_mask=object_mask, prompt_3="a cat")


def test_encode_prompt_in_isolation_gives_the_prompts_image(each):
    # As diffusers' test does: a pipeline of the text encoders alone encodes the prompt; its outputs, by the names
    # the call's signature takes, give the prompt's image.
    text_only = {name: None for name in each.components if not name.startswith(("text_encoder", "tokenizer"))}
    encoder = rebuilt(each, **text_only)
    encoded = encoder.encode_prompt(
        prompt=PROMPT, device=each.device, num_images_per_prompt=1, do_classifier_free_guidance=True
    )
    embeds = {name: tensor for name, tensor in zip(ENCODED_PROMPT, encoded) if name in call_parameters(each)}
    assert len(embeds) == len(encoded)
    by_prompt = call(each, output_type="np").images
    np.testing.assert_allclose(call(each, prompt=None, **embeds, output_type="np").images, by_prompt, atol=1e-6)


@pytest.mark.parametrize("several", ["list", "MultiControlNetModel"])
def test_several_controlnets_are_refused_when_the_pipeline_is_built(each, several):
    controlnets = [each.controlnet, each.controlnet]
    given = controlnets if several == "list" else MultiControlNetModel(controlnets)
    message = (
        f"{type(each).__name__} runs exactly one ControlNetModel, not MultiControlNetModel: the method gives its "
        "ControlNet the UNet's own input, so it takes one ControlNet trained on this base model."
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        rebuilt(each, controlnet=given)


def _defaults(cls):
    return {
        name: list(p.default) if isinstance(p.default, tuple) else p.default  # ("latents",) == ["latents"]
        for name, p in inspect.signature(cls.__call__).parameters.items()
        if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and name != "self"
    }


def test_only_the_listed_defaults_differ_from_diffusers(each):
    name = type(each).__name__
    ours, theirs = _defaults(type(each)), _defaults(getattr(diffusers, name))
    differing = {arg: (ours[arg], theirs[arg]) for arg in ours.keys() & theirs.keys() if ours[arg] != theirs[arg]}
    assert differing == CHANGED_DEFAULTS[name]
    assert theirs.keys() - ours.keys() == NOT_TAKEN[name]
    listed = PYTHON_API_PAGE.read_text().split("## Where the pipeline classes differ from diffusers' namesakes")[1]
    listed = listed.split("\n\n")[2]  # the list after the heading and its opening line
    for arg, (our_default, their_default) in differing.items():
        assert f"`{arg}` {our_default} (diffusers: {their_default})" in listed
    photo, object_mask = make_photo(64, 48)
    for arg in NOT_TAKEN[name]:
        assert f"`{arg}`" in listed
        with pytest.raises(TypeError, match=f"{name} takes no argument '{arg}'"):
            each(PROMPT, image=photo, object_mask=object_mask, **{arg: 0.5})


def test_same_seed_same_image_and_a_batch_equals_its_single_calls(each):
    first = call(each, output_type="np").images
    np.testing.assert_array_equal(call(each, output_type="np").images, first)
    assert np.abs(call(each, generator=generator(1), output_type="np").images - first).max() > 1e-3
    prompts = [PROMPT, "a cat on a sofa"]
    batch = call(each, prompt=prompts, generator=[generator(0), generator(1)], output_type="np").images
    for k, prompt in enumerate(prompts):
        single = call(each, prompt=prompt, generator=generator(k), output_type="np").images
        np.testing.assert_allclose(batch[k], single[0], atol=1e-5)


def test_attention_slicing_gives_the_same_image(each):
    before = call(each, output_type="np").images
    each.enable_attention_slicing(slice_size=1)
    try:
        np.testing.assert_allclose(call(each, output_type="np").images, before, atol=1e-5)
    finally:
        each.disable_attention_slicing()  # the models are shared with the other tests
