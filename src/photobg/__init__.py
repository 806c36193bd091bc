"""photobg: salient-object-aware background generation.

`photobg.generate(image, prompt, object_mask=None, ...)`, `photobg.BackgroundGenerator` (see `photobg.api`) and
`photobg.load_pipeline` (the pipeline of any supported backbone, see `photobg.models`) are imported on first use,
so `import photobg` stays light (no torch).
"""

__version__ = "0.1.0"

_LAZY = {"generate": "api", "BackgroundGenerator": "api", "load_pipeline": "models"}
__all__ = ["BackgroundGenerator", "generate", "load_pipeline", "__version__"]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
