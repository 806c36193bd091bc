"""The `photobg` command: help, and the core's commands end to end on the tiny model."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel
from PIL import Image

from photobg.cli import COMMANDS, main

REPO = Path(__file__).resolve().parents[1]


def photobg(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "photobg", *args], capture_output=True, text=True, **kwargs)


def test_help_lists_every_command_without_importing_them():
    out = photobg("--help", check=True).stdout
    for name in COMMANDS:
        assert name in out
    code = "import sys\nfrom photobg.cli import main\ntry: main(['--help'])\nexcept SystemExit: pass\n"
    code += "print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.endswith("False\n")


@pytest.mark.parametrize("command", ["generate", "app", "evaluate"])
def test_command_help_without_torch(command):
    # `photobg generate --help` took ~5 s when its options imported torch and diffusers (bench/cli_startup.py).
    code = f"import sys\nfrom photobg.cli import main\ntry: main([{command!r}, '--help'])\nexcept SystemExit: pass\n"
    code += "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'gradio') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "--model" in result.stdout and result.stdout.endswith("[]\n")


def test_no_image_processor_warnings_but_other_warnings_stay():
    # diffusers imports CLIPImageProcessor and SiglipImageProcessor; without torchvision transformers 5 warned
    # about both on every run. Another processor that falls back still warns: nothing is silenced.
    pytest.importorskip("transformers.models.vit")
    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("with torchvision installed no processor falls back")
    code = "import photobg.pipeline_controlnet_inpaint, transformers\ntransformers.ViTImageProcessor\n"
    stderr = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stderr
    assert "CLIPImageProcessor" not in stderr and "SiglipImageProcessor" not in stderr
    assert "`ViTImageProcessor` requires torchvision" in stderr


def test_unknown_command_is_a_usage_error():
    result = photobg("bogus")
    assert result.returncode == 2 and "invalid choice: 'bogus'" in result.stderr


def test_convert_command(inpaint_model, tmp_path):
    state = ControlNetModel.from_pretrained(inpaint_model / "controlnet").state_dict()
    torch.save(state, tmp_path / "c.pth")
    assert (
        main(["convert", str(tmp_path / "c.pth"), "--output", str(tmp_path / "out"), "--base", "tiny-inpainting"]) == 0
    )
    assert ControlNetModel.from_pretrained(tmp_path / "out").config.in_channels == 9


def test_readme_offline_generate_command(tmp_path):
    # The README's offline run, as written there (the test model is built into $PHOTOBG_CACHE).
    args = ["generate", "assets/coffee_cutout.png", "--prompt", "a cup on a marble table", "--model", "tiny-inpainting"]
    result = photobg(*args, "--steps", "2", "--output-dir", str(tmp_path), cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "[transformers]" not in result.stderr and "Warning" not in result.stderr  # an ordinary run: no warnings
    (out,) = tmp_path.glob("*.png")
    assert out.name == "coffee_cutout_a-cup-on-a-marble-table_a1c7a4e8_s0.png"  # the name README shows
    cutout = Image.open(REPO / "assets/coffee_cutout.png")
    generated = np.asarray(Image.open(out))
    assert generated.shape == (cutout.height, cutout.width, 3)
    solid = np.asarray(cutout.getchannel("A")) == 255
    np.testing.assert_array_equal(generated[solid], np.asarray(cutout.convert("RGB"))[solid])
