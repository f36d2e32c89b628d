"""Evaluation suites: which harness tasks make LA (language ability) and VA (visual ability).

A suite is data: a list of language tasks (lm-evaluation-harness) and a list of visual tasks
(lmms-eval), each with its shot setting and the metric that counts as its accuracy, plus the task
folders to index and the hub datasets the tasks need. LA = mean of the language accuracies,
VA = mean of the visual accuracies, OA = (LA + VA) / 2 (the paper's Section 4.1).

    paper      the paper's 13 benchmarks (Section 4.1: "8-shot chain-of-thought for GSM8K, and
               zero-shot for other datasets"; lm-eval for language, lmms-eval for vision).
               Needs the Hugging Face hub datasets.
    organism   the embedded organism's held-out items as local task YAMLs (lfm/data/organism/tasks/),
               fully offline.
    FILE.yaml  your own: {name, include_path: [dirs, relative to the file], language: [{task,
               num_fewshot, metric}], visual: [...], datasets: [hub ids to check first]}

A suite's task folders are data too: a task YAML that names Python code (lm-eval / lmms-eval ``!function``
hooks, a ``utils.py`` beside it) is refused, naming the file and line, unless the caller trusts the suite's code
(``get_suite(..., trust_code=True)``, ``--trust-suite-code`` on the command line; the explorer's page never does).
The shipped suites' hooks live in lfm's own package (lfm.evaluate.task_files.HOOK_MODULES).

Example:
    >>> get_suite("paper").task_names()[:3]
    ['race', 'commonsense_qa', 'piqa']
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from lfm.evaluate.task_files import check_task_files
from lfm.package_data import ORGANISM_DIR

TASKS_DIR = ORGANISM_DIR / "tasks"


@dataclass(frozen=True)
class TaskSpec:
    """One harness task and how its score becomes an accuracy in [0, 1].

    metric: the key in the harness's results dict ('acc,none', 'exact_match,strict-match', ...).
    scale: the accuracy is results[metric] / scale (MME reports a score out of 2000 + 800 points).
    extra_metrics: summed with ``metric`` before scaling (MME: perception + cognition).
    """

    task: str
    label: str
    num_fewshot: int = 0
    metric: str = "acc,none"
    scale: float = 1.0
    extra_metrics: tuple[str, ...] = ()
    dataset: str | None = None  # hub dataset id the task loads (checked before anything runs)


@dataclass(frozen=True)
class Suite:
    name: str
    language: tuple[TaskSpec, ...] = ()
    visual: tuple[TaskSpec, ...] = ()
    lm_eval_include: tuple[str, ...] = ()  # extra lm-eval task folders; () = the harness defaults
    lmms_eval_include: tuple[str, ...] = ()
    include_defaults: bool = True  # index the harnesses' own task folders (slow; not for local suites)
    datasets: tuple[str, ...] = field(default=())
    trusted_code: bool = False  # True: its task folders may run Python code (--trust-suite-code); else checked

    def task_names(self) -> list[str]:
        return [t.task for t in self.language + self.visual]

    def hub_datasets(self) -> list[str]:
        """Every hub dataset id the suite needs, in order, without repeats."""
        ids = list(self.datasets) + [t.dataset for t in self.language + self.visual if t.dataset]
        return list(dict.fromkeys(ids))


# The paper's suite, with the task names of lm-eval 0.4.13 and lmms-eval 0.7.3 and the datasets their
# YAMLs load (tests/test_evaluate.py checks these ids against the installed harness YAMLs).
# Accuracy metric per task: exact-match accuracy as the paper reports; for the multiple-choice language
# tasks lm-eval's `acc` (the choice with the highest log-likelihood is the exact answer).
PAPER = Suite(
    name="paper",
    language=(
        TaskSpec("race", "RACE", 0, "acc,none", dataset="EleutherAI/race"),
        TaskSpec("commonsense_qa", "CommonsenseQA", 0, "acc,none", dataset="tau/commonsense_qa"),
        TaskSpec("piqa", "PIQA", 0, "acc,none", dataset="baber/piqa"),
        TaskSpec("openbookqa", "OpenBookQA", 0, "acc,none", dataset="allenai/openbookqa"),
        TaskSpec("arc_easy", "ARC-E", 0, "acc,none", dataset="allenai/ai2_arc"),
        TaskSpec("arc_challenge", "ARC-C", 0, "acc,none", dataset="allenai/ai2_arc"),
        TaskSpec("gsm8k_cot", "GSM8K", 8, "exact_match,strict-match", dataset="openai/gsm8k"),
    ),
    visual=(
        TaskSpec("mme", "MME", 0, "mme_perception_score,none", scale=2800.0,
                 extra_metrics=("mme_cognition_score,none",), dataset="lmms-lab-encoder/MME"),
        TaskSpec("mmmu_val", "MMMU", 0, "mmmu_acc,none", dataset="lmms-lab-encoder/MMMU"),
        TaskSpec("scienceqa_img", "ScienceQA-IMG", 0, "exact_match,none", dataset="lmms-lab-encoder/ScienceQA"),
        TaskSpec("mmbench_en_dev", "MMBench-EN", 0, "gpt_eval_score,none", scale=100.0,
                 dataset="lmms-lab-encoder/MMBench"),
        TaskSpec("mmbench_cn_dev", "MMBench-CN", 0, "gpt_eval_score,none", scale=100.0,
                 dataset="lmms-lab-encoder/MMBench"),
        TaskSpec("gqa", "GQA", 0, "exact_match,none", dataset="lmms-lab-encoder/GQA"),
    ),
)

# The organism's held-out items (lfm.organism), one local task per organism task.
ORGANISM_LANGUAGE_TASKS = ("arithmetic", "facts", "reading", "noimage")
ORGANISM_VISUAL_TASKS = ("colour", "count", "region")
ORGANISM = Suite(
    name="organism",
    language=tuple(TaskSpec(f"organism_{t}", t, 0, "acc,none") for t in ORGANISM_LANGUAGE_TASKS),
    visual=tuple(TaskSpec(f"organism_{t}", t, 0, "acc,none") for t in ORGANISM_VISUAL_TASKS),
    lm_eval_include=(str(TASKS_DIR / "lm_eval"),),
    lmms_eval_include=(str(TASKS_DIR / "lmms_eval"),),
    include_defaults=False,
)

SUITES = {"paper": PAPER, "organism": ORGANISM}


def get_suite(name_or_path: str | Path | Suite, *, trust_code: bool = False) -> Suite:
    """'paper', 'organism', a suite YAML file (see the module docstring) or a Suite, its task files checked for
    code (``lfm.evaluate.task_files``) unless ``trust_code`` or the Suite was already trusted.

    Args:
        trust_code: let the suite's task files run Python code from their folders (lm-eval / lmms-eval
            ``!function`` hooks) in this process, as this user. Only for a suite you wrote or trust.
    """
    if isinstance(name_or_path, Suite):
        suite = name_or_path
    elif str(name_or_path) in SUITES:
        suite = SUITES[str(name_or_path)]
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise ValueError(f"unknown suite {str(name_or_path)!r}: use one of {sorted(SUITES)} or a suite YAML file")
        suite = load_suite_file(path)
    if trust_code:
        return replace(suite, trusted_code=True)
    if not suite.trusted_code:
        check_task_files(dict.fromkeys(suite.lm_eval_include + suite.lmms_eval_include))
    return suite


_SUITE_KEYS = {"name", "include_path", "lmms_include_path", "include_defaults", "language", "visual", "datasets"}
_TASK_KEYS = {"task", "label", "num_fewshot", "metric", "scale", "extra_metrics", "dataset"}


def load_suite_file(path: Path) -> Suite:
    """A suite from YAML (plain YAML: a tag that builds objects is refused). Unknown keys are errors (a typo must
    not silently change what is measured). Its task folders are not checked here: ``get_suite`` does."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"suite file {path}: cannot be read ({type(e).__name__}: {e})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ValueError(f"suite file {where}: not plain YAML ({getattr(e, 'problem', None) or type(e).__name__}); "
                         f"a suite is data: {sorted(_SUITE_KEYS)}") from None
    if not isinstance(data, dict):
        raise ValueError(f"suite file {path}: expected a mapping with keys {sorted(_SUITE_KEYS)}")
    unknown = sorted(set(data) - _SUITE_KEYS)
    if unknown:
        raise ValueError(f"suite file {path}: unknown keys {unknown}; valid keys: {sorted(_SUITE_KEYS)}")

    def tasks(kind: str) -> tuple[TaskSpec, ...]:
        out = []
        for i, t in enumerate(data.get(kind) or []):
            t = {"task": t} if isinstance(t, str) else dict(t)
            bad = sorted(set(t) - _TASK_KEYS)
            if bad or "task" not in t:
                raise ValueError(f"suite file {path}: {kind}[{i}] needs 'task' and only keys {sorted(_TASK_KEYS)}"
                                 f" (got {sorted(t)})")
            t.setdefault("label", t["task"])
            t["extra_metrics"] = tuple(t.get("extra_metrics", ()))
            out.append(TaskSpec(**t))
        return tuple(out)

    def dirs(key: str) -> tuple[str, ...]:
        value = data.get(key) or []
        value = [value] if isinstance(value, str) else value
        return tuple(str((path.parent / d).resolve()) for d in value)

    suite = Suite(name=data.get("name", path.stem), language=tasks("language"), visual=tasks("visual"),
                  lm_eval_include=dirs("include_path"), lmms_eval_include=dirs("lmms_include_path") or dirs("include_path"),
                  include_defaults=bool(data.get("include_defaults", not data.get("include_path"))),
                  datasets=tuple(data.get("datasets") or ()))
    if not suite.language and not suite.visual:
        raise ValueError(f"suite file {path}: lists no 'language' and no 'visual' tasks")
    return suite


class DatasetsUnavailable(RuntimeError):
    """The suite's hub datasets cannot be loaded here (offline, or not cached)."""


def check_datasets(suite: Suite) -> None:
    """Fail before any model is loaded if a hub dataset of ``suite`` is unreachable.

    Offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE set) a dataset counts as available only when the
    Hugging Face cache already holds it. Raises DatasetsUnavailable listing every missing id and the fix.
    """
    ids = suite.hub_datasets()
    if not ids:
        return
    offline = any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
                  for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"))
    missing = {}
    for ds in ids:
        try:
            _probe_dataset(ds)
        except Exception as e:  # noqa: BLE001 - any failure means "not loadable here"; reported below
            missing[ds] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    if missing:
        why = "the Hugging Face hub is switched off (HF_HUB_OFFLINE=1) and they are not in the local cache" \
            if offline else "the Hugging Face hub could not be reached and they are not in the local cache"
        lines = "\n".join(f"  - {ds}  ({err})" for ds, err in missing.items())
        raise DatasetsUnavailable(
            f"suite {suite.name!r} needs {len(missing)} hub dataset(s) that cannot be loaded: {why}:\n{lines}\n"
            f"Fix: run where https://huggingface.co is reachable (unset HF_HUB_OFFLINE), or download them first "
            f"(`huggingface-cli download --repo-type dataset <id>` for each id above), or evaluate offline with "
            f"`--suite organism`.")


def _probe_dataset(repo_id: str) -> None:
    """Raise if ``repo_id`` can be neither reached on the hub nor found in the local hub cache."""
    from huggingface_hub import snapshot_download

    # local_files_only first (fast, works offline when cached); then a metadata call to the hub
    try:
        snapshot_download(repo_id, repo_type="dataset", local_files_only=True)
        return
    except Exception:  # noqa: BLE001
        pass
    from huggingface_hub import HfApi

    HfApi().dataset_info(repo_id, timeout=10)
