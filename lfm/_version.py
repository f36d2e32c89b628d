"""The package version (its own module so that lfm.stream can record it without importing lfm first)."""

__version__ = "0.1.0"
