"""`photobg generate`: new backgrounds around the objects in photos, for one photo or a folder of thousands.

(The module is not called `generate.py` because `photobg.generate` is the Python API's function.)
"""

HELP = "Generate new backgrounds around the objects in photos (RGBA cutouts, photo + mask, or a segmenter)."

EPILOG = """\
where each photo's object comes from (the first that applies):
  its alpha channel (an RGBA cutout), its mask (--mask FILE, or --masks DIR matched by file stem),
  or a salient-object segmenter (--segmenter).

canvas: by default the output has the photo's size and the object stays where it is. --size WxH or
  --aspect W:H letterbox the photo onto another canvas; --object-scale F instead scales the object's
  bounding box to F of the canvas; --position says where it goes. The background is generated at the
  model's working size (--working-size, default the model's native size, 512 px for SD2) and upscaled;
  the object's own pixels are pasted back at full resolution.

output: DIR/STEM_pPROMPT_sSEED.png per image and DIR/manifest.jsonl, one line per image with every
  parameter and the `command` that regenerates exactly that image (same device and dtype; images made
  with --batch-size above 1 come back equal up to floating-point rounding).

examples:
  photobg generate cutout.png --prompt "a bottle on a beach at sunset" --num-images 4
  photobg generate photos/ --masks masks/ --prompts-file prompts.txt --aspect 4:5 --output-dir out/
  photobg generate "shots/*.jpg" --segmenter transparent-background --prompt "studio, soft light" --compare
"""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
MANIFEST = "manifest.jsonl"


def add_arguments(parser):
    from .defaults import PHOTO_SEGMENTERS, POSITIONS

    parser.epilog = EPILOG
    parser.add_argument("images", nargs="+", help="photos: files, folders (their image files) or quoted globs")
    found = parser.add_argument_group("the object")
    found.add_argument("--mask", help="object mask file (white = object) for a single input photo")
    found.add_argument("--masks", help="folder of object masks, matched to the photos by file stem")
    found.add_argument(
        "--segmenter",
        default="transparent-background",
        choices=PHOTO_SEGMENTERS,
        help="finds the object in photos with neither alpha nor mask (default: %(default)s)",
    )
    text = parser.add_argument_group("prompts and seeds")
    text.add_argument("--prompt", action="append", default=[], help="what to generate (repeatable)")
    text.add_argument("--prompts-file", help="more prompts, one per line (blank lines and # comments skipped)")
    text.add_argument("--negative-prompt", default=None, help="what to avoid")
    text.add_argument("--num-images", type=int, default=1, help="images per prompt (default: %(default)s)")
    text.add_argument("--seed", type=int, default=0, help="seed of image 1; image k uses SEED+k-1 (default: 0)")
    canvas = parser.add_argument_group("canvas")
    size = canvas.add_mutually_exclusive_group()
    size.add_argument("--size", help="output size WxH, e.g. 1024x1024 (default: the photo's size)")
    size.add_argument("--aspect", help="output aspect ratio W:H, e.g. 1:1, 4:5, 16:9: the photo is padded to it")
    canvas.add_argument("--object-scale", type=float, help="fraction (0, 1] of the canvas the object spans")
    canvas.add_argument("--position", default="center", choices=list(POSITIONS), help="where the photo goes")
    canvas.add_argument("--working-size", type=int, help="long side to generate at (default: the model's)")
    model = parser.add_argument_group("model and sampling")
    add_model_arguments(model)
    model.add_argument("--controlnet-scale", type=float, default=1.0, help="0 = plain SD2-inpainting (default: 1)")
    model.add_argument("--steps", type=int, default=20, help="denoising steps (default: %(default)s)")
    model.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance (default: %(default)s)")
    model.add_argument("--batch-size", type=int, default=1, help="images per model call (default: %(default)s)")
    out = parser.add_argument_group("output")
    out.add_argument("--output-dir", default="outputs", help="where results go (default: %(default)s)")
    out.add_argument("--skip-existing", action="store_true", help="keep images already in the output folder")
    out.add_argument("--compare", action="store_true", help="also write STEM_compare.png: input|mask|SI2|ours")


def run(args):
    """Generate for every input; a bad input is reported and skipped. Returns 1 if any input failed."""
    from pathlib import Path

    from tqdm.auto import tqdm

    from .segment import SegmenterUnavailable

    prompts = read_prompts(args.prompt, args.prompts_file)
    check_options(args)
    inputs = collect_inputs(args.images)
    if args.mask and len(inputs) > 1:
        raise SystemExit("--mask applies to a single input photo; use --masks DIR for many.")
    masks = index_masks(args.masks) if args.masks else {}
    output_dir = writable_folder(args.output_dir)
    generator = load_generator(args)
    manifest = output_dir / MANIFEST
    done, skipped, failures = 0, 0, []
    progress = tqdm(inputs, unit="photo", desc="generate")
    for path in progress:
        progress.set_postfix_str(path.name)
        mask = Path(args.mask) if args.mask else masks.get(path.stem)
        try:
            written, kept = generate_one(generator, path, mask, prompts, args, output_dir, manifest)
        except ValueError as err:
            failures.append(str(err))
            progress.write(f"skipped {err}")
            continue
        except SegmenterUnavailable as err:
            raise SystemExit(f"{path}: {err}") from None
        done, skipped = done + written, skipped + kept
    summary = f"{done} images written to {output_dir} (manifest: {manifest})"
    summary += f"; {skipped} were already there" if skipped else ""
    summary += f"; {len(failures)} of {len(inputs)} photos failed:" if failures else "."
    print("\n  ".join([summary, *failures]))
    return 1 if failures else 0


def generate_one(generator, path, mask, prompts, args, output_dir, manifest):
    """All images (and the comparison grid) of one input. Returns (images written, images kept)."""
    from .api import make_jobs

    jobs = make_jobs(prompts, args.num_images, args.seed)
    outputs = [output_dir / f"{path.stem}_p{job.prompt_index}_s{job.seed}.png" for job in jobs]
    grid_path = output_dir / f"{path.stem}_compare.png"
    todo = [k for k, out in enumerate(outputs) if not (args.skip_existing and out.exists())]
    if not todo and not (args.compare and not (args.skip_existing and grid_path.exists())):
        return 0, len(jobs)
    prepared = generator.prepare(
        path,
        mask,
        size=args.size,
        aspect=args.aspect,
        object_scale=args.object_scale,
        position=args.position,
    )
    sampling = sampling_options(args)
    images = generator.run(prepared, [jobs[k] for k in todo], **sampling)
    for k, image in zip(todo, images, strict=True):
        record = manifest_record(args, path, mask, prepared, jobs[k], outputs[k], generator)
        save_png(image, outputs[k], record)
        append_line(manifest, record)
    if args.compare:
        from PIL import Image

        from .api import comparison_grid

        ours = dict(zip(todo, images))
        ours = [ours[k] if k in ours else Image.open(outputs[k]) for k in range(len(jobs))]
        si2 = generator.run(prepared, jobs, **{**sampling, "controlnet_conditioning_scale": 0.0})
        rows = [[prepared.image, prepared.object_mask, a, b] for a, b in zip(si2, ours, strict=True)]
        labels = ["input", "object mask", "SI2 (ControlNet scale 0)", "ours"]
        row_labels = [f"prompt {job.prompt_index}, seed {job.seed}" for job in jobs]
        save_png(comparison_grid(rows, labels, row_labels), grid_path)
    return len(todo), len(jobs) - len(todo)


def sampling_options(args):
    return dict(
        negative_prompt=args.negative_prompt,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        controlnet_conditioning_scale=args.controlnet_scale,
        working_size=args.working_size,
        batch_size=args.batch_size,
    )


# ----------------------------------------------------------------------------- checks before any work


def read_prompts(prompts, prompts_file):
    """The --prompt values, then the lines of --prompts-file; at least one."""
    prompts = list(prompts)
    if prompts_file:
        try:
            with open(prompts_file, encoding="utf-8") as f:
                lines = [line.strip() for line in f]
        except OSError as err:
            raise SystemExit(f"--prompts-file {prompts_file}: {err.strerror or err}.") from None
        prompts += [line for line in lines if line and not line.startswith("#")]
    if not prompts:
        raise SystemExit("Give at least one prompt: --prompt TEXT or --prompts-file FILE.")
    return prompts


def check_options(args):
    """Fail on bad option values before anything is loaded; errors name the flag."""
    from .masks import parse_aspect, parse_size

    checks = [
        (args.num_images >= 1, "--num-images must be at least 1"),
        (args.batch_size >= 1, "--batch-size must be at least 1"),
        (args.steps >= 1, "--steps must be at least 1"),
        (args.object_scale is None or 0 < args.object_scale <= 1, "--object-scale must be in (0, 1]"),
        (args.working_size is None or args.working_size >= 8, "--working-size must be at least 8"),
    ]
    for ok, message in checks:
        if not ok:
            raise SystemExit(f"{message}.")
    try:
        if args.size:
            parse_size(args.size)
        if args.aspect:
            parse_aspect(args.aspect)
    except ValueError as err:
        raise SystemExit(f"--{'size' if args.size else 'aspect'}: {err}") from None


def collect_inputs(specs):
    """Input files from paths, folders (their image files, sorted) and globs; outputs must not collide."""
    import glob
    from collections import defaultdict
    from pathlib import Path

    paths = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            found = [p for p in sorted(path.iterdir()) if _is_image_file(p)]
            if not found:
                raise SystemExit(f"{spec}: the folder holds no image files ({', '.join(IMAGE_SUFFIXES)}).")
            paths += found
        elif glob.has_magic(spec) and not path.exists():
            found = [Path(p) for p in sorted(glob.glob(spec)) if _is_image_file(Path(p))]
            if not found:
                raise SystemExit(f"{spec}: no image files match.")
            paths += found
        else:
            paths.append(path)  # read later: a missing or broken file is reported and skipped
    paths = list(dict.fromkeys(paths))
    by_stem = defaultdict(list)
    for path in paths:
        by_stem[path.stem].append(str(path))
    clashes = [names for names in by_stem.values() if len(names) > 1]
    if clashes:
        raise SystemExit(f"Inputs with the same file stem would write the same outputs: {clashes[0]}.")
    return paths


def _is_image_file(path):
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def index_masks(folder):
    """{stem: mask path} for the image files of a folder."""
    from pathlib import Path

    folder = Path(folder)
    if not folder.is_dir():
        raise SystemExit(f"--masks {folder}: not a folder.")
    masks = {}
    for path in sorted(folder.iterdir()):
        if _is_image_file(path):
            if path.stem in masks:
                raise SystemExit(
                    f"--masks {folder}: two masks for '{path.stem}': {masks[path.stem].name}, {path.name}."
                )
            masks[path.stem] = path
    return masks


def writable_folder(folder):
    """Create the output folder and check that files can be written to it."""
    import tempfile
    from pathlib import Path

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise SystemExit(f"--output-dir {folder}: cannot write there ({err.strerror or err}).") from None
    return folder


def add_model_arguments(parser):
    """The options that choose and load the model, shared by `photobg generate` and `photobg app`."""
    from .defaults import DEFAULT_MODEL, DTYPE_NAMES, TEST_MODELS

    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"Hub id or folder of a complete model, or a base model with --controlnet; "
        f"{' / '.join(TEST_MODELS)} build a random test model offline (default: %(default)s)",
    )
    parser.add_argument("--controlnet", help="ControlNet (Hub id, folder or .pth file) for a base --model")
    parser.add_argument("--scheduler", help="diffusers scheduler class, e.g. UniPCMultistepScheduler")
    parser.add_argument("--device", help="cuda, cpu, ... (default: CUDA if present)")
    parser.add_argument("--dtype", choices=sorted(DTYPE_NAMES), help="weights dtype (default: fp16 on CUDA, else fp32)")
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile UNet + ControlNet: slow first call, faster after"
    )
    parser.add_argument("--vae-tiling", action="store_true", help="tiled VAE: bounded memory for large canvases")


def load_generator(args):
    """A `BackgroundGenerator` from the options of `add_model_arguments` (and `--segmenter`); a model that
    cannot be loaded ends the command with the loader's message."""
    from .api import BackgroundGenerator

    try:
        generator = BackgroundGenerator(
            args.model,
            args.controlnet,
            device=args.device,
            dtype=args.dtype,
            scheduler=args.scheduler,
            segmenter=args.segmenter,
            compile=args.compile,
            vae_tiling=args.vae_tiling,
        )
    except (OSError, ValueError) as err:
        raise SystemExit(f"Could not load the model: {err}") from None
    generator.pipe.set_progress_bar_config(disable=True)  # one bar, over the photos
    return generator


# ----------------------------------------------------------------------------- outputs


def manifest_record(args, path, mask, prepared, job, output, generator):
    """Every parameter of one output, and the command that regenerates exactly it."""
    import shlex

    from . import __version__
    from .models import DTYPES

    pipe = generator.pipe
    dtype = next(name for name, value in DTYPES.items() if value == pipe.unet.dtype)
    record = dict(
        output=str(output),
        input=str(path.resolve()),
        mask=str(mask.resolve()) if mask is not None and prepared.object_source == "mask" else None,
        object_source=prepared.object_source,
        prompt=job.prompt,
        prompt_index=job.prompt_index,
        negative_prompt=args.negative_prompt,
        seed=job.seed,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        controlnet_conditioning_scale=args.controlnet_scale,
        scheduler=type(pipe.scheduler).__name__,
        model=args.model,
        controlnet=args.controlnet,
        device=str(pipe.device),
        dtype=dtype,
        size=list(prepared.image.size),
        working_size=list(generator.working_size(prepared.image.size, args.working_size)),
        aspect=args.aspect,
        object_scale=args.object_scale,
        position=args.position,
        batch_size=args.batch_size,
        compile=args.compile,
        vae_tiling=args.vae_tiling,
        photobg_version=__version__,
    )
    command = ["photobg", "generate", record["input"], "--prompt", job.prompt, "--seed", str(job.seed)]
    options = {
        "--mask": record["mask"],
        "--segmenter": args.segmenter if prepared.object_source.startswith("segmenter") else None,
        "--negative-prompt": args.negative_prompt,
        "--size": args.size,
        "--aspect": args.aspect,
        "--object-scale": args.object_scale,
        "--position": args.position,
        "--working-size": args.working_size,
        "--model": args.model,
        "--controlnet": args.controlnet,
        "--controlnet-scale": args.controlnet_scale,
        "--steps": args.steps,
        "--guidance": args.guidance,
        "--scheduler": args.scheduler,
        "--device": record["device"],
        "--dtype": dtype,
        "--output-dir": str(output.parent.resolve()),
    }
    for flag, value in options.items():
        if value is not None:
            command += [flag, str(value)]
    command += [flag for flag, on in (("--compile", args.compile), ("--vae-tiling", args.vae_tiling)) if on]
    record["command"] = shlex.join(command)
    return record


def save_png(image, path, record=None):
    """Write a PNG atomically (a temporary name, then renamed), with `record` as a text chunk."""
    import json
    import os

    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    if record is not None:
        info.add_text("photobg", json.dumps(record))
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        image.save(tmp, format="PNG", pnginfo=info)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def append_line(manifest, record):
    import json

    with open(manifest, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
