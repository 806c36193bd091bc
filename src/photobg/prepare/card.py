"""The output's schema, the run summary, the dataset card (README.md), and publishing the finished shards."""

import json
import os
from pathlib import Path

from .. import __version__
from ..data import training_set_features
from ..files import write_atomic

FEATURES = training_set_features()
LISTED_FILES = 20  # files named per reason in the card; all of them are in .prepare/skipped.jsonl


def summarize(config, state, num_shards):
    """Gather the sources' and shards' reports into one summary dict."""
    sources = json.loads((state / "sources.json").read_text())
    shards = [json.loads((state / "shards" / f"{i:05d}.json").read_text()) for i in range(num_shards)]
    ids = [i for shard in shards for i in shard["ids"]]
    if len(set(ids)) != len(ids):
        raise RuntimeError(f"{state}: duplicate example ids across shards; remove the folder and run again.")
    skipped = [p for s in sources for p in s["problems"]] + [p for shard in shards for p in shard["skipped"]]
    written = {}
    for shard in shards:
        for name in shard["sources"]:
            written[name] = written.get(name, 0) + 1
    texts = [t for shard in shards for t in shard["texts"]]
    origins = [o for shard in shards for o in shard["origins"]]
    words = [len(t.split()) for t in texts if t]
    return {
        "rows": len(ids),
        "shards": [shard["index"] for shard in shards if shard["rows"]],
        "sources": [
            {
                **{k: s[k] for k in ("name", "kind", "description", "found", "taken")},
                "written": written.get(s["name"], 0),
                "left_out": sum(p["source"] == s["name"] for p in skipped),
            }
            for s in sources
        ],
        "skipped": _group(skipped, "reason"),
        "skipped_files": skipped,
        "notes": _group([n for shard in shards for n in shard["notes"]], "note"),
        "captions": {
            "origins": {o: origins.count(o) for o in ("file", "coco", "model", "none") if o in origins},
            "empty": sum(not t for t in texts),
            "words_mean": round(sum(words) / len(words), 2) if words else 0,
            "words_min": min(words, default=0),
            "words_max": max(words, default=0),
            "examples": [t for t in texts if t][:5],
        },
    }


def _group(records, key):
    groups = {}
    for record in records:
        group = groups.setdefault(record[key], {"count": 0, "files": []})
        group["count"] += 1
        if len(group["files"]) < LISTED_FILES:
            group["files"].append(record["file"])
    return dict(sorted(groups.items(), key=lambda kv: -kv[1]["count"]))


def publish(config, output, state, summary):
    """Move the finished shards into DIR/data in one rename, write the card, and mark the run complete."""
    if summary["rows"] == 0:
        raise ValueError(f"{output}: every example was left out; see {state / 'skipped.jsonl'} and the messages above.")
    data = output / "data"
    write_atomic(state / "skipped.jsonl", "".join(json.dumps(p) + "\n" for p in summary["skipped_files"]), fsync=True)
    if not data.is_dir():
        staging = state / "data"
        staging.mkdir(exist_ok=True)
        count = len(summary["shards"])
        for k, index in enumerate(summary["shards"]):
            shard = state / "shards" / f"{index:05d}.parquet"
            if shard.is_file():  # else already moved by an interrupted publish
                os.replace(shard, staging / f"train-{k:05d}-of-{count:05d}.parquet")
        os.replace(staging, data)
    write_atomic(output / "README.md", dataset_card(config, summary), fsync=True)
    public = {k: v for k, v in summary.items() if k != "skipped_files"}
    write_atomic(state / "summary.json", json.dumps(public, indent=1), fsync=True)  # last: marks the run complete
    _report(config, output, summary)


def dataset_card(config, summary):
    """The README.md of the prepared folder: YAML header for `datasets`, then what is in it and why."""
    import yaml

    header = {
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}],
        "task_categories": ["image-to-image"],
        "tags": ["photobg", "salient-object", "controlnet", "inpainting"],
        "size_categories": [_size_category(summary["rows"])],
    }
    lines = [
        "---",
        yaml.safe_dump(header, sort_keys=False).strip(),
        "---",
        "",
        "# photobg training set",
        "",
        f"Made by `photobg prepare` (photobg {__version__}): {summary['rows']} examples in "
        f"{len(summary['shards'])} parquet shard(s) under `data/`; "
        'load it with `datasets.load_dataset("<this folder>")`.',
        "",
        'Columns: `image` (RGB), `conditioning_image` (the object mask, "L", white 255 = object, binarised at 128 '
        "where needed), `text` (the caption, may be empty), `source`, `id` (`source/path-without-extension`, or "
        "`coco/<image id>`), `width`, `height`.",
        "",
        "## Sources",
        "",
        "| source | kind | paired | taken | written | left out | from |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for s in summary["sources"]:
        lines.append(
            f"| {s['name']} | {s['kind']} | {s['found']} | {s['taken']} | {s['written']} | {s['left_out']} "
            f"| {s['description']} |"
        )
    lines += [
        "",
        "`paired`: examples found with their mask (or annotation); `taken`: after --count/--weight; `left out`: "
        "files that could not be paired plus examples dropped by the checks (see Left out).",
        "",
        "## Captions",
        "",
        *_caption_lines(config, summary["captions"], summary["rows"]),
        "",
        "## Processing",
        "",
        *_processing_lines(config),
        "",
        "## Left out",
        "",
        *_grouped_lines(summary["skipped"], "nothing was left out."),
        "",
        "## Converted on the way",
        "",
        *_grouped_lines(summary["notes"], "nothing needed converting."),
        "",
    ]
    return "\n".join(lines)


def _caption_lines(config, captions, rows):
    meaning = {
        "file": f"the captions file `{config.captions_file}`",
        "coco": "COCO captions",
        "model": f"the captioning model `{config.caption_model}`",
        "none": "no caption source (empty)",
    }
    lines = [f"- {count} from {meaning[origin]}" for origin, count in captions["origins"].items()]
    lines += [
        f"- empty captions: {captions['empty']} of {rows}",
        f"- words per non-empty caption: mean {captions['words_mean']}, min {captions['words_min']}, "
        f"max {captions['words_max']}",
        f"- template: `{config.caption_template}`"
        + (f", model prompt: `{config.caption_prompt}`" if config.caption_prompt else ""),
    ]
    lines += [f'- e.g. "{text}"' for text in captions["examples"][:3]]
    return lines


def _processing_lines(config):
    sizes = []
    if config.max_side:
        sizes.append(f"long side <= {config.max_side}")
    if config.max_short_side:
        sizes.append(f"short side <= {config.max_short_side}")
    return [
        f"- seed {config.seed} (order, --count/--weight subsets, caption choice), {config.shard_size} planned "
        "examples per shard",
        f"- counts: {config.counts or 'all'}; weights: {config.weights or 'none'}",
        "- resized: " + (" and ".join(sizes) + " (Lanczos; masks bilinear, same size)" if sizes else "no"),
        f"- masks of another size than their image: {config.mask_mismatch} when the aspect ratio matches "
        "within 1%, else left out",
        "- images kept byte-for-byte when they needed no change; others re-encoded (JPEG q95 from JPEG, else PNG)",
    ]


def _grouped_lines(groups, nothing):
    if not groups:
        return [nothing]
    lines = [f"| reason | count | files (first {LISTED_FILES}; all in `.prepare/skipped.jsonl`) |", "|---|---:|---|"]
    for reason, group in groups.items():
        files = ", ".join(f"`{Path(f).name}`" for f in group["files"])
        lines.append(f"| {reason} | {group['count']} | {files} |")
    return lines


def _size_category(rows):
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if rows < limit:
            return name
    return "1M<n<10M"


def _report(config, output, summary):
    if not config.progress:
        return
    print(f"Wrote {summary['rows']} examples in {len(summary['shards'])} shard(s) to {output / 'data'}")
    for s in summary["sources"]:
        print(f"  {s['name']}: {s['written']} written of {s['found']} paired ({s['left_out']} left out)")
    for reason, group in summary["skipped"].items():
        print(f"  left out, {reason}: {group['count']} (e.g. {group['files'][0]})")
    captions = summary["captions"]
    print(f"  captions: {captions['origins']}, {captions['empty']} empty")
    print(f"Dataset card: {output / 'README.md'}; every left-out file: {output / '.prepare' / 'skipped.jsonl'}")
