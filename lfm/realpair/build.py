"""Build the pair, stage by stage, each stage cached under the output folder (a rerun is instant).

    OUT/wheel/            the PyPI wheel and its GGUF (fetch.py)
    OUT/base/             SmolLM2-135M-Instruct as a plain HF LlamaForCausalLM, fp32 (dequantised Q4_1)
    OUT/suite/            the evaluation suite (tasks.py): suite.yaml, prose.yaml, check.yaml, items, task files
    OUT/stages/vision-<hash>/   the pretrained CLIP tower (vision.py), vision.safetensors
    OUT/stages/aligned-<hash>/  the LLaVA after projector alignment (train.align)
    OUT/<name>/seed<N>/   one recipe's run (``BuildConfig.name``: the preset, e.g. paper, overshoot):
        tuned/            the LLaVA after visual instruction tuning (train.tune): the pair's tuned model
        build.json        the config and every stage's statistics (and where its vision / aligned stages are)
        checks.json       the regime checks (checks.py);  study/  the sweeps of the checks and the study

The vision and aligned stages are shared by every run whose knobs for them agree: their folder is named by
a hash of the stage's config (the source GGUF and the fields STAGE_FIELDS lists, with its predecessors').
A stage is done when its folder holds ``lfm_realpair_stage.json`` whose config equals this run's; a stage
with another config is rebuilt. Each stage is written into a temporary sibling and renamed into place, so
an interrupted build leaves nothing half-written. Default OUT: ~/.cache/lfm/realpair.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from .config import BuildConfig

STAMP = "lfm_realpair_stage.json"
DEFAULT_ROOT = Path(os.environ.get("LFM_REALPAIR_HOME", Path.home() / ".cache" / "lfm" / "realpair"))
# which config fields each stage depends on (a change elsewhere does not rebuild it)
STAGE_FIELDS = {
    "suite": ("test_per_task", "prose_tokens", "image_size"),
    "vision": ("seed", "vision_hidden", "vision_layers", "vision_heads", "image_size", "patch", "vision_steps",
               "vision_batch", "vision_lr", "vision_balanced", "tower_per_task", "tower_digit_copies",
               "train_per_task", "threads", "test_per_task"),
    "aligned": ("align_steps", "align_batch", "align_lr"),
    "tuned": ("tune_steps", "tune_batch", "tune_lr", "projector_lr", "text_share", "text_items", "text_tokens",
              "text_kinds", "task_weights"),
}


def _stage_config(stage: str, cfg: BuildConfig, source: dict) -> dict:
    """What ``stage`` depends on: the source GGUF and its fields (a training stage: also its predecessors')."""
    order = ("vision", "aligned", "tuned")
    stages = ("suite",) if stage == "suite" else order[:order.index(stage) + 1]
    d = cfg.to_dict()
    return {"stage": stage, "source": source, **{k: d[k] for s in stages for k in STAGE_FIELDS[s]}}


def _shared(root: Path, stage: str, config: dict) -> Path:
    """The folder of a shared stage: OUT/stages/<stage>-<hash of its config>."""
    digest = hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    return root / "stages" / f"{stage}-{digest}"


def run_dir(root: str | Path | None, name: str, seed: int) -> Path:
    """OUT/<name>/seed<N>: one recipe's tuned model, checks and study."""
    return (Path(root) if root else DEFAULT_ROOT) / name / f"seed{seed}"


def sweep_dir(run: Path, suite: str, limit: int | None = None) -> Path:
    """The sweep table of one suite ('suite', 'prose', 'check') in a run: study/<suite>[-limit<N>] (a table
    holds one item limit; the checks and a full study share the unlimited one)."""
    return run / "study" / (suite if limit is None else f"{suite}-limit{limit}")


def _forget_measurements(run: Path) -> None:
    """Delete a run's checks and study: a resumed sweep would otherwise reuse rows of another model or suite."""
    if (run / "study").is_dir():
        shutil.rmtree(run / "study")
    (run / "checks.json").unlink(missing_ok=True)


def _done(folder: Path, config: dict) -> bool:
    stamp = folder / STAMP
    return stamp.exists() and json.loads(stamp.read_text()).get("config") == config


def _commit(tmp: Path, folder: Path, config: dict, stats: dict) -> None:
    (tmp / STAMP).write_text(json.dumps({"config": config, "stats": stats}, indent=1) + "\n")
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)


@contextmanager
def _tmp(folder: Path):
    """A fresh ``folder.tmp`` to build a stage in; removed when the stage fails, so a failed build leaves none."""
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def build(out: str | Path | None = None, cfg: BuildConfig = BuildConfig(), *, gguf: str | Path | None = None,
          log=print) -> dict:
    """Every stage not already done. Returns {"base", "tuned", "suite", "prose", "check" (the suites' YAMLs),
    "run" (the run folder), "stages": {stage: stats}}.

    Args:
        out: the cache root (default ~/.cache/lfm/realpair or $LFM_REALPAIR_HOME).
        gguf: a local llama GGUF to convert instead of fetching SmolLM2 (tests use a tiny one).
    """
    from .gguf_header import check_gguf_header

    gguf_path = Path(gguf) if gguf else None
    if gguf_path is not None and not gguf_path.is_file():
        raise FileNotFoundError(f"--gguf {gguf_path}: no such file")
    if gguf_path is not None:
        check_gguf_header(gguf_path)  # a damaged file: one line, before anything is imported or written

    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    from . import data, fetch, tasks, train, vision

    root = Path(out) if out else DEFAULT_ROOT
    root.mkdir(parents=True, exist_ok=True)
    stats = {}

    # base: the GGUF, converted
    base = root / "base"
    source = {"gguf": gguf_path.name if gguf_path else Path(fetch.GGUF_MEMBER).name,
              "sha256": fetch.sha256(gguf_path) if gguf_path else fetch.GGUF_SHA256}
    base_cfg = {"stage": "base", "source": source}
    if not _done(base, base_cfg):
        t0 = time.time()
        gguf_path = gguf_path or fetch.fetch_gguf(root / "wheel")
        log(f"converting {gguf_path.name} -> {base}")
        with _tmp(base) as tmp:
            info = fetch.convert_gguf(gguf_path, tmp)
            _commit(tmp, base, base_cfg, {**info, "seconds": round(time.time() - t0, 1)})
    stats["base"] = json.loads((base / STAMP).read_text())["stats"]
    tok = AutoTokenizer.from_pretrained(base)

    # the evaluation suite
    suite = root / "suite"
    suite_cfg = {**_stage_config("suite", cfg, source), "hooks": tasks.HOOKS}  # a suite of older task files: rewritten
    if not _done(suite, suite_cfg):
        # written in place (its task files name the items folder by absolute path); the stamp comes last
        log(f"writing the evaluation suite -> {suite}")
        if suite.exists():
            shutil.rmtree(suite)
            for run_folder in root.glob("*/seed*"):  # every run measured on the items this replaces
                _forget_measurements(run_folder)
        tasks.write_suite(suite, cfg, tok)
        (suite / STAMP).write_text(json.dumps({"config": suite_cfg, "stats": {}}, indent=1) + "\n")

    def items(split: str, n: int) -> list:
        return [it for t in data.VISUAL_TASKS for it in data.visual_items(t, split, n, cfg.image_size)]

    train_items = items("train", cfg.train_per_task)
    test_items = items("test", cfg.test_per_task)
    run = run_dir(root, cfg.name, cfg.seed)
    run.mkdir(parents=True, exist_ok=True)
    train.setup(cfg)

    vis_cfg = _stage_config("vision", cfg, source)
    vis_dir = _shared(root, "vision", vis_cfg)
    if not _done(vis_dir, vis_cfg):
        log(f"pretraining the vision tower -> {vis_dir}")
        # drawn only when the tower is trained: a cached tower needs none of its 4000 images per task or copies
        tower_items = items("train", cfg.tower_per_task) + data.augmented_digits(cfg.tower_digit_copies, cfg.image_size)
        with _tmp(vis_dir) as tmp:
            state, s = vision.pretrain_tower(cfg, tower_items, test_items)
            save_file(state, str(tmp / "vision.safetensors"))
            _commit(tmp, vis_dir, vis_cfg, s)
    stats["vision"] = json.loads((vis_dir / STAMP).read_text())["stats"]

    al_cfg = _stage_config("aligned", cfg, source)
    aligned = _shared(root, "aligned", al_cfg)
    processor = train.make_processor(base, cfg)
    if not _done(aligned, al_cfg):
        log(f"aligning the projector -> {aligned}")
        train.setup(cfg)
        model = train.build_llava(base, load_file(str(vis_dir / "vision.safetensors")), processor, cfg)
        s = train.align(model, processor, train_items, cfg)
        with _tmp(aligned) as tmp:
            model.save_pretrained(tmp)
            processor.save_pretrained(tmp)
            _commit(tmp, aligned, al_cfg, s)
        del model
    stats["aligned"] = json.loads((aligned / STAMP).read_text())["stats"]

    tuned = run / "tuned"
    tu_cfg = _stage_config("tuned", cfg, source)
    if not _done(tuned, tu_cfg):
        from transformers import LlavaForConditionalGeneration

        log(f"visual instruction tuning -> {tuned}")
        train.setup(cfg)
        model = LlavaForConditionalGeneration.from_pretrained(aligned, dtype=torch.float32)
        for p in model.model.vision_tower.parameters():
            p.requires_grad_(False)
        s = train.tune(model, processor, train_items, cfg)
        with _tmp(tuned) as tmp:
            model.save_pretrained(tmp)
            processor.save_pretrained(tmp)
            _forget_measurements(run)  # they were of the model this one replaces
            _commit(tmp, tuned, tu_cfg, s)
    stats["tuned"] = json.loads((tuned / STAMP).read_text())["stats"]
    record = {"config": cfg.to_dict(), "stages": stats, "vision": str(vis_dir), "aligned": str(aligned)}
    (run / "build.json").write_text(json.dumps(record, indent=1) + "\n")
    return {"base": base, "tuned": tuned, "suite": suite / "suite.yaml", "prose": suite / "prose.yaml",
            "check": suite / "check.yaml", "run": run, "stages": stats}


def pair_commands(res: dict) -> dict[str, str]:
    """The commands that run the explorer, `lfm compare`, `lfm eval` and the notebooks on a built pair
    (``build``'s result): what `lfm realpair build` prints and docs/realpair.md shows.

    >>> from pathlib import Path
    >>> r = {"base": Path("R/base"), "tuned": Path("R/seed0/tuned"), "suite": Path("R/suite/suite.yaml")}
    >>> pair_commands(r)["compare"]
    'lfm compare --base R/base --tuned R/seed0/tuned --items R/suite/items/visual.jsonl --out cmp-realpair'
    """
    import shlex

    base, tuned, suite = (shlex.quote(str(res[k])) for k in ("base", "tuned", "suite"))
    items = shlex.quote(str(Path(res["suite"]).parent / "items" / "visual.jsonl"))
    pair = f"-p base {base} -p tuned {tuned}"
    return {
        "explore": f"lfm explore --base {base} --tuned {tuned} --suite {suite}",
        "compare": f"lfm compare --base {base} --tuned {tuned} --items {items} --out cmp-realpair",
        "eval": f"lfm eval {tuned} --suite {suite}",
        "notebook 01": f"papermill notebooks/01_neuron_changes.ipynb out-01.ipynb {pair}",
        "notebook 02": f"papermill notebooks/02_merge_tradeoffs.ipynb out-02.ipynb {pair} -p suite {suite}",
        "notebook 03": f"papermill notebooks/03_generation_failures.ipynb out-03.ipynb {pair} -p items {items}",
        "notebook 04": f"papermill notebooks/04_ffn_key_value_memories.ipynb out-04.ipynb {pair} -p items {items}",
    }
