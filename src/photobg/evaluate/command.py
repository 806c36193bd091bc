"""`photobg evaluate`: the argument parser and `run(args)`; heavy imports happen inside `run`."""

import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

METRIC_NAMES = ("expansion", "fid", "clip", "lpips")

EPILOG = """\
{specs}

Benchmark (--data): a prepared dataset (DIR/data/*.parquet from `photobg prepare`: image, conditioning_image =
object mask, text, id), or DIR/images/ + DIR/masks/ (same file stems; white = object; RGBA images need no mask)
+ optional DIR/prompts.jsonl ({{"id": STEM, "text": PROMPT}} per line).

Output (--output-dir): generated/MODEL/ID_sSEED.png (a rerun skips what exists), segmented/SEGMENTER/...,
report/ (results.md, per_image.csv, metrics.json, expansion.png, worst_cases.png, command.txt). The folder is
made with the first file written in it: a run that stops before evaluating anything leaves nothing behind.

Bad samples (an unreadable file, a mask that does not fit its photo, an empty or full object) are skipped and named
in the log and the report, the rest evaluated, and the exit status is 1, as with `photobg generate`.

Many GPUs: accelerate launch --multi_gpu --num_processes N -m photobg evaluate ... splits the samples between
the processes; the report is the one a single process writes.

Example (tiny random model, runs on a CPU in about a minute):
  photobg evaluate --data outputs/bench --model tiny-inpainting@name=SI2,scale=0 \\
      --model tiny-inpainting@name=Ours --steps 2 --resolution 64 --segmenter threshold \\
      --metrics expansion --output-dir outputs/eval-tiny
"""


def add_arguments(parser):
    from ..defaults import DEFAULT_CLIP_MODEL, FID_FEATURES
    from ..segment import DEFAULT_SAM_MODEL, SEGMENTERS
    from .data import SPEC_HELP

    parser.epilog = EPILOG.format(specs=SPEC_HELP)
    parser.add_argument("--data", required=True, help="benchmark folder: a prepared dataset or images/ + masks/")
    parser.add_argument("--model", action="append", required=True, metavar="SPEC", help="model spec (repeatable)")
    parser.add_argument("--output-dir", required=True, help="where generated images, masks and report/ go")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds per sample (default: 0)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps (default: %(default)s)")
    parser.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance (default: %(default)s)")
    parser.add_argument(
        "--resolution",
        type=int,
        help="resize samples to this longer side, 0 = as they are (default: the models' native size, 512 px for SD2 "
        "and 1024 for SDXL; the largest when they differ)",
    )
    parser.add_argument("--limit", type=int, help="evaluate only the first N samples (by id)")
    parser.add_argument("--prompt", default="", help="prompt for samples without one (default: empty)")
    parser.add_argument(
        "--segmenter",
        default="sam",
        choices=sorted(SEGMENTERS),
        help="finds the object in generated images (default: sam, as in the paper)",
    )
    parser.add_argument("--segmenter-model", help=f"SAM model, Hub id or folder (default: {DEFAULT_SAM_MODEL})")
    parser.add_argument("--given-masks", help="folder of masks for --segmenter given-masks (MODEL/ID_sSEED.png)")
    parser.add_argument(
        "--metrics",
        default="expansion,fid,clip",
        help=f"comma-separated, of {', '.join(METRIC_NAMES)} (default: %(default)s; lpips needs 2+ seeds)",
    )
    parser.add_argument(
        "--fid-features", default="inception", choices=FID_FEATURES, help="FID feature space (default: %(default)s)"
    )
    parser.add_argument("--fid-reference", help="folder of reference images for FID (default: the input photos)")
    parser.add_argument("--clip-model", default=DEFAULT_CLIP_MODEL, help="CLIP model (default: %(default)s)")
    parser.add_argument(
        "--tolerance", type=float, default=0.01, help="expansion above this share of the image counts (default: 0.01)"
    )
    parser.add_argument("--baseline", help="model name the others' expansion is divided by (default: first scale=0)")
    parser.add_argument("--worst", type=int, default=6, help="worst cases in the grid (default: %(default)s)")
    parser.add_argument("--device", help="cuda, cpu, ... (default: CUDA if present)")
    parser.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), help="weights dtype (default: fp16 on CUDA)")
    parser.add_argument("--debug", action="store_true", help="print the traceback of errors and of Ctrl-C")


def check_arguments(args):
    """Check everything that needs no model, so mistakes surface before anything loads. Returns the metrics."""
    from ..settings import check_sampling

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    unknown = sorted(set(metrics) - set(METRIC_NAMES))
    if unknown:
        raise SystemExit(f"--metrics: unknown {unknown}; choose from {', '.join(METRIC_NAMES)}.")
    if "lpips" in metrics and len(set(args.seeds)) < 2:
        raise SystemExit("--metrics lpips measures diversity across seeds: give at least two --seeds.")
    if len(set(args.seeds)) != len(args.seeds) or min(args.seeds) < 0 or max(args.seeds) >= 2**63:
        raise SystemExit("--seeds must be distinct integers from 0 to 2**63 - 1.")
    if args.steps < 1 or (args.resolution or 0) < 0 or (args.limit is not None and args.limit < 1) or args.worst < 0:
        raise SystemExit("--steps and --limit must be >= 1, --resolution and --worst >= 0.")
    try:
        check_sampling(
            {"guidance_scale": "--guidance", "working_size": "--resolution"},
            guidance_scale=args.guidance,
            working_size=args.resolution or None,  # 0 = the samples' own sizes
        )
    except ValueError as err:
        raise SystemExit(str(err)) from None
    if not 0 <= args.tolerance < 1:
        raise SystemExit("--tolerance is a share of the image: 0 <= tolerance < 1.")
    if args.segmenter == "given-masks" and not args.given_masks:
        raise SystemExit("--segmenter given-masks needs --given-masks DIR.")
    check_output_dir(args.output_dir)
    return metrics


def check_output_dir(folder):
    """Check that `folder` is a folder that can be written, or can be made one, without making it: the run makes
    it with its first file, so a run that stops before it has anything to write leaves nothing behind."""
    import tempfile

    folder = Path(folder)
    existing = next(p for p in [folder, *folder.parents] if p.exists())
    if not existing.is_dir():
        raise SystemExit(f"--output-dir {folder}: {existing} is not a folder.")
    try:
        with tempfile.TemporaryFile(dir=existing):  # a nameless file where the folder would be made
            pass
    except OSError as err:
        raise SystemExit(f"--output-dir {folder}: cannot write there ({err.strerror or err}).") from None


def run(args):
    """Run the evaluation. Returns the exit status: 0, or 1 when a sample was skipped; Ctrl-C ends the run with
    one line (and exit status 130) unless --debug."""
    try:
        return _run(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(
            "photobg evaluate: interrupted. Every image and mask written so far is complete and is kept: "
            "run the same command again to resume.",
            file=sys.stderr,
        )
        return 130


def _run(args):
    from ..distributed import LostProcess, current_processes
    from ..generation.run import warnings_as_lines
    from ..segment import SegmenterUnavailable, get_segmenter
    from .data import Benchmark, native_resolution, parse_model_specs
    from .quality import QualityMetricUnavailable
    from .report import write_report
    from .runner import EvalSettings, build_quality, run_evaluation

    metrics = check_arguments(args)
    processes = current_processes()  # several under `accelerate launch`: each evaluates its share of the samples
    # One accelerator per process, unless --device names one; the recorded settings keep --device as given.
    device = processes.device if processes.device and args.device in (None, "cuda") else args.device
    try:
        specs = parse_model_specs(args.model)
        resolution = native_resolution(specs) if args.resolution is None else args.resolution
        benchmark = Benchmark(args.data, resolution=resolution, limit=args.limit, default_prompt=args.prompt)
        segmenter_settings = _segmenter_settings(args)
        options = {k: v for k, v in segmenter_settings.items() if k != "name"}
        if device != args.device and args.segmenter in ("sam", "transparent-background"):
            options["device"] = device
        segmenter = get_segmenter(args.segmenter, **options)
        quality = build_quality(metrics, args.fid_features, args.clip_model, args.fid_reference, device)
    except (ValueError, FileNotFoundError, SegmenterUnavailable, QualityMetricUnavailable) as err:
        raise SystemExit(f"photobg evaluate: {err}") from err
    settings = EvalSettings(args.seeds, args.steps, args.guidance, args.tolerance, device, args.dtype)
    try:  # warnings (a recipe without its LoRA, a mask resized) as one `warning:` line each, above the bars
        with shared_output_dir(args.output_dir, processes), warnings_as_lines():
            results = run_evaluation(
                benchmark,
                specs,
                args.output_dir,
                settings,
                segmenter,
                segmenter_settings,
                quality,
                args.baseline,
                processes,
            )
    except (ValueError, FileNotFoundError) as err:  # bad input found on the way (a mask file, resumed settings)
        raise SystemExit(f"photobg evaluate: {err}") from err
    except LostProcess as lost:
        raise SystemExit(f"photobg evaluate: stopped: {lost}. What was written is complete: run it again.") from None
    status = 1 if results["skipped"] else 0  # as `photobg generate`: 1 when anything was skipped
    if not processes.is_main:
        processes.barrier()  # the main process writes the report
        return status
    description = {
        "benchmark": f"{args.data} ({benchmark.kind}, {len(benchmark)} samples)",
        "models": "; ".join(
            f"{s.name} = {s.model} scale {s.scale:g}" + (f" + {s.controlnet}" if s.controlnet else "") for s in specs
        ),
        "seeds": " ".join(map(str, args.seeds)),
        "steps": args.steps,
        "guidance": args.guidance,
        "resolution": benchmark.resolution or "as given",
        "segmenter": ", ".join(f"{k}={v}" for k, v in segmenter_settings.items()),
        "metrics": ", ".join(metrics),
        "fid": f"{args.fid_features} features vs {args.fid_reference or 'the input photos'}"
        if "fid" in metrics
        else "–",
        "tolerance": args.tolerance,
    }
    command = canonical_command(args)
    folder = write_report(results, benchmark, args.output_dir, description, command, args.worst)
    print(f"wrote {folder}")
    print((folder / "results.md").read_text().split("\n\n")[1])
    if results["skipped"]:
        skipped = [f"{sample_id}: {reason}" for sample_id, reason in results["skipped"]]
        print("\n  ".join([f"{len(skipped)} of {len(benchmark)} samples skipped:", *skipped]))
    processes.barrier()
    return status


@contextmanager
def shared_output_dir(folder, processes):
    """Several processes must write to one folder, which `check_shared_folder` checks with a file in it: they make
    it now, and remove what they made when the run stops before writing anything (one process makes the folder
    with its first file)."""
    from ..distributed import check_shared_folder

    if processes.count == 1:
        yield
        return
    folder = Path(folder)
    made = next((p for p in [*reversed(folder.parents), folder] if not p.exists()), None)  # the top folder made here
    folder.mkdir(parents=True, exist_ok=True)
    try:
        check_shared_folder(folder, processes, "--output-dir")
        yield
    except BaseException:
        if made is not None and processes.is_main and not any(p.is_file() for p in made.rglob("*")):
            shutil.rmtree(made, ignore_errors=True)
        raise


def _segmenter_settings(args):
    settings = {"name": args.segmenter}
    if args.segmenter == "sam":
        from ..segment import DEFAULT_SAM_MODEL

        settings["model"] = args.segmenter_model or DEFAULT_SAM_MODEL
    if args.segmenter == "given-masks":
        settings["folder"] = args.given_masks
    if args.device and args.segmenter in ("sam", "transparent-background"):
        settings["device"] = args.device
    return settings


def canonical_command(args):
    """The command line that reproduces this run, every option spelled out (defaults included)."""
    import shlex

    words = ["photobg", "evaluate"]
    for dest, value in vars(args).items():
        if dest in ("command", "run") or value is None:
            continue
        flag = "--" + dest.replace("_", "-")
        if dest == "model":
            words += [w for spec in value for w in (flag, spec)]
        elif isinstance(value, list):
            words += [flag, *map(str, value)]
        else:
            words += [flag, str(value)]
    return shlex.join(words)
