"""Align a base LLM with the language model inside a tuned MLLM (or a tuned LLM of its family).

Every tensor is named by its *canonical* name, the base causal LM's key ('model.layers.3.mlp.up_proj.weight',
'lm_head.weight'). A tuned MLLM's keys map to canonical names through its family's row in ``lfm.families``
(found by the tuned config's model_type): the layout its keys use says which prefix holds the LM
(``language_model.model.`` for LLaVA as ``save_pretrained`` writes it, ``model.text_model.`` for Idefics3,
``model.`` for Qwen2-VL, ...); every other tensor is passthrough, copied from tuned (vision tower, projector,
connector, image_newline). A tuned causal LM maps by identity (LLM-to-LLM merges).

Everything is checked from the configs and safetensors headers before any tensor is read: the family and the
base it pairs with (model types), the fields that must match (hidden size, layers, heads, FFN size, ...), the key
sets in both directions, each shape, and the vocabulary (the tuned one may be larger: the extra rows stay tuned).
"""

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lfm.checkpoint import Checkpoint, CheckpointError
from lfm.families import BASE_TIED_BY_DEFAULT, SHAPES, Family, Layout, family_of, nearest_family
from lfm.neurons import extra_vocab_rows


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


def loaded_key(tuned_key: str, model_keys, family: Family | None = None) -> str | None:
    """The key a tuned checkpoint tensor has in a model loaded from it (its ``state_dict``), or None.

    transformers renames keys on load (LLaVA's ``language_model.model.X`` is ``model.language_model.X`` in
    memory, Qwen2-VL's ``model.X`` too): every layout of the family (LLaVA's by default) that gives the tensor
    the same canonical name is tried, the checkpoint's own key first.

    >>> loaded_key("language_model.model.norm.weight", {"model.language_model.norm.weight"})
    'model.language_model.norm.weight'
    """
    family = family or family_of({"model_type": "llava"})
    candidates = [tuned_key]
    for layout in family.layouts:
        name = layout.canonical(tuned_key)
        if name is not None:
            candidates += family.loaded_keys(name)
    return next((c for c in candidates if c in model_keys), None)


@dataclass
class Pair:
    base: Checkpoint
    tuned: Checkpoint
    entries: list[Entry]
    passthrough: list[str]  # tuned keys copied unchanged (vision tower, projector, ...)
    extra_vocab: dict[str, int] = field(default_factory=dict)  # canonical name -> extra tuned rows
    family: Family | None = None  # the tuned MLLM's row of lfm.families (None: a tuned causal LM)
    layout: Layout | None = None  # the family's layout the tuned keys use
    differences: dict[str, tuple] = field(default_factory=dict)  # may-differ field -> (base value, tuned value)

    @property
    def multimodal(self) -> bool:
        return self.family is not None

    def loaded_key(self, tuned_key: str, model_keys) -> str | None:
        """The key a tuned tensor has in a model loaded from the tuned checkpoint (see ``loaded_key``)."""
        if self.family is None:
            return tuned_key if tuned_key in model_keys else None
        return loaded_key(tuned_key, model_keys, self.family)

    def lm_prefixes(self) -> list[str]:
        """The prefixes under which the tuned checkpoint holds its LM tensors ('model.text_model.', 'lm_head.')."""
        return sorted({self.layout.lm_prefix(e.tuned_key) for e in self.entries}) if self.layout else []

    def parts(self) -> dict[str, int]:
        """Passthrough tensor counts by part ('vision tower': 23, 'projector': 4, ...), in tuned order."""
        return dict(Counter(self.layout.part(k) for k in self.passthrough)) if self.layout else {}

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
                 f"tuned {self.tuned.path} ({kind})"]
        if self.family is not None:
            lm_type, base_type = text_config(self.tuned.config).get("model_type"), self.base.config.get("model_type")
            lines.append(f"family {self.family.name} (layout: {self.layout.name}; LM at "
                         f"{', '.join(self.lm_prefixes())}; {lm_type} <-> base {base_type})")
            lines.append("copied from tuned: " + (", ".join(f"{part} {n}" for part, n in self.parts().items())
                                                  or "nothing"))
        for name, (b, t) in self.differences.items():
            lines.append(f"{name} differs: base {b}, tuned {t} (the merged model keeps tuned's; the weights mean "
                         f"the same)")
        lines.append(f"{len(self.entries)} language-model tensors aligned, {len(self.passthrough)} copied from tuned")
        for name, rows in self.extra_vocab.items():
            lines.append(f"{name}: tuned has {rows} extra vocabulary rows; shared rows merged, extra rows kept from tuned")
        return "\n".join(lines)


def type_name(config: dict) -> str:
    archs = config.get("architectures") or [config.get("model_type", "?")]
    return archs[0]


def tuned_family(tuned: Checkpoint, base_names) -> Family | None:
    """The tuned checkpoint's row of the family table; None for a causal LM. A refused row, or an MLLM the table
    does not know, is a PairError saying why / naming the nearest supported row."""
    family = family_of(tuned.config)
    if family is not None and not family.supported:
        raise PairError(f"{tuned.path}: {type_name(tuned.config)} ({family.name}) cannot be merged with a base LLM: "
                        f"{family.refuse}")
    if family is None and is_multimodal(tuned.config):
        lm_type = text_config(tuned.config).get("model_type")
        nearest, why = nearest_family(tuned.keys(), base_names, lm_type)
        raise PairError(f"{tuned.path}: {type_name(tuned.config)} (model_type "
                        f"{tuned.config.get('model_type')!r}) is not in lfm's family table; nearest supported "
                        f"family: {nearest.name} ({why}); add a row for it to FAMILY_ROWS in lfm/families.py "
                        f"(docs/families.md says what a row holds)")
    return family


def base_tensor_names(base: Checkpoint) -> dict[str, str]:
    """canonical name -> the base's key; a tied base's lm_head is its embedding."""
    names = {k: k for k in base.keys()}
    tied = base.config.get("tie_word_embeddings", base.config.get("model_type") in BASE_TIED_BY_DEFAULT)
    if "lm_head.weight" not in names and "model.embed_tokens.weight" in names and tied is True:
        names["lm_head.weight"] = "model.embed_tokens.weight"  # a tied head is the embedding
    return names


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
    base_names = base_tensor_names(base_ckpt)
    family = tuned_family(tuned_ckpt, base_names)
    differences = check_architectures(base_ckpt, tuned_ckpt, family)

    layout = family.layout_of(tuned_ckpt.keys(), base_names) if family else None
    entries, passthrough, seen = [], [], set()
    for key in tuned_ckpt.keys():
        name = layout.canonical(key) if layout else key
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
        where = f" (family {family.name}, layout {layout.name}: LM under {', '.join(layout.lm)})" if family else ""
        raise PairError(f"base tensor {base_names[missing[0]]!r} is missing from the tuned language model "
                        f"{tuned_ckpt.path}{where} ({len(missing)} missing in all)")
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
    return Pair(base_ckpt, tuned_ckpt, entries, passthrough, extra_vocab, family, layout, differences)


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


def check_architectures(base: Checkpoint, tuned: Checkpoint, family: Family | None = None) -> dict[str, tuple]:
    """The base must be the kind of LLM the tuned LM is (its family's base model_type; the same model_type for
    an LLM-to-LLM pair), with equal values of the fields that must match (the shapes, and the family's ``match``:
    checked where both configs state them). Returns the family's may-differ fields that do differ."""
    b, t = text_config(base.config), text_config(tuned.config)
    b_type, t_type = b.get("model_type"), t.get("model_type")
    if family is not None and family.lm_types and isinstance(t_type, str) and t_type not in family.lm_types:
        raise PairError(f"{tuned.path}: {family.name}'s language model is {' or '.join(family.lm_types)}, but its "
                        f"text_config has model_type {t_type!r}; restore the model's config.json")
    if isinstance(b_type, str) and isinstance(t_type, str):
        wanted = family.bases_for(t_type) if family else (t_type,)
        if b_type not in wanted:
            pairs_with = f" ({family.name}'s {t_type} pairs with a {' or '.join(wanted)} base)" if family else ""
            raise PairError(f"architecture mismatch: base model_type {b_type!r} vs tuned language model "
                            f"{t_type!r}{pairs_with}")
    elif b_type and t_type and b_type != t_type:
        raise PairError(f"architecture mismatch: base model_type {b_type!r} vs tuned language model {t_type!r}")
    for key in dict.fromkeys(SHAPES + (family.match if family else ())):
        if key in b and key in t and b[key] != t[key]:
            raise PairError(f"architecture mismatch: {key} is {b[key]} in the base ({base.path}) but {t[key]} "
                            f"in the tuned language model ({tuned.path})")
    bv, tv = b.get("vocab_size"), t.get("vocab_size")
    if bv and tv and tv < bv:
        raise PairError(f"vocab mismatch: the tuned vocabulary ({tv}) is smaller than the base's ({bv})")
    return {key: (b[key], t[key]) for key in (family.may_differ if family else ())
            if key in b and key in t and b[key] != t[key]}


__all__ = ["Entry", "Pair", "PairError", "CheckpointError", "open_pair", "loaded_key", "text_config"]
