"""What an evaluation runs on: benchmark samples (photo, object mask, prompt) and model specs.

A benchmark is either
- a prepared dataset (`photobg prepare`): `DIR/data/*.parquet` with `image`, `conditioning_image` (the object
  mask, white = object), `text` and `id` columns; or
- folders: `DIR/images/NAME.jpg|png|...`, `DIR/masks/NAME.png` (white = object; may be left out for RGBA
  cutouts, whose alpha is the mask) and optionally `DIR/prompts.jsonl` with lines `{"id": NAME, "text": ...}`.
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path

import PIL.Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
SPEC_KEYS = ("name", "model", "controlnet", "scale", "scheduler", "recipe", "lora")


@dataclass
class Sample:
    """One benchmark item: `image` (RGB), `object_mask` ("L", white = object) and `prompt`."""

    id: str
    image: PIL.Image.Image
    object_mask: PIL.Image.Image
    prompt: str


class Benchmark:
    """The samples of a benchmark folder, read lazily (a test set can be large); indexable, sized.

    Args:
        path: prepared dataset folder or folder with `images/` (see the module docstring).
        resolution: resize every sample so that its longer side is this many pixels (0 or None: keep sizes).
        limit: use only the first `limit` samples (in id order).
        default_prompt: the prompt of samples that come without one.
    """

    def __init__(self, path, resolution=512, limit=None, default_prompt=""):
        self.path = Path(path)
        self.resolution = resolution
        self.default_prompt = default_prompt
        if (self.path / "data").is_dir():
            self.kind, self._read, ids = "prepared dataset", self._read_row, self._open_dataset()
        elif (self.path / "images").is_dir():
            self.kind, self._read, ids = "image folders", self._read_files, self._open_folders()
        else:
            raise ValueError(
                f"{self.path}: not a benchmark. Expected a prepared dataset (data/*.parquet, from `photobg prepare`) "
                "or a folder with images/ (and masks/, prompts.jsonl)."
            )
        self.ids = ids[:limit] if limit else ids
        self.file_names = _file_names(self.ids, self.path)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        image, object_mask, prompt, where = self._read(index)
        image, object_mask = split_and_resize(image, object_mask, self.resolution, where)
        return Sample(self.ids[index], image, object_mask, prompt or self.default_prompt)

    def _open_dataset(self):
        import datasets

        files = sorted(str(p) for p in (self.path / "data").glob("*.parquet"))
        if not files:
            raise ValueError(f"{self.path / 'data'}: no .parquet files.")
        self._dataset = datasets.load_dataset("parquet", data_files=files, split="train")
        missing = {"image", "conditioning_image", "id"} - set(self._dataset.column_names)
        if missing:
            raise ValueError(f"{self.path}: the dataset lacks the column(s) {sorted(missing)}.")
        ids = [str(i) for i in self._dataset["id"]]
        self._rows = {i: k for k, i in enumerate(ids)}
        return sorted(ids)

    def _read_row(self, index):
        """The row's image, object mask, prompt, and how messages name it (raising `ValueError` if unreadable)."""
        where = f"{self.path} [{self.ids[index]}]"
        try:
            row = self._dataset[self._rows[self.ids[index]]]  # decodes the images
        except OSError as err:
            raise ValueError(f"{where}: not a readable image ({err}).") from err
        return row["image"], row["conditioning_image"], row.get("text") or "", where

    def _open_folders(self):
        self._images = {
            p.stem: p for p in sorted((self.path / "images").iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES
        }
        if not self._images:
            raise ValueError(f"{self.path / 'images'}: no images ({', '.join(IMAGE_SUFFIXES)}).")
        self._prompts = {}
        prompts_file = self.path / "prompts.jsonl"
        if prompts_file.exists():
            for number, line in enumerate(prompts_file.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                    self._prompts[str(entry["id"])] = str(entry["text"])
                except (json.JSONDecodeError, KeyError, TypeError) as err:
                    raise ValueError(f'{prompts_file}:{number}: expected {{"id": ..., "text": ...}} ({err}).') from err
        return sorted(self._images)

    def _read_files(self, index):
        """The sample's image, object mask, prompt, and how messages name it (raising `ValueError` if unreadable)."""
        from ..masks import load_image

        name = self.ids[index]
        image = load_image(self._images[name])
        mask_files = [self.path / "masks" / f"{name}{suffix}" for suffix in IMAGE_SUFFIXES]
        mask_file = next((p for p in mask_files if p.is_file()), None)
        object_mask = load_image(mask_file) if mask_file else None
        if object_mask is None and image.mode not in ("RGBA", "LA", "PA"):
            raise ValueError(f"{self._images[name]}: no mask {mask_files[0]} and no alpha channel to use instead.")
        return image, object_mask, self._prompts.get(name, ""), str(mask_file or self._images[name])


def split_and_resize(image, object_mask, resolution, where):
    """The RGB photo and "L" object mask of an input, resized so the longer side is `resolution` (if set)."""
    from ..masks import split_object

    image, object_mask = split_object(image, object_mask)
    if object_mask.size != image.size:
        raise ValueError(f"{where}: the mask is {object_mask.size}, the image {image.size} (W, H).")
    if resolution:
        scale = resolution / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image, object_mask = image.resize(size, PIL.Image.BICUBIC), object_mask.resize(size, PIL.Image.BILINEAR)
    return image, object_mask


def _file_names(ids, where):
    # Sample ids become file names: anything but letters, digits, '-', '_' and '.' turns into '_'.
    names = [safe_name(i) for i in ids]
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: sample ids collide once made file-name safe (e.g. 'a/b' and 'a_b').")
    return names


def safe_name(text):
    """`text` as a file/folder name: characters other than letters, digits, '-', '_', '.' become '_'."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text).strip(".") or "_"


# ----------------------------------------------------------------------------- model specs


@dataclass
class ModelSpec:
    """One model of a comparison: a row of the report.

    Attributes:
        name: the row's label (default: the spec as written).
        model: what `photobg.models.load_pipeline` takes (Hub id, folder, `tiny-inpainting`, ...).
        controlnet: optional ControlNet for a base `model`.
        scale: `controlnet_conditioning_scale`; 0 = the base model alone (SI2 for SD2-inpainting).
        scheduler: optional diffusers scheduler class name (overrides the recipe's, and its options).
        recipe: optional named sampling recipe (`photobg.recipe.RECIPES`): its scheduler, options, timesteps,
            steps, guidance and eta replace the report's --steps and --guidance for this row.
        lora: optional LoRA, `PATH[:SCALE]` (the one a recipe needs), fused into the UNet and text encoders.
    """

    name: str
    model: str
    controlnet: str | None = None
    scale: float = 1.0
    scheduler: str | None = None
    recipe: str | None = None
    lora: str | None = None

    @property
    def folder_name(self):
        return safe_name(self.name)

    def generation_settings(self):
        """Everything about this model that changes its outputs (a resumed run must match it); the recipe and LoRA
        where given, so that the settings of runs made before they existed stay the same."""
        settings = {
            "model": self.model,
            "controlnet": self.controlnet,
            "scale": self.scale,
            "scheduler": self.scheduler,
        }
        settings.update({key: value for key, value in (("recipe", self.recipe), ("lora", self.lora)) if value})
        return settings

    def scheduler_choice(self):
        """(scheduler, scheduler options) as `load_pipeline` takes them: the spec's scheduler, else the recipe's
        with its options."""
        from ..recipe import RECIPES

        if self.scheduler is not None or self.recipe is None:
            return self.scheduler, None
        return RECIPES[self.recipe].scheduler, RECIPES[self.recipe].options or None

    def sampling(self, steps, guidance):
        """The pipeline's sampling arguments for this row: the recipe's, else the report's `steps` and `guidance`."""
        from ..recipe import RECIPES

        if self.recipe is None:
            return {"num_inference_steps": steps, "guidance_scale": guidance}
        recipe = RECIPES[self.recipe]
        sampling = {"num_inference_steps": recipe.steps, "guidance_scale": recipe.guidance}
        if recipe.timesteps is not None and self.scheduler is None:
            sampling["timesteps"] = recipe.timesteps
        if recipe.eta is not None:
            sampling["eta"] = recipe.eta
        return sampling


SPEC_HELP = """\
Model specs (--model, repeatable; one report row each):
  MODEL                     a Hub id or folder of a complete model (with controlnet/), or a test model name
  MODEL@KEY=VALUE,...       the same with options
  KEY=VALUE,...             all options, with model=MODEL
Keys: name (the row's label; default the spec as written), model, controlnet (for a base model),
scale (ControlNet conditioning scale, default 1; 0 runs the base model alone: SI2 for SD2-inpainting),
scheduler (a diffusers scheduler class name), recipe (a named sampling recipe, e.g. sdxl-lightning-4: its
scheduler, steps and guidance replace --steps and --guidance for the row; docs/recipes.md), lora (PATH[:SCALE],
the LoRA a recipe needs).
Examples:
  --model yahoo-inc/photo-background-generation@name=SI2,scale=0 --model yahoo-inc/photo-background-generation@name=Ours
  --model tiny-inpainting@scale=0 --model tiny-inpainting@scale=1
  --model MODEL@name=Ours --model MODEL@name=Lightning4,recipe=sdxl-lightning-4,lora=lightning_4step.safetensors
  --model name=Ours,model=stabilityai/stable-diffusion-2-inpainting,controlnet=ckpt/controlnet.pth"""


def native_resolution(specs):
    """The default `--resolution`: the models' native size (`models.native_size`: 512 px for SD2, 1024 for SDXL),
    the largest when they differ. Reads only config files (test models are built).

    Raises:
        ValueError, FileNotFoundError: naming the model, when it is missing or cannot be read.
    """
    from ..hub import native_size
    from ..models.specs import resolve_model

    try:
        return max(native_size(resolve_model(spec.model)) for spec in specs)
    except OSError as err:  # a Hub id that cannot be fetched: said before anything loads
        if isinstance(err, FileNotFoundError):
            raise
        raise ValueError(str(err)) from err


def parse_model_spec(text):
    """Parse a model spec (see `SPEC_HELP`) into a `ModelSpec`; a `ValueError` names what is wrong."""
    text = text.strip()
    model, options = text, ""
    if "@" in text:
        model, options = text.rsplit("@", 1)
    elif "=" in text.split(",", 1)[0] and text.split("=", 1)[0] in SPEC_KEYS:
        model, options = "", text
    values = {}
    for item in filter(None, (part.strip() for part in options.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key not in SPEC_KEYS:
            raise ValueError(f"Model spec {text!r}: {item!r} is not KEY=VALUE with KEY one of {', '.join(SPEC_KEYS)}.")
        if key in values or (key == "model" and model):
            raise ValueError(f"Model spec {text!r}: {key} is given twice.")
        values[key] = value
    model = model or values.pop("model", "")
    values.pop("model", None)
    if not model:
        raise ValueError(f"Model spec {text!r}: no model (write MODEL@... or model=MODEL).")
    try:
        scale = float(values.pop("scale", 1.0))
    except ValueError:
        raise ValueError(f"Model spec {text!r}: scale must be a number.") from None
    from ..settings import check_sampling

    check_sampling(
        {"controlnet_conditioning_scale": f"Model spec {text!r}: scale"}, controlnet_conditioning_scale=scale
    )
    from ..recipe import RECIPES

    if values.get("recipe") is not None and values["recipe"] not in RECIPES:
        raise ValueError(
            f"Model spec {text!r}: unknown recipe {values['recipe']!r}; choose one of {', '.join(RECIPES)}."
        )
    return ModelSpec(name=values.pop("name", text), model=model, scale=scale, **values)


def parse_model_specs(texts):
    """Parse several specs and check that their names (and so their output folders) differ."""
    specs = [parse_model_spec(t) for t in texts]
    seen = {}
    for spec in specs:
        if spec.folder_name in seen:
            raise ValueError(
                f"Models {seen[spec.folder_name]!r} and {spec.name!r} would share the output folder "
                f"{spec.folder_name!r}: give them different names (@name=...)."
            )
        seen[spec.folder_name] = spec.name
    return specs
