"""The Python hooks of the real pair's harness tasks (written by lfm.realpair.tasks), in lfm's own package.

A suite's task folder is data (lfm.evaluate.task_files): its YAMLs may name, with ``!function``, only hooks of
lfm's own task modules, such as these, never code from the folder itself. Where the items are comes from the
task file, as data: ``dataset_kwargs: {task, items}`` (lm-eval) and ``lmms_eval_specific_kwargs: {default:
{items}}`` (lmms-eval), absolute paths written by ``write_suite``.

    lm-eval (language, prose)  custom_dataset: docs     process_results: short_answer | perplexity
    lmms-eval (visual)         process_docs: digits_docs | colour_docs | shape_docs | count_docs
                               doc_to_visual: doc_to_visual   doc_to_text: doc_to_text
                               process_results: visual_results
"""

from __future__ import annotations

import json
import re
from pathlib import Path


def docs(task: str, items: str, **_):
    """The rows of ``task`` in the JSONL file ``items`` as a {"test": Dataset} (lm-eval custom_dataset)."""
    import datasets

    path = Path(items)
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if isinstance(r, dict) and r.get("task") == task]
    if not rows:
        raise ValueError(f"{path} holds no items of task {task!r}")
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def short_answer(doc: dict, results: list[str]) -> dict:
    """acc = 1 when the answer's name occurs in the generation (``lfm.realpair.tasks.short_answer_correct``)."""
    from lfm.realpair.tasks import short_answer_correct

    return {"acc": float(short_answer_correct(results[0], doc["answer"]))}


def perplexity(doc: dict, results) -> dict:
    (loglikelihood,) = results
    return {"token_perplexity": (loglikelihood, doc["tokens"]),
            "word_perplexity": (loglikelihood, len(re.split(r"\s+", doc["text"])))}


def _only(task: str):
    def process_docs(dataset):
        return dataset.filter(lambda doc: doc["task"] == task)
    return process_docs


digits_docs, colour_docs, shape_docs, count_docs = (_only(t) for t in ("digits", "colour", "shape", "count"))


def doc_to_visual(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> list:
    """The item's image, relative to the items folder the task file names (the pixel bound of lfm.images)."""
    from lfm.images import open_rgb

    folder = (lmms_eval_specific_kwargs or {}).get("items")
    if not folder:
        raise ValueError("the task file names no items folder (lmms_eval_specific_kwargs: {default: {items: DIR}}); "
                         "rebuild the suite with `lfm realpair build`")
    return [open_rgb(Path(folder) / doc["image"])]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    return doc["prompt"]


def visual_results(doc: dict, results: list[str]) -> dict:
    from lfm.taxonomy import classify

    return {"acc": float(classify(results[0], list(doc["choices"]), doc["answer"]) == "correct")}
