"""LoRA, a replacement VAE and an IP-Adapter reference image, through `load_pipeline`, `BackgroundGenerator`,
`photobg generate` and the app, on tiny random weights built here: a LoRA made with peft on the tiny UNets'
attention layers and saved with the pipeline's `save_lora_weights`, a VAE folder with other random weights, and
the tiny IP-Adapter of conftest."""

import json
import shlex
import threading
import warnings

import numpy as np
import pytest
import torch
from conftest import generator, make_photo, output_image, write_ip_adapter
from PIL import Image

from photobg.api import BackgroundGenerator
from photobg.cli import main
from photobg.configs import get_config
from photobg.manifest import read_record
from photobg.models import Lora, load_ip_adapter, load_loras, load_pipeline, parse_lora, set_lora_scales

ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]


def write_lora(folder, pipe, config_name=None, target_modules=ATTENTION, seed=0):
    """A random LoRA (rank 4, alpha 8) on `target_modules` of the pipeline's UNet, or of a fresh UNet of config
    `config_name` (e.g. a 4-channel one), saved with the pipeline class's `save_lora_weights` with its adapter
    metadata. Returns the weights file."""
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(get_config(config_name)["unet"]) if config_name else pipe.unet
    unet.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=target_modules, init_lora_weights=False))
    layers, metadata = get_peft_model_state_dict(unet), unet.peft_config["default"].to_dict()
    unet.delete_adapters("default")
    type(pipe).save_lora_weights(folder, unet_lora_layers=layers, unet_lora_adapter_metadata=metadata)
    return folder / "pytorch_lora_weights.safetensors"


def run(pipe, seed=0, **kwargs):
    photo, object_mask = make_photo(64, 48)
    return pipe(
        "a cat",
        image=photo,
        object_mask=object_mask,
        num_inference_steps=2,
        generator=generator(seed),
        output_type="np",
        preserve_object=False,
        **kwargs,
    ).images[0]


@pytest.fixture(scope="module")
def xl_folder(sdxl_models):
    return sdxl_models["inpaint"]


@pytest.fixture()
def xl(xl_folder):
    pipe = load_pipeline(xl_folder, device="cpu")  # its own: LoRAs and IP-Adapters change the model
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ----------------------------------------------------------------------------- parsing PATH[:SCALE]


def a_lora_file(path):
    """A file that reads as a LoRA (a tensor under a LoRA key), as `parse_lora` checks: `.safetensors`, else torch."""
    from safetensors.torch import save_file

    state = {"unet.conv_in.lora_A.weight": torch.zeros(4, 9, 3, 3)}
    if path.suffix == ".safetensors":
        save_file(state, path)
    else:
        torch.save(state, path)
    return path


def test_lora_spec_path_and_scale(tmp_path):
    weights = a_lora_file(tmp_path / "style.safetensors")
    odd = a_lora_file(tmp_path / "a:b.safetensors")  # a path that contains ':'
    assert parse_lora(str(weights)) == Lora(str(weights), 1.0)
    assert parse_lora(f"{weights}:0.5") == Lora(str(weights), 0.5)
    assert parse_lora(f"{weights}:-1") == Lora(str(weights), -1.0)
    assert parse_lora(str(odd)) == Lora(str(odd), 1.0)
    assert parse_lora(f"{odd}:0.25") == Lora(str(odd), 0.25)
    named_like_a_scale = a_lora_file(tmp_path / "v:2")  # a file that exists is a path, whole
    assert parse_lora(str(named_like_a_scale)) == Lora(str(named_like_a_scale), 1.0)
    assert parse_lora(f"{named_like_a_scale}:0.5") == Lora(str(named_like_a_scale), 0.5)
    folder = tmp_path / "lora"
    folder.mkdir()
    a_lora_file(folder / "pytorch_lora_weights.safetensors")
    assert parse_lora(f"{folder}:2") == Lora(str(folder / "pytorch_lora_weights.safetensors"), 2.0)
    with pytest.raises(FileNotFoundError, match="LoRA '.*missing.safetensors' does not exist"):
        parse_lora(f"{tmp_path}/missing.safetensors:0.5")
    with pytest.raises(ValueError, match="the scale 'strong' after ':' is not a number"):
        parse_lora(f"{weights}:strong")
    with pytest.raises(ValueError, match="finite"):
        parse_lora(f"{weights}:nan")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no weights file: name the file"):
        parse_lora(str(tmp_path / "empty"))


def test_missing_lora_fails_in_one_line_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import photobg.generation.run as generation_run

    monkeypatch.setattr(generation_run, "load_generator", lambda *a, **k: pytest.fail("the model was loaded"))
    photo = tmp_path / "cup.png"
    make_photo()[0].save(photo)
    for flags, message in (
        (["--lora", "nowhere/style.safetensors:0.8"], "--lora: LoRA 'nowhere/style.safetensors' does not exist."),
        (["--ip-adapter", "nowhere", "--reference-image", str(photo)], "--ip-adapter: IP-Adapter 'nowhere' does"),
        (["--reference-image", str(photo)], "--reference-image needs --ip-adapter"),
    ):
        with pytest.raises(SystemExit) as exit_:
            main(["generate", str(photo), "--prompt", "a cup", "--output-dir", str(tmp_path / "out"), *flags])
        assert str(exit_.value.code).startswith(message) and "\n" not in str(exit_.value.code)


# ----------------------------------------------------------------------------- LoRA


@pytest.mark.parametrize("model", ["sd2", "sdxl"])
def test_lora_changes_the_output_and_scale_zero_is_the_base_model(model, inpaint_model, xl_folder, tmp_path):
    folder = {"sd2": inpaint_model, "sdxl": xl_folder}[model]
    pipe = load_pipeline(folder, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    base = run(pipe)
    lora = write_lora(tmp_path / "lora", pipe)
    outputs = {}
    for scale in (1.0, 0.0):
        pipe = load_pipeline(folder, device="cpu")
        pipe.set_progress_bar_config(disable=True)
        assert load_loras(pipe, [f"{lora}:{scale:g}"]) == ["lora_0"]
        assert not pipe.get_list_adapters()  # fused, and the LoRA layers removed
        outputs[scale] = run(pipe)
    np.testing.assert_array_equal(outputs[0.0], base)
    assert np.abs(outputs[1.0] - base).max() > 1e-3
    # Unfused adapters give the same images (up to rounding), and their scale can change afterwards.
    pipe = load_pipeline(folder, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    names = load_loras(pipe, [Lora(str(lora), 0.5)], fuse=False)
    half = run(pipe)
    assert np.abs(half - base).max() > 1e-3 and np.abs(half - outputs[1.0]).max() > 1e-3
    set_lora_scales(pipe, names, [1.0])
    np.testing.assert_allclose(run(pipe), outputs[1.0], atol=1e-4)
    set_lora_scales(pipe, names, [0.0])
    np.testing.assert_array_equal(run(pipe), base)


def test_a_4_channel_conv_in_is_left_out_on_the_9_channel_unet(xl, xl_folder, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with_conv_in = write_lora(tmp_path / "a", xl, "tiny-sdxl-base", [*ATTENTION, "conv_in"])
    state = load_file(with_conv_in)
    assert state["unet.conv_in.lora_A.weight"].shape[1] == 4  # trained for a 4-channel UNet
    with safe_open(with_conv_in, "pt") as f:
        metadata = f.metadata()
    adapter = json.loads(metadata["lora_adapter_metadata"])
    assert sorted(adapter["unet.target_modules"]) == sorted([*ATTENTION, "conv_in"]) and adapter["unet.lora_alpha"] == 8
    # The same LoRA without its conv_in layers, written by hand.
    adapter["unet.target_modules"] = ATTENTION
    without = tmp_path / "b.safetensors"
    attention_only = {k: v for k, v in state.items() if "conv_in" not in k}
    save_file(attention_only, without, metadata={**metadata, "lora_adapter_metadata": json.dumps(adapter)})
    base = run(xl)
    with pytest.warns(UserWarning, match=r"trained on a UNet with 4 input channels, this model's takes 9; left out: "):
        load_loras(xl, [str(with_conv_in)])
    dropped = run(xl)
    reference = load_pipeline(xl_folder, device="cpu")
    reference.set_progress_bar_config(disable=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no conv_in: no warning
        load_loras(reference, [str(without)])
    np.testing.assert_array_equal(dropped, run(reference))  # the rest of the LoRA, exactly
    assert np.abs(dropped - base).max() > 1e-3
    # On a 4-channel UNet the same LoRA fits whole.
    base_variant = load_pipeline(write_base_model(tmp_path), device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_loras(base_variant, [str(with_conv_in)])


def write_base_model(tmp_path):
    from photobg.models import write_test_model

    return write_test_model(tmp_path / "tiny-sdxl-base", "tiny-sdxl-base")


def test_a_lora_or_ip_adapter_of_another_backbone_is_refused_naming_it(pipe, xl, tmp_path):
    sd2_lora = write_lora(tmp_path / "sd2", pipe)
    with pytest.raises(ValueError, match=r"LoRA '.*sd2/pytorch_lora_weights.safetensors' does not fit this model"):
        load_loras(xl, [str(sd2_lora)])
    sd2_ip_adapter = write_ip_adapter(tmp_path / "sd2-ip", pipe.unet)
    with pytest.raises(ValueError, match=r"IP-Adapter '.*sd2-ip' does not fit this model"):
        load_ip_adapter(xl, sd2_ip_adapter)


# ----------------------------------------------------------------------------- VAE


def write_vae(folder, config_name, seed=1, **changes):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    AutoencoderKL.from_config({**get_config(config_name)["vae"], **changes}).save_pretrained(folder)
    return folder


def test_vae_replaces_the_models_and_another_latent_space_is_refused(xl, xl_folder, tmp_path):
    base = run(xl)
    other = load_pipeline(xl_folder, device="cpu", vae=write_vae(tmp_path / "vae", "tiny-sdxl-inpainting"))
    other.set_progress_bar_config(disable=True)
    assert other.vae.config.force_upcast is True and torch.equal(
        other.vae.decoder.conv_out.weight, _vae_weight(tmp_path / "vae")
    )
    assert np.abs(run(other) - base).max() > 1e-3
    # A VAE of another family (SD2's scaling factor), or another latent channel count: refused before loading.
    for name, changes, setting in (
        ("sd2", {"scaling_factor": 0.18215}, "scaling_factor"),
        ("wide", {"latent_channels": 16}, "latent_channels"),
    ):
        vae = write_vae(tmp_path / name, "tiny-sdxl-inpainting", **changes)
        with pytest.raises(ValueError, match=rf"VAE '.*{name}' does not fit .*: its {setting} is"):
            load_pipeline(xl_folder, device="cpu", vae=vae)
    with pytest.raises(FileNotFoundError, match="VAE folder './nowhere' does not exist"):
        load_pipeline(xl_folder, device="cpu", vae="./nowhere")


def _vae_weight(folder):
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(folder).decoder.conv_out.weight


# ----------------------------------------------------------------------------- IP-Adapter reference image


def test_reference_image_steers_the_background_through_the_api(inpaint_model, tmp_path):
    ip_adapter = write_ip_adapter(tmp_path / "ip", load_pipeline(inpaint_model, device="cpu").unet)
    photo, object_mask = make_photo(64, 48)
    plain = BackgroundGenerator(inpaint_model, device="cpu", segmenter=None)
    with pytest.raises(ValueError, match="needs an IP-Adapter: BackgroundGenerator"):
        plain(photo, "a cat", object_mask, seed=0, num_inference_steps=2, ip_adapter_image=photo)
    generator_ = BackgroundGenerator(inpaint_model, device="cpu", segmenter=None, ip_adapter=ip_adapter)
    rng = np.random.default_rng(0)
    references = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(2)]
    references[1].save(tmp_path / "reference.png")
    kwargs = dict(seed=0, num_inference_steps=2)
    (first,) = generator_(photo, "a cat", object_mask, ip_adapter_image=references[0], **kwargs)
    (second,) = generator_(photo, "a cat", object_mask, ip_adapter_image=tmp_path / "reference.png", **kwargs)
    (none,) = plain(photo, "a cat", object_mask, **kwargs)
    first, second, none = (np.asarray(image, dtype=float) for image in (first, second, none))
    assert np.abs(first - second).max() > 3 and np.abs(first - none).max() > 3
    (without,) = generator_(photo, "a cat", object_mask, **kwargs)  # no reference: the model's own image
    np.testing.assert_array_equal(np.asarray(without, dtype=float), none)
    generator_.pipe.set_ip_adapter_scale(0.0)  # scale 0: the reference has no effect
    (off,) = generator_(photo, "a cat", object_mask, ip_adapter_image=references[0], **kwargs)
    np.testing.assert_array_equal(np.asarray(off, dtype=float), none)


# ----------------------------------------------------------------------------- photobg generate


def test_generate_records_and_keys_lora_vae_and_reference(inpaint_model, tmp_path, capsys):
    pipe = load_pipeline(inpaint_model, device="cpu")
    lora = write_lora(tmp_path / "lora", pipe)
    ip_adapter = write_ip_adapter(tmp_path / "ip", pipe.unet)
    vae = write_vae(tmp_path / "vae", "tiny-inpainting")
    photo = tmp_path / "cup.png"
    cutout, object_mask = make_photo(64, 48)
    cutout.putalpha(object_mask)
    cutout.save(photo)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "ref.png")
    out = tmp_path / "out"
    common = ["generate", str(photo), "--prompt", "a cup", "--model", str(inpaint_model), "--steps", "2"]
    # A few-step LoRA's flags, as README shows them: its scheduler, no guidance.
    common += ["--output-dir", str(out), "--skip-existing", "--vae", str(vae), "--guidance", "0"]
    common += ["--scheduler", "LCMScheduler"]
    common += ["--ip-adapter", str(ip_adapter), "--reference-image", str(tmp_path / "ref.png")]

    def generate(scale):
        """Run; returns the newest image (the one made, or the one kept), its record and the summary."""
        assert main([*common, "--lora", f"{lora}:{scale}"]) == 0
        output = max(out.glob("cup_*_s0.png"), key=lambda path: path.stat().st_mtime_ns)
        return output, read_record(output), capsys.readouterr().out

    output, first, _ = generate(0.5)
    assert first["loras"] == [dict(path=str(lora.resolve()), scale=0.5)]
    assert first["vae"] == str(vae.resolve()) and first["ip_adapter"] == str(ip_adapter.resolve())
    assert first["ip_adapter_scale"] == 1.0
    assert first["reference_image"] == str((tmp_path / "ref.png").resolve())
    command = shlex.split(first["command"])
    assert command[command.index("--lora") + 1] == f"{lora.resolve()}:0.5" and "--reference-image" in command
    pixels = np.asarray(Image.open(output))
    _, again, printed = generate(0.5)
    assert again["key"] == first["key"] and "1 of 1 were already there" in printed
    changed_output, changed, printed = generate(0.8)  # another LoRA scale: another image, beside the first
    assert changed["key"] != first["key"] and changed_output != output and read_record(output) == first
    assert not np.array_equal(np.asarray(Image.open(changed_output)), pixels)
    # The recorded command makes the same image.
    assert main(shlex.split(changed["command"])[1:] + ["--output-dir", str(tmp_path / "again")]) == 0
    remade = output_image(tmp_path / "again", "cup")
    np.testing.assert_array_equal(np.asarray(Image.open(remade)), np.asarray(Image.open(changed_output)))
    # The reference image's content is keyed: another reference is another image.
    Image.new("RGB", (32, 32), "red").save(tmp_path / "ref.png")
    _, replaced, printed = generate(0.8)
    assert replaced["key"] != changed["key"] and "1 images written" in printed
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(record["key"] for record in manifest) == sorted([first["key"], changed["key"], replaced["key"]])


def test_keys_of_outputs_without_the_new_options_are_unchanged():
    """Outputs made before --lora / --vae / --ip-adapter existed keep their keys: nothing new is keyed unless
    given. The expected key is the digest of the fields keyed before these options."""
    import argparse
    import hashlib
    from pathlib import Path

    from photobg.api import Job
    from photobg.generation.cli import add_arguments
    from photobg.generation.plan import OutputJob
    from photobg.manifest import output_key
    from photobg.settings import GenerationSettings

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["x.png", "--prompt", "a cup", "--model", "tiny-inpainting"])
    settings = GenerationSettings.from_args(args)
    settings.check_model()

    class Files:
        def sha256(self, path):
            return "photo-digest"

    item = OutputJob(Path("x.png"), None, Job(0, "a cup", 0), Path("out/x_p0_s0.png"))
    before = dict(
        photo="photo-digest",
        mask=None,
        segmenter="transparent-background",
        prompt="a cup",
        negative_prompt=None,
        seed=0,
        model="tiny-inpainting",
        controlnet=None,
        scheduler=None,
        num_inference_steps=20,
        guidance_scale=7.5,
        controlnet_conditioning_scale=1.0,
        size=None,
        aspect=None,
        object_scale=None,
        position="center",
        working_size=None,
    )
    expected = hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()
    assert output_key(settings, item, Files()) == expected


# ----------------------------------------------------------------------------- the app


def test_app_sets_the_lora_scale_and_takes_a_reference_image(inpaint_model, tmp_path, capsys):
    from photobg.app import App, canvas_options, sampling_options
    from photobg.app_page import build_app
    from photobg.settings import GenerationSettings

    pipe = load_pipeline(inpaint_model, device="cpu")
    lora = write_lora(tmp_path / "lora", pipe)
    ip_adapter = write_ip_adapter(tmp_path / "ip", pipe.unet)
    generator_ = BackgroundGenerator(
        inpaint_model, device="cpu", segmenter=None, loras=[f"{lora}:0.5"], fuse_loras=False, ip_adapter=ip_adapter
    )
    generator_.pipe.set_progress_bar_config(disable=True)
    settings = GenerationSettings(model=str(inpaint_model), segmenter=None, ip_adapter=str(ip_adapter))
    app = App(generator_, max_megapixels=1, settings=settings)
    photo, object_mask = make_photo(64, 48)
    photo.putalpha(object_mask)
    photo.save(tmp_path / "cup.png")
    Image.new("RGB", (32, 32), "blue").save(tmp_path / "style.png")
    selection = app.open(str(tmp_path / "cup.png"))

    def generate(lora_scale, reference=None, ip_adapter_scale=None):
        options = sampling_options(None, 2, 7.5, 1.0, lora_scale, reference, ip_adapter_scale)
        canvas = canvas_options("photo's own", "", 0, "center")
        folder = tmp_path / f"app-{lora_scale}-{ip_adapter_scale}"
        folder.mkdir()
        (result,) = app.generate(selection, "a cup", 1, 0, False, options, canvas, folder, threading.Event())
        return result

    off, on = generate(0.0), generate(1.0, tmp_path / "style.png", 0.7)
    assert not np.array_equal(np.asarray(Image.open(off.path)), np.asarray(Image.open(on.path)))
    assert off.parameters["loras"] == [dict(path=str(lora), scale=0.0)] and "reference_image" not in off.parameters
    assert "--ip-adapter" not in shlex.split(off.parameters["command"])  # which needs a reference image
    command = shlex.split(on.parameters["command"])
    assert command[command.index("--lora") + 1] == f"{lora}:1"
    assert command[command.index("--reference-image") + 1] == "style.png"
    assert command[command.index("--ip-adapter-scale") + 1] == "0.7"
    # The command makes the image (the app's LoRA is an adapter, the command's is fused: equal up to rounding).
    command[command.index("--reference-image") + 1] = str(tmp_path / "style.png")
    command[command.index("cup.png")] = str(tmp_path / "cup.png")
    assert main([*command[1:], "--output-dir", str(tmp_path / "cli")]) == 0
    remade = np.asarray(Image.open(output_image(tmp_path / "cli", "cup")), dtype=int)
    assert np.abs(remade - np.asarray(Image.open(on.path), dtype=int)).max() <= 1
    # The page shows the LoRA scale and the reference image for such a model.
    demo = build_app(app)
    shown = {block.elem_id: block for block in demo.blocks.values() if getattr(block, "elem_id", None)}
    assert shown["lora-scale"].visible and shown["lora-scale"].value == 0.5
    assert shown["reference"].visible and shown["ip-adapter-scale"].visible
