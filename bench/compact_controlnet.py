"""Parameters, FLOPs and time per training step of the ControlNet sizes (`photobg.controlnets`) at real size.

    python bench/compact_controlnet.py                      # SDXL-inpainting and SD2-inpainting (about 25 minutes)
    python bench/compact_controlnet.py --config sdxl-inpainting --resolution 256 --steps 3

For each architecture and ControlNet size (full, mid, small):
- parameters, and FLOPs counted on the meta device (`torch.utils.flop_counter`, nothing computed) at the
  backbone's native size, batch 1: one ControlNet forward, and one training step (the ControlNet's forward and
  backward, the frozen UNet's forward and its backward to the residuals; the step of `bench/train_memory.py`);
- seconds per training step (forward + backward, no optimizer step) on this CPU in fp32 with random weights at
  `--resolution`, the median of `--steps` steps after a warm-up step, each size in its own process. The ControlNet
  has its own weights; the frozen UNet's parameters of one shape share one storage (the real-size SDXL UNet would
  not fit in memory here otherwise; the values do not change the work) and the ControlNet's gradients are freed
  as they are made, so the figure is the compute of the step, not its memory (see `bench/train_memory.py`).
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_memory import (  # noqa: E402  (a sibling script)
    SIZES,
    build_models,
    drop_gradients,
    markdown,
    step_inputs,
    training_step,
)

CONFIGS = ("sdxl-inpainting", "sd2-inpainting")


def count_flops(config_name, size, resolution):
    """FLOPs of one ControlNet forward and of one training step (batch 1), on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    unet, controlnet = build_models(config_name, size, torch.float32, weights="meta")
    with torch.device("meta"):
        inputs, control_image, target = step_inputs(unet, resolution, 1, torch.float32)
        with FlopCounterMode(display=False) as forward:
            controlnet(**inputs, controlnet_cond=control_image, return_dict=False)
        with FlopCounterMode(display=False) as step:
            training_step(unet, controlnet, inputs, control_image, target, torch.float32)
    return forward.get_total_flops(), step.get_total_flops()


def time_steps(config_name, size, resolution, batch, steps):
    """Seconds of each training step after a warm-up step (fp32, this process)."""
    torch.manual_seed(0)
    unet, controlnet = build_models(config_name, size, torch.float32, weights="own-controlnet")
    drop_gradients(controlnet)
    tensors = step_inputs(unet, resolution, batch, torch.float32)
    times = []
    for _ in range(steps + 1):
        started = time.perf_counter()
        training_step(unet, controlnet, *tensors, torch.float32)
        times.append(time.perf_counter() - started)
    return times[1:]


def time_in_subprocess(config_name, size, resolution, batch, steps):
    code = "import json, sys; sys.path.insert(0, 'bench'); from compact_controlnet import time_steps; "
    code += f"print(json.dumps(time_steps({config_name!r}, {size!r}, {resolution}, {batch}, {steps})))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    from photobg.backbones import backbone_for_config

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append", help=f"architecture(s) (default: {', '.join(CONFIGS)})")
    parser.add_argument("--resolution", type=int, default=256, help="timing resolution (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=1, help="timing batch size (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps after a warm-up (default: %(default)s)")
    parser.add_argument("--json", help="write the rows to this file")
    args = parser.parse_args()
    rows = []
    for config_name in args.config or CONFIGS:
        native = backbone_for_config(config_name).native_size
        for size in SIZES:
            _, controlnet = build_models(config_name, size, torch.float32, weights="meta")
            forward, step = count_flops(config_name, size, native)
            times = time_in_subprocess(config_name, size, args.resolution, args.batch, args.steps)
            rows.append(
                dict(
                    model=config_name,
                    controlnet=size,
                    params_m=sum(p.numel() for p in controlnet.parameters()) / 1e6,
                    flops_size=native,
                    controlnet_tflop=forward / 1e12,
                    step_tflop=step / 1e12,
                    time_resolution=args.resolution,
                    seconds_per_step=statistics.median(times),
                    times=times,
                )
            )
            print(
                f"{config_name} {size}: {rows[-1]['params_m']:.0f} M, step {step / 1e12:.2f} TFLOP, {times} s",
                flush=True,
            )
        full = rows[-len(SIZES)]
        for row in rows[-len(SIZES) :]:
            row["params_vs_full"] = row["params_m"] / full["params_m"]
            row["step_flops_vs_full"] = row["step_tflop"] / full["step_tflop"]
            row["time_vs_full"] = row["seconds_per_step"] / full["seconds_per_step"]
    columns = ["model", "controlnet", "params_m", "params_vs_full", "flops_size", "controlnet_tflop", "step_tflop"]
    columns += ["step_flops_vs_full", "time_resolution", "seconds_per_step", "time_vs_full"]
    print(markdown(rows, columns))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(settings=vars(args), rows=rows), indent=2))


if __name__ == "__main__":
    main()
