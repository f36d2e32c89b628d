"""`lfm merge --export-mergekit`: the YAML mergekit 0.1.5 runs (`mergekit-yaml`, a real subprocess) on the
LLM-to-LLM fixture gives lfm's tensors (TA, TIES, Breadcrumbs: element-wise; DARE, DELLA: their random draws
differ between the tools, so the parameters, the shapes, the kept fraction ~ K and the l1 norm are compared).
The expected YAML parameters below are read off mergekit's source (generalized_task_arithmetic.py: out = base
+ lambda * normalize(weight * sparsify(delta)), rescale = l1), not off lfm's table."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import lfm
from fixtures import read_state
from lfm.cli import main

MERGEKIT = Path(sys.executable).parent / "mergekit-yaml"
pytestmark = pytest.mark.skipif(not MERGEKIT.exists(), reason="mergekit-yaml not installed (mergekit 0.1.5)")


def export(zoo, tmp_path, recipe: dict, *flags) -> Path:
    """`lfm merge --config r.yaml --export-mergekit m.yaml` (the recipe file as a user writes it)."""
    config = tmp_path / "r.yaml"
    config.write_text(yaml.safe_dump({"base": str(zoo.base), "tuned": str(zoo.llm_tuned), **recipe}))
    target = tmp_path / "m.yaml"
    assert main(["merge", "--config", str(config), "--export-mergekit", str(target), *flags]) == 0
    return target


def run_mergekit(config: Path, out: Path, *flags) -> dict[str, torch.Tensor]:
    proc = subprocess.run([str(MERGEKIT), str(config), str(out), "--no-copy-tokenizer", *flags],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return read_state(out)


def lfm_merge(zoo, tmp_path, dtype=None, **recipe) -> dict[str, torch.Tensor]:
    out = tmp_path / "lfm_out"
    lfm.merge(zoo.base, zoo.llm_tuned, out, lfm.Recipe(**recipe), dtype=dtype, progress=False, log=lambda *a: None)
    return read_state(out)


@pytest.mark.parametrize("recipe,mergekit_params", [
    ({"method": "task_arithmetic", "alpha": 0.6},
     ("task_arithmetic", {"weight": 1.0}, {"lambda": 0.6})),
    ({"method": "ties", "density": 0.2, "alpha": 0.5},  # alpha is lambda: TIES's normalize divides weight away
     ("ties", {"weight": 1.0, "density": 0.2}, {"lambda": 0.5, "normalize": True})),
    ({"method": "breadcrumbs", "density": 0.3, "gamma": 0.05, "alpha": 0.8},
     ("breadcrumbs", {"weight": 1.0, "density": 0.3, "gamma": 0.05}, {"lambda": 0.8})),
])
def test_exported_yaml_run_by_mergekit_gives_lfms_tensors(zoo, tmp_path, recipe, mergekit_params):
    data = yaml.safe_load(export(zoo, tmp_path, recipe).read_text())
    method, model, shared = mergekit_params
    assert data["merge_method"] == method and data["base_model"] == str(zoo.base.resolve())
    assert data["models"] == [{"model": str(zoo.llm_tuned.resolve()), "parameters": model}]
    assert shared.items() <= data["parameters"].items()
    theirs = run_mergekit(tmp_path / "m.yaml", tmp_path / "mk_out")
    ours = lfm_merge(zoo, tmp_path, **recipe)
    assert set(theirs) == set(ours)
    for k in ours:  # float32 fixture, both computed in float32: equal up to float32 rounding
        assert theirs[k].dtype == ours[k].dtype == torch.float32, k
        torch.testing.assert_close(theirs[k], ours[k], rtol=0, atol=1e-6, msg=lambda m: f"{k}: {m}")


def test_bfloat16_export_matches_within_bf16_rounding(zoo, tmp_path):
    """--dtype bfloat16 becomes mergekit's out_dtype: both compute in float32 and round once to bf16."""
    recipe = {"method": "ties", "density": 0.3}
    data = yaml.safe_load(export(zoo, tmp_path, recipe, "--dtype", "bfloat16").read_text())
    assert data["dtype"] == "float32" and data["out_dtype"] == "bfloat16"
    theirs = run_mergekit(tmp_path / "m.yaml", tmp_path / "mk_out")
    ours = lfm_merge(zoo, tmp_path, dtype="bfloat16", **recipe)
    for k in ours:
        assert theirs[k].dtype == ours[k].dtype == torch.bfloat16, k
        torch.testing.assert_close(theirs[k].float(), ours[k].float(), rtol=2 ** -8, atol=1e-6,
                                   msg=lambda m: f"{k}: {m}")


@pytest.mark.parametrize("recipe,method,extra", [
    ({"method": "dare", "density": 0.3, "rescale": "l1", "seed": 3}, "dare_linear", {}),
    ({"method": "della", "density": 0.4, "epsilon": 0.1, "rescale": "l1", "seed": 3}, "della", {"epsilon": 0.1}),
])
def test_randomised_exports_keep_the_parameters_and_about_K(zoo, tmp_path, recipe, method, extra):
    """Equal: the YAML's parameters, the output's tensor names, shapes and dtypes, and each tensor's delta l1
    norm (both rescale to it). Not equal: which entries are kept (each tool draws its own mask), so the kept
    fraction is only ~K for both."""
    data = yaml.safe_load(export(zoo, tmp_path, recipe).read_text())
    K = recipe["density"]
    assert data["merge_method"] == method
    assert data["models"][0]["parameters"] == {"weight": 1.0, "density": K, **extra}
    assert {"lambda": 1.0, "rescale": True}.items() <= data["parameters"].items()
    theirs = run_mergekit(tmp_path / "m.yaml", tmp_path / "mk_out", "--random-seed", "3")
    ours, base, tuned = lfm_merge(zoo, tmp_path, **recipe), read_state(zoo.base), read_state(zoo.llm_tuned)
    assert {k: (v.shape, v.dtype) for k, v in theirs.items()} == {k: (v.shape, v.dtype) for k, v in ours.items()}
    kept = {"lfm": 0, "mergekit": 0}
    total = 0
    for k, b in base.items():
        if b.dim() != 2:
            continue
        true = tuned[k] - b
        total += b.numel()
        for name, out in (("lfm", ours), ("mergekit", theirs)):
            d = out[k] - b
            kept[name] += int((d != 0).sum())
            assert float(d.abs().sum()) == pytest.approx(float(true.abs().sum()), rel=1e-3), (name, k)
    tol = 5 * (K * (1 - K) / total) ** 0.5
    assert all(abs(n / total - K) < tol for n in kept.values()), (kept, total)
    assert kept["lfm"] != kept["mergekit"] or not torch.equal(ours["model.layers.0.mlp.up_proj.weight"],
                                                               theirs["model.layers.0.mlp.up_proj.weight"])


@pytest.mark.parametrize("recipe,says", [
    ({"method": "neu-s-ties"}, "Neuron-Fusion has no mergekit form"),
    ({"method": "hard"}, "hard-merge has no mergekit form"),
    ({"method": "dare", "density": 0.3}, "rescale='inverse' has no mergekit form; set rescale to 'l1'"),
    ({"method": "ties", "others": "tuned"}, "others='tuned' has no mergekit form; set others to 'method'"),
])
def test_recipe_without_a_mergekit_form_is_refused_in_one_line(zoo, tmp_path, recipe, says):
    config = tmp_path / "r.yaml"
    config.write_text(yaml.safe_dump({"base": str(zoo.base), "tuned": str(zoo.llm_tuned), **recipe}))
    target = tmp_path / "m.yaml"
    proc = subprocess.run([sys.executable, "-m", "lfm.cli", "merge", "--config", str(config),
                           "--export-mergekit", str(target)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and says in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not target.exists() and list(tmp_path.iterdir()) == [config]


def test_explorer_export_downloads_the_same_yaml_or_says_why_not(zoo, tmp_path):
    from lfm.explorer.app import ExplorerApp, extension
    from lfm.explorer.state import ExplorerState

    extension()
    state = ExplorerState(background=False, auto_sweep=False, source_kind="pair", base_path=str(zoo.base),
                          tuned_path=str(zoo.llm_tuned))
    app = ExplorerApp(state)
    app.__panel__()
    assert state.error == "", state.error
    state.param.update(method="Neu-S-TIES")
    note = app.export.mergekit_note.object
    assert app.export.mergekit_button.disabled and "Neuron-Fusion has no mergekit form" in note
    state.param.update(method="TIES", density=0.25)
    assert not app.export.mergekit_button.disabled and app.export.mergekit_note.object == ""
    cli = export(zoo, tmp_path, {"method": "ties", "density": 0.25}).read_text()
    assert app.export.mergekit_file().read() == cli
