"""Helpers of the organism's lmms-eval tasks: select a task's items, the image, the prompt, the score."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

ITEMS_DIR = Path(__file__).resolve().parents[2] / "items"


def _only(task: str):
    def process_docs(dataset):
        out = dataset.filter(lambda doc: doc["task"] == task)
        if len(out) == 0:
            raise ValueError(f"the organism's visual items hold no {task!r} items")
        return out
    return process_docs


colour_docs, count_docs, region_docs = _only("colour"), _only("count"), _only("region")


def doc_to_visual(doc: dict) -> list[Image.Image]:
    return [Image.open(ITEMS_DIR / doc["image"]).convert("RGB")]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """The item's prompt ("Question: ... Choices: (A) .. (D) .. Answer:"); the model adds the image token."""
    return doc["prompt"]


def process_results(doc: dict, results: list[str]) -> dict:
    """acc = 1 if the answer names the correct choice (letter or text), the organism's own rule."""
    from lfm.organism.evaluate import score_visual

    return {"acc": float(score_visual(doc["choices"], doc["answer"], results[0]) == "correct")}
