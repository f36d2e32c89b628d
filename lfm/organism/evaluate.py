"""Score an organism model on the held-out items: LA, VA, OA, per-task accuracy and the failure taxonomy.

Greedy decoding, batched (left padding). Works on a checkpoint directory or on an in-memory
``(model, processor)`` pair, so merged weights can be evaluated without touching the disk:

    >>> from lfm.organism import tuned_dir
    >>> from lfm.organism.evaluate import evaluate, load_model
    >>> model, processor = load_model(tuned_dir())
    >>> r = evaluate((model, processor))          # or evaluate(tuned_dir())
    >>> sorted(r) == ['LA', 'OA', 'VA', 'answers', 'failures', 'language_answers', 'tasks']
    True

Scoring: arithmetic and noimage answers must equal the target (case, surrounding space and a final "."
ignored); multiple-choice answers (facts, reading, all visual tasks) are scored with
``lfm.taxonomy.classify`` == "correct". LA = mean of the language task accuracies, VA = mean of the visual
task accuracies, OA = (LA + VA) / 2. A plain causal LM (the base) gets only language items: VA = OA = None.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoProcessor, AutoTokenizer, LlamaForCausalLM, LlavaForConditionalGeneration

from ..device import resolve_device
from ..generate import greedy_answers
from ..taxonomy import CATEGORIES, abilities, classify
from . import load_items, world


def load_model(model_dir: str | Path, device: str | torch.device = "cpu"):
    """(model, processor_or_tokenizer) for an organism directory: LLaVA -> AutoProcessor, else AutoTokenizer;
    the model on ``device`` (``lfm.device.resolve_device``)."""
    path = Path(model_dir)
    cfg_path = path / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{cfg_path} not found: {path} is not a Hugging Face model directory")
    model_type = json.loads(cfg_path.read_text()).get("model_type")
    # the processor first: it is small, and a directory without one fails before the model is read
    if model_type == "llava":
        proc = AutoProcessor.from_pretrained(path)
        model = LlavaForConditionalGeneration.from_pretrained(path)
    elif model_type == "llama":
        proc = AutoTokenizer.from_pretrained(path)
        model = LlamaForCausalLM.from_pretrained(path)
    else:
        raise ValueError(f"{path}: model_type {model_type!r} is not an organism model (expected 'llava' or 'llama')")
    model.to(resolve_device(device)).eval()
    return model, proc


def _norm(s: str) -> str:
    return " ".join(s.split()).strip().rstrip(".").lower()


def score_visual(choices, answer: str, generated: str) -> str:
    """The failure-taxonomy category of a visual (multiple-choice) answer; "correct" scores 1."""
    return classify(generated, list(choices), answer)


def score_language(item: world.Item, generated: str) -> bool:
    """Is ``generated`` a correct answer to a language item (rules in the module docstring)?"""
    if item.choices and item.answer in item.choices:
        return classify(generated, list(item.choices), item.answer) == "correct"
    return _norm(generated) == _norm(item.answer)


def generate(model, processor, prompts: list[str], images: list[np.ndarray] | None = None, *,
             max_new_tokens: int = 8, batch_size: int = 128) -> list[str]:
    """Greedy answers to ``prompts`` (already in the chat format), with ``images`` for a LLaVA model."""
    pil = [[Image.fromarray(im)] for im in images] if images is not None else None
    return greedy_answers(model, processor, prompts, pil, max_new_tokens=max_new_tokens, batch_size=batch_size)


@torch.no_grad()
def evaluate(model, processor=None, *, items: dict[str, list[world.Item]] | None = None,
             batch_size: int = 128, max_new_tokens: int = 8) -> dict:
    """Evaluate a model directory, or an in-memory model with its processor.

    Args:
        model: a directory (str/Path), a ``(model, processor)`` tuple, or a model (then pass ``processor``).
        items: {"language": [...], "visual": [...]} (default: the shipped held-out items).
    Returns:
        {"LA", "VA", "OA", "tasks": {task: acc}, "failures": {category: count},
         "answers": [{id, task, question, choices, answer, generated, category}] (visual),
         "language_answers": [{id, task, prompt, answer, generated, correct}]}
    """
    if isinstance(model, (str, Path)):
        model, processor = load_model(model)
    elif isinstance(model, tuple):
        model, processor = model
    if processor is None:
        raise ValueError("evaluate(model, processor): an in-memory model needs its processor/tokenizer")
    is_llava = isinstance(model, LlavaForConditionalGeneration)
    items = dict(items or {})
    lang = items.get("language") if "language" in items else load_items("language")
    vis = (items.get("visual") if "visual" in items else load_items("visual")) if is_llava else []

    tasks: dict[str, list[bool]] = {}
    lang_out = generate(model, processor, [world.format_chat(it.prompt, False) for it in lang],
                        max_new_tokens=max_new_tokens, batch_size=batch_size) if lang else []
    language_answers = []
    for it, g in zip(lang, lang_out):
        ok = score_language(it, g)
        tasks.setdefault(it.task, []).append(ok)
        language_answers.append({"id": it.id, "task": it.task, "prompt": it.prompt, "answer": it.answer,
                                 "generated": g, "correct": ok})
    answers = []
    failures = Counter({c: 0 for c in CATEGORIES})
    if vis:
        vis_out = generate(model, processor, [world.format_chat(it.prompt, True) for it in vis],
                           [it.image for it in vis], max_new_tokens=max_new_tokens, batch_size=batch_size)
        for it, g in zip(vis, vis_out):
            cat = score_visual(it.choices, it.answer, g)
            failures[cat] += 1
            tasks.setdefault(it.task, []).append(cat == "correct")
            answers.append({"id": it.id, "task": it.task, "question": it.question, "choices": list(it.choices),
                            "answer": it.answer, "generated": g, "category": cat})
    acc = {t: float(np.mean(v)) for t, v in tasks.items()}
    lang_tasks = [t for t in world.LANGUAGE_TASKS if t in acc and any(it.task == t for it in lang)]
    vis_tasks = [t for t in world.VISUAL_TASKS if t in acc and any(it.task == t for it in vis)]
    LA, VA, OA = abilities([acc[t] for t in lang_tasks], [acc[t] for t in vis_tasks])
    return {"LA": LA, "VA": VA, "OA": OA, "tasks": acc, "failures": dict(failures) if is_llava else {},
            "answers": answers, "language_answers": language_answers}
