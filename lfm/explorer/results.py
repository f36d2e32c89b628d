"""The results folder: everything the explorer shows, precomputed once for a pair too big to merge live.

`lfm precompute --base B --tuned T --out RESULTS` writes (`write_results`):

    meta.json              format, base, tuned, lfm version, attention shape (heads, kv heads, head_dim),
                           the K grid and M grid used below
    scores.safetensors     C(i) for every linear-module tensor (lfm.score.save_scores; summary in metadata)
    suppressed.safetensors C'(i) after TIES suppression at each grid K, keys "K=<k>/<tensor name>"
    summary.csv            per-tensor tail statistics (lfm.score.summary_rows)
    sweep.csv              LA / VA / OA per merge (columns: curve, label, method, suppress, restore, density,
                           neurons, alpha, LA, VA, OA); reference rows have curve 'reference'
    generations.csv        answers per stage on the multiple-choice items (columns: stage, density, neurons,
                           id, task, question, choices, answer, image, generated, category)
    images/                the items' images (thumbnails in the generations table)

sweep.csv and generations.csv exist when the pair could be evaluated (`lfm.explorer.live`: the organism,
or any pair with its suite, `--suite`). `ResultsFolder` reads the folder back with the same
interface as `lfm.explorer.live.LivePair` for the neuron views; K snaps to the nearest grid value.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from lfm._version import __version__
from lfm.checkpoint import contained_path, save_small_tensors
from lfm.explorer import DEFAULT_DENSITIES, DEFAULT_NEURONS
from lfm.methods import Recipe, stage_recipes, suppress, tensor_generator
from lfm.methods.registry import METHODS, NEURON_FUSION
from lfm.neurons import neuron_scores
from lfm.pair import open_pair, text_config
from lfm.methods.math import final_scores
from lfm.resident import TensorView
from lfm.score import linear_deltas, save_scores, summary_rows

FORMAT = "lfm-results/1"
SUPPRESSOR = "ties"  # the suppressor whose C'(i) a results folder stores (the paper's main one)
GRID_TOLERANCE = 1e-6  # a setting is precomputed when its K, M and alpha match a grid row this closely
SWEEP_COLUMNS = ("curve", "label", "method", "suppress", "restore", "density", "neurons", "alpha", "LA", "VA", "OA")


def _k_key(k: float) -> str:
    return f"K={k:g}"


# ----------------------------------------------------------------------------------------------
# Writing

def write_scores(base, tuned, out: Path, densities=DEFAULT_DENSITIES, *, device="cpu", progress=True) -> dict:
    """Stream the pair once: C(i) and C'(i) (TIES suppression at each K of `densities`) per linear tensor.
    Writes meta.json, scores.safetensors, suppressed.safetensors and summary.csv. Returns meta."""
    pair = open_pair(base, tuned)
    cfg = text_config(pair.tuned.config)
    scores, suppressed = {}, {}
    for e, axis, delta in linear_deltas(pair, device, progress):
        scores[e.name] = neuron_scores(delta, axis).cpu()
        sorted_abs = torch.sort(delta.abs().flatten(), descending=True).values
        for k in densities:
            s, _ = suppress(delta, Recipe(method=NEURON_FUSION, suppress=SUPPRESSOR, density=k), sorted_abs)
            suppressed[f"{_k_key(k)}/{e.name}"] = neuron_scores(s, axis).cpu()
        del delta, sorted_abs
    n_heads = cfg.get("num_attention_heads")
    meta = {"format": FORMAT, "lfm_version": __version__, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            "base": str(Path(base).resolve()), "tuned": str(Path(tuned).resolve()),
            "description": pair.describe(), "n_layers": cfg.get("num_hidden_layers"), "n_heads": n_heads,
            "n_kv_heads": cfg.get("num_key_value_heads") or n_heads,
            "head_dim": cfg.get("head_dim") or (cfg["hidden_size"] // n_heads if n_heads else None),
            "densities": list(densities)}
    out.mkdir(parents=True, exist_ok=True)
    save_scores(scores, out / "scores.safetensors", {"base": meta["base"], "tuned": meta["tuned"]})
    save_small_tensors(suppressed, out / "suppressed.safetensors")
    pd.DataFrame(summary_rows(scores)).to_csv(out / "summary.csv", index=False)
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


# Recipe settings a results folder's rows do not hold: `lfm precompute` evaluates them at their defaults only
UNRECORDED = ("gamma", "epsilon", "rescale", "seed", "others", "keep_base", "keep_tuned")


def sweep_recipes(densities=DEFAULT_DENSITIES, neurons=DEFAULT_NEURONS, alphas=(0.3, 0.5, 0.7, 0.9)) -> list[tuple[str, Recipe]]:
    """(curve, recipe) of the trade-off plot: TIES over K, Neu-S-TIES / Neu-P-TIES over K at M=0.3,
    Neu-S-TIES over M at K=0.2, TaskA over alpha (the paper's Figures 6-8 families)."""
    points = [("TIES over K", Recipe(method="ties", density=k)) for k in densities]
    for tag, restore in (("S", "rescale"), ("P", "replace")):
        points += [(f"Neu-{tag}-TIES over K (M=0.3)", Recipe(density=k, neurons=0.3, restore=restore))
                   for k in densities]
    points += [("Neu-S-TIES over M (K=0.2)", Recipe(density=0.2, neurons=m)) for m in neurons]
    points += [("TaskA over alpha", Recipe(method="task_arithmetic", alpha=a)) for a in alphas]
    return points


def sweep_row(curve: str, recipe: Recipe | None, result: dict, label: str | None = None) -> dict:
    r = recipe.to_dict() if recipe is not None else {}
    return {"curve": curve, "label": label or (recipe.label if recipe else curve), "method": r.get("method", ""),
            "suppress": r.get("suppress", ""), "restore": r.get("restore", ""), "density": r.get("density"),
            "neurons": r.get("neurons"), "alpha": r.get("alpha"),
            "LA": result.get("LA"), "VA": result.get("VA"), "OA": result.get("OA")}


def generation_rows(stage: str, recipe: Recipe | None, result: dict, images: "ImageCopies") -> list[dict]:
    """One row per visual answer of an evaluation (`result['answers']`), tagged with the stage and K/M; each
    answer's image copied into the folder (`images`)."""
    k = recipe.density if recipe is not None else None
    m = recipe.neurons if recipe is not None else None
    return [{"stage": stage, "density": k, "neurons": m, "id": a["id"], "task": a["task"],
             "question": a["question"], "choices": json.dumps(a["choices"]), "answer": a["answer"],
             "image": images.copy(a.get("image") or ""), "generated": a["generated"], "category": a["category"]}
            for a in result.get("answers", [])]


class ImageCopies:
    """The items' images copied into ``folder`` once each: ``copy(path)`` -> 'images/<name>' ('' for none)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.copied: dict[str, str] = {}

    def copy(self, path: str) -> str:
        if not path or not Path(path).is_file():
            return ""
        if path not in self.copied:
            name = Path(path).name
            if (self.folder / name).exists():  # two items' images of the same name: keep both
                name = f"{len(self.copied)}-{name}"
            shutil.copyfile(path, self.folder / name)
            self.copied[path] = f"{self.folder.name}/{name}"
        return self.copied[path]


def write_evaluations(live, out: Path, densities=DEFAULT_DENSITIES, neurons=DEFAULT_NEURONS, *,
                      items=None, progress=True) -> None:
    """Evaluate the sweep and the generation stages with a `LivePair` that can evaluate, on `items`
    (`live.eval_items(per_task)`). Writes sweep.csv, generations.csv and images/."""
    from dataclasses import replace

    rows, gens = [], []
    images = ImageCopies(out / "images")

    base_result = live.evaluate_base(items)
    rows.append(sweep_row("reference", None, base_result, "base"))
    tuned_result = live.evaluate(None, items)
    rows.append(sweep_row("reference", None, tuned_result, "tuned"))
    gens += generation_rows("tuned", None, tuned_result, images)
    hard = live.evaluate(Recipe(method="hard"), items)
    rows.append(sweep_row("reference", Recipe(method="hard"), hard, "hard-merge"))
    gens += generation_rows("hard", None, hard, images)
    points = sweep_recipes(densities, neurons)
    stage_points = [(k, m) for k in densities for m in neurons]
    bar = tqdm(total=len(points) + len(stage_points), desc="evaluating", disable=not progress)
    for curve, recipe in points:
        rows.append(sweep_row(curve, recipe, live.evaluate(recipe, items)))
        bar.update()
    for k, m in stage_points:
        recipe = replace(Recipe(), density=k, neurons=m)
        gens += generation_rows("suppress" if m == 0 else "restore", recipe, live.evaluate(recipe, items), images)
        bar.update()
    bar.close()
    pd.DataFrame(rows, columns=list(SWEEP_COLUMNS)).to_csv(out / "sweep.csv", index=False)
    pd.DataFrame(gens).to_csv(out / "generations.csv", index=False)
    meta = json.loads((out / "meta.json").read_text())
    meta["neurons"] = list(neurons)
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


# ----------------------------------------------------------------------------------------------
# Reading

class ResultsFolder:
    """A results folder, read as an ``lfm.explorer.source.Source`` (as `lfm.explorer.live.LivePair` is): its
    numbers are looked up, never computed."""

    can_evaluate = False  # nothing is evaluated here
    evaluation_off = ""  # ... but its numbers are shown
    draws_curves = True  # its sweep.csv

    def __init__(self, path: str | Path, *, progress=None):
        self.path = Path(path)
        meta_file = self.path / "meta.json"
        if not meta_file.is_file():
            raise FileNotFoundError(f"{self.path}: not a results folder (no meta.json); write one with "
                                    f"`lfm precompute --base B --tuned T --out {self.path}`")
        self.meta = json.loads(meta_file.read_text())
        if self.meta.get("format") != FORMAT:
            raise ValueError(f"{meta_file}: format {self.meta.get('format')!r}, expected {FORMAT!r}")
        if progress:
            progress(0, 2, "reading scores")
        self.scores = load_file(str(self.path / "scores.safetensors"))
        self.suppressed = load_file(str(self.path / "suppressed.safetensors"))
        if progress:
            progress(2, 2, "done")
        self.base, self.tuned = self.meta["base"], self.meta["tuned"]
        self.description = f"results folder {self.path}\n{self.meta.get('description', '')}"
        self.names = list(self.scores)
        self.n_heads, self.n_kv_heads = self.meta.get("n_heads"), self.meta.get("n_kv_heads")
        self.head_dim, self.n_layers = self.meta.get("head_dim"), self.meta.get("n_layers")
        self.densities = [float(k) for k in self.meta["densities"]]
        self.eval_error = "a results folder: evaluations come from its sweep.csv / generations.csv"
        sweep, gens = self.path / "sweep.csv", self.path / "generations.csv"
        self.sweep = pd.read_csv(sweep) if sweep.is_file() else None
        self.generations = pd.read_csv(gens) if gens.is_file() else None
        if self.generations is not None and "image" in self.generations:
            # an image is a file of the folder: a '../' or absolute path would show any file on the server
            self.generations["image"] = [str(contained_path(self.path, name, f"{gens}: image"))
                                         if isinstance(name, str) and name else ""
                                         for name in self.generations["image"]]

    def nearest_density(self, k: float) -> float:
        return min(self.densities, key=lambda d: abs(d - k))

    def view(self, name: str, recipe: Recipe) -> TensorView:
        """C(i), C'(i) at the nearest grid K, located neurons and C_final for TIES-based recipes."""
        from lfm.neurons import locate

        if recipe.sub_method != SUPPRESSOR:
            raise ValueError(f"this results folder holds TIES suppression only; pick TIES or Neu-*-TIES "
                             f"(got {recipe.label})")
        scores = self.scores[name]
        k = self.nearest_density(recipe.density)
        after = self.suppressed[f"{_k_key(k)}/{name}"]
        if METHODS[recipe.method].restores_neurons and recipe.neurons > 0:
            located = locate(scores, recipe.neurons, recipe.locate,
                             tensor_generator(recipe, name) if recipe.is_random else None)
        else:
            located = torch.zeros_like(scores, dtype=torch.bool)
        return TensorView(name, scores, after, located, final_scores(scores, after, located, recipe), k)

    @staticmethod
    def unrecorded(recipe: Recipe) -> list[str]:
        """The settings of `recipe` that change its merge but that a results folder does not record (its rows
        hold method, suppress, restore, K, M and alpha; every other setting at its default): [] when none.

        >>> ResultsFolder.unrecorded(Recipe(others="tuned", seed=3))  # seed: top-M locates without one
        ['others=tuned']
        """
        default = Recipe()
        recorded = replace(recipe, **{name: getattr(default, name) for name in UNRECORDED})
        return [part for part in recipe.label.split() if part not in recorded.label.split()]

    def _candidates(self, recipe: Recipe) -> pd.DataFrame:
        """Sweep rows of the same method (and suppress/restore/locate for Neuron-Fusion), with their distance
        to `recipe` in K, M and alpha (column 'dist'); none for a recipe with a setting the folder does not
        record (`unrecorded`)."""
        df = self.sweep
        rows = df[(df["method"] == recipe.method) & (df["curve"] != "reference")]
        if self.unrecorded(recipe):
            rows = rows.iloc[0:0]
        if METHODS[recipe.method].restores_neurons:
            rows = rows[(rows["suppress"] == recipe.suppress) & (rows["restore"] == recipe.restore)]
            if recipe.locate != "top":  # the precompute sweep locates top-M only
                rows = rows.iloc[0:0]
        dist = (rows["density"] - recipe.density).abs() + (rows["neurons"] - recipe.neurons).abs() \
            + (rows["alpha"] - recipe.alpha).abs()
        return rows.assign(dist=dist.fillna(0.0))

    def lookup(self, recipe: Recipe | None, label: str | None = None) -> dict | None:
        """LA/VA/OA of the sweep row of exactly `recipe` (same method, suppress, restore, K, M, alpha), or of a
        reference row by label ('base', 'tuned', 'hard-merge'); None when the folder has no such row
        (`nearest` names the closest one)."""
        if self.sweep is None:
            return None
        if label is not None:
            rows = self.sweep[self.sweep["label"] == label]
        else:
            rows = self._candidates(recipe)
            rows = rows[rows["dist"] < GRID_TOLERANCE]
        if rows.empty:
            return None
        r = rows.iloc[0]
        return {"LA": r["LA"], "VA": r["VA"], "OA": r["OA"], "label": r["label"]}

    def nearest(self, recipe: Recipe) -> str | None:
        """Label of the precomputed sweep row closest to `recipe` (same method family), or None."""
        if self.sweep is None:
            return None
        rows = self._candidates(recipe)
        if rows.empty:
            return None
        r = rows.loc[rows["dist"].idxmin()]
        try:  # the label is built here from the row's settings, never taken from the file's text
            return Recipe(method=r["method"], suppress=r["suppress"], restore=r["restore"], density=float(r["density"]),
                          neurons=float(r["neurons"]), alpha=float(r["alpha"])).label
        except (TypeError, ValueError):
            return None

    def nearest_stage(self, recipe: Recipe) -> str | None:
        """'K=<k> M=<m>' of the precomputed restore-stage answers closest to `recipe`, or None."""
        if self.generations is None:
            return None
        g = self.generations[self.generations["stage"] == "restore"]
        if g.empty:
            return None
        dist = (g["density"] - recipe.density).abs() + (g["neurons"] - recipe.neurons).abs()
        r = g.loc[dist.idxmin()]
        try:  # the label is built here from the row's numbers, never taken from the file's text
            return Recipe(density=float(r["density"]), neurons=float(r["neurons"])).label
        except (TypeError, ValueError):
            return None

    # -- the Source operations (lfm.explorer.source) ----------------------------------------------

    def view_note(self, recipe: Recipe) -> str:
        """'' when the K grid holds recipe's K; else which K its C'(i) are from."""
        k = self.nearest_density(recipe.density)
        return "" if abs(k - recipe.density) < 1e-6 else f"C'(i) not precomputed at K={recipe.density:g}: nearest is K={k:g}"

    def evaluation(self, recipe: Recipe | None, per_task: int = 0) -> dict | None:
        """The sweep row of exactly ``recipe`` (None: the tuned model's); the folder's item count, whatever
        ``per_task``."""
        return self.lookup(recipe) if recipe is not None else self.lookup(None, label="tuned")

    def seconds(self, per_task: int) -> float | None:
        return None  # looked up, never evaluated

    def missing_note(self, recipe: Recipe) -> str:
        """'not precomputed: nearest is <label>', or what else keeps ``recipe`` out of the folder."""
        if self.sweep is None:
            return "not precomputed: this results folder has no sweep.csv"
        unrecorded = self.unrecorded(recipe)
        if unrecorded:
            return f"not precomputed: `lfm precompute` evaluates {unrecorded[0].split('=')[0]} at its default only"
        nearest = self.nearest(recipe)
        return f"not precomputed: nearest is {nearest}" if nearest else f"not precomputed: no {recipe.label.split()[0]} rows"

    def reference(self, label: str, per_task: int = 0) -> dict | None:
        return self.lookup(None, label=label)

    def curves(self, per_task: int = 0, progress=None) -> pd.DataFrame | None:
        return None if self.sweep is None else self.sweep[self.sweep["curve"] != "reference"]

    def answers_note(self, recipe: Recipe) -> str:
        """Why the folder has no per-item answers for ``recipe``'s stages ('' when it has them)."""
        try:
            stage_recipes(recipe)
        except ValueError:
            return ""  # no stages at all: the stage line says why
        unrecorded = self.unrecorded(recipe)
        if unrecorded:
            return f"answers not precomputed: `lfm precompute` answers at the default {unrecorded[0].split('=')[0]} only"
        nearest = self.nearest_stage(recipe)
        return f"answers not precomputed: nearest is {nearest}" if nearest else "no generations.csv in this folder"

    def stage_answers(self, stage: str, recipe: Recipe, per_task: int = 0) -> list[dict] | None:
        """Stored answers of `stage` at exactly recipe's K (and M for 'restore'); None if not precomputed."""
        if self.generations is None:
            return None
        g = self.generations[self.generations["stage"] == stage]
        if g.empty or self.unrecorded(recipe):
            return None
        if stage in ("suppress", "restore"):
            default = Recipe()  # precompute stores the stages of Neu-S-TIES (top-M, alpha 1) only
            if (recipe.method, recipe.suppress, recipe.locate, recipe.alpha) != (
                    default.method, default.suppress, default.locate, default.alpha) or (
                    stage == "restore" and recipe.restore != default.restore):
                return None
            dist = (g["density"] - recipe.density).abs()
            if stage == "restore":
                dist = dist + (g["neurons"] - recipe.neurons).abs()
            g = g[dist < GRID_TOLERANCE]
            if g.empty:
                return None
        out = []
        for r in g.to_dict("records"):
            r["choices"] = json.loads(r["choices"])
            out.append(r)
        return out
