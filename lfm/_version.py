"""The package version (its own module so that lfm.stream can record it without importing lfm first).

``__version__`` is the one home of the number: pyproject.toml reads it from here when a wheel is built.
"""

__version__ = "0.1.0"


def installed_version() -> str:
    """What `lfm --version` prints: the installed distribution's version (importlib.metadata), or, for a
    checkout run without installing it (PYTHONPATH), the package's own ``__version__``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lfm")
    except PackageNotFoundError:
        return __version__
