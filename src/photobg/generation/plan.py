"""Planning a `photobg generate` run: its inputs (photos, masks, prompts), the flat list of outputs it makes
(`OutputJob`: photo x prompt x image, each with its seed and file) and their model calls (`plan_batches`).

An output is named by its photo, prompt, settings and seed (`output_name`), so that runs into one folder add up;
every process of a multi-process run plans the same list, which decides each process's share.
"""

import sys
from dataclasses import dataclass
from pathlib import Path

from ..manifest import settings_key, sha256_of

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")


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


def collect_inputs(specs):
    """Input files from paths, folders (their image files, sorted) and globs; outputs must not collide."""
    import glob
    from collections import defaultdict

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
        check_writable(folder)
    except OSError as err:
        raise SystemExit(f"--output-dir {folder}: cannot write there ({err.strerror or err}).") from None
    return folder


def check_writable(folder):
    """Create and remove a file in `folder`; raises `OSError` when that fails (no folder, no permission)."""
    import tempfile

    with tempfile.TemporaryFile(dir=folder):
        pass


@dataclass
class OutputJob:
    """One output image: the photo, its mask file (if any), the prompt and seed (`api.Job`), and its file."""

    photo: Path
    mask: Path | None
    job: object
    output: Path


def plan_outputs(inputs, masks, prompts, settings, output_dir, files, mask=None):
    """The flat list of outputs, photo by photo, then prompt by prompt, then image by image. Every process of a
    run plans the same list: its order decides each process's share and the order of the manifest.

    Args:
        inputs: photo paths; masks: {stem: mask path} (from --masks); prompts: list of str.
        settings: the checked `GenerationSettings` (num_images, seed, and what `settings_key` reads);
        output_dir: the output folder; files: the run's `FileHashes`; mask: the --mask file (one photo).

    Returns:
        list of `OutputJob`.
    """
    from ..api import make_jobs

    jobs = make_jobs(prompts, settings.num_images, settings.seed)
    keys = {}  # (prompt, whether a mask is given) -> its settings key
    outputs = []
    for photo in inputs:
        mask_file = Path(mask) if mask else masks.get(photo.stem)
        for job in jobs:
            if (job.prompt, mask_file is None) not in keys:
                keys[job.prompt, mask_file is None] = settings_key(settings, job.prompt, mask_file is not None, files)
            name = output_name(photo.stem, job, keys[job.prompt, mask_file is None])
            outputs.append(OutputJob(photo, mask_file, job, output_dir / name))
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


def by_photo(outputs):
    """{photo: its outputs}, in the order of `outputs`."""
    groups = {}
    for item in outputs:
        groups.setdefault(item.photo, []).append(item)
    return groups


def canvas_of(photo, settings):
    """The canvas size of a photo's outputs (`masks.canvas_size` of --size / --aspect), from its header: the pixels
    are not decoded. None when the photo cannot be read (it fails later, with the reason)."""
    from PIL import Image

    from ..masks import canvas_size

    try:
        with Image.open(photo) as image:
            size = image.size
            if image.getexif().get(0x0112) in (5, 6, 7, 8):  # EXIF orientations that turn it a quarter turn
                size = size[::-1]
        return canvas_size(size, settings.size, settings.aspect)
    except Exception:
        return None


def grid_path(group):
    """STEM_compare_KEY.png: KEY (8 hex digits) hashes the names of the grid's outputs, so that runs with other
    prompts or settings write other grids."""
    names = " ".join(item.output.name for item in group)
    return group[0].output.with_name(f"{group[0].photo.stem}_compare_{sha256_of(names)[:8]}.png")


def legacy_grid_path(group):
    """The grid's name before issue 19 (STEM_compare.png), which `--skip-existing` still reads."""
    return group[0].output.with_name(f"{group[0].photo.stem}_compare.png")


def may_have_alpha(path):
    """Whether a photo's header shows an alpha channel or transparency (the pixels are not decoded); True when
    it cannot be read, so that the reason is reported with the photo."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return bool({"A", "a"} & set(image.getbands())) or "transparency" in image.info
    except Exception:
        return True
