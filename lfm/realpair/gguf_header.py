"""The header of a GGUF file, walked with every length and count checked against the bytes the file holds, before
transformers (the `gguf` package) reads it.

A GGUF header is: magic ``GGUF``, version (u32), tensor count (u64), metadata count (u64), then each metadata
entry (key string, value type u32, value: a scalar, a string = u64 length + bytes, or an array = element type u32 +
u64 count + elements), then each tensor's info (name string, n_dims u32, n_dims u64 dims, type u32, offset u64).
Read as is, a file cut inside its header, or one declaring 2**60 tensors or a 2**60-byte string, ends in a
traceback deep inside numpy, or in an attempt to allocate that much. Here it ends in one line: the file, the byte
offset, what was declared and what the file holds.

    check_gguf_header(path)   -> (tensor count, metadata count); ValueError naming the file otherwise
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

MAGIC = b"GGUF"
SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # value type -> bytes
STRING, ARRAY = 8, 9
MIN_SIZE = {**SCALAR_SIZES, STRING: 8, ARRAY: 12}  # the fewest bytes one value of each type takes
MAX_DIMS = 8  # llama.cpp's GGML_MAX_DIMS is 4; anything far above is no tensor
MAX_NESTING = 4  # arrays of arrays of ...: llama.cpp writes none nested; a deep nest is a crafted file


class _Reader:
    def __init__(self, path: Path, data):
        self.path, self.data, self.pos = path, data, 0

    def fail(self, what: str) -> ValueError:
        return ValueError(f"{self.path}: not a readable GGUF file: {what} (at byte {self.pos} of {len(self.data)}); "
                          f"the file is truncated or damaged, download it again")

    def take(self, n: int, what: str) -> bytes:
        if n > len(self.data) - self.pos:
            raise self.fail(f"{what} needs {n:,} bytes, {len(self.data) - self.pos:,} are left")
        self.pos += n
        return self.data[self.pos - n:self.pos]

    def u32(self, what: str) -> int:
        return struct.unpack("<I", self.take(4, what))[0]

    def u64(self, what: str) -> int:
        return struct.unpack("<Q", self.take(8, what))[0]

    def count(self, what: str, each: int) -> int:
        """A u64 count of items of at least ``each`` bytes, refused when they cannot fit in the bytes left."""
        n = self.u64(what)
        if n * each > len(self.data) - self.pos:
            raise self.fail(f"{what} is {n:,}, but {len(self.data) - self.pos:,} bytes are left")
        return n

    def string(self, what: str) -> bytes:
        return self.take(self.count(f"the length of {what}", 1), what)

    def value(self, kind: int, what: str, depth: int = 0) -> None:
        if kind == STRING:
            self.string(what)
        elif kind == ARRAY:
            element = self.u32(f"the element type of {what}")
            if element not in MIN_SIZE or depth >= MAX_NESTING:
                raise self.fail(f"{what}: element type {element} at nesting depth {depth + 1}")
            n = self.count(f"the length of {what}", MIN_SIZE[element])
            if element in SCALAR_SIZES:
                self.take(n * SCALAR_SIZES[element], what)
                return
            for _ in range(n):
                self.value(element, f"an element of {what}", depth + 1)
        elif kind in SCALAR_SIZES:
            self.take(SCALAR_SIZES[kind], what)
        else:
            raise self.fail(f"{what}: unknown value type {kind}")


def check_gguf_header(path: str | Path) -> tuple[int, int]:
    """(tensor count, metadata count) of the GGUF at ``path``, its whole header walked and bounded by the file's
    size; ValueError naming the file, the byte and what is wrong otherwise."""
    path = Path(path)
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        if size < len(MAGIC):
            f.seek(0)
            raise _Reader(path, f.read()).fail(f"{size} bytes, no GGUF header")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:  # only the header's pages are read
            return _walk(_Reader(path, data))


def _walk(r: _Reader) -> tuple[int, int]:
    if r.take(len(MAGIC), "the magic") != MAGIC:
        r.pos = 0
        raise r.fail("it does not start with 'GGUF'")
    version = r.u32("the version")
    if version not in (2, 3):
        raise r.fail(f"version {version} (lfm reads GGUF versions 2 and 3)")
    n_tensors = r.count("the tensor count", 8 + 4 + 4 + 8)  # name length, n_dims, type, offset
    n_meta = r.count("the metadata count", 8 + 4)  # key length, value type
    for i in range(n_meta):
        key = r.string(f"metadata key {i}").decode("utf-8", "replace")
        r.value(r.u32(f"the type of metadata {key!r}"), f"metadata {key!r}")
    for i in range(n_tensors):
        name = r.string(f"tensor name {i}").decode("utf-8", "replace")
        n_dims = r.u32(f"the dimension count of tensor {name!r}")
        if n_dims > MAX_DIMS:
            raise r.fail(f"tensor {name!r} has {n_dims} dimensions")
        r.take(8 * n_dims + 4 + 8, f"the shape, type and offset of tensor {name!r}")
    return n_tensors, n_meta
