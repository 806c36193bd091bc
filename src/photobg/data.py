"""Training data: load a `datasets` dataset, turn its examples into tensors, batch them.

An example is a photo (`image`), its object mask (`conditioning_image`, white = object) and a caption
(`text`, a string or a list of strings); the column names are flags of the training scripts. The photo
and its mask go through one shared geometric transform (resize the short side, crop, optional flip), so
they stay aligned; the tensors are made by the same functions the pipeline uses at inference
(`VaeImageProcessor` for the image, `object_mask_to_tensor` for the mask).

Randomness (crop position, flip, empty prompt, choice among captions) is drawn from a generator seeded
by (seed, epoch, index): an example looks the same whichever worker or process loads it and whether or
not the run was resumed, which is what makes resuming exact.
"""

import io
import logging
import os
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch

from .pipeline_controlnet_inpaint import OBJECT_THRESHOLD, object_mask_to_tensor

logger = logging.getLogger(__name__)

DATA_FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".jsonl": "json", ".json": "json", ".csv": "csv"}
# How many bad examples in a row `skip` steps over before it gives up: the data is then broken, not noisy.
MAX_CONSECUTIVE_BAD = 100


class BadExample(ValueError):
    """An example that cannot be used (unreadable image, mask of another size, empty mask)."""


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
    """
    import datasets

    source = dataset_name or train_data_dir
    flag = "--dataset_name" if dataset_name else "--train_data_dir"
    try:
        loaded = _load(source, dataset_config_name, cache_dir)
    except FileNotFoundError as err:
        raise ValueError(f"{flag} {source!r}: {err}") from err
    dataset = _train_split(loaded, source, flag)
    check_columns(dataset.column_names, columns, source)
    image_column, mask_column, _ = columns
    for column in (image_column, mask_column):
        if isinstance(dataset.features[column], datasets.Image):
            dataset = dataset.cast_column(column, datasets.Image(decode=False))
    if max_train_samples is not None:
        dataset = dataset.shuffle(seed=seed).select(range(min(max_train_samples, len(dataset))))
    if len(dataset) == 0:
        raise ValueError(f"{flag} {source!r}: the training split has no examples.")
    return dataset


def _load(source, config_name, cache_dir):
    import datasets

    path = os.path.expanduser(source)
    if os.path.isdir(path) and os.path.exists(os.path.join(path, "dataset_info.json")):
        return datasets.load_from_disk(path)  # a `save_to_disk` folder
    suffix = next((s for s in DATA_FILE_BUILDERS if path.endswith(s)), None)
    if suffix is not None:
        return datasets.load_dataset(DATA_FILE_BUILDERS[suffix], data_files=path, cache_dir=cache_dir)
    if source.startswith(("/", ".", "~")) and not os.path.exists(path):
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
    raise ValueError(f"{flag} {source!r} has no 'train' split; its splits are: {', '.join(loaded)}.")


def check_columns(column_names, columns, source="the dataset"):
    """Raise a `ValueError` naming the flag when a column is missing; it lists the columns that exist."""
    flags = ("--image_column", "--conditioning_image_column", "--caption_column")
    for flag, column in zip(flags, columns):
        if column not in column_names:
            raise ValueError(
                f"{flag} {column!r}: no such column in {source!r}; its columns are: {', '.join(column_names)}."
            )


# ----------------------------------------------------------------------------- examples


def decode_image(value, mode):
    """An undecoded `datasets.Image` value (dict with bytes/path), encoded bytes, a path or a PIL image -> PIL image
    in `mode`; raises `BadExample` saying what is wrong."""
    if isinstance(value, dict):
        value = value["bytes"] if value.get("bytes") else value.get("path")
    if isinstance(value, bytes):
        value = io.BytesIO(value)
    if value is None:
        raise BadExample("the image is missing")
    try:
        image = value if isinstance(value, PIL.Image.Image) else PIL.Image.open(value)
        image.load()
        image = PIL.ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, PIL.Image.DecompressionBombError) as err:
        raise BadExample(f"not a readable image ({err})") from err
    if mode == "L" and image.mode in ("RGBA", "LA"):
        return image.getchannel("A")  # a cutout's alpha is its object mask
    return image.convert(mode)


def crop_box(size, resolution, rng, center_crop):
    """(left, top, right, bottom) of a `resolution` square in an image of `size` = (w, h) whose short side is
    `resolution`: centred, or at a random position drawn from `rng`."""
    width, height = size
    if center_crop:
        left, top = (width - resolution) // 2, (height - resolution) // 2
    else:
        left, top = int(rng.integers(0, width - resolution + 1)), int(rng.integers(0, height - resolution + 1))
    return left, top, left + resolution, top + resolution


def transform_pair(image, object_mask, resolution, rng, center_crop=False, random_flip=False):
    """The geometric transform shared by a photo and its object mask.

    Resizes the short side to `resolution` (bilinear, like the pipeline resizes masks), crops a
    `resolution` square (random or centred) and, with `random_flip`, flips both horizontally half the time.

    Returns:
        (RGB PIL image, "L" PIL object mask), both `resolution` x `resolution`.
    """
    scale = resolution / min(image.size)
    size = (max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale)))
    if size != image.size:
        image = image.resize(size, PIL.Image.BILINEAR)
        object_mask = object_mask.resize(size, PIL.Image.BILINEAR)
    box = crop_box(size, resolution, rng, center_crop)
    image, object_mask = image.crop(box), object_mask.crop(box)
    if random_flip and rng.random() < 0.5:
        image, object_mask = PIL.ImageOps.mirror(image), PIL.ImageOps.mirror(object_mask)
    return image, object_mask


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
        raise BadExample(f"the caption is a {type(caption).__name__}, not a string or a list of strings")
    if rng.random() < proportion_empty_prompts:
        return ""
    if isinstance(caption, str):
        return caption
    return str(caption[int(rng.integers(len(caption)))]) if len(caption) else ""


class TrainExamples(torch.utils.data.Dataset):
    """Examples of a `datasets.Dataset` as training tensors.

    Item `i` is a dict: `pixel_values` (3, R, R) in [-1, 1], `object_mask` (1, R, R) in [0, 1] (white =
    object), `caption` (str) and `name` (the example's id, file or index, for messages). A bad example is
    named in a warning and replaced by the next good one (`bad_examples="skip"`), or raises
    `BadExample` naming it (`"fail"`).

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
    ):
        self.dataset = dataset
        self.image_column, self.mask_column, self.caption_column = columns
        self.resolution = resolution
        self.center_crop = center_crop
        self.random_flip = random_flip
        self.proportion_empty_prompts = proportion_empty_prompts
        self.seed = seed
        self.bad_examples = bad_examples
        self.epoch = 0

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        for offset in range(MAX_CONSECUTIVE_BAD):
            k = (index + offset) % len(self.dataset)
            row = self.dataset[k]
            try:
                return self.load(row, k)
            except BadExample as err:
                message = f"Bad training example {self.name(row, k)}: {err}"
                if self.bad_examples == "fail":
                    raise BadExample(f"{message} (--bad_examples skip would skip it)") from err
                logger.warning("%s; skipped.", message)
        raise BadExample(f"{MAX_CONSECUTIVE_BAD} bad training examples in a row from index {index}; stopping.")

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
        image = decode_image(row[self.image_column], "RGB")
        object_mask = decode_image(row[self.mask_column], "L")
        if object_mask.size != image.size:
            raise BadExample(f"its object mask is {object_mask.size} but its image is {image.size}")
        if np.asarray(object_mask).max() < OBJECT_THRESHOLD:
            raise BadExample(f"its object mask is empty (no pixel >= {OBJECT_THRESHOLD})")
        caption = pick_caption(row[self.caption_column], rng, self.proportion_empty_prompts)
        image, object_mask = transform_pair(
            image, object_mask, self.resolution, rng, center_crop=self.center_crop, random_flip=self.random_flip
        )
        return {
            "pixel_values": image_to_tensor(image),
            "object_mask": object_mask_to_tensor(object_mask, object_mask.size)[0],
            "caption": caption,
            "name": self.name(row, index),
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
    """Stack examples into a batch and tokenize the captions (`input_ids`, padded to the tokenizer's length)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, examples):
        batch = {"names": [e["name"] for e in examples], "captions": [e["caption"] for e in examples]}
        for key in examples[0]:
            if isinstance(examples[0][key], torch.Tensor):
                batch[key] = torch.stack([e[key] for e in examples]).contiguous()
        if "prompt_embeds" not in batch:
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
    kept in memory-mapped `.npy` files (one set per process share), plus the caption drawn per epoch when
    prompts are not fixed. The crop and flip of each example are those of epoch 0."""

    def __init__(self, examples, parts, bounds, fixed_prompts):
        self.examples = examples
        self.captions = examples.dataset.select_columns([examples.caption_column])
        self.parts = parts  # [{key: memmap (count, ...)}] per process share
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
            arrays, row = {}, 0
            for batch in tqdm(loader, desc="Caching latents", disable=process_index != 0):
                for key, tensor in encode(batch).items():
                    if key not in arrays:
                        arrays[key] = np.lib.format.open_memmap(
                            folder / f"part-{process_index}-{key}.npy",
                            mode="w+",
                            dtype=_numpy_dtype(tensor),
                            shape=(len(share), *tensor.shape[1:]),
                        )
                    arrays[key][row : row + len(tensor)] = (
                        tensor.float().numpy() if tensor.is_floating_point() else tensor.numpy()
                    )
                row += len(batch["names"])
            for array in arrays.values():
                array.flush()
            done.touch()
        barrier()
        parts = []
        for k in range(num_processes):
            files = sorted(folder.glob(f"part-{k}-*.npy"))
            parts.append({f.stem.split("-", 2)[2]: np.load(f, mmap_mode="r") for f in files})
        return cls(examples, parts, bounds, fixed_prompts)

    def __len__(self):
        return self.bounds[-1]

    def __getitem__(self, index):
        k = next(k for k in range(len(self.parts)) if index < self.bounds[k + 1])
        item = {key: torch.from_numpy(np.array(array[index - self.bounds[k]])) for key, array in self.parts[k].items()}
        rng = np.random.default_rng([self.examples.seed, self.epoch, index])
        caption = self.captions[index][self.examples.caption_column]
        item["caption"] = (
            "" if self.fixed_prompts else pick_caption(caption, rng, self.examples.proportion_empty_prompts)
        )
        item["name"] = f"at index {index}"
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
