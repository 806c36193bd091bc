"""Salient-object segmenters behind one small interface, shared by `photobg generate` (to find the object
when no mask is given) and `photobg evaluate` (to find the object in a generated image).

A segmenter is a callable `segmenter(image: PIL.Image) -> PIL.Image` returning an "L" object mask of the
image's size, white (255) = object, soft values allowed. A segmenter that needs more than the image declares
it as keyword parameters, which `segment_image` fills in: `object_mask` (the input object mask, e.g. SAM's
prompt) and `key` (a name for the image, e.g. which mask file of a folder belongs to it). `get_segmenter(name)`
builds one by name; a missing package or model is a `SegmenterUnavailable` error that says how to install it
or what to use instead.
"""

import inspect
import shutil
import tempfile
from pathlib import Path

import numpy as np
import PIL.Image

from .defaults import TEST_SAM_MODEL

SEGMENTERS = {}


class SegmenterUnavailable(RuntimeError):
    """A segmenter's package or weights are missing; the message says how to get them or what else to use."""


def register(name):
    """Decorator: register a segmenter factory `factory(**options) -> segmenter` under `name`."""

    def decorate(factory):
        SEGMENTERS[name] = factory
        return factory

    return decorate


def get_segmenter(name, **options):
    """Build the segmenter registered as `name` (see `SEGMENTERS`)."""
    if name not in SEGMENTERS:
        raise ValueError(f"Unknown segmenter {name!r}; choose one of: {', '.join(sorted(SEGMENTERS))}.")
    return SEGMENTERS[name](**options)


@register("transparent-background")
def transparent_background(device=None, mode="base"):
    """InSPyReNet through the `transparent-background` package, as the original notebook used."""
    try:
        from transparent_background import Remover
    except ImportError as err:
        raise SegmenterUnavailable(
            "The 'transparent-background' segmenter needs `pip install transparent-background` (its weights "
            "are downloaded on first use). Or give the object yourself: an RGBA cutout, or a mask file "
            "(white = object) with --mask / --masks."
        ) from err
    try:
        remover = Remover(mode=mode, device=device) if device else Remover(mode=mode)
    except Exception as err:
        raise SegmenterUnavailable(
            f"The 'transparent-background' segmenter could not load its weights ({err}). Give the object "
            "yourself: an RGBA cutout, or a mask file (white = object) with --mask / --masks."
        ) from err

    def segment(image):
        return remover.process(image.convert("RGB"), type="map").convert("L")

    return segment


@register("threshold")
def threshold(level=128):
    """Deterministic test segmenter: pixels brighter than `level` (in grayscale) are the object."""

    def segment(image):
        return image.convert("L").point(lambda v: 255 if v > level else 0)

    return segment


DEFAULT_SAM_MODEL = "facebook/sam-vit-huge"
MASK_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class Sam:
    """Segment Anything through `transformers`' `SamModel` and `SamProcessor`, prompted with points and a box.

    One implementation for evaluation (the `sam` segmenter: the input object's box and points inside it) and
    the app (points clicked on the photo). The image embedding of the last image is kept, so a new prompt on
    the same image object skips the image encoder, the costly part.

    Args:
        model: Hub id or local folder holding a `SamModel` and its `SamProcessor` (`save_pretrained` layout),
            or `tiny-sam`, a random test model built locally on first use.
        device: torch device; default CUDA when present.

    Raises:
        SegmenterUnavailable: when the packages or the model are missing; the message says what to do.
    """

    def __init__(self, model=DEFAULT_SAM_MODEL, device=None):
        try:
            import torch
            from transformers import SamModel, SamProcessor

            from .hub import check_hub_file, photobg_cache
        except ImportError as err:
            raise SegmenterUnavailable(
                "The 'sam' segmenter needs `pip install transformers torch`. Or choose another segmenter: "
                "transparent-background, or given-masks with your own mask files."
            ) from err
        model = str(model)
        if model == TEST_SAM_MODEL:
            model = str(photobg_cache() / TEST_SAM_MODEL)
            if not Path(model, "config.json").exists():
                write_test_sam(model)
        try:
            if not Path(model).is_dir():
                check_hub_file(model, "config.json")  # an unreachable Hub fails at once, not after retries
            self.processor = SamProcessor.from_pretrained(model)
            self.model = SamModel.from_pretrained(model).eval()
        except Exception as err:  # whatever stops loading, the message says what to do instead
            raise SegmenterUnavailable(
                f"The 'sam' segmenter could not load {model!r} ({err.__class__.__name__}: {err}). Pass a local "
                "copy (a folder with a SamModel and its SamProcessor, saved with save_pretrained) as the SAM "
                "model, run where the Hub is reachable, or choose another segmenter: transparent-background, "
                "or given-masks."
            ) from err
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device)
        self._embedded = (None, None)  # (image, its embedding)

    def __call__(self, image, points=(), labels=None, box=None, multimask_output=None):
        """The object mask SAM finds from a prompt.

        Args:
            image: PIL image.
            points: [x, y] pixel coordinates of the image.
            labels: one per point, 1 = on the object, 0 = not on it (default: all 1).
            box: [x0, y0, x1, y1] around the object, or None.
            multimask_output: let SAM propose three masks and keep the one of highest predicted IoU; by
                default only for a single point without a box, the one ambiguous prompt.

        Returns:
            "L" PIL mask of the image's size, 255 = object, 0 elsewhere.
        """
        import torch

        points = [[int(x), int(y)] for x, y in points]
        if not points and box is None:
            raise ValueError("SAM needs a prompt: at least one point or a box.")
        if multimask_output is None:
            multimask_output = len(points) == 1 and box is None
        prompt = {}
        if points:
            prompt.update(input_points=[[points]], input_labels=[[list(labels or [1] * len(points))]])
        if box is not None:
            prompt["input_boxes"] = [[list(box)]]
        inputs = self.processor(images=image.convert("RGB"), **prompt, return_tensors="pt")
        original_sizes, reshaped_sizes = inputs.pop("original_sizes"), inputs.pop("reshaped_input_sizes")
        pixel_values = inputs.pop("pixel_values")
        inputs = {
            k: v.to(self.device, torch.float32) if v.is_floating_point() else v.to(self.device)
            for k, v in inputs.items()
        }
        with torch.no_grad():
            out = self.model(
                image_embeddings=self._embedding(image, pixel_values), **inputs, multimask_output=multimask_output
            )
        masks = self.processor.image_processor.post_process_masks(out.pred_masks.cpu(), original_sizes, reshaped_sizes)
        best = int(out.iou_scores[0, 0].argmax())  # masks[0]: (prompts=1, candidates, H, W)
        return PIL.Image.fromarray(masks[0][0, best].numpy().astype(np.uint8) * 255, "L")

    def _embedding(self, image, pixel_values):
        import torch

        if self._embedded[0] is not image:
            with torch.no_grad():
                embedding = self.model.get_image_embeddings(pixel_values.to(self.device, torch.float32))
            self._embedded = (image, embedding)
        return self._embedded[1]


@register("sam")
def sam(model=DEFAULT_SAM_MODEL, device=None, num_points=3):
    """Segment Anything, prompted with the input object's box and points deep inside it.

    The paper measures object expansion with SAM masks. SAM needs a prompt, so this segmenter only works where
    the input object mask is known (evaluation): its bounding box and `num_points` points deep inside it say
    which object to cut out of the generated image; of SAM's three candidate masks the one with the highest
    predicted IoU is kept. An empty object mask gives an empty output mask (there is nothing to look for).

    Args:
        model, device: see `Sam`.
        num_points: how many positive points to place inside the object.
    """
    from .conventions import OBJECT_THRESHOLD

    predictor = Sam(model, device)

    def segment(image, object_mask=None):
        if object_mask is None:
            raise ValueError("The 'sam' segmenter needs the input object mask as its prompt (box and points).")
        binary = np.asarray(object_mask.convert("L")) >= OBJECT_THRESHOLD
        if not binary.any():
            return PIL.Image.new("L", image.size, 0)
        box, points = sam_prompt(binary, num_points)
        return predictor(image, points, box=box, multimask_output=True)

    return segment


def write_test_sam(path, seed=0):
    """Write a random SamModel (64 px input, one-block decoder) and its processor in the Hub layout, atomically.

    Returns:
        The folder as a `Path`.
    """
    import torch
    from transformers import SamConfig, SamImageProcessorPil, SamModel, SamProcessor
    from transformers.models.sam.configuration_sam import (
        SamMaskDecoderConfig,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )

    size = 64
    vision = SamVisionConfig(
        hidden_size=16,
        output_channels=8,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=size,
        patch_size=8,
        window_size=4,
        global_attn_indexes=[1],
        num_pos_feats=4,
        mlp_dim=32,
    )
    prompt = SamPromptEncoderConfig(hidden_size=8, image_size=size, patch_size=8, mask_input_channels=4)
    decoder = SamMaskDecoderConfig(
        hidden_size=8, mlp_dim=16, num_hidden_layers=1, num_attention_heads=2, iou_head_hidden_dim=8
    )
    torch.manual_seed(seed)
    model = SamModel(SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder))
    image_processor = SamImageProcessorPil(
        size={"longest_edge": size},
        pad_size={"height": size, "width": size},
        mask_size={"longest_edge": size // 4},
        mask_pad_size={"height": size // 4, "width": size // 4},
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".sam-", dir=path.parent))  # complete, then renamed into place
    try:
        model.save_pretrained(tmp)
        SamProcessor(image_processor=image_processor).save_pretrained(tmp)
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def sam_prompt(binary, num_points=3):
    """SAM's prompt for an object: its box and points deep inside it.

    Args:
        binary: (H, W) bool array, True = object (not empty).
        num_points: how many points.

    Returns:
        (box as [x0, y0, x1, y1] pixel coordinates, list of [x, y] points). Points are picked greedily at the
        largest distance from the object's edge, each one blocking a disk of its own depth around it, so they
        spread over the object's thick parts instead of piling up in one place.
    """
    from scipy import ndimage

    ys, xs = np.nonzero(binary)
    box = [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]
    depth = ndimage.distance_transform_edt(binary)
    yy, xx = np.mgrid[0 : binary.shape[0], 0 : binary.shape[1]]
    points = []
    for _ in range(num_points):
        y, x = np.unravel_index(int(depth.argmax()), depth.shape)
        if depth[y, x] <= 0:
            break
        points.append([int(x), int(y)])
        depth[(yy - y) ** 2 + (xx - x) ** 2 <= max(depth[y, x], 1.0) ** 2] = 0
    return box, points


@register("given-masks")
def given_masks(folder):
    """Masks you bring: the mask of the image named `key` is the file `folder/key.png` (or .jpg, ...).

    `photobg evaluate` names generated images `MODEL/ID_sSEED`, so a folder of output masks mirrors its
    `generated/` folder. White (>= 128) = object; the mask must have its image's size.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SegmenterUnavailable(f"The 'given-masks' segmenter needs a folder of masks: {str(folder)!r} is not one.")

    def segment(image, key=None):
        if key is None:
            raise ValueError("The 'given-masks' segmenter needs the image's name (key) to find its mask file.")
        candidates = [folder / f"{key}{suffix}" for suffix in MASK_SUFFIXES]
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            raise ValueError(f"No mask for {key!r}: expected {candidates[0]} (or .jpg, ...) in {folder}.")
        from .masks import load_image

        mask = load_image(path)
        if mask.size != image.size:
            raise ValueError(
                f"{path}: mask is {mask.size[0]}x{mask.size[1]}, its image is {image.size[0]}x{image.size[1]}."
            )
        return mask.convert("L")

    return segment


def segment_image(segmenter, image, object_mask=None, key=None):
    """Run `segmenter` and check its contract (an "L" mask of the image's size).

    Args:
        segmenter: a segmenter (see the module docstring).
        image: PIL image to segment.
        object_mask: the input object mask ("L", white = object), given to segmenters that take it.
        key: a name for the image, given to segmenters that take it.

    Returns:
        The object mask as an "L" PIL image of `image`'s size.
    """
    accepted = inspect.signature(segmenter).parameters
    extra = {name: value for name, value in (("object_mask", object_mask), ("key", key)) if name in accepted}
    mask = segmenter(image, **extra)
    if not isinstance(mask, PIL.Image.Image) or mask.size != image.size:
        raise ValueError(f"Segmenter returned {type(mask).__name__} of the wrong size; expected {image.size}.")
    return mask.convert("L")
