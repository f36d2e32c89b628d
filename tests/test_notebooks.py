"""The four teaching notebooks: committed clean, executed top to bottom on the organism and on the real pair
(lfm.realpair's smoke build, tests/conftest.py `smoke_pair`, evaluated on its own suite), checks and key outputs.

Each notebook is run with papermill (the same way a user runs it on a real pair: `papermill NB OUT -p base
... -p tuned ...`) with smaller sweeps where the notebook offers them. A notebook passes when every cell ran
without error, its asserting cell printed the expected ``CHECK passed:`` lines, and its final
``application/json`` summary holds consistent key numbers.

The pair defaults to the embedded organism; set LFM_NOTEBOOK_BASE / LFM_NOTEBOOK_TUNED to run the notebooks
on another (organism-like) pair.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"
NOTEBOOKS = ("01_neuron_changes.ipynb", "02_merge_tradeoffs.ipynb", "03_generation_failures.ipynb",
             "04_ffn_key_value_memories.ipynb")
TIMEOUT_S = 600  # per cell

# smaller sweeps for the tests; the defaults in the notebooks are the full ones
PARAMS = {
    "01_neuron_changes.ipynb": {"n_null": 2},
    "02_merge_tradeoffs.ipynb": {"K_grid": [0.1, 0.5], "M_grid": [0.0, 0.3],
                                 "K_sweep_methods": ["ties", "neu-s-ties"]},
    "03_generation_failures.ipynb": {},
    "04_ffn_key_value_memories.ipynb": {},
}

# checks every run must print (on the organism the notebooks add the results.json cross-checks)
REQUIRED_CHECKS = {
    "01_neuron_changes.ipynb": ["every module's max/median above the shuffled null",
                                "shuffled null keeps each tensor's total change"],
    "02_merge_tradeoffs.ipynb": ["Table 2/3 complete, OA = (LA+VA)/2", "hard-merge has the lowest VA",
                                 "sweeps complete; M=0 is one suppress-only merge"],
    "03_generation_failures.ipynb": ["every stage classifies every item once",
                                     "transition counts add up (fixed = Σ per category, Δaccuracy = (fixed − broken)/n, "
                                     "crosstab = n)", "shares of fixes sum to 1"],
    "04_ffn_key_value_memories.ipynb": ["c_i = Σ_j x_j Δ_ij (measured through the module)", "c̃_i = Σ_{j∈S} x_j Δ_ij",
                                        "replace: located → c_i, others → c̃_i",
                                        "rescale: located → ĉ_i = C(i)/C'(i) · c̃_i, others → c̃_i",
                                        "rescale restores every located neuron's change score C(i)",
                                        "restore_tuned gives back the tuned activations"],
}


def _pair_params() -> dict:
    base, tuned = os.environ.get("LFM_NOTEBOOK_BASE"), os.environ.get("LFM_NOTEBOOK_TUNED")
    if base or tuned:
        return {"base": base, "tuned": tuned}
    from lfm.organism import ORGANISM_DIR

    if not (ORGANISM_DIR / "tuned" / "config.json").exists():
        pytest.fail(f"the organism checkpoints are missing in {ORGANISM_DIR}; run `lfm organism train`")
    return {}


def _organism_report_present(params: dict) -> bool:
    from lfm.organism import ORGANISM_DIR

    return not params.get("base") and not params.get("tuned") and (ORGANISM_DIR / "results.json").exists()


def _organism_checks(name: str, params: dict) -> list[str]:
    """The results.json cross-checks a notebook runs on the shipped organism (when the report has the numbers)."""
    if not _organism_report_present(params):
        return []
    from lfm.organism import ORGANISM_DIR

    report = json.loads((ORGANISM_DIR / "results.json").read_text())
    if name == "01_neuron_changes.ipynb" and "0" in report.get("tail_max_over_median", {}):
        return ["matches results.json (lfm organism report)"]
    if name == "02_merge_tradeoffs.ipynb" and report.get("K") == 0.2 and report.get("M") == 0.3:
        return ["tuned / hard / suppress / restore match results.json"]
    return []


_RUNS: dict[tuple[str, str], tuple[nbformat.NotebookNode, float, dict]] = {}


def execute(name: str, tmp_dir: Path, params: dict | None = None, tag: str = "organism"
            ) -> tuple[nbformat.NotebookNode, float, dict]:
    """Run notebook ``name`` with papermill once per session and pair (`tag`); returns (executed notebook,
    seconds, params). Default params: the organism (or LFM_NOTEBOOK_BASE/TUNED) with PARAMS[name]."""
    if (name, tag) not in _RUNS:
        import papermill

        params = params if params is not None else {**_pair_params(), **PARAMS[name]}
        out = tmp_dir / f"{tag}-{name}"
        started = time.perf_counter()
        papermill.execute_notebook(str(NB_DIR / name), str(out), parameters=params, kernel_name="python3",
                                   cwd=str(NB_DIR), progress_bar=False, execution_timeout=TIMEOUT_S)
        _RUNS[name, tag] = (nbformat.read(out, as_version=4), time.perf_counter() - started, params)
    return _RUNS[name, tag]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return tmp_path_factory.mktemp("notebooks")


def outputs(nb) -> list[dict]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def printed(nb) -> str:
    return "".join(o.get("text", "") for o in outputs(nb) if o.output_type == "stream")


def summary_of(nb) -> dict:
    found = [o["data"]["application/json"] for o in outputs(nb) if "application/json" in o.get("data", {})]
    assert found, "the notebook's last cell should display an application/json summary"
    return found[-1]


def check_run(name: str, run_dir: Path, params: dict | None = None, tag: str = "organism") -> tuple[dict, float]:
    nb, seconds, params = execute(name, run_dir, params, tag)
    errors = [o for o in outputs(nb) if o.output_type == "error"]
    assert not errors, f"{name}: {errors[0]['ename']}: {errors[0]['evalue']}"
    text = printed(nb)
    expected = REQUIRED_CHECKS[name] + _organism_checks(name, params)
    for check in expected:
        assert f"CHECK passed: {check}" in text, f"{name}: check {check!r} did not run"
    assert sum(1 for o in outputs(nb) if "application/vnd.plotly.v1+json" in o.get("data", {})) >= 2, \
        f"{name}: expected plotly figures in the outputs"
    summary = summary_of(nb)
    assert set(expected) <= set(summary["checks"])
    print(f"{name}: {seconds:.1f} s")
    return summary, seconds


# ------------------------------------------------------------------------------------ committed state

@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_is_clean_and_parameterized(name):
    """No outputs, execution counts or widget state are committed; a papermill `parameters` cell takes the pair."""
    nb = nbformat.read(NB_DIR / name, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name}: strip outputs before committing"
    assert "widgets" not in nb.metadata, f"{name}: widget state must not be committed"
    assert nb.metadata["kernelspec"]["name"] == "python3"
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, f"{name}: exactly one cell tagged 'parameters'"
    src = params[0].source
    for key in ("base = None", "tuned = None", "threads ="):
        assert key in src, f"{name}: parameters cell lacks {key!r}"
    assert (NB_DIR / name).stat().st_size < 100_000, f"{name}: unexpectedly large for a stripped notebook"


# ------------------------------------------------------------------------------------ executed

def test_01_neuron_changes(run_dir):
    s, seconds = check_run("01_neuron_changes.ipynb", run_dir)
    assert s["n_tensors"] > 0 and s["mean_max_over_median"] > s["mean_null_max_over_median"] >= 1.0
    assert set(s["module_max_over_median"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    for module, value in s["module_max_over_median"].items():
        assert value > s["module_null_max_over_median"][module]
    assert seconds < 120


def test_02_merge_tradeoffs(run_dir):
    s, _ = check_run("02_merge_tradeoffs.ipynb", run_dir)
    table = s["table"]
    assert {"MLLM (tuned)", "LLM (hard-merge)", "Task Ari", "TIES", "Breadcrumbs", "DARE", "DELLA", "Neu-P-TaskA",
            "Neu-P-TIES", "Neu-S-TIES", "Neu-P-Bread", "Neu-S-Bread"} == set(table)
    for row in table.values():
        assert abs(row["OA"] - (row["LA"] + row["VA"]) / 2) < 1e-3
    assert s["best_OA"] in table
    assert table["Neu-S-TIES"]["VA"] == pytest.approx(s["restore_VA"], abs=1e-3)
    nb, _, params = execute("02_merge_tradeoffs.ipynb", run_dir)
    if _organism_report_present(params):
        from lfm.organism import ORGANISM_DIR

        checks = json.loads((ORGANISM_DIR / "results.json").read_text()).get("checks", {})
        if any(k.startswith("restore VA") and v["pass"] for k, v in checks.items()):
            assert s["restore_VA"] > s["suppress_VA"], "the organism's report shows restore beating suppress"
    widget_views = [o for o in outputs(nb) if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert widget_views, "the sliders should render (a widget view output)"


def test_03_generation_failures(run_dir):
    s, _ = check_run("03_generation_failures.ipynb", run_dir)
    n = s["n_items"]
    for stage, cats in s["categories"].items():
        assert sum(cats.values()) == n, stage
    for step, t in s["transitions"].items():
        assert t["fixed"] == sum(t["fixed_by_category"].values()), step
    nb, _, _ = execute("03_generation_failures.ipynb", run_dir)
    html = "".join(o["data"].get("text/html", "") for o in outputs(nb) if "data" in o)
    if s["examples_shown"]:
        assert "data:image/png;base64," in html, "examples must be shown with their images"


def test_04_ffn_key_value_memories(run_dir):
    s, _ = check_run("04_ffn_key_value_memories.ipynb", run_dir)
    assert s["n_located"] > 0
    assert 0.0 <= s["shrunk_fraction"] <= 1.0
    assert set(s["p_answer"]) == {"tuned", "hard", "suppress", "replace", "rescale"}
    assert all(0.0 <= p <= 1.0 for p in s["p_answer"].values())


# ------------------------------------------------------------------------------------ on the real pair

REALPAIR_LIMIT = 1  # suite items per task in notebook 02; the stage notebooks take the first few visual items


def realpair_params(name: str, res: dict) -> dict:
    """What a user passes to run notebook `name` on the real pair (README): base, tuned, and the pair's suite
    (02) or its visual items file (03, 04); smaller grids as on the organism."""
    items = str(Path(res["suite"]).parent / "items" / "visual.jsonl")
    extra = {"02_merge_tradeoffs.ipynb": {"suite": str(res["suite"]), "limit": REALPAIR_LIMIT},
             "03_generation_failures.ipynb": {"items": items, "limit": 8},
             "04_ffn_key_value_memories.ipynb": {"items": items, "n_inputs": 4}}.get(name, {})
    return {"base": str(res["base"]), "tuned": str(res["tuned"]), **PARAMS[name], **extra}


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_on_the_real_pair(name, smoke_pair, run_dir):
    """Every notebook, top to bottom, on the real pair with papermill parameters; notebook 02's tuned and base
    numbers are lm-eval + lmms-eval's on the model directories themselves (`lfm.evaluate.harness.evaluate`)."""
    _, res = smoke_pair
    s, _ = check_run(name, run_dir, realpair_params(name, res), tag="realpair")
    if name == "02_merge_tradeoffs.ipynb":
        from lfm.evaluate.harness import evaluate

        tuned = evaluate(res["tuned"], res["suite"], limit=REALPAIR_LIMIT)
        assert (s["tuned"]["LA"], s["tuned"]["VA"]) == (tuned["LA"], tuned["VA"])
        assert s["base_LA"] == evaluate(res["base"], res["suite"], limit=REALPAIR_LIMIT)["LA"]
        assert set(s["table"]) >= {"MLLM (tuned)", "LLM (hard-merge)", "Neu-S-TIES"}
    if name == "03_generation_failures.ipynb":
        assert s["n_items"] == 8
        for stage, cats in s["categories"].items():
            assert sum(cats.values()) == 8, stage
    if name == "04_ffn_key_value_memories.ipynb":
        assert set(s["p_answer"]) == {"tuned", "hard", "suppress", "replace", "rescale"}


def test_stage_notebook_refuses_organism_items_for_the_real_pair(smoke_pair, run_dir):
    """Without -p items the real pair would be scored on the organism's items: the notebook stops, saying what
    to pass."""
    import papermill

    _, res = smoke_pair
    with pytest.raises(papermill.PapermillExecutionError, match="items FILE.jsonl"):
        papermill.execute_notebook(str(NB_DIR / "03_generation_failures.ipynb"), str(run_dir / "refused.ipynb"),
                                   parameters={"base": str(res["base"]), "tuned": str(res["tuned"])},
                                   kernel_name="python3", cwd=str(NB_DIR), progress_bar=False,
                                   execution_timeout=TIMEOUT_S)
