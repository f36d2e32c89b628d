"""The embedded model organism: a tiny base LLM and the LLaVA visually tuned from it, shipped in lfm/data/organism.

Layout of ``ORGANISM_DIR`` (lfm/data/organism, package data: ``lfm.package_data``):
    base/            LlamaForCausalLM + tokenizer           (``base_dir()``)
    tuned/           LlavaForConditionalGeneration + processor (``tuned_dir()``)
    items/language.jsonl   {id, task, question, prompt, answer, choices}        (held-out language items)
    items/visual.jsonl     {id, task, question, prompt, choices, answer, answer_letter, image}
    items/images/*.png     32x32 RGB images (``image`` is the path relative to items/)
    results.json, results.md   the numbers ``lfm organism report`` measured

Example:
    >>> from lfm.organism import base_dir, tuned_dir, load_items
    >>> len(load_items("visual")) > 0
    True
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from lfm.images import open_rgb
from lfm.package_data import ORGANISM_DIR

from . import world
from .world import Item, format_chat, format_prompt

ITEMS_DIR = ORGANISM_DIR / "items"

__all__ = ["ORGANISM_DIR", "ITEMS_DIR", "Item", "base_dir", "tuned_dir", "load_items", "export_items",
           "scienceqa_records", "format_prompt", "format_chat"]


def base_dir() -> Path:
    """The shipped base LLM directory (LlamaForCausalLM)."""
    return _existing(ORGANISM_DIR / "base")


def tuned_dir() -> Path:
    """The shipped tuned MLLM directory (LlavaForConditionalGeneration)."""
    return _existing(ORGANISM_DIR / "tuned")


def _existing(path: Path) -> Path:
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"organism checkpoint {path} is missing; regenerate it with "
                                f"`lfm organism train --out {ORGANISM_DIR}`")
    return path


def export_items(out_dir: str | Path = ITEMS_DIR, seed: int = 0) -> dict[str, int]:
    """Write the held-out items of ``world.eval_items(kind, seed)`` as JSONL (+ PNG images) into ``out_dir``."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    counts = {}
    for kind in ("language", "visual"):
        items = world.eval_items(kind, seed)
        with open(out / f"{kind}.jsonl", "w") as f:
            for it in items:
                rec = {"id": it.id, "task": it.task, "question": it.question, "prompt": it.prompt,
                       "answer": it.answer, "choices": list(it.choices)}
                if kind == "visual":
                    rel = f"images/{it.id}.png"
                    Image.fromarray(it.image).save(out / rel, optimize=True)
                    rec["answer_letter"] = it.answer_letter
                    rec["image"] = rel
                f.write(json.dumps(rec) + "\n")
        counts[kind] = len(items)
    return counts


def load_records(kind: str, items_dir: str | Path = ITEMS_DIR) -> list[dict]:
    """The JSONL records of ``kind`` ("language" | "visual"), image paths made absolute."""
    if kind not in ("language", "visual"):
        raise ValueError(f"kind must be 'language' or 'visual', got {kind!r}")
    path = Path(items_dir) / f"{kind}.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; write it with `lfm.organism.export_items()`")
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for r in recs:
        if "image" in r:
            r["image"] = str(Path(items_dir) / r["image"])
    return recs


def load_items(kind: str, items_dir: str | Path = ITEMS_DIR) -> list[Item]:
    """The held-out items of ``kind`` as ``world.Item`` (visual items carry their image as uint8 [32, 32, 3])."""
    items = []
    for r in load_records(kind, items_dir):
        img = np.asarray(open_rgb(r["image"])) if "image" in r else None
        items.append(Item(id=r["id"], task=r["task"], question=r["question"], answer=r["answer"],
                          choices=tuple(r.get("choices", ())), image=img))
    return items


def scienceqa_records(items_dir: str | Path = ITEMS_DIR) -> list[dict]:
    """ScienceQA-style records of the visual items: {id, task, question, choices, answer, answer_letter, image}.

    ``image`` is an absolute PNG path; ``answer`` is the correct choice's text.
    """
    keys = ("id", "task", "question", "choices", "answer", "answer_letter", "image")
    return [{k: r[k] for k in keys} for r in load_records("visual", items_dir)]
