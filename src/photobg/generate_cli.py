"""`photobg generate`: new backgrounds around the objects in photos, for one photo or a folder of thousands.

A run is a flat list of outputs (`OutputJob`: photo x prompt x image, each with its seed), each keyed by
everything that determines its pixels (`output_key`). An output is written as one step: the PNG, with its
record in the `photobg` text chunk, is renamed into place, then the record is appended to the manifest. The
manifest is rewritten from the PNGs' own records at the end of every run (also after Ctrl-C or a fatal error),
so it holds exactly one record per image and a rerun after a kill repairs it. `--skip-existing` keeps an
existing image only when its record carries the same key. A photo that fails is reported and the batch goes
on; a failure that would hit every photo (the output folder gone, a full disk, a lost device) stops it.

(The module is not called `generate.py` because `photobg.generate` is the Python API's function.)
"""

import sys
from dataclasses import dataclass
from pathlib import Path

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
  with --batch-size above 1 come back equal up to floating-point rounding). --skip-existing keeps an
  image only if it was made from the same photo, mask, prompt, seed, model and settings; others are
  generated again.

failures: a photo that cannot be used or fails is reported and skipped, the rest generated, and the exit
  status is 1; a full disk, a vanished output folder or a lost device stop the batch. Ctrl-C stops it too
  (exit status 130). The images written and the manifest stay consistent: rerun with --skip-existing.

examples:
  photobg generate cutout.png --prompt "a bottle on a beach at sunset" --num-images 4
  photobg generate photos/ --masks masks/ --prompts-file prompts.txt --aspect 4:5 --output-dir out/
  photobg generate "shots/*.jpg" --segmenter transparent-background --prompt "studio, soft light" --compare
"""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
MANIFEST = "manifest.jsonl"
RECORD_CHUNK = "photobg"  # the PNG text chunk holding an output's record (its manifest line)
GRID_CHUNK = "photobg-compare"  # a comparison grid's key (grids have no manifest line)
FLAGS = {  # the flag of each sampling argument, for error messages
    "num_inference_steps": "--steps",
    "guidance_scale": "--guidance",
    "controlnet_conditioning_scale": "--controlnet-scale",
    "working_size": "--working-size",
}


def add_arguments(parser):
    from . import recipe
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
    model.add_argument(
        "--controlnet-scale",
        type=float,
        default=recipe.CONTROLNET_CONDITIONING_SCALE,
        help="0 = plain SD2-inpainting (default: %(default)s)",
    )
    model.add_argument(
        "--steps", type=int, default=recipe.NUM_INFERENCE_STEPS, help="denoising steps (default: %(default)s)"
    )
    model.add_argument(
        "--guidance", type=float, default=recipe.GUIDANCE_SCALE, help="classifier-free guidance (default: %(default)s)"
    )
    model.add_argument("--batch-size", type=int, default=1, help="images per model call (default: %(default)s)")
    out = parser.add_argument_group("output")
    out.add_argument("--output-dir", default="outputs", help="where results go (default: %(default)s)")
    out.add_argument("--skip-existing", action="store_true", help="keep images already in the output folder")
    out.add_argument("--compare", action="store_true", help="also write STEM_compare.png: input|mask|SI2|ours")
    out.add_argument("--debug", action="store_true", help="print the traceback of errors and of Ctrl-C")


def run(args):
    """Generate every output of the command. Returns the exit status: 0, 1 when any photo failed or the batch
    had to stop, 130 when interrupted."""
    prompts = read_prompts(args.prompt, args.prompts_file)
    check_options(args)
    inputs = collect_inputs(args.images)
    if args.mask and len(inputs) > 1:
        raise SystemExit("--mask applies to a single input photo; use --masks DIR for many.")
    masks = index_masks(args.masks) if args.masks else {}
    output_dir = writable_folder(args.output_dir)
    outputs = plan_outputs(inputs, masks, prompts, args, output_dir)
    return Batch(args, output_dir).run(outputs)


@dataclass
class OutputJob:
    """One output image: the photo, its mask file (if any), the prompt and seed (`api.Job`), and its file."""

    photo: Path
    mask: Path | None
    job: object
    output: Path


def plan_outputs(inputs, masks, prompts, args, output_dir):
    """The flat list of outputs, photo by photo, then prompt by prompt, then image by image.

    Args:
        inputs: photo paths; masks: {stem: mask path} (from --masks); prompts: list of str.
        args: the parsed options (--mask, --num-images, --seed); output_dir: the output folder.

    Returns:
        list of `OutputJob`.
    """
    from .api import make_jobs

    jobs = make_jobs(prompts, args.num_images, args.seed)
    outputs = []
    for photo in inputs:
        mask = Path(args.mask) if args.mask else masks.get(photo.stem)
        outputs += [OutputJob(photo, mask, job, output_dir / output_name(photo.stem, job)) for job in jobs]
    return outputs


def output_name(stem, job):
    return f"{stem}_p{job.prompt_index}_s{job.seed}.png"


class Stopped(Exception):
    """A failure that would hit every photo after this one (the message says which), so the batch stops."""


class Batch:
    """One run over a flat list of `OutputJob`s: chooses what to make, makes it photo by photo, keeps count.

    Args:
        args: the parsed options; output_dir: the (writable) output folder.
    """

    def __init__(self, args, output_dir):
        self.args, self.output_dir = args, output_dir
        self.manifest = output_dir / MANIFEST
        self.files = FileHashes()
        self.generator = None
        self.written, self.kept, self.replaced, self.failures = 0, 0, [], []
        self.grids = {}  # photo -> all its outputs, for the photos whose comparison grid is (re)made

    def run(self, outputs):
        """Make the outputs, then rewrite the manifest and print what happened. Returns the exit status."""
        interrupted, stopped = False, None
        try:
            todo = self.select(outputs)
            self.generate(todo)
        except KeyboardInterrupt:
            interrupted = True
            if self.args.debug:
                raise
        except Stopped as stop:
            stopped = str(stop)
            if self.args.debug:
                raise stop.__cause__ from None
        finally:
            self.write_manifest()
        self.report(len(outputs), len(_by_photo(outputs)), interrupted, stopped)
        if interrupted:
            return 130
        return 1 if self.failures or stopped else 0

    def select(self, outputs):
        """The outputs to make: all, or with --skip-existing those whose file is missing or was made with other
        parameters (counted in `replaced`). Also chooses the photos whose --compare grid is made."""
        todo = []
        for photo, group in _by_photo(outputs).items():
            missing = [item for item in group if not self.is_done(item)]
            todo += missing
            if self.args.compare and (missing or not self.grid_is_done(group)):
                self.grids[photo] = group
        return todo

    def is_done(self, item):
        """Whether --skip-existing keeps the output (counted in `kept`): its file's record was made with the same
        parameters."""
        if not (self.args.skip_existing and item.output.exists()):
            return False
        record = read_record(item.output)
        if record is not None:
            self.files.learn(record)
            if record.get("key") == self.key(item):
                self.kept += 1
                return True
        self.replaced.append(item.output.name)
        return False

    def grid_is_done(self, group):
        path = grid_path(group[0])
        if not (self.args.skip_existing and path.exists()):
            return False
        return read_record(path, GRID_CHUNK) == {"key": self.grid_key(group)}

    def key(self, item):
        """`output_key` of an output; None when its photo or mask cannot be read (it fails later, with the reason)."""
        try:
            return output_key(self.args, item, self.files)
        except OSError:
            return None

    def grid_key(self, group):
        import hashlib

        return hashlib.sha256(" ".join(str(self.key(item)) for item in group).encode()).hexdigest()

    def generate(self, todo):
        """Make the selected outputs (and grids) photo by photo; a photo's failure is reported and skipped."""
        from tqdm.auto import tqdm

        photos = _by_photo(todo)
        photos.update({photo: [] for photo in self.grids if photo not in photos})  # only their grid is made
        if not photos:
            return
        self.generator = load_generator(self.args)
        self.check_segmenter({photo: (items or self.grids[photo])[0].mask for photo, items in photos.items()})
        with tqdm(total=len(todo), unit="image", desc="generate") as bar:
            for photo, items in photos.items():
                bar.set_postfix_str(photo.name)
                try:
                    self.make_photo(photo, items, bar)
                except Exception as err:  # anything one photo can cause; `fail` stops on what hits them all
                    self.fail(photo, err, bar)

    def check_segmenter(self, photos):
        """Build the segmenter once before the batch when some photos need it (no alpha channel, no mask). When
        it is unavailable, those photos are skipped with its message; when every photo needs it, nothing runs."""
        from .segment import SegmenterUnavailable

        needing = [photo for photo, mask in photos.items() if mask is None and not _may_have_alpha(photo)]
        if not needing:
            return
        try:
            self.generator.load_segmenter()
        except SegmenterUnavailable as err:
            what = f"{needing[0]}" + (f" and {len(needing) - 1} more photos" if len(needing) > 1 else "")
            if len(needing) == len(photos):
                raise SystemExit(f"{what} need the segmenter: {err}") from None
            print(f"warning: {what} will be skipped, having neither alpha channel nor mask: {err}", file=sys.stderr)

    def make_photo(self, photo, items, bar):
        """Generate and write the outputs of one photo, `--batch-size` at a time, then its grid if chosen."""
        args, generator = self.args, self.generator
        mask = (items or self.grids[photo])[0].mask
        prepared = generator.prepare(
            photo, mask, size=args.size, aspect=args.aspect, object_scale=args.object_scale, position=args.position
        )
        for start in range(0, len(items), args.batch_size):
            chunk = items[start : start + args.batch_size]
            images = generator.run(prepared, [item.job for item in chunk], **sampling_options(args))
            for item, image in zip(chunk, images, strict=True):
                record = manifest_record(args, item, prepared, generator, self.files)
                save_png(image, item.output, {RECORD_CHUNK: record})
                append_line(self.manifest, record)
                self.written += 1
                bar.update()
        if photo in self.grids:
            self.make_grid(prepared, self.grids[photo])

    def make_grid(self, prepared, group):
        """STEM_compare.png: input | object mask | SI2 (ControlNet scale 0) | ours, one row per output."""
        from PIL import Image

        from .api import comparison_grid

        jobs = [item.job for item in group]
        ours = [Image.open(item.output) for item in group]
        si2 = self.generator.run(prepared, jobs, **{**sampling_options(self.args), "controlnet_conditioning_scale": 0})
        rows = [[prepared.image, prepared.object_mask, a, b] for a, b in zip(si2, ours, strict=True)]
        labels = ["input", "object mask", "SI2 (ControlNet scale 0)", "ours"]
        row_labels = [f"prompt {job.prompt_index}, seed {job.seed}" for job in jobs]
        grid = comparison_grid(rows, labels, row_labels)
        save_png(grid, grid_path(group[0]), {GRID_CHUNK: {"key": self.grid_key(group)}})

    def fail(self, photo, err, bar):
        """Report a photo's failure and go on, or raise `Stopped` when the failure would hit every photo."""
        import traceback

        from .models import free_device_memory

        if _out_of_memory(err):
            free_device_memory()  # what the failed call held
        device = self.generator.pipe.device if self.generator is not None else None
        reason = fatal_problem(err, self.output_dir, device)
        if reason:
            raise Stopped(reason) from err
        if self.args.debug:
            traceback.print_exception(err)
        message = describe_failure(photo, err)
        self.failures.append(message)
        bar.write(f"skipped {message}")

    def write_manifest(self):
        try:
            write_manifest(self.output_dir)
        except OSError as err:
            print(f"Could not rewrite {self.manifest}: {err}", file=sys.stderr)

    def report(self, total, photos, interrupted, stopped):
        summary = f"{self.written} images written to {self.output_dir} (manifest: {self.manifest})"
        summary += f"; {self.kept} of {total} were already there" if self.kept else ""
        if self.replaced:
            summary += f"; {len(self.replaced)} there were made with other parameters and generated again"
        summary += f"; {len(self.failures)} of {photos} photos failed:" if self.failures else "."
        print("\n  ".join([summary, *self.failures]))
        left = total - self.kept - self.written
        resume = f"{left} images are left: rerun with --skip-existing to make them"
        if interrupted:
            print(f"Interrupted. Every image written has its record in the manifest; {resume}.", file=sys.stderr)
        if stopped:
            print(f"Stopped: {stopped}. The images written are complete and recorded; {resume}.", file=sys.stderr)


def _by_photo(outputs):
    """{photo: its outputs}, in the order of `outputs`."""
    groups = {}
    for item in outputs:
        groups.setdefault(item.photo, []).append(item)
    return groups


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
    from .api import check_canvas_size, check_sampling
    from .masks import parse_aspect, parse_size

    checks = [
        (args.num_images >= 1, "--num-images must be at least 1"),
        (args.batch_size >= 1, "--batch-size must be at least 1"),
        (args.object_scale is None or 0 < args.object_scale <= 1, "--object-scale must be in (0, 1]"),
        # torch takes seeds below 2**64 and wraps negative ones; -1 means "random" in other tools, not here.
        (args.seed >= 0, "--seed must be at least 0 (photobg has no 'random' seed value)"),
        (args.seed + args.num_images <= 2**63, "--seed plus --num-images must stay below 2**63"),
        (
            args.negative_prompt is None or args.guidance > 1,
            "--negative-prompt works through classifier-free guidance: it needs --guidance above 1",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise SystemExit(f"{message}.")
    try:
        check_sampling(
            FLAGS,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            controlnet_conditioning_scale=args.controlnet_scale,
            working_size=args.working_size,
        )
    except ValueError as err:
        raise SystemExit(str(err)) from None
    try:
        if args.size:
            check_canvas_size(parse_size(args.size), f"--size {args.size}")
        if args.aspect:
            parse_aspect(args.aspect)
    except ValueError as err:
        message = str(err) if str(err).startswith("--size") else f"--{'size' if args.size else 'aspect'}: {err}"
        raise SystemExit(message) from None


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
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _check_writable(folder)
    except OSError as err:
        raise SystemExit(f"--output-dir {folder}: cannot write there ({err.strerror or err}).") from None
    return folder


def _check_writable(folder):
    """Create and remove a file in `folder`; raises `OSError` when that fails (no folder, no permission)."""
    import tempfile

    with tempfile.TemporaryFile(dir=folder):
        pass


def add_model_arguments(parser):
    """The options that choose and load the model, shared by `photobg generate` and `photobg app`."""
    from .backbones import TEST_MODELS
    from .defaults import DEFAULT_MODEL, DTYPE_NAMES

    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"Hub id or folder of a complete model, or a base model with --controlnet; "
        f"{' / '.join(TEST_MODELS)} build a random test model offline (default: %(default)s)",
    )
    parser.add_argument("--controlnet", help="ControlNet (Hub id, folder or .pth file) for a base --model")
    parser.add_argument(
        "--scheduler",
        help="diffusers scheduler class (e.g. DDIMScheduler), or 'model' for the model's own "
        "(default: the authors' recipe, UniPC as their notebook ran it)",
    )
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


def manifest_record(args, item, prepared, generator, files):
    """Every parameter of one output, its key (see `output_key`), and the command that regenerates exactly it.

    Args:
        args: the parsed options; item: the `OutputJob`; prepared: its photo's `api.Prepared`;
        generator: the `BackgroundGenerator`; files: the run's `FileHashes`.
    """
    import shlex

    from . import __version__
    from .models import DTYPES

    pipe, job, path, mask = generator.pipe, item.job, item.photo, item.mask
    dtype = next(name for name, value in DTYPES.items() if value == pipe.unet.dtype)
    record = dict(
        output=str(item.output),
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
        key=output_key(args, item, files),
        input_files=files.describe([path] + ([mask] if mask is not None else [])),
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
        "--output-dir": str(item.output.parent.resolve()),
    }
    for flag, value in options.items():
        if value is not None:
            command += [flag, str(value)]
    command += [flag for flag, on in (("--compile", args.compile), ("--vae-tiling", args.vae_tiling)) if on]
    record["command"] = shlex.join(command)
    return record


def output_key(args, item, files):
    """The key of an output: a sha256 of everything that decides what it shows. That is the photo's and the
    mask's content (so an edited photo counts as another), the segmenter (where no mask is given), the prompt,
    negative prompt and seed, the model, ControlNet, scheduler, steps, guidance and ControlNet scale, and the
    canvas and working size. How it is computed is left out: device, dtype, --batch-size, --compile and
    --vae-tiling change only the numerical precision; they and photobg's version are in the record.

    Args:
        args: the parsed options; item: the `OutputJob`; files: the run's `FileHashes`.

    Raises:
        OSError: when the photo or mask file cannot be read.
    """
    import hashlib
    import json

    from .masks import parse_size

    determining = dict(
        photo=files.sha256(item.photo),
        mask=files.sha256(item.mask) if item.mask is not None else None,
        segmenter=args.segmenter if item.mask is None else None,
        prompt=item.job.prompt,
        negative_prompt=args.negative_prompt,
        seed=item.job.seed,
        model=_model_key(args.model),
        controlnet=_model_key(args.controlnet),
        scheduler=args.scheduler,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        controlnet_conditioning_scale=args.controlnet_scale,
        size=list(parse_size(args.size)) if args.size else None,
        aspect=args.aspect,
        object_scale=args.object_scale,
        position=args.position,
        working_size=args.working_size,
    )
    return hashlib.sha256(json.dumps(determining, sort_keys=True).encode()).hexdigest()


def _model_key(spec):
    """A model as the key sees it: a local folder or file by its absolute path, a Hub id or test name as is."""
    import os

    from .models import TEST_MODELS

    if spec is None or spec in TEST_MODELS or not os.path.exists(os.path.expanduser(spec)):
        return spec
    return str(Path(spec).expanduser().resolve())


class FileHashes:
    """sha256 digests of the input files of a run, each file read at most once. A file whose size and
    modification time are those an existing record saw is taken as unchanged (as make and rsync do), so that
    resuming a large batch does not read every photo again."""

    def __init__(self):
        self.known = {}

    def sha256(self, path):
        import hashlib

        path = str(Path(path).resolve())
        if path not in self.known:
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            self.known[path] = digest.hexdigest()
        return self.known[path]

    def describe(self, paths):
        """{absolute path: [sha256, size, mtime_ns]} for a record."""
        return {str(Path(p).resolve()): [self.sha256(p), *_size_and_mtime(p)] for p in paths}

    def learn(self, record):
        """Take the digests of a record's input files that have not changed since."""
        for path, (digest, *stat) in (record.get("input_files") or {}).items():
            if path not in self.known and _size_and_mtime(path) == stat:
                self.known[path] = digest


def _size_and_mtime(path):
    try:
        stat = Path(path).stat()
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def grid_path(item):
    return item.output.with_name(f"{item.photo.stem}_compare.png")


def save_png(image, path, chunks=None):
    """Write a PNG atomically (a temporary name, then renamed), with `chunks` ({name: JSON value}) as text."""
    import json
    import os

    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for name, value in (chunks or {}).items():
        info.add_text(name, json.dumps(value))
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        image.save(tmp, format="PNG", pnginfo=info)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_record(path, chunk=RECORD_CHUNK):
    """The JSON in a PNG's text chunk (read from the header, without decoding the image), or None."""
    import json

    from PIL import Image

    try:
        with Image.open(path) as image:
            value = json.loads(image.info[chunk])
    except Exception:  # not a PNG, no such chunk, not JSON: not a photobg output
        return None
    return value if isinstance(value, dict) else None


def append_line(manifest, record):
    import json

    with open(manifest, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def write_manifest(folder):
    """Rewrite `folder/manifest.jsonl` from the records inside the folder's PNGs: exactly one line per image,
    sorted by input, prompt and seed, written to a temporary file and renamed (so never half-written). Reading
    the records takes under a millisecond per image (0.5-0.8 ms measured on a busy 2-core CPU).

    Returns:
        The number of records.
    """
    import json
    import os

    records = []
    for path in sorted(Path(folder).glob("*.png")):
        record = read_record(path)
        if record is not None and Path(str(record.get("output", ""))).name == path.name:
            records.append(record)
    records.sort(key=lambda r: (str(r.get("input")), r.get("prompt_index") or 0, r.get("seed") or 0, r["output"]))
    manifest = Path(folder) / MANIFEST
    tmp = manifest.with_name(f".{MANIFEST}.tmp")
    try:
        tmp.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
        os.replace(tmp, manifest)
    finally:
        tmp.unlink(missing_ok=True)
    return len(records)


# ----------------------------------------------------------------------------- failures


def fatal_problem(err, output_dir, device=None):
    """Why a photo's failure will hit every later photo, so the batch must stop; None when it is the photo's own.

    Args:
        err: the exception; output_dir: the output folder; device: the torch device generating (or None).

    Returns:
        str or None.
    """
    import errno

    whole_disk = (errno.ENOSPC, errno.EROFS, getattr(errno, "EDQUOT", errno.ENOSPC))  # every later write fails too
    if isinstance(err, OSError) and err.errno in whole_disk:
        return f"cannot write to {output_dir}: {err.strerror}"
    try:
        _check_writable(output_dir)
    except OSError as problem:
        return f"the output folder {output_dir} is gone or cannot be written ({problem.strerror or problem})"
    if device is not None and not _device_works(device):
        return f"the device {device} stopped working ({type(err).__name__}: {err})"
    return None


def _device_works(device):
    """Whether a tiny computation still runs on `device` (a lost GPU fails every call after)."""
    import torch

    try:
        return (torch.ones(1, device=device) + 1).item() == 2
    except Exception:
        return False


def describe_failure(photo, err):
    """One line for the summary: the photo and what went wrong (inputs' own errors already name the file)."""
    from .segment import SegmenterUnavailable

    if _out_of_memory(err):
        text = "out of memory (a smaller canvas, --working-size or --batch-size needs less)"
    elif isinstance(err, (ValueError, SegmenterUnavailable)):
        text = str(err)
    else:
        text = f"{type(err).__name__}: {err}"
    return text if text.startswith(str(photo)) else f"{photo}: {text}"


def _out_of_memory(err):
    import torch

    return isinstance(err, (MemoryError, torch.OutOfMemoryError))


def _may_have_alpha(path):
    """Whether a photo's header shows an alpha channel or transparency (the pixels are not decoded); True when
    it cannot be read, so that the reason is reported with the photo."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return bool({"A", "a"} & set(image.getbands())) or "transparency" in image.info
    except Exception:
        return True
