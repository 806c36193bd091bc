"""Training throughput and peak memory, with and without `--cache_latents` and gradient checkpointing.

Each measurement is a separate process (peak memory is per process) that trains the inpaint variant on drawn
shapes with `photobg.train.main` and reports samples/s over the steps after the first (warm-up), the time
spent caching, and peak memory (CUDA: max allocated; CPU: peak resident set size).

    python bench/train_bench.py --suite tiny    # tiny test model, writes bench/results/train_tiny.json
    python bench/train_bench.py --suite real    # real-size random-init SD2-inpainting + ControlNet

On a GPU pass `--resolution 512 --batch 4 --steps 20` (and `--mixed_precision fp16`) for realistic figures.
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SUITES = {
    # model, resolution, batch, steps, examples
    "tiny": ("tiny-inpainting", 64, 4, 30, 32),
    "real": ("sd2-inpainting", 64, 1, 3, 4),
}
VARIANTS = [
    {"cache_latents": False, "gradient_checkpointing": False},
    {"cache_latents": True, "gradient_checkpointing": False},
    {"cache_latents": False, "gradient_checkpointing": True},
    {"cache_latents": True, "gradient_checkpointing": True},
]


def measure(args):
    """One training run in this process -> a dict of figures."""
    import torch

    from photobg.data import write_synthetic_dataset
    from photobg.models import resolve_model, write_test_model
    from photobg.train import TrainConfig, main

    model = args.model
    if model in ("sd2-inpainting", "sd2-base"):  # real-size random weights, written once
        folder = Path(os.environ.get("PHOTOBG_CACHE", "~/.cache/photobg")).expanduser() / f"{model}-random"
        if not (folder / "model_index.json").exists():
            write_test_model(folder, model, with_controlnet=False)
        model = str(folder)
    model = resolve_model(model)
    with tempfile.TemporaryDirectory() as work:
        size = (args.resolution * 5 // 4, args.resolution)  # non-square: the crop is real work
        data = write_synthetic_dataset(Path(work, "data"), args.examples, size, seed=0)
        config = TrainConfig(
            pretrained_model_name_or_path=model,
            train_data_dir=str(data),
            output_dir=str(Path(work, "out")),
            resolution=args.resolution,
            train_batch_size=args.batch,
            max_train_steps=args.steps,
            checkpointing_steps=10**9,
            report_to="none",
            seed=0,
            cache_latents=args.cache_latents,
            gradient_checkpointing=args.gradient_checkpointing,
            mixed_precision=args.mixed_precision,
            dataloader_num_workers=args.workers,
        )
        started = time.perf_counter()
        result = main(config)
    times = result.step_times
    timed_steps = len(times) - 1
    figures = {
        "model": args.model,
        "resolution": args.resolution,
        "batch_size": args.batch,
        "steps": args.steps,
        "examples": args.examples,
        "cache_latents": args.cache_latents,
        "gradient_checkpointing": args.gradient_checkpointing,
        "mixed_precision": args.mixed_precision,
        "samples_per_second": round(timed_steps * args.batch / (times[-1] - times[0]), 4),
        "seconds_before_first_step": round(times[0] - started, 2),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        figures["peak_memory_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
        figures["gpu"] = torch.cuda.get_device_name()
    else:
        figures["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return figures


def run_suite(args):
    model, resolution, batch, steps, examples = SUITES[args.suite]
    runs = []
    for variant in VARIANTS:
        command = [sys.executable, __file__, "--model", model, "--resolution", str(args.resolution or resolution)]
        command += ["--batch", str(args.batch or batch), "--steps", str(args.steps or steps)]
        command += ["--examples", str(examples), "--workers", str(args.workers)]
        command += ["--mixed_precision", args.mixed_precision or "no"]
        command += ["--cache_latents"] * variant["cache_latents"]
        command += ["--gradient_checkpointing"] * variant["gradient_checkpointing"]
        print("running", " ".join(command[2:]), flush=True)
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        runs.append(json.loads(output.strip().splitlines()[-1]))
        print(json.dumps(runs[-1]), flush=True)
    base = {r["gradient_checkpointing"]: r for r in runs if not r["cache_latents"]}
    for run in runs:
        run["speedup_vs_uncached"] = round(
            run["samples_per_second"] / base[run["gradient_checkpointing"]]["samples_per_second"], 3
        )
    report = {"suite": args.suite, "machine": platform.platform(), "cpus": os.cpu_count(), "runs": runs}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"train_{args.suite}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=sorted(SUITES), help="run all four settings and write bench/results/")
    parser.add_argument("--model", default="tiny-inpainting", help="tiny-inpainting, sd2-inpainting or a model folder")
    parser.add_argument("--resolution", type=int, help="training resolution (default: the suite's)")
    parser.add_argument("--batch", type=int, help="batch size (default: the suite's)")
    parser.add_argument("--steps", type=int, help="optimisation steps; the first is not timed (default: the suite's)")
    parser.add_argument("--examples", type=int, default=32, help="examples in the drawn dataset")
    parser.add_argument("--workers", type=int, default=0, help="--dataloader_num_workers")
    parser.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), default=None)
    parser.add_argument("--cache_latents", action="store_true")
    parser.add_argument("--gradient_checkpointing", action="store_true")
    args = parser.parse_args()
    if args.suite:
        return run_suite(args)
    args.resolution, args.batch, args.steps = args.resolution or 64, args.batch or 4, args.steps or 30
    print(json.dumps(measure(args)))


if __name__ == "__main__":
    main()
