"""A prepared training set trains, unchanged, with the training entry script (tiny model, 2 steps, CPU)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from prepare_fixtures import make_layout, write_pair

from photobg.cli import main

ROOT = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = ROOT / "train_controlnet_inpaint.py"


def test_prepared_set_trains_a_few_steps(tmp_path):
    duts, _ = make_layout(tmp_path / "duts", "duts", count=3)
    for i in range(3):
        write_pair(tmp_path / "photos" / f"p{i}.jpg", tmp_path / "masks" / f"p{i}.png", seed=20 + i, size=(80, 64))
    captions = tmp_path / "captions.jsonl"
    captions.write_text("".join(json.dumps({"file_name": f"p{i}.jpg", "text": f"object {i}"}) + "\n" for i in range(3)))
    data = tmp_path / "train-set"
    args = [duts, "--images", tmp_path / "photos", "--masks", tmp_path / "masks", "--captions", captions]
    assert main(["prepare", *map(str, args), "--shard-size", "4", "--output", str(data), "--quiet"]) == 0
    output = tmp_path / "run"
    command = [
        sys.executable,
        str(TRAIN_SCRIPT),
        "--pretrained_model_name_or_path",
        "tiny-inpainting",
        "--train_data_dir",
        str(data),
        "--max_train_steps",
        "2",
        "--resolution",
        "64",
        "--output_dir",
        str(output),
    ]
    result = subprocess.run(command, cwd=ROOT, env=os.environ.copy(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert any(output.rglob("*.safetensors")), "the run saved no weights"
