"""Read and write Hugging Face model directories, one tensor at a time.

Reading: `Checkpoint(path)` opens `model.safetensors`, or `model.safetensors.index.json` + its
shards, lazily (memory-mapped; a tensor is read when asked for). Pickle `.bin` weights are refused
unless `allow_pickle=True`, and then loaded with `torch.load(weights_only=True)`.

Writing: `StreamingShardWriter` writes safetensors shards whose headers are computed up front from
the planned (name, dtype, shape) list, so each tensor's bytes go to disk as soon as it is merged:
peak memory is one tensor, not one shard. `atomic_output_dir` builds the output in a temporary
sibling directory and renames it into place only when everything succeeded.
"""

import glob
import hashlib
import json
import mmap
import os
import shutil
import stat
import struct
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

SAFE_INDEX = "model.safetensors.index.json"
SAFE_SINGLE = "model.safetensors"
BIN_INDEX = "pytorch_model.bin.index.json"
BIN_SINGLE = "pytorch_model.bin"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
WEIGHT_INDEXES = (SAFE_INDEX, BIN_INDEX)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
          "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
_ST_DTYPE = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
             torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
             torch.uint8: "U8", torch.bool: "BOOL"}
_DTYPE_OF_ST = {st: dtype for dtype, st in _ST_DTYPE.items()}


class CheckpointError(ValueError):
    """A model directory cannot be read as asked; the message names the file and the fix."""


def parse_dtype(name: str | None) -> torch.dtype | None:
    if name is None:
        return None
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[name]


def parse_size(text: str | int) -> int:
    """'5GB' / '500MB' / 1000 -> bytes."""
    if isinstance(text, int):
        return text
    units = {"GB": 10**9, "MB": 10**6, "KB": 10**3, "B": 1}
    for unit, factor in units.items():
        if text.upper().endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


class Checkpoint:
    """A Hugging Face model directory, opened lazily.

    Example:
        >>> from lfm.organism import base_dir
        >>> ckpt = Checkpoint(base_dir())
        >>> ckpt.config["model_type"], ckpt.meta("model.norm.weight")
        ('llama', ((96,), torch.float32))
    """

    def __init__(self, path: str | os.PathLike, *, allow_pickle: bool = False):
        self.path = resolve_model_dir(path)
        if not self.path.is_dir():
            raise CheckpointError(f"{self.path}: not a directory; pass a Hugging Face model directory "
                                  f"(config.json + *.safetensors)")
        config_file = self.path / "config.json"
        if not config_file.is_file():
            raise CheckpointError(f"{config_file}: missing; a Hugging Face model directory needs config.json")
        self.config = read_config(config_file)
        self.allow_pickle = allow_pickle
        self._key_file: dict[str, Path] = {}
        self._spans: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = {}  # key -> dtype, shape, start, end
        self._files: dict[Path, object] = {}
        self._maps: dict[Path, mmap.mmap] = {}
        self._pickled: dict[Path, dict] = {}
        self._find_weights()

    # -- discovery -------------------------------------------------------------------------

    def _find_weights(self) -> None:
        p = self.path
        if (p / SAFE_INDEX).is_file():
            self._read_index(p / SAFE_INDEX)
        elif (p / SAFE_SINGLE).is_file():
            self._add_safetensors(p / SAFE_SINGLE)
        elif (p / BIN_INDEX).is_file() or (p / BIN_SINGLE).is_file():
            if not self.allow_pickle:
                raise CheckpointError(f"{p}: holds pickle .bin weights, which can run arbitrary code when "
                                      f"loaded; convert them to safetensors, or pass --allow-pickle "
                                      f"(loaded with torch.load(weights_only=True))")
            if (p / BIN_INDEX).is_file():
                self._read_index(p / BIN_INDEX)
            else:
                self._add_pickle(p / BIN_SINGLE)
        else:
            shards = sorted(p.glob("*.safetensors"))
            if shards:
                raise CheckpointError(f"{p}: has shards ({shards[0].name}, ...) but no {SAFE_INDEX}; "
                                      f"restore the index file that came with the checkpoint")
            raise CheckpointError(f"{p}: no weights found (expected {SAFE_SINGLE} or {SAFE_INDEX})")

    def _read_index(self, index_file: Path) -> None:
        """Load every shard an index names, then check the index and the shards agree key by key."""
        weight_map = read_weight_map(index_file)
        suffix = ".safetensors" if index_file.name == SAFE_INDEX else ".bin"
        for shard in sorted(set(weight_map.values())):
            shard_path = contained_path(self.path, shard, f"{index_file}: shard", suffix)
            if not shard_path.is_file():
                raise CheckpointError(f"{shard_path}: listed in {index_file.name} but missing")
            if suffix == ".safetensors":
                self._add_safetensors(shard_path)
            else:
                self._add_pickle(shard_path)
        for key, file in self._key_file.items():
            if key not in weight_map:
                raise CheckpointError(f"{file}: holds tensor {key!r}, which {index_file} does not list; "
                                      f"restore the index that came with the checkpoint")
            if file != self.path / weight_map[key]:
                raise CheckpointError(f"{index_file}: maps tensor {key!r} to {weight_map[key]}, but it is in "
                                      f"{file.name}; restore the index that came with the checkpoint")
        missing = sorted(k for k in weight_map if k not in self._key_file)
        if missing:
            raise CheckpointError(f"{index_file}: tensor {missing[0]!r} is listed but absent from "
                                  f"{weight_map[missing[0]]}")

    def _register(self, key: str, file: Path) -> None:
        """Record that `file` holds `key`; a key held by two files is an error (which one is right?)."""
        if key in self._key_file:
            raise CheckpointError(f"tensor {key!r} is stored twice, in {self._key_file[key]} and in {file}; "
                                  f"remove the duplicate (or restore the checkpoint as published)")
        self._key_file[key] = file

    def _add_safetensors(self, file: Path) -> None:
        try:
            with safe_open(str(file), framework="pt", device="cpu") as handle:  # validates the header
                keys = list(handle.keys())
        except (SafetensorError, OSError, Exception) as e:  # safetensors raises several types
            raise CheckpointError(f"{file}: cannot be read as safetensors ({e}); the file is corrupt "
                                  f"or truncated, re-download it") from e
        header_len, header = _read_header(file)
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + header_len + end > file.stat().st_size:
            raise CheckpointError(f"{file}: truncated ({file.stat().st_size} bytes, header promises "
                                  f"{8 + header_len + end}); re-download it")
        for key in keys:
            info = header[key]
            begin, stop = info["data_offsets"]
            if info["dtype"] not in _DTYPE_OF_ST:
                raise CheckpointError(f"{file}: tensor {key!r} has dtype {info['dtype']}, which lfm does not "
                                      f"read; convert the checkpoint to F32, F16 or BF16")
            self._spans[key] = (_DTYPE_OF_ST[info["dtype"]], tuple(info["shape"]),
                                8 + header_len + begin, 8 + header_len + stop)
            self._register(key, file)

    def _add_pickle(self, file: Path) -> None:
        try:
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:
            raise CheckpointError(f"{file}: cannot be loaded with torch.load(weights_only=True): {e}") from e
        if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                  for k, v in state.items()):
            raise CheckpointError(f"{file}: not a state dict (a mapping of tensor names to tensors); "
                                  f"pass the checkpoint's weight file")
        self._pickled[file] = state
        for key in state:
            self._register(key, file)

    # -- access ----------------------------------------------------------------------------

    def keys(self) -> list[str]:
        return list(self._key_file)

    def __contains__(self, key: str) -> bool:
        return key in self._key_file

    def file_of(self, key: str) -> Path:
        return self._key_file[key]

    def get(self, key: str, device: str | torch.device = "cpu") -> torch.Tensor:
        """Read one tensor (a copy in memory, on `device`).

        Safetensors data is read with plain file reads into a fresh buffer, not through a memory
        map: mapped pages would stay resident (and count in the process's memory) for the whole
        run, so merging two 16 GB checkpoints would look like holding them both.
        """
        file = self._key_file[key]
        if file in self._pickled:
            return self._pickled[file][key].to(device)
        dtype, shape, start, stop = self._spans[key]
        buffer = torch.empty(stop - start, dtype=torch.uint8)
        handle = self._files.get(file) or self._files.setdefault(file, open(file, "rb"))
        handle.seek(start)
        view, done = memoryview(buffer.numpy()), 0
        while done < len(view):
            n = handle.readinto(view[done:])
            if not n:
                raise CheckpointError(f"{file}: tensor {key!r} ends early; the file is truncated, re-download it")
            done += n
        return buffer.view(dtype).reshape(shape).to(device)

    def map_one(self, key: str) -> torch.Tensor:
        """One tensor as a read-only view of its own memory map (CPU, no copy), unmapped when the tensor is freed.

        What a streaming merge reads: the pages are the operating system's file cache, mapped in one call
        (MAP_POPULATE) instead of copied into fresh memory page by page (measured on a 1.03B TIES merge:
        7.0 s vs 7.6 s, peak RSS 840 vs 940 MB, 40 % fewer page faults). Only this tensor's pages are
        mapped, and only while it is alive, so memory stays bounded as with ``get``. The memory is read-only:
        writing to the tensor crashes the process, so callers only read it. Pickle checkpoints, empty and
        misaligned tensors are read with ``get``.
        """
        file = self._key_file[key]
        if file in self._pickled:
            return self.get(key)
        dtype, shape, start, stop = self._spans[key]
        if stop == start or start % dtype.itemsize:
            return self.get(key)
        handle = self._files.get(file) or self._files.setdefault(file, open(file, "rb"))
        if os.fstat(handle.fileno()).st_size < stop:  # mapped pages past the end would crash the reader
            raise CheckpointError(f"{file}: tensor {key!r} ends early; the file is truncated, re-download it")
        first = start - start % mmap.ALLOCATIONGRANULARITY  # a mapping starts on a page boundary
        mapped = mmap.mmap(handle.fileno(), stop - first, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
                           prot=mmap.PROT_READ, offset=first)
        with warnings.catch_warnings():  # read-only memory: torch warns that it cannot protect it
            warnings.simplefilter("ignore")
            data = torch.frombuffer(mapped, dtype=torch.uint8, count=stop - start, offset=start - first)
        return data.view(dtype).reshape(shape)  # the tensor holds the map; freeing it unmaps

    def map(self, key: str) -> torch.Tensor:
        """A tensor of a safetensors file as a view of a read-only memory map of that file (CPU, no copy).

        For callers that hold a whole checkpoint for a long time (``ResidentPair``): the pages are the
        operating system's file cache, mapped in one go (MAP_POPULATE) instead of copied into fresh memory
        page by page (measured: 2 GB mapped in 0.2 s vs ~3 s copied, on a VM). The memory is read-only:
        writing to the tensor crashes the process, so callers only read it (copy first to modify).
        Pickle checkpoints are read with ``get``. The file must not be rewritten while the tensor is in use.
        """
        file = self._key_file[key]
        if file in self._pickled:
            return self.get(key)
        dtype, shape, start, stop = self._spans[key]
        if start % dtype.itemsize:
            return self.get(key)  # a writer that did not align its tensors: a view would be misaligned
        mapped = self._maps.get(file)
        if mapped is None:
            with open(file, "rb") as handle:
                flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
                mapped = self._maps[file] = mmap.mmap(handle.fileno(), 0, flags=flags, prot=mmap.PROT_READ)
        if stop == start:
            return torch.empty(shape, dtype=dtype)
        with warnings.catch_warnings():  # read-only memory: torch warns that it cannot protect it
            warnings.simplefilter("ignore")
            data = torch.frombuffer(mapped, dtype=torch.uint8, count=stop - start, offset=start)
        return data.view(dtype).reshape(shape)

    def meta(self, key: str) -> tuple[tuple[int, ...], torch.dtype]:
        """(shape, dtype) of a tensor without reading its data."""
        file = self._key_file[key]
        if file in self._pickled:
            t = self._pickled[file][key]
            return tuple(t.shape), t.dtype
        dtype, shape, _, _ = self._spans[key]
        return shape, dtype

    def fingerprint(self) -> str:
        """sha256 over config.json and every weight file's name, size and header.

        Cheap even for multi-GB checkpoints; it changes when any tensor's name, dtype, shape or
        file layout changes (not when bytes inside a tensor are edited in place).
        """
        h = hashlib.sha256((self.path / "config.json").read_bytes())
        for file in sorted(set(self._key_file.values())):
            h.update(file.name.encode())
            h.update(str(file.stat().st_size).encode())
            with open(file, "rb") as f:
                head = f.read(8)
                if file.suffix == ".safetensors" and len(head) == 8:
                    h.update(f.read(struct.unpack("<Q", head)[0]))
        return h.hexdigest()


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """A local directory as is; a hub id ('meta-llama/Meta-Llama-3-8B') is downloaded (weights as
    safetensors, configs, tokenizer and processor files) into the Hugging Face cache first."""
    if not is_hub_id(path):
        return Path(path)
    text = str(path)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(text, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt",
                                                             "*.jinja", "*.tiktoken"]))
    except Exception as e:
        offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
        where = (" (HF_HUB_OFFLINE is set: only the local hub cache was searched, HF_HUB_CACHE or ~/.cache/"
                 "huggingface/hub; download it there while online, or unset HF_HUB_OFFLINE)") if offline else ""
        raise CheckpointError(f"{text}: not a local directory, and downloading it from the Hugging Face hub "
                              f"failed ({type(e).__name__}: {' '.join(str(e).split())}){where}; pass a local model "
                              f"directory") from e


def is_hub_id(path: str | os.PathLike) -> bool:
    """True when `path` is no local file and reads as a hub id 'org/name' (so it would be downloaded)."""
    text = str(path)
    return not Path(path).exists() and text.count("/") == 1 and not text.startswith((".", "/", "~")) \
        and all(text.split("/"))


def read_config(config_file: Path) -> dict:
    """config.json as a dict; the parts lfm reads (text_config, architectures) must have the right type."""
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{config_file}: not valid JSON ({e}); restore the model's config.json") from e
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_file}: expected a JSON object, got {type(config).__name__}; "
                              f"restore the model's config.json")
    if "text_config" in config and not isinstance(config["text_config"], dict):
        raise CheckpointError(f"{config_file}: 'text_config' must be an object, got "
                              f"{json.dumps(config['text_config'])[:40]}; restore the model's config.json")
    for cfg in (config, config.get("text_config", {})):
        archs = cfg.get("architectures")
        if archs is not None and not (isinstance(archs, list) and all(isinstance(a, str) for a in archs)):
            raise CheckpointError(f"{config_file}: 'architectures' must be a list of class names; "
                                  f"restore the model's config.json")
    return config


def read_weight_map(index_file: Path) -> dict[str, str]:
    """The 'weight_map' of a weight index: tensor name -> shard file name, both strings."""
    try:
        index = json.loads(index_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{index_file}: not valid JSON ({e}); restore the index file") from e
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index_file}: not a valid index (needs a 'weight_map' object of tensor name -> "
                              f"shard file); restore the index file")
    for key, shard in weight_map.items():
        if not isinstance(shard, str) or not shard:
            raise CheckpointError(f"{index_file}: shard of tensor {key!r} is {json.dumps(shard)[:40]}, not a "
                                  f"file name; restore the index file")
    return weight_map


def contained_path(directory: Path, name: str, what: str, suffix: str | None = None) -> Path:
    """`directory / name` for a relative file name read from a file (an index, a results table), refused
    when it could lead outside `directory` (absolute, '..', a drive) or lacks `suffix`.

    The check is on the name, not on the resolved path: a Hugging Face cache snapshot's files are
    symlinks into its blob store, and they are the checkpoint's own files.

        >>> contained_path(Path("m"), "model-00001-of-00002.safetensors", "shard", ".safetensors")
        PosixPath('m/model-00001-of-00002.safetensors')
        >>> contained_path(Path("m"), "../x.safetensors", "shard")
        Traceback (most recent call last):
        lfm.checkpoint.CheckpointError: shard '../x.safetensors': must name a file inside m (no absolute path, no '..')
    """
    parts = name.replace("\\", "/").split("/")
    if not name or name.startswith(("/", "\\")) or ":" in parts[0] or any(p in ("", ".", "..") for p in parts):
        raise CheckpointError(f"{what} {name!r}: must name a file inside {directory} (no absolute path, no '..')")
    if suffix and not name.endswith(suffix):
        raise CheckpointError(f"{what} {name!r}: must be a {suffix} file"
                              + ("; pickle weights are never loaded through a safetensors index"
                                 if suffix == ".safetensors" else ""))
    return Path(directory) / name


def _read_header(file: Path) -> tuple[int, dict]:
    with open(file, "rb") as f:
        header_len = struct.unpack("<Q", f.read(8))[0]
        return header_len, json.loads(f.read(header_len))


# ------------------------------------------------------------------------------------------------
# Writing


@dataclass(frozen=True)
class PlannedTensor:
    key: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * torch.empty((), dtype=self.dtype).element_size()


def plan_shards(tensors: list[PlannedTensor], max_shard_bytes: int) -> list[list[PlannedTensor]]:
    """Group tensors, in order, into shards of at most max_shard_bytes (a bigger tensor gets its own)."""
    shards, current, size = [], [], 0
    for t in tensors:
        if current and size + t.nbytes > max_shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(t)
        size += t.nbytes
    if current:
        shards.append(current)
    return shards


class StreamingShardWriter:
    """Writes planned safetensors shards tensor by tensor, in plan order.

    The header of each shard is written first (offsets follow the plan), then `write(key, tensor)`
    appends each tensor's bytes. Files are named model-0000i-of-0000N.safetensors (or
    model.safetensors for one shard) with an index, as `save_pretrained` does.
    """

    def __init__(self, out_dir: Path, tensors: list[PlannedTensor], max_shard_bytes: int,
                 metadata: dict[str, str] | None = None):
        self.out_dir = Path(out_dir)
        self.shards = plan_shards(tensors, max_shard_bytes)
        n = len(self.shards)
        self.names = [SAFE_SINGLE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        self.metadata = {"format": "pt", **(metadata or {})}
        self._order = [(i, t) for i, shard in enumerate(self.shards) for t in shard]
        self._next = 0
        self._file = None
        self._shard = -1

    def _open_shard(self, i: int) -> None:
        if self._file:
            self._file.close()
        header, offset = {"__metadata__": self.metadata}, 0
        for t in self.shards[i]:
            header[t.key] = {"dtype": _ST_DTYPE[t.dtype], "shape": list(t.shape),
                             "data_offsets": [offset, offset + t.nbytes]}
            offset += t.nbytes
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # the format aligns the data start to 8 bytes
        self._file = open(self.out_dir / self.names[i], "wb")
        self._file.write(struct.pack("<Q", len(blob)))
        self._file.write(blob)
        self._shard = i

    def write(self, key: str, tensor: torch.Tensor) -> None:
        shard, planned = self._order[self._next]
        if key != planned.key or tensor.dtype != planned.dtype or tuple(tensor.shape) != planned.shape:
            raise RuntimeError(f"writer expected {planned} next, got {key} {tensor.dtype} {tuple(tensor.shape)}")
        if shard != self._shard:
            self._open_shard(shard)
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        self._file.write(memoryview(data.numpy()))
        self._next += 1

    def close(self) -> None:
        if self._next != len(self._order):
            raise RuntimeError(f"writer closed after {self._next} of {len(self._order)} tensors")
        if self._file:
            self._file.close()
        if len(self.shards) > 1:
            index = {"metadata": {"total_size": sum(t.nbytes for _, t in self._order)},
                     "weight_map": {t.key: self.names[i] for i, t in self._order}}
            (self.out_dir / SAFE_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


NON_WEIGHT_MAX_BYTES = 64 * 2**20  # a tokenizer.json is 2-35 MB; a bigger "tokenizer" is something else


def non_weight_files(model_dir: Path) -> list[Path]:
    """The top-level files a merge copies from a model directory beside the weights (config, tokenizer, processor,
    chat template, ...: every file that is no weights and no weight index; folders are not copied), each checked
    by ``own_file``: CheckpointError naming the first file that is not the directory's own."""
    model_dir = Path(model_dir)
    files = []
    for item in sorted(model_dir.iterdir()):
        if item.name.endswith(WEIGHT_SUFFIXES) or item.name in WEIGHT_INDEXES or item.is_dir():
            continue
        own_file(model_dir, item)
        files.append(item)
    return files


def own_file(model_dir: Path, item: Path) -> Path:
    """The resolved path of ``item`` when it is a model directory's own file: a regular file of at most
    NON_WEIGHT_MAX_BYTES whose resolved path lies inside the directory, or, for a Hugging Face cache snapshot
    (``.../snapshots/REV/``), in that repository's ``blobs/`` (where the snapshot's links point). Otherwise a
    CheckpointError naming it: a tuned directory whose special_tokens_map.json links to /etc/passwd must not
    put /etc/passwd into the merged model."""
    home = Path(model_dir).resolve()
    real = Path(item).resolve()
    homes = [home] + ([home.parent.parent / "blobs"] if home.parent.name == "snapshots" else [])
    if not any(real.is_relative_to(h) for h in homes):
        raise CheckpointError(f"{item}: links to {real}, outside the model directory {home}; lfm copies only the "
                              f"model directory's own files: put the file itself there")
    try:
        st = os.stat(real)
    except OSError as e:
        raise CheckpointError(f"{item}: cannot be read ({e.strerror}); restore the file or remove it") from None
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"{item}: not a regular file; lfm copies only regular files beside the weights, "
                              f"remove it")
    if st.st_size > NON_WEIGHT_MAX_BYTES:
        raise CheckpointError(f"{item}: {st.st_size:,} bytes, more than the {NON_WEIGHT_MAX_BYTES:,} lfm copies "
                              f"for a non-weight file (tokenizer, processor, template); remove it from the "
                              f"directory")
    return real


def copy_non_weight_files(src: Path, dst: Path) -> list[str]:
    """Copy ``non_weight_files(src)`` into ``dst``, each checked again as it is opened (it may have changed since)
    and read up to its bound. Returns the names copied."""
    copied = []
    for item in non_weight_files(src):
        real = own_file(src, item)
        with open(os.open(real, os.O_RDONLY | os.O_NOFOLLOW), "rb") as f, open(dst / item.name, "wb") as out:
            data = f.read(NON_WEIGHT_MAX_BYTES + 1)
            if len(data) > NON_WEIGHT_MAX_BYTES:
                raise CheckpointError(f"{item}: grew past {NON_WEIGHT_MAX_BYTES:,} bytes while it was copied; "
                                      f"remove it from the directory")
            out.write(data)
        shutil.copystat(real, dst / item.name)
        copied.append(item.name)
    return copied


def save_small_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict | None = None) -> None:
    """Write a safetensors file of small tensors (scores: one vector per weight) through Python's own file writes:
    a full disk or a file size limit is then an OSError naming the file (safetensors' own writer reports it as a
    SafetensorError, which ended `lfm score` and `lfm precompute` in a traceback). Model weights are written by
    ``StreamingShardWriter``."""
    from safetensors.torch import save

    data = save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None


def check_output_path(out: Path, inputs: list[Path], force: bool) -> None:
    """Refuse an output that is an input, lies inside one, or contains one; or is non-empty without force."""
    out = Path(out).resolve()
    for inp in inputs:
        inp = Path(inp).resolve()
        if out == inp or inp in out.parents:
            raise ValueError(f"--out {out} is (inside) the input {inp}; lfm never writes into its inputs, "
                             f"choose another directory")
        if out in inp.parents:
            raise ValueError(f"--out {out} contains the input {inp}; overwriting it would delete the input")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise FileExistsError(f"--out {out} exists and is not empty; pass --force to replace it")


SCRATCH_TAGS = ("lfm-tmp", "lfm-old")  # .OUT.lfm-tmp-PID: being built; .OUT.lfm-old-PID: being replaced


def scratch_path(out: Path, tag: str, pid: int | None = None) -> Path:
    return out.parent / f".{out.name}.{tag}-{pid or os.getpid()}"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def remove_dead_scratch(out: Path, log=print) -> list[Path]:
    """Delete the scratch copies of `out` left by lfm runs that were killed (their PID no longer runs).

    A run killed with SIGKILL (or a machine that lost power) cannot clean up after itself; its PID
    in the name tells a later run that the owner is gone. Scratch of a live run is left alone."""
    removed = []
    for tag in SCRATCH_TAGS:
        prefix = f".{out.name}.{tag}-"
        for path in out.parent.glob(glob.escape(prefix) + "*"):
            pid = path.name[len(prefix):]
            if pid.isdigit() and int(pid) != os.getpid() and not _process_alive(int(pid)):
                _remove(path)
                log(f"removed {path}, left by an lfm run (process {pid}) that was killed before it finished")
                removed.append(path)
    return removed


@contextmanager
def atomic_output_dir(out: Path, force: bool = False, log=print):
    """Yield a temporary sibling directory; on success it replaces `out`, on error it is deleted.

    Scratch left beside `out` by killed runs is removed first (`remove_dead_scratch`)."""
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_scratch(out, log)
    tmp = scratch_path(out, "lfm-tmp")
    _remove(tmp)
    try:
        tmp.mkdir()
        yield tmp
    except OSError as e:
        _remove(tmp)
        if e.filename is None or Path(e.filename) == tmp:  # a failed write() names no file, and the
            raise OSError(e.errno, e.strerror, str(out)) from e  # scratch name means nothing to the user
        raise
    except BaseException:
        _remove(tmp)
        raise
    if out.is_dir() and not out.is_symlink() and not any(out.iterdir()):
        out.rmdir()  # an empty directory the user made for us
    if out.exists() or out.is_symlink():
        if not force:
            _remove(tmp)
            raise FileExistsError(f"{out} appeared while merging; pass --force to replace it")
        old = scratch_path(out, "lfm-old")
        os.replace(out, old)
        os.replace(tmp, out)
        _remove(old)
    else:
        os.replace(tmp, out)
