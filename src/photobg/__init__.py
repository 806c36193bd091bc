"""photobg: salient-object-aware background generation.

`photobg.generate(image, prompt, object_mask=None, ...)` and `photobg.BackgroundGenerator` (see
`photobg.api`) are imported on first use, so `import photobg` stays light (no torch).
"""

__version__ = "0.1.0"

_LAZY = {"generate": "api", "BackgroundGenerator": "api"}
__all__ = ["BackgroundGenerator", "generate", "__version__"]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
