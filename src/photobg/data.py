"""Training data: load a `datasets` dataset, turn its examples into tensors, batch them.

An example is a photo (`image`), its object mask (`conditioning_image`, white = object) and a caption
(`text`, a string or a list of strings); the column names are flags of the training scripts. Photos and
masks are read by the rules inference uses (`masks.split_cutout`, `masks.as_object_mask`), so a mask file
means the same object in training as in `photobg generate`. The photo and its mask go through one shared
geometric transform (resize the short side, crop, optional flip), so they stay aligned; the tensors are made
by the same functions the pipeline uses at inference (`VaeImageProcessor` for the image,
`object_mask_to_tensor` for the mask).

Randomness (crop position, flip, empty prompt, choice among captions) is drawn from a generator seeded
by (seed, epoch, index): an example looks the same whichever worker or process loads it and whether or
not the run was resumed, which is what makes resuming exact.
"""

import io
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch

from .masks import OBJECT_THRESHOLD, as_object_mask, object_coverage_problem, object_mask_to_tensor, split_cutout
from .train_config import ConfigError

logger = logging.getLogger(__name__)

DATA_FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".jsonl": "json", ".json": "json", ".csv": "csv"}
# How many bad examples in a row `skip` steps over before it gives up: the data is then broken, not noisy.
MAX_CONSECUTIVE_BAD = 100


# What can be wrong with an example (`BadExample.kind`), as the run's summary of skipped examples names it.
BAD_KINDS = {
    "unreadable": "unreadable image",
    "size": "mask of another size than its image",
    "empty": "empty mask",
    "full": "mask covering the whole image",
    "caption": "caption that is not a string",
}


class BadExample(ValueError):
    """An example that cannot be used; `kind` (a key of `BAD_KINDS`) says why, for the run's summary."""

    def __init__(self, message, kind="unreadable"):
        super().__init__(message)
        self.kind = kind


def describe_bad(counts):
    """{kind: count} -> e.g. "mask covering the whole image: 3, unreadable image: 1"."""
    return ", ".join(f"{BAD_KINDS.get(kind, kind)}: {n}" for kind, n in sorted(counts.items(), key=lambda kv: -kv[1]))


# ----------------------------------------------------------------------------- loading


def load_train_dataset(
    dataset_name=None,
    dataset_config_name=None,
    train_data_dir=None,
    cache_dir=None,
    columns=("image", "conditioning_image", "text"),
    max_train_samples=None,
    seed=None,
):
    """Load the training split and check its columns.

    Args:
        dataset_name: a Hub dataset id, a local dataset folder (Hub layout, `save_to_disk` output or an
            image folder with a metadata file), or data files (`*.parquet`, `*.arrow`, `*.jsonl`, `*.csv`;
            globs allowed).
        dataset_config_name: the dataset's configuration, if it has several.
        train_data_dir: a local dataset folder (used when `dataset_name` is not given).
        cache_dir: where `datasets` keeps its cache.
        columns: (image, object mask, caption) column names, as given by the three column flags.
        max_train_samples: keep this many examples (a seeded shuffle first, as diffusers does).
        seed: the shuffle's seed.

    Returns:
        A `datasets.Dataset` whose image columns are left undecoded (decoding happens per example, so that
        an unreadable file is a bad example and not a crash of the loader).

    Raises:
        ConfigError: naming the flag, when the dataset is not there, has no training split or lacks a column.
    """
    import datasets

    source = dataset_name or train_data_dir
    flag = "--dataset_name" if dataset_name else "--train_data_dir"
    try:
        loaded = _load(source, dataset_config_name, cache_dir, local_only=dataset_name is None)
    except (FileNotFoundError, ConnectionError) as err:  # datasets' "not found" errors are FileNotFoundErrors
        raise ConfigError(f"{flag} {source!r}: {err}") from err
    dataset = _train_split(loaded, source, flag)
    check_columns(dataset.column_names, columns, source)
    image_column, mask_column, _ = columns
    for column in (image_column, mask_column):
        if isinstance(dataset.features[column], datasets.Image):
            dataset = dataset.cast_column(column, datasets.Image(decode=False))
    if max_train_samples is not None:
        dataset = dataset.shuffle(seed=seed).select(range(min(max_train_samples, len(dataset))))
    if len(dataset) == 0:
        raise ConfigError(f"{flag} {source!r}: the training split has no examples.")
    return dataset


def _load(source, config_name, cache_dir, local_only=False):
    import datasets

    path = os.path.expanduser(source)
    if os.path.isdir(path) and os.path.exists(os.path.join(path, "dataset_info.json")):
        return datasets.load_from_disk(path)  # a `save_to_disk` folder
    suffix = next((s for s in DATA_FILE_BUILDERS if path.endswith(s)), None)
    if suffix is not None:
        return datasets.load_dataset(DATA_FILE_BUILDERS[suffix], data_files=path, cache_dir=cache_dir)
    if (local_only or source.startswith(("/", ".", "~"))) and not os.path.exists(path):
        raise FileNotFoundError("no such folder")
    return datasets.load_dataset(path if os.path.isdir(path) else source, config_name, cache_dir=cache_dir)


def _train_split(loaded, source, flag):
    import datasets

    if isinstance(loaded, datasets.Dataset):
        return loaded
    if "train" in loaded:
        return loaded["train"]
    if len(loaded) == 1:
        return next(iter(loaded.values()))
    raise ConfigError(f"{flag} {source!r} has no 'train' split; its splits are: {', '.join(loaded)}.")


def check_columns(column_names, columns, source="the dataset"):
    """Raise a `ConfigError` naming the flag when a column is missing; it lists the columns that exist."""
    flags = ("--image_column", "--conditioning_image_column", "--caption_column")
    for flag, column in zip(flags, columns):
        if column not in column_names:
            raise ConfigError(
                f"{flag} {column!r}: no such column in {source!r}; its columns are: {', '.join(column_names)}."
            )


# ----------------------------------------------------------------------------- examples


def decode_image(value):
    """An undecoded `datasets.Image` value (dict with bytes/path), encoded bytes, a path or a PIL image -> the PIL
    image as stored (any mode), its EXIF orientation applied; raises `BadExample` saying what is wrong."""
    if isinstance(value, dict):
        value = value["bytes"] if value.get("bytes") else value.get("path")
    if isinstance(value, bytes):
        value = io.BytesIO(value)
    if value is None:
        raise BadExample("the image is missing")
    try:
        image = value if isinstance(value, PIL.Image.Image) else PIL.Image.open(value)
        image.load()
        return PIL.ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, PIL.Image.DecompressionBombError) as err:
        raise BadExample(f"not a readable image ({err})") from err


def read_photo(value):
    """A stored photo -> RGB PIL image, converted as inference converts photos (`masks.split_cutout`: 16-bit
    scaled, CMYK and palette converted; an alpha channel is not the object here, the mask column is)."""
    return split_cutout(decode_image(value))[0]


def read_object_mask(value):
    """A stored object mask -> "L" PIL image, white = object, by inference's one rule (`masks.as_object_mask`:
    transparency is the object, an opaque alpha is ignored, 0/1 label maps, 16-bit, palette and coloured masks)."""
    return as_object_mask(decode_image(value))


def resize(image, size):
    """The training side's one resampling rule, for photos and masks alike: area averaging when shrinking
    (Pillow's BOX filter, as OpenCV's INTER_AREA in the authors' training script), bilinear when enlarging
    (there is no area to average)."""
    size = tuple(size)
    if size == image.size:
        return image
    shrinking = size[0] * size[1] < image.width * image.height
    return image.resize(size, PIL.Image.BOX if shrinking else PIL.Image.BILINEAR)


def short_side_size(size, short_side):
    """(width, height) scaled so that the short side is `short_side`, the long side rounded, never below it."""
    scale = short_side / min(size)
    return max(short_side, round(size[0] * scale)), max(short_side, round(size[1] * scale))


@dataclass(frozen=True)
class Crop:
    """Where a training example lies in its photo: what SDXL's added time ids are made of (as in diffusers'
    SDXL training examples: the original size and the crop's top-left corner).

    Attributes:
        original_size: (width, height) of the photo as stored.
        resized_size: (width, height) after resizing its short side.
        box: (left, top, right, bottom) of the crop in the resized photo (before any flip).
        flipped: whether the crop was then mirrored horizontally.
    """

    original_size: tuple
    resized_size: tuple
    box: tuple
    flipped: bool

    @property
    def top_left(self):
        """(top, left) of the crop in the resized photo as the model sees it: after a flip, the left edge is
        measured from the mirrored side (diffusers' examples use `width - left`, which is off by the crop's width)."""
        left, top, right, _ = self.box
        return top, self.resized_size[0] - right if self.flipped else left

    def as_tensor(self):
        """(4,) int64: original height and width, crop top and left; what a batch carries for SDXL's time ids."""
        width, height = self.original_size
        return torch.tensor([height, width, *self.top_left], dtype=torch.int64)


def crop_box(size, resolution, rng, center_crop):
    """(left, top, right, bottom) of a `resolution` square in an image of `size` = (w, h) whose short side is
    at least `resolution`: centred, or at a random position drawn from `rng`."""
    width, height = size
    if center_crop:
        left, top = (width - resolution) // 2, (height - resolution) // 2
    else:
        left, top = int(rng.integers(0, width - resolution + 1)), int(rng.integers(0, height - resolution + 1))
    return left, top, left + resolution, top + resolution


def transform_pair(image, object_mask, resolution, rng, center_crop=False, random_flip=False, short_side=None):
    """The geometric transform shared by a photo and its object mask.

    Resizes the short side to `short_side` (by `resize`'s rule), crops a `resolution` square (random or
    centred) and, with `random_flip`, flips both horizontally half the time. The authors' recipe is
    `short_side` = 1.5 x `resolution` (768 for 512 crops): the crop then sees two thirds of the short side.

    Args:
        image, object_mask: PIL images of one size.
        resolution: the crop's side.
        rng: numpy generator for the crop position and the flip.
        center_crop, random_flip: as the training flags.
        short_side: the short side before cropping, >= `resolution` (default: `resolution`, i.e. the crop
            spans the whole short side).

    Returns:
        (RGB PIL image, "L" PIL object mask, `Crop`), both images `resolution` x `resolution`.
    """
    original_size = image.size
    size = short_side_size(image.size, short_side or resolution)
    image, object_mask = resize(image, size), resize(object_mask, size)
    box = crop_box(size, resolution, rng, center_crop)
    image, object_mask = image.crop(box), object_mask.crop(box)
    flipped = bool(random_flip and rng.random() < 0.5)
    if flipped:
        image, object_mask = PIL.ImageOps.mirror(image), PIL.ImageOps.mirror(object_mask)
    return image, object_mask, Crop(original_size, size, box, flipped)


def image_to_tensor(image):
    """RGB PIL image -> (3, H, W) float tensor in [-1, 1], exactly as the pipeline's `VaeImageProcessor` does."""
    from diffusers.image_processor import VaeImageProcessor

    array = VaeImageProcessor.pil_to_numpy(image)  # (1, H, W, 3) in [0, 1]
    return VaeImageProcessor.normalize(VaeImageProcessor.numpy_to_pt(array))[0]


def pick_caption(caption, rng, proportion_empty_prompts):
    """The caption to train on: empty with probability `proportion_empty_prompts`, else the caption (one drawn
    at random from a list)."""
    if caption is None:
        caption = ""
    if not isinstance(caption, (str, list, tuple, np.ndarray)):
        raise BadExample(f"the caption is a {type(caption).__name__}, not a string or a list of strings", "caption")
    if rng.random() < proportion_empty_prompts:
        return ""
    if isinstance(caption, str):
        return caption
    return str(caption[int(rng.integers(len(caption)))]) if len(caption) else ""


class TrainExamples(torch.utils.data.Dataset):
    """Examples of a `datasets.Dataset` as training tensors.

    Item `i` is a dict: `pixel_values` (3, R, R) in [-1, 1], `object_mask` (1, R, R) in [0, 1] (white =
    object), `crop` (`Crop.as_tensor()`: original size and crop corner, SDXL's time ids), `caption` (str),
    `name` (the example's id, file or index, for messages), `row` (the dataset row
    used: `i`, or the one that replaced it) and `bad` (why example `i` itself could not be used, a key of
    `BAD_KINDS`, or ""). A bad example is named in a warning and replaced by
    the next good one (`bad_examples="skip"`), or raises `BadExample` naming it (`"fail"`); when no good one is
    left (the whole dataset, or `MAX_CONSECUTIVE_BAD` in a row), `BadExample` says so and counts them by kind.

    Set `epoch` before each epoch: the example's random transform is drawn from (seed, epoch, index).
    """

    def __init__(
        self,
        dataset,
        columns=("image", "conditioning_image", "text"),
        resolution=512,
        center_crop=False,
        random_flip=False,
        proportion_empty_prompts=0.0,
        seed=0,
        bad_examples="skip",
        resize_short_side=None,
    ):
        self.dataset = dataset
        self.image_column, self.mask_column, self.caption_column = columns
        self.resolution = resolution
        self.resize_short_side = resize_short_side
        self.center_crop = center_crop
        self.random_flip = random_flip
        self.proportion_empty_prompts = proportion_empty_prompts
        self.seed = seed
        self.bad_examples = bad_examples
        self.epoch = 0

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        tries = min(MAX_CONSECUTIVE_BAD, len(self.dataset))
        kinds, own_kind = Counter(), ""
        for offset in range(tries):
            k = (index + offset) % len(self.dataset)
            row = self.dataset[k]
            try:
                item = self.load(row, k)
            except BadExample as err:
                message = f"Bad training example {self.name(row, k)}: {err}"
                if self.bad_examples == "fail":
                    raise BadExample(f"{message} (--bad_examples skip would skip it)", err.kind) from err
                logger.warning("%s; skipped.", message)
                kinds[err.kind] += 1
                if offset == 0:
                    own_kind = err.kind
                continue
            item["bad"] = own_kind
            return item
        if tries == len(self.dataset):
            raise BadExample(f"No usable training example: all {tries} are bad ({describe_bad(kinds)}).")
        raise BadExample(
            f"{tries} bad training examples in a row from index {index} ({describe_bad(kinds)}): the data looks "
            "broken rather than noisy; stopping."
        )

    def name(self, row, index):
        """How messages name an example: its id, else its image file, else its index."""
        if row.get("id"):
            return f"{row['id']!r} (index {index})"
        value = row.get(self.image_column)
        if isinstance(value, dict) and value.get("path"):
            return f"{value['path']!r} (index {index})"
        return f"at index {index}"

    def load(self, row, index):
        """One row -> training tensors; raises `BadExample` saying what is wrong."""
        rng = np.random.default_rng([self.seed, self.epoch, index])
        image = read_photo(row[self.image_column])
        object_mask = read_object_mask(row[self.mask_column])
        if object_mask.size != image.size:
            raise BadExample(f"its object mask is {object_mask.size} but its image is {image.size}", "size")
        # The rule of `photobg prepare` and of inference: a mask must leave something to keep and to generate.
        problem = object_coverage_problem(object_mask)
        if problem == "empty":
            raise BadExample(f"its object mask is empty (no pixel >= {OBJECT_THRESHOLD})", "empty")
        if problem == "full":
            raise BadExample("its object mask covers the whole image (no background to learn)", "full")
        caption = pick_caption(row[self.caption_column], rng, self.proportion_empty_prompts)
        image, object_mask, crop = transform_pair(
            image,
            object_mask,
            self.resolution,
            rng,
            center_crop=self.center_crop,
            random_flip=self.random_flip,
            short_side=self.resize_short_side,
        )
        return {
            "pixel_values": image_to_tensor(image),
            "object_mask": object_mask_to_tensor(object_mask, object_mask.size)[0],
            "crop": crop.as_tensor(),
            "caption": caption,
            "name": self.name(row, index),
            "row": index,
        }


class EpochSampler(torch.utils.data.Sampler):
    """A permutation of the dataset drawn from (seed, epoch): the same in every process and after a resume.

    Set `epoch` before each epoch (deliberately not `set_epoch`, so that accelerate's own epoch counter,
    which restarts on a resumed dataloader, cannot change it).
    """

    def __init__(self, length, seed, shuffle=True):
        self.length = length
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def __len__(self):
        return self.length

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.length))
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.length, generator=generator).tolist())


class Collate:
    """Stack examples into a batch; with a `tokenizer`, tokenize the captions too (`input_ids`, padded to the
    tokenizer's length). Training passes none: the pipeline's own `encode_conditioning` tokenizes."""

    def __init__(self, tokenizer=None):
        self.tokenizer = tokenizer

    def __call__(self, examples):
        batch = {
            "names": [e["name"] for e in examples],
            "captions": [e["caption"] for e in examples],
            "rows": [e["row"] for e in examples],
            "bad": [e["bad"] for e in examples],  # why an example was replaced, counted by the training loop
        }
        for key in examples[0]:
            if isinstance(examples[0][key], torch.Tensor):
                batch[key] = torch.stack([e[key] for e in examples]).contiguous()
        if self.tokenizer is not None and "prompt_embeds" not in batch:
            batch["input_ids"] = tokenize(self.tokenizer, batch["captions"])
        return batch


def tokenize(tokenizer, captions):
    """Captions -> (B, model_max_length) token ids, padded and truncated as the pipeline's `encode_prompt` does."""
    return tokenizer(
        list(captions),
        max_length=tokenizer.model_max_length,
        padding="max_length",
        truncation=True,
        return_tensors="pt",
    ).input_ids


def uint8_to_pixels(pixels_uint8):
    """(B, 3, H, W) uint8 -> float in [-1, 1], the same arithmetic as `image_to_tensor`."""
    return 2.0 * (pixels_uint8.to(torch.float32) / 255.0) - 1.0


# ----------------------------------------------------------------------------- latent cache


class CachedExamples(torch.utils.data.Dataset):
    """Examples encoded once (`--cache_latents`): per example the arrays returned by an `encode` function,
    kept in memory-mapped `.npy` files (one set per process share), the dataset row they came from and why the
    example was replaced if it was bad (a JSON file per share), plus the caption drawn per epoch when prompts
    are not fixed. The crop and flip of each example are those of epoch 0."""

    def __init__(self, examples, parts, sources, bounds, fixed_prompts):
        self.examples = examples
        self.captions = examples.dataset.select_columns([examples.caption_column])
        self.parts = parts  # [{key: memmap (count, ...)}] per process share
        self.sources = sources  # [(row, bad)] per example, over all shares
        self.bounds = bounds  # share k holds indices bounds[k] .. bounds[k + 1] - 1
        self.fixed_prompts = fixed_prompts
        self.epoch = 0

    @classmethod
    def build(
        cls,
        examples,
        folder,
        encode,
        process_index,
        num_processes,
        barrier,
        batch_size,
        collate,
        fixed_prompts,
        num_workers=0,
    ):
        """Encode this process's share of `examples` into `folder` (unless already there), wait for the
        others, then open every share."""
        from tqdm.auto import tqdm

        folder = Path(folder)
        bounds = [len(examples) * k // num_processes for k in range(num_processes + 1)]
        done = folder / f"done-{process_index}-of-{num_processes}"
        if not done.exists():
            folder.mkdir(parents=True, exist_ok=True)
            examples.epoch = 0
            share = torch.utils.data.Subset(examples, range(bounds[process_index], bounds[process_index + 1]))
            loader = torch.utils.data.DataLoader(
                share, batch_size=batch_size, collate_fn=collate, num_workers=num_workers
            )
            arrays, sources, row = {}, [], 0
            for batch in tqdm(loader, desc="Caching latents", disable=process_index != 0):
                for key, tensor in encode(batch).items():
                    if key not in arrays:
                        arrays[key] = np.lib.format.open_memmap(
                            folder / f"part-{process_index}-of-{num_processes}-{key}.npy",
                            mode="w+",
                            dtype=_numpy_dtype(tensor),
                            shape=(len(share), *tensor.shape[1:]),
                        )
                    arrays[key][row : row + len(tensor)] = (
                        tensor.float().numpy() if tensor.is_floating_point() else tensor.numpy()
                    )
                sources += zip(batch["rows"], batch["bad"])
                row += len(batch["names"])
            for array in arrays.values():
                array.flush()
            (folder / f"sources-{process_index}-of-{num_processes}.json").write_text(json.dumps(sources))
            done.touch()
        barrier()
        parts, sources = [], []
        for k in range(num_processes):
            prefix = f"part-{k}-of-{num_processes}-"  # shares of another process count are other files
            files = sorted(folder.glob(f"{prefix}*.npy"))
            parts.append({f.stem[len(prefix) :]: np.load(f, mmap_mode="r") for f in files})
            sources += json.loads((folder / f"sources-{k}-of-{num_processes}.json").read_text())
        return cls(examples, parts, sources, bounds, fixed_prompts)

    def __len__(self):
        return self.bounds[-1]

    def __getitem__(self, index):
        k = next(k for k in range(len(self.parts)) if index < self.bounds[k + 1])
        item = {key: torch.from_numpy(np.array(array[index - self.bounds[k]])) for key, array in self.parts[k].items()}
        row, item["bad"] = self.sources[index]
        # The caption of the row the cached pixels came from, drawn as `TrainExamples` draws it for that row.
        rng = np.random.default_rng([self.examples.seed, self.epoch, row])
        caption = self.captions[row][self.examples.caption_column]
        item["caption"] = (
            "" if self.fixed_prompts else pick_caption(caption, rng, self.examples.proportion_empty_prompts)
        )
        item["name"], item["row"] = f"at index {row}", row
        return item


def _numpy_dtype(tensor):
    """uint8 stays uint8, fp16 stays fp16; fp32 and bf16 (which numpy lacks) are stored as fp32 (exact)."""
    return {torch.uint8: np.uint8, torch.float16: np.float16}.get(tensor.dtype, np.float32)


# ----------------------------------------------------------------------------- synthetic data


SHAPES = ("ellipse", "rectangle", "triangle")
COLOURS = {"red": (200, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 200), "yellow": (220, 200, 40)}


def draw_example(width, height, rng):
    """A drawn photo: a noisy gradient background with one coloured shape (the object) and its mask.

    Returns:
        (RGB PIL image, "L" object mask, caption).
    """
    import PIL.ImageDraw

    yy, xx = np.mgrid[0:height, 0:width]
    tint = rng.uniform(60, 200, 3)
    background = tint * (0.6 + 0.4 * (xx / width))[..., None] + rng.normal(0, 12, (height, width, 3))
    photo = PIL.Image.fromarray(np.clip(background, 0, 255).astype(np.uint8))
    object_mask = PIL.Image.new("L", (width, height), 0)
    shape, colour = SHAPES[rng.integers(len(SHAPES))], list(COLOURS)[rng.integers(len(COLOURS))]
    w, h = rng.uniform(0.3, 0.6) * width, rng.uniform(0.3, 0.6) * height
    x0, y0 = rng.uniform(0, width - w), rng.uniform(0, height - h)
    box = [x0, y0, x0 + w, y0 + h]
    for canvas, fill in ((PIL.ImageDraw.Draw(photo), COLOURS[colour]), (PIL.ImageDraw.Draw(object_mask), 255)):
        if shape == "ellipse":
            canvas.ellipse(box, fill=fill)
        elif shape == "rectangle":
            canvas.rectangle(box, fill=fill)
        else:
            canvas.polygon([(x0 + w / 2, y0), (x0, y0 + h), (x0 + w, y0 + h)], fill=fill)
    return photo, object_mask, f"a {colour} {shape} on a plain background"


def training_set_features():
    """The columns of photobg's training-set format, written by `photobg prepare` and read by training and
    evaluation: the photo (RGB), its object mask (L, white = object), the caption, where it came from, its id
    and its size."""
    import datasets

    return datasets.Features(
        {
            "image": datasets.Image(mode="RGB"),
            "conditioning_image": datasets.Image(mode="L"),
            "text": datasets.Value("string"),
            "source": datasets.Value("string"),
            "id": datasets.Value("string"),
            "width": datasets.Value("int32"),
            "height": datasets.Value("int32"),
        }
    )


def write_synthetic_dataset(path, num_examples=16, size=(64, 64), seed=0, shards=1):
    """Write a training set of drawn shapes in photobg's training-set format (parquet in `path/data/`).

    Columns: `image`, `conditioning_image` (object mask, white = object), `text`, `source`, `id`,
    `width`, `height`. `datasets.load_dataset(path)` reads it.

    Returns:
        `path` as a `Path`.
    """
    import datasets

    rng = np.random.default_rng(seed)
    rows = {k: [] for k in ("image", "conditioning_image", "text", "source", "id", "width", "height")}
    for k in range(num_examples):
        photo, object_mask, caption = draw_example(*size, rng)
        rows["image"].append(photo)
        rows["conditioning_image"].append(object_mask)
        rows["text"].append(caption)
        rows["source"].append("synthetic")
        rows["id"].append(f"synthetic-{k:05d}")
        rows["width"].append(size[0])
        rows["height"].append(size[1])
    dataset = datasets.Dataset.from_dict(rows, features=training_set_features())
    path = Path(path)
    (path / "data").mkdir(parents=True, exist_ok=True)
    for k in range(shards):
        dataset.shard(shards, k, contiguous=True).to_parquet(
            str(path / "data" / f"train-{k:05d}-of-{shards:05d}.parquet")
        )
    card = (
        "---\nlicense: cc0-1.0\npretty_name: synthetic shapes\n---\n# Synthetic shapes\n\nDrawn shapes on gradients.\n"
    )
    (path / "README.md").write_text(card)
    return path
