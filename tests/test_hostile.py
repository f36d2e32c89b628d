"""Hostile inputs and faults, run as a user would (`python -m lfm.cli merge` subprocesses): each case of
the catalogue in hostile_probe.py (docs/hostile.md) ends in exit 2 with one stderr line that names the
file or tensor, and nothing is written beside --out. Signals and full / read-only disks too."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fixtures import build_base, build_tuned, read_state
from hostile_probe import ENV, VISION_KEY, build_cases, leftovers, merge_args


def cli(*args):
    return subprocess.run([sys.executable, "-m", "lfm.cli", *map(str, args)], capture_output=True, text=True,
                          env=ENV, timeout=300)


def refused(proc, out: Path, *needles) -> str:
    """Exit 2, exactly one stderr line holding every needle, no traceback, nothing at or beside `out`."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, f"rc={proc.returncode}\n{proc.stderr[-3000:]}"
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for n in needles:
        assert str(n) in lines[0], f"{n!r} not in {lines[0]!r}"
    assert not out.exists() and not leftovers(out), (out.exists(), leftovers(out))
    return lines[0]


# case id (as in hostile_probe.build_cases) -> what its one line must name
NEEDLES = {
    "2a": ("weights.bin", "must be a .safetensors file", "pickle"),
    "2b": ("../outside.safetensors", "must name a file inside"),
    "2c": ("abs_2c.safetensors", "must name a file inside"),
    "5a": ("stored twice", "model-00001-of-", "model-00002-of-"),
    "5b": ("does not list", "model.safetensors.index.json"),
    "6": ("hidden_size is 128", "config.json", "is 96 x 32"),
    "7a": ("language_model.model.norm.weight", "float16", "Inf"),
    "7b": (VISION_KEY, "NaN/Inf"),
    "7c": ("model.norm.weight", "int64", "floating-point"),
    "9c": ("config.json", "expected a JSON object"),
    "9d": ("config.json", "'text_config' must be an object"),
    "9e": ("model.safetensors.index.json", "weight_map"),
    "9f": ("model.safetensors.index.json", "not a file name"),
    "9g": ("model.safetensors", "language_model.model.norm.weight", "F8_E4M3"),
    "9h": ("model.safetensors", "language_model.model.norm.weight", "bool"),
}


@pytest.fixture(scope="module")
def cases(zoo, tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    (root / "out").mkdir()
    return {name.split(":")[0]: (args, out) for name, args, out in build_cases(zoo, root)}


@pytest.mark.parametrize("case", sorted(NEEDLES))
def test_catalogue_case_is_refused_in_one_line(cases, case):
    args, out = cases[case]
    refused(cli(*args), out, *NEEDLES[case])


def test_index_never_loads_pickle_even_with_allow_pickle(cases):
    """--allow-pickle is for pytorch_model.bin checkpoints; a safetensors index names safetensors only."""
    args, out = cases["2a"]
    refused(cli(*args, "--allow-pickle"), out, "weights.bin", "must be a .safetensors file")


def test_integer_passthrough_tensor_is_copied_unchanged(zoo, tmp_path):
    """Integer tensors outside the language model (buffers of a vision tower) are copied as they are."""
    from fixtures import copy_dir, rewrite_single

    tuned = rewrite_single(copy_dir(zoo.llava, tmp_path / "tuned"),
                           lambda sd: sd.__setitem__("vision_tower.position_ids", torch.arange(5)[None]))
    out = tmp_path / "out"
    done = cli(*merge_args(zoo.base, tuned, out))
    assert done.returncode == 0, done.stderr[-2000:]
    got = read_state(out)["vision_tower.position_ids"]
    assert got.dtype == torch.int64 and torch.equal(got, torch.arange(5)[None])


# ----------------------------------------------------------------------------------------- faults

@pytest.fixture(scope="module")
def slow_pair(tmp_path_factory):
    """A pair big enough (~60M parameters) that a merge takes a few seconds: time to signal it."""
    root = tmp_path_factory.mktemp("slow")
    base = build_base(root / "base", seed=0, hidden_size=768, intermediate_size=2048, num_hidden_layers=8)
    return base, build_tuned(root / "tuned", base, kind="llm", seed=5)


def start_and_wait_for_scratch(args, out: Path) -> subprocess.Popen:
    # as from a terminal: SIGINT at its default, even when this test runs under a shell that started it in the
    # background (such shells make their children ignore SIGINT, and Python then keeps ignoring it)
    proc = subprocess.Popen([sys.executable, "-m", "lfm.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not leftovers(out):
        assert proc.poll() is None, f"the merge ended before it could be signalled: {proc.stderr.read()}"
        assert time.time() < deadline
        time.sleep(0.01)
    return proc


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_merge_says_interrupted_and_leaves_nothing(slow_pair, tmp_path, sig):
    out = tmp_path / "out"
    proc = start_and_wait_for_scratch(merge_args(*slow_pair, out), out)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert err.strip() == f"lfm merge: interrupted ({sig.name}), nothing written"
    assert not out.exists() and not leftovers(out)


def test_next_run_removes_what_a_killed_run_left(slow_pair, tmp_path):
    out = tmp_path / "out"
    proc = start_and_wait_for_scratch(merge_args(*slow_pair, out), out)
    proc.kill()
    proc.wait(timeout=60)
    left = leftovers(out)
    assert left == [f".out.lfm-tmp-{proc.pid}"]
    done = cli(*merge_args(*slow_pair, out))
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"removed {tmp_path / left[0]}, left by an lfm run (process {proc.pid})" in done.stdout
    assert leftovers(out) == [] and (out / "model.safetensors").is_file()


def test_scratch_of_a_live_run_is_left_alone(zoo, tmp_path):
    out = tmp_path / "out"
    live = tmp_path / f".out.lfm-tmp-{os.getppid()}"  # pytest's parent: alive for the whole test
    live.mkdir()
    done = cli(*merge_args(zoo.base, zoo.llava, out))
    assert done.returncode == 0 and live.is_dir() and "removed" not in done.stdout


def test_force_over_a_file_leaves_nothing_beside_it(zoo, tmp_path):
    out = tmp_path / "a_file"
    out.write_text("x")
    done = cli(*merge_args(zoo.base, zoo.llava, out, "--force"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "model.safetensors").is_file() and leftovers(out) == []


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a small tmpfs with the given options (root only; skipped where mounting is not allowed)."""
    mounted = []

    def mount(options: str) -> Path:
        point = tmp_path / f"mnt{len(mounted)}"
        point.mkdir()
        if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
                                               capture_output=True).returncode:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], check=True)


def test_disk_full_is_one_line_and_cleans_up(zoo, tmpfs):
    disk = tmpfs("size=64k")
    out = disk / "out"
    line = refused(cli(*merge_args(zoo.base, zoo.llava, out)), out, "No space left on device", "ENOSPC",
                   "free space")
    assert str(disk) in line and os.listdir(disk) == []


def test_read_only_destination_is_one_line(zoo, tmpfs):
    disk = tmpfs("ro,size=64k")
    out = disk / "out"
    refused(cli(*merge_args(zoo.base, zoo.llava, out)), out, "Read-only file system", "EROFS", str(disk))


def test_config_list_and_index_list_refused_by_score_too(cases, tmp_path):
    """`lfm score` opens pairs through the same code: the same one-line refusals."""
    for case in ("9c", "9e"):
        args, _ = cases[case]
        base, tuned = args[args.index("--base") + 1], args[args.index("--tuned") + 1]
        out = tmp_path / f"{case}.safetensors"
        refused(cli("score", "--base", base, "--tuned", tuned, "--out", out, "--quiet"), out, *NEEDLES[case])


def test_shard_paths_inside_a_hub_snapshot_may_be_symlinks(zoo, tmp_path):
    """Hub cache snapshots hold symlinks into a blob store outside the snapshot: they are accepted."""
    from lfm.checkpoint import Checkpoint

    blobs, snap = tmp_path / "blobs", tmp_path / "snapshots" / "abc"
    blobs.mkdir()
    snap.mkdir(parents=True)
    for f in zoo.base_sharded.iterdir():
        (blobs / f.name).write_bytes(f.read_bytes())
        (snap / f.name).symlink_to(blobs / f.name)
    ckpt = Checkpoint(snap)
    assert set(ckpt.keys()) == set(json.loads((snap / "model.safetensors.index.json").read_text())["weight_map"])
