"""The version, defined once (setuptools reads it; ``loraserve.__version__`` re-exports it)."""

__version__ = "0.1.0"
