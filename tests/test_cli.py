"""`lfm score` and `lfm merge` as a user runs them: real subprocesses (python -m lfm.cli, and the `lfm`
entry point), checked against the Python API and the fixtures' tensors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import lfm
from fixtures import load_json, read_state, tree_bytes

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
ENTRY = Path(sys.executable).parent / "lfm"


def cli(*args, entry=False):
    cmd = [str(ENTRY)] if entry else [sys.executable, "-m", "lfm.cli"]
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, env=ENV, timeout=300)


def ok(proc):
    assert proc.returncode == 0, f"rc={proc.returncode}\nstdout:{proc.stdout[-2000:]}\nstderr:{proc.stderr[-3000:]}"
    return proc


def fails(proc, *needles):
    assert proc.returncode != 0, proc.stdout[-1000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for n in needles:
        assert n in proc.stderr, f"{n!r} not in stderr:\n{proc.stderr[-2000:]}"
    return proc


def test_version_is_the_packages():
    """`lfm --version`: the installed distribution's version (tests/test_wheel.py checks an installed wheel's)."""
    assert ok(cli("--version")).stdout.strip() == f"lfm {lfm.__version__}"


def test_score_writes_scores_and_summary(zoo, tmp_path):
    out = tmp_path / "scores.safetensors"
    p = ok(cli("score", "--base", zoo.base, "--tuned", zoo.llava_wild, "--out", out, "--quiet", "--device", "cpu",
               entry=True))
    scores = load_file(str(out))
    assert len(scores) == 14
    base, tuned = read_state(zoo.base), read_state(zoo.llava_wild)
    for name, s in scores.items():
        d = (tuned["model.language_model." + name[len("model."):]].double() - base[name].double()).numpy()
        axis = 1 if (".o_proj." in name or ".down_proj." in name) else 0
        np.testing.assert_allclose(s.double().numpy(), np.abs(d).sum(axis=1 - axis), rtol=1e-5)
    assert "up_proj" in p.stdout and "top10" in p.stdout
    pj = ok(cli("score", "--base", zoo.base, "--tuned", zoo.llava, "--out", tmp_path / "s2.safetensors", "--json",
                "--quiet", "--device", "cpu"))
    rows = json.loads(pj.stdout[pj.stdout.index("["):])
    assert len(rows) == 14 and {"layer", "module", "max_over_median", "top1_share", "top10_share"} <= set(rows[0])


def test_merge_flags_equal_python_api(zoo, tmp_path):
    out = tmp_path / "cli"
    ok(cli("merge", "--base", zoo.base, "--tuned", zoo.llava, "--out", out, "--method", "neu-s-ties",
           "--density", "0.2", "--neurons", "0.3", "--alpha", "0.9", "--quiet", "--device", "cpu"))
    api = tmp_path / "api"
    lfm.merge(zoo.base, zoo.llava, api, "neu-s-ties", density=0.2, neurons=0.3, alpha=0.9, progress=False,
              log=lambda *a: None)
    a, b = tree_bytes(out), tree_bytes(api)
    a.pop("lfm_recipe.json"), b.pop("lfm_recipe.json")
    assert a == b
    rec = load_json(out / "lfm_recipe.json")
    assert rec["method"] == "neuron_fusion" and rec["recipe"]["restore"] == "rescale" and rec["recipe"]["alpha"] == 0.9


def test_merge_config_yaml_alias_and_flag_override(zoo, tmp_path):
    out = tmp_path / "out"
    cfg = tmp_path / "recipe.yaml"
    cfg.write_text(f"base: {zoo.base}\ntuned: {zoo.llava_next}\nout: {out}\nmethod: neu-p-bread\n"
                   f"density: 0.3\nneurons: 0.2\ngamma: 0.02\n")
    ok(cli("merge", "--config", cfg, "--density", "0.25", "--quiet", "--device", "cpu"))
    rec = load_json(out / "lfm_recipe.json")
    r = rec["recipe"]
    assert (rec["method"], r["suppress"], r["restore"]) == ("neuron_fusion", "breadcrumbs", "replace")
    assert (r["density"], r["neurons"], r["gamma"]) == (0.25, 0.2, 0.02)  # the flag wins over the file
    assert set(read_state(out)) == set(read_state(zoo.llava_next))


def test_merge_config_unknown_key_is_an_error(zoo, tmp_path):
    cfg = tmp_path / "recipe.yaml"
    cfg.write_text(f"base: {zoo.base}\ntuned: {zoo.llava}\nout: {tmp_path / 'o'}\nmethod: ties\ndensty: 0.3\n")
    fails(cli("merge", "--config", cfg, "--quiet"), "densty")
    assert not (tmp_path / "o").exists()


def test_merge_force_and_out_safety(zoo, tmp_path):
    from fixtures import copy_dir

    base, tuned = copy_dir(zoo.base, tmp_path / "b"), copy_dir(zoo.llava, tmp_path / "t")
    before = tree_bytes(tuned), tree_bytes(base)
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    common = ["--base", base, "--tuned", tuned, "--method", "ties", "--quiet", "--device", "cpu"]
    fails(cli("merge", *common, "--out", out), "--force")
    assert (out / "old.txt").exists()
    ok(cli("merge", *common, "--out", out, "--force"))
    assert not (out / "old.txt").exists() and (out / "model.safetensors").exists()
    fails(cli("merge", *common, "--out", tuned, "--force"), "input")
    fails(cli("merge", *common, "--out", tuned / "sub", "--force"), "input")
    assert (tree_bytes(tuned), tree_bytes(base)) == before


def test_merge_pickle_needs_allow_pickle(zoo, tmp_path):
    common = ["merge", "--base", zoo.base_pickle, "--tuned", zoo.llava, "--method", "ta", "--quiet", "--device", "cpu"]
    fails(cli(*common, "--out", tmp_path / "a"), "--allow-pickle")
    assert not (tmp_path / "a").exists()
    ok(cli(*common, "--out", tmp_path / "b", "--allow-pickle"))
    got, tuned = read_state(tmp_path / "b"), read_state(zoo.llava)
    assert set(got) == set(tuned)


@pytest.mark.parametrize("args,needle", [
    (["--method", "frobnicate"], "frobnicate"),
    (["--method", "ties", "--density", "1.5"], "density"),
    (["--method", "neu-s-ties", "--neurons", "-0.1"], "neurons"),
])
def test_merge_bad_recipe(zoo, tmp_path, args, needle):
    out = tmp_path / "out"
    fails(cli("merge", "--base", zoo.base, "--tuned", zoo.llava, "--out", out, "--quiet", *args), needle)
    assert not out.exists()


def test_merge_bad_input_names_tensor_without_traceback(zoo, tmp_path):
    out = tmp_path / "out"
    fails(cli("merge", "--base", zoo.base, "--tuned", zoo.nan_tuned, "--out", out, "--method", "ties", "--quiet",
              "--device", "cpu"), "model.layers.1.self_attn.v_proj.weight")
    assert not out.exists()
    fails(cli("merge", "--base", zoo.base_layers_mismatch, "--tuned", zoo.llava, "--out", out, "--quiet"),
          "num_hidden_layers")


HEAVY_MODULES = ("torch", "transformers", "pandas", "panel", "safetensors")


@pytest.mark.parametrize("args", [["--help"], ["merge", "--help"], ["eval", "--help"], ["precompute", "--help"]])
def test_help_does_not_import_heavy_modules(args):
    """`lfm --help` (and each command's) builds the whole parser, plugins included, from the torch-free registry alone:
    python -X importtime lists every module the process imported."""
    proc = ok(subprocess.run([sys.executable, "-X", "importtime", "-m", "lfm.cli", *args], capture_output=True,
                             text=True, env=ENV, timeout=120))
    assert "usage: lfm" in proc.stdout
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert {"lfm", "lfm.methods.registry", "lfm.organism", "lfm.explorer"} <= imported  # the listing is real
    assert not [m for m in imported if m.split(".")[0] in HEAVY_MODULES]


def test_import_lfm_is_lazy_and_public_names_resolve():
    code = ("import sys, lfm; before = 'torch' in sys.modules; import lfm.stream, lfm.score; "
            "names = [getattr(lfm, n) for n in lfm.__all__]; "
            "print(before, 'torch' in sys.modules, lfm.merge.__module__, lfm.ResidentPair.__module__, "
            "callable(lfm.merge))")
    proc = ok(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120))
    # lfm.merge is the function even after the submodule of that name was imported
    assert proc.stdout.split() == ["False", "True", "lfm.stream", "lfm.resident", "True"]
    proc = subprocess.run([sys.executable, "-c", "import lfm; lfm.no_such_name"], capture_output=True, text=True,
                          env=ENV, timeout=120)
    assert "AttributeError: module 'lfm' has no attribute 'no_such_name'" in proc.stderr


@pytest.mark.parametrize("preset, torch_first, expected", [(None, False, "PASSIVE"), ("ACTIVE", False, "ACTIVE"),
                                                           (None, True, None)])
def test_lfm_process_lets_idle_threads_sleep(preset, torch_first, expected):
    """The `lfm` process sets OMP_WAIT_POLICY=PASSIVE for torch's threads (which read it when torch loads); a
    user's own value wins, and once torch is loaded nothing is changed (it would no longer take effect)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if preset:
        env["OMP_WAIT_POLICY"] = preset
    code = ("import os" + ("; import torch" if torch_first else "") + "; from lfm.cli import let_idle_threads_sleep; "
            "let_idle_threads_sleep(); print(os.environ.get('OMP_WAIT_POLICY'))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(expected)
