"""Run a suite's tasks through the real harnesses: lm-evaluation-harness (language) and lmms-eval (vision).

    evaluate(model_dir_or_EvalModel, suite) -> {"LA", "VA", "OA", "tasks": {label: acc}, "raw": ..., "harness": ...}

Language tasks: ``lm_eval.simple_evaluate`` on ``HFLM(pretrained=<in-memory causal LM>)``; for an MLLM the
causal LM is its language model (``models.text_model``, weights shared). The HFLM is ``SharedContextHFLM``
(``lfm.evaluate.shared_context``): a multiple-choice item's context runs once for all its choices, the same
scores to float rounding, 2x faster on CPU (``SHARED_CONTEXT``; tests compare it with stock HFLM). Visual tasks:
``lmms_eval.evaluator.simple_evaluate`` on ``LfmLlava``, an ``lmms`` model class wrapping an in-memory
LLaVA-style model + processor.

Why a wrapper instead of lmms-eval's ``llava_hf``: (1) ``lmms_eval.models.simple.llava_hf`` imports
``decord`` (a 13.6 MB x86-only video reader) at import time, which lfm does not need; (2) it only loads
from a path, while sweeps load merged weights into one in-memory model; (3) it generates one item at a
time (``batch_size`` must be 1). ``LfmLlava`` builds the prompt as llava_hf's chat path does (the user turn
holds the image(s) and the task's text, rendered by the processor's chat template with a generation prompt,
greedy decoding, ``until`` stop strings) and batches with left padding.
"""

from __future__ import annotations

import logging
import os
import threading
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from lfm.evaluate.models import EvalModel, load_eval_model
from lfm.evaluate.quiet import quiet_harnesses
from lfm.evaluate.suites import Suite, TaskSpec, check_datasets, get_suite
from lfm.generate import greedy_answers
from lfm.taxonomy import abilities, classify


# The harnesses keep process-global state (lmms-eval swaps yaml's global '!function' constructor on every task
# load; a task read in 'simple' mode meanwhile comes back unimported), and so does loading a model (transformers
# builds it on the meta device): one evaluation at a time per process, whichever thread asks (two explorer
# sessions evaluate from two worker threads).
HARNESS_LOCK = threading.RLock()


def harness_versions() -> dict[str, str | None]:
    out = {}
    for pkg in ("lm_eval", "lmms_eval", "transformers", "torch", "lfm"):
        try:
            out[pkg] = version(pkg.replace("_", "-"))
        except PackageNotFoundError:
            out[pkg] = None
    return out


def accuracy(spec: TaskSpec, task_results: dict) -> float:
    """The accuracy in [0, 1] of one task from the harness's result dict for it."""
    keys = (spec.metric,) + spec.extra_metrics
    missing = [k for k in keys if k not in task_results]
    if missing:
        have = sorted(k for k in task_results if not k.endswith("_stderr") and "," in k)
        raise KeyError(f"task {spec.task!r}: metric {missing[0]!r} not in the harness results; available: {have}")
    return float(sum(float(task_results[k]) for k in keys)) / spec.scale


# The metrics the harnesses aggregate as the mean of one value per item: a task scored by one of them, zero-shot
# and unscaled, has the same accuracy whether its items run in one call or in two (``combine``). Few-shot tasks
# are not among them (the examples each item is shown are drawn from one seeded stream in item order, so a slice
# of items sees other examples), nor sums (MME) or corpus-level metrics (perplexity, F1): those are re-run whole.
MEAN_METRICS = ("acc", "acc_norm", "exact_match")


def combinable(spec: TaskSpec) -> bool:
    """Whether `spec`'s accuracy over all items can be put together from its items evaluated in two calls."""
    return (spec.num_fewshot == 0 and spec.scale == 1.0 and not spec.extra_metrics
            and spec.metric.split(",")[0] in MEAN_METRICS)


def first_item(spec: TaskSpec, skip: int) -> int:
    """The index of `spec`'s first item in an evaluation with ``skip``: `skip` for a combinable task, else 0."""
    return skip if combinable(spec) else 0


def _rest_specs(specs, skip: int, limit: int | None) -> list[TaskSpec]:
    """The specs that have items left to run (a combinable task whose `limit` items all lie in the first `skip`
    has none)."""
    return [s for s in specs if limit is None or first_item(s, skip) < limit]


# --------------------------------------------------------------------------------------- language (lm-eval)

def run_language(em: EvalModel, specs: tuple[TaskSpec, ...] | list[TaskSpec], *, include: tuple[str, ...] = (),
                 include_defaults: bool = True, limit: int | None = None, skip: int = 0, batch_size: int = 32,
                 log_samples: bool = False) -> dict:
    """lm-eval on the model's language model. Returns {task: {"acc": float, "results": {...}, "samples": [...]}}.
    ``skip``: leave out the first `skip` items of the combinable tasks (``first_item``; lm-eval's ``samples``)."""
    specs = _rest_specs(specs, skip, limit)
    if not specs:
        return {}
    import lm_eval
    import lm_eval.evaluator
    from lm_eval.tasks import TaskManager

    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    with quiet_harnesses():
        lm = language_lm_class()(pretrained=em.language_model(), tokenizer=em.tokenizer, batch_size=batch_size,
                                 device=str(em.model.device))
    manager = TaskManager(include_path=list(include) or None, include_defaults=include_defaults)
    out = {}
    for shots in sorted({s.num_fewshot for s in specs}):
        group = [s for s in specs if s.num_fewshot == shots]
        tasks, samples, group_limit = [s.task for s in group], None, limit
        if skip:  # the items of each task by index (lm-eval takes either `limit` or `samples`)
            with quiet_harnesses():
                loaded = manager.load(tasks)["tasks"]
            samples = {s.task: list(range(first_item(s, skip), len(loaded[s.task].eval_docs) if limit is None
                                          else min(limit, len(loaded[s.task].eval_docs)))) for s in group}
            group = [s for s in group if samples[s.task]]  # lm-eval reads an empty list as every item
            if not group:
                continue
            tasks, group_limit = [loaded[s.task] for s in group], None
        with quiet_harnesses(), _without_env_info(lm_eval.evaluator):
            res = lm_eval.simple_evaluate(model=lm, tasks=tasks, num_fewshot=shots,
                                          task_manager=manager, limit=group_limit, samples=samples,
                                          bootstrap_iters=0, log_samples=log_samples, random_seed=0,
                                          numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)
        for s in group:
            out[s.task] = {"acc": accuracy(s, res["results"][s.task]), "results": _plain(res["results"][s.task])}
            if log_samples:
                out[s.task]["samples"] = [_sample(x, s, x.get("filtered_resps")) for x in res["samples"][s.task]]
    return out


class _without_env_info:
    """lm-eval's ``simple_evaluate`` ends by describing the machine (torch's collect_env: pip, nvidia-smi and
    compiler subprocesses, ~0.3 s a call) into a results field lfm drops: skipped for the call (under
    HARNESS_LOCK, so no other evaluation sees the swap)."""

    def __init__(self, module):
        self.module = module

    def __enter__(self):
        self.saved = self.module.add_env_info
        self.module.add_env_info = lambda storage: None

    def __exit__(self, *exc):
        self.module.add_env_info = self.saved


SHARED_CONTEXT = True  # False: stock HFLM (the reference the shared-context scores are tested against)


def language_lm_class():
    """The lm-eval model class language tasks run on: SharedContextHFLM, or stock HFLM (``SHARED_CONTEXT``)."""
    if SHARED_CONTEXT:
        from lfm.evaluate.shared_context import shared_context_hflm

        return shared_context_hflm()
    from lm_eval.models.huggingface import HFLM

    return HFLM


def _first(resps):
    while isinstance(resps, (list, tuple)) and resps:
        resps = resps[0]
    return resps


def _sample(x: dict, spec: TaskSpec, resps, data_dir: Path | None = None) -> dict:
    """One logged harness sample, kept small and JSON-plain: doc_id, generated, target, score (the sample's
    value of the task's metric), doc (its str/number/list-of-str fields), and image (a local image path of
    the doc, made absolute against the task's data file folder) when it has one.

    generated: the answer text of a generation task; for a multiple-choice task, the choice with the highest
    log-likelihood (its text when the doc lists ``choices``).
    """
    doc = {k: v for k, v in (x.get("doc") or {}).items()
           if isinstance(v, (str, int, float, bool)) or (isinstance(v, list) and all(isinstance(c, str) for c in v))}
    if isinstance(resps, (list, tuple)) and resps and all(isinstance(r, (list, tuple)) and len(r) == 2
                                                          and isinstance(r[0], float) for r in resps):
        best = max(range(len(resps)), key=lambda i: resps[i][0])  # (loglikelihood, is_greedy) per choice
        choices = doc.get("choices")
        generated = choices[best] if isinstance(choices, list) and len(choices) == len(resps) else best
    else:
        generated = _first(resps)
    score = x.get(spec.metric.split(",")[0])
    out = {"doc_id": x["doc_id"], "generated": generated, "target": x.get("target"),
           "score": float(score) if isinstance(score, (int, float)) else None, "doc": doc}
    image = doc.get("image")
    if isinstance(image, str) and image and (Path(image).is_absolute() or data_dir is not None):
        out["image"] = image if Path(image).is_absolute() else str(data_dir / image)
    return out


def _data_dir(config: dict) -> Path | None:
    """The folder of a task's local data file (``dataset_kwargs.data_files``), or None (a hub dataset)."""
    files = (config.get("dataset_kwargs") or {}).get("data_files")
    if isinstance(files, dict):
        files = next(iter(files.values()), None)
    if isinstance(files, (list, tuple)):
        files = files[0] if files else None
    return Path(files).parent if isinstance(files, str) and Path(files).is_file() else None


def _plain(d: dict) -> dict:
    return {k: (float(v) if isinstance(v, (int, float)) else str(v)) for k, v in d.items()}


# --------------------------------------------------------------------------------------- vision (lmms-eval)

def generate_answers(model, processor, prompts: list[str], images: list[list], *, max_new_tokens: int = 16,
                     batch_size: int = 16, until: list[str] | None = None, progress: bool = False,
                     share_prefix: bool = True) -> list[str]:
    """Greedy answers of an LLaVA-style model to (images, text) user turns, as llava_hf builds them.

    Args:
        prompts: the user text of each item (without image tokens; they are added by the chat template).
        images: per item, a list of PIL images.
    Returns:
        decoded answers (special tokens removed, cut at the first ``until`` string, stripped).
    """
    chats = [_render(processor, p, len(ims)) for p, ims in zip(prompts, images)]
    return greedy_answers(model, processor, chats, images, max_new_tokens=max_new_tokens, batch_size=batch_size,
                          until=until, progress=progress, share_prefix=share_prefix)


def _render(processor, text: str, n_images: int) -> str:
    """The prompt string of one user turn with ``n_images`` images (the processor's chat template)."""
    if "<image>" in text or n_images == 0:
        content = text
    else:
        content = [{"type": "image"}] * n_images + [{"type": "text", "text": text}]
    messages = [{"role": "user", "content": content}]
    template = getattr(processor, "chat_template", None) or getattr(processor.tokenizer, "chat_template", None)
    if template is None:
        raise ValueError("the processor has no chat template; save one with the model (processor.chat_template)")
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def lfm_llava_class():
    """The ``lmms`` subclass (built on first use so that lmms-eval stays an optional import)."""
    global _LfmLlava
    if _LfmLlava is not None:
        return _LfmLlava
    from lmms_eval.api.model import lmms

    class LfmLlava(lmms):
        """lmms-eval model over an in-memory LLaVA-style model (generate_until tasks)."""

        is_simple = True

        def __init__(self, model, processor, batch_size: int = 16):
            super().__init__()
            self.model, self.processor, self.batch_size = model, processor, batch_size
            self.tokenizer = processor.tokenizer

        def generate_until(self, requests) -> list[str]:
            groups: dict[str, list[int]] = {}
            for i, req in enumerate(requests):
                groups.setdefault(repr(sorted(req.args[1].items())), []).append(i)
            res: list[str | None] = [None] * len(requests)
            for idx in groups.values():
                gen_kwargs = dict(requests[idx[0]].args[1])
                if float(gen_kwargs.get("temperature", 0) or 0) > 0 or gen_kwargs.get("num_beams", 1) != 1:
                    raise ValueError(f"LfmLlava decodes greedily; task asks for {gen_kwargs}")
                until = gen_kwargs.get("until") or []
                until = [until] if isinstance(until, str) else list(until)
                prompts, images = [], []
                for i in idx:
                    context, _, doc_to_visual, doc_id, task, split = requests[i].args
                    prompts.append(context)
                    images.append(list(doc_to_visual(self.task_dict[task][split][doc_id])))
                answers = generate_answers(self.model, self.processor, prompts, images,
                                           max_new_tokens=int(gen_kwargs.get("max_new_tokens", 128)),
                                           batch_size=self.batch_size, until=until)
                for i, a in zip(idx, answers):
                    res[i] = a
                    self.cache_hook.add_partial("generate_until", (requests[i].args[0], gen_kwargs), a)
            return res

        def loglikelihood(self, requests):
            raise NotImplementedError("LfmLlava runs generate_until tasks only (multiple choice via letter "
                                      "extraction); loglikelihood visual tasks are not supported")

        def generate_until_multi_round(self, requests):
            raise NotImplementedError("LfmLlava does not run multi-round tasks")

        def clean(self):
            """Nothing to free: the model is the caller's (a sweep's one loaded model). lmms-eval's own ``clean``
            detaches it and runs ``gc.collect`` (~0.5 s a call)."""

    _LfmLlava = LfmLlava
    return LfmLlava


_LfmLlava = None


def run_visual(em: EvalModel, specs, *, include: tuple[str, ...] = (), include_defaults: bool = True,
               limit: int | None = None, skip: int = 0, batch_size: int = 16, log_samples: bool = False) -> dict:
    """lmms-eval on the MLLM. Returns {task: {"acc": float, "results": {...}, "samples": [...]}}.
    ``skip``: leave out the first `skip` items of the combinable tasks (``first_item``; lmms-eval's ``offset``,
    one per call: the tasks run in one call per start)."""
    specs = _rest_specs(specs, skip, limit)
    if not specs:
        return {}
    if not em.multimodal:
        raise ValueError("visual tasks need a multimodal model (an MLLM directory with a processor)")
    os.environ.setdefault("LMMS_EVAL_SHUTUP", "1")
    from lmms_eval import evaluator
    from lmms_eval.tasks import TaskManager

    lmm = lfm_llava_class()(em.model, em.require_processor(), batch_size=batch_size)
    manager = TaskManager("WARNING", include_path=list(include) or None, include_defaults=include_defaults)
    tasks = {s.task: s.task for s in specs}
    if skip:  # loaded here to count their items: lmms-eval refuses a task none of whose items are left
        from lmms_eval.tasks import get_task_dict

        with quiet_harnesses():
            tasks = get_task_dict(list(tasks), manager, "simple" if lmm.is_simple else "chat")
        specs = [s for s in specs if first_item(s, skip) < len(tasks[s.task].eval_docs)]
    out = {}
    for start in sorted({first_item(s, skip) for s in specs}):
        group = [s for s in specs if first_item(s, skip) == start]
        with quiet_harnesses():
            res = evaluator.simple_evaluate(model=lmm, tasks=[tasks[s.task] for s in group], task_manager=manager,
                                            limit=None if limit is None else limit - start, offset=start,
                                            bootstrap_iters=0, log_samples=log_samples, verbosity="WARNING",
                                            random_seed=0, numpy_random_seed=0, torch_random_seed=0,
                                            fewshot_random_seed=0, process_docs_parallel=1)
        if res is None:
            raise RuntimeError("lmms-eval returned no results")
        for s in group:
            out[s.task] = {"acc": accuracy(s, res["results"][s.task]), "results": _plain(res["results"][s.task])}
            if log_samples:
                data_dir = _data_dir(res.get("configs", {}).get(s.task, {}))
                out[s.task]["samples"] = [_sample(x, s, _first(x.get("resps")), data_dir)
                                          for x in res["samples"][s.task]]
    return out


# --------------------------------------------------------------------------------------- one model, one suite

def evaluate(model: str | Path | EvalModel, suite: str | Path | Suite = "organism", *, limit: int | None = None,
             skip: int = 0, device: str | None = "cpu", batch_size: int = 32, log_samples: bool = False,
             check: bool = True) -> dict:
    """LA / VA / OA of a model on a suite through the real harnesses.

    Args:
        model: a model directory, or an ``EvalModel`` already in memory (sweeps pass one whose weights
            they replace between points).
        suite: 'paper', 'organism', a suite YAML path, or a Suite.
        limit: items per task (for quick checks; None = all).
        skip: leave out each combinable task's first `skip` items (``combinable``; other tasks run from their
            first item), the rest of an evaluation on `skip` items per task: ``combine`` joins the two. A task
            with no items left is absent from the result (and from its LA / VA).
    Returns:
        {"LA", "VA", "OA", "tasks": {label: acc}, "language": [...], "visual": [...], "suite", "limit",
         "harness": versions, "raw": {task: harness results}, "samples", "answers", "language_answers"}
        (the last three filled with ``log_samples``: ``item_answers``).  VA/OA are None for a plain LLM.
    Raises:
        DatasetsUnavailable before loading anything if the suite's hub datasets cannot be reached.
    """
    suite = get_suite(suite)
    if check:
        check_datasets(suite)
    with HARNESS_LOCK:
        em = model if isinstance(model, EvalModel) else \
            load_eval_model(model, device=device, processor_required=bool(suite.visual))
        if suite.visual and em.multimodal:
            em.require_processor()  # refused before the language tasks run, not after
        try:
            lang = run_language(em, suite.language, include=suite.lm_eval_include,
                                include_defaults=suite.include_defaults, limit=limit, skip=skip,
                                batch_size=batch_size, log_samples=log_samples)
            vis = run_visual(em, suite.visual, include=suite.lmms_eval_include,
                             include_defaults=suite.include_defaults, limit=limit, skip=skip,
                             batch_size=min(batch_size, 16), log_samples=log_samples) if em.multimodal else {}
        except (SyntaxError, ImportError) as e:  # a (trusted) suite's Python hooks that do not load: one line
            where = f"{e.filename}:{e.lineno}: " if isinstance(e, SyntaxError) else ""
            raise ValueError(f"{where}{type(e).__name__}: {getattr(e, 'msg', None) or e} while the harness loaded "
                             f"suite {suite.name!r}'s tasks; fix the suite's Python file") from e
    return summarize(suite, lang, vis, limit=limit)


def summarize(suite: Suite, lang: dict, vis: dict, *, limit: int | None = None) -> dict:
    tasks = {s.label: lang[s.task]["acc"] for s in suite.language if s.task in lang}
    tasks.update({s.label: vis[s.task]["acc"] for s in suite.visual if s.task in vis})
    la = [lang[s.task]["acc"] for s in suite.language if s.task in lang]
    va = [vis[s.task]["acc"] for s in suite.visual if s.task in vis]
    LA, VA, OA = abilities(la, va)
    return {"LA": LA, "VA": VA, "OA": OA, "tasks": tasks,
            "language": [s.label for s in suite.language], "visual": [s.label for s in suite.visual],
            "suite": suite.name, "limit": limit, "harness": harness_versions(),
            "raw": {**{t: v["results"] for t, v in lang.items()}, **{t: v["results"] for t, v in vis.items()}},
            "samples": {t: v["samples"] for t, v in {**lang, **vis}.items() if "samples" in v},
            **item_answers(suite, lang, vis)}


def combine(suite: Suite, first: dict, rest: dict, *, limit: int | None = None) -> dict:
    """The result on all items (``limit`` per task) from ``first``, an evaluation on the first k items per task,
    and ``rest``, the evaluation with ``skip=k`` (both with ``log_samples``): a combinable task's samples joined
    in item order and its accuracy their mean metric (as the harness averages it); any other task as ``rest``
    ran it whole. LA / VA / OA and the answers as ``summarize`` makes them. Its ``raw`` holds, for a joined
    task, the metric alone.
    """
    if "samples" not in first or "samples" not in rest:
        raise ValueError("combine needs both evaluations' samples: evaluate them with log_samples=True")
    parts: dict[str, dict] = {}
    for s in suite.language + suite.visual:
        if not combinable(s):
            if s.task in rest["raw"]:
                parts[s.task] = {"acc": accuracy(s, rest["raw"][s.task]), "results": rest["raw"][s.task],
                                 "samples": rest["samples"].get(s.task, [])}
            continue
        samples = sorted(first["samples"].get(s.task, []) + rest["samples"].get(s.task, []),
                         key=lambda x: x["doc_id"])
        if samples:
            acc = sum(x["score"] for x in samples) / len(samples)
            parts[s.task] = {"acc": acc, "results": {s.metric: acc}, "samples": samples}
    lang = {s.task: parts[s.task] for s in suite.language if s.task in parts}
    vis = {s.task: parts[s.task] for s in suite.visual if s.task in parts}
    return summarize(suite, lang, vis, limit=limit)


def item_answers(suite: Suite, lang: dict, vis: dict) -> dict:
    """Per-item answers from the logged samples (empty lists without ``log_samples``), in the form the
    explorer and ``lfm.explorer.analysis`` read:

        language_answers  [{id, task, prompt, answer, generated, correct}]   correct: the sample's metric > 0.5
        answers           [{id, task, question, choices, answer, generated, category, image}] of the visual
                          tasks whose docs list ``choices`` and ``answer``; category: ``lfm.taxonomy.classify``
                          (as ``lfm compare`` classifies), image: the item's image file ('' when none)
    """
    language, visual = [], []
    for s in suite.language:
        for x in lang.get(s.task, {}).get("samples", []):
            doc = x["doc"]
            language.append({"id": str(doc.get("id", f"{s.label}-{x['doc_id']}")), "task": s.label,
                             "prompt": doc.get("prompt", ""), "answer": str(doc.get("answer", x["target"])),
                             "generated": str(x["generated"]), "correct": bool((x["score"] or 0) > 0.5)})
    for s in suite.visual:
        for x in vis.get(s.task, {}).get("samples", []):
            doc = x["doc"]
            if not isinstance(doc.get("choices"), list) or "answer" not in doc:
                continue
            generated = "" if x["generated"] is None else str(x["generated"])
            visual.append({"id": str(doc.get("id", f"{s.label}-{x['doc_id']}")), "task": s.label,
                           "question": doc.get("question", doc.get("prompt", "")), "choices": doc["choices"],
                           "answer": str(doc["answer"]), "generated": generated,
                           "category": classify(generated, doc["choices"], str(doc["answer"])),
                           "image": x.get("image", "")})
    return {"language_answers": language, "answers": visual}


def format_table(result: dict) -> str:
    """A plain-text table: one line per task, then LA / VA / OA."""
    fmt = lambda v: "  n/a" if v is None else f"{100 * v:5.1f}"  # noqa: E731
    width = max([len(t) for t in result["tasks"]] + [8])
    lines = [f"{'task':<{width}}  acc(%)", "-" * (width + 8)]
    for group in ("language", "visual"):
        for label in result[group]:
            if label in result["tasks"]:
                lines.append(f"{label:<{width}}  {fmt(result['tasks'][label])}   ({group})")
    lines.append("-" * (width + 8))
    for k in ("LA", "VA", "OA"):
        lines.append(f"{k:<{width}}  {fmt(result[k])}")
    return "\n".join(lines)
