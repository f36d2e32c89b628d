"""The `lfm` command: score neurons, merge, and (from sibling packages) the organism, evaluation and
the explorer's precompute step.

    lfm score --base B --tuned T --out scores.safetensors
    lfm merge --base B --tuned T --out O --method neu-s-ties --density 0.2 --neurons 0.3
    lfm merge --config recipe.yaml [--out O]
"""

import argparse
import ctypes
import difflib
import errno
import gc
import importlib
import importlib.util
import json
import os
import re
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

from lfm._version import installed_version
from lfm.methods.recipe import Recipe, check_keys, idle_settings, no_ops, setting_value, without
from lfm.methods.registry import METHODS, SETTINGS

# Subcommand groups living in other packages; each module has register(subparsers). Building the parser
# imports only these modules and the (torch-free) registry: torch, transformers and panel load when a command runs.
PLUGINS = ("lfm.organism.cli", "lfm.evaluate.cli", "lfm.explorer.cli", "lfm.lab", "lfm.realpair.cli", "lfm.pair_cli")
RECIPE_FLAGS = tuple(name for name in SETTINGS if name != "method")
RUN_KEYS = ("base", "tuned", "out", "device", "dtype")
ATOMIC_COMMANDS = ("merge", "score", "precompute")  # their outputs appear whole or not at all


class Parser(argparse.ArgumentParser):
    """argparse, with "did you mean" for a misspelt option or choice (every parser of `lfm` is one)."""

    def _check_value(self, action, value):
        try:
            super()._check_value(action, value)
        except argparse.ArgumentError as e:
            close = difflib.get_close_matches(str(value), [str(c) for c in action.choices or ()], n=1)
            if not close:
                raise
            raise argparse.ArgumentError(action, f"{e.message}; did you mean {close[0]!r}?") from None

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        if extras and self._subparsers is None:  # a command's own parser: it knows which options it has
            options = [o for o in self._option_string_actions if o.startswith("--")]
            hints = [close[0] for x in extras if x.startswith("-")
                     for close in [difflib.get_close_matches(x.split("=")[0], options, n=1)] if close]
            self.error(f"unrecognized arguments: {' '.join(extras)}"
                       + (f"; did you mean {' '.join(hints)}?" if hints else ""))
        return namespace, extras

    def error(self, message):
        """One line (no usage block above it): what is wrong, and where the options are listed."""
        self.exit(2, f"{self.prog}: error: {message} (options: {self.prog} --help)\n")


def number_option(name: str):
    """The argparse ``type`` of a recipe setting's flag: read and checked as a YAML value is (``setting_value``),
    so a bad value is refused while the command line is parsed, before anything is loaded."""
    def read(text: str):
        try:
            return setting_value(name, text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    read.__name__ = name
    return read


def count_option(minimum: int):
    """The argparse ``type`` of a count: an integer >= ``minimum`` (checked while the command line is parsed)."""
    def read(text: str) -> int:
        if not re.fullmatch(r"[+-]?[0-9]+", text.strip()) or int(text) < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return int(text)
    read.__name__ = f"integer >= {minimum}"
    return read


def port_option(text: str) -> int:
    """A TCP port, 1 .. 65535."""
    if not re.fullmatch(r"[0-9]+", text.strip()) or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 1 to 65535, got {text!r}")
    return int(text)


def size_option(text: str) -> str:
    """A shard size as `lfm.checkpoint.parse_size` reads it ('5GB', '500MB', 1000), checked here without torch."""
    if not re.fullmatch(r"[0-9]+(\.[0-9]+)?\s*([KMG]?B)?", text.strip(), re.IGNORECASE) or float(
            re.match(r"[0-9.]+", text.strip()).group()) <= 0:
        raise argparse.ArgumentTypeError(f"expected a size such as 5GB, 500MB or 1000000 (bytes), got {text!r}")
    return text


def device_option(text: str) -> str:
    """A device torch knows and this machine has (`lfm.device.resolve_device`), checked while the command line is
    parsed; 'cpu' (every command's default) is taken without importing torch."""
    if text.strip() == "cpu":
        return text
    from lfm.device import resolve_device

    try:
        resolve_device(text.strip())
    except ValueError as e:  # ours: says what to do
        raise argparse.ArgumentTypeError(str(e)) from None
    except RuntimeError:  # torch's: a device type it does not know
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; use cpu, cuda, cuda:N or auto") from None
    return text.strip()


def add_strict_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strict", action="store_true", help="refuse (exit 2) instead of warning when a setting does "
                                                         "nothing for the method or the merge copies tuned")


def check_no_ops(args, recipe: Recipe, given) -> Recipe:
    """Warn on stderr, one line each, about what in ``recipe`` does nothing (``no_ops``), or refuse under
    --strict; returns the recipe without the settings that did nothing (it must not record them)."""
    lines = no_ops(recipe, given)
    if lines and getattr(args, "strict", False):
        raise ValueError("; ".join(lines) + " (refused under --strict)")
    for line in lines:
        print(f"lfm {args.command}: warning: {line}", file=sys.stderr)
    return without(recipe, idle_settings(recipe, given))


def add_pair_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--base", required=required, help="base LLM directory (Hugging Face, safetensors)")
    p.add_argument("--tuned", required=required, help="tuned MLLM (or LLM) directory")
    p.add_argument("--device", type=device_option,
                   help="cpu, cuda, cuda:N or auto (default: cuda when available, else cpu)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="accept pickle .bin weights (loaded with torch.load(weights_only=True))")


def add_recipe_args(p: argparse.ArgumentParser, names=tuple(SETTINGS), *, defaults: bool = False) -> None:
    """One option per recipe setting in ``names`` (the registry's settings table: type, choices, help), unset
    unless given (``defaults``: set to the recipe's default)."""
    default = Recipe()
    for name in names:
        setting = SETTINGS[name]
        if name == "method":
            p.add_argument("--method", metavar="METHOD", help=f"one of {sorted(METHODS)} or a paper alias "
                                                              f"({', '.join(sorted(METHODS.aliases()))})")
            continue
        flags = [f"--{name.replace('_', '-')}", *([setting.flag] if setting.flag else [])]
        value = getattr(default, name)
        options = dict(dest=name, help=f"{setting.help} (default {value})", default=value if defaults else None)
        if setting.kind is tuple:
            options.update(action="append", metavar="REGEX", help=f"{setting.help} (repeatable)", default=None)
        elif setting.options() is not None:
            options["choices"] = setting.options()
        else:
            options["type"] = number_option(name)
        p.add_argument(*flags, **options)


def recipe_from_args(args: argparse.Namespace):
    """Merge `--config` YAML (if any) with flags (flags win). Returns (Recipe, run settings). Every value is
    checked here, a file's named with its file; what does nothing is said (``check_no_ops``)."""
    import yaml

    config = {}
    if getattr(args, "config", None):
        try:
            config = yaml.safe_load(Path(args.config).read_text()) or {}
        except (OSError, ValueError, yaml.YAMLError) as e:  # ValueError: e.g. a number of over 4300 digits
            raise ValueError(f"--config {args.config}: cannot be read as YAML ({e})") from e
        if not isinstance(config, dict):
            raise ValueError(f"--config {args.config}: expected a mapping of recipe keys")
    run = {k: config.pop(k) for k in RUN_KEYS if k in config}
    for key in ("label", "explorer_view", "explorer_link"):  # exported by the explorer for humans / its URL
        config.pop(key, None)
    try:
        check_keys(config)
        config = {k: v if k == "method" else setting_value(k, v) for k, v in config.items()}
        if "method" in config:
            Recipe.from_name(str(config["method"]))
    except ValueError as e:
        raise ValueError(f"--config {args.config}: {e}") from None
    for key in RUN_KEYS:
        value = getattr(args, key, None)
        if value is not None:
            run[key] = value
    fields = {k: getattr(args, k) for k in RECIPE_FLAGS if getattr(args, k, None) is not None}
    method = args.method or config.pop("method", Recipe.method)
    config.pop("method", None)
    recipe = Recipe.from_dict({**config, **fields, "method": method})
    return check_no_ops(args, recipe, {*config, *fields}), run


@contextmanager
def imports_without_collection():
    """Import a command's modules with the garbage collector paused, then freeze what they made.

    Importing torch makes hundreds of thousands of objects, and the collector walks them again and again
    while they are made (measured: ``import torch`` 1.03 s with it, 0.92 s without, medians of 10) and
    again on every full collection of the merge that follows (~5 % of a 1.03B TIES merge's CPU time).
    Modules live as long as the process, so ``gc.freeze`` moves them where collections never look.
    """
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def cmd_merge(args) -> int:
    recipe, run = recipe_from_args(args)
    if args.export_mergekit:  # before torch is imported: writing the YAML needs none
        return export_mergekit(args.export_mergekit, recipe, run)
    with imports_without_collection():
        from lfm.stream import merge

    for key in ("base", "tuned", "out"):
        if not run.get(key):
            raise ValueError(f"--{key} is required (as a flag or a key in --config)")
    merge(run["base"], run["tuned"], run["out"], recipe, device=run.get("device", "auto"),
          dtype=run.get("dtype"), force=args.force, allow_pickle=args.allow_pickle,
          max_shard_size=args.shard_size, progress=not args.quiet)
    return 0


def export_mergekit(path: str, recipe: Recipe, run: dict) -> int:
    """`lfm merge --export-mergekit m.yaml`: write the recipe's mergekit YAML and merge nothing (mergekit-yaml
    runs the merge); a recipe without a mergekit form is refused in one line (exit 2), nothing written."""
    from lfm.mergekit_export import mergekit_yaml

    for key in ("base", "tuned"):
        if not run.get(key):
            raise ValueError(f"--{key} is required with --export-mergekit (as a flag or a key in --config)")
    text = mergekit_yaml(recipe, run["base"], run["tuned"], run.get("dtype"))
    target = Path(path)
    partial = target.with_name(target.name + ".partial")
    try:
        partial.write_text(text)
        partial.replace(target)  # whole or not at all
    except OSError as e:
        partial.unlink(missing_ok=True)
        raise ValueError(f"--export-mergekit {path}: cannot write it ({e.strerror}); choose a writable path") from None
    print(f"wrote {path} (merged nothing; run: mergekit-yaml {path} OUT_DIR)")
    return 0


def cmd_score(args) -> int:
    with imports_without_collection():
        from lfm.pair import open_pair
        from lfm.score import format_summary, neuron_scores, save_scores, summary_rows

    pair = open_pair(args.base, args.tuned, allow_pickle=args.allow_pickle)
    scores = neuron_scores(pair, device=args.device or "auto", progress=not args.quiet)
    rows = summary_rows(scores)
    save_scores(scores, args.out, {"base": str(args.base), "tuned": str(args.tuned)})
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(format_summary(rows))
        print(f"wrote {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="lfm", description=__doc__, epilog=methods_help(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"lfm {installed_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("score", help="neuron change scores C(i) per module + a summary table")
    add_pair_args(p)
    p.add_argument("--out", required=True, help="output .safetensors with one C vector per weight")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("merge", help="merge a tuned model back toward its base")
    add_pair_args(p, required=False)
    add_recipe_args(p)
    p.add_argument("--out", help="output directory (built in a temp dir, then renamed)")
    p.add_argument("--config", help="recipe YAML (keys: base, tuned, out, method, density, neurons, ...)")
    p.add_argument("--dtype", help="output dtype: bfloat16, float16, float32 (default: as tuned)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    p.add_argument("--shard-size", default="5GB", type=size_option, help="max output shard size (default 5GB)")
    p.add_argument("--export-mergekit", metavar="YAML", help="write the recipe as a mergekit YAML (TA, TIES, "
                   "Breadcrumbs, DARE, DELLA) and exit without merging; needs --base and --tuned, not --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_strict_arg(p)
    p.set_defaults(func=cmd_merge)

    for module in PLUGINS:
        package = module.rsplit(".", 1)[0]
        if importlib.util.find_spec(package) is not None and importlib.util.find_spec(module) is not None:
            importlib.import_module(module).register(sub)
    return parser


def methods_help() -> str:
    """The registry's methods, one a line, for `lfm --help` (plug-ins included)."""
    rows = [f"  {name:<18}{row.title}" + (f" ({', '.join(row.aliases)})" if row.aliases else "")
            for name, row in METHODS.items()]
    return "merge methods (--method; paper aliases such as neu-s-ties, neu-p-bread):\n" + "\n".join(rows)


def let_idle_threads_sleep() -> None:
    """Make torch's OpenMP worker threads sleep, not spin, while they wait (OMP_WAIT_POLICY=PASSIVE).

    A merge runs thousands of short parallel torch operations, each ending in a barrier. By default the
    threads that reach it first spin; when the machine is shared, the thread they wait for may not be
    running, and every barrier then costs a scheduler time slice. Measured on this 2-core machine, a TIES
    merge of a 0.4B pair with two other busy processes: 44 s spinning, 4.9 s sleeping (3.7-4.0 s with the
    machine to itself). Only effective before torch is imported; a value set by the user is kept.
    """
    if "torch" not in sys.modules and not os.environ.get("OMP_WAIT_POLICY"):  # unset or empty
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


def keep_freed_memory_for_reuse() -> None:
    """Let glibc reuse freed heap memory for the next tensor instead of mapping fresh pages.

    A merge allocates and frees several tensors of the same large sizes per weight; by default glibc
    serves each from a new mmap and returns it on free, so every step pays page faults (measured: a
    TIES merge step on a 5632x2048 weight takes ~90 ms with the default, ~50 ms with this). Only the
    `lfm` process is affected; Python API users can call this themselves. No-op off glibc.
    The cost is memory the heap keeps: a 0.4B TIES merge peaked at 758 MB RSS with this, 704 MB without,
    and took 2.4x as long without (one run each, on a loaded 2-core machine). The merge's worker threads
    share the one heap (M_ARENA_MAX 1) instead of keeping freed memory in an arena each: a few large
    allocations contend for no lock worth measuring, and memory freed by one thread serves the next
    (0.4B DARE: 646-683 MB peak RSS, 119-128K page faults vs 669-689 MB, 153-158K; same time).
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8  # from <malloc.h>
    libc.mallopt(m_mmap_threshold, 2**31 - 1)
    libc.mallopt(m_trim_threshold, 2**31 - 1)
    libc.mallopt(m_arena_max, 1)


OS_ERROR_FIXES = {errno.ENOSPC: "free space on that disk or choose another --out",
                  errno.EDQUOT: "free space on that disk or choose another --out",
                  errno.EROFS: "choose another --out",
                  errno.EFBIG: "the file size limit (ulimit -f) or the file system's stopped it; raise the limit "
                               "or choose another --out",
                  errno.EACCES: "choose a path you may write to (or read, for inputs)",
                  errno.EPERM: "choose a path you may write to (or read, for inputs)"}


def error_line(e: BaseException) -> str:
    """One line for a refusal: our own errors say what and how to fix (a MemoryError: bytes needed vs available,
    lfm.memory); an OSError gets the file and a fix."""
    if isinstance(e, OSError) and e.strerror:
        where = f"{e.filename}: " if e.filename else ""
        return f"{where}{e.strerror} (errno {errno.errorcode.get(e.errno, e.errno)}); " \
               f"{OS_ERROR_FIXES.get(e.errno, 'check the path and try again')}"
    return " ".join(str(e).split("\n"))


class Interrupted(KeyboardInterrupt):
    """SIGTERM, raised like SIGINT's KeyboardInterrupt so that every `finally` and cleanup runs."""


def _raise_interrupted(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


def stop_helper_threads() -> None:
    """Stop and join lfm.pipeline's read-ahead, merging and writing threads, if that module was loaded."""
    pipeline = sys.modules.get("lfm.pipeline")
    if pipeline is not None:
        pipeline.stop_all()


def main(argv: list[str] | None = None) -> int:
    let_idle_threads_sleep()
    keep_freed_memory_for_reuse()
    try:
        parser = build_parser()
    except ValueError as e:  # a method plug-in that cannot be loaded (lfm.methods.registry)
        print(f"lfm: error: {error_line(e)}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        try:
            return args.func(args)
        finally:  # before the one line and the exit: no helper thread may be left inside torch (lfm.pipeline)
            stop_helper_threads()
    except (ValueError, RuntimeError, OSError, MemoryError) as e:
        print(f"lfm {args.command}: error: {error_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        why = str(e) or "SIGINT"
        outcome = "nothing written" if args.command in ATOMIC_COMMANDS else "its outputs may be incomplete"
        print(f"lfm {args.command}: interrupted ({why}), {outcome}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
