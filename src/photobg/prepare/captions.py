"""Captions: from a captions file, from COCO, or from an image-captioning model (BLIP / BLIP-2 family through
`transformers`), with a cache so that a re-run never captions an image twice.

Which caption an example gets, in order: its entry in the captions file; its COCO captions; the captioning
model's; else empty. Where there are several (COCO has five), one is picked with a random generator seeded
by the example id and the run's seed, so the choice is the same on every run.
"""

import csv
import hashlib
import json
import os
import random
from pathlib import Path

FILE_KEYS = ("file_name", "file", "image", "path", "id")
TEXT_KEYS = ("text", "caption", "captions")


def read_captions_file(path):
    """Read a captions file into {key: [captions]}.

    Formats: JSONL (one object per line) or CSV (with a header), each record naming its image in one of
    the fields `file_name`, `file`, `image`, `path`, `id` and its caption(s) in `text`, `caption` or
    `captions` (a string or, in JSONL, a list). Several records for one image add up. The key is matched
    against an example's id (`duts/sun_abc`), its file path relative to its folder, its file name, then its
    stem. Empty captions are kept (and counted).

    Raises:
        ValueError: naming the file and line, on a format error.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such captions file.")
    captions = {}
    for line, record in _records(path):
        key = next((record[k] for k in FILE_KEYS if record.get(k) not in (None, "")), None)
        field = next((k for k in TEXT_KEYS if k in record), None)
        if key is None or field is None:
            raise ValueError(
                f"{path}:{line}: a caption record needs an image field ({'/'.join(FILE_KEYS)}) "
                f"and a caption field ({'/'.join(TEXT_KEYS)})."
            )
        texts = record[field] if isinstance(record[field], list) else [record[field]]
        captions.setdefault(str(key), []).extend("" if t is None else str(t).strip() for t in texts)
    return captions


def _records(path):
    if path.suffix.lower() == ".csv":
        with open(path, newline="") as f:
            yield from enumerate(csv.DictReader(f), start=2)
        return
    with open(path) as f:
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{line}: not JSON ({err}); captions files are JSONL or CSV.") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{line}: expected a JSON object per line.")
            yield line, record


def lookup(captions, item):
    """The captions-file entry for an example, or None: by id, relative path, file name, then stem."""
    image = Path(item["image"])
    relative = item["id"].split("/", 1)[1] + image.suffix if "/" in item["id"] else image.name
    for key in (item["id"], relative, image.name, image.stem):
        if key in captions:
            return captions[key]
    return None


def choose_caption(candidates, item_id, seed):
    """One caption of several, the same on every run for this (id, seed)."""
    if not candidates:
        return ""
    if len(candidates) == 1:
        return candidates[0]
    return random.Random(f"{seed}:{item_id}").choice(candidates)


def apply_template(caption, template, item):
    """`template` with `{caption}`, `{source}` and `{category}` (COCO) filled in; an empty caption stays empty."""
    if not caption or template in (None, "", "{caption}"):
        return caption
    return template.format(caption=caption, source=item["source"], category=item.get("category", "")).strip()


class Captioner:
    """Batched image captioning with a `transformers` image-text-to-text model, cached on disk.

    Args:
        model: Hub id or local folder of a captioning model (e.g. `Salesforce/blip-image-captioning-large`,
            `Salesforce/blip2-opt-2.7b`), loaded with `AutoProcessor` + `AutoModelForImageTextToText`.
        cache_path: JSONL file of {key, caption}; appended to after every batch, read at start.
        device, dtype: torch device and dtype name (default CUDA + fp16 when present, else CPU + fp32).
        batch_size: images per forward pass.
        max_new_tokens: caption length limit.
        prompt: optional text the caption continues (BLIP's conditional captioning), not kept in the output.
    """

    def __init__(self, model, cache_path, device=None, dtype=None, batch_size=16, max_new_tokens=40, prompt=None):
        self.model_id, self.cache_path = str(model), Path(cache_path)
        self.device, self.dtype = device, dtype
        self.batch_size, self.max_new_tokens, self.prompt = batch_size, max_new_tokens, prompt
        self.cache = _read_cache(self.cache_path)
        self._model = self._processor = None

    def key(self, item):
        """The cache key of an example's caption: model, prompt, and the image file's path, size and mtime."""
        stat = os.stat(item["image"])
        text = f"{self.model_id}\n{self.prompt}\n{os.path.abspath(item['image'])}\n{stat.st_size}\n{stat.st_mtime_ns}"
        return hashlib.sha1(text.encode()).hexdigest()

    def __call__(self, images, keys, progress=None):
        """Captions for PIL `images` (cached ones are not recomputed).

        Args:
            images: list of PIL RGB images.
            keys: their cache keys (`self.key(item)`).
            progress: optional tqdm bar, advanced per image captioned.

        Returns:
            list of str.
        """
        todo = [i for i, key in enumerate(keys) if key not in self.cache]
        for start in range(0, len(todo), self.batch_size):
            batch = todo[start : start + self.batch_size]
            texts = self._generate([images[i] for i in batch])
            fresh = {keys[i]: text for i, text in zip(batch, texts)}
            self.cache.update(fresh)
            _append_cache(self.cache_path, fresh)
            if progress is not None:
                progress.update(len(batch))
        return [self.cache[key] for key in keys]

    def _load(self):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from ..models.loading import resolve_device, resolve_dtype

        device = resolve_device(self.device)
        dtype = resolve_dtype(self.dtype, device)
        self._processor = AutoProcessor.from_pretrained(self.model_id)
        model = AutoModelForImageTextToText.from_pretrained(self.model_id, dtype=dtype)
        self._model = model.to(device).eval()
        self._torch = torch

    def _generate(self, images):
        if self._model is None:
            self._load()
        kwargs = {"text": [self.prompt] * len(images)} if self.prompt else {}
        inputs = self._processor(images=images, return_tensors="pt", **kwargs).to(self._model.device)
        inputs = {k: v.to(self._model.dtype) if v.is_floating_point() else v for k, v in inputs.items()}
        with self._torch.inference_mode():
            tokens = self._model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        texts = self._processor.batch_decode(tokens, skip_special_tokens=True)
        return [_clean(text, self.prompt) for text in texts]


def _clean(text, prompt):
    text = " ".join(text.split())
    if prompt and text.lower().startswith(prompt.lower()):
        text = text[len(prompt) :].strip()
    return text


def _read_cache(path):
    cache = {}
    if path.is_file():
        with open(path) as f:
            for text in f:
                try:
                    record = json.loads(text)
                except json.JSONDecodeError:
                    continue  # a line cut short by a killed run
                cache[record["key"]] = record["caption"]
    return cache


def _append_cache(path, captions):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write("".join(json.dumps({"key": k, "caption": v}) + "\n" for k, v in captions.items()))
        f.flush()
        os.fsync(f.fileno())
