"""What lfm silences in lm-eval and lmms-eval, and why: messages addressed to users of their own CLIs.

Every line here is a message a user saw on every `lfm eval` / `lfm sweep` run that says nothing about
their model or their results:

- "Custom kwargs can be passed to `--metadata` ..." (lm-eval, once per task): lfm's local tasks load their
  items with a `custom_dataset` function that takes no kwargs; lm-eval's CLI flag does not exist in lfm.
- "`pretrained` model kwarg is not of type `str` ..." and "Passed an already-initialized model ..." (lm-eval's
  HFLM): lfm hands the harness the model it already holds in memory, on purpose (one copy of the weights).
- "Overwriting default num_fewshot of TASK from None to N" (lm-eval): lfm passes each suite's shot count
  explicitly, so this is the setting working as asked.
- "fatal: not a git repository" (both harnesses run `git describe` in the current directory to record their
  own commit, and let git's error reach the terminal): the same call with git's stderr dropped; results
  still get the hash when there is one.

Anything else the harnesses log still reaches the user.

Inside a sweep, the harnesses' own progress bars (one per task per point, drawn under lfm's "sweep" bar,
which leaves cursor-up `[A` codes in any log) go to `harness.log` in the sweep folder instead
(`bars_to_file`): the sweep bar is the one a user waits on.
"""

from __future__ import annotations

import importlib
import logging
import subprocess
import sys
from contextlib import contextmanager, redirect_stderr
from pathlib import Path

HARMLESS = {
    "lm_eval.api.task": ("Custom kwargs can be passed to `--metadata`",),
    "lm_eval.models.huggingface": ("`pretrained` model kwarg is not of type `str`",
                                   "Passed an already-initialized model through `pretrained`"),
    "lm_eval.evaluator": ("Overwriting default num_fewshot of",),
}


class _DropMessages(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(p in message for p in self.prefixes)


def git_commit_hash_quietly() -> str | None:
    """`git describe --always` in the current directory, or None outside a repository (no stderr)."""
    try:
        return subprocess.check_output(["git", "describe", "--always"], stderr=subprocess.DEVNULL).strip().decode()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return None


@contextmanager
def quiet_harnesses():
    """Within the block, the messages listed in this module's docstring are not shown.

    Enter it after importing the harness: only harnesses already imported are touched.
    """
    filters = []
    for name, prefixes in HARMLESS.items():
        f = _DropMessages(prefixes)
        logging.getLogger(name).addFilter(f)
        filters.append((name, f))
    patched = []
    for module_name in ("lm_eval.evaluator", "lmms_eval.evaluator"):
        if module_name.split(".")[0] not in sys.modules:
            continue  # that harness is not in use
        module = importlib.import_module(module_name)  # lm_eval imports its evaluator lazily
        if hasattr(module, "get_git_commit_hash"):
            patched.append((module, module.get_git_commit_hash))
            module.get_git_commit_hash = git_commit_hash_quietly
    try:
        yield
    finally:
        for module, original in patched:
            module.get_git_commit_hash = original
        for name, f in filters:
            logging.getLogger(name).removeFilter(f)


@contextmanager
def bars_to_file(path: str | Path):
    """Within the block, whatever is printed to sys.stderr (tqdm bars created inside it) is appended to `path`.

    Bars and logging handlers created before the block keep writing to the terminal. Single-threaded
    callers only (sys.stderr is process-wide).
    """
    with open(path, "a") as log, redirect_stderr(log):
        yield
