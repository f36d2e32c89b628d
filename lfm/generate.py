"""Greedy answers of a causal LM or an LLaVA-style MLLM to prompts: the one generation loop in lfm.

Used by the organism's evaluator (`lfm organism eval`, the explorer's live evaluation) and by the harness
adapters and stage comparison (`lfm eval`, `lfm compare`): prompts are given already rendered (each caller
owns its prompt format), so the two paths can differ in format but never in how answers are produced.
"""

from __future__ import annotations

import inspect

import torch
from tqdm.auto import tqdm


@torch.inference_mode()
def greedy_answers(model, processor, texts: list[str], images: list[list] | None = None, *,
                   max_new_tokens: int = 16, batch_size: int = 16, until: list[str] | None = None,
                   progress: bool = False, share_prefix: bool = True) -> list[str]:
    """Greedy (do_sample=False, one beam) continuations of `texts`, decoded without special tokens.

    Args:
        texts: rendered prompts (chat format, image tokens included where the model wants them).
        images: per text, a list of PIL images (LLaVA); None for a text-only model or text-only prompts.
        until: stop strings; each answer is cut at the first one it contains.
        share_prefix: run the tokens every prompt of a batch starts with once (``with_shared_prefix``); the
            answers are those of the plain batch (tests/test_families.py and tests/test_realpair.py compare them
            item by item).
    Returns:
        one stripped answer per text.
    Example:
        >>> from lfm.organism import base_dir
        >>> from lfm.organism.evaluate import load_model
        >>> model, tok = load_model(base_dir())
        >>> len(greedy_answers(model, tok, ["user : what is two plus two ? assistant :"], max_new_tokens=2))
        1
    """
    tok = getattr(processor, "tokenizer", processor)
    tok.padding_side = "left"
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out: list[str] = []
    for s in tqdm(range(0, len(texts), batch_size), desc="generating", disable=not progress, unit="batch"):
        batch = texts[s:s + batch_size]
        groups = [list(group) for group in images[s:s + batch_size]] if images is not None else []
        if any(groups):  # nested, one list per text: processors that batch (Gemma 3, Idefics3) need to know whose
            enc = processor(text=batch, images=groups, padding=True, return_tensors="pt")
        else:
            enc = tok(batch, padding=True, return_tensors="pt")
        enc = {k: (v.to(model.device, model.dtype) if v.is_floating_point() else v.to(model.device))
               for k, v in enc.items()}
        inputs = with_shared_prefix(model, enc) if share_prefix else enc
        gen = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                             pad_token_id=pad, eos_token_id=tok.eos_token_id)
        for text in tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True):
            for stop in until or ():
                if stop and stop in text:
                    text = text.split(stop)[0]
            out.append(text.strip())
    return out


MIN_SHARED_PREFIX = 8  # tokens: below this the extra forward costs more than it saves
PER_TOKEN = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")  # [B, T] inputs, one per token


def positions_follow_tokens(model) -> bool:
    """Whether a token's position is its index among the unmasked tokens (1-D rotary positions, given to the
    model as ``position_ids``): not Qwen2-VL-style models, whose positions depend on the images
    (``get_rope_index``) and cannot continue a cache built without them."""
    if any(hasattr(m, "get_rope_index") for m in (model, getattr(model, "model", None)) if m is not None):
        return False
    return "position_ids" in inspect.signature(model.forward).parameters


def placeholder_ids(config) -> set[int]:
    """The token ids a multimodal model replaces by image or video features (config fields)."""
    names = ("image_token_id", "image_token_index", "video_token_id", "video_token_index")
    return {v for n in names if isinstance(v := getattr(config, n, None), int)}


def shared_prefix_length(input_ids: torch.Tensor, attention_mask: torch.Tensor, placeholders: set[int]) -> int:
    """How many leading tokens every row of a left-padded batch [B, T] shares (after its padding) before its
    first image placeholder, leaving each row at least one token (generation's first step needs one); 0 for a
    single row or a mask that is not left padding.

    >>> ids = torch.tensor([[5, 6, 7, 9, 1], [5, 6, 7, 9, 2]])
    >>> shared_prefix_length(ids, torch.ones_like(ids), set()), shared_prefix_length(ids, torch.ones_like(ids), {7})
    (4, 2)
    >>> shared_prefix_length(torch.tensor([[0, 5, 6, 1], [5, 6, 7, 2]]), torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]]), set())
    2
    """
    if input_ids.shape[0] < 2 or not bool((attention_mask[:, 1:] >= attention_mask[:, :-1]).all()):
        return 0
    rows = [r[m.bool()].tolist() for r, m in zip(input_ids, attention_mask)]
    n, shortest = 0, min(len(r) for r in rows) - 1
    while n < shortest and all(r[n] == rows[0][n] for r in rows) and rows[0][n] not in placeholders:
        n += 1
    return n


def with_shared_prefix(model, enc: dict) -> dict:
    """``generate`` inputs that run the prefix every prompt of the batch shares once: each row's shared
    prefix moved first, its left padding after it (position ids come from the mask, so every token keeps its
    position), and a ``cache`` of the prefix computed for one row and repeated for all. ``enc`` itself when
    there is too little to share (``MIN_SHARED_PREFIX``) or the model's positions depend on its images
    (``positions_follow_tokens``)."""
    ids, mask = enc["input_ids"], enc.get("attention_mask")
    if mask is None or not positions_follow_tokens(model):
        return enc
    n = shared_prefix_length(ids, mask, placeholder_ids(model.config))
    if n < MIN_SHARED_PREFIX:
        return enc
    B, T = ids.shape
    if any(torch.is_tensor(v) and v.shape[:2] == (B, T) for k, v in enc.items() if k not in PER_TOKEN):
        return enc  # a per-token input this function does not know how to move with its token
    pads = (T - mask.sum(1)).tolist()
    order = torch.stack([torch.cat([torch.arange(p, p + n), torch.arange(p), torch.arange(p + n, T)]) for p in pads])
    order = order.to(ids.device)
    moved = {k: (v.gather(1, order) if k in PER_TOKEN else v) for k, v in enc.items()}
    cache = model(input_ids=moved["input_ids"][:1, :n], attention_mask=moved["attention_mask"][:1, :n],
                  use_cache=True).cache
    cache.batch_repeat_interleave(B)
    return {**moved, "cache": cache}
