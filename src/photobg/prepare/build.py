"""Building a training set: plan, process shard by shard, caption, write atomically, publish.

Output folder (the Hub dataset layout; see the project's training-set format):
    DIR/data/train-00000-of-00004.parquet ...   appears only when every shard is written (one rename)
    DIR/README.md                               the dataset card, written last
    DIR/.prepare/                               run state: config.json (options + fingerprint), plan.jsonl
                                                (every example, in output order), sources.json, shards/
                                                (finished shards + their reports), captions.jsonl (cache),
                                                skipped.jsonl (everything left out, with the reason)

Resuming: the plan is fixed by the first run (same options => same plan, even if files were added since);
shard i always holds plan entries [i * shard_size, (i + 1) * shard_size) minus the skipped ones, and is
written to a temporary name and renamed when complete, so a killed run redoes at most the shards in flight
and never duplicates or loses an example.
"""

import hashlib
import json
import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..files import atomic_path, write_atomic
from .examples import ProcessOptions

STATE_DIR = ".prepare"
RUNTIME_FIELDS = ("output", "num_proc", "overwrite", "caption_batch_size", "device", "dtype", "progress")


@dataclass
class SourceSpec:
    """One source as given on the command line (see `photobg prepare --help`)."""

    kind: str  # "layout", "images", "coco" or "cutouts"
    name: str
    path: str | None = None  # layout: dataset folder; cutouts: folder
    layout: str | None = None  # layout name, None = detect
    images: str | None = None
    masks: str | None = None
    coco: str | None = None  # instances annotation file
    coco_images: str | None = None
    coco_captions: str | None = None
    coco_mode: str = "largest"
    coco_min_area: float = 0.05
    coco_max_area: float = 0.8


@dataclass
class PrepareConfig:
    """Everything that decides a prepared training set, plus how to run (RUNTIME_FIELDS)."""

    output: str
    sources: list
    seed: int = 0
    shard_size: int = 1000
    counts: dict = field(default_factory=dict)
    weights: dict = field(default_factory=dict)
    max_side: int | None = None
    max_short_side: int | None = None
    mask_mismatch: str = "resize"
    captions_file: str | None = None
    caption_model: str | None = None
    caption_prompt: str | None = None
    caption_template: str = "{caption}"
    caption_max_tokens: int = 40
    caption_batch_size: int = 16
    device: str | None = None
    dtype: str | None = None
    num_proc: int = 1
    overwrite: bool = False
    progress: bool = True

    def check(self):
        """Raise ValueError naming the flag for an option that cannot work (before anything is read)."""
        if not self.sources:
            raise ValueError("No source given: name a dataset folder, --images/--masks, --coco or --cutouts.")
        if self.shard_size < 1:
            raise ValueError("--shard-size must be >= 1.")
        if self.num_proc < 1:
            raise ValueError("--num-proc must be >= 1.")
        for flag, value in (("--max-side", self.max_side), ("--max-short-side", self.max_short_side)):
            if value is not None and value < 1:
                raise ValueError(f"{flag} must be >= 1.")
        if self.mask_mismatch not in ("resize", "skip"):
            raise ValueError("--mask-mismatch is 'resize' or 'skip'.")
        if any(n < 0 for n in self.counts.values()) or any(w < 0 for w in self.weights.values()):
            raise ValueError("--count and --weight take non-negative numbers.")
        if set(self.counts) & set(self.weights):
            raise ValueError(f"Sources {sorted(set(self.counts) & set(self.weights))} have both --count and --weight.")
        if "{caption}" not in self.caption_template:
            raise ValueError("--caption-template needs a {caption} placeholder.")
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"Source names must be unique: {names}.")

    def fingerprint(self):
        """A hash of the options that decide the output (not of how it is run)."""
        decisive = {k: v for k, v in asdict(self).items() if k not in RUNTIME_FIELDS}
        if self.captions_file:
            stat = os.stat(self.captions_file)
            decisive["captions_file_stat"] = [stat.st_size, stat.st_mtime_ns]
        return hashlib.sha256(json.dumps(decisive, sort_keys=True).encode()).hexdigest()[:16]


def build_dataset(config):
    """Prepare (or resume preparing) a training set.

    Args:
        config: `PrepareConfig`.

    Returns:
        The summary dict written into the dataset card (counts per source, skipped, captions, ...).

    Raises:
        ValueError: on bad options or input (naming the flag or file), before any output is written.
    """
    from .captions import read_captions_file
    from .card import publish, summarize

    config.check()
    captions_file = read_captions_file(config.captions_file) if config.captions_file else None  # fail early
    output = Path(config.output)
    state = output / STATE_DIR
    if _prepare_output(output, state, config):
        summary = json.loads((state / "summary.json").read_text())
        _print(config, f"{output}: already complete ({summary['rows']} examples); nothing to do.")
        return summary
    plan = _read_plan(state)
    num_shards = math.ceil(len(plan) / config.shard_size)
    todo = [i for i in range(num_shards) if not _shard_done(state, i)]
    if todo:
        _run_shards(config, state, plan, todo, captions_file)
    summary = summarize(config, state, num_shards)
    publish(config, output, state, summary)
    return summary


def plan_report(config):
    """What a run would take from each source (for --dry-run): enumerates, writes nothing."""
    from .sources import mix

    config.check()
    sources = [_enumerate(spec) for spec in config.sources]
    items, taken = mix(sources, config.seed, config.counts, config.weights)
    lines = [f"{len(items)} examples planned, {math.ceil(len(items) / config.shard_size)} shards"]
    for source in sources:
        lines.append(f"  {source.name}: {taken[source.name]} of {len(source.items)} paired — {source.description}")
        reasons = {}
        for problem in source.problems:
            reasons[problem["reason"]] = reasons.get(problem["reason"], 0) + 1
        lines += [f"    left out, {reason}: {count}" for reason, count in reasons.items()]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- plan and output folder


def _prepare_output(output, state, config):
    """Check the output folder and make the plan. Returns True when the folder is already complete."""
    fingerprint = config.fingerprint()
    saved = state / "config.json"
    if saved.is_file():
        previous = json.loads(saved.read_text())
        if previous["fingerprint"] == fingerprint and not config.overwrite:
            return (state / "summary.json").is_file() and (output / "data").is_dir()
        if not config.overwrite:
            raise ValueError(
                f"{output}: was prepared with other options (fingerprint {previous['fingerprint']}, now "
                f"{fingerprint}); use --overwrite to replace it, or another --output."
            )
        _clear(output, state)
    elif output.exists() and any(output.iterdir()):
        leftovers = {p.name for p in output.iterdir()} - {STATE_DIR}
        if leftovers:
            raise ValueError(f"{output}: exists, is not empty and was not written by `photobg prepare`.")
    _make_plan(config, state, fingerprint)
    return False


def _clear(output, state):
    """Remove a previous result but keep the caption cache (captions do not depend on the options)."""
    shutil.rmtree(output / "data", ignore_errors=True)
    (output / "README.md").unlink(missing_ok=True)
    for path in state.iterdir() if state.is_dir() else ():
        if path.name != "captions.jsonl":
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def _make_plan(config, state, fingerprint):
    from .sources import mix

    sources = [_enumerate(spec) for spec in config.sources]
    items, taken = mix(sources, config.seed, config.counts, config.weights)
    if not items:
        problems = [f"{p['file']}: {p['reason']}" for s in sources for p in s.problems]
        shown = "; ".join(problems[:5]) + (f"; ... ({len(problems)} in all)" if len(problems) > 5 else "")
        raise ValueError(f"The sources hold no usable example ({shown or 'nothing found'}).")
    state.mkdir(parents=True, exist_ok=True)
    (state / "shards").mkdir(exist_ok=True)
    write_atomic(state / "plan.jsonl", "".join(json.dumps(item) + "\n" for item in items), fsync=True)
    report = [
        {
            "name": s.name,
            "kind": s.kind,
            "description": s.description,
            "found": len(s.items),
            "taken": taken[s.name],
            "problems": s.problems,
        }
        for s in sources
    ]
    write_atomic(state / "sources.json", json.dumps(report, indent=1), fsync=True)
    record = {"fingerprint": fingerprint, "config": asdict(config), "examples": len(items)}
    write_atomic(state / "config.json", json.dumps(record, indent=1), fsync=True)  # last: marks the plan complete


def _enumerate(spec):
    from .coco import coco_source
    from .sources import cutout_source, folder_source, layout_source

    if spec.kind == "layout":
        return layout_source(spec.name, spec.path, spec.layout)
    if spec.kind == "images":
        return folder_source(spec.name, spec.images, spec.masks)
    if spec.kind == "cutouts":
        return cutout_source(spec.name, spec.path)
    if spec.kind == "coco":
        return coco_source(
            spec.name,
            spec.coco,
            spec.coco_images,
            spec.coco_captions,
            spec.coco_mode,
            spec.coco_min_area,
            spec.coco_max_area,
        )
    raise ValueError(f"Unknown source kind {spec.kind!r}.")


def _read_plan(state):
    with open(state / "plan.jsonl") as f:
        return [json.loads(line) for line in f]


def _shard_done(state, index):
    return (state / "shards" / f"{index:05d}.json").is_file()


# ----------------------------------------------------------------------------- shards


def _run_shards(config, state, plan, todo, captions_file):
    """Process the shards in `todo`: workers decode the next shard while this process captions and writes."""
    import functools
    import multiprocessing

    from tqdm.auto import tqdm

    from .examples import process_item

    options = ProcessOptions(config.max_side, config.max_short_side, config.mask_mismatch)
    work = functools.partial(process_item, options=options)
    shards = [(i, plan[i * config.shard_size : (i + 1) * config.shard_size]) for i in todo]
    # The pool is started before the captioning model is loaded, so workers never inherit it.
    pool = multiprocessing.get_context().Pool(config.num_proc) if config.num_proc > 1 else None
    try:
        captions = _CaptionSource(config, state, captions_file)
        bar = tqdm(
            total=sum(len(items) for _, items in shards), desc="preparing", unit="img", disable=not config.progress
        )
        submit = (lambda items: pool.imap(work, items, chunksize=4)) if pool else (lambda items: map(work, items))
        pending = submit(shards[0][1])
        for k, (index, items) in enumerate(shards):
            results, pending = pending, submit(shards[k + 1][1]) if k + 1 < len(shards) else None
            rows, skipped = [], []
            for result in results:
                (rows if "image" in result else skipped).append(result)
                bar.update(1)
            by_id = {item["id"]: item for item in items}
            origins = captions.fill(rows, by_id)
            _write_shard(state, index, rows, skipped, origins)
        bar.close()
    finally:
        if pool:
            pool.terminate()


class _CaptionSource:
    """Gives each row its `text` (see captions.py for the order) and says where it came from."""

    def __init__(self, config, state, captions_file):
        from .captions import Captioner

        self.config = config
        self.file = captions_file
        self.model = None
        if config.caption_model:
            self.model = Captioner(
                config.caption_model,
                state / "captions.jsonl",
                device=config.device,
                dtype=config.dtype,
                batch_size=config.caption_batch_size,
                max_new_tokens=config.caption_max_tokens,
                prompt=config.caption_prompt,
            )
        self.bar = None

    def fill(self, rows, items):
        """Set `row["text"]` for every row; returns the caption origins ("file", "coco", "model", "none")."""
        import io

        import PIL.Image

        from .captions import apply_template, choose_caption, lookup

        origins, need_model = [], []
        for i, row in enumerate(rows):
            item = items[row["id"]]
            candidates = lookup(self.file, item) if self.file else None
            origin = "file"
            if candidates is None and item.get("captions"):
                candidates, origin = item["captions"], "coco"
            if candidates is None:
                candidates, origin = [], "model" if self.model else "none"
                if self.model:
                    need_model.append(i)
            row["text"] = choose_caption(candidates, row["id"], self.config.seed)
            origins.append(origin)
        if need_model:
            if self.bar is None:
                from tqdm.auto import tqdm

                self.bar = tqdm(desc="captioning", unit="img", disable=not self.config.progress)
            images = [PIL.Image.open(io.BytesIO(rows[i]["image"])).convert("RGB") for i in need_model]
            keys = [self.model.key(items[rows[i]["id"]]) for i in need_model]
            for i, text in zip(need_model, self.model(images, keys, progress=self.bar)):
                rows[i]["text"] = text
        for row in rows:
            row["text"] = apply_template(row["text"], self.config.caption_template, items[row["id"]])
        return origins


def _write_shard(state, index, rows, skipped, origins):
    """Write one shard's parquet and report, each to a temporary name first, then rename (parquet first)."""
    import datasets

    from .card import FEATURES

    shard_dir = state / "shards"
    parquet = shard_dir / f"{index:05d}.parquet"
    if rows:
        columns = {
            "image": [{"bytes": r["image"], "path": None} for r in rows],
            "conditioning_image": [{"bytes": r["mask"], "path": None} for r in rows],
            "text": [r["text"] for r in rows],
            "source": [r["source"] for r in rows],
            "id": [r["id"] for r in rows],
            "width": [r["width"] for r in rows],
            "height": [r["height"] for r in rows],
        }
        was_enabled = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()
        try:
            with atomic_path(parquet) as tmp:
                datasets.Dataset.from_dict(columns, features=FEATURES).to_parquet(str(tmp))
        finally:
            if was_enabled:
                datasets.enable_progress_bars()
    report = {
        "index": index,
        "rows": len(rows),
        "ids": [r["id"] for r in rows],
        "sources": [r["source"] for r in rows],
        "texts": [r["text"] for r in rows],
        "origins": origins,
        "notes": [{"source": r["source"], "file": r["file"], "note": n} for r in rows for n in r["notes"]],
        "skipped": skipped,
    }
    write_atomic(shard_dir / f"{index:05d}.json", json.dumps(report), fsync=True)


def _print(config, message):
    if config.progress:
        print(message)
