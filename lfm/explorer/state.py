"""ExplorerState: what the page is looking at (the pair, the merge knobs, the selection) and the
results that depend on it. Views read it and set it; they hold no data of their own.

Loading a pair and evaluating merges can take seconds: they run on the page's worker threads
(`session.PageSession`; inline with `background=False`, for tests and notebooks).
"""

from __future__ import annotations

import math
import re
import time
import traceback
from pathlib import Path

import pandas as pd
import param

from lfm.checkpoint import is_hub_id
from lfm.cancel import Superseded, cancel_when
from lfm.methods.recipe import Recipe
from lfm.methods.registry import METHODS, SEED_MAX, SETTINGS, settings_in_effect
from lfm.neurons import LINEAR_MODULES

from . import compute
from .figures import METRICS
from .session import PageSession, SessionClosed  # noqa: F401 (SessionClosed: what a closed page's work raises)

SOURCES = ("organism", "pair", "results")
# a burst of key presses (or a drag) evaluates where it stops: a request waits this long for a newer one
SETTLE_S = 0.15
# the neuron views follow a move's numbers by this beat (in a served page): the browser paints the numbers first
# (~0.5 s on 2 cores) instead of sharing the CPU with the views' tensors and figures (0.4-0.5 s sooner on the
# real pair: benchmarks/explorer_latency.py); a newer move cuts the beat short
VIEWS_AFTER_NUMBERS_S = 0.5
# a long live evaluation's numbers arrive twice: from the first FIRST_ITEMS items per task, then from all the page
# asks for, the Wilson interval narrowing (a newer move cancels the rest). Only when one evaluation of that size took
# PREVIEW_AFTER_S or more here: the preview costs a second harness call and a redraw while the rest computes (~2.4 s
# on the real pair, 2 cores), so on 8 items per task (~7 s) it came at 0.75x one evaluation and put the full
# numbers at 1.35x, against 1.18x without it (benchmarks/explorer_latency.py, docs/explorer.md)
FIRST_ITEMS = 2
PREVIEW_AFTER_S = 20.0
# the recipe settings the page holds: those with a URL key in the registry's settings table
RECIPE_PARAMS = tuple(name for name, setting in SETTINGS.items() if setting.url and name != "method")
# state parameter -> URL query key (shareable links: ?method=Neu-P-TIES&K=0.3&M=0.2&locate=random ...); the
# exported recipe carries the same settings as `explorer_view` and `explorer_link`
URL_PARAMS = {"method": "method", **{name: SETTINGS[name].url for name in RECIPE_PARAMS},
              "metric": "metric", "layer": "layer", "module": "module", "per_task": "per_task"}
_INTEGER = re.compile(r"[+-]?[0-9]{1,19}")  # ASCII digits only ('²'.isdigit() is True), at most int64's 19
_NUMBER = re.compile(r"[+-]?([0-9]{1,20}(\.[0-9]{0,20})?|\.[0-9]{1,20})([eE][+-]?[0-9]{1,3})?")


def setting_param(name: str) -> param.Parameter:
    """The state parameter of recipe setting ``name``: its default (Recipe), choices or slider range (SETTINGS)."""
    setting, default = SETTINGS[name], getattr(Recipe(), name)
    if setting.options() is not None:
        return param.Selector(default=default, objects=list(setting.options()), doc=setting.help)
    if setting.kind is int:  # the seed: a link holds any number of digits, the page takes 0 .. SEED_MAX
        return param.Integer(default=default, bounds=(0, SEED_MAX), doc=setting.help)
    widget = setting.widget
    return param.Number(default=default, bounds=widget.bounds if widget else None, step=widget.step if widget else None,
                        doc=setting.help)


def clean_query(query: dict[str, str]) -> dict[str, str]:
    """A link's settings as the page may apply them: the keys of URL_PARAMS only, each value parsed by its own
    parameter (a number within its bounds, clamped to them; a choice among its options); anything else is
    dropped. Idempotent: a clean query comes back unchanged (the gate redirects a page URL to its clean form).

        >>> clean_query({"K": "0.3", "M": "7", "seed": "99999999999999999999999", "foo": "\u00b2", "method": "x"})
        {'K': '0.3', 'M': '1.0'}
    """
    names = {key: name for name, key in URL_PARAMS.items()}
    clean = {}
    for key, text in query.items():
        p = ExplorerState.param[names[key]] if key in names else None
        if isinstance(p, param.Selector):
            if text in p.objects:
                clean[key] = text
            continue
        if isinstance(p, param.Integer):
            if not _INTEGER.fullmatch(text):
                continue
            value = int(text)
        elif isinstance(p, param.Number):
            if not _NUMBER.fullmatch(text) or not math.isfinite(float(text)):
                continue
            value = float(text)
        else:  # an unknown key: ignored
            continue
        low, high = p.bounds or (None, None)
        clamped = max(value, low) if low is not None else value
        clamped = min(clamped, high) if high is not None else clamped
        clean[key] = str(clamped)  # as the page writes its own links (K=0.3, seed=5): those come back unchanged
    return clean


def evaluation_sizes(per_task: int, seconds: float | None = None) -> tuple[int, ...]:
    """The items per task a live move is evaluated on, in the order its numbers arrive (0 = all items): the first
    FIRST_ITEMS, then all `per_task`, when one evaluation of that size took `seconds` >= PREVIEW_AFTER_S here (or
    none has been timed yet); else just `per_task` (also when that is no more than FIRST_ITEMS).

        >>> evaluation_sizes(8), evaluation_sizes(0, 95.0), evaluation_sizes(2), evaluation_sizes(1)
        ((2, 8), (2, 0), (2,), (1,))
        >>> evaluation_sizes(8, 7.0), evaluation_sizes(0, 0.2)
        ((8,), (0,))
    """
    more = per_task <= 0 or per_task > FIRST_ITEMS
    long = seconds is None or seconds >= PREVIEW_AFTER_S
    return (FIRST_ITEMS, per_task) if more and long else (per_task,)


def organism_paths() -> tuple[str, str]:
    from lfm.organism import ORGANISM_DIR

    return str(ORGANISM_DIR / "base"), str(ORGANISM_DIR / "tuned")


def _rounded(value):
    """A slider's value without its float noise (0.30000000000000004 -> 0.3): labels and links stay short."""
    return round(value, 4) if isinstance(value, float) else value


class ExplorerState(param.Parameterized):
    # -- which pair ---------------------------------------------------------------------------
    source_kind = param.Selector(default="organism", objects=list(SOURCES), doc="organism | pair | results")
    base_path = param.String(default="", doc="base LLM directory (source 'pair')")
    tuned_path = param.String(default="", doc="tuned MLLM directory (source 'pair')")
    suite_path = param.String(default="", doc="evaluation suite of the pair (source 'pair'): a suite YAML, "
                                              "'organism' or 'paper'; '' = the organism's evaluator or none")
    results_path = param.String(default="", doc="results folder written by `lfm precompute` (source 'results')")
    hub_download = param.Boolean(default=False, doc="a path 'org/name' that is no local directory is downloaded "
                                                    "from the Hugging Face hub (off: only when the user asks)")
    source = param.Parameter(default=None, doc="the loaded LivePair / ResultsFolder")
    loading = param.Boolean(default=False)
    progress = param.Integer(default=0, bounds=(0, 100))
    status = param.String(default="")
    error = param.String(default="", doc="the last error, shown in the page")

    # -- the merge: a method list entry (registry.METHODS.menu) and one parameter per RECIPE_PARAMS -----
    method = param.Selector(default="Neu-S-TIES", objects=list(METHODS.menu()), doc="an entry of the method list")
    density = setting_param("density")
    neurons = setting_param("neurons")
    restore = setting_param("restore")
    locate = setting_param("locate")
    alpha = setting_param("alpha")
    gamma = setting_param("gamma")
    epsilon = setting_param("epsilon")
    seed = setting_param("seed")
    others = setting_param("others")
    recipe = param.ClassSelector(class_=Recipe, default=Recipe())
    drawn_recipe = param.ClassSelector(class_=Recipe, default=Recipe(), doc="the recipe the neuron views draw: "
                                       "`recipe` once a burst of moves has stopped (SETTLE_S)")

    # -- what is looked at --------------------------------------------------------------------
    metric = param.Selector(default="top1_lift", objects=list(METRICS))
    layer = param.Integer(default=0, bounds=(0, None))
    module = param.Selector(default="up_proj", objects=list(LINEAR_MODULES))
    per_task = param.Integer(default=8, bounds=(0, None), doc="evaluation items per task (0 = all)")
    device = param.String(default="cpu", doc="where a live pair is held and evaluated (`lfm explore --device`); "
                                             "the server's choice, not a URL setting")

    # -- evaluation results (organism live, or a results folder) ------------------------------
    current = param.Dict(default=None, allow_None=True,
                         doc="LA/VA/OA of `current['recipe']` (its 'label' names it: maybe not `recipe` while pending)")
    pending = param.String(default="", doc="label of the recipe being evaluated ('' when nothing is computing)")
    answers_pending = param.String(default="", doc="label of the recipe whose stages' answers are computing")
    not_precomputed = param.String(default="", doc="results folder: why the current setting has no numbers")
    history = param.List(default=[], doc="evaluated points visited this session: dicts label, LA, VA")
    pinned = param.List(default=[], doc="recipes pinned for comparison: dicts recipe, current, generations")
    answers_note = param.String(default="", doc="results folder: why the current setting has no answers")
    generations_recipe = param.ClassSelector(class_=Recipe, default=None, allow_None=True,
                                             doc="the recipe `generations` was computed for")
    references = param.DataFrame(default=pd.DataFrame(columns=["label", "LA", "VA", "OA"]))
    sweep = param.DataFrame(default=None, allow_None=True)
    generations = param.DataFrame(default=None, allow_None=True)
    eval_status = param.String(default="")

    def __init__(self, *, background: bool = True, auto_sweep: bool = True, **params):
        super().__init__(**params)
        self.auto_sweep = auto_sweep
        self.session = PageSession(background)
        self.param.method.objects = list(METHODS.menu())  # methods registered since this module was imported
        self._update_recipe()

    # -- recipe ------------------------------------------------------------------------------

    # A method list entry that names a restore mode ('Neu-P-TIES') and the restore buttons show one choice:
    # either one moves the other.

    @param.depends("method", watch=True)
    def _method_sets_restore(self):
        preset = METHODS.menu()[self.method]
        if "restore" in preset:
            self.restore = preset["restore"]

    @param.depends("restore", watch=True)
    def _restore_sets_method(self):
        menu = METHODS.menu()
        if "restore" in menu[self.method]:
            wanted = {**menu[self.method], "restore": self.restore}
            self.method = next(entry for entry, preset in menu.items() if preset == wanted)

    @param.depends("method", *RECIPE_PARAMS, watch=True)
    def _update_recipe(self):
        menu = METHODS.menu()
        preset = menu[self.method]
        decided_by_entry = {key for entry in menu.values() for key in entry}  # method, suppress, restore
        fields = {name: _rounded(getattr(self, name)) for name in RECIPE_PARAMS if name not in decided_by_entry}
        # an entry's own restore comes from the restore buttons (kept in sync with it, above)
        fields.update({name: getattr(self, name) for name in preset if name in RECIPE_PARAMS})
        try:
            recipe = Recipe.from_dict({**preset, **fields})
        except ValueError as e:
            self.error = f"invalid setting: {e}"
            return
        if self.error.startswith("invalid setting"):
            self.error = ""
        # only a new recipe: a slider's float noise rounded off (``_round_sliders``) sets the same one again, and
        # param would run every watcher of `recipe` twice (the page redrawn and the evaluation restarted)
        if recipe != self.recipe:
            self.recipe = recipe

    @param.depends(*(name for name in RECIPE_PARAMS if SETTINGS[name].kind is float), watch=True)
    def _round_sliders(self):
        """A slider's float noise off the value itself (0.23000000000000004 -> 0.23): the URL the page syncs
        and a shared link carry the number its label shows."""
        for name in RECIPE_PARAMS:
            value = getattr(self, name)
            if _rounded(value) != value:
                setattr(self, name, _rounded(value))

    def recipe_yaml(self) -> str:
        """The current recipe as YAML, runnable as exported: `lfm merge --config recipe.yaml` writes the merge
        to its `out` (a folder named after the recipe, beside where it runs: edit it, or pass --out). Only the
        settings that change this merge are written (`lfm merge` warns about the others)."""
        import yaml

        from urllib.parse import urlencode

        view = {key: _rounded(getattr(self, name)) for name, key in URL_PARAMS.items()}
        in_effect = settings_in_effect(self.recipe)
        fields = {k: v for k, v in self.recipe.to_dict().items() if k == "method" or k in in_effect}
        out = "merged-" + re.sub(r"[^A-Za-z0-9.]+", "-", self.recipe.label).strip("-")
        data = {"base": self.source.base if self.source else "", "tuned": self.source.tuned if self.source else "",
                "out": out, "label": self.recipe.label, **fields, "explorer_view": view,
                "explorer_link": "/explorer?" + urlencode(view)}
        return yaml.safe_dump(data, sort_keys=False)

    # -- loading -----------------------------------------------------------------------------

    def source_args(self) -> tuple[str, str, str, str]:
        """(kind, path, tuned, suite): the arguments of `compute.open_source` (path: the base model's directory,
        or the results folder)."""
        if self.source_kind == "organism":
            base, tuned = organism_paths()
            return "pair", base, tuned, ""
        if self.source_kind == "pair":
            if not self.base_path.strip() or not self.tuned_path.strip():
                raise ValueError("enter both a base and a tuned model directory")
            paths = [str(Path(p.strip()).expanduser()) for p in (self.base_path, self.tuned_path)]
            for path in paths:
                if is_hub_id(path) and not self.hub_download:
                    raise ValueError(f"{path}: no such directory on this machine; to download it from the "
                                     f"Hugging Face hub, tick 'download from the hub'")
            suite = self.suite_path.strip()
            if suite and suite not in ("organism", "paper"):
                suite = str(Path(suite).expanduser())
                if not Path(suite).is_file():
                    raise ValueError(f"evaluation suite {suite}: no such file; enter a suite YAML (the real pair's "
                                     f"is <root>/suite/suite.yaml), 'organism', or leave it empty")
            return "pair", *paths, suite
        if not self.results_path.strip():
            raise ValueError("enter a results folder (written by `lfm precompute`)")
        return "results", str(Path(self.results_path.strip()).expanduser()), "", ""

    def load(self):
        """Open the selected pair (in the background when `background`). Errors go to `error`; the
        previously loaded pair stays in place."""
        try:
            args = self.source_args()
        except ValueError as e:
            self.error = str(e)
            return
        self.error, self.loading, self.progress, self.status = "", True, 0, f"loading {args[1]} ..."
        self.session.run(self._load_job, args, compute.Progress(self._progress))

    def _progress(self, done, total, message):
        try:
            self._set(progress=int(100 * done / max(total, 1)), status=message)
        except SessionClosed:  # the page left: the source still opens, cached for the sessions that wait on it
            pass

    def _load_job(self, args, progress):
        try:
            source = compute.open_source(*args, progress=progress, device=self.device)
        except Exception as e:  # shown in the page; the app keeps the previous pair
            self._set(loading=False, error=f"could not load {args[1]}: {e}", status="")
            return
        finally:
            # the (cached, shared) source keeps its progress callback for lazy reads later: once open, it must
            # report to no page (a stale 'reading <tensor>' status, or another session's page)
            progress.callback = None
        self._set(loading=False, progress=100, status="", _source=source)

    def _set(self, _source=None, **values):
        """Set parameters (and install a loaded source) on the page's thread."""
        def apply():
            if _source is not None:
                self._install(_source)
            if values:
                self.param.update(**values)
        self.session.hand_back(apply)

    def _install(self, source):
        layers = sorted({compute.layer_of(n) for n in source.names})
        modules = compute.modules_present(source)
        self.param.layer.bounds = (layers[0], layers[-1])
        self.param.module.objects = modules
        self.param.update(source=source, drawn_recipe=self.recipe,
                          layer=min(max(self.layer, layers[0]), layers[-1]),
                          module=self.module if self.module in modules else modules[0],
                          current=None, generations=None, generations_recipe=None, sweep=None, history=[],
                          pinned=[], pending="", answers_pending="", not_precomputed="", answers_note="",
                          references=pd.DataFrame(columns=["label", "LA", "VA", "OA"]))
        self.evaluate()
        if self.auto_sweep:
            self.run_sweep()

    # -- evaluation --------------------------------------------------------------------------

    @param.depends("recipe", "per_task", watch=True)
    def evaluate(self):
        """Evaluate the current recipe and its stages (hard / suppress / restore) with the pair's evaluator
        (its suite, or the organism's items), or look them up in a results folder."""
        source = self.source
        if source is None:
            return
        ticket = self.session.new_request()
        if source.evaluation_off:
            self.eval_status = f"evaluation off: {source.evaluation_off}"
            self.session.run(self._draw_job, self.recipe, ticket)
            return
        self.param.update(pending=self.recipe.label, answers_pending=self.recipe.label,
                          eval_status=f"evaluating {self.recipe.label} ...")
        self.session.run(self._evaluate_job, source, self.recipe, self.per_task, ticket)

    def _draw_job(self, recipe, ticket):
        """The neuron views follow the recipe once a burst of moves stops (each drawing costs the page's thread)."""
        if self._settled(ticket):
            self._set(drawn_recipe=recipe)

    def _settled(self, ticket) -> bool:
        """Whether `ticket` is still the newest request after SETTLE_S (in a served page): a burst of key presses
        queues one job per press, and only the last one's evaluates; the others return at once."""
        return self._still_latest_after(ticket, SETTLE_S)

    def _still_latest_after(self, ticket, seconds: float) -> bool:
        """Whether `ticket` is still the newest request after `seconds` (in a served page; at once otherwise),
        answering False as soon as a newer one comes."""
        end = time.monotonic() + (seconds if self.session.background else 0.0)
        while self.session.is_latest(ticket):
            left = end - time.monotonic()
            if left <= 0:
                return True
            time.sleep(min(left, 0.05))
        return False

    def _evaluate_job(self, source, recipe, per_task, ticket):
        """The recipe's LA / VA first (the trade-off plot gets them as soon as they exist: a live pair's from its
        first items, then from all of them, ``evaluation_sizes``), then the neuron views (``drawn_recipe``), then
        its stages' answers as a job of their own (a newer setting skips whatever is left).

        The neuron views wait for the numbers: drawing them costs the page's thread (and the browser) about a
        second, and the pair's tensors are one lock (``ResidentPair.one_at_a_time``) that the evaluation's merge
        needs too; drawn first, they held back the numbers a key press waits for (benchmarks/explorer_latency.py).

        A newer setting stops this job's evaluation (``_until_replaced``): a burst of moves evaluates where it
        stops, and a move never waits for the last one's stages."""
        if not self._settled(ticket):
            return  # a newer setting was requested meanwhile
        try:
            with self._until_replaced(ticket):
                if source.can_evaluate and not self._first_numbers(source, recipe, per_task, ticket):
                    return
                refs = compute.reference_points(source, per_task)
                current = compute.evaluation(source, recipe, per_task)
        except Superseded:
            return  # the newer setting's job shows its own numbers and status
        except Exception as e:
            traceback.print_exc()
            self._set(error=f"evaluation failed: {e}", eval_status="", pending="", answers_pending="",
                      drawn_recipe=recipe)
            return
        if not self.session.is_latest(ticket):
            return
        missing = compute.not_precomputed(source, recipe) if current is None else ""
        if current is not None:
            current = {**current, "label": recipe.label, "recipe": recipe, "per_task": per_task}
        self._set(references=refs, current=current, pending="", not_precomputed=missing,
                  history=self._visited(current),
                  eval_status=missing or ("" if current is not None else "no evaluation for this setting"))
        if not self._still_latest_after(ticket, VIEWS_AFTER_NUMBERS_S):
            return  # a newer move draws its own views and stages
        self._set(drawn_recipe=recipe)  # after the numbers: the page draws them first (a hand-back of their own)
        self.session.run(self._answers_job, source, recipe, per_task, ticket)

    def _until_replaced(self, ticket):
        """A block whose evaluation stops (``lfm.cancel.Superseded``, at the model's next forward pass or layer,
        or between two merged tensors) once a newer setting than `ticket` was requested."""
        return cancel_when(lambda: not self.session.is_latest(ticket))

    def _first_numbers(self, source, recipe, per_task, ticket) -> bool:
        """Show `recipe`'s numbers on its first items (``evaluation_sizes``) while all of them compute; False when
        a newer setting came meanwhile (nothing shown, nothing more to do)."""
        first = evaluation_sizes(per_task, source.seconds(per_task))[0]
        if first == per_task:
            return True  # one size only: the numbers come once
        current = compute.evaluation(source, recipe, first)
        if not self.session.is_latest(ticket):
            return False
        if current is not None:  # 'first_of': the size they stand in for (never visited, never pinned)
            current = {**current, "label": recipe.label, "recipe": recipe, "per_task": first, "first_of": per_task}
            self._set(current=current, pending="", not_precomputed="",
                      eval_status=f"⏳ first numbers: {first} items per task; evaluating "
                                  f"{'all items' if per_task <= 0 else f'{per_task} items per task'} …")
        return True

    def _answers_job(self, source, recipe, per_task, ticket):
        if not self.session.is_latest(ticket):
            return
        try:
            with self._until_replaced(ticket):  # a newer move need not wait for these
                gens = compute.generations(source, recipe, per_task)
        except Superseded:
            return
        except Exception as e:
            traceback.print_exc()
            self._set(error=f"evaluation failed: {e}", answers_pending="")
            return
        if not self.session.is_latest(ticket):
            return
        answers_note = compute.answers_not_precomputed(source, recipe) if gens is None else ""
        self._set(generations=gens, generations_recipe=recipe, answers_pending="", answers_note=answers_note)

    def _visited(self, current: dict | None) -> list[dict]:
        """The history with `current` appended (once per label and evaluation size)."""
        if current is None or any(h["label"] == current["label"] and h["per_task"] == current["per_task"]
                                  for h in self.history):
            return self.history
        return self.history + [{"label": current["label"], "LA": current["LA"], "VA": current["VA"],
                                "per_task": current["per_task"]}]

    def pin(self) -> None:
        """Pin the current recipe and what was computed for it (only when its numbers are the current ones)."""
        if self.current is None or self.current.get("label") != self.recipe.label or self.pending or \
                self.current.get("first_of") is not None:
            self.error = "nothing to pin yet: wait until the current setting is evaluated on all its items"
            return
        if any(p["recipe"] == self.recipe for p in self.pinned):
            return
        gens = self.generations if self.generations_recipe == self.recipe else None
        self.pinned = (self.pinned + [{"recipe": self.recipe, "current": self.current, "generations": gens}])[-4:]

    @param.depends("generations", watch=True)
    def _answers_reach_pins(self):
        """A pin made before its recipe's stage answers arrived gets them when they do (they follow the numbers)."""
        if self.generations is None or not any(p["recipe"] == self.generations_recipe and p["generations"] is None
                                               for p in self.pinned):
            return
        self.pinned = [{**p, "generations": self.generations} if p["recipe"] == self.generations_recipe and
                       p["generations"] is None else p for p in self.pinned]

    def unpin_all(self) -> None:
        self.pinned = []

    @param.depends("per_task", watch=True)
    def _sweep_again(self):
        """Another evaluation size: the curves are swept again at it (meanwhile the plot greys out the old ones)."""
        if self.auto_sweep:
            self.run_sweep()

    def run_sweep(self):
        source = self.source
        if source is None or not source.draws_curves:
            return

        per_task = self.per_task

        def job():
            progress = compute.Progress(lambda d, t, m: self._set(eval_status=f"trade-off sweep {d}/{t}: {m}"))
            try:
                table = compute.sweep_table(source, per_task, progress)
            except Exception as e:
                traceback.print_exc()
                self._set(error=f"sweep failed: {e}")
                return
            if self.source is source:  # each point says its evaluation size: the plot greys out another size
                self._set(sweep=None if table is None else table.assign(per_task=per_task), eval_status="")
        self.session.run(job, sweep=True)
