"""`photobg generate`: new backgrounds around the objects in photos, for one photo or a folder of thousands.

A run is a flat list of outputs (`OutputJob`: photo x prompt x image, each with its seed), each keyed by
everything that determines its pixels (`output_key`) and named by its photo, prompt, settings and seed
(`output_name`), so that runs into one folder add up. An output is written as one step: the PNG, with its
record in the `photobg` text chunk, is renamed into place, then the record is appended to the manifest. The
manifest is rewritten from the PNGs' own records at the end of every run (also after Ctrl-C or a fatal error),
so it holds exactly one record per image and a rerun after a kill repairs it. `--skip-existing` keeps an
existing image only when its record carries the same key. A photo that fails is reported and the batch goes
on; a failure that would hit every photo (the output folder gone, a full disk, a lost device) stops it.

The outputs are made in model calls of one working size (`plan_batches`); the photos of the next call are read in
a worker thread and the PNGs written in another while the model runs (`Batch.make_batches`). Under `accelerate
launch` every process plans the same outputs and calls and makes its contiguous share of the calls
(`photobg.distributed`), so the images do not depend on the number of processes; the processes add up their
counts after each call (one progress bar, a stop reaches all), and the main process merges their manifest parts.

(The module is not called `generate.py` because `photobg.generate` is the Python API's function.)
"""

import json
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
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

output: DIR/STEM_PROMPT_KEY_sSEED.png per image (e.g. cutout_a-bottle-on-a-beach-at_3f9a1c02_s0.png: the
  prompt's first words and a key of the prompt and settings, so another prompt or setting never overwrites
  earlier images) and DIR/manifest.jsonl, one line per image with every parameter and the `command` that
  regenerates exactly that image (same device and dtype; images made with --batch-size above 1 come back
  equal up to floating-point rounding). --skip-existing keeps an image only if it was made from the same
  photo, mask, prompt, seed, model and settings (also one named STEM_pN_sSEED.png by earlier versions);
  others are generated again.

failures: a photo that cannot be used or fails is reported and skipped, the rest generated, and the exit
  status is 1; a full disk, a vanished output folder or a lost device stop the batch. Ctrl-C stops it too
  (exit status 130). The images written and the manifest stay consistent: rerun with --skip-existing.

many GPUs: accelerate launch --multi_gpu --num_processes N -m photobg generate ... runs one process per GPU,
  each making its share; the files and the manifest are those of one process, and so are the pixels under the
  same thread settings (OMP_NUM_THREADS=1 on a CPU) or on GPUs with deterministic kernels (README: Running on
  many GPUs).

LoRA, VAE, reference image: --lora PATH[:SCALE] (repeatable; a PATH that exists is taken whole, even with ':'),
  --vae (madebyollin/sdxl-vae-fp16-fix for SDXL in fp16), --ip-adapter PATH with --reference-image FILE. A
  few-step LoRA runs with its scheduler: --scheduler LCMScheduler --steps 4 --guidance 0. All of them are keyed.

examples:
  photobg generate cutout.png --prompt "a bottle on a beach at sunset" --num-images 4
  photobg generate photos/ --masks masks/ --prompts-file prompts.txt --aspect 4:5 --output-dir out/
  photobg generate "shots/*.jpg" --segmenter transparent-background --prompt "studio, soft light" --compare
"""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
MANIFEST = "manifest.jsonl"
MANIFEST_PART = ".manifest.part{}.jsonl"  # one per process of a multi-process run, merged at its end
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
    model.add_argument(
        "--reference-image",
        metavar="FILE",
        help="an image whose style the background follows, through --ip-adapter (the same for every output)",
    )
    out = parser.add_argument_group("output")
    out.add_argument("--output-dir", default="outputs", help="where results go (default: %(default)s)")
    out.add_argument("--skip-existing", action="store_true", help="keep images already in the output folder")
    out.add_argument("--compare", action="store_true", help="also write STEM_compare_KEY.png: input|mask|SI2|ours")
    out.add_argument("--debug", action="store_true", help="print the traceback of errors and of Ctrl-C")


def run(args):
    """Generate every output of the command; under `accelerate launch` with several processes, this process's
    share of them (see `photobg.distributed`). Returns the exit status, the same on every process: 0, 1 when any
    photo failed or the batch had to stop, 130 when interrupted."""
    from .distributed import LostProcess, check_shared_folder, current_processes

    prompts = read_prompts(args.prompt, args.prompts_file)
    check_options(args)
    inputs = collect_inputs(args.images)
    if args.mask and len(inputs) > 1:
        raise SystemExit("--mask applies to a single input photo; use --masks DIR for many.")
    masks = index_masks(args.masks) if args.masks else {}
    output_dir = writable_folder(args.output_dir)
    processes = current_processes()
    try:
        check_shared_folder(output_dir, processes, "--output-dir")
    except LostProcess as lost:
        raise SystemExit(f"Stopped: {lost}.") from None
    if processes.device and args.device in (None, "cuda"):
        args.device = processes.device  # one accelerator per process
    files = FileHashes()
    outputs = plan_outputs(inputs, masks, prompts, args, output_dir, files)
    return Batch(args, output_dir, processes, files).run(outputs)


@dataclass
class OutputJob:
    """One output image: the photo, its mask file (if any), the prompt and seed (`api.Job`), and its file."""

    photo: Path
    mask: Path | None
    job: object
    output: Path


def plan_outputs(inputs, masks, prompts, args, output_dir, files):
    """The flat list of outputs, photo by photo, then prompt by prompt, then image by image. Every process of a
    run plans the same list: its order decides each process's share and the order of the manifest.

    Args:
        inputs: photo paths; masks: {stem: mask path} (from --masks); prompts: list of str.
        args: the parsed options (--mask, --num-images, --seed, and what `settings_key` reads);
        output_dir: the output folder; files: the run's `FileHashes`.

    Returns:
        list of `OutputJob`.
    """
    from .api import make_jobs

    jobs = make_jobs(prompts, args.num_images, args.seed)
    keys = {}  # (prompt, whether a mask is given) -> its settings key
    outputs = []
    for photo in inputs:
        mask = Path(args.mask) if args.mask else masks.get(photo.stem)
        for job in jobs:
            if (job.prompt, mask is None) not in keys:
                keys[job.prompt, mask is None] = settings_key(args, job.prompt, mask is not None, files)
            name = output_name(photo.stem, job, keys[job.prompt, mask is None])
            outputs.append(OutputJob(photo, mask, job, output_dir / name))
    return outputs


def output_name(stem, job, settings):
    """STEM_SLUG_SETTINGS_sSEED.png: the photo's stem, the prompt's slug (`prompt_slug`), the settings key
    (`settings_key`) and the seed. Images made from another prompt or with other settings get other names, so a
    run never overwrites those of an earlier one; a photo edited under the same name is made under the same names
    (and `--skip-existing` sees that its key changed)."""
    return f"{stem}_{prompt_slug(job.prompt)}_{settings}_s{job.seed}.png"


def prompt_slug(prompt, length=24):
    """A short file-name form of a prompt: its first words (letters and digits), lowercase, joined by '-', at
    most `length` characters; 'empty-prompt' when it has no words. Two prompts of one slug differ by their
    settings key, which hashes the whole prompt."""
    import re

    words = re.findall(r"[^\W_]+", prompt.lower())
    slug = words[0][:length] if words else "empty-prompt"
    for word in words[1:]:
        if len(slug) + 1 + len(word) > length:
            break
        slug += f"-{word}"
    return slug


def plan_batches(outputs, batch_size, key=lambda item: item.photo):
    """The outputs in model calls of at most `batch_size`, each of one `key`, in the order of `outputs` (by the
    first output of each key). The batches depend only on the outputs, not on how many processes make them, so a
    run's images are the same on any number of processes.

    Returns:
        list of lists of `OutputJob`.
    """
    groups = {}
    for item in outputs:
        groups.setdefault(key(item), []).append(item)
    return [group[i : i + batch_size] for group in groups.values() for i in range(0, len(group), batch_size)]


class Stopped(Exception):
    """A failure that would hit every photo after this one (the message says which), so the batch stops."""


class Cancelled(Exception):
    """A queued write not tried, because an earlier one failed in a way every later write would."""


class Batch:
    """One run over a flat list of `OutputJob`s: chooses what to make, makes this process's share of it batch by
    batch (photos read ahead in one thread, PNGs written in another), keeps count, and adds up the counts of all
    processes.

    Args:
        args: the parsed options; output_dir: the (writable) output folder.
        processes: the run's `distributed.Processes` (default: this process alone).
        files: the run's `FileHashes` (default: new ones).
    """

    def __init__(self, args, output_dir, processes=None, files=None):
        from .distributed import Processes

        self.args, self.output_dir = args, output_dir
        self.processes = processes or Processes()
        self.manifest = output_dir / MANIFEST
        # Each record is appended as its image is written: to the manifest, or with several processes to this
        # process's part of it (one writer per file); the manifest is rewritten from the PNGs at the end anyway.
        self.lines = self.manifest if self.processes.count == 1 else manifest_part(output_dir, self.processes.index)
        self.files = files or FileHashes()
        self.generator = None
        self.written, self.kept, self.replaced = 0, 0, []
        self.kept_as = {}  # output path -> the old-named image kept in its place (`legacy_images`)
        self.legacy = {}  # photo stem -> {key: path} of its old-named images (`legacy_images`)
        self.manifest_problem = None  # why the manifest could not be rewritten
        self.failures = {}  # photo -> the line that says why it was skipped
        self.grids = {}  # photo -> all its outputs, for the photos whose comparison grid is (re)made
        self.canvases = {}  # photo -> its outputs' canvas size, read from its header (batches group by it)
        self.pending = []  # per batch, the (output, future) of its queued writes
        self.halt = threading.Event()  # set by a write that failed in a way every later one would
        self.stopped = None  # the `Stopped` that ended this process's batch
        self.stop_requested = self.stopped_together = self.interrupted = False
        self.lost = None  # why another process is no longer there
        self.seconds = 0.0

    def run(self, outputs):
        """Make the outputs, then rewrite the manifest and print what happened (on the main process). Returns the
        exit status."""
        from .distributed import LostProcess

        together = True  # whether the processes still make their collective calls together
        try:
            todo = self.select(outputs)
            self.generate(todo)
        except KeyboardInterrupt:  # several processes stop together on Ctrl-C; this is a second one
            self.interrupted, together = True, self.processes.count == 1
            if self.args.debug:
                raise
        except LostProcess as lost:
            self.lost, together = str(lost), False
        finally:
            together = self.write_manifest(together)
        if self.stopped is not None and self.args.debug:
            raise self.stopped.__cause__ from None
        totals = self.totals(together)
        if self.processes.is_main or totals["alone"]:
            self.report(len(outputs), len(_by_photo(outputs)), totals)
        if not totals["alone"]:
            try:  # the launcher stops every process when one ends with an error: let the main one print first
                self.processes.barrier()
            except LostProcess:
                pass
        if totals["interrupted"]:
            return 130
        return 1 if totals["failures"] or totals["stopped"] or totals["lost"] or totals["manifest_problem"] else 0

    def select(self, outputs):
        """The outputs to make: all, or with --skip-existing those whose file is missing (and not found under its
        old name, `legacy_images`) or was made with other parameters (counted in `replaced`). Each process checks
        its share; all learn the answer (and the photos' digests, and with --batch-size above 1 their canvas
        sizes). Also chooses the photos whose --compare grid is made."""
        processes, args = self.processes, self.args
        photos = _by_photo(outputs)
        found = {i: self.existing(outputs[i]) for i in processes.share(range(len(outputs)))}
        mine = processes.share(photos)
        grids_done = [photo for photo in mine if args.compare and self.grid_is_done(photos[photo])]
        canvases = {photo: canvas_of(photo, args) for photo in mine} if args.batch_size > 1 else {}
        parts = processes.gather(
            [dict(found=found, grids_done=grids_done, canvases=canvases, digests=self.files.known)]
        )
        for part in parts:
            found.update(part["found"])
            grids_done += part["grids_done"]
            self.canvases.update(part["canvases"])
            self.files.known.update(part["digests"])
        self.kept_as = {outputs[i].output: state for i, state in found.items() if isinstance(state, Path)}
        self.kept = sum(state == "kept" for state in found.values()) + len(self.kept_as)
        self.replaced = [item.output.name for i, item in enumerate(outputs) if found[i] == "replaced"]
        todo = [item for i, item in enumerate(outputs) if found[i] == "missing" or found[i] == "replaced"]
        if args.compare:
            keep = set(grids_done) - {item.photo for item in todo}  # a grid is made again with any of its images
            self.grids = {photo: group for photo, group in photos.items() if photo not in keep}
        return todo

    def existing(self, item):
        """What --skip-existing finds for an output: "kept" when its file's record was made with the same
        parameters, "replaced" when its file was made otherwise, the path of an image of the same key under its
        old name (`legacy_images`; kept there), else "missing"."""
        if not self.args.skip_existing:
            return "missing"
        if not item.output.exists():
            old = self.legacy_images(item.photo.stem)
            return old.get(self.key(item), "missing") if old else "missing"
        record = read_record(item.output)
        if record is not None:
            self.files.learn(record)
            if record.get("key") == self.key(item):
                return "kept"
        return "replaced"

    def legacy_images(self, stem):
        """{key: path} of a photo's images under the names photobg gave before they carried the prompt and settings
        (issue 19): STEM_pINDEX_sSEED.png, INDEX the prompt's index in its run (so matched by key, not by name).
        Read once per photo, and only for outputs whose own file is missing."""
        import glob
        import re

        if stem not in self.legacy:
            self.legacy[stem] = {}
            pattern = re.escape(stem) + r"_p\d+_s\d+\.png"
            for path in sorted(self.output_dir.glob(f"{glob.escape(stem)}_p*_s*.png")):
                record = read_record(path) if re.fullmatch(pattern, path.name) else None
                if record and record.get("key") and Path(str(record.get("output", ""))).name == path.name:
                    self.files.learn(record)
                    self.legacy[stem][record.get("key")] = path
        return self.legacy[stem]

    def image_of(self, item):
        """The file holding an output's image: its own, or the old-named one --skip-existing kept in its place."""
        return self.kept_as.get(item.output, item.output)

    def grid_is_done(self, group):
        """Whether --skip-existing finds the photo's grid of these outputs, under its name or its old one."""
        paths = [path for path in (grid_path(group), legacy_grid_path(group)) if path.exists()]
        if not (self.args.skip_existing and paths):
            return False
        return any(read_record(path, GRID_CHUNK) == {"key": self.grid_key(group)} for path in paths)

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
        """Make the selected outputs, then the grids: each process its share."""
        if not todo and not self.grids:
            return
        with self.ctrl_c_ends_the_round():  # while the model loads too: the others load after the main one
            with self.processes.main_first():  # a download (or a test model written to the cache) happens once
                self.generator = load_generator(self.args)
            masks = {item.photo: item.mask for item in todo}
            masks.update({photo: group[0].mask for photo, group in self.grids.items()})
            self.check_segmenter(masks)
            with warnings_as_lines():
                self.make_batches(plan_batches(todo, self.args.batch_size, self.batch_key), len(todo))
                if self.stop_requested:
                    self.interrupted = True
                elif self.grids and not self.stopped_together:
                    self.make_grids()

    def batch_key(self, item):
        """Outputs of one working size share model calls; a photo whose size is unknown (it cannot be read, or
        --batch-size is 1) has its own."""
        canvas = self.canvases.get(item.photo)
        return item.photo if canvas is None else self.generator.working_size(canvas, self.args.working_size)

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
            if self.processes.is_main:
                print(f"warning: {what} will be skipped, having neither alpha channel nor mask: {err}", file=sys.stderr)

    def make_batches(self, batches, total):
        """This process's share of `batches`, in rounds: each process makes one batch per round, then all add up
        what they wrote (one progress bar with the global counts, on the main process) and stop together when
        any of them must stop. The next batch's photos are prepared while the model runs, and a batch's images
        are written while the next one is generated."""
        from contextlib import closing
        from time import perf_counter

        from tqdm.auto import tqdm

        processes = self.processes
        mine = processes.share(batches)
        rounds = -(-len(batches) // processes.count)
        start = perf_counter()
        with (
            tqdm(total=total, unit="image", desc="generate", disable=not processes.is_main) as bar,
            ThreadPoolExecutor(1, thread_name_prefix="photobg-write") as writer,
            closing(prefetched(mine, self.prepare)) as ready,
        ):
            try:
                for r in range(rounds + 1):  # the last round only finishes the writes
                    before = self.written
                    try:
                        if r < len(mine) and self.stopped is None and not self.stop_requested:
                            batch, prepared = next(ready)
                            bar.set_postfix_str(batch[0].photo.name, refresh=False)
                            self.make_batch(batch, prepared, writer)
                        self.check_writes(keep=1 if r < rounds else 0)
                    except Stopped as stop:
                        self.stopped = stop
                    written, stopping = processes.sum(
                        [self.written - before, self.stopped is not None or self.stop_requested]
                    )
                    bar.update(written)
                    if stopping:
                        self.stopped_together = True
                        break
            finally:
                self.settle()
        self.seconds = perf_counter() - start

    def prepare(self, item):
        """Read an output's photo, find its object and place both on the canvas (`api.Prepared`)."""
        return self.generator.prepare(item.photo, item.mask, **canvas_options(self.args))

    def make_batch(self, batch, prepared, writer):
        """Generate one batch and queue its images for writing. A photo that could not be prepared, or whose
        model call fails, is reported and skipped (`fail`).

        Args:
            batch: list of `OutputJob`; prepared: {photo: `api.Prepared` or the exception preparing it raised};
            writer: the executor that writes the PNGs.
        """
        args, usable = self.args, []
        for photo, items in _by_photo(batch).items():
            if photo in self.failures:
                continue
            if isinstance(prepared[photo], Exception):
                self.fail(photo, prepared[photo])
                continue
            usable.append((photo, items))
        if not usable:
            return
        inputs = [prepared[photo] for photo, _ in usable]
        items = [item for _, group in usable for item in group]
        jobs = [replace(item.job, input_index=k) for k, (_, group) in enumerate(usable) for item in group]
        try:
            images = self.generator.run(inputs if len(inputs) > 1 else inputs[0], jobs, **sampling_options(args))
            records = [manifest_record(args, item, prepared[item.photo], self.generator, self.files) for item in items]
        except Exception as err:  # anything a photo can cause; `fail` stops on what hits them all
            for photo, _ in usable:
                self.fail(photo, err)
            return
        self.pending.append([])
        for item, image, record in zip(items, images, records, strict=True):
            self.pending[-1].append((item, writer.submit(self.write, image, item, record)))

    def write(self, image, item, record):
        """Write one image, then append its record (in the writer thread). After a failure that every later write
        would meet too, the writes still queued are not tried."""
        if self.halt.is_set():
            raise Cancelled
        try:
            save_png(image, item.output, {RECORD_CHUNK: record})
            try:
                append_line(self.lines, record)
            except OSError:
                pass  # the image is written with its record; the manifest, rewritten from the images, says why not
        except Exception as err:
            if fatal_problem(err, self.output_dir):
                self.halt.set()
            raise
        except BaseException:
            self.halt.set()
            raise

    def check_writes(self, keep=0):
        """Wait for the writes of all but the last `keep` batches: count the images written, report the failed."""
        while len(self.pending) > keep:
            writes = self.pending[0]
            while writes:
                item, future = writes.pop(0)
                try:
                    future.result()
                except Cancelled:
                    continue
                except Exception as err:
                    self.fail(item.photo, err)
                else:
                    self.written += 1
            self.pending.pop(0)

    def settle(self):
        """Wait for the writes still queued (on the way out), counting the images written."""
        for writes in self.pending:
            self.written += sum(future.exception() is None for _, future in writes)
        self.pending = []

    def make_grids(self):
        """The --compare grids, once every process has written its images: each process its share of them."""
        self.processes.barrier()
        for photo in self.processes.share(self.grids):
            group = self.grids[photo]
            if self.stopped is not None or self.stop_requested:
                break
            if photo in self.failures or not all(self.image_of(item).exists() for item in group):
                continue  # the photo failed, and was reported
            try:
                self.make_grid(self.prepare(group[0]), group)
            except Exception as err:
                try:
                    self.fail(photo, err)
                except Stopped as stop:
                    self.stopped = stop

    def make_grid(self, prepared, group):
        """STEM_compare_KEY.png (`grid_path`): input | object mask | SI2 (ControlNet scale 0) | ours, one row per
        output."""
        from PIL import Image

        from .api import comparison_grid

        jobs = [item.job for item in group]
        ours = [Image.open(self.image_of(item)) for item in group]
        si2 = self.generator.run(prepared, jobs, **{**sampling_options(self.args), "controlnet_conditioning_scale": 0})
        rows = [[prepared.image, prepared.object_mask, a, b] for a, b in zip(si2, ours, strict=True)]
        labels = ["input", "object mask", "SI2 (ControlNet scale 0)", "ours"]
        row_labels = [f"prompt {job.prompt_index}, seed {job.seed}" for job in jobs]
        grid = comparison_grid(rows, labels, row_labels)
        save_png(grid, grid_path(group), {GRID_CHUNK: {"key": self.grid_key(group)}})

    def fail(self, photo, err):
        """Report a photo's failure and go on, or raise `Stopped` when the failure would hit every photo."""
        import traceback

        from tqdm.auto import tqdm

        from .models import free_device_memory

        if _out_of_memory(err):
            free_device_memory()  # what the failed call held
        device = self.generator.pipe.device if self.generator is not None else None
        reason = fatal_problem(err, self.output_dir, device)
        if reason:
            raise Stopped(reason) from err
        if self.args.debug:
            traceback.print_exception(err)
        if photo not in self.failures:
            self.failures[photo] = describe_failure(photo, err)
            tqdm.write(f"skipped {self.failures[photo]}")

    @contextmanager
    def ctrl_c_ends_the_round(self):
        """With several processes, Ctrl-C (which torchrun passes on to every process) stops them all together at
        the end of the round, so that they still write the manifest together; a second Ctrl-C interrupts at once.
        One process is interrupted at once, as any program."""
        import time

        if self.processes.count == 1 or threading.current_thread() is not threading.main_thread():
            yield
            return
        first = []  # when the first SIGINT came

        def request_stop(signum, frame):
            # At a terminal one Ctrl-C reaches a process twice: from the terminal, and passed on by the launcher
            # (torchrun) a moment later. Only one that comes seconds after the first is a second Ctrl-C.
            if first and time.monotonic() - first[0] > 2:
                raise KeyboardInterrupt
            first.append(time.monotonic())
            self.stop_requested = True

        previous = signal.signal(signal.SIGINT, request_stop)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def write_manifest(self, together):
        """Rewrite the manifest from the PNGs' records: all processes together, or the main process alone when they
        no longer work together (what the others still write, the next run adds). Returns whether they still do."""
        from .distributed import LostProcess

        try:
            try:
                if together:
                    write_manifest(self.output_dir, self.processes)
                elif self.processes.is_main:
                    write_manifest(self.output_dir)
            except LostProcess as lost:
                self.lost, together = self.lost or str(lost), False
                if self.processes.is_main:
                    write_manifest(self.output_dir)
        except OSError as err:
            self.manifest_problem = err.strerror or str(err)
        return together

    def totals(self, together):
        """What every process did (this process alone when they no longer work together): images written, failed
        photos (each once), and whether any stopped, was interrupted or lost another."""
        from .distributed import LostProcess

        stopped = str(self.stopped) if self.stopped is not None else None
        mine = dict(written=self.written, failures=self.failures, stopped=stopped, interrupted=self.interrupted)
        mine["manifest_problem"] = self.manifest_problem
        parts = [dict(mine, lost=self.lost)]
        if together:
            try:
                parts = self.processes.gather([dict(mine, lost=None)])
            except LostProcess as lost:
                parts[0]["lost"], together = str(lost), False
        failures = {}
        for part in parts:
            for photo, message in part["failures"].items():
                failures.setdefault(photo, message)
        first = lambda key: next((part[key] for part in parts if part[key]), None)  # noqa: E731
        return dict(
            written=sum(part["written"] for part in parts),
            failures=list(failures.values()),
            stopped=first("stopped"),
            interrupted=any(part["interrupted"] for part in parts),
            lost=first("lost"),
            manifest_problem=first("manifest_problem"),
            alone=not together,
        )

    def report(self, total, photos, totals):
        written, failures, problem = totals["written"], totals["failures"], totals["manifest_problem"]
        summary = f"{written} images written to {self.output_dir}"
        if written and self.seconds and not totals["alone"]:
            count = self.processes.count
            rate = f"{written / self.seconds:.2f} images/s on {count} process{'es' if count > 1 else ''}"
            summary += f" in {self.seconds:.1f} s ({rate})"
        summary += f" (manifest: {self.manifest})" if problem is None else ""
        summary += f"; {self.kept} of {total} were already there" if self.kept else ""
        if self.replaced:
            summary += f"; {len(self.replaced)} there were made with other parameters and generated again"
        if problem is not None:
            summary += (
                f"; the manifest {self.manifest} could not be written ({problem}): each image carries its record, "
                "and a rerun with --skip-existing writes the manifest once that is fixed"
            )
        summary += f"; {len(failures)} of {photos} photos failed:" if failures else "."
        if totals["alone"]:
            summary = f"Process {self.processes.index}: " + summary.replace("written to", "written by this process to")
        print("\n  ".join([summary, *failures]))
        left = total - self.kept - written
        resume = f"{left} images are left: rerun with --skip-existing to make them"
        if totals["alone"]:
            resume = "rerun with --skip-existing to make the rest (the run also completes the manifest)"
        if totals["interrupted"]:
            print(f"Interrupted. Every image written has its record in the manifest; {resume}.", file=sys.stderr)
        if totals["stopped"]:
            print(
                f"Stopped: {totals['stopped']}. The images written are complete and recorded; {resume}.",
                file=sys.stderr,
            )
        if totals["lost"]:
            print(f"Stopped: {totals['lost']}. The images written are complete; {resume}.", file=sys.stderr)


@contextmanager
def warnings_as_lines():
    """Warnings shown while the batch runs become one line each above the progress bar, `warning: MESSAGE`
    (photobg's own, e.g. a mask resized to its photo, name the photo), instead of warnings' format with a source
    line, which breaks into the bar. Warnings from the worker threads are shown the same way."""
    import warnings

    from tqdm.auto import tqdm

    def show(message, category, filename, lineno, file=None, line=None):
        kind = "" if category is UserWarning else f" ({category.__name__})"
        tqdm.write(f"warning{kind}: {message}", file=sys.stderr)

    previous, warnings.showwarning = warnings.showwarning, show
    try:
        yield
    finally:
        warnings.showwarning = previous


def prefetched(batches, prepare):
    """Yield (batch, {photo: `api.Prepared`, or the exception preparing it raised}) for each batch, the photos of
    the next batch being read, segmented and placed in a worker thread while the caller uses this one. A photo in
    consecutive batches is prepared once.

    Args:
        batches: lists of `OutputJob`; prepare: `OutputJob -> api.Prepared`.
    """

    def read(batch, previous):
        photos = {}
        for item in batch:
            if item.photo in photos:
                continue
            if item.photo in previous:
                photos[item.photo] = previous[item.photo]
                continue
            try:
                photos[item.photo] = prepare(item)
            except Exception as err:  # reported with the photo by the caller
                photos[item.photo] = err
        return photos

    with ThreadPoolExecutor(1, thread_name_prefix="photobg-read") as pool:
        ahead = pool.submit(read, batches[0], {}) if batches else None
        for k, batch in enumerate(batches):
            photos = ahead.result()
            if k + 1 < len(batches):
                ahead = pool.submit(read, batches[k + 1], photos)
            yield batch, photos


def canvas_of(photo, args):
    """The canvas size of a photo's outputs (`masks.canvas_size` of --size / --aspect), from its header: the pixels
    are not decoded. None when the photo cannot be read (it fails later, with the reason)."""
    from PIL import Image

    from .masks import canvas_size

    try:
        with Image.open(photo) as image:
            size = image.size
            if image.getexif().get(0x0112) in (5, 6, 7, 8):  # EXIF orientations that turn it a quarter turn
                size = size[::-1]
        return canvas_size(size, args.size, args.aspect)
    except Exception:
        return None


def _by_photo(outputs):
    """{photo: its outputs}, in the order of `outputs`."""
    groups = {}
    for item in outputs:
        groups.setdefault(item.photo, []).append(item)
    return groups


def canvas_options(args):
    return dict(size=args.size, aspect=args.aspect, object_scale=args.object_scale, position=args.position)


def sampling_options(args):
    return dict(
        negative_prompt=args.negative_prompt,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        controlnet_conditioning_scale=args.controlnet_scale,
        working_size=args.working_size,
        batch_size=args.batch_size,
        ip_adapter_image=args.reference_image,
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
    unique = list(dict.fromkeys(prompts))  # a prompt given twice would name the same images twice
    if len(unique) < len(prompts):
        repeated = len(prompts) - len(unique)
        print(
            f"warning: {repeated} repeated prompt{'s' * (repeated > 1)} left out: each prompt is made once.",
            file=sys.stderr,
        )
    return unique


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
        (args.reference_image is None or args.ip_adapter, "--reference-image needs --ip-adapter (the weights)"),
        (args.ip_adapter is None or args.reference_image, "--ip-adapter needs --reference-image (the style)"),
    ]
    for ok, message in checks:
        if not ok:
            raise SystemExit(f"{message}.")
    check_model_options(args)
    if args.reference_image:
        from .masks import load_image

        try:
            load_image(args.reference_image)
        except ValueError as err:
            raise SystemExit(f"--reference-image {err}") from None
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
    parser.add_argument(
        "--vae",
        metavar="PATH_OR_ID",
        help="a VAE to use instead of the model's (Hub id or folder), e.g. madebyollin/sdxl-vae-fp16-fix: SDXL's own "
        "VAE overflows in fp16",
    )
    parser.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="PATH[:SCALE]",
        help="LoRA weights (a .safetensors file, or a folder holding one) for the UNet and text encoders, at SCALE "
        "(default 1; 0 = off); repeatable. Needs peft. A conv_in trained for a 4-channel UNet is left out on a "
        "9-channel one, with a warning",
    )
    parser.add_argument(
        "--ip-adapter",
        metavar="PATH",
        help="IP-Adapter weights (a file, or a folder holding one) with its image_encoder/ folder beside it: "
        "lets a reference image steer the background's style",
    )
    parser.add_argument(
        "--ip-adapter-scale",
        type=float,
        default=1.0,
        metavar="SCALE",
        help="how strongly the reference image steers the background (0 = not at all; default: %(default)s)",
    )


def check_model_options(args):
    """Check the device, scheduler, LoRA and IP-Adapter options before any model loads (errors name the flag and
    file); sets `args.loras` to the parsed `models.Lora`s."""
    import math

    from .models import check_scheduler, ip_adapter_weights, parse_lora, resolve_device

    args.loras = []
    for flag, check, value in (
        ("--device", resolve_device, args.device),
        ("--scheduler", check_scheduler, args.scheduler),
    ):
        try:
            check(value)
        except ValueError as err:
            raise SystemExit(f"{flag}: {err}") from None
    if not math.isfinite(args.ip_adapter_scale):
        raise SystemExit(f"--ip-adapter-scale must be a finite number, not {args.ip_adapter_scale}.")
    if not (args.lora or args.ip_adapter):
        return
    import importlib.util

    if args.lora and importlib.util.find_spec("peft") is None:
        raise SystemExit("--lora needs the peft package: pip install 'photobg[lora]' (or pip install peft).")

    try:
        args.loras = [parse_lora(spec) for spec in args.lora]
    except (OSError, ValueError) as err:
        raise SystemExit(f"--lora: {err}") from None
    try:
        if args.ip_adapter:
            ip_adapter_weights(args.ip_adapter)
    except OSError as err:
        raise SystemExit(f"--ip-adapter: {err}") from None


def load_generator(args, fuse_loras=True):
    """A `BackgroundGenerator` from the options of `add_model_arguments` (and `--segmenter`); a model that
    cannot be loaded ends the command with the loader's message. `fuse_loras`: see `BackgroundGenerator`."""
    from .api import BackgroundGenerator

    if not hasattr(args, "loras"):
        check_model_options(args)
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
            vae=args.vae,
            loras=args.loras,
            fuse_loras=fuse_loras,
            ip_adapter=args.ip_adapter,
            ip_adapter_scale=args.ip_adapter_scale,
        )
    except (OSError, ValueError, ImportError) as err:
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
        vae=_model_key(args.vae),
        loras=[dict(path=str(Path(lora.path).resolve()), scale=lora.scale) for lora in args.loras],
        ip_adapter=str(Path(args.ip_adapter).expanduser().resolve()) if args.ip_adapter else None,
        ip_adapter_scale=args.ip_adapter_scale if args.ip_adapter else None,
        reference_image=str(Path(args.reference_image).resolve()) if args.reference_image else None,
        key=output_key(args, item, files),
        input_files=files.describe([path] + ([mask] if mask is not None else []) + model_files(args)),
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
        "--vae": record["vae"],
        "--ip-adapter": record["ip_adapter"],
        "--ip-adapter-scale": record["ip_adapter_scale"],
        "--reference-image": record["reference_image"],
        "--device": record["device"],
        "--dtype": dtype,
        "--output-dir": str(item.output.parent.resolve()),
    }
    for flag, value in options.items():
        if value is not None:
            command += [flag, str(value)]
    for lora in record["loras"]:
        command += ["--lora", f"{lora['path']}:{lora['scale']:g}"]
    command += [flag for flag, on in (("--compile", args.compile), ("--vae-tiling", args.vae_tiling)) if on]
    record["command"] = shlex.join(command)
    return record


def output_key(args, item, files):
    """The key of an output: a sha256 of everything that decides what it shows. That is the photo's and the
    mask's content (so an edited photo counts as another), the segmenter (where no mask is given), the prompt,
    negative prompt and seed, the model, ControlNet, scheduler, steps, guidance and ControlNet scale, the
    canvas and working size, and where given the VAE, the LoRAs (each file's content and its scale) and the
    IP-Adapter (its weights' content, scale, and the reference image's content). How it is computed is left out:
    device, dtype, --batch-size, --compile and --vae-tiling change only the numerical precision; they and
    photobg's version are in the record.

    Args:
        args: the parsed options; item: the `OutputJob`; files: the run's `FileHashes`.

    Raises:
        OSError: when the photo or mask file cannot be read.
    """
    determining = dict(
        photo=files.sha256(item.photo),
        mask=files.sha256(item.mask) if item.mask is not None else None,
        seed=item.job.seed,
        **_settings(args, item.job.prompt, item.mask is not None, files),
    )
    return _sha256_of(determining)


def settings_key(args, prompt, has_mask, files):
    """The part of an output's key that its file name carries (8 hex digits): what decides the image besides the
    photo's and mask's content and the seed, i.e. the prompt and every keyed setting (see `output_key`)."""
    return _sha256_of(_settings(args, prompt, has_mask, files))[:8]


def _settings(args, prompt, has_mask, files):
    """What decides an output besides its photo, mask and seed (`output_key`'s other entries)."""
    from .masks import parse_size
    from .models import ip_adapter_weights

    determining = dict(
        segmenter=None if has_mask else args.segmenter,
        prompt=prompt,
        negative_prompt=args.negative_prompt,
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
    # Keyed only when given, so that outputs made before these options existed keep their keys.
    extras = dict(
        vae=_model_key(args.vae),
        loras=[[files.sha256(lora.path), lora.scale] for lora in args.loras] or None,
        ip_adapter=files.sha256(ip_adapter_weights(args.ip_adapter)) if args.ip_adapter else None,
        ip_adapter_scale=args.ip_adapter_scale if args.ip_adapter else None,
        reference_image=files.sha256(args.reference_image) if args.reference_image else None,
    )
    determining.update({name: value for name, value in extras.items() if value is not None})
    return determining


def _sha256_of(value):
    import hashlib

    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def model_files(args):
    """The files besides the photo and mask that an output is keyed by: LoRAs, IP-Adapter weights, reference."""
    from .models import ip_adapter_weights

    files = [Path(lora.path) for lora in args.loras]
    if args.ip_adapter:
        files += [Path(ip_adapter_weights(args.ip_adapter)), Path(args.reference_image)]
    return files


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


def grid_path(group):
    """STEM_compare_KEY.png: KEY (8 hex digits) hashes the names of the grid's outputs, so that runs with other
    prompts or settings write other grids."""
    names = " ".join(item.output.name for item in group)
    return group[0].output.with_name(f"{group[0].photo.stem}_compare_{_sha256_of(names)[:8]}.png")


def legacy_grid_path(group):
    """The grid's name before issue 19 (STEM_compare.png), which `--skip-existing` still reads."""
    return group[0].output.with_name(f"{group[0].photo.stem}_compare.png")


def save_png(image, path, chunks=None):
    """Write a PNG atomically (a temporary name, then renamed), with `chunks` ({name: JSON value}) as text."""
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
    from PIL import Image

    try:
        with Image.open(path) as image:
            value = json.loads(image.info[chunk])
    except Exception:  # not a PNG, no such chunk, not JSON: not a photobg output
        return None
    return value if isinstance(value, dict) else None


def append_line(manifest, record):
    with open(manifest, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def write_manifest(folder, processes=None):
    """Rewrite `folder/manifest.jsonl` from the records inside the folder's PNGs: exactly one line per image,
    sorted by input, prompt and seed, written to a temporary file and renamed (so never half-written). Reading
    the records takes under a millisecond per image (0.5-0.8 ms measured on a busy 2-core CPU).

    With several processes (all of them call this), each reads its share of the PNGs and writes its part of the
    manifest atomically (`manifest_part`); the main process merges the parts. Parts left by an earlier run are
    removed.

    Args:
        folder: the output folder; processes: the run's `distributed.Processes` (default: this process alone).

    Returns:
        The number of records (on the main process; the size of its share on the others).
    """
    from .distributed import Processes

    processes = processes or Processes()
    folder = Path(folder)
    processes.barrier()  # every process has written its images: all see the same PNGs
    records = []
    for path in processes.share(sorted(folder.glob("*.png"))):
        record = read_record(path)
        if record is not None and Path(str(record.get("output", ""))).name == path.name:
            records.append(record)
    if processes.count > 1:
        part = manifest_part(folder, processes.index)
        try:
            _write_records(part, records)
        except OSError:
            part.unlink(missing_ok=True)  # the main process reads the PNGs of the missing part itself
        processes.barrier()
        if not processes.is_main:
            return len(records)
        parts = [manifest_part(folder, k) for k in range(processes.count)]
        if not all(part.exists() for part in parts):
            return write_manifest(folder)
        records = [json.loads(line) for part in parts for line in part.read_text(encoding="utf-8").splitlines()]
    records.sort(key=lambda r: (str(r.get("input")), r.get("prompt_index") or 0, r.get("seed") or 0, r["output"]))
    if records or (folder / MANIFEST).exists():  # no empty manifest where nothing was ever written
        _write_records(folder / MANIFEST, records)
    for part in folder.glob(MANIFEST_PART.format("*")):
        part.unlink(missing_ok=True)
    return len(records)


def manifest_part(folder, index):
    """The file process `index` of a multi-process run appends its records to, and writes its share into."""
    return Path(folder) / MANIFEST_PART.format(index)


def _write_records(path, records):
    """Write JSON lines to a temporary file, then rename it to `path`."""
    import os

    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
