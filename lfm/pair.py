"""Align a base LLM with the language model inside a tuned MLLM (or a tuned LLM of its family).

Every tensor is named by its *canonical* name, the base causal LM's key ('model.layers.3.mlp.up_proj.weight',
'lm_head.weight'). Tuned keys map to canonical names by these rules:

    language_model.model.X     -> model.X        LLaVA / LLaVA-Next as `save_pretrained` writes them
    language_model.lm_head.X   -> lm_head.X
    model.language_model.X     -> model.X        the other layout in the wild (+ a top-level lm_head)
    lm_head.X                  -> lm_head.X
    anything else in an MLLM   -> passthrough    vision tower, projector, image_newline: copied from tuned
    a tuned causal LM          -> identity       LLM-to-LLM merges

Everything is checked from the configs and safetensors headers before any tensor is read: the
architecture (model type, hidden size, layers, heads, FFN size), the key sets in both directions,
each shape, and the vocabulary (the tuned one may be larger: the extra rows stay tuned).
"""

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lfm.checkpoint import Checkpoint, CheckpointError
from lfm.neurons import extra_vocab_rows

ARCH_FIELDS = ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads",
               "num_key_value_heads")
LM_PREFIXES = (("language_model.model.", "model."), ("language_model.lm_head.", "lm_head."),
               ("model.language_model.", "model."), ("lm_head.", "lm_head."))


class PairError(ValueError):
    """The base and tuned checkpoints do not form a mergeable pair; the message says why."""


@dataclass(frozen=True)
class Entry:
    """One LM tensor present in both models."""

    name: str  # canonical (base-style) name
    base_key: str
    tuned_key: str


def is_multimodal(config: dict) -> bool:
    return "text_config" in config or any("ConditionalGeneration" in a for a in config.get("architectures") or [])


def text_config(config: dict) -> dict:
    """The language model's config inside an MLLM config (or the config itself)."""
    return config.get("text_config", config)


def canonical_name(key: str, multimodal: bool) -> str | None:
    """Canonical LM name of a tuned key, or None if the key is not part of the language model."""
    if not multimodal:
        return key
    for prefix, replacement in LM_PREFIXES:
        if key.startswith(prefix):
            return replacement + key[len(prefix):]
    return None


def loaded_key(tuned_key: str, model_keys) -> str | None:
    """The key a tuned checkpoint tensor has in a model loaded from it (its ``state_dict``), or None.

    transformers renames LLaVA keys on load (``language_model.model.X`` is ``model.language_model.X`` in
    recent versions, ``language_model.lm_head.X`` is ``lm_head.X``): every layout of ``LM_PREFIXES`` with
    the same canonical name is tried, the checkpoint's own first.

    >>> loaded_key("language_model.model.norm.weight", {"model.language_model.norm.weight"})
    'model.language_model.norm.weight'
    """
    candidates = [tuned_key]
    name = canonical_name(tuned_key, multimodal=True)
    if name is not None:
        candidates += [prefix + name[len(canonical):] for prefix, canonical in LM_PREFIXES
                       if name.startswith(canonical)]
    return next((c for c in candidates if c in model_keys), None)


@dataclass
class Pair:
    base: Checkpoint
    tuned: Checkpoint
    entries: list[Entry]
    passthrough: list[str]  # tuned keys copied unchanged (vision tower, projector, ...)
    extra_vocab: dict[str, int] = field(default_factory=dict)  # canonical name -> extra tuned rows

    @property
    def multimodal(self) -> bool:
        return is_multimodal(self.tuned.config)

    def iter_lm(self, device: str | torch.device = "cpu", *, mapped: bool = False):
        """Yield (entry, base_tensor, tuned_tensor), one pair in memory at a time.

        mapped: on CPU, views of memory-mapped files instead of copies (``Checkpoint.map``), for callers
            that keep every tensor (``ResidentPair``).
        """
        mapped = mapped and torch.device(device).type == "cpu"
        for entry in self.entries:
            if mapped:
                yield entry, self.base.map(entry.base_key), self.tuned.map(entry.tuned_key)
            else:
                yield entry, self.base.get(entry.base_key, device), self.tuned.get(entry.tuned_key, device)

    def describe(self) -> str:
        kind = type_name(self.tuned.config)
        lines = [f"base  {self.base.path} ({type_name(self.base.config)})",
                 f"tuned {self.tuned.path} ({kind})",
                 f"{len(self.entries)} language-model tensors aligned, {len(self.passthrough)} copied from tuned"]
        for name, rows in self.extra_vocab.items():
            lines.append(f"{name}: tuned has {rows} extra vocabulary rows; shared rows merged, extra rows kept from tuned")
        return "\n".join(lines)


def type_name(config: dict) -> str:
    archs = config.get("architectures") or [config.get("model_type", "?")]
    return archs[0]


def open_pair(base: str | Path, tuned: str | Path, *, allow_pickle: bool = False) -> Pair:
    """Open and validate a (base LLM, tuned MLLM or LLM) pair without reading tensor data.

    Example:
        >>> from lfm.organism import base_dir, tuned_dir
        >>> pair = open_pair(base_dir(), tuned_dir())
        >>> print(pair.describe().splitlines()[-1])
        39 language-model tensors aligned, 43 copied from tuned

    Raises:
        PairError naming the mismatching field, key or tensor.
    """
    base_ckpt = Checkpoint(base, allow_pickle=allow_pickle)
    tuned_ckpt = Checkpoint(tuned, allow_pickle=allow_pickle)
    if is_multimodal(base_ckpt.config):
        raise PairError(f"{base_ckpt.path}: the base must be a causal LLM, got {type_name(base_ckpt.config)}")
    check_architectures(base_ckpt, tuned_ckpt)

    multimodal = is_multimodal(tuned_ckpt.config)
    base_names = {canonical_name(k, multimodal=False): k for k in base_ckpt.keys()}
    if "lm_head.weight" not in base_names and "model.embed_tokens.weight" in base_names and \
            base_ckpt.config.get("tie_word_embeddings", False):
        base_names["lm_head.weight"] = "model.embed_tokens.weight"  # a tied head is the embedding

    entries, passthrough, seen = [], [], set()
    for key in tuned_ckpt.keys():
        name = canonical_name(key, multimodal)
        if name is None:
            passthrough.append(key)
            continue
        if name not in base_names:
            raise PairError(f"tuned language-model tensor {key!r} (canonical {name!r}) has no counterpart "
                            f"in the base {base_ckpt.path}; is this the base the MLLM was tuned from?")
        if name in seen:
            raise PairError(f"tuned checkpoint {tuned_ckpt.path} holds two tensors for {name!r}")
        seen.add(name)
        entries.append(Entry(name, base_names[name], key))
    missing = sorted(n for n, k in base_names.items() if n not in seen and not (
        n == "lm_head.weight" and k == "model.embed_tokens.weight"))
    if missing:
        raise PairError(f"base tensor {base_names[missing[0]]!r} is missing from the tuned language model "
                        f"{tuned_ckpt.path} ({len(missing)} missing in all)")
    if not entries:
        raise PairError(f"no language-model tensors found in {tuned_ckpt.path}")

    extra_vocab = {}
    for e in entries:
        b_shape, b_dtype = base_ckpt.meta(e.base_key)
        t_shape, t_dtype = tuned_ckpt.meta(e.tuned_key)
        for ckpt, key, dtype in ((base_ckpt, e.base_key, b_dtype), (tuned_ckpt, e.tuned_key, t_dtype)):
            if not dtype.is_floating_point:
                raise PairError(f"{ckpt.file_of(key)}: language-model tensor {key!r} is "
                                f"{str(dtype).removeprefix('torch.')}; lfm merges floating-point weights only, "
                                f"restore the checkpoint's float weights")
        if b_shape == t_shape:
            continue
        rows = extra_vocab_rows(e.name, b_shape, t_shape)
        if not rows:
            raise PairError(f"shape mismatch for tensor {e.name!r}: base {b_shape} ({base_ckpt.file_of(e.base_key).name}) "
                            f"vs tuned {t_shape} ({tuned_ckpt.file_of(e.tuned_key).name})")
        extra_vocab[e.name] = rows
    check_config_shapes(base_ckpt, {e.name: e.base_key for e in entries})
    check_config_shapes(tuned_ckpt, {e.name: e.tuned_key for e in entries})
    return Pair(base_ckpt, tuned_ckpt, entries, passthrough, extra_vocab)


def expected_shapes(config: dict) -> dict[str, tuple[tuple[str, object], tuple[str, object]]]:
    """Module kind -> ((config field, value), (config field, value)): the stored [out, in] weight shape a
    text config implies, with the fields that imply it (value None where the config does not say).
    embed_tokens / lm_head are [vocab_size, hidden_size]."""
    def known(*values):
        return all(isinstance(v, int) and not isinstance(v, bool) for v in values)

    hidden, inter, vocab = config.get("hidden_size"), config.get("intermediate_size"), config.get("vocab_size")
    heads = config.get("num_attention_heads")
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or (hidden // heads if known(hidden, heads) and heads else None)
    q = ("num_attention_heads x head_dim", heads * head_dim if known(heads, head_dim) else None)
    kv = ("num_key_value_heads x head_dim", kv_heads * head_dim if known(kv_heads, head_dim) else None)
    h, i, v = ("hidden_size", hidden), ("intermediate_size", inter), ("vocab_size", vocab)
    return {"q_proj": (q, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, q),
            "gate_proj": (i, h), "up_proj": (i, h), "down_proj": (h, i), "embed_tokens": (v, h), "lm_head": (v, h)}


_SHAPED = re.compile(r"model\.layers\.\d+\.(?:self_attn|mlp)\.(\w+)\.weight|model\.(embed_tokens)\.weight|(lm_head)\.weight")


def check_config_shapes(ckpt: Checkpoint, names: dict[str, str]) -> None:
    """The checkpoint's config must describe its tensors (hidden size, FFN size, heads, vocabulary, layer
    count), or the merged output would be a directory `from_pretrained` refuses.

    names: canonical name -> the checkpoint's key, for the language-model tensors.
    """
    cfg = text_config(ckpt.config)
    config_file = ckpt.path / "config.json"
    expected = expected_shapes(cfg)
    for name, key in names.items():
        match = _SHAPED.fullmatch(name)
        kind = match and next(g for g in match.groups() if g)
        if kind not in expected:
            continue
        shape, _ = ckpt.meta(key)
        for dim, (field_name, value) in enumerate(expected[kind]):
            if value is not None and (len(shape) != 2 or shape[dim] != value):
                raise PairError(f"{config_file}: {field_name} is {value}, but {key!r} in "
                                f"{ckpt.file_of(key).name} is {' x '.join(map(str, shape))} (dim {dim} should be "
                                f"{value}); restore the config.json that came with these weights")
    layers = {int(n.split(".")[2]) for n in names if n.startswith("model.layers.") and n.split(".")[2].isdigit()}
    n_layers = cfg.get("num_hidden_layers")
    if layers and n_layers is not None and n_layers != max(layers) + 1:
        raise PairError(f"{config_file}: num_hidden_layers is {n_layers}, but the weights hold {max(layers) + 1} "
                        f"layers; restore the config.json that came with them")


def check_architectures(base: Checkpoint, tuned: Checkpoint) -> None:
    b, t = text_config(base.config), text_config(tuned.config)
    if b.get("model_type") and t.get("model_type") and b["model_type"] != t["model_type"]:
        raise PairError(f"architecture mismatch: base model_type {b['model_type']!r} vs tuned language model "
                        f"{t['model_type']!r}")
    for key in ARCH_FIELDS:
        if key in b and key in t and b[key] != t[key]:
            raise PairError(f"architecture mismatch: {key} is {b[key]} in the base ({base.path}) but {t[key]} "
                            f"in the tuned language model ({tuned.path})")
    bv, tv = b.get("vocab_size"), t.get("vocab_size")
    if bv and tv and tv < bv:
        raise PairError(f"vocab mismatch: the tuned vocabulary ({tv}) is smaller than the base's ({bv})")


__all__ = ["Entry", "Pair", "PairError", "CheckpointError", "open_pair", "canonical_name", "loaded_key", "text_config"]
