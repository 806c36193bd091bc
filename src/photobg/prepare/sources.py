"""Finding examples on disk: salient-object datasets in their published layouts, image/mask folder pairs and
RGBA cutouts, and mixing several sources into one ordered list.

An example here is a small dict of file paths (`image`, `mask`, ...) plus its `source` and `id`; nothing is
opened. Pairing problems (an image without a mask, ...) come back as `problems` naming the file.
"""

import os
import random
from dataclasses import dataclass
from pathlib import Path

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class Layout:
    """A dataset's published folder layout: (image folder, mask folder) candidates relative to the folder
    given on the command line, tried in order; the first whose folders exist is used. A mask folder of None
    means images (.jpg) and masks (.png) lie side by side. Training splits come first, so pointing at a
    dataset's root picks its training split; point at a test split's own folder to use that instead."""

    name: str
    title: str
    pairs: tuple


LAYOUTS = {
    layout.name: layout
    for layout in (
        Layout(
            "duts",
            "DUTS",
            (
                ("DUTS-TR-Image", "DUTS-TR-Mask"),
                ("DUTS-TE-Image", "DUTS-TE-Mask"),
                ("DUTS-TR/DUTS-TR-Image", "DUTS-TR/DUTS-TR-Mask"),
            ),
        ),
        Layout("dis5k", "DIS5K", (("im", "gt"), ("DIS-TR/im", "DIS-TR/gt"), ("DIS5K/DIS-TR/im", "DIS5K/DIS-TR/gt"))),
        Layout(
            "hrsod",
            "HRSOD",
            (
                ("HRSOD_train", "HRSOD_train_mask"),
                ("HRSOD_release/HRSOD_train", "HRSOD_release/HRSOD_train_mask"),
                ("HRSOD_test", "HRSOD_test_mask"),
            ),
        ),
        Layout("msra", "MSRA-10K / MSRA-B", (("Imgs", None), ("MSRA10K_Imgs_GT/Imgs", None), (".", None))),
        Layout("ecssd", "ECSSD", (("images", "ground_truth_mask"), ("ECSSD/images", "ECSSD/ground_truth_mask"))),
        Layout("hkuis", "HKU-IS", (("imgs", "gt"), ("HKU-IS/imgs", "HKU-IS/gt"))),
    )
}
LAYOUT_ALIASES = {"msra10k": "msra", "msra-10k": "msra", "msra-b": "msra", "msrab": "msra", "hku-is": "hkuis"}


@dataclass
class Source:
    """One input source, enumerated: its examples (dicts) and the files it could not pair."""

    name: str
    kind: str
    description: str
    items: list
    problems: list


def layout_pair(folder, layout):
    """The (image folder, mask folder or None) that `layout` finds in `folder`, or None."""
    folder = Path(folder)
    for image_dir, mask_dir in layout.pairs:
        if mask_dir is None:
            side = folder / image_dir
            if side.is_dir() and (image_dir != "." or _has_side_by_side_pairs(side)):
                return side, None
        elif (folder / image_dir).is_dir() and (folder / mask_dir).is_dir():
            return folder / image_dir, folder / mask_dir
    return None


def detect_layout(folder):
    """The name of the one known layout that `folder` matches.

    Raises:
        ValueError: naming the folder, when it is missing or matches no layout or several.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such folder.")
    found = [name for name, layout in LAYOUTS.items() if layout_pair(folder, layout)]
    if len(found) == 1:
        return found[0]
    if found:
        raise ValueError(f"{folder}: matches several layouts ({', '.join(found)}); name one with --layout.")
    expected = "; ".join(f"{layout.title}: {_describe_pairs(layout)}" for layout in LAYOUTS.values())
    raise ValueError(f"{folder}: no known dataset layout. Expected one of — {expected}. Or use --images/--masks.")


def layout_source(name, folder, layout_name=None):
    """Enumerate a salient-object dataset folder in its published layout (detected when not named)."""
    layout_name = LAYOUT_ALIASES.get(layout_name, layout_name) or detect_layout(folder)
    if layout_name not in LAYOUTS:
        raise ValueError(f"Unknown layout {layout_name!r}; choose one of: {', '.join(LAYOUTS)}.")
    layout = LAYOUTS[layout_name]
    pair = layout_pair(folder, layout)
    if pair is None:
        raise ValueError(f"{folder}: not in the {layout.title} layout (expected {_describe_pairs(layout)}).")
    image_dir, mask_dir = pair
    if mask_dir is None:
        items, problems = pair_side_by_side(name, image_dir)
        description = f"{layout.title} layout: images and .png masks in {image_dir}"
    else:
        items, problems = pair_folders(name, image_dir, mask_dir)
        description = f"{layout.title} layout: images {image_dir}, masks {mask_dir}"
    return Source(name, layout_name, description, items, problems)


def folder_source(name, image_dir, mask_dir):
    """Enumerate a generic pair of folders: images and masks matched by their path without extension."""
    items, problems = pair_folders(name, Path(image_dir), Path(mask_dir))
    return Source(name, "images", f"images {image_dir}, masks {mask_dir} (matched by file stem)", items, problems)


def cutout_source(name, folder):
    """Enumerate a folder of RGBA cutouts: each image's alpha channel is its object mask."""
    files, problems = _index(name, Path(folder))
    items = [_item(name, key, paths[0], None, alpha=True) for key, paths in files.items()]
    return Source(name, "cutouts", f"RGBA cutouts in {folder} (alpha = object mask)", items, _sorted(problems))


def pair_folders(name, image_dir, mask_dir):
    """Match images and masks by their path (relative to their folder) without extension.

    Returns:
        (items, problems): problems name each image without a mask, mask without an image, and stem that
        several files share (those are all left out: which one is meant is unknown).
    """
    images, problems = _index(name, image_dir)
    masks, mask_problems = _index(name, mask_dir)
    problems += mask_problems
    duplicates = {p["key"] for p in problems}
    items = []
    for key, paths in images.items():
        if key in masks:
            items.append(_item(name, key, paths[0], masks[key][0]))
        elif key not in duplicates:
            problems.append(_problem(name, paths[0], "image without a mask"))
    for key, paths in masks.items():
        if key not in images and key not in duplicates:
            problems.append(_problem(name, paths[0], "mask without an image"))
    return items, _sorted(problems)


def pair_side_by_side(name, folder):
    """Pair images with the .png masks next to them (MSRA-10K, MSRA-B): `a.jpg` + `a.png`."""
    files, problems = _index(name, folder, allow_shared_stems=True)
    items = []
    for key, paths in files.items():
        masks = [p for p in paths if p.suffix.lower() == ".png"]
        images = [p for p in paths if p.suffix.lower() != ".png"]
        if len(images) > 1 or len(masks) > 1:
            problems.append(_problem(name, paths[0], "duplicate stem", ", ".join(p.name for p in paths)))
        elif not masks:
            problems.append(_problem(name, images[0], "image without a mask"))
        elif not images:
            problems.append(_problem(name, masks[0], "mask without an image"))
        else:
            items.append(_item(name, key, images[0], masks[0]))
    return items, _sorted(problems)


def mix(sources, seed, counts=None, weights=None):
    """Combine sources into one deterministic, shuffled list of examples.

    Args:
        sources: list of `Source`.
        seed: the shuffle and subsampling seed.
        counts: {source name: N}: take N examples of that source (a random subset; all if it has fewer).
        weights: {source name: W}: take W times the source's examples: W < 1 a random subset, W > 1 every
            example floor(W) times plus a random fraction (repeats get ids ending in `~r1`, `~r2`, ...).

    Returns:
        (items, taken): the shuffled examples and {source name: number taken}.
    """
    counts, weights = counts or {}, weights or {}
    unknown = sorted((set(counts) | set(weights)) - {s.name for s in sources})
    if unknown:
        names = ", ".join(s.name for s in sources)
        raise ValueError(f"--count/--weight name unknown sources {unknown}; the sources are: {names}.")
    mixed, taken = [], {}
    for source in sources:
        rng = random.Random(f"{seed}:{source.name}")
        items = sorted(source.items, key=lambda item: item["id"])
        if source.name in counts:
            chosen = sorted(rng.sample(range(len(items)), min(counts[source.name], len(items))))
            items = [items[i] for i in chosen]
        elif source.name in weights:
            items = _repeat(items, weights[source.name], rng)
        taken[source.name] = len(items)
        mixed += items
    random.Random(seed).shuffle(mixed)
    return mixed, taken


def _repeat(items, weight, rng):
    whole, fraction = int(weight), weight - int(weight)
    out = [item if r == 0 else {**item, "id": f"{item['id']}~r{r}"} for r in range(whole) for item in items]
    extra = sorted(rng.sample(range(len(items)), round(fraction * len(items))))
    return out + [items[i] if whole == 0 else {**items[i], "id": f"{items[i]['id']}~r{whole}"} for i in extra]


def _index(name, folder, allow_shared_stems=False):
    """{path without extension, relative to `folder`: [files]} for the image files under `folder`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such folder.")
    files = {}
    for root, dirs, filenames in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for filename in sorted(filenames):
            path = Path(root) / filename
            if not filename.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS:
                files.setdefault(path.relative_to(folder).with_suffix("").as_posix(), []).append(path)
    if not files:
        raise ValueError(f"{folder}: holds no image files ({', '.join(IMAGE_EXTENSIONS)}).")
    problems = []
    if not allow_shared_stems:
        for key in [k for k, paths in files.items() if len(paths) > 1]:
            paths = files.pop(key)
            problems.append(
                {**_problem(name, paths[0], "duplicate stem", ", ".join(p.name for p in paths)), "key": key}
            )
    return files, problems


def _has_side_by_side_pairs(folder):
    stems = {}
    for path in folder.iterdir():
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            stems.setdefault(path.stem, set()).add(path.suffix.lower() == ".png")
    return any(len(kinds) == 2 for kinds in stems.values())


def _describe_pairs(layout):
    return " or ".join(f"{i}/ + {m}/" if m else f"{i}/ with .jpg + .png side by side" for i, m in layout.pairs)


def _item(source, key, image, mask, **extra):
    return {"source": source, "id": f"{source}/{key}", "image": str(image), "mask": mask and str(mask), **extra}


def _sorted(problems):
    return sorted(({k: v for k, v in p.items() if k != "key"} for p in problems), key=lambda p: p["file"])


def _problem(source, path, reason, detail=""):
    return {"source": source, "file": str(path), "reason": reason, "detail": detail}
