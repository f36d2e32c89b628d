"""Sweep a grid of merge recipes on one pair: merge in memory (ResidentPair), evaluate (harness), one table.

    run_sweep(base, tuned, grid(["neu-s-ties", "ties"], densities=[.1, .2], neurons=[0, .3]),
              suite="organism", out_dir="sweeps/organism")

Writes into ``out_dir``:
    points.jsonl    one JSON row per finished point, appended as each finishes (the resume log)
    results.csv     the table (one row per point; columns below), rewritten after every point
    results.json    {"meta": {...}, "rows": [...]} with the same rows
    results.parquet when pyarrow is installed
    meta.json       base, tuned, suite, limit: a resumed sweep must match them

Row columns: point (id: hash of the recipe), kind ('point' | 'reference'), label, method, every Recipe
field (density, neurons, suppress, restore, alpha, ...), LA, VA, OA, one ``task:<label>`` column per task,
seconds; with ``log_items``, one ``items:<label>`` column per task scored item by item: a string of '0'/'1',
one character per item in the task's order (the same items for every point: what paired statistics,
``lfm.evaluate.paired``, compare). References (``references=True``): 'base' (the base LLM, language tasks only), 'tuned' (the MLLM
as trained) and 'hard' (hard-merge), the anchors of the paper's trade-off plots.

Executors: 'local' evaluates the points one after another in this process on one loaded model;
'ray' runs them on Ray actors (one per GPU when GPUs exist, ``num_gpus=1`` each; else ``workers`` CPU
actors), each holding its own loaded model and ResidentPair, results gathered into the same table.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from pathlib import Path

from tqdm.auto import tqdm

from lfm.evaluate.quiet import bars_to_file
from lfm.evaluate.suites import Suite, check_datasets, get_suite
from lfm.methods.recipe import Recipe, read_number
from lfm.methods.registry import settings_in_effect

REFERENCES = ("base", "tuned", "hard")
REFERENCE_RECIPES = {"hard": Recipe(method="hard")}  # the references that are merges (base and tuned are models)


# --------------------------------------------------------------------------------------- the grid

def parse_values(spec: str | float | list) -> list[float]:
    """'0.05:0.9:0.05' (start:stop:step, stop included) or '0.1,0.2,0.3' (or '10%,20%') or a number/list ->
    sorted floats."""
    if isinstance(spec, (int, float)):
        return [float(spec)]
    if isinstance(spec, (list, tuple)):
        return sorted({float(v) for v in spec})
    text = str(spec).strip()

    def number(part: str) -> float:  # '0.2' or '20%', as a recipe's flags and YAML files read it
        value = read_number(part)
        if value is None:
            raise ValueError
        return value

    try:
        if ":" in text:
            parts = [number(p) for p in text.split(":")]
            if len(parts) != 3 or parts[2] <= 0 or parts[1] < parts[0]:
                raise ValueError
            start, stop, step = parts
            n = int(math.floor((stop - start) / step + 1e-9)) + 1
            return [round(start + i * step, 10) for i in range(n)]
        return sorted({number(p) for p in text.split(",") if p.strip()})
    except ValueError:
        raise ValueError(f"cannot read {spec!r} as values: use start:stop:step (e.g. 0.05:0.9:0.05) "
                         f"or a comma list (e.g. 0.1,0.2)") from None


def grid(methods: list[str], densities=(0.2,), neurons=(0.3,), **fields) -> list[Recipe]:
    """Every (method, K, M) recipe; K and M only for methods whose merge they change. No duplicates.

    Args:
        methods: method names or paper aliases ('neu-s-ties', 'ties', 'ta', 'hard', ...).
        densities, neurons: K and M values. fields: other Recipe fields (alpha, restore, gamma, ...).
    """
    out, seen = [], set()
    for m in methods:
        probe = Recipe.from_name(m, **fields)
        in_effect = settings_in_effect(probe)
        ks = densities if "density" in in_effect else [probe.density]
        ms = neurons if "neurons" in in_effect else [probe.neurons]
        for k in ks:
            for mm in ms:
                r = Recipe.from_name(m, **{**fields, "density": k, "neurons": mm})
                key = json.dumps(r.to_dict(), sort_keys=True)
                if key not in seen:
                    seen.add(key)
                    out.append(r)
    return out


def point_id(recipe: Recipe | str) -> str:
    """A stable id: the recipe's fields hashed (sha1), or the reference name."""
    if isinstance(recipe, str):
        return recipe
    return hashlib.sha1(json.dumps(recipe.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


# --------------------------------------------------------------------------------------- one point

class PointRunner:
    """Evaluates points on one loaded model whose LM weights are replaced per point: the one home of
    "merge in memory, then run the suite" (``lfm sweep`` and the explorer's live evaluation both use it).

    Args:
        resident: a ``ResidentPair`` already holding (base, tuned) (the explorer's); default: opened here.
    """

    def __init__(self, base, tuned, suite: str | Suite, *, limit: int | None = None, device: str = "cpu",
                 batch_size: int = 32, progress: bool = False, points: list | None = None, resident=None,
                 log_items: bool = False):
        from lfm.resident import ResidentPair
        from lfm.cancel import watch
        from lfm.evaluate.models import load_eval_model

        self.base, self.tuned = str(base), str(tuned)
        self.suite, self.limit, self.device, self.batch_size = get_suite(suite), limit, device, batch_size
        self.log_items = log_items
        self.em = load_eval_model(tuned, device=device, processor_required=bool(self.suite.visual))
        watch(self.em.model)  # a caller's cancel_when can stop an evaluation nobody waits for (the explorer's)
        # a pair opened here stays on the CPU (memory-mapped); merged tensors are staged there and copied to the
        # model on ``device`` (the memory check counts the staging tensor)
        self.resident = resident if resident is not None else ResidentPair(base, tuned, progress=progress,
                                                                           model_device=device)
        # every top-K set the points need, all Ks of a tensor from one histogram of its |delta| key
        self.resident.prepare([p for p in points or [] if isinstance(p, Recipe)], progress=progress)
        self._lock = threading.Lock()  # one apply + evaluate at a time on the one model
        self._holds: Recipe | str | None = None  # the point whose weights the model holds (only this class writes them)

    def evaluate(self, point: Recipe | str, *, limit: int | None, log_samples: bool = False, skip: int = 0) -> dict:
        """``lfm.evaluate.harness.evaluate`` of one point: a Recipe merged into the loaded model, 'tuned' (the
        MLLM as trained), 'hard' (hard-merge) or 'base' (the base LLM, loaded for this call). ``skip``: the rest
        after an evaluation on `skip` items per task (``harness.combine`` joins them)."""
        from lfm.evaluate.harness import evaluate

        kw = dict(limit=limit, skip=skip, batch_size=self.batch_size, log_samples=log_samples, check=False)
        if point == "base":
            return evaluate(self.base, self.suite, device=self.device, **kw)
        with self._lock:
            if point != self._holds:  # the same point again (the rest after its first items): already in place
                self._holds = None  # until the weights are all written
                if point == "tuned":
                    self.resident.restore_tuned(self.em.model)
                else:
                    self.resident.apply(self.em.model, REFERENCE_RECIPES.get(point, point))
                self._holds = point
            return evaluate(self.em, self.suite, **kw)

    def run(self, point: Recipe | str) -> dict:
        """The sweep row of one point (``make_row``)."""
        started = time.perf_counter()
        res = self.evaluate(point, limit=self.limit, log_samples=self.log_items)
        row = make_row(point, res, time.perf_counter() - started)
        if self.log_items:
            row.update({f"items:{k}": v for k, v in item_outcomes(self.suite, res).items()})
        return row


def item_outcomes(suite: Suite, res: dict) -> dict[str, str]:
    """{task label: '0'/'1' per item in doc order} from an evaluation's logged samples (the tasks whose
    samples carry a numeric score: accuracy tasks, not perplexities)."""
    out = {}
    for spec in suite.language + suite.visual:
        samples = sorted(res.get("samples", {}).get(spec.task, []), key=lambda x: x["doc_id"])
        if samples and all(x["score"] is not None for x in samples):
            out[spec.label] = "".join("1" if x["score"] > 0.5 else "0" for x in samples)
    return out


def make_row(point: Recipe | str, res: dict, seconds: float) -> dict:
    if isinstance(point, str):
        row = {"point": point, "kind": "reference", "label": {"base": "base LLM", "tuned": "tuned MLLM",
                                                              "hard": "hard-merge"}[point], "method": point}
    else:
        d = point.to_dict()
        d["keep_base"], d["keep_tuned"] = json.dumps(d["keep_base"]), json.dumps(d["keep_tuned"])
        row = {"point": point_id(point), "kind": "point", "label": point.label, **d}
    row.update({"LA": res["LA"], "VA": res["VA"], "OA": res["OA"]})
    row.update({f"task:{k}": v for k, v in res["tasks"].items()})
    row["seconds"] = round(seconds, 3)
    return row


# --------------------------------------------------------------------------------------- the table

class ResultsTable:
    """The sweep's rows on disk: an append-only JSONL log + CSV/JSON(/parquet) snapshots."""

    def __init__(self, out_dir: str | Path, meta: dict, *, resume: bool):
        self.dir = Path(out_dir)
        self.log = self.dir / "points.jsonl"
        self.meta = meta
        self.rows: list[dict] = []
        if self.log.exists() and self.log.stat().st_size > 0:
            if not resume:
                raise FileExistsError(f"{self.dir} already holds sweep results ({self.log.name}); pass --resume to "
                                      f"continue that sweep, or choose another --out")
            old = json.loads((self.dir / "meta.json").read_text()) if (self.dir / "meta.json").exists() else {}
            diff = {k: (old.get(k), v) for k, v in meta.items() if k in old and old.get(k) != v}
            if diff:
                raise ValueError(f"cannot resume {self.dir}: it was run with different settings "
                                 f"{ {k: f'{a!r} (then) vs {b!r} (now)' for k, (a, b) in diff.items()} }")
            for line in self.log.read_text().splitlines():
                if line.strip():
                    try:
                        self.rows.append(json.loads(line))
                    except json.JSONDecodeError:
                        pass  # a line cut by a crash: that point is simply redone
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")

    @property
    def done(self) -> set[str]:
        return {r["point"] for r in self.rows}

    def add(self, row: dict) -> None:
        self.rows.append(row)
        with open(self.log, "a") as f:
            f.write(json.dumps(row) + "\n")
        self.write()

    def frame(self):
        import pandas as pd

        df = pd.DataFrame(self.rows)
        first = [c for c in ("point", "kind", "label", "method", "density", "neurons", "suppress", "restore",
                             "alpha", "LA", "VA", "OA") if c in df.columns]
        return df[first + [c for c in df.columns if c not in first]] if len(df) else df

    def write(self) -> None:
        df = self.frame()
        _atomic_write(self.dir / "results.csv", df.to_csv(index=False))
        _atomic_write(self.dir / "results.json", json.dumps({"meta": self.meta, "rows": self.rows}, indent=1) + "\n")
        try:
            import pyarrow  # noqa: F401

            df.to_parquet(self.dir / "results.parquet", index=False)
        except ImportError:
            pass


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def load_results(path: str | Path):
    """A sweep table as a pandas DataFrame, from its folder, results.csv, results.json or points.jsonl."""
    import pandas as pd

    p = Path(path)
    if p.is_dir():
        p = p / "results.json" if (p / "results.json").exists() else p / "points.jsonl"
    if not p.exists():
        raise FileNotFoundError(f"no sweep results at {path} (expected results.json / results.csv / points.jsonl)")
    if p.suffix == ".csv":
        return pd.read_csv(p)
    if p.suffix == ".jsonl":
        return pd.DataFrame([json.loads(x) for x in p.read_text().splitlines() if x.strip()])
    return pd.DataFrame(json.loads(p.read_text())["rows"])


# --------------------------------------------------------------------------------------- run

def run_sweep(base, tuned, recipes: list[Recipe], *, suite: str | Suite = "organism", out_dir: str | Path,
              executor: str = "local", resume: bool = False, limit: int | None = None, references: bool = True,
              device: str = "cpu", workers: int | None = None, batch_size: int = 32, progress: bool = True,
              log_items: bool = False):
    """Evaluate every recipe (and the references) not already in ``out_dir``; returns the table (DataFrame).
    ``log_items``: also log each point's per-item outcomes (``items:<label>`` columns; local executor)."""
    suite_obj = get_suite(suite)
    check_datasets(suite_obj)
    meta = {"base": str(Path(base).resolve()), "tuned": str(Path(tuned).resolve()), "suite": suite_obj.name,
            "limit": limit}
    table = ResultsTable(out_dir, meta, resume=resume)
    points: list[Recipe | str] = (list(REFERENCES) if references else []) + list(recipes)
    todo = [p for p in points if point_id(p) not in table.done]
    bar = tqdm(total=len(points), initial=len(points) - len(todo), desc="sweep", unit="point", disable=not progress)
    if executor == "local":
        with bars_to_file(table.dir / "harness.log"):
            runner = PointRunner(base, tuned, suite_obj, limit=limit, device=device, batch_size=batch_size,
                                 points=todo, log_items=log_items) if todo else None
        for p in todo:
            with bars_to_file(table.dir / "harness.log"):
                row = runner.run(p)
            table.add(row)
            bar.update(1)
    elif executor == "ray":
        if log_items:
            raise ValueError("log_items runs with executor 'local' only")
        for row in _run_ray(base, tuned, suite_obj, todo, limit=limit, device=device, workers=workers,
                            batch_size=batch_size):
            table.add(row)
            bar.update(1)
    else:
        raise ValueError(f"executor must be 'local' or 'ray', got {executor!r}")
    bar.close()
    table.write()
    return table.frame()


def _run_ray(base, tuned, suite: Suite, todo: list, *, limit, device, workers, batch_size):
    """Yield rows as Ray actors finish points. Starts (and then stops) a local Ray runtime if none is running."""
    if not todo:
        return
    try:
        import ray
        from ray.util import ActorPool
    except ImportError as e:
        raise RuntimeError("--executor ray needs Ray: pip install 'lfm[ray]'") from e
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        n_gpus = int(ray.cluster_resources().get("GPU", 0))
        n = min(len(todo), n_gpus if n_gpus else (workers or 1))
        opts = {"num_gpus": 1, "num_cpus": 1} if n_gpus else {"num_cpus": 1}
        actor_cls = ray.remote(**opts)(_RayPointRunner)
        payload = [p if isinstance(p, str) else p.to_dict() for p in todo]
        actors = [actor_cls.remote(str(base), str(tuned), suite, limit, "cuda" if n_gpus else device, batch_size,
                                   payload) for _ in range(n)]
        pool = ActorPool(actors)
        yield from pool.map_unordered(lambda a, p: a.run.remote(p), payload)
    finally:
        if started_here:
            ray.shutdown()


class _RayPointRunner:
    """A Ray actor: one loaded model + ResidentPair, evaluating the points it is sent."""

    def __init__(self, base, tuned, suite, limit, device, batch_size, points):
        points = [p if isinstance(p, str) else Recipe.from_dict(p) for p in points]
        self.runner = PointRunner(base, tuned, suite, limit=limit, device=device, batch_size=batch_size,
                                  points=points)

    def run(self, point):
        return self.runner.run(point if isinstance(point, str) else Recipe.from_dict(point))
