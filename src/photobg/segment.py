"""Salient-object segmenters behind one small interface, shared by `photobg generate` (to find the object
when no mask is given) and `photobg evaluate` (to find the object in a generated image).

A segmenter is a callable `segmenter(image: PIL.Image) -> PIL.Image` returning an "L" object mask of the
image's size, white (255) = object, soft values allowed. `get_segmenter(name)` builds one by name; a
missing package or model is a `SegmenterUnavailable` error that says how to install it or what to use
instead.
"""

import PIL.Image

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


def segment_image(segmenter, image):
    """Run `segmenter` and check its contract (an "L" mask of the image's size)."""
    mask = segmenter(image)
    if not isinstance(mask, PIL.Image.Image) or mask.size != image.size:
        raise ValueError(f"Segmenter returned {type(mask).__name__} of the wrong size; expected {image.size}.")
    return mask.convert("L")
