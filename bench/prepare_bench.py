"""Throughput of `photobg prepare` without captioning: images per second, end to end (enumerate, decode, check,
encode, write parquet shards, card), on a DUTS-layout folder of drawn JPEG photos.

    python bench/prepare_bench.py                       # 400 photos of 640x480, 1 and 2 workers
    python bench/prepare_bench.py --count 2000 --size 1600x1200 --num-proc 1 4 8 --max-side 1024

Memory: shards are streamed (at most two shards of examples in memory), so the peak RSS printed at the end
grows with --shard-size, not with --count.

Two cases per worker count: `keep` (no resize: unchanged JPEGs are copied byte for byte) and, with
--max-side, `resize` (every image decoded, downscaled and re-encoded). Drawing the photos is not timed.
"""

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from photobg.prepare import card  # noqa: F401  (imports `datasets` before the clock starts)
from photobg.prepare.build import PrepareConfig, SourceSpec, build_dataset


def draw_duts(root, count, size, seed=0):
    """A DUTS-TR folder of `count` noisy gradient photos with elliptic object masks."""
    width, height = size
    images, masks = root / "DUTS-TR-Image", root / "DUTS-TR-Mask"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    gradient = np.stack([xx / width, yy / height, 0.5 + 0 * xx], -1) * 200
    for i in range(count):
        photo = gradient + rng.integers(0, 55, (height, width, 3))
        cx, cy = rng.uniform(0.3, 0.7, 2)
        inside = ((xx / width - cx) / 0.2) ** 2 + ((yy / height - cy) / 0.25) ** 2 < 1
        Image.fromarray(photo.astype(np.uint8)).save(images / f"img_{i:06d}.jpg", quality=90)
        Image.fromarray(inside.astype(np.uint8) * 255).save(masks / f"img_{i:06d}.png")


def time_prepare(data, output, num_proc, max_side, shard_size):
    config = PrepareConfig(
        output=str(output),
        sources=[SourceSpec("layout", "duts", path=str(data), layout="duts")],
        shard_size=shard_size,
        max_side=max_side,
        num_proc=num_proc,
        progress=False,
    )
    start = time.perf_counter()
    summary = build_dataset(config)
    return summary["rows"], time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=400, help="photos to draw")
    parser.add_argument("--size", default="640x480", help="WIDTHxHEIGHT of the photos")
    parser.add_argument("--num-proc", type=int, nargs="+", default=[1, 2], help="worker counts to time")
    parser.add_argument("--max-side", type=int, default=320, help="the resize case's long-side limit (0: skip)")
    parser.add_argument("--shard-size", type=int, default=200)
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "DUTS-TR"
        draw_duts(data, args.count, size)
        results = []
        for num_proc in args.num_proc:
            for case, max_side in (("keep", None), ("resize", args.max_side or None)):
                if case == "resize" and not max_side:
                    continue
                rows, seconds = time_prepare(
                    data, Path(tmp) / f"out-{case}-{num_proc}", num_proc, max_side, args.shard_size
                )
                result = {"case": case, "num_proc": num_proc, "images": rows, "seconds": round(seconds, 2)}
                result["images_per_s"] = round(rows / seconds, 1)
                results.append(result)
                print(json.dumps(result))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(
        f"{args.count} photos of {args.size}; max_side for resize: {args.max_side}; peak RSS of this process {peak} MiB"
    )


if __name__ == "__main__":
    main()
