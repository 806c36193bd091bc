"""Running a planned `photobg generate`: `GenerationRun` chooses what to make (`--skip-existing`), makes this
process's share of it in rounds of model calls, with the next call's photos read in one thread and the PNGs
written in another, stops on a failure that would hit every photo (or on Ctrl-C), rewrites the manifest and
prints the summary.

An output is written as one step: the PNG, with its record in the `photobg` text chunk, is renamed into place,
then the record is appended to the manifest. The manifest is rewritten from the PNGs' own records at the end of
every run (also after Ctrl-C or a fatal error), so it holds exactly one record per image and a rerun after a kill
repairs it. Under `accelerate launch` every process plans the same outputs and calls and makes its contiguous share
of the calls (`photobg.distributed`), so the images do not depend on the number of processes; the processes add up
their counts after each call (one progress bar, a stop reaches all), and the main process merges their manifest
parts.
"""

import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from time import perf_counter

from ..api import load_generator
from ..manifest import (
    GRID_CHUNK,
    MANIFEST,
    RECORD_CHUNK,
    FileHashes,
    append_line,
    generated_with,
    manifest_part,
    model_files,
    output_key,
    output_record,
    read_record,
    save_png,
    write_manifest,
)
from .plan import by_photo, canvas_of, check_writable, grid_path, legacy_grid_path, may_have_alpha, plan_batches


class Stopped(Exception):
    """A failure that would hit every photo after this one (the message says which), so the batch stops."""


class Cancelled(Exception):
    """A queued write not tried, because an earlier one failed in a way every later write would."""


class GenerationRun:
    """One run over a flat list of `OutputJob`s: chooses what to make, makes this process's share of it batch by
    batch (photos read ahead in one thread, PNGs written in another), keeps count, and adds up the counts of all
    processes.

    Args:
        settings: the checked `GenerationSettings`; output_dir: the (writable) output folder.
        processes: the run's `distributed.Processes` (default: this process alone).
        files: the run's `FileHashes` (default: new ones).
        skip_existing, compare, debug: the options of those names (--skip-existing, --compare, --debug).
    """

    def __init__(
        self, settings, output_dir, processes=None, files=None, *, skip_existing=False, compare=False, debug=False
    ):
        from ..distributed import Processes

        self.settings, self.output_dir = settings, output_dir
        self.skip_existing, self.compare, self.debug = skip_existing, compare, debug
        self.processes = processes or Processes()
        self.manifest = output_dir / MANIFEST
        # Each record is appended as its image is written: to the manifest, or with several processes to this
        # process's part of it (one writer per file); the manifest is rewritten from the PNGs at the end anyway.
        self.lines = self.manifest if self.processes.count == 1 else manifest_part(output_dir, self.processes.index)
        self.files = files or FileHashes()
        self.generator = None
        self.first_call_seconds = None  # with --compile: the first model call, compilation included (reported)
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
        from ..distributed import LostProcess

        together = True  # whether the processes still make their collective calls together
        try:
            todo = self.select(outputs)
            self.generate(todo)
        except KeyboardInterrupt:  # several processes stop together on Ctrl-C; this is a second one
            self.interrupted, together = True, self.processes.count == 1
            if self.debug:
                raise
        except LostProcess as lost:
            self.lost, together = str(lost), False
        finally:
            together = self.write_manifest(together)
        if self.stopped is not None and self.debug:
            raise self.stopped.__cause__ from None
        totals = self.totals(together)
        if self.processes.is_main or totals["alone"]:
            self.report(len(outputs), len(by_photo(outputs)), totals)
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
        processes, settings = self.processes, self.settings
        photos = by_photo(outputs)
        found = {i: self.existing(outputs[i]) for i in processes.share(range(len(outputs)))}
        mine = processes.share(photos)
        grids_done = [photo for photo in mine if self.compare and self.grid_is_done(photos[photo])]
        canvases = {photo: canvas_of(photo, settings) for photo in mine} if settings.batch_size > 1 else {}
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
        if self.compare:
            keep = set(grids_done) - {item.photo for item in todo}  # a grid is made again with any of its images
            self.grids = {photo: group for photo, group in photos.items() if photo not in keep}
        return todo

    def existing(self, item):
        """What --skip-existing finds for an output: "kept" when its file's record was made with the same
        parameters, "replaced" when its file was made otherwise, the path of an image of the same key under its
        old name (`legacy_images`; kept there), else "missing"."""
        if not self.skip_existing:
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
        if not (self.skip_existing and paths):
            return False
        return any(read_record(path, GRID_CHUNK) == {"key": self.grid_key(group)} for path in paths)

    def key(self, item):
        """`output_key` of an output; None when its photo or mask cannot be read (it fails later, with the reason)."""
        try:
            return output_key(self.settings, item, self.files)
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
                self.generator = load_generator(self.settings)
            masks = {item.photo: item.mask for item in todo}
            masks.update({photo: group[0].mask for photo, group in self.grids.items()})
            self.check_segmenter(masks)
            with warnings_as_lines():
                self.make_batches(plan_batches(todo, self.settings.batch_size, self.batch_key), len(todo))
                if self.stop_requested:
                    self.interrupted = True
                elif self.grids and not self.stopped_together:
                    self.make_grids()

    def batch_key(self, item):
        """Outputs of one working size share model calls; a photo whose size is unknown (it cannot be read, or
        --batch-size is 1) has its own."""
        canvas = self.canvases.get(item.photo)
        return item.photo if canvas is None else self.generator.working_size(canvas, self.settings.working_size)

    def check_segmenter(self, photos):
        """Build the segmenter once before the batch when some photos need it (no alpha channel, no mask). When
        it is unavailable, those photos are skipped with its message; when every photo needs it, nothing runs."""
        from ..segment import SegmenterUnavailable

        needing = [photo for photo, mask in photos.items() if mask is None and not may_have_alpha(photo)]
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
        return self.generator.prepare(item.photo, item.mask, **self.settings.canvas())

    def report_compile_time(self, seconds):
        """With --compile, say once how long the first batch took: its call compiles the models' blocks."""
        if self.settings.compile and self.first_call_seconds is None:
            from tqdm.auto import tqdm

            self.first_call_seconds = seconds
            message = f"--compile: the first batch took {seconds:.1f} s, compiling included; later batches of its size"
            tqdm.write(f"{message} reuse the compiled blocks.", file=sys.stderr)

    def make_batch(self, batch, prepared, writer):
        """Generate one batch and queue its images for writing. A photo that could not be prepared, or whose
        model call fails, is reported and skipped (`fail`).

        Args:
            batch: list of `OutputJob`; prepared: {photo: `api.Prepared` or the exception preparing it raised};
            writer: the executor that writes the PNGs.
        """
        usable = []
        for photo, items in by_photo(batch).items():
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
            started = perf_counter()
            images = self.generator.run(inputs if len(inputs) > 1 else inputs[0], jobs, **self.settings.sampling())
            self.report_compile_time(perf_counter() - started)
            records = [self.record(item, prepared[item.photo]) for item in items]
        except Exception as err:  # anything a photo can cause; `fail` stops on what hits them all
            for photo, _ in usable:
                self.fail(photo, err)
            return
        self.pending.append([])
        for item, image, record in zip(items, images, records, strict=True):
            self.pending[-1].append((item, writer.submit(self.write, image, item, record)))

    def record(self, item, prepared):
        """An output's record (`manifest.output_record`): its files by absolute path, its key and input files."""
        settings, mask = self.settings, item.mask
        reference = settings.reference_image
        return output_record(
            settings,
            item.job,
            generated_with(self.generator, prepared, settings.working_size),
            input_file=str(item.photo.resolve()),
            object_source=prepared.object_source,
            mask_file=None if mask is None else str(mask.resolve()),
            output=item.output,
            output_dir=item.output.parent,
            reference_image=str(Path(reference).resolve()) if reference else None,
            key=output_key(settings, item, self.files),
            input_files=self.files.describe(
                [item.photo] + ([mask] if mask is not None else []) + model_files(settings)
            ),
        )

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

        from ..api import comparison_grid

        jobs = [item.job for item in group]
        ours = [Image.open(self.image_of(item)) for item in group]
        si2 = self.generator.run(prepared, jobs, **{**self.settings.sampling(), "controlnet_conditioning_scale": 0})
        rows = [[prepared.image, prepared.object_mask, a, b] for a, b in zip(si2, ours, strict=True)]
        labels = ["input", "object mask", "SI2 (ControlNet scale 0)", "ours"]
        row_labels = [f"prompt {job.prompt_index}, seed {job.seed}" for job in jobs]
        grid = comparison_grid(rows, labels, row_labels)
        save_png(grid, grid_path(group), {GRID_CHUNK: {"key": self.grid_key(group)}})

    def fail(self, photo, err):
        """Report a photo's failure and go on, or raise `Stopped` when the failure would hit every photo."""
        import traceback

        from tqdm.auto import tqdm

        from ..models import free_device_memory

        if _out_of_memory(err):
            free_device_memory()  # what the failed call held
        device = self.generator.pipe.device if self.generator is not None else None
        reason = fatal_problem(err, self.output_dir, device)
        if reason:
            raise Stopped(reason) from err
        if self.debug:
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
        from ..distributed import LostProcess

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
        from ..distributed import LostProcess

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
        check_writable(output_dir)
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
    from ..segment import SegmenterUnavailable

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
