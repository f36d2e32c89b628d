"""Execute the notebooks on the embedded organism and commit them with their outputs (`make notebooks`).

    python notebooks/execute.py [NAME.ipynb ...]        # default: all four, written back in place

Each notebook runs top to bottom with papermill and its own default parameters (the organism, the full
sweeps), exactly as `tests/test_notebooks.py` re-runs it to compare against the committed outputs. The
executed notebook is then tidied so that it stays small and its diff shows only what changed:

* papermill's and nbclient's run metadata (timestamps, durations, the Python version) is dropped;
* widget state is not kept (plotly's FigureWidget stores all of plotly.js, ~5 MB): a widget output keeps
  one line saying to run the cell, which is what JupyterLab shows without a kernel anyway;
* plotly figures stay plotly JSON (interactive in JupyterLab, and the data the regression test compares),
  with their template cut to the parts that style what the figure draws: the template's per-trace-type
  defaults for trace types the figure has no trace of, and its 3D / polar / ternary / geo / map axes, are
  dropped (~7 KB of the ~9 KB of a small figure). plotly.js applies exactly those parts and no others, so
  the figure renders the same;
* the folder lfm is installed in (a checkout's path: /home/you/lfm/lfm/...) is written `<lfm>`, so the committed
  outputs say nothing of the machine that ran them and a run in another checkout compares equal.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat

NB_DIR = Path(__file__).resolve().parent
NOTEBOOKS = ("01_neuron_changes.ipynb", "02_merge_tradeoffs.ipynb", "03_generation_failures.ipynb",
             "04_ffn_key_value_memories.ipynb")
TIMEOUT_S = 600  # per cell
START_TIMEOUT_S = 300  # the kernel's start (papermill's default 60 s is too short on a busy 2-core machine)
PLOTLY = "application/vnd.plotly.v1+json"
WIDGET = "application/vnd.jupyter.widget-view+json"
WIDGET_NOTE = ("[live widgets: run this cell (JupyterLab: `make lab`) to use them; widget state is not saved in "
               "the committed notebook]")
# template layout keys that style subplot kinds these figures can only have if their layout names them
SUBPLOT_KINDS = ("geo", "map", "mapbox", "polar", "scene", "smith", "ternary")


def execute(name: str, out: Path, parameters: dict | None = None) -> nbformat.NotebookNode:
    """Run notebook `name` (in notebooks/, its working directory) with papermill into `out`; returns it.
    parameters: papermill overrides (None: the notebook's defaults, i.e. the organism)."""
    import papermill

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    papermill.execute_notebook(str(NB_DIR / name), str(out), parameters=parameters or None, kernel_name="python3",
                               cwd=str(NB_DIR), progress_bar=False, execution_timeout=TIMEOUT_S,
                               start_timeout=START_TIMEOUT_S)
    return nbformat.read(out, as_version=4)


def trim_template(fig: dict) -> dict:
    """The plotly figure `fig` (JSON) with its layout.template cut to what styles this figure (see above)."""
    template = fig.get("layout", {}).get("template")
    if not template:
        return fig
    types = {trace.get("type", "scatter") for trace in fig.get("data", [])}
    template["data"] = {kind: v for kind, v in template.get("data", {}).items() if kind in types}
    used = {key.rstrip("0123456789") for key in fig["layout"]}  # "polar2" -> "polar"
    for kind in SUBPLOT_KINDS:
        if kind not in used:
            template.get("layout", {}).pop(kind, None)
    return fig


def without_install_path(text: str) -> str:
    """`text` with the folder lfm is installed in written `<lfm>` (module docstring).

        >>> import lfm
        >>> without_install_path(str(Path(lfm.__file__).parent / "data" / "organism"))
        '<lfm>/data/organism'
    """
    import lfm

    return text.replace(str(Path(lfm.__file__).resolve().parent), "<lfm>")


def tidy(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Drop run metadata and widget state, shrink plotly templates, hide the install path (module docstring);
    in place."""
    nb.metadata.pop("papermill", None)
    nb.metadata.pop("widgets", None)
    nb.metadata["language_info"] = {"name": "python"}
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        if cell.metadata.get("tags") == []:
            del cell.metadata["tags"]
        for output in cell.get("outputs", []):
            if "text" in output:  # a stream
                output["text"] = without_install_path(output["text"])
            data = output.get("data", {})
            for kind in ("text/plain", "text/html", "text/markdown"):
                if isinstance(data.get(kind), str):
                    data[kind] = without_install_path(data[kind])
            if WIDGET in data:
                output["data"] = {"text/plain": WIDGET_NOTE}
            if PLOTLY in data:
                trim_template(data[PLOTLY])
    return nb


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", default=list(NOTEBOOKS), help="notebooks to run (default: all four)")
    args = p.parse_args(argv)
    unknown = [n for n in args.names if n not in NOTEBOOKS]
    if unknown:
        print(f"error: {', '.join(unknown)}: not a notebook of notebooks/; choose from {', '.join(NOTEBOOKS)}",
              file=sys.stderr)
        return 2
    from papermill.exceptions import PapermillExecutionError

    for name in args.names:
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:  # a failed run leaves the committed notebook as it was
            try:
                nb = tidy(execute(name, Path(tmp) / name))
            except PapermillExecutionError as e:
                print(f"error: {name}: cell {e.exec_count} failed: {e.ename}: {e.evalue}; fix the notebook "
                      f"(or run it in JupyterLab to see the traceback) and run this again", file=sys.stderr)
                return 1
        nbformat.write(nb, NB_DIR / name)
        print(f"{name}: executed in {time.perf_counter() - started:.0f} s, "
              f"{(NB_DIR / name).stat().st_size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
