"""A method from outside lfm works on every surface: the Row-DARE of docs/extending.md, installed as a package
with an entry point (group `lfm.methods`), drives `lfm merge` (bytes = its formula, written out here), `lfm
--help`, YAML recipes, `lfm sweep`, the explorer and `ResidentPair.apply`; a suppressor registered in process
(`lfm.register_method`) gives Neuron-Fusion a new Sub. The method names compared here are the plug-ins' own.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

from fixtures import canonical_from_tuned_key, read_state

ROOT = Path(__file__).resolve().parents[1]


def docs_module() -> str:
    """The first Python block of docs/extending.md: the plug-in's whole module."""
    return re.search(r"```python\n(.*?)```", (ROOT / "docs" / "extending.md").read_text(), flags=re.S).group(1)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """A folder holding row_dare.py and its dist-info (what pip installs): importlib.metadata finds the entry
    point on any sys.path folder. Returns the environment of a process that has it installed."""
    site = tmp_path_factory.mktemp("site")
    (site / "row_dare.py").write_text(docs_module())
    info = site / "row_dare-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: row-dare\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[lfm.methods]\nrow_dare = row_dare:ROW_DARE\n")
    path = os.pathsep.join([str(site), str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}


def run(env, *args, timeout=600) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout)
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def row_dare_formula(base: torch.Tensor, tuned: torch.Tensor, name: str, density, alpha, seed) -> torch.Tensor:
    """Row-DARE written out: rows kept with probability K by the tensor's generator (seed * 1000003 + crc32 of
    the canonical name), kept rows' delta * alpha / K, + base, in tuned's dtype."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    delta = tuned.float() - base.float()
    keep = (torch.rand(delta.shape[0], generator=generator) < density).view(-1, *[1] * (delta.dim() - 1))
    return (torch.where(keep, delta, 0.0) * alpha / density + base.float()).to(tuned.dtype)


def test_installed_method_merges_on_the_cli_as_its_formula(installed, zoo, tmp_path):
    help_text = run(installed, "-m", "lfm.cli", "--help").stdout
    assert re.search(r"row_dare +Row-DARE", help_text)
    assert "row_dare" in run(installed, "-m", "lfm.cli", "merge", "--help").stdout
    out = tmp_path / "cli"
    run(installed, "-m", "lfm.cli", "merge", "--base", zoo.base, "--tuned", zoo.llava, "--out", out, "--method",
        "row_dare", "-K", "0.3", "--alpha", "0.8", "--seed", "2", "--quiet", "--device", "cpu")
    base, tuned, merged = read_state(zoo.base), read_state(zoo.llava), read_state(out)
    assert merged.keys() == tuned.keys()
    n_lm = 0
    for key, value in merged.items():
        name = canonical_from_tuned_key(key)
        want = tuned[key] if name is None else row_dare_formula(base[name], tuned[key], name, 0.3, 0.8, 2)
        assert torch.equal(value.view(-1).view(torch.uint8), want.view(-1).view(torch.uint8)), key
        n_lm += name is not None
    assert n_lm > 10
    report = json.loads((out / "lfm_recipe.json").read_text())
    assert (report["method"], report["label"]) == ("row_dare", "Row-DARE K=0.3 a=0.8 seed=2")

    config = tmp_path / "recipe.yaml"  # a YAML recipe: the same bytes
    config.write_text(f"base: {zoo.base}\ntuned: {zoo.llava}\nout: {tmp_path / 'yaml'}\nmethod: row_dare\n"
                      f"density: 0.3\nalpha: 0.8\nseed: 2\n")
    run(installed, "-m", "lfm.cli", "merge", "--config", config, "--quiet", "--device", "cpu")
    assert read_state(tmp_path / "yaml").keys() == merged.keys()
    assert all(torch.equal(v, merged[k]) for k, v in read_state(tmp_path / "yaml").items())
    config.write_text(f"base: {zoo.base}\ntuned: {zoo.llava}\nout: {tmp_path / 'bad'}\nmethod: row_dare\ndensity: high\n")
    proc = subprocess.run([sys.executable, "-m", "lfm.cli", "merge", "--config", str(config), "--quiet"],
                          capture_output=True, text=True, env=installed, timeout=300)
    assert proc.returncode == 2 and "density K must be a number, got 'high'" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "bad").exists()


PAIR_SURFACES = """
import sys, torch
from lfm.explorer.app import ExplorerApp
from lfm.explorer.state import ExplorerState
from lfm.organism.evaluate import load_model
from lfm.pair import loaded_key
from lfm.resident import ResidentPair
from lfm.stream import merged_state_dict

base, tuned = sys.argv[1:3]
resident = ResidentPair(base, tuned, progress=False)
model, _ = load_model(tuned)
resident.apply(model, "row_dare", density=0.4, seed=3)
streamed = merged_state_dict(base, tuned, "row_dare", density=0.4, seed=3)
params = dict(model.state_dict())
found = {k: loaded_key(k, params) for k in streamed}  # transformers renames checkpoint keys on load
same = [torch.equal(params[found[k]].view(-1).view(torch.uint8), v.view(-1).view(torch.uint8))
        for k, v in streamed.items() if found[k] is not None]
print("apply equals merge", len(same) > 10 and all(same))

state = ExplorerState(background=False, auto_sweep=False, source_kind="pair", base_path=base, tuned_path=tuned,
                      per_task=2)
app = ExplorerApp(state)
state.method = "Row-DARE"
c = app.controls
print("recipe", state.recipe.label)
print("widgets", c.density.visible, c.alpha.visible, c.neurons.visible, c.gamma.visible, c.epsilon.visible)
print("evaluated", state.current is not None and state.current["label"] == state.recipe.label, state.error or "-")
name = resident.names[0]
view = resident.view(name, state.recipe)
print("view kept", round(view.kept_fraction, 2))
"""


def test_installed_method_in_memory_explorer_and_sweep(installed, organism, tmp_path):
    out = run(installed, "-c", PAIR_SURFACES, *organism).stdout
    assert "apply equals merge True" in out
    assert "recipe Row-DARE K=0.2" in out
    assert "widgets True True False False False" in out  # its own settings' widgets: K and alpha
    assert "evaluated True -" in out
    sweep = tmp_path / "sweep"
    run(installed, "-m", "lfm.cli", "sweep", "--base", organism[0], "--tuned", organism[1], "--method", "row_dare,ties",
        "--density", "0.2,0.4", "--seed", "1", "--suite", "organism", "--limit", "2", "--no-references",
        "--out", sweep, "--quiet")
    rows = json.loads((sweep / "results.json").read_text())["rows"]
    assert sorted(r["label"] for r in rows) == ["Row-DARE K=0.2 seed=1", "Row-DARE K=0.4 seed=1", "TIES K=0.2",
                                                "TIES K=0.4"]
    assert all(r["LA"] is not None and r["VA"] is not None for r in rows)


def test_a_broken_plugin_is_one_clear_line(installed, tmp_path):
    site = tmp_path / "site"
    info = site / "broken-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[lfm.methods]\nbroken = json:dumps\n")
    env = {**installed, "PYTHONPATH": os.pathsep.join([str(site), installed["PYTHONPATH"]])}
    proc = subprocess.run([sys.executable, "-m", "lfm.cli", "--help"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "method plug-in 'broken' (json:dumps) is a function, not an lfm.methods.registry.Method" in proc.stderr


def test_registered_suppressor_gives_neuron_fusion_a_new_sub(organism):
    """TIES's Sub under another name, flagged as a suppressor: Neuron-Fusion over it (paper alias, stages,
    ResidentPair's fast path) merges the bytes of Neuron-Fusion over TIES."""
    import lfm
    from lfm.methods.math import keep_top_k, scale, ties_k
    from lfm.methods.recipe import Recipe, stage_recipes
    from lfm.organism.evaluate import load_model
    from lfm.pair import loaded_key
    from lfm.resident import is_fast
    from lfm.stream import merged_state_dict

    lfm.register_method("my_ties", title="MyTIES", sub=keep_top_k, f=scale, uses=("density", "alpha"), top_k=ties_k,
                        masks=True, suppressor=True, fast_in_memory=True)
    try:
        mine, ties = Recipe.from_name("neu-p-my_ties", density=0.3), Recipe(density=0.3, restore="replace")
        assert mine.label == "Neu-P-MyTIES K=0.3 M=0.3" and is_fast(mine)
        assert [r.label for r in stage_recipes(mine).values()] == ["hard-merge", "Neu-P-MyTIES K=0.3 M=0",
                                                                   "Neu-P-MyTIES K=0.3 M=0.3"]
        want = merged_state_dict(*organism, ties)
        got = merged_state_dict(*organism, mine)
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
        model, _ = load_model(organism[1])
        params = dict(lfm.ResidentPair(*organism, progress=False).apply(model, mine).state_dict())
        found = {k: loaded_key(k, params) for k in want}
        applied = [torch.equal(params[found[k]], v) for k, v in want.items() if found[k] is not None]
        assert len(applied) > 10 and all(applied)
        with pytest.raises(ValueError, match="names \\['my_ties'\\] are taken"):
            lfm.register_method("my_ties2", title="x", sub=keep_top_k, f=scale, aliases=("my_ties",))
    finally:
        lfm.unregister_method("my_ties")
    with pytest.raises(ValueError, match="unknown method 'my_ties'"):
        Recipe(method="my_ties")
