"""Every image lfm decodes (items files, results folders, the task hooks, the explorer's thumbnails), with a bound
on its pixels checked on the header, before any pixel is decoded.

    open_rgb(path)              the image as RGB; one that declares more than max_pixels() pixels is refused
    thumbnail_uri(path, size)   a PNG data URI of the image shrunk to at most size x size (size <= 256), built once
                                per file and size and reused (the explorer's answer tables)

Why: a PNG of 445 KB can declare 12000 x 12000 pixels, 432 MB once decoded as RGB (lfm compare peaked at 2.8 GB on
one); Pillow itself only warns above 89 Mpx and refuses above 179 Mpx, with an exception, not a line.

MAX_PIXELS (40 Mpx: a 7000 x 5700 photo, 120 MB as RGB) is the default bound; the environment variable
LFM_MAX_IMAGE_PIXELS sets another (Pillow's own refusal above 179 Mpx still applies).

    >>> max_pixels() == MAX_PIXELS or "LFM_MAX_IMAGE_PIXELS" in os.environ
    True
"""

from __future__ import annotations

import base64
import io
import os
from functools import lru_cache
from pathlib import Path

MAX_PIXELS = 40_000_000
MAX_PIXELS_ENV = "LFM_MAX_IMAGE_PIXELS"
THUMBNAIL_MAX = 256  # the largest thumbnail side: the explorer shows them at 48 px (table) and 192 px (detail)


def max_pixels() -> int:
    """The pixel bound in force: LFM_MAX_IMAGE_PIXELS when set, else MAX_PIXELS."""
    value = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not value:
        return MAX_PIXELS
    if not value.isdigit() or int(value) == 0:
        raise ValueError(f"{MAX_PIXELS_ENV}={value!r}: expected a positive whole number of pixels (default "
                         f"{MAX_PIXELS})")
    return int(value)


def open_rgb(path: str | Path, *, bound: int | None = None):
    """The image at ``path`` as a PIL RGB image, fully decoded; ValueError naming the file when it cannot be read
    or declares more than ``bound`` (default ``max_pixels()``) pixels."""
    from PIL import Image, UnidentifiedImageError

    bound = bound or max_pixels()
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > bound:
                raise ValueError(_too_big(path, f"{width} x {height} = {width * height:,}", bound))
            return image.convert("RGB")
    except Image.DecompressionBombError as e:  # above Pillow's own limit: refused on the header too
        raise ValueError(_too_big(path, f"more than {Image.MAX_IMAGE_PIXELS * 2:,}", bound)) from e
    except (OSError, UnidentifiedImageError, SyntaxError) as e:  # PIL raises SyntaxError for some broken headers
        raise ValueError(f"{path}: cannot read the image ({type(e).__name__}: {e}); check the file") from e


def _too_big(path, declared: str, bound: int) -> str:
    return (f"{path}: the image declares {declared} pixels, more than lfm decodes ({bound:,}); shrink it, or raise "
            f"{MAX_PIXELS_ENV} if it is meant to be this large")


def thumbnail_uri(path: str | Path, size: int = THUMBNAIL_MAX) -> str:
    """A ``data:image/png;base64,...`` URI of the image shrunk to fit ``size`` x ``size`` (never enlarged), made once
    per (file, modification time, size) and then reused. ValueError as ``open_rgb``."""
    path = Path(path).resolve()
    stat = path.stat()
    return _thumbnail(str(path), stat.st_mtime_ns, stat.st_size, min(int(size), THUMBNAIL_MAX), max_pixels())


@lru_cache(maxsize=4096)  # a 48 px PNG is a few KB; 4096 of them stay far below the images they stand for
def _thumbnail(path: str, mtime_ns: int, nbytes: int, size: int, bound: int) -> str:
    image = open_rgb(path, bound=bound)
    image.thumbnail((size, size))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
