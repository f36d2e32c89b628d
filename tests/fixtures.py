"""Tiny *real* Hugging Face checkpoints for lfm's tests and benchmarks, all built from one seeded recipe.

A base causal LM (Llama by default; GQA: 4 query heads, 2 key/value heads) is created with
`transformers` and written with `save_pretrained`. Tuned models are derived from it by adding a
seeded delta to every language-model tensor:

- linear modules (q/k/v/o/gate/up/down): every neuron gets its own magnitude, drawn log-uniformly
  over a decade, and `N_BIG` neurons per matrix get a much larger change, so that Neuron-Locate has
  something to find. The neuron axis is rows of q/k/v/gate/up and columns of o/down (as stored);
- norms, embeddings and lm_head: small noise (a few embedding rows change more).

Tuned variants: LLaVA saved by `save_pretrained` (keys `language_model.model.layers.N...`), the same
weights in the other layout found in the wild (`model.language_model.layers.N...`, top-level
`lm_head.weight`) written with safetensors directly, LLaVA-Next, a plain tuned Llama (LLM-to-LLM),
LLaVA with a larger vocabulary, sharded and bf16 variants, Mistral and Qwen2 families, and broken
variants for the error tests.

Everything here is deterministic in its seeds: two calls with the same arguments produce the same
bytes. `TinyZoo` builds each variant lazily under one root directory (used by tests/conftest.py).
"""
from __future__ import annotations

import json
import math
import re
import shutil
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

HIDDEN = 32
LAYERS = 2
HEADS = 4
KV_HEADS = 2
INTERMEDIATE = 64
VOCAB = 96
EXTRA_VOCAB = 4  # LLaVA-Next style: tuned vocab = VOCAB + EXTRA_VOCAB (e.g. an added <image> row)
N_BIG = 2  # neurons per linear matrix with a large change
LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
COLUMN_NEURONS = ("o_proj", "down_proj")  # neuron = column (dim 1); others: neuron = row (dim 0)


# ----------------------------------------------------------------------------- configs
def text_config(family: str = "llama", *, vocab: int = VOCAB, **overrides):
    """A tiny text config of `family` (llama | mistral | qwen2)."""
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    cls = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}[family]
    kw = dict(
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        intermediate_size=INTERMEDIATE,
        vocab_size=vocab,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    kw.update(overrides)
    return cls(**kw)


def vision_config():
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=28,
        patch_size=14,
        projection_dim=16,
    )


def causal_lm_class(family: str):
    from transformers import LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM

    return {"llama": LlamaForCausalLM, "mistral": MistralForCausalLM, "qwen2": Qwen2ForCausalLM}[family]


# ----------------------------------------------------------------------------- deltas
def neuron_axis_of(name: str) -> int | None:
    """0 for rows of q/k/v/gate/up weights, 1 for columns of o/down weights, None otherwise."""
    m = re.search(r"\.(\w+_proj)\.weight$", name)
    if not m or m.group(1) not in LINEAR:
        return None
    return 1 if m.group(1) in COLUMN_NEURONS else 0


def make_delta(name: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Seeded float32 delta for canonical tensor `name` (e.g. "model.layers.0.mlp.up_proj.weight").

    Linear matrices: delta[i, :] (or [:, i]) = noise * s_i with s_i log-uniform in [1e-4, 1e-3],
    and `N_BIG` neurons with s_i = 2e-2, so C(i) has a heavy tail. Other tensors: noise * 1e-3.
    """
    noise = torch.randn(shape, generator=generator)
    axis = neuron_axis_of(name)
    if axis is None:
        delta = noise * 1e-3
        if name.endswith("embed_tokens.weight") or name.endswith("lm_head.weight"):
            rows = torch.randperm(shape[0], generator=generator)[:3]
            delta[rows] *= 10.0
        return delta
    n = shape[axis]
    scale = 10 ** (-4 + torch.rand(n, generator=generator))  # [n_neurons] in [1e-4, 1e-3)
    big = torch.randperm(n, generator=generator)[:N_BIG]
    scale[big] = 2e-2
    return noise * (scale[:, None] if axis == 0 else scale[None, :])


def tuned_lm_state(base_sd: dict[str, torch.Tensor], seed: int, *, extra_vocab: int = 0) -> dict[str, torch.Tensor]:
    """tuned = base + make_delta(...) for every tensor of a canonical causal-LM state dict.

    Deltas are computed in float32 and the sum is cast back to each tensor's dtype. With
    `extra_vocab` > 0, embed_tokens and lm_head get that many extra (random) rows at the end.
    """
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in sorted(base_sd):
        b = base_sd[name]
        t = b.float() + make_delta(name, tuple(b.shape), g)
        if extra_vocab and (name.endswith("embed_tokens.weight") or name.endswith("lm_head.weight")):
            extra = torch.randn((extra_vocab, b.shape[1]), generator=g) * 0.02
            t = torch.cat([t, extra], dim=0)
        out[name] = t.to(b.dtype).contiguous()
    return out


# ----------------------------------------------------------------------------- writers
def _init_model(cls, config, seed: int, dtype: torch.dtype):
    torch.manual_seed(seed)
    model = cls(config)
    return model.to(dtype).eval()


def _shard_kw(max_shard_size: str | None) -> dict:
    return {"max_shard_size": max_shard_size} if max_shard_size else {}


def build_base(
    out: Path,
    *,
    family: str = "llama",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    max_shard_size: str | None = None,
    **config_overrides,
) -> Path:
    """Write a tiny random causal LM (the *base*) with save_pretrained. Returns `out`."""
    cfg = text_config(family, **config_overrides)
    model = _init_model(causal_lm_class(family), cfg, seed, dtype)
    model.save_pretrained(out, **_shard_kw(max_shard_size))
    return Path(out)


def read_state(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors checkpoint directory (sharded or not), keyed as stored."""
    directory = Path(directory)
    sd = {}
    for f in sorted(directory.glob("*.safetensors")):
        with safe_open(str(f), "pt") as h:
            for k in h.keys():
                sd[k] = h.get_tensor(k)
    return sd


def _llava_model(kind: str, tcfg, seed: int, dtype: torch.dtype, image_token_index: int):
    from transformers import (
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
    )

    if kind == "llava":
        cfg = LlavaConfig(vision_config=vision_config(), text_config=tcfg, image_token_index=image_token_index)
        cls = LlavaForConditionalGeneration
    elif kind == "llava_next":
        cfg = LlavaNextConfig(
            vision_config=vision_config(),
            text_config=tcfg,
            image_token_index=image_token_index,
            image_grid_pinpoints=[[28, 28], [28, 56]],
        )
        cls = LlavaNextForConditionalGeneration
    else:
        raise ValueError(kind)
    return _init_model(cls, cfg, seed, dtype)


def build_tuned(
    out: Path,
    base_dir: Path,
    *,
    kind: str = "llava",
    layout: str = "hf",
    seed: int = 1,
    extra_vocab: int = 0,
    max_shard_size: str | None = None,
) -> Path:
    """Write a tuned model derived from the base at `base_dir`.

    Args:
        kind: "llava" | "llava_next" | "llm" (a plain causal LM of the base's family).
        layout: "hf" (save_pretrained: `language_model.model.layers.N...`, `language_model.lm_head.weight`)
            or "wild" (`model.language_model.layers.N...`, `lm_head.weight`, `model.vision_tower.*`,
            written with safetensors directly; config.json written by save_pretrained of the config).
        seed: seeds the LM deltas and the vision tower / projector initialisation.
        extra_vocab: extra embedding / lm_head rows in the tuned model (LLaVA-Next over Llama-3).
    The tuned model has the base's dtype.
    """
    from transformers import AutoConfig

    base_dir = Path(base_dir)
    out = Path(out)
    base_cfg = AutoConfig.from_pretrained(base_dir)
    base_sd = read_state(base_dir)
    dtype = next(iter(base_sd.values())).dtype
    lm = tuned_lm_state(base_sd, seed, extra_vocab=extra_vocab)  # canonical keys
    family = base_cfg.model_type
    tcfg = text_config(
        family,
        vocab=base_cfg.vocab_size + extra_vocab,
        hidden_size=base_cfg.hidden_size,
        num_hidden_layers=base_cfg.num_hidden_layers,
        intermediate_size=base_cfg.intermediate_size,
    )
    if kind == "llm":
        model = _init_model(causal_lm_class(family), tcfg, seed, dtype)
        model.load_state_dict(lm, strict=True)
        model.save_pretrained(out, **_shard_kw(max_shard_size))
        return out
    model = _llava_model(kind, tcfg, seed + 1000, dtype, image_token_index=tcfg.vocab_size - 1)
    # in-memory names (transformers 5): model.language_model.*, lm_head.weight, model.vision_tower.*, ...
    sd = {k: v for k, v in model.state_dict().items()}
    for name, t in lm.items():
        key = "lm_head.weight" if name == "lm_head.weight" else "model.language_model." + name[len("model."):]
        if key not in sd:
            raise KeyError(f"fixture: {key} not in {type(model).__name__}")
        sd[key] = t
    model.load_state_dict(sd, strict=True)
    if layout == "hf":
        model.save_pretrained(out, **_shard_kw(max_shard_size))
    elif layout == "wild":
        if max_shard_size:
            raise ValueError("wild layout fixture is single-file")
        out.mkdir(parents=True, exist_ok=True)
        model.config.save_pretrained(out)
        save_file({k: v.contiguous() for k, v in sd.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    else:
        raise ValueError(layout)
    return out


# ----------------------------------------------------------------------------- broken variants
def copy_dir(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return Path(dst)


def rewrite_single(directory: Path, edit) -> Path:
    """Load a single-file safetensors checkpoint, apply `edit(state_dict)` in place, write it back."""
    f = Path(directory) / "model.safetensors"
    sd = read_state(directory)
    edit(sd)
    f.unlink()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(f), metadata={"format": "pt"})
    return Path(directory)


def truncate_file(path: Path, keep_fraction: float = 0.5) -> Path:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * keep_fraction)])
    return Path(path)


def to_pickle(directory: Path) -> Path:
    """Replace model.safetensors by a torch.save pickle `pytorch_model.bin` (same tensors)."""
    directory = Path(directory)
    sd = read_state(directory)
    for f in directory.glob("*.safetensors"):
        f.unlink()
    idx = directory / "model.safetensors.index.json"
    if idx.exists():
        idx.unlink()
    torch.save(sd, directory / "pytorch_model.bin")
    return directory


# ----------------------------------------------------------------------------- key helpers
def canonical_from_tuned_key(key: str) -> str | None:
    """Map a tuned key (either LLaVA layout or plain causal LM) to the base's canonical key, or None
    for vision tower / projector / image_newline keys."""
    for prefix, repl in (
        ("language_model.model.", "model."),
        ("model.language_model.", "model."),
        ("language_model.lm_head.", "lm_head."),
    ):
        if key.startswith(prefix):
            return repl + key[len(prefix):]
    if key == "lm_head.weight" or key.startswith("model.layers.") or key in ("model.embed_tokens.weight", "model.norm.weight"):
        return key
    return None


def is_vision_key(key: str) -> bool:
    return canonical_from_tuned_key(key) is None


# ----------------------------------------------------------------------------- the zoo
class TinyZoo:
    """Lazily built tiny checkpoints under `root`; each property builds its directory once."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _p(self, name: str) -> Path:
        return self.root / name

    # bases
    @cached_property
    def base(self) -> Path:
        return build_base(self._p("base_llama"), seed=0)

    @cached_property
    def base_sharded(self) -> Path:
        return build_base(self._p("base_llama_sharded"), seed=0, max_shard_size="30KB")

    @cached_property
    def base_bf16(self) -> Path:
        return build_base(self._p("base_llama_bf16"), seed=0, dtype=torch.bfloat16)

    @cached_property
    def base_mistral(self) -> Path:
        return build_base(self._p("base_mistral"), family="mistral", seed=3)

    @cached_property
    def base_qwen2(self) -> Path:
        return build_base(self._p("base_qwen2"), family="qwen2", seed=4)

    # tuned
    @cached_property
    def llava(self) -> Path:
        return build_tuned(self._p("llava_hf"), self.base, kind="llava", layout="hf", seed=1)

    @cached_property
    def llava_wild(self) -> Path:
        return build_tuned(self._p("llava_wild"), self.base, kind="llava", layout="wild", seed=1)

    @cached_property
    def llava_next(self) -> Path:
        return build_tuned(self._p("llava_next"), self.base, kind="llava_next", seed=2)

    @cached_property
    def llm_tuned(self) -> Path:
        return build_tuned(self._p("llama_tuned"), self.base, kind="llm", seed=5)

    @cached_property
    def llava_extra_vocab(self) -> Path:
        return build_tuned(self._p("llava_extra_vocab"), self.base, kind="llava", seed=6, extra_vocab=EXTRA_VOCAB)

    @cached_property
    def llava_sharded(self) -> Path:
        return build_tuned(self._p("llava_sharded"), self.base_sharded, kind="llava", seed=1, max_shard_size="30KB")

    @cached_property
    def llava_bf16(self) -> Path:
        return build_tuned(self._p("llava_bf16"), self.base_bf16, kind="llava", seed=1)

    @cached_property
    def llava_mistral(self) -> Path:
        return build_tuned(self._p("llava_mistral"), self.base_mistral, kind="llava", seed=7)

    @cached_property
    def llava_qwen2(self) -> Path:
        return build_tuned(self._p("llava_qwen2"), self.base_qwen2, kind="llava", seed=8)

    # broken
    @cached_property
    def corrupt_tuned(self) -> Path:
        d = copy_dir(self.llava, self._p("broken_corrupt"))
        truncate_file(d / "model.safetensors", 0.5)
        return d

    @cached_property
    def no_weights_tuned(self) -> Path:
        d = self._p("broken_no_weights")
        d.mkdir()
        shutil.copy(self.llava / "config.json", d / "config.json")
        return d

    @cached_property
    def base_missing_index(self) -> Path:
        d = copy_dir(self.base_sharded, self._p("broken_base_no_index"))
        (d / "model.safetensors.index.json").unlink()
        return d

    @cached_property
    def base_hidden_mismatch(self) -> Path:
        return build_base(self._p("broken_base_hidden48"), seed=0, hidden_size=48)

    @cached_property
    def base_layers_mismatch(self) -> Path:
        return build_base(self._p("broken_base_3layers"), seed=0, num_hidden_layers=3)

    SHAPE_KEY = "model.language_model.layers.1.mlp.up_proj.weight"
    ORPHAN_KEY = "language_model.model.layers.0.mlp.extra_proj.weight"
    NAN_KEY = "language_model.model.layers.1.self_attn.v_proj.weight"

    @cached_property
    def shape_mismatch_tuned(self) -> Path:
        """Wild layout; one LM tensor has one extra column (config unchanged)."""
        d = copy_dir(self.llava_wild, self._p("broken_shape"))

        def edit(sd):
            t = sd[self.SHAPE_KEY]
            sd[self.SHAPE_KEY] = torch.cat([t, t[:, :1]], dim=1)

        return rewrite_single(d, edit)

    @cached_property
    def orphan_tuned(self) -> Path:
        """HF layout plus one LM tensor the base does not have."""
        d = copy_dir(self.llava, self._p("broken_orphan"))

        def edit(sd):
            sd[self.ORPHAN_KEY] = torch.zeros(INTERMEDIATE, HIDDEN)

        return rewrite_single(d, edit)

    @cached_property
    def nan_tuned(self) -> Path:
        d = copy_dir(self.llava, self._p("broken_nan"))

        def edit(sd):
            sd[self.NAN_KEY][0, 0] = float("nan")

        return rewrite_single(d, edit)

    @cached_property
    def inf_tuned(self) -> Path:
        d = copy_dir(self.llava, self._p("broken_inf"))

        def edit(sd):
            sd[self.NAN_KEY][1, 1] = float("inf")

        return rewrite_single(d, edit)

    @cached_property
    def base_pickle(self) -> Path:
        return to_pickle(copy_dir(self.base, self._p("base_pickle")))

    def all_pairs(self) -> dict[str, tuple[Path, Path]]:
        """Every valid (base, tuned) pair by name."""
        return {
            "llava": (self.base, self.llava),
            "llava_wild": (self.base, self.llava_wild),
            "llava_next": (self.base, self.llava_next),
            "llm": (self.base, self.llm_tuned),
            "llava_extra_vocab": (self.base, self.llava_extra_vocab),
            "llava_sharded": (self.base_sharded, self.llava_sharded),
            "llava_bf16": (self.base_bf16, self.llava_bf16),
            "llava_mistral": (self.base_mistral, self.llava_mistral),
            "llava_qwen2": (self.base_qwen2, self.llava_qwen2),
        }


def tree_bytes(directory: Path) -> dict[str, bytes]:
    """{relative path: bytes} of every file under `directory` (for byte-identity / untouched checks)."""
    directory = Path(directory)
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def tree_mtimes(directory: Path) -> dict[str, int]:
    directory = Path(directory)
    return {str(p.relative_to(directory)): p.stat().st_mtime_ns for p in sorted(directory.rglob("*")) if p.is_file()}


def load_json(path: Path):
    return json.loads(Path(path).read_text())


__all__ = [n for n in dir() if not n.startswith("_") and n not in ("annotations", "math")]


# ----------------------------------------------------------------------------- a tiny llama GGUF (lfm.realpair)
CHAT = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
        "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def _byte_tokens() -> list[str]:
    """GPT-2's byte-to-unicode alphabet (the 256 base tokens of a byte-level BPE)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute: HF q/k rows -> GGUF (interleaved rotary halves)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path: Path) -> tuple[dict, dict]:
    """A random 2-layer GQA Llama as a llama GGUF (the `gguf` package's writer; q/k rows permuted as llama.cpp's
    converter does, one tensor Q8_0-quantised). Returns (HF state dict it encodes, the HF config fields)."""
    import gguf
    from transformers import LlamaConfig, LlamaForCausalLM

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    merges = ["Ġ t", "h e", "Ġt he"]
    tokens = specials + _byte_tokens() + ["Ġt", "he", "Ġthe"]
    fields = dict(vocab_size=len(tokens), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5,
                  tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**fields))
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items() if k != "lm_head.weight"}
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(2)
    w.add_context_length(512)
    w.add_embedding_length(64)
    w.add_feed_forward_length(96)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(16)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL] * 3 + [gguf.TokenType.NORMAL] * (len(tokens) - 3))
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    parts = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for i in range(2):
        for hf, gg in parts.items():
            names[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{gg}.weight"
    expected = {}
    for hf, gg in names.items():
        t = sd[hf]
        if ".attn_q." in gg:
            t = _permute(t, 4)
        elif ".attn_k." in gg:
            t = _permute(t, 2)
        if gg == "blk.0.ffn_up.weight":  # one quantised tensor: the dequantisation path
            q = gguf.quants.quantize(t, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(gg, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            expected[hf] = gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q8_0).reshape(sd[hf].shape)
        else:
            w.add_tensor(gg, t)
            expected[hf] = sd[hf]
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expected, fields
