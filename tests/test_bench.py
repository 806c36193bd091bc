"""The benchmark's machinery (not its speed): FLOP counts and one tiny run of every variant."""

import json

import pytest

from photobg.bench import VARIANTS, count_flops
from photobg.cli import main


def test_flop_counts_add_up():
    flops = count_flops("tiny-inpainting", 64, steps=10)
    assert flops["photobg"] - flops["si2"] == pytest.approx(10 * flops["controlnet_step"])
    assert 1 < flops["ratio"] < 2
    # Attention is quadratic in the number of latent pixels, convolutions linear: 2x the side is >= 4x the FLOPs.
    assert count_flops("tiny-inpainting", 128, steps=10)["unet_step"] >= 4 * flops["unet_step"]


def test_bench_command_writes_json_and_table(tmp_path, capsys):
    args = [
        "bench",
        "--config",
        "tiny-inpainting",
        "--sizes",
        "64",
        "--steps",
        "2",
        "--repeats",
        "1",
        "--skip-training",
    ]
    main([*args, "--output-dir", str(tmp_path), "--name", "t"])
    result = json.loads((tmp_path / "t.json").read_text())
    rows = {row["variant"]: row for row in result["inference"]}
    assert set(rows) == set(VARIANTS)
    assert rows["si2"]["vs_si2"] == 1 and rows["photobg"]["flop_ratio_vs_si2"] > 1
    assert all(row["seconds_per_image"] > 0 for row in rows.values())
    assert result["machine"]["torch"] and result["peak_tflops"] > 0
    assert "| tiny-inpainting | 64 | 2 | photobg |" in (tmp_path / "t.md").read_text()
    assert "vs_si2" in capsys.readouterr().out


def test_training_measurement_runs_the_real_loop():
    from photobg.bench import measure_training

    row = measure_training("tiny-inpainting", 32, 2, 3, 4, cache_latents=True, gradient_checkpointing=False)
    assert row["samples_per_second"] > 0 and row["cache_latents"] and row["peak_mb"] > 0


def test_bench_counts_sdxl_flops_and_refuses_to_time_sdxl_yet(tmp_path):
    args = ["bench", "--config", "tiny-sdxl-inpainting", "--sizes", "128", "--steps", "2", "--flops-only"]
    main([*args, "--output-dir", str(tmp_path)])
    result = json.loads((tmp_path / "flops.json").read_text())
    assert result["inference"] == result["training"] == [] and result["peak_tflops"] is None
    [row] = result["flops"]
    assert (row["model"], row["size"], row["steps"]) == ("tiny-sdxl-inpainting", 128, 2)
    assert row["photobg_tflop_per_image"] > row["si2_tflop_per_image"] > 2 * row["unet_tflop_per_step"]
    assert "| tiny-sdxl-inpainting | 128 | 2 |" in (tmp_path / "flops.md").read_text()
    with pytest.raises(SystemExit, match="--config tiny-sdxl-base: timing sdxl-base needs the SDXL pipeline"):
        main(["bench", "--config", "tiny-sdxl-base", "--output-dir", str(tmp_path / "timed")])
    assert not (tmp_path / "timed").exists()
