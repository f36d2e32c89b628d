"""A suite's task files are data: the check that the harness YAMLs a suite points lm-eval and lmms-eval at name
no code from the suite's folder.

Both harnesses read a ``!function module.name`` tag in a task YAML by importing ``module.py`` from the YAML's
folder (failing that, ``module`` from the Python path) and run it inside this process, as this user; lmms-eval
reads YAML with PyYAML's FullLoader, which also builds Python objects from ``!!python/...`` tags. So a task
folder from somebody else is code. ``check_task_files`` reads every YAML the harnesses would read (``*.yaml``
under each include folder, and every file an ``include:`` names, recursively) as plain YAML, before any harness
sees it, and refuses in one line naming the file and line:

    - a ``!function`` tag, unless it names a public function of one of lfm's own task-hook modules (HOOK_MODULES:
      the shipped suites' hooks) and no file in the YAML's folder would be imported in its place;
    - any other tag outside YAML's core schema;
    - a file that cannot be read as YAML, or include folders holding more than MAX_ENTRIES files and folders.

With ``--trust-suite-code`` (``get_suite(..., trust_code=True)``) nothing here runs: the suite's code runs as you.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import yaml

HOOK_MODULES = ("lfm.organism.task_hooks", "lfm.realpair.task_hooks")  # lfm's own task hooks: allowed
YAML_SUFFIXES = (".yaml", ".yml")
CORE_TAGS = "tag:yaml.org,2002:"  # str, int, float, bool, null, map, seq, ... (not python/*)
MAX_ENTRIES = 20_000  # files and folders walked under a suite's include folders (the organism's: 12)
TRUST_HINT = ("lfm reads suites as data; if you wrote this suite or trust whoever did, pass --trust-suite-code "
              "(its Python code then runs as you)")


def check_task_files(folders) -> None:
    """Refuse (ValueError, one line: file, line, what, the fix) any code a harness would run from the task
    YAMLs under ``folders`` (include folders, or single YAML files)."""
    seen: set[Path] = set()
    entries = 0
    for folder in folders:
        folder = Path(folder)
        if folder.is_file():
            _check_file(folder, seen)
            continue
        visited = set()
        for root, dirs, files in os.walk(folder, followlinks=True):
            real = os.path.realpath(root)
            if real in visited:  # a link back up: walked once
                dirs[:] = []
                continue
            visited.add(real)
            entries += len(dirs) + len(files)
            if entries > MAX_ENTRIES:
                raise ValueError(f"suite include folder {folder}: more than {MAX_ENTRIES} files and folders to read; "
                                 f"point include_path at the suite's own task folder")
            for name in sorted(files):
                if name.endswith(YAML_SUFFIXES):
                    _check_file(Path(root) / name, seen)


def _check_file(path: Path, seen: set[Path]) -> None:
    real = path.resolve()
    if real in seen:
        return
    seen.add(real)
    try:
        text = path.read_text(encoding="utf-8")
        root = yaml.compose(text, Loader=yaml.SafeLoader)  # nodes with their tags: nothing constructed, nothing run
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read this task file ({type(e).__name__}: {e})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)  # the problem, never the text around it (it may be any file)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ValueError(f"{where}: not YAML ({getattr(e, 'problem', None) or type(e).__name__}); fix the task "
                         f"file") from None
    if root is None:
        return
    _check_nodes(path, root)
    for include in _includes(root):
        for candidate in {Path(include), path.parent / include}:  # lmms-eval tries the first, lm-eval the second
            if candidate.is_file():
                _check_file(candidate, seen)


def _check_nodes(path: Path, root) -> None:
    stack, done = [root], set()
    while stack:
        node = stack.pop()
        if id(node) in done:  # an alias: the same node again
            continue
        done.add(id(node))
        where = f"{path}:{node.start_mark.line + 1}"
        if node.tag == "!function":
            _check_hook(path, where, str(node.value))
        elif not node.tag.startswith(CORE_TAGS) or node.tag.startswith(CORE_TAGS + "python/"):
            raise ValueError(f"{where}: tag {node.tag!r} makes the harness build a Python object; {TRUST_HINT}")
        if isinstance(node, yaml.MappingNode):
            stack.extend(n for pair in node.value for n in pair)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)


def _check_hook(path: Path, where: str, name: str) -> None:
    module, _, function = name.rpartition(".")
    if module not in HOOK_MODULES:
        raise ValueError(f"{where}: '!function {name}' imports and runs Python code ({_source(path, module)}); "
                         f"{TRUST_HINT}")
    for folder in {path.parent, path.resolve().parent}:  # where each harness looks first, before lfm's package
        for shadow in (folder / f"{module.replace('.', '/')}.py", folder / f"{module}.py"):
            if shadow.exists():
                raise ValueError(f"{where}: '!function {name}' would import {shadow} from the suite's folder instead "
                                 f"of lfm's own {module}; remove that file, or {TRUST_HINT}")
    if function.startswith("_") or not callable(getattr(importlib.import_module(module), function, None)):
        raise ValueError(f"{where}: '!function {name}': {module} has no task hook {function!r}; fix the task file")


def _source(path: Path, module: str) -> str:
    local = path.parent / f"{module.replace('.', '/')}.py"
    return f"{local} from the suite's folder" if local.exists() else f"module {module!r}"


def _includes(root) -> list[str]:
    """The file names of a top-level ``include:`` (a string or a list of strings)."""
    if not isinstance(root, yaml.MappingNode):
        return []
    for key, value in root.value:
        if isinstance(key, yaml.ScalarNode) and key.value == "include":
            if isinstance(value, yaml.ScalarNode):
                return [value.value]
            if isinstance(value, yaml.SequenceNode):
                return [v.value for v in value.value if isinstance(v, yaml.ScalarNode)]
    return []
