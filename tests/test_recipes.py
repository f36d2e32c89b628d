"""Recipes as a user writes them (flags, YAML files, the explorer's export) through the real `lfm` command:
numbers read one way everywhere, settings that do nothing said (or refused under --strict), misspellings
answered with the closest name, every argument checked before a model is read, every option explained."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest
import yaml

from fixtures import read_state, tree_bytes

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}


def lfm(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "lfm.cli", *map(str, args)], capture_output=True, text=True,
                          env=ENV, timeout=300, cwd=cwd)


def ok(proc):
    assert proc.returncode == 0, f"rc={proc.returncode}\nstdout:{proc.stdout[-2000:]}\nstderr:{proc.stderr[-3000:]}"
    return proc


def refused(proc, *needles):
    """Exit 2, one line on stderr (no usage block, no traceback) holding every needle."""
    assert proc.returncode == 2, f"rc={proc.returncode}\nstdout:{proc.stdout[-1000:]}\nstderr:{proc.stderr[-2000:]}"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def warnings_of(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if ": warning: " in line]


# ---------------------------------------------------------------------------------------------- numbers

def test_yaml_numbers_as_number_string_or_percent_merge_as_the_flag(zoo, tmp_path):
    common = ["--base", zoo.base, "--tuned", zoo.llava, "--quiet", "--device", "cpu"]
    ok(lfm("merge", *common, "--method", "ties", "-K", "0.2", "--out", tmp_path / "flag"))
    want = tree_bytes(tmp_path / "flag")
    for i, text in enumerate(("0.2", '"0.2"', "20%", '"20 %"')):
        config = tmp_path / f"r{i}.yaml"
        config.write_text(f"method: ties\ndensity: {text}\n")
        ok(lfm("merge", "--config", config, *common, "--out", tmp_path / f"yaml{i}"))
        assert tree_bytes(tmp_path / f"yaml{i}") == want, text  # lfm_recipe.json included: density 0.2
    ok(lfm("merge", *common, "--method", "ties", "-K", "20%", "--out", tmp_path / "percent-flag"))
    assert tree_bytes(tmp_path / "percent-flag") == want


@pytest.mark.parametrize("line, needles", [
    ("density: abc", ["density K must be a number", "'abc'"]),
    ("density: 120%", ["density K must be in (0, 1]", "1.2"]),
    ("density: [0.2]", ["density K must be a number"]),
    ("seed: 7%", ["seed must be an integer", "'7%'"]),
    ("neurons: .nan", ["neurons M must be in [0, 1]"]),
    ("densty: 0.3", ["unknown recipe keys ['densty']", "did you mean 'density'?"]),
    ("method: tis", ["unknown method 'tis'", "did you mean 'ties'?"]),
])
def test_yaml_bad_value_is_one_line_naming_field_and_file(tmp_path, line, needles):
    config = tmp_path / "recipe.yaml"
    config.write_text(f"base: /nonexistent/base\ntuned: /nonexistent/tuned\nout: {tmp_path / 'out'}\n{line}\n")
    refused(lfm("merge", "--config", config), f"--config {config}:", *needles)
    assert not (tmp_path / "out").exists()


def test_sweep_grids_read_numbers_as_flags_do():
    from lfm.evaluate.sweep import parse_values

    assert parse_values("10%,20%") == parse_values("0.1,0.2") == [0.1, 0.2]
    assert parse_values("5%:20%:5%") == parse_values("0.05:0.2:0.05") == [0.05, 0.1, 0.15, 0.2]
    for bad in ("nan", "0.1,high", "²"):
        with pytest.raises(ValueError, match="cannot read"):
            parse_values(bad)


# ---------------------------------------------------------------------------------------------- no-ops

def test_setting_that_does_nothing_is_warned_not_recorded_and_refused_when_strict(zoo, tmp_path):
    common = ["--base", zoo.base, "--tuned", zoo.llava, "--method", "ties", "--quiet", "--device", "cpu"]
    plain = ok(lfm("merge", *common, "--out", tmp_path / "plain"))
    assert warnings_of(plain) == []
    idle = ok(lfm("merge", *common, "-M", "0.5", "--locate", "random", "--out", tmp_path / "idle"))
    assert warnings_of(idle) == ["lfm merge: warning: neurons, locate do nothing for TIES K=0.2 (not recorded in "
                                 "its recipe); drop them or pick a method that uses them"]
    # the same merge, and the same record: lfm_recipe.json does not claim M=0.5 or locate=random
    assert tree_bytes(tmp_path / "idle") == tree_bytes(tmp_path / "plain")
    assert json.loads((tmp_path / "idle" / "lfm_recipe.json").read_text())["recipe"]["neurons"] == 0.3
    refused(lfm("merge", *common, "-M", "0.5", "--strict", "--out", tmp_path / "strict"),
            "neurons does nothing for TIES K=0.2", "--strict")
    assert not (tmp_path / "strict").exists()
    # a YAML key is a setting given as much as a flag is
    config = tmp_path / "r.yaml"
    config.write_text("method: ties\nneurons: 0.5\n")
    assert len(warnings_of(ok(lfm("merge", "--config", config, *common, "--out", tmp_path / "yaml")))) == 1


def test_task_arithmetic_at_alpha_one_is_an_exact_copy_and_says_so(zoo, tmp_path):
    common = ["--base", zoo.base, "--tuned", zoo.llava, "--method", "ta", "--quiet", "--device", "cpu"]
    proc = ok(lfm("merge", *common, "--out", tmp_path / "copy"))
    assert warnings_of(proc) == ["lfm merge: warning: TaskA a=1 is an exact copy of the tuned model (alpha=1 adds "
                                 "the whole delta back); set alpha below 1, e.g. 0.5"]
    merged, tuned = read_state(tmp_path / "copy"), read_state(zoo.llava)  # what the warning claims, checked
    assert merged.keys() == tuned.keys() and all((merged[k] == tuned[k]).all() for k in tuned)
    refused(lfm("merge", *common, "--strict", "--out", tmp_path / "strict"), "exact copy of the tuned model")
    assert not (tmp_path / "strict").exists()
    assert warnings_of(ok(lfm("merge", *common, "--alpha", "0.5", "--out", tmp_path / "half"))) == []


# ---------------------------------------------------------------------------------------------- did you mean

@pytest.mark.parametrize("args, needles", [
    (["merge", "--method", "tis"], ["unknown method 'tis'", "did you mean 'ties'?"]),
    (["merge", "--method", "neu-s-tie"], ["did you mean 'neu-s-ties'?"]),
    (["merge", "--densty", "0.3"], ["unrecognized arguments: --densty 0.3", "did you mean --density?"]),
    (["merge", "--restore", "rescal"], ["invalid choice: 'rescal'", "did you mean 'rescale'?"]),
    (["compare", "--supress", "ties", "--out", "x"], ["did you mean --suppress?"]),
    (["merg"], ["invalid choice: 'merg'", "did you mean 'merge'?"]),
])
def test_misspelling_gets_the_closest_name_in_one_line(tmp_path, args, needles):
    refused(lfm(*args, cwd=tmp_path), *needles)


# ---------------------------------------------------------------------------------------------- checked first

MISSING = "/nonexistent/lfm-model"


@pytest.mark.parametrize("args, needle", [
    (["merge", "--base", MISSING, "--tuned", MISSING, "--out", "o", "-K", "1.5"], "density K must be in (0, 1]"),
    (["merge", "--base", MISSING, "--tuned", MISSING, "--out", "o", "--shard-size", "5XB"], "--shard-size"),
    (["merge", "--base", MISSING, "--tuned", MISSING, "--out", "o", "--method", "ta", "--strict"], "exact copy"),
    (["compare", "--base", MISSING, "--tuned", MISSING, "--out", "o", "-K", "1.5"], "density K must be in (0, 1]"),
    (["compare", "--base", MISSING, "--tuned", MISSING, "--out", "o", "-M", "0"], "the restore stage needs M > 0"),
    (["compare", "--base", MISSING, "--tuned", MISSING, "--out", "o", "--limit", "0"], "--limit"),
    (["compare", "--base", MISSING, "--tuned", MISSING, "--out", "o", "--suppress", "task_arithmetic", "-K", "0.5",
      "--alpha", "0.5", "--strict"], "density does nothing for Neu-S-TaskA a=0.5 M=0.3"),
    (["sweep", "--base", MISSING, "--tuned", MISSING, "--out", "o", "-K", "0.1,1.5"], "density K must be in (0, 1]"),
    (["sweep", "--base", MISSING, "--tuned", MISSING, "--out", "o", "--method", "ties", "--gamma", "0.1",
      "--strict"], "gamma does nothing for TIES"),
    (["sweep", "--base", MISSING, "--tuned", MISSING, "--out", "o", "--limit", "-1"], "--limit"),
    (["eval", MISSING, "--limit", "0"], "--limit"),
    (["precompute", "--base", MISSING, "--tuned", MISSING, "--out", "o", "--densities", "0.2,1.5"],
     "density K must be in (0, 1]"),
    (["precompute", "--base", MISSING, "--tuned", MISSING, "--out", "o", "--neurons", "0,2"],
     "neurons M must be in [0, 1]"),
    (["precompute", "--base", MISSING, "--tuned", MISSING, "--out", "o", "--per-task", "-3"], "--per-task"),
    (["explore", "--base", MISSING, "--tuned", MISSING, "--port", "99999", "--no-token"], "--port"),
    (["explore", "--base", MISSING, "--tuned", MISSING, "--per-task", "-1", "--no-token"], "--per-task"),
    (["compare", "--base", MISSING, "--tuned", MISSING, "--out", "o", "--device", "gpu0"], "unknown device 'gpu0'"),
    (["eval", MISSING, "--device", "gpu0"], "unknown device 'gpu0'"),
    (["precompute", "--base", MISSING, "--tuned", MISSING, "--out", "o", "--device", "gpu0"], "unknown device"),
])
def test_a_bad_argument_is_the_first_error_before_any_model_is_opened(tmp_path, args, needle):
    """The models do not exist: had any been opened first, its path would be the error."""
    line = refused(lfm(*args, cwd=tmp_path), needle)
    assert MISSING not in line
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------- help

def test_every_option_of_every_command_has_help():
    from lfm.cli import build_parser

    missing = []

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}")
            elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)) and not action.help:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")

    walk(build_parser(), "lfm")
    assert missing == []


# ---------------------------------------------------------------------------------------------- the export

def test_exported_recipe_merges_as_exported_and_links_carry_rounded_numbers(zoo, tmp_path):
    """The explorer's recipe.yaml, run as downloaded (`lfm merge --config recipe.yaml`, no other argument),
    writes the same bytes as the same merge from flags."""
    from urllib.parse import parse_qs, urlparse

    from lfm.explorer.state import ExplorerState

    state = ExplorerState(background=False, auto_sweep=False, source_kind="pair", base_path=str(zoo.base),
                          tuned_path=str(zoo.llava))
    state.load()
    assert state.error == "" and state.source is not None, state.error
    state.param.update(method="Neu-P-TIES", density=0.23000000000000004, neurons=0.15)  # a slider's float noise
    assert state.density == 0.23
    data = yaml.safe_load(state.recipe_yaml())
    assert parse_qs(urlparse(data["explorer_link"]).query)["K"] == ["0.23"] and data["explorer_view"]["K"] == 0.23
    assert "seed" not in data and "gamma" not in data  # nothing that does not change this merge
    (tmp_path / "recipe.yaml").write_text(state.recipe_yaml())
    assert warnings_of(ok(lfm("merge", "--config", "recipe.yaml", "--quiet", "--device", "cpu", cwd=tmp_path))) == []
    ok(lfm("merge", "--base", zoo.base, "--tuned", zoo.llava, "--method", "neu-p-ties", "-K", "0.23", "-M", "0.15",
           "--quiet", "--device", "cpu", "--out", tmp_path / "direct"))
    assert tree_bytes(tmp_path / data["out"]) == tree_bytes(tmp_path / "direct")
