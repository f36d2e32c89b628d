"""Helpers of the organism's lm-eval tasks: load the held-out language items, score a generation."""

from __future__ import annotations

from pathlib import Path

import datasets

ITEMS_DIR = Path(__file__).resolve().parents[2] / "items"


def language_docs(task: str, items_dir: str | None = None, **_) -> datasets.DatasetDict:
    """The organism's held-out language items of ``task`` as a {"test": Dataset} (lm-eval custom_dataset)."""
    from lfm.organism import load_records  # the organism's one items loader

    rows = [{"id": r["id"], "task": r["task"], "prompt": r["prompt"], "answer": r["answer"],
             "choices": list(r.get("choices") or [])} for r in load_records("language", items_dir or ITEMS_DIR)
            if r["task"] == task]
    if not rows:
        raise ValueError(f"{Path(items_dir or ITEMS_DIR) / 'language.jsonl'} holds no items of task {task!r}")
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def process_results(doc: dict, results: list[str]) -> dict:
    """acc = 1 if the generation is correct under the organism's own scoring rule."""
    from lfm.organism.evaluate import score_language
    from lfm.organism.world import Item

    item = Item(id=doc["id"], task=doc["task"], question="", answer=doc["answer"],
                choices=tuple(doc["choices"] or ()))
    return {"acc": float(score_language(item, results[0]))}
