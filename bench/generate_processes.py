"""Images per second of `photobg generate` on one process and on several (`accelerate launch`), same photos, same
options, on the tiny random model and the CPU (gloo), so that the ratio shows what sharding costs or gains.

    python bench/generate_processes.py                    # 24 photos of 256x192, 1 and 2 processes, 1 thread each
    python bench/generate_processes.py --count 48 --processes 1 2 4 --threads 1 --steps 4 --batch-size 2

The rate is the one `photobg generate` prints: images written / seconds from the first batch to the last write,
over all processes (model loading and process start-up are not in it; they are printed apart as wall time). With
`--threads T` every process runs T torch threads: 1 process x 2 threads against 2 processes x 1 thread compares
the same cores. Each run writes into a fresh folder. With `--repeats R` the process counts take turns R times and
the best rate of each is kept (other work on a shared machine only ever slows a run down). The figures go to
bench/results/NAME.json.
"""

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

RESULTS = Path(__file__).resolve().parent / "results"


def draw_cutouts(folder, count, size, seed=0):
    """`count` RGBA cutouts (noisy gradient, soft ellipse as alpha) of `size` in `folder`."""
    width, height = size
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    for i in range(count):
        photo = np.stack([xx / width, yy / height, 0.5 + 0 * xx], -1) * 200 + rng.integers(0, 55, (height, width, 3))
        cx, cy = rng.uniform(0.35, 0.65, 2)
        alpha = np.clip((1.2 - ((xx / width - cx) / 0.25) ** 2 - ((yy / height - cy) / 0.3) ** 2) * 5, 0, 1) * 255
        image = np.dstack([photo, alpha]).astype(np.uint8)
        Image.fromarray(image, "RGBA").save(folder / f"photo_{i:04d}.png")


def run_generate(photos, output, processes, threads, options):
    """Run `photobg generate` on `processes` processes; returns (images/s it printed, wall seconds)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "true"}
    if processes == 1:
        launcher = [sys.executable, "-m", "photobg"]
    else:
        launcher = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            str(processes),
        ]
        launcher += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        launcher += ["--main_process_port", "0", "-m", "photobg"]
    command = [*launcher, "generate", str(photos), "--output-dir", str(output), "--device", "cpu", *options]
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    found = re.search(r"\(([\d.]+) images/s on \d+ process", result.stdout)
    if result.returncode != 0 or not found:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    return float(found.group(1)), wall


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=24, help="photos (default: %(default)s)")
    parser.add_argument("--size", default="256x192", help="photo size WxH (default: %(default)s)")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="process counts (default: 1 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (default: 1)")
    parser.add_argument("--steps", type=int, default=2, help="denoising steps (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=1, help="images per model call (default: %(default)s)")
    parser.add_argument("--working-size", type=int, default=256, help="working size (default: %(default)s)")
    parser.add_argument("--model", default="tiny-inpainting", help="model (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=1, help="turns of every process count (default: 1)")
    parser.add_argument("--name", default="generate-processes", help="results file name (default: %(default)s)")
    args = parser.parse_args()

    options = ["--prompt", "a cup on a table", "--model", args.model, "--steps", str(args.steps)]
    options += ["--batch-size", str(args.batch_size), "--working-size", str(args.working_size)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp) / "photos"
        draw_cutouts(photos, args.count, tuple(int(v) for v in args.size.split("x")))
        run_generate(photos, Path(tmp) / "warm-up", 1, args.threads, [*options[:4], "--steps", "1"])  # test model
        rates = {processes: [] for processes in args.processes}
        for turn in range(args.repeats):
            for processes in args.processes:
                output = Path(tmp) / f"out-{processes}-{turn}"
                rate, wall = run_generate(photos, output, processes, args.threads, options)
                rates[processes].append(rate)
                print(f"{processes} process(es) x {args.threads} thread(s): {rate:.2f} images/s ({wall:.1f} s wall)")
        for processes, measured in rates.items():
            rows.append({"processes": processes, "threads_per_process": args.threads, "images_per_s": max(measured)})
            rows[-1]["all_images_per_s"] = measured
    for row in rows:
        row["vs_1_process"] = round(row["images_per_s"] / rows[0]["images_per_s"], 2)
    import torch

    record = {
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
        "load_average_after": os.getloadavg(),  # other work on the machine: the figures are only as quiet as it
        "settings": {k: getattr(args, k) for k in ("count", "size", "steps", "batch_size", "working_size", "model")},
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
