"""The library's version, in a module of its own so that any floor can record it without
importing the package's public surface."""

__version__ = "0.1.0"
