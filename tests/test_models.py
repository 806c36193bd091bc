"""Model loading from Hub-layout folders, single-file ControlNet conversion, and the test-model factory."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import generator, make_photo
from diffusers import ControlNetModel, UNet2DConditionModel

from photobg.configs import MODEL_CONFIGS, get_config
from photobg.models import (
    build_components,
    convert_controlnet,
    load_pipeline,
    read_controlnet_state_dict,
    resolve_dtype,
)
from photobg.segment import Sam, SegmenterUnavailable

REPO = Path(__file__).resolve().parents[1]


def generate(pipe):
    photo, object_mask = make_photo()
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        "a photo", image=photo, object_mask=object_mask, num_inference_steps=2, generator=generator(), output_type="np"
    ).images


def test_test_model_has_the_hub_layout(inpaint_model, inpaint_base_model):
    index = json.loads((inpaint_model / "model_index.json").read_text())
    # Saved by our pipeline: plain diffusers is pointed at this pipeline file, copied into the folder.
    assert index["_class_name"] == ["pipeline_controlnet_inpaint", "StableDiffusionControlNetInpaintPipeline"]
    assert (inpaint_model / "pipeline_controlnet_inpaint.py").exists()
    assert index["controlnet"] == ["diffusers", "ControlNetModel"]
    for component in ("unet", "vae", "text_encoder", "controlnet"):
        assert (inpaint_model / component / "config.json").exists()
    assert {"vocab.json", "merges.txt"} <= set(os.listdir(inpaint_model / "tokenizer"))
    assert (inpaint_model / "scheduler" / "scheduler_config.json").exists()
    base_index = json.loads((inpaint_base_model / "model_index.json").read_text())
    assert base_index["_class_name"] == "StableDiffusionInpaintPipeline" and "controlnet" not in base_index


def test_tiny_models_have_the_real_architecture_shape():
    parts = build_components("tiny-inpainting")
    assert parts["unet"].config.in_channels == 9 and parts["controlnet"].config.in_channels == 9
    vae_factor = 2 ** (len(parts["vae"].config.block_out_channels) - 1)
    assert vae_factor == 8
    # The zero-initialised ControlNet outputs were given weights, so the control path acts.
    assert all(block.weight.abs().sum() > 0 for block in parts["controlnet"].controlnet_down_blocks)
    assert build_components("tiny-base", with_controlnet=False)["unet"].config.in_channels == 4
    assert "controlnet" not in build_components("tiny-base", with_controlnet=False)


def test_real_sd2_configs_build_full_size_models_offline():
    config = get_config("sd2-inpainting")
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config["unet"])
    assert unet.config.in_channels == 9 and unet.config.cross_attention_dim == 1024
    assert 850e6 < sum(p.numel() for p in unet.parameters()) < 880e6  # SD2's UNet: ~866M parameters
    assert MODEL_CONFIGS["sd2-base"]["unet"]["in_channels"] == 4


def test_complete_model_and_base_plus_controlnet_give_the_same_images(inpaint_model, inpaint_base_model):
    complete = load_pipeline(inpaint_model, device="cpu")
    assembled = load_pipeline(inpaint_base_model, controlnet=inpaint_model / "controlnet", device="cpu")
    np.testing.assert_array_equal(generate(complete), generate(assembled))
    assert complete.device.type == "cpu" and complete.unet.dtype == torch.float32


def test_base_variant_loads_and_generates(base_variant_model):
    pipe = load_pipeline(base_variant_model, device="cpu", scheduler="DDIMScheduler")
    assert pipe.unet.config.in_channels == 4 and type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert generate(pipe).shape == (1, 48, 72, 3)


def test_dtype_choice(inpaint_model):
    pipe = load_pipeline(inpaint_model, device="cpu", dtype="bf16")
    assert pipe.unet.dtype == pipe.controlnet.dtype == pipe.vae.dtype == torch.bfloat16
    assert resolve_dtype(None, "cpu") == torch.float32 and resolve_dtype(None, "cuda") == torch.float16
    with pytest.raises(ValueError, match="Unknown dtype 'fp8'"):
        resolve_dtype("fp8")


@pytest.mark.parametrize("prefix", ["", "module.", "controlnet.", "module.controlnet.", "_orig_mod."])
def test_state_dict_key_prefixes_are_stripped(tmp_path, prefix):
    torch.save(
        {prefix + "conv_in.weight": torch.ones(1), prefix + "controlnet_cond_embedding.conv_in.weight": torch.ones(1)},
        tmp_path / "c.pth",
    )
    assert sorted(read_controlnet_state_dict(tmp_path / "c.pth")) == [
        "controlnet_cond_embedding.conv_in.weight",
        "conv_in.weight",
    ]


def test_convert_pth_controlnet(inpaint_model, inpaint_base_model, tmp_path):
    original = ControlNetModel.from_pretrained(inpaint_model / "controlnet")
    torch.save({"module." + k: v for k, v in original.state_dict().items()}, tmp_path / "controlnet.pth")
    out = convert_controlnet(tmp_path / "controlnet.pth", tmp_path / "converted", base="tiny-inpainting")
    assert sorted(os.listdir(out)) == ["config.json", "diffusion_pytorch_model.safetensors"]
    converted = ControlNetModel.from_pretrained(out)
    assert converted.config.in_channels == 9
    for key, value in original.state_dict().items():
        torch.testing.assert_close(converted.state_dict()[key], value, rtol=0, atol=0)
    # The converted folder, and the .pth file directly, load as the ControlNet of the base model.
    reference = generate(load_pipeline(inpaint_model, device="cpu"))
    np.testing.assert_array_equal(generate(load_pipeline(inpaint_base_model, controlnet=out, device="cpu")), reference)
    from_file = load_pipeline(inpaint_base_model, controlnet=tmp_path / "controlnet.pth", device="cpu")
    np.testing.assert_array_equal(generate(from_file), reference)


def test_convert_base_variant_reads_input_channels_from_weights(base_variant_model, tmp_path):
    original = ControlNetModel.from_pretrained(base_variant_model / "controlnet")
    torch.save({"state_dict": original.state_dict()}, tmp_path / "base.pth")
    out = convert_controlnet(tmp_path / "base.pth", tmp_path / "converted", base="tiny-inpainting")
    assert ControlNetModel.from_pretrained(out).config.in_channels == 4


@pytest.mark.parametrize(
    "content, message",
    [
        ([1, 2, 3], "does not hold a state dict"),
        ({"conv_in.weight": torch.zeros(1), "step": 3}, "are not tensors"),
        ({"encoder.weight": torch.zeros(1)}, "is not a diffusers ControlNet state dict"),
    ],
)
def test_convert_refuses_other_files(tmp_path, content, message):
    torch.save(content, tmp_path / "x.pth")
    with pytest.raises(ValueError, match=message):
        convert_controlnet(tmp_path / "x.pth", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_convert_refuses_pickled_objects_and_architecture_mismatch(inpaint_model, tmp_path):
    torch.save({"conv_in.weight": torch.zeros(1), "opt": torch.optim.SGD}, tmp_path / "pickle.pth")
    with pytest.raises(ValueError, match="weights-only"):
        read_controlnet_state_dict(tmp_path / "pickle.pth")
    state = ControlNetModel.from_pretrained(inpaint_model / "controlnet").state_dict()
    torch.save(state, tmp_path / "tiny.pth")
    with pytest.raises(ValueError, match="does not match the ControlNet architecture"):
        convert_controlnet(tmp_path / "tiny.pth", tmp_path / "out", base="sd2-inpainting")
    assert not (tmp_path / "out").exists()


def test_loader_errors_name_the_path(inpaint_model, inpaint_base_model, base_variant_model, tmp_path):
    with pytest.raises(FileNotFoundError, match="Model folder '/no/such/model' does not exist"):
        load_pipeline("/no/such/model")
    with pytest.raises(FileNotFoundError, match="ControlNet folder './missing-controlnet' does not exist"):
        load_pipeline(inpaint_base_model, controlnet="./missing-controlnet")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text((inpaint_model / "model_index.json").read_text())
    with pytest.raises(FileNotFoundError, match=f"Model folder '{broken}' has no 'unet/' component folder"):
        load_pipeline(broken)
    with pytest.raises(ValueError, match="has no 'controlnet/' component"):
        load_pipeline(inpaint_base_model)
    with pytest.raises(ValueError, match=r"ControlNet '.*tiny-base/controlnet' takes 4 input channels but the UNet"):
        load_pipeline(inpaint_base_model, controlnet=base_variant_model / "controlnet")


def test_hub_ids_fail_clearly_offline():
    with pytest.raises(OSError, match="no local folder of that name"):
        load_pipeline("someone/not-cached-model")


def test_unreachable_hub_fails_at_once(tmp_path, monkeypatch):
    # huggingface_hub retries a file that is not cached five times with backoff (~25 s); one try tells the same.
    from huggingface_hub import constants

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]  # nothing listens there once the socket is closed
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed_port}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    start = time.monotonic()
    with pytest.raises(OSError) as error:
        load_pipeline("someone/not-cached-model")
    assert time.monotonic() - start < 3
    message = str(error.value)
    assert "'someone/not-cached-model': there is no local folder of that name" in message
    assert "(ConnectError: " in message and "HF_HUB_OFFLINE=1" in message
    start = time.monotonic()
    with pytest.raises(SegmenterUnavailable, match="could not load 'someone/not-cached-sam' \\(ConnectError"):
        Sam("someone/not-cached-sam")
    assert time.monotonic() - start < 3


def test_seed_import_path_from_repo_root():
    code = "from pipeline_controlnet_inpaint import StableDiffusionControlNetInpaintPipeline as P; print(P.__module__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "photobg.pipeline_controlnet_inpaint"
