"""Greedy answers of a causal LM or an LLaVA-style MLLM to prompts: the one generation loop in lfm.

Used by the organism's evaluator (`lfm organism eval`, the explorer's live evaluation) and by the harness
adapters and stage comparison (`lfm eval`, `lfm compare`): prompts are given already rendered (each caller
owns its prompt format), so the two paths can differ in format but never in how answers are produced.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm


@torch.inference_mode()
def greedy_answers(model, processor, texts: list[str], images: list[list] | None = None, *,
                   max_new_tokens: int = 16, batch_size: int = 16, until: list[str] | None = None,
                   progress: bool = False) -> list[str]:
    """Greedy (do_sample=False, one beam) continuations of `texts`, decoded without special tokens.

    Args:
        texts: rendered prompts (chat format, image tokens included where the model wants them).
        images: per text, a list of PIL images (LLaVA); None for a text-only model or text-only prompts.
        until: stop strings; each answer is cut at the first one it contains.
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
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                             pad_token_id=pad, eos_token_id=tok.eos_token_id)
        for text in tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True):
            for stop in until or ():
                if stop and stop in text:
                    text = text.split(stop)[0]
            out.append(text.strip())
    return out
