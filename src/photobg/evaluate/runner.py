"""An evaluation from start to end: generate (resumable), segment, score. `photobg evaluate` calls `run_evaluation`.

Output folder layout:
    generated/MODEL/ID_sSEED.png      generated images (one folder per model spec; settings.json records how)
    segmented/SEGMENTER/MODEL/...     the object masks m_o found in them (and input/ for the input photos)
    report/                           results.md, per_image.csv, metrics.json, expansion.png, worst_cases.png
"""

import functools
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from ..conventions import object_coverage_problem
from ..files import atomic_path, write_atomic
from .metrics import aggregate, expansion_metrics

INPUT_ROW = "input photos"  # the segmenter's own error: input photos segmented and compared with their masks


@dataclass
class EvalSettings:
    """How every model is run and scored (the same for all rows of a report)."""

    seeds: list = field(default_factory=lambda: [0])
    steps: int = 20
    guidance: float = 7.5
    tolerance: float = 0.01
    device: str | None = None
    dtype: str | None = None


def generate_image(pipe, sample, spec, seed, steps, guidance):
    """THE generation call of the evaluation: the pipeline's object mode, like `photobg generate`; a spec's recipe
    replaces `steps` and `guidance` (`ModelSpec.sampling`)."""
    import torch

    return pipe(
        sample.prompt,
        image=sample.image,
        object_mask=sample.object_mask,
        **spec.sampling(steps, guidance),
        controlnet_conditioning_scale=spec.scale,
        generator=torch.Generator("cpu").manual_seed(seed),
    ).images[0]


def sample_problem(benchmark, index):
    """Why sample `index` cannot be evaluated (an unreadable file, a mask that does not fit its photo, an empty or
    full object mask), or None when it can. Such a sample is skipped and listed, as `photobg generate` skips a
    photo."""
    try:
        sample = benchmark[index]
    except ValueError as err:  # the reader's message names the file (or row) and what is wrong
        return str(err)
    problem = object_coverage_problem(sample.object_mask)
    return {"empty": "empty object mask", "full": "object mask covers the whole image"}.get(problem)


def output_name(file_name, seed):
    return f"{file_name}_s{seed}.png"


def check_settings(folder, settings, what, record=True):
    """Check that a resumed run uses the settings in `folder/settings.json`, and record them there.

    Settings count only once the folder holds what they describe (a PNG, at any depth): those left by a run that
    made nothing are replaced.

    Args:
        folder: the output folder; settings: JSON-able dict; what: how messages name the folder's files.
        record: write the settings now; False leaves it to `record_settings`, called with the first file.

    Raises:
        ValueError: the folder holds files made with other settings.
    """
    path = folder / "settings.json"
    if path.exists() and any(folder.rglob("*.png")):
        saved = json.loads(path.read_text())
        if saved != settings:
            changed = sorted(k for k in settings.keys() | saved.keys() if saved.get(k) != settings.get(k))
            raise ValueError(
                f"{folder} holds {what} made with other settings ({', '.join(changed)}: {saved} vs now {settings}). "
                "Use another --output-dir, give the model another name (@name=...), or delete that folder."
            )
        return
    if record:
        record_settings(folder, settings)


def record_settings(folder, settings):
    """Write `folder/settings.json` (creating the folder), atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / "settings.json", json.dumps(settings, indent=1), per_process=True)  # every process writes it


def save_atomically(image, path):
    # A run killed mid-write must not leave a file that a resumed run takes as done.
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


class PipelineCache:
    """Holds the last loaded pipeline, so that models differing only in ControlNet scale (SI2 and ours share
    one model) load it once; a model needing other weights releases it first, so one is in memory at a time."""

    def __init__(self, settings):
        self.settings, self.key, self.pipe = settings, None, None

    def get(self, spec):
        from ..models.adapters import load_loras
        from ..models.loading import load_pipeline

        scheduler, options = spec.scheduler_choice()
        key = (spec.model, spec.controlnet, scheduler, str(options), spec.lora)
        if key != self.key:
            self.release()
            s = self.settings
            self.pipe = load_pipeline(
                spec.model,
                spec.controlnet,
                device=s.device,
                dtype=s.dtype,
                scheduler=scheduler,
                scheduler_options=options,
            )
            load_loras(self.pipe, [spec.lora] if spec.lora else [])
            self.pipe.set_progress_bar_config(disable=True)
            self.key = key
        return self.pipe

    def release(self):
        from ..models.loading import free_device_memory

        self.key = self.pipe = None
        free_device_memory()


def generate_outputs(benchmark, indices, spec, output_dir, settings, pipelines, processes):
    """Generate the missing outputs of one model (skipping existing files), each process its share of them; the
    pipeline (from `pipelines`, a `PipelineCache`) loads only if needed."""
    folder = Path(output_dir) / "generated" / spec.folder_name
    sampling = spec.sampling(settings.steps, settings.guidance)
    run_settings = {
        **spec.generation_settings(),
        "steps": sampling.pop("num_inference_steps"),
        "guidance": sampling.pop("guidance_scale"),
        **sampling,  # a recipe's timesteps and eta
        "benchmark": str(benchmark.path.resolve()),
        "resolution": benchmark.resolution,
    }
    check_settings(folder, run_settings, "generated images", record=False)  # recorded with the first image
    names = benchmark.file_names
    todo = [(i, s) for i in indices for s in settings.seeds if not (folder / output_name(names[i], s)).exists()]
    processes.barrier()  # every process has listed what is missing before any writes
    if not todo:
        return
    with processes.main_first():  # a download (or a test model written to the cache) happens once
        pipe = pipelines.get(spec)
    mine = processes.share(todo)
    sample = None
    for i, seed in tqdm(mine, desc=f"generate {spec.name}", unit="image", disable=not processes.is_main):
        sample = sample if sample is not None and sample.id == benchmark.ids[i] else benchmark[i]
        image = generate_image(pipe, sample, spec, seed, settings.steps, settings.guidance)
        if (i, seed) == mine[0]:
            record_settings(folder, run_settings)
        save_atomically(image, folder / output_name(names[i], seed))


def segmented_mask(segmenter, path, load_image_fn, object_mask, key):
    """The object mask at `path`, segmenting (and saving) it first if it is not there yet."""
    from ..masks import load_image
    from ..segment import segment_image

    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        save_atomically(segment_image(segmenter, load_image_fn(), object_mask=object_mask, key=key), path)
    return load_image(path)


def run_evaluation(
    benchmark, specs, output_dir, settings, segmenter, segmenter_settings, quality=None, baseline=None, processes=None
):
    """Generate, segment and score every model on the benchmark.

    Args:
        benchmark: a `Benchmark`.
        specs: list of `ModelSpec`.
        output_dir: output folder (see the module docstring).
        settings: `EvalSettings`.
        segmenter: the segmenter finding `m_o` in generated images.
        segmenter_settings: dict naming the segmenter and its options (recorded; a change re-segments).
        quality: optional `QualityMetrics` (FID, CLIP score, LPIPS), already loaded.
        baseline: name of the model whose expansion the others are compared with (default: the first spec with
            scale 0, if any).
        processes: the run's `distributed.Processes` (default: this process alone). Each process generates,
            segments and scores its share of the samples; the rows come back together in sample order and FID and
            CLIP score sum their statistics over the processes (torchmetrics' distributed sync), so every process
            returns what one process would.

    Returns:
        dict with `rows` (one per model, sample and seed, plus the input-photo rows), `summary` (per model name),
        `skipped` ((id, reason) pairs), `baseline`, `notes`.
    """
    from ..distributed import Processes

    processes = processes or Processes()
    output_dir = Path(output_dir)
    check_models(specs)
    checked = [
        (i, sample_problem(benchmark, i))
        for i in tqdm(processes.share(range(len(benchmark))), desc="check samples", disable=not processes.is_main)
    ]
    checked = processes.gather(checked)
    indices = [i for i, reason in checked if not reason]
    skipped = [(benchmark.ids[i], reason) for i, reason in checked if reason]
    for sample_id, reason in skipped if processes.is_main else []:
        tqdm.write(f"skipped {sample_id}: {reason}")
    if not indices:
        raise ValueError(f"{benchmark.path}: no usable sample: all {len(skipped)} were skipped (see above).")
    pipelines = PipelineCache(settings)
    for spec in specs:
        generate_outputs(benchmark, indices, spec, output_dir, settings, pipelines, processes)
    pipelines.release()

    masks_dir = output_dir / "segmented" / segmenter_settings["name"]
    processes.barrier()  # every image is generated, and every process has looked at the masks' settings
    if (
        processes.is_main
        and (masks_dir / "settings.json").exists()
        and json.loads((masks_dir / "settings.json").read_text()) != segmenter_settings
    ):
        print(f"Segmenter settings changed: re-segmenting into {masks_dir}.")
        shutil.rmtree(masks_dir)
    processes.barrier()
    check_settings(masks_dir, segmenter_settings, "masks")
    mine = processes.share(indices)
    input_rows, note = _input_rows(benchmark, mine, segmenter, segmenter_settings, masks_dir, output_dir, processes)
    input_rows, notes = processes.gather(input_rows), processes.gather([note] if note else [])
    input_rows = input_rows if not notes else []
    rows = []
    for spec in specs:
        rows += processes.gather(
            _model_rows(benchmark, mine, spec, output_dir, segmenter, masks_dir, settings, processes)
        )
    rows += input_rows

    summary = {}
    for name in [s.name for s in specs] + ([INPUT_ROW] if input_rows else []):
        summary[name] = aggregate([r for r in rows if r["model"] == name], settings.tolerance)
    if quality is not None:
        score_quality(quality, benchmark, indices, specs, rows, summary, output_dir, settings, processes)
    baseline = _pick_baseline(specs, baseline)
    for name, values in summary.items():
        # How many times less than the baseline a model expands (the paper's "3.6x less than SI2").
        base = summary[baseline]["expansion_mean"] if baseline and name != INPUT_ROW else math.nan
        values["expansion_vs_baseline"] = base / values["expansion_mean"] if values["expansion_mean"] > 0 else math.nan
    return {"rows": rows, "summary": summary, "skipped": skipped, "baseline": baseline, "notes": notes[:1]}


def check_models(specs):
    """Check every model spec (folder or Hub id, configs, ControlNet fit, scheduler) before anything is generated,
    so that a mistake in the last one does not wait for the first ones to finish.

    Raises:
        ValueError: naming the spec and what is wrong.
    """
    from ..backbones import detect_backbone
    from ..models.adapters import parse_lora
    from ..models.loading import check_model
    from ..settings import GenerationSettings

    names = {"recipe": "recipe", "model": "the model", "loras": "lora="}  # the spec's words
    for spec in specs:
        try:
            model, _, _ = check_model(spec.model, spec.controlnet, spec.scheduler_choice()[0])
            if spec.lora:
                parse_lora(spec.lora)
            # The generate command's recipe check: the backbone, and a warning when the recipe's LoRA is missing.
            recipe = GenerationSettings(model=spec.model, recipe=spec.recipe, loras=[spec.lora] if spec.lora else [])
            recipe.check_recipe(names, detect_backbone(model).name if spec.recipe else None)
        except (OSError, ValueError) as err:
            raise ValueError(f"--model {spec.name}: {err}") from err


def _pick_baseline(specs, baseline):
    if baseline is not None:
        if baseline not in [s.name for s in specs]:
            raise ValueError(f"--baseline {baseline!r} is not one of the models: {[s.name for s in specs]}.")
        return baseline
    return next((s.name for s in specs if s.scale == 0), None)


def _load_rgb(path):
    from ..masks import load_image

    return load_image(path).convert("RGB")


def _model_rows(benchmark, indices, spec, output_dir, segmenter, masks_dir, settings, processes):
    generated, masks = output_dir / "generated" / spec.folder_name, masks_dir / spec.folder_name
    rows = []
    for i in tqdm(indices, desc=f"segment + score {spec.name}", unit="sample", disable=not processes.is_main):
        sample = benchmark[i]
        for seed in settings.seeds:
            name = output_name(benchmark.file_names[i], seed)
            key = f"{spec.folder_name}/{Path(name).stem}"
            load = functools.partial(_load_rgb, generated / name)
            output_mask = segmented_mask(segmenter, masks / name, load, sample.object_mask, key)
            row = {"model": spec.name, "id": sample.id, "seed": seed, "prompt": sample.prompt}
            row.update(expansion_metrics(sample.object_mask, output_mask))
            row["output"] = str((generated / name).relative_to(output_dir))
            row["mask"] = str((masks / name).relative_to(output_dir))
            rows.append(row)
    return rows


def _input_rows(benchmark, indices, segmenter, segmenter_settings, masks_dir, output_dir, processes):
    """The segmenter run on the input photos themselves: the error floor of every expansion number. Returns (rows,
    None), or ([], a note) when the given masks do not cover the input photos."""
    rows = []
    for i in tqdm(indices, desc="segment + score input photos", unit="sample", disable=not processes.is_main):
        sample, name = benchmark[i], f"{benchmark.file_names[i]}.png"
        try:
            mask = segmented_mask(
                segmenter,
                masks_dir / "input" / name,
                lambda s=sample: s.image,
                sample.object_mask,
                f"input/{Path(name).stem}",
            )
        except ValueError as err:
            if segmenter_settings["name"] != "given-masks":
                raise
            return [], f"No '{INPUT_ROW}' row: the given masks do not cover the input photos ({err})."
        row = {"model": INPUT_ROW, "id": sample.id, "seed": "", "prompt": sample.prompt}
        row.update(expansion_metrics(sample.object_mask, mask))
        row["output"], row["mask"] = "", str((masks_dir / "input" / name).relative_to(output_dir))
        rows.append(row)
    return rows, None


# ----------------------------------------------------------------------------- FID, CLIP score, LPIPS


@dataclass
class QualityMetrics:
    """The loaded image-quality metrics of an evaluation; a metric left as None is not computed."""

    clip_score: object = None  # torchmetrics CLIPScore
    fid: object = None  # quality.FidScorer
    lpips: object = None  # distance(a, b) -> float
    fid_reference: str | None = None  # folder of reference images; None = the benchmark's input photos


def build_quality(metrics, fid_features="inception", clip_model=None, fid_reference=None, device=None):
    """Load the requested metrics now, so that a missing package or model fails before hours of generation.

    Args:
        metrics: names among "fid", "clip", "lpips" ("expansion" is always computed and ignored here).
        fid_features: "inception" or "clip" (CLIP image embeddings from `clip_model`).
        clip_model: Hub id or folder of the CLIP model (default `quality.DEFAULT_CLIP_MODEL`).
        fid_reference: folder of reference images for FID (default: the benchmark's input photos).
        device: torch device for the metrics.
    """
    from ..models.loading import resolve_device
    from . import quality

    device = resolve_device(device)
    clip = None
    if "clip" in metrics or ("fid" in metrics and fid_features == "clip"):
        clip = quality.load_clip(clip_model or quality.DEFAULT_CLIP_MODEL, device)
    if fid_reference is not None and not Path(fid_reference).is_dir():
        raise ValueError(f"--fid-reference {fid_reference}: not a folder of images.")
    return QualityMetrics(
        clip_score=quality.make_clip_score(clip) if "clip" in metrics else None,
        fid=quality.FidScorer(quality.make_fid(fid_features, clip), device) if "fid" in metrics else None,
        lpips=quality.make_lpips(device=device) if "lpips" in metrics else None,
        fid_reference=fid_reference,
    )


def score_quality(quality, benchmark, indices, specs, rows, summary, output_dir, settings, processes=None):
    """Add FID, CLIP score (also per image, into `rows`) and LPIPS diversity to each model's summary. Each process
    scores its share of the images; torchmetrics adds up the FID and CLIP statistics of all processes when it
    computes them, per-image scores and LPIPS distances come back together in order."""
    from ..distributed import Processes
    from . import quality as q
    from .data import IMAGE_SUFFIXES

    processes = processes or Processes()
    position = {sample_id: k for k, sample_id in enumerate(benchmark.ids)}

    def image_of(row):
        return (
            benchmark[position[row["id"]]].image if row["model"] == INPUT_ROW else _load_rgb(output_dir / row["output"])
        )

    def progress(items, what):
        return tqdm(items, desc=what, unit="image", disable=not processes.is_main)

    if quality.fid is not None:
        if quality.fid_reference:
            files = sorted(p for p in Path(quality.fid_reference).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            references = (_load_rgb(p) for p in processes.share(files))
        else:
            references = (benchmark[i].image for i in processes.share(indices))
        quality.fid.add_reference(progress(references, "FID reference features"))
        for spec in specs:
            mine = processes.share(r for r in rows if r["model"] == spec.name)
            summary[spec.name]["fid"] = quality.fid.score(progress(map(image_of, mine), f"FID {spec.name}"))
    if quality.clip_score is not None:
        for name in [s.name for s in specs] + [INPUT_ROW]:
            if name not in summary:
                continue
            model_rows = [r for r in rows if r["model"] == name]
            mine = processes.share(model_rows)
            images = progress(map(image_of, mine), f"CLIP score {name}")
            summary[name]["clip_score"], per_image = q.clip_scores(
                quality.clip_score, images, [r["prompt"] for r in mine]
            )
            for row, score in zip(model_rows, processes.gather(per_image), strict=True):
                row["clip_score"] = score
    if quality.lpips is not None:
        for spec in specs:
            folder = output_dir / "generated" / spec.folder_name
            per_sample = (
                [_load_rgb(folder / output_name(benchmark.file_names[i], seed)) for seed in settings.seeds]
                for i in processes.share(indices)
            )
            distances = processes.gather(q.lpips_per_input(per_sample, quality.lpips))
            summary[spec.name]["lpips_diversity"] = sum(distances) / len(distances) if distances else math.nan
