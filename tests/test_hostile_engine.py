"""Hostile inputs and faults of issue 21, engine side, run as a user would (real `python -m lfm.cli`
subprocesses): signals under load, suites that carry code, non-weight files from outside the model
directory, image bombs, memory up front, CSV formula cells, and the tracebacks that became one line."""
from __future__ import annotations

import base64
import csv
import io
import json
import math
import os
import re
import resource
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from fixtures import copy_dir
from lfm.package_data import ORGANISM_DIR
from hostile_probe import ENV, leftovers, merge_args
from test_hostile import cli, refused, slow_pair, start_and_wait_for_scratch, tmpfs  # noqa: F401 (fixtures)


# ----------------------------------------------------------------------------------------- signals

def test_signals_under_a_busy_core_never_abort(slow_pair, tmp_path):  # noqa: F811
    """A signal lands anywhere, also while a helper thread is being started; a busy process beside stretches
    every step (the fresh-clone CI run where SIGTERM ended in SIGABRT). Each run must end with its one line and
    exit 2, never 'terminate called without an active exception' (-6). Done 20 times per signal by hand (see
    docs/hostile.md); here 3 times each, at three moments."""
    busy = subprocess.Popen([sys.executable, "-c", "while 1: pass"])
    try:
        for i, delay in enumerate((0.0, 0.05, 0.15)):
            for sig in (signal.SIGTERM, signal.SIGINT):
                out = tmp_path / f"out{i}{sig.name}"
                proc = start_and_wait_for_scratch(merge_args(*slow_pair, out), out)
                time.sleep(delay)
                proc.send_signal(sig)
                _, err = proc.communicate(timeout=120)
                assert (proc.returncode, err.strip()) == (2, f"lfm merge: interrupted ({sig.name}), nothing written")
                assert not out.exists() and not leftovers(out)
    finally:
        busy.kill()
        busy.wait()


def test_a_helper_thread_left_reading_is_stopped_before_the_interpreter_exits(tmp_path):
    """The mechanism of that abort, made certain: a read-ahead whose generator is never closed (held in a reference
    cycle, as a traceback holding its caller's frame makes one) keeps reading inside torch; when the interpreter
    exits, CPython ends that thread inside C++ and the process aborts. lfm.pipeline stops and joins it first."""
    script = tmp_path / "abandon.py"
    script.write_text(textwrap.dedent("""
        import gc, sys, torch
        from lfm.pipeline import read_ahead
        gc.disable()
        a = torch.randn(1500, 1500)
        items = read_ahead(range(10**6), lambda key: a @ a, lambda key: 1, max_bytes=10**9)
        next(items)
        cycle = [items]
        cycle.append(cycle)
        del items, cycle
        sys.exit(2)
    """))
    for _ in range(2):  # the old code aborted every time
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=ENV, timeout=120)
        assert (proc.returncode, proc.stderr) == (2, "")


# ----------------------------------------------------------------------------------------- helpers

ORGANISM = ORGANISM_DIR


def lfm_run(*args, env=None, preexec=None, cwd=None):
    """`python -m lfm.cli ARGS` as a user runs it; also returns the peak RSS (bytes) of that process alone."""
    code = ("import resource, subprocess, sys\n"
            "p = subprocess.run(sys.argv[1:], preexec_fn=None)\n"
            "sys.stderr.write(f'\\nPEAK {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}\\n')\n"
            "sys.exit(p.returncode)")
    proc = subprocess.run([sys.executable, "-c", code, sys.executable, "-m", "lfm.cli", *map(str, args)],
                          capture_output=True, text=True, env=env or ENV, timeout=600, preexec_fn=preexec, cwd=cwd)
    err, _, peak = proc.stderr.rpartition("\nPEAK ")
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout, err), int(peak)


def one_line(proc, *needles) -> str:
    """Exit 2 and a last stderr line holding every needle, no traceback."""
    assert proc.returncode == 2, f"rc={proc.returncode}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    for n in needles:
        assert str(n) in line, f"{n!r} not in {line!r}"
    return line


def zeros_png(path: Path, width: int, height: int) -> Path:
    """A real, decodable grayscale PNG of zeros, written row by row (a 12000 x 12000 one is ~140 KB)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte 0 + one byte per pixel
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


# ----------------------------------------------------------------------------------------- suites are data

EVIL_TASK = """\
task: evil_task
dataset_path: json
custom_dataset: !function utils.docs
output_type: generate_until
doc_to_text: "{{prompt}}"
doc_to_target: "{{answer}}"
metric_list:
  - metric: exact_match
"""
EVIL_UTILS = """\
from pathlib import Path
Path(__file__).with_name("RAN").write_text("the suite's code ran in lfm's process")
def docs(**kwargs):
    raise ValueError("the hook ran")
"""


def evil_suite(folder: Path, task: str = EVIL_TASK, utils: str | None = EVIL_UTILS) -> Path:
    """A suite whose task folder holds a task YAML (and a utils.py that marks, when imported, that it ran)."""
    (folder / "tasks").mkdir(parents=True)
    (folder / "tasks" / "evil.yaml").write_text(task)
    if utils is not None:
        (folder / "tasks" / "utils.py").write_text(utils)
    (folder / "suite.yaml").write_text("name: evil\ninclude_path: [tasks]\nlanguage: [{task: evil_task}]\n")
    return folder / "suite.yaml"


def ran(suite: Path) -> bool:
    return (suite.parent / "tasks" / "RAN").exists()


@pytest.mark.parametrize("command", ["eval", "sweep", "precompute", "explore"])
def test_a_suite_with_python_hooks_is_refused_and_runs_nothing(tmp_path, command):
    """Every command that takes --suite refuses a task YAML with '!function utils.x' (lm-eval / lmms-eval import
    utils.py from the task folder and run it as the user), naming the file and line, before any model loads."""
    suite = evil_suite(tmp_path / "s")
    base, tuned = ORGANISM / "base", ORGANISM / "tuned"
    args = {"eval": ["eval", tuned, "--suite", suite, "--limit", "1"],
            "sweep": ["sweep", "--base", base, "--tuned", tuned, "--suite", suite, "--out", tmp_path / "sw"],
            "precompute": ["precompute", "--base", base, "--tuned", tuned, "--suite", suite, "--out", tmp_path / "r"],
            "explore": ["explore", "--base", base, "--tuned", tuned, "--suite", suite, "--port", "1"]}[command]
    proc, _ = lfm_run(*args)
    one_line(proc, f"{suite.parent / 'tasks' / 'evil.yaml'}:3", "'!function utils.docs'",
             str(suite.parent / "tasks" / "utils.py"), "--trust-suite-code")
    assert not ran(suite) and not (tmp_path / "sw").exists() and not (tmp_path / "r").exists()


@pytest.mark.parametrize("case", ["python tag", "include", "shadowed lfm hook", "unknown lfm hook"])
def test_other_ways_a_task_file_names_code_are_refused(tmp_path, case):
    marker = tmp_path / "RAN"
    task = {"python tag": EVIL_TASK.replace("!function utils.docs",
                                            f'!!python/object/apply:os.system ["touch {marker}"]'),
            "include": "include: ../elsewhere/base.yaml\ntask: evil_task\n",
            "shadowed lfm hook": EVIL_TASK.replace("utils.docs", "lfm.organism.task_hooks.language_docs"),
            "unknown lfm hook": EVIL_TASK.replace("utils.docs", "lfm.organism.task_hooks.ITEMS_DIR")}[case]
    suite = evil_suite(tmp_path / "s", task, utils=None)
    if case == "include":  # the hook sits in a YAML another folder holds, pulled in by `include:`
        (tmp_path / "s" / "elsewhere").mkdir()
        (tmp_path / "s" / "elsewhere" / "base.yaml").write_text(EVIL_TASK)
        (tmp_path / "s" / "elsewhere" / "utils.py").write_text(EVIL_UTILS)
    if case == "shadowed lfm hook":  # lm-eval would import this file, not lfm's module
        (tmp_path / "s" / "tasks" / "lfm" / "organism").mkdir(parents=True)
        (tmp_path / "s" / "tasks" / "lfm" / "organism" / "task_hooks.py").write_text(EVIL_UTILS)
    where, needle = {"python tag": ("tasks/evil.yaml:3", "python/object/apply"),
                     "include": ("elsewhere/base.yaml:3", "utils.py from the suite's folder"),
                     "shadowed lfm hook": ("tasks/evil.yaml:3", "instead of lfm's own lfm.organism.task_hooks"),
                     "unknown lfm hook": ("tasks/evil.yaml:3", "has no task hook 'ITEMS_DIR'")}[case]
    proc, _ = lfm_run("eval", ORGANISM / "tuned", "--suite", suite, "--limit", "1")
    one_line(proc, where, needle)
    assert not marker.exists() and not list(tmp_path.rglob("RAN"))


def test_trust_suite_code_runs_the_suites_code_and_a_syntax_error_is_one_line(tmp_path):
    """--trust-suite-code is the opt-in: the suite's utils.py is imported (and its hook runs, here failing in
    one line); a suite whose utils.py does not parse is one line naming file and line, not a traceback."""
    suite = evil_suite(tmp_path / "s")
    proc, _ = lfm_run("eval", ORGANISM / "tuned", "--suite", suite, "--limit", "1", "--trust-suite-code")
    one_line(proc, "the hook ran")
    assert ran(suite)
    broken = evil_suite(tmp_path / "b", utils="def docs(:\n")
    proc, _ = lfm_run("eval", ORGANISM / "tuned", "--suite", broken, "--limit", "1", "--trust-suite-code")
    one_line(proc, f"{broken.parent / 'tasks' / 'utils.py'}:1", "SyntaxError")


def test_the_shipped_suites_need_no_trust(smoke_pair):
    """The organism's and the real pair's task folders hold no Python; their hooks are lfm's own modules, and
    both load with the check on (they also run end to end: tests/test_evaluate.py, tests/test_realpair.py)."""
    from lfm.evaluate.suites import get_suite

    root, built = smoke_pair
    for suite in (get_suite("organism"), get_suite(built["suite"]), get_suite(built["prose"])):
        assert not suite.trusted_code and suite.lm_eval_include
        for folder in suite.lm_eval_include + suite.lmms_eval_include:
            assert not list(Path(folder).rglob("*.py")), folder


def test_the_explorer_page_never_runs_a_suites_code(tmp_path):
    """The page's 'evaluation suite' box loads the suite with the check on: refused, said on the page."""
    from lfm.explorer.app import ExplorerApp, extension
    from lfm.explorer.state import ExplorerState

    extension()
    suite = evil_suite(tmp_path / "s")
    state = ExplorerState(background=False, auto_sweep=False, source_kind="pair", base_path=str(ORGANISM / "base"),
                          tuned_path=str(ORGANISM / "tuned"), suite_path=str(suite))
    ExplorerApp(state).__panel__()
    assert "--trust-suite-code" in state.error and "evil.yaml:3" in state.error
    assert not ran(suite)


# ----------------------------------------------------------------------------------------- non-weight files

def test_a_non_weight_file_linking_outside_the_model_is_refused(zoo, tmp_path):
    """special_tokens_map.json -> /etc/passwd: before, lfm merge wrote /etc/passwd into the merged model."""
    tuned = copy_dir(zoo.llava, tmp_path / "tuned")
    (tuned / "special_tokens_map.json").symlink_to("/etc/passwd")
    out = tmp_path / "out"
    refused(cli(*merge_args(zoo.base, tuned, out)), out, f"{tuned / 'special_tokens_map.json'}", "/etc/passwd",
            "outside the model directory")


@pytest.mark.parametrize("case", ["fifo", "too big", "dangling link"])
def test_a_non_weight_file_that_is_not_a_bounded_regular_file_is_refused(zoo, tmp_path, case):
    tuned = copy_dir(zoo.llava, tmp_path / "tuned")
    item = tuned / "tokenizer.json"
    if case == "fifo":
        os.mkfifo(item)
    elif case == "too big":
        with open(item, "wb") as f:
            f.truncate(64 * 2**20 + 1)  # sparse: 64 MiB + 1 byte, nothing on disk
    else:
        item.symlink_to(tuned / "gone.json")
    out = tmp_path / "out"
    needle = {"fifo": "not a regular file", "too big": "67,108,865 bytes", "dangling link": "cannot be read"}[case]
    refused(cli(*merge_args(zoo.base, tuned, out)), out, str(item), needle)


def test_a_hub_snapshots_links_into_its_blobs_are_its_own_files(zoo, tmp_path):
    """models--org--name/snapshots/REV/* link into ../../blobs/: shards and tokenizer files alike are accepted."""
    repo = tmp_path / "models--org--tuned"
    blobs, snap = repo / "blobs", repo / "snapshots" / "abc123"
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in zoo.llava.iterdir():
        (blobs / f"sha-{f.name}").write_bytes(f.read_bytes())
        (snap / f.name).symlink_to(Path("../../blobs") / f"sha-{f.name}")
    (blobs / "sha-special").write_text('{"pad_token": "<pad>"}')
    (snap / "special_tokens_map.json").symlink_to("../../blobs/sha-special")
    out = tmp_path / "out"
    done = cli(*merge_args(zoo.base, snap, out))
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "special_tokens_map.json").read_text() == '{"pad_token": "<pad>"}'
    assert not (out / "special_tokens_map.json").is_symlink()


# ----------------------------------------------------------------------------------------- images

def test_an_image_bomb_in_compare_is_one_line_before_any_model_loads(tmp_path):
    """A 12000 x 12000 PNG of ~140 KB (144 Mpx): before, lfm compare decoded it (2.8 GB peak); above 179 Mpx it
    died in a DecompressionBombError traceback. Both are refused on the header, in one line naming the file."""
    for side in (12000, 14000):  # 144 Mpx: above lfm's bound; 196 Mpx: above Pillow's own
        bomb = zeros_png(tmp_path / f"bomb{side}.png", side, side)
        items = tmp_path / f"items{side}.jsonl"
        items.write_text(json.dumps({"id": "x", "question": "q?", "choices": ["a", "b"], "answer": "a",
                                     "image": bomb.name}) + "\n")
        out = tmp_path / f"cmp{side}"
        proc, peak = lfm_run("compare", "--base", ORGANISM / "base", "--tuned", ORGANISM / "tuned", "--items", items,
                             "--out", out, "--quiet")
        one_line(proc, str(bomb), "pixels", "40,000,000", "LFM_MAX_IMAGE_PIXELS")
        assert not out.exists() and peak < 600 * 2**20, peak


def test_the_pixel_bound_is_configurable(tmp_path, monkeypatch):
    from lfm.images import open_rgb

    small = zeros_png(tmp_path / "small.png", 40, 30)
    assert open_rgb(small).size == (40, 30)
    monkeypatch.setenv("LFM_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(ValueError, match=r"small.png: the image declares 40 x 30 = 1,200 pixels, more than lfm "
                                         r"decodes \(1,000\)"):
        open_rgb(small)
    monkeypatch.setenv("LFM_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ValueError, match="LFM_MAX_IMAGE_PIXELS='lots': expected a positive whole number"):
        open_rgb(small)


# ----------------------------------------------------------------------------------------- memory up front

def sparse_copy(src: Path, dst: Path, fields: dict, resize) -> Path:
    """A one-layer copy of model directory ``src`` (config ``fields`` set, layers past the first dropped) whose
    tensors are reshaped by ``resize(key, shape) -> shape`` (None: unchanged); reshaped tensors are holes of a
    sparse file, so they take no disk space."""
    from safetensors import safe_open

    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.name != "model.safetensors":
            shutil.copy(f, dst / f.name)
    config = json.loads((src / "config.json").read_text())
    (config["text_config"] if "text_config" in config else config).update(fields, num_hidden_layers=1)
    (dst / "config.json").write_text(json.dumps(config))
    header, blobs, offset = {}, [], 0
    with safe_open(str(src / "model.safetensors"), "pt") as f:
        for key in f.keys():
            if re.search(r"\.layers\.[1-9]", key) and "vision" not in key:
                continue
            t = f.get_tensor(key)
            shape = resize(key, list(t.shape))
            n = t.element_size() * (math.prod(shape) if shape else t.numel())
            header[key] = {"dtype": "F32", "shape": shape or list(t.shape), "data_offsets": [offset, offset + n]}
            blobs.append((offset, None if shape else t.contiguous().numpy().tobytes()))
            offset += n
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with open(dst / "model.safetensors", "wb") as out:
        out.write(struct.pack("<Q", len(head)) + head)
        for start, data in blobs:
            if data is not None:
                out.seek(8 + len(head) + start)
                out.write(data)
        out.truncate(8 + len(head) + offset)
    return dst


def sparse_pair_beyond_memory(tmp_path: Path, field: str, resize, needed) -> tuple[Path, Path, int]:
    """(base, tuned, rows): the organism as sparse one-layer copies whose ``field`` is ``rows``, starting from the
    issue's 16777216 and doubled until ``needed(pair)`` (lfm.memory's estimate) exceeds this machine's free memory."""
    from lfm.device import available_bytes
    from lfm.pair import open_pair

    rows = 2**24
    while True:
        root = tmp_path / f"rows{rows}"
        base = sparse_copy(ORGANISM / "base", root / "base", {field: rows}, lambda k, s: resize(k, s, rows))
        tuned = sparse_copy(ORGANISM / "tuned", root / "tuned", {field: rows}, lambda k, s: resize(k, s, rows))
        if needed(open_pair(base, tuned))[0] > available_bytes("cpu"):
            return base, tuned, rows
        shutil.rmtree(root)
        rows *= 2


def test_merge_checks_memory_before_reading_a_tensor(tmp_path):
    """Sparse shards (2 MB on disk) declaring a [16777216, 96] float32 embedding and head: before, lfm merge
    mapped and merged them, growing past 2.5 GB in seconds with no word; now one line, bytes needed vs available,
    the tensor named, nothing read (peak RSS stays small) and nothing written."""
    from lfm.memory import merge_bytes
    from lfm.methods import Recipe

    def big(key, shape, rows):
        return [rows, 96] if key.endswith(("embed_tokens.weight", "lm_head.weight")) else None

    base, tuned, rows = sparse_pair_beyond_memory(
        tmp_path, "vocab_size", big, lambda pair: merge_bytes(pair, Recipe(method="ties"), "cpu"))
    assert sum(f.stat().st_blocks * 512 for f in (base / "model.safetensors", tuned / "model.safetensors")) < 8e6
    out = tmp_path / "out"
    started = time.time()
    proc, peak = lfm_run(*merge_args(base, tuned, out))
    one_line(proc, "lfm merge: error: merging", f"[{rows}, 96] float32", "GiB is available", "free memory")
    assert re.search(r"embed_tokens\.weight|lm_head\.weight", proc.stderr)
    assert peak < 1.5e9 and time.time() - started < 60 and not out.exists() and not leftovers(out)


def test_score_checks_memory_before_reading_a_tensor(tmp_path):
    """The same for lfm score, whose largest tensor is a linear weight: an MLP declared [rows, 96] / [96, rows]."""
    from lfm.memory import score_bytes

    def big(key, shape, rows):
        if key.endswith(("gate_proj.weight", "up_proj.weight")):
            return [rows, 96]
        return [96, rows] if key.endswith("down_proj.weight") else None

    base, tuned, rows = sparse_pair_beyond_memory(tmp_path, "intermediate_size", big, score_bytes)
    out = tmp_path / "scores.safetensors"
    proc, peak = lfm_run("score", "--base", base, "--tuned", tuned, "--out", out, "--quiet")
    one_line(proc, "lfm score: error: scoring", "_proj.weight'", f"{rows}", "GiB is available")
    assert peak < 1.5e9 and not out.exists() and not list(tmp_path.glob(".scores*"))


def test_the_merge_estimate_bounds_the_measured_peak(tmp_path):
    """lfm.memory's work per tensor, measured again: for each method, merging one 4.2M-entry tensor (a linear
    weight and an embedding, float32 and bfloat16) raises the peak RSS by less than lfm.memory.work_bytes. glibc
    maps every big block and returns it when freed (a fixed mmap threshold), so each merge's peak is its own."""
    script = tmp_path / "peak.py"
    script.write_text(textwrap.dedent("""
        import ctypes, torch
        from lfm.memory import work_bytes
        from lfm.methods import Recipe, merge_tensor

        ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD, fixed

        def hwm():
            return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM"))

        n = 2048  # 4.2M entries: merged block by block where a method does (lfm.methods.BLOCKED_FROM = 1M)
        torch.manual_seed(0)
        for dtype in (torch.float32, torch.bfloat16):
            base = torch.randn(n, n).to(dtype)
            tuned = (base.float() + 0.01 * torch.randn(n, n)).to(dtype)
            for name in ("model.layers.0.mlp.up_proj.weight", "model.embed_tokens.weight"):
                for method in ("ties", "bread", "dare", "della", "neu-s-ties", "neu-p-bread", "neu-s-ta", "ta"):
                    recipe = Recipe.from_name(method)
                    open("/proc/self/clear_refs", "w").write("5")  # the peak restarts from here
                    start = hwm()
                    merged = merge_tensor(base, tuned, recipe, name=name)[0]
                    estimate = work_bytes(recipe, name, base.shape, dtype, dtype, "cpu")
                    print(method, dtype, name, hwm() - start, estimate)
                    del merged
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split() for line in proc.stdout.splitlines()]
    assert len(rows) == 32
    # the high-water mark is the whole process's: a thread pool's stacks and arenas, first touched during a merge
    # on a loaded machine, add up to a few hundred KiB that no tensor accounts for (seen once: +422 KiB on 'ta')
    process_noise = 1 << 20
    for row in rows:
        assert int(row[-2]) <= int(row[-1]) + process_noise, row


# ----------------------------------------------------------------------------------------- explorer: thumbnails, CSV

FORMULAS = ['=HYPERLINK("http://evil.example","click")', "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(1+1)",
            "\t=1", "\r=1"]


@pytest.fixture(scope="module")
def results_with_answers(zoo, tmp_path_factory):
    """A real results folder of the tiny pair (lfm precompute's writer) with a generations.csv whose items carry
    formula cells and images: a 1024 x 768 one and a 12000 x 12000 bomb."""
    from lfm.explorer.results import write_scores

    out = tmp_path_factory.mktemp("results") / "r"
    write_scores(zoo.base, zoo.llava, out, (0.2,), progress=False)
    (out / "images").mkdir()
    zeros_png(out / "images" / "big.png", 1024, 768)
    zeros_png(out / "images" / "bomb.png", 12000, 12000)
    rows = []
    for i, (question, image) in enumerate([(FORMULAS[0], "images/big.png"), (FORMULAS[1], "images/bomb.png")]):
        for stage, density, neurons in (("hard", None, None), ("suppress", 0.2, 0.0), ("restore", 0.2, 0.3)):
            rows.append({"stage": stage, "density": density, "neurons": neurons, "id": f"item{i}", "task": "t",
                         "question": question, "choices": json.dumps(FORMULAS[2:4]), "answer": FORMULAS[2],
                         "image": image, "generated": FORMULAS[4 + i], "category": "correct"})
    pd.DataFrame(rows).to_csv(out / "generations.csv", index=False, lineterminator="\r\n")  # "\r" cells quoted
    return out


def test_explorer_thumbnails_are_small_built_once_and_a_bomb_is_not_decoded(results_with_answers):
    from lfm.explorer import compute
    from lfm.images import _thumbnail

    app = results_app(results_with_answers)
    table = app.state.generations.set_index("id")
    uri = re.search(r'src="data:image/png;base64,([^"]+)"', table.loc["item0", "image"]).group(1)
    assert Image.open(io.BytesIO(base64.b64decode(uri))).size == (48, 36)  # 1024 x 768 shrunk to fit 48 px
    assert "image not shown" in table.loc["item1", "image"] and "12000 x 12000" in table.loc["item1", "image"]
    before = _thumbnail.cache_info().hits
    again = compute.thumbnail(str(results_with_answers / "images" / "big.png"))
    assert again == table.loc["item0", "image"] and _thumbnail.cache_info().hits == before + 1
    detail = compute.thumbnail(str(results_with_answers / "images" / "big.png"), size=192)
    uri = re.search(r'base64,([^"]+)"', detail).group(1)
    assert max(Image.open(io.BytesIO(base64.b64decode(uri))).size) == 192


def test_explorer_generations_csv_neutralises_formula_cells(results_with_answers):
    """Read back with Python's csv module: every text cell that started like a formula starts with "'" now."""
    app = results_app(results_with_answers)
    rows = list(csv.DictReader(io.StringIO(app.export.generations_csv().read())))
    assert len(rows) == 2
    cells = [v for row in rows for v in row.values()]
    for formula in FORMULAS:
        assert "'" + formula in cells or any(c.startswith("'") and formula in c for c in cells), formula
    assert not [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")], cells


def results_app(folder):
    from lfm.explorer.app import ExplorerApp, extension
    from lfm.explorer.state import ExplorerState

    extension()
    app = ExplorerApp(ExplorerState(background=False, auto_sweep=False, source_kind="results",
                                    results_path=str(folder)))
    app.__panel__()
    assert app.state.error == "", app.state.error
    assert app.state.generations is not None
    return app


def test_compare_items_csv_neutralises_formula_cells(tmp_path):
    """lfm compare's items.csv, read back with Python's csv module: the questions, choices and answer cells that
    started like a formula start with "'"; the numbers and plain words are as they were."""
    from lfm.organism import scienceqa_records

    records = scienceqa_records()[:2]
    lines = []
    for r, question in zip(records, FORMULAS):
        choices = ["=" + c if i == 0 else c for i, c in enumerate(r["choices"])]
        answer = choices[r["choices"].index(r["answer"])]
        lines.append(json.dumps({"id": "@" + r["id"], "question": question, "choices": choices, "answer": answer,
                                 "image": r["image"]}))
    items = tmp_path / "items.jsonl"
    items.write_text("\n".join(lines) + "\n")
    out = tmp_path / "cmp"
    proc, _ = lfm_run("compare", "--base", ORGANISM / "base", "--tuned", ORGANISM / "tuned", "--items", items,
                      "--out", out, "--quiet", "--max-new-tokens", "4")
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(out / "items.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == ["'@" + r["id"] for r in records]
    assert [r["question"] for r in rows] == ["'" + q for q in FORMULAS[:2]]
    assert all(r["choices"].startswith("'=") for r in rows)
    assert not [v for r in rows for v in r.values() if v[:1] in ("=", "+", "-", "@", "\t", "\r")]


# ----------------------------------------------------------------------------------------- tracebacks become one line

@pytest.mark.parametrize("case", ["cut inside the header", "2**60 tensors", "2**60 metadata entries",
                                  "a 2**60-byte key", "cut inside the tensor data"])
def test_a_broken_gguf_is_one_line_and_leaves_no_tmp(tiny_gguf, tmp_path, case):
    """Before: a struct.error traceback, or a UnicodeDecodeError line from reading past a huge length, and an
    empty base.tmp/ left behind."""
    pytest.importorskip("gguf")
    data = tiny_gguf[0].read_bytes()
    broken = {"cut inside the header": data[:60],
              "2**60 tensors": data[:8] + struct.pack("<Q", 2**60) + data[16:],
              "2**60 metadata entries": data[:16] + struct.pack("<Q", 2**60) + data[24:],
              "a 2**60-byte key": data[:24] + struct.pack("<Q", 2**60) + data[32:],
              "cut inside the tensor data": data[: len(data) * 9 // 10]}[case]
    gguf = tmp_path / "broken.gguf"
    gguf.write_bytes(broken)
    out = tmp_path / "rp"
    proc, _ = lfm_run("realpair", "build", "--gguf", gguf, "--out", out, "--preset", "smoke")
    needle = {"cut inside the header": "the tensor count is 20, but 44 bytes are left",
              "2**60 tensors": "the tensor count is 1,152,921,504,606,846,976",
              "2**60 metadata entries": "the metadata count is 1,152,921,504,606,846,976",
              "a 2**60-byte key": "the length of metadata key 0 is 1,152,921,504,606,846,976",
              "cut inside the tensor data": "transformers cannot read this GGUF"}[case]
    one_line(proc, str(gguf), needle)
    assert not list(tmp_path.rglob("*.tmp")) and not (out / "base").exists()


@pytest.mark.parametrize("command", ["score", "precompute"])
def test_a_file_size_limit_while_writing_scores_is_one_line(tmp_path, command):
    """safetensors' own writer reported a full disk as a SafetensorError traceback. A file size limit (ulimit -f,
    SIGXFSZ ignored as a shell's job control does) makes the kernel refuse the write with EFBIG, as a full disk
    refuses it with ENOSPC: one line naming the file, nothing left (the disk-full case: the next test, as root)."""
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (16384, 16384))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    out = tmp_path / ("scores.safetensors" if command == "score" else "r")
    extra = ["--no-eval"] if command == "precompute" else []
    proc, _ = lfm_run(command, "--base", ORGANISM / "base", "--tuned", ORGANISM / "tuned", "--out", out, "--quiet",
                      *extra, preexec=limit)
    one_line(proc, "scores.safetensors.lfm-tmp-", "File too large (errno EFBIG)", "ulimit -f")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("command", ["score", "precompute"])
def test_a_full_disk_while_writing_scores_is_one_line(tmp_path, command, tmpfs):
    disk = tmpfs("size=8k")
    out = disk / ("s.safetensors" if command == "score" else "r")
    extra = ["--no-eval"] if command == "precompute" else []
    proc, _ = lfm_run(command, "--base", ORGANISM / "base", "--tuned", ORGANISM / "tuned", "--out", out, "--quiet",
                      *extra)
    one_line(proc, str(disk), "No space left on device (errno ENOSPC)", "free space")
    assert os.listdir(disk) == []


@pytest.mark.parametrize("value", ["99999999999999999999999", "9" * 5000, "-1", "1.5"])
def test_a_seed_out_of_range_is_refused_while_the_command_line_is_read(zoo, tmp_path, value):
    """Before: --seed 99999999999999999999999 failed late, after torch was loaded, and a 5000-digit value hit
    Python's int-conversion limit. Every numeric recipe option is now read by one argparse type (lfm.cli.number_option)
    with the settings table's rule (lfm.methods.recipe.setting_value), the rule a recipe file meets too."""
    out = tmp_path / "out"
    proc, peak = lfm_run(*merge_args(zoo.base, zoo.llava, out, "--method", "dare", "--seed", value))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "lfm merge: error: argument --seed: seed must be an integer from 0 to 9223372036854775807 (2**63-1), got ")
    assert not out.exists() and peak < 200 * 2**20  # refused while parsing: torch was never loaded
    config = tmp_path / "recipe.yaml"
    config.write_text(f"method: dare\nseed: {value}\n")
    refused(cli(*merge_args(zoo.base, zoo.llava, out, "--config", config)), out,
            *((f"--config {config}", "4300 digits") if len(value) > 4300 else ("seed must be an integer",)))
    proc, _ = lfm_run("sweep", "--base", zoo.base, "--tuned", zoo.llava, "--seed", value, "--out", tmp_path / "sw")
    assert proc.returncode == 2 and "argument --seed: seed must be an integer" in proc.stderr
