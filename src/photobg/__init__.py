"""photobg: salient-object-aware background generation."""

__version__ = "0.1.0"
