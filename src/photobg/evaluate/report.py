"""The evaluation report people read: `report/` with a Markdown results table (the paper's layout: one row per
model, one column per metric), a CSV with one row per image, metrics.json, a bar chart of object expansion per
model, a grid of the worst cases, and the exact command and package versions.
"""

import csv
import json
import math
import platform
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import PIL.Image

from .runner import INPUT_ROW

# (summary key, column header, formatter); the arrows say which direction is better.
COLUMNS = (
    ("expansion_mean", "Expansion ↓ (mean)", lambda v: f"{100 * v:.2f}%"),
    ("expansion_median", "Expansion (median)", lambda v: f"{100 * v:.2f}%"),
    ("expanded_share", "Expanded images ↓", lambda v: f"{100 * v:.1f}%"),
    ("area_change_mean", "Area change (signed)", lambda v: f"{100 * v:+.2f}%"),
    ("iou_mean", "IoU ↑", lambda v: f"{v:.3f}"),
    ("lost_mean", "Object lost ↓", lambda v: f"{100 * v:.2f}%"),
    ("fid", "FID ↓", lambda v: f"{v:.2f}"),
    ("clip_score", "CLIP score ↑", lambda v: f"{v:.2f}"),
    ("lpips_diversity", "LPIPS diversity ↑", lambda v: f"{v:.3f}"),
)
CSV_FIELDS = ("model", "id", "seed", "prompt", "expansion", "area_change", "iou", "lost", "input_area", "output_area")
CSV_FIELDS += ("clip_score", "output", "mask")
VERSIONED = ("photobg", "torch", "diffusers", "transformers", "accelerate", "torchmetrics", "datasets", "numpy")
VERSIONED += ("Pillow", "scipy", "matplotlib", "torch-fidelity", "torchvision", "transparent-background")


def write_report(results, benchmark, output_dir, description, command, worst=6):
    """Write `output_dir/report/`.

    Args:
        results: what `runner.run_evaluation` returned.
        benchmark: the `Benchmark` evaluated (the worst-case grid shows its photos and masks).
        output_dir: the evaluation's output folder (paths in `results` are relative to it).
        description: dict of what was run (benchmark, seeds, steps, segmenter, tolerance, ...), listed as is.
        command: the command line that produced it.
        worst: how many worst cases the grid shows.

    Returns:
        The report folder.
    """
    output_dir = Path(output_dir)
    folder = output_dir / "report"
    folder.mkdir(parents=True, exist_ok=True)
    environment = collect_environment()
    write_csv(results["rows"], folder / "per_image.csv")
    (folder / "metrics.json").write_text(
        json.dumps({"summary": results["summary"], "run": description, "environment": environment}, indent=1)
    )
    (folder / "command.txt").write_text(command + "\n")
    plot_expansion(results["summary"], folder / "expansion.png", description.get("tolerance"))
    model_names = [name for name in results["summary"] if name != INPUT_ROW]
    cases = worst_cases(results["rows"], model_names, worst)
    if cases:
        samples = {sample_id: k for k, sample_id in enumerate(benchmark.ids)}
        load_sample = lambda sample_id: benchmark[samples[sample_id]]  # noqa: E731
        plot_worst_cases(cases, results["rows"], model_names, output_dir, folder / "worst_cases.png", load_sample)
    (folder / "results.md").write_text(markdown(results, description, command, environment, bool(cases)))
    return folder


def write_csv(rows, path):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(row.get(k, "")) for k in CSV_FIELDS})


def _csv_value(value):
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)  # repr: exact round trip
    return value


def results_table(summary, baseline=None):
    """The Markdown table: one row per model, one column per metric (columns nobody computed are left out)."""
    columns = [c for c in COLUMNS if any(_number(v.get(c[0])) for v in summary.values())]
    if baseline:
        columns.append(("expansion_vs_baseline", f"× less expansion than {baseline}", lambda v: f"{v:.2f}×"))
    lines = ["| Model | " + " | ".join(c[1] for c in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, values in summary.items():
        cells = [fmt(values[key]) if _number(values.get(key)) else "–" for key, _, fmt in columns]
        label = f"*{name}* (segmenter vs given mask)" if name == INPUT_ROW else name
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _number(value):
    return isinstance(value, (int, float)) and not math.isnan(value)


def markdown(results, description, command, environment, has_grid):
    summary, baseline = results["summary"], results["baseline"]
    n = next(iter(summary.values()))["n"]
    lines = ["# photobg evaluation", "", results_table(summary, baseline), ""]
    lines += [
        f"Expansion = area(m_o ∪ m_i) − area(m_i) as a share of the image (the paper's metric), over {n} images "
        "per model (samples × seeds); m_i = the input object mask, m_o = the object the segmenter finds in the "
        "generated image, both binarised at 128. Area change = area(m_o) − area(m_i) (the original notebook's "
        "signed form). Object lost = area(m_i \\ m_o) / area(m_i). Expanded images = share with expansion above "
        f"{100 * description['tolerance']:g}% of the image. The *{INPUT_ROW}* row runs the segmenter on the input "
        "photos themselves: its expansion is the measurement's error floor, not a model's.",
        "",
    ]
    if _number(next((v.get("fid") for v in summary.values() if "fid" in v), math.nan)):
        lines += [
            "FID over fewer than a few thousand images is biased and only comparable between rows of one report.",
            "",
        ]
    lines += ["![Object expansion per model](expansion.png)", ""]
    if has_grid:
        lines += [
            "Worst cases (largest expansion over all models): input | object mask | each model's output, with the "
            "input object's outline in green, the segmented object's outline in red, and yellow where they agree.",
            "",
            "![Worst cases](worst_cases.png)",
            "",
        ]
    lines += ["## Run", ""] + [f"- {key}: {value}" for key, value in description.items()]
    if results["skipped"]:
        skipped = ", ".join(f"{i} ({reason})" for i, reason in results["skipped"][:20])
        lines.append(f"- skipped samples ({len(results['skipped'])}): {skipped}")
    lines += [f"- note: {note}" for note in results["notes"]]
    lines += ["", "Command:", "", "```", command, "```", "", "## Environment", ""]
    lines += [f"- {key}: {value}" for key, value in environment.items()]
    lines += ["", "Per-image values: `per_image.csv`; all aggregates: `metrics.json`.", ""]
    return "\n".join(lines)


def collect_environment():
    """Python, platform, accelerator and the versions of the packages that shape the numbers."""
    import torch

    environment = {"python": sys.version.split()[0], "platform": platform.platform()}
    environment["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    for package in VERSIONED:
        try:
            environment[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return environment


# ----------------------------------------------------------------------------- figures


def plot_expansion(summary, path, tolerance=None):
    """Bar chart: mean expansion per model (% of the image), 95% interval of the mean, median as a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    means = np.array([100 * summary[n]["expansion_mean"] for n in names])
    medians = np.array([100 * summary[n]["expansion_median"] for n in names])
    # 95% interval of the mean under a normal approximation.
    errors = np.array([100 * 1.96 * summary[n]["expansion_std"] / math.sqrt(max(summary[n]["n"], 1)) for n in names])
    colors = ["#bbbbbb" if n == INPUT_ROW else f"C{k}" for k, n in enumerate(names)]
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2.5, 4), dpi=120)
    x = np.arange(len(names))
    ax.bar(x, means, yerr=errors, color=colors, capsize=4, label="mean (95% interval)")
    ax.plot(x, medians, "ko", label="median")
    for k, mean in enumerate(means):
        ax.annotate(
            f"{mean:.2f}%",
            (x[k], mean + errors[k]),
            ha="center",
            va="bottom",
            fontsize=9,
            xytext=(0, 2),
            textcoords="offset points",
        )
    if tolerance:
        ax.axhline(100 * tolerance, color="gray", linestyle=":", linewidth=1, label=f"tolerance {100 * tolerance:g}%")
    ax.set_xticks(x, [f"{n}\n(segmenter floor)" if n == INPUT_ROW else n for n in names], fontsize=9)
    ax.set_ylabel("object expansion (% of the image)")
    ax.set_title("Object expansion per model (lower is better)")
    ax.set_ylim(0, max(1e-3, float(np.max(means + errors)) * 1.25))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def worst_cases(rows, model_names, count):
    """The (id, seed) pairs with the largest expansion of any model, worst first, one seed per sample."""
    worst = {}
    for row in rows:
        if row["model"] in model_names:
            key = (row["id"], row["seed"])
            worst[key] = max(worst.get(key, -1.0), row["expansion"])
    chosen, seen = [], set()
    for (sample_id, seed), _ in sorted(worst.items(), key=lambda item: -item[1]):
        if sample_id not in seen:
            chosen.append((sample_id, seed))
            seen.add(sample_id)
        if len(chosen) == count:
            break
    return chosen


def plot_worst_cases(cases, rows, model_names, output_dir, path, load_sample):
    """Grid: one row per case: input | object mask | each model's output with the two outlines drawn.

    Args:
        cases: (sample id, seed) pairs, from `worst_cases`.
        rows: the per-image rows of the evaluation.
        model_names: the models, in column order.
        output_dir: the folder the rows' paths are relative to.
        path: the PNG to write.
        load_sample: `load_sample(sample_id) -> Sample`, for the input photo and mask.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..masks import load_image

    by_key = {(r["model"], r["id"], r["seed"]): r for r in rows}
    columns = 2 + len(model_names)
    first = load_sample(cases[0][0]).image
    cell_height = 2.4 * first.height / first.width + 0.5  # inches: the image plus two title lines
    figsize = (2.4 * columns, cell_height * len(cases))
    fig, axes = plt.subplots(len(cases), columns, figsize=figsize, dpi=120, squeeze=False)
    for r, (sample_id, seed) in enumerate(cases):
        sample = load_sample(sample_id)
        object_mask = sample.object_mask
        panels = [(sample.image, f"{sample_id}\ninput"), (object_mask, "object mask")]
        for name in model_names:
            row = by_key[(name, sample_id, seed)]
            output = load_image(output_dir / row["output"]).convert("RGB")
            drawn = draw_outlines(output, object_mask, load_image(output_dir / row["mask"]))
            panels.append((drawn, f"{name}\nexpansion {100 * row['expansion']:.1f}%"))
        for c, (image, title) in enumerate(panels):
            axes[r, c].imshow(
                image, cmap="gray" if image.mode == "L" else None, vmin=0, vmax=255, interpolation="nearest"
            )
            axes[r, c].set_title(title, fontsize=8)
            axes[r, c].axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def draw_outlines(image, object_mask, output_mask):
    """`image` with the input object's outline in green, the segmented object's in red, yellow where they meet."""
    from scipy import ndimage

    from .metrics import binarize

    width = max(1, round(min(image.size) / 160))  # about 3 px at 512 px

    def outline(mask):
        binary = binarize(mask)
        edge = binary & ~ndimage.binary_erosion(binary, border_value=0)
        return ndimage.binary_dilation(edge, iterations=width - 1) if width > 1 else edge

    given, found = outline(object_mask), outline(output_mask)
    array = np.asarray(image.convert("RGB")).copy()
    array[given] = (0, 220, 0)
    array[found] = (255, 0, 0)
    array[given & found] = (255, 230, 0)
    return PIL.Image.fromarray(array)
