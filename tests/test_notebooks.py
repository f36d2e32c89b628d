"""The four teaching notebooks: committed executed (`make notebooks`, notebooks/execute.py), re-run top to
bottom on the organism and compared with their committed outputs (a regression check), and run on the real pair
(lfm.realpair's smoke build, tests/conftest.py `smoke_pair`, evaluated on its own suite), checks and key outputs.

Each notebook is run with papermill (the same way a user runs it on a real pair: `papermill NB OUT -p base
... -p tuned ...`). On the organism it runs with its own defaults, as `make notebooks` ran it; elsewhere with
smaller sweeps where the notebook offers them. A notebook passes when every cell ran without error, its
asserting cell printed the expected ``CHECK passed:`` lines, and its final ``application/json`` summary holds
consistent key numbers.

The pair defaults to the embedded organism; set LFM_NOTEBOOK_BASE / LFM_NOTEBOOK_TUNED to run the notebooks
on another (organism-like) pair (the comparison with the committed outputs, which are the organism's, is then
skipped).
"""
from __future__ import annotations

import base64
import copy
import json
import os
import re
import sys
import time
from pathlib import Path

import nbformat
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"
sys.path.insert(0, str(NB_DIR))
import execute as nbexec  # noqa: E402  notebooks/execute.py: how `make notebooks` runs and tidies them

NOTEBOOKS = nbexec.NOTEBOOKS
TIMEOUT_S = nbexec.TIMEOUT_S
SIZE_LIMIT = 250_000  # bytes per committed notebook (today 60-160 KB; plotly JSON with trimmed templates)

# smaller sweeps for the real pair and the JupyterLab test; the organism runs the notebooks' defaults
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
    seconds, params). Default params: the organism with the notebook's own defaults, exactly as `make notebooks`
    runs it (or LFM_NOTEBOOK_BASE/TUNED with the smaller sweeps of PARAMS)."""
    if (name, tag) not in _RUNS:
        if params is None:
            pair = _pair_params()
            params = {**pair, **PARAMS[name]} if pair else {}
        started = time.perf_counter()
        nb = nbexec.execute(name, tmp_dir / f"{tag}-{name}", params)
        _RUNS[name, tag] = (nb, time.perf_counter() - started, params)
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
def test_committed_notebook_is_executed_tidy_and_parameterized(name):
    """Committed as `make notebooks` writes it: every code cell run once, top to bottom, without error; no run
    metadata (timestamps), no widget state, plotly templates trimmed, small; a papermill `parameters` cell
    with its defaults (no injected parameters: the outputs are the defaults', i.e. the organism's)."""
    nb = nbformat.read(NB_DIR / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), \
        f"{name}: not executed top to bottom once; run `make notebooks`"
    assert not [o for o in outputs(nb) if o.output_type == "error"], f"{name}: committed with an error"
    assert nb.metadata.keys() == {"kernelspec", "language_info"} and nb.metadata["kernelspec"]["name"] == "python3", \
        f"{name}: run metadata or widget state committed; run `make notebooks`"
    for cell in nb.cells:
        assert not {"papermill", "execution"} & set(cell.metadata), f"{name}: run metadata in a cell"
        assert "injected-parameters" not in cell.metadata.get("tags", []), f"{name}: executed with -p parameters"
    figures = [o["data"][nbexec.PLOTLY] for o in outputs(nb) if nbexec.PLOTLY in o.get("data", {})]
    assert len(figures) >= 2, f"{name}: committed without its figures"
    for fig in figures:
        template = fig["layout"].get("template", {})
        assert set(template.get("data", {})) <= {t.get("type", "scatter") for t in fig["data"]}, "template not trimmed"
    assert not [o for o in outputs(nb) if nbexec.WIDGET in o.get("data", {})], f"{name}: widget view without state"
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, f"{name}: exactly one cell tagged 'parameters'"
    src = params[0].source
    for key in ("base = None", "tuned = None", "threads ="):
        assert key in src, f"{name}: parameters cell lacks {key!r}"
    assert (NB_DIR / name).stat().st_size < SIZE_LIMIT, f"{name}: {(NB_DIR / name).stat().st_size} bytes"


# numbers in the prose that are references or definitions, not results (a result is printed by a cell)
REFERENCES = re.compile(r"\$\$.*?\$\$|\$[^$]*\$|`[^`]*`|^#+ [^\n]*|^\s*\d+\. |"
                        r"(?:Eqs?\.|Figures?|Tables?|§|arXiv|notebook|et al\. \(?|the paper's layer) ?[\d./, and]+|"
                        r"Llama-?3(?:-8B)?|8B|top-10%|10%|0\.10|M ?= ?0|1 for Replace|\(LA \+ VA\) / 2", re.S | re.M)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_markdown_states_no_measured_numbers(name):
    """Every number in a markdown cell is a reference (Eq. 2, Figure 5, §4.2) or a definition (top-10%); what a
    cell measures is printed by the cell (a Markdown output), so it is never stale or hand-copied."""
    nb = nbformat.read(NB_DIR / name, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            left = REFERENCES.sub(" ", cell.source)
            assert not re.search(r"\d", left), f"{name} cell {i}: a number in the prose: {left.strip()[:300]!r}"


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
    # the trade-off plot labels its points readably: no text next to the markers (several merges land on nearly
    # the same LA and VA, and their labels overlapped); each method is one legend entry with its (LA, VA)
    tradeoff = next(o["data"][nbexec.PLOTLY] for o in outputs(nb) if nbexec.PLOTLY in o.get("data", {})
                    and o["data"][nbexec.PLOTLY]["layout"]["title"]["text"].startswith("Trade-off at"))
    points = [t for t in tradeoff["data"] if t.get("showlegend", True)]
    assert not [t for t in tradeoff["data"] if "text" in t.get("mode", "") or t.get("text")], "text labels on markers"
    assert sorted(t["name"].rsplit(" (", 1)[0] for t in points) == sorted(table), [t["name"] for t in points]


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


# ------------------------------------------------------------------------------------ regression: committed outputs

# What may legitimately differ between the committed run and a fresh one (on this or another machine):
# * wall-clock times a cell prints ("took 3.9 s", a summary's "seconds") and object addresses in reprs: masked;
# * the last printed digit of a number (its float inputs come from sums whose order depends on the CPU's
#   kernels and threads): +-1 unit of the last digit printed; measured float rounding errors printed in
#   e-notation (1e-5 and below: "2.1e-07") only have to stay that small;
# * figure arrays and JSON numbers: relative 1e-4 (absolute 1e-5 of the array's largest value), far above
#   float32 reordering noise, far below any change of method, data or plot.
# Everything else (texts, labels, counts, structure, discrete results such as accuracies) must match exactly.
TIMES = re.compile(r"\b\d+(?:\.\d+)? s\b|0x[0-9a-f]+")
NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?%?")
TIME_KEYS = {"seconds", "mean_eval_seconds"}


def same_numbers_in_text(committed: str, fresh: str, where: str) -> None:
    a, b = TIMES.sub("<time>", committed), TIMES.sub("<time>", fresh)
    assert NUMBER.split(a) == NUMBER.split(b), f"{where}: text differs:\n{a[:600]}\n---\n{b[:600]}"
    for x, y in zip(NUMBER.findall(a), NUMBER.findall(b)):
        if x == y:
            continue
        vx, vy = float(x.rstrip("%")), float(y.rstrip("%"))
        if "e-" in x and max(abs(vx), abs(vy)) <= 1e-5:
            continue  # a measured float rounding error
        digits = x.rstrip("%").partition("e")[0].partition(".")[2]
        if not digits and not x.endswith("%"):
            raise AssertionError(f"{where}: count {x} is now {y}")
        unit = 10.0 ** -len(digits) * (10.0 ** int(x.partition("e")[2]) if "e" in x else 1.0)
        assert abs(vx - vy) <= unit * 1.000001, f"{where}: {x} is now {y}"


def decoded(value):
    """plotly's typed arrays ({"dtype": "f8", "bdata": base64, "shape": ...}) as numpy arrays."""
    if isinstance(value, dict) and "bdata" in value and "dtype" in value:
        a = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        return a.reshape([int(n) for n in str(value["shape"]).split(",")]) if "shape" in value else a
    return value


def assert_same(committed, fresh, where: str) -> None:
    committed, fresh = decoded(committed), decoded(fresh)
    if isinstance(committed, np.ndarray) or isinstance(fresh, np.ndarray):
        a, b = np.asarray(committed, dtype=float), np.asarray(fresh, dtype=float)
        assert a.shape == b.shape, f"{where}: shape {a.shape} is now {b.shape}"
        scale = float(np.nanmax(np.abs(a))) if a.size and not np.isnan(a).all() else 0.0
        assert np.allclose(a, b, rtol=1e-4, atol=1e-5 * scale, equal_nan=True), \
            f"{where}: max difference {np.nanmax(np.abs(a - b))} (largest value {scale})"
    elif isinstance(committed, dict):
        assert isinstance(fresh, dict) and committed.keys() == fresh.keys(), \
            f"{where}: keys {sorted(committed)} are now {sorted(fresh) if isinstance(fresh, dict) else fresh}"
        for key in committed:
            if key not in TIME_KEYS:
                assert_same(committed[key], fresh[key], f"{where}.{key}")
    elif isinstance(committed, list):
        assert isinstance(fresh, list) and len(committed) == len(fresh), f"{where}: length differs"
        for i, (x, y) in enumerate(zip(committed, fresh)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(committed, str):
        assert isinstance(fresh, str), f"{where}: {committed!r} is now {fresh!r}"
        same_numbers_in_text(committed, fresh, where)
    elif isinstance(committed, float) or isinstance(fresh, float):
        assert fresh == pytest.approx(committed, rel=1e-4, abs=1e-6), f"{where}: {committed} is now {fresh}"
    else:
        assert committed == fresh, f"{where}: {committed!r} is now {fresh!r}"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_regression_notebooks_reproduce_committed_outputs(name, run_dir):
    """A fresh run of the committed notebook (as `make notebooks` runs it) reproduces its committed outputs:
    every figure's data, every printed number and table, the summary; within the tolerances above only."""
    if _pair_params():
        pytest.skip("the committed outputs are the organism's; LFM_NOTEBOOK_BASE/TUNED run another pair")
    committed = nbformat.read(NB_DIR / name, as_version=4)
    fresh = nbexec.tidy(copy.deepcopy(execute(name, run_dir)[0]))
    assert [c.source for c in fresh.cells] == [c.source for c in committed.cells]
    for i, (c, f) in enumerate(zip(committed.cells, fresh.cells)):
        if c.cell_type == "code":
            assert len(c.outputs) == len(f.outputs), f"{name} cell {i}: {len(c.outputs)} outputs, now {len(f.outputs)}"
            for j, (co, fo) in enumerate(zip(c.outputs, f.outputs)):
                assert_same(dict(co), dict(fo), f"{name} cell {i} output {j}")


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
