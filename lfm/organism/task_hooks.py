"""The Python hooks of the organism's harness tasks (lfm/data/organism/tasks/), in lfm's own package.

A suite's task folder is data (lfm.evaluate.task_files): its YAMLs may name, with ``!function``, only hooks of
lfm's own task modules, such as these, never code from the folder itself. The items are the organism's
held-out items (``lfm.organism.ITEMS_DIR``).

    lm-eval (language)     custom_dataset: language_docs      process_results: language_results
    lmms-eval (visual)     process_docs: colour_docs | count_docs | region_docs
                           doc_to_visual: doc_to_visual       doc_to_text: doc_to_text
                           process_results: visual_results
"""

from __future__ import annotations

from pathlib import Path

from lfm.organism import ITEMS_DIR, load_records


def language_docs(task: str, **_):
    """The organism's held-out language items of ``task`` as a {"test": Dataset} (lm-eval custom_dataset)."""
    import datasets

    rows = [{"id": r["id"], "task": r["task"], "prompt": r["prompt"], "answer": r["answer"],
             "choices": list(r.get("choices") or [])} for r in load_records("language") if r["task"] == task]
    if not rows:
        raise ValueError(f"{ITEMS_DIR / 'language.jsonl'} holds no items of task {task!r}")
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def language_results(doc: dict, results: list[str]) -> dict:
    """acc = 1 if the generation is correct under the organism's own scoring rule."""
    from lfm.organism.evaluate import score_language
    from lfm.organism.world import Item

    item = Item(id=doc["id"], task=doc["task"], question="", answer=doc["answer"],
                choices=tuple(doc["choices"] or ()))
    return {"acc": float(score_language(item, results[0]))}


def _only(task: str):
    def process_docs(dataset):
        out = dataset.filter(lambda doc: doc["task"] == task)
        if len(out) == 0:
            raise ValueError(f"the organism's visual items hold no {task!r} items")
        return out
    return process_docs


colour_docs, count_docs, region_docs = _only("colour"), _only("count"), _only("region")


def doc_to_visual(doc: dict) -> list:
    """The item's image (the pixel bound of lfm.images applies)."""
    from lfm.images import open_rgb

    return [open_rgb(Path(ITEMS_DIR) / doc["image"])]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """The item's prompt ("Question: ... Choices: (A) .. (D) .. Answer:"); the model adds the image token."""
    return doc["prompt"]


def visual_results(doc: dict, results: list[str]) -> dict:
    """acc = 1 if the answer names the correct choice (letter or text), the organism's own rule."""
    from lfm.organism.evaluate import score_visual

    return {"acc": float(score_visual(doc["choices"], doc["answer"], results[0]) == "correct")}
