"""The pair a command opens when none is named (lfm.default_pair): the real pair once built, else the organism;
$LFM_DEFAULT_PAIR chooses; every command says which pair it opened."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def lfm_run(args, env_extra, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **env_extra}
    return subprocess.run([sys.executable, "-m", "lfm.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def realpair_home(smoke_pair, tmp_path_factory):
    """A $LFM_REALPAIR_HOME laid out as `make realpair` leaves it (base, suite, paper/seed0/tuned), its parts
    linked from the smoke build."""
    root, res = smoke_pair
    home = tmp_path_factory.mktemp("home")
    (home / "paper" / "seed0").mkdir(parents=True)
    (home / "base").symlink_to(res["base"])
    (home / "suite").symlink_to(Path(res["suite"]).parent)
    (home / "paper" / "seed0" / "tuned").symlink_to(res["tuned"])
    return home, res


def test_the_rule(realpair_home, tmp_path, monkeypatch):
    from lfm import default_pair as dp

    home, res = realpair_home
    monkeypatch.setattr("lfm.realpair.build.DEFAULT_ROOT", home)
    monkeypatch.setenv(dp.CHOICE_ENV, "auto")
    pair = dp.default_pair()
    assert (pair.base.resolve(), pair.tuned.resolve()) == (Path(res["base"]).resolve(), Path(res["tuned"]).resolve())
    assert pair.suite == home / "suite" / "suite.yaml" and Path(pair.items).is_file() and not pair.is_organism
    monkeypatch.setenv(dp.CHOICE_ENV, "organism")
    assert dp.default_pair().is_organism
    # a build without its stamp (interrupted) is not a pair: auto falls back, 'realpair' refuses
    monkeypatch.setattr("lfm.realpair.build.DEFAULT_ROOT", tmp_path)
    monkeypatch.setenv(dp.CHOICE_ENV, "auto")
    assert dp.default_pair().is_organism
    monkeypatch.setenv(dp.CHOICE_ENV, "realpair")
    with pytest.raises(FileNotFoundError, match="make realpair"):
        dp.default_pair()
    monkeypatch.setenv(dp.CHOICE_ENV, "smollm")
    with pytest.raises(ValueError, match="auto, organism, realpair"):
        dp.default_pair()


def test_compare_with_no_pair_opens_the_built_real_pair_and_says_so(realpair_home, tmp_path):
    home, res = realpair_home
    out = tmp_path / "cmp"
    r = lfm_run(["compare", "--limit", "1", "--quiet", "--out", str(out)],
                {"LFM_REALPAIR_HOME": str(home), "LFM_DEFAULT_PAIR": "auto"}, tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "opening the real pair (paper preset, seed 0)" in r.stdout
    assert json.loads((out / "transitions.json").read_text())["recipe"]["items"].endswith("visual.jsonl")


def test_realpair_chosen_but_not_built_is_one_line_exit_2(tmp_path):
    r = lfm_run(["compare", "--out", str(tmp_path / "cmp")],
                {"LFM_REALPAIR_HOME": str(tmp_path / "none"), "LFM_DEFAULT_PAIR": "realpair"}, tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "make realpair" in r.stderr
    assert not (tmp_path / "cmp").exists()


def test_eval_with_no_model_says_it_opened_the_organism(tmp_path):
    r = lfm_run(["eval", "--limit", "1"], {"LFM_DEFAULT_PAIR": "organism"}, tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.splitlines()[0].startswith("no pair named: opening the embedded organism")
