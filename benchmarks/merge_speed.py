"""Wall time and peak RSS of lfm vs mergekit 0.1.5 vs a plain safetensors copy (the I/O floor).

Builds (or reuses, under benchmarks/_work/<size>/) a random Llama base and two tuned models derived from it
(tuned = base + small seeded delta), all bf16, sharded like hub checkpoints:

    base/        LlamaForCausalLM
    llava/       LlavaForConditionalGeneration          (keys language_model.model.layers.N..., + a small
                                                         CLIP vision tower and projector)
    llm/         LlamaForCausalLM (LLM-to-LLM)          (the pair mergekit can map)

Sizes: 0.4b (hidden 1536, FFN 4096, 12 layers, 12/4 heads, vocab 32000, 500 MB shards: 2 per model) and
1b (1.03B: hidden 2048, FFN 5632, 20 layers, 32/8 heads, vocab 32000, 1 GB shards). Then runs each tool
once in its own subprocess under /usr/bin/time -v (wall clock and "Maximum resident set size" of the
child) and writes benchmarks/results/merge_speed_0.4b.json and merge_speed.json (1b):

    copy floor         safetensors load_file + save_file of every tuned shard
    lfm TIES, TA       lfm merge, on the LLaVA pair and on the LLM pair
    lfm Neu-S-TIES, Neu-P-TIES (K=0.2 M=0.3), DARE, DELLA (K=0.2)   lfm merge, LLM pair
    mergekit           mergekit-yaml ties / task_arithmetic / dare_linear / della_linear, LLM pair, --lazy-unpickle

Targets (issue 14), as ratios in one run, computed on the LLM pair (the same work for both tools): lfm TIES
>= 8x faster than mergekit and <= 2x the copy floor; every lfm merge's peak RSS <= the largest tensor's
float32 size x 4 + 300 MiB, and lfm TIES's <= 0.4x mergekit's; Neu-S/P-TIES <= 1.5x lfm TIES. The load
average before and after each size is recorded (the machine may be shared).

    python benchmarks/merge_speed.py                   # 0.4b and 1b, cpu
    python benchmarks/merge_speed.py --size tiny       # seconds: checks the harness
    python benchmarks/merge_speed.py --device cuda     # the same runs, lfm and mergekit on the GPU
    python benchmarks/merge_speed.py --device cuda --size 8b --skip-mergekit   # Llama-3-8B-shaped, LLM pair
    python benchmarks/merge_speed.py --table           # the table of docs/benchmarks.md from the recorded results
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work"
RESULTS = HERE / "results"
PY = sys.executable
BIN = Path(PY).parent

# name -> text config. "1b": 20 layers x 2048 hidden, GQA 32/8 heads, FFN 5632, vocab 32000 = 1.03B params.
SIZES = {
    "0.4b": dict(hidden_size=1536, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4,
                 intermediate_size=4096, vocab_size=32000),
    "1b": dict(hidden_size=2048, num_hidden_layers=20, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=5632, vocab_size=32000),
    "small": dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2,
                  intermediate_size=1408, vocab_size=8000),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=256),
    # Llama-3-8B's dimensions (8.03B parameters, 16 GB per model in bf16): for a GPU machine, LLM pair only
    "8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=14336, vocab_size=128256),
}
LLM_PAIR_ONLY = {"8b"}  # sizes built and run without the LLaVA pair (disk: base + tuned + output = 48 GB)
GPU_SECONDS_TARGET = {"8b": 30.0}  # issue 14: TIES and Neu-S-TIES of the 8B-shaped pair on a GPU
SHARD_BYTES = {"0.4b": 500_000_000, "8b": 5_000_000_000}  # 0.4b: 2 shards per model; 8b: 4, as Llama-3-8B
DEFAULT_SHARD_BYTES = 1_000_000_000  # ~1 GB shards, as many hub checkpoints


# ----------------------------------------------------------------------------- building the pair
def _configs(size: str):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    text = LlamaConfig(**SIZES[size], max_position_embeddings=2048, tie_word_embeddings=False,
                       bos_token_id=1, eos_token_id=2, dtype="bfloat16")
    vision = CLIPVisionConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=4,
                              image_size=56, patch_size=14, projection_dim=256)
    llava = LlavaConfig(vision_config=vision, text_config=text, image_token_index=SIZES[size]["vocab_size"] - 1)
    llava.dtype = "bfloat16"
    text.architectures = ["LlamaForCausalLM"]
    llava.architectures = ["LlavaForConditionalGeneration"]
    return text, llava


def _shapes(model_cls, config) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = model_cls(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _randn(name: str, shape, seed: int, std: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    return torch.randn(shape, generator=g) * std


def _tensor(name: str, shape, role: str) -> torch.Tensor:
    """Deterministic bf16 tensor: base = N(0, 0.02) (norms = 1); tuned = base + N(0, 1e-3)."""
    is_norm = name.endswith("norm.weight")
    base = torch.ones(shape) if is_norm else _randn(name, shape, 0, 0.02)
    if role == "base":
        return base.to(torch.bfloat16)
    return (base + _randn(name, shape, 1, 1e-3)).to(torch.bfloat16)


def _write_sharded(out: Path, items, config, shard_bytes: int) -> None:
    """items: iterable of (key, callable -> tensor); writes shards of ~shard_bytes + index, like save_pretrained."""
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config.save_pretrained(tmp)
    shards, current, size = [], {}, 0
    names = []
    for key, make in items:
        t = make()
        if current and size + t.nbytes > shard_bytes:
            names.append(f"part-{len(names)}")
            save_file(current, str(tmp / f"{names[-1]}.safetensors"), metadata={"format": "pt"})
            shards.append(list(current))
            current, size = {}, 0
        current[key] = t.contiguous()
        size += t.nbytes
    names.append(f"part-{len(names)}")
    save_file(current, str(tmp / f"{names[-1]}.safetensors"), metadata={"format": "pt"})
    shards.append(list(current))
    n = len(names)
    weight_map, total = {}, 0
    for i, (name, keys) in enumerate(zip(names, shards)):
        final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        os.replace(tmp / f"{name}.safetensors", tmp / final)
        for k in keys:
            weight_map[k] = final
    total = sum(p.stat().st_size for p in tmp.glob("model-*.safetensors"))
    (tmp / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def _hf_llava_key(key: str) -> str:
    """transformers' in-memory LLaVA names -> the names save_pretrained writes."""
    for a, b in (("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head."),
                 ("model.vision_tower.", "vision_tower."), ("model.multi_modal_projector.", "multi_modal_projector.")):
        if key.startswith(a):
            return b + key[len(a):]
    return key


def _canonical(key: str) -> str:
    for a, b in (("model.language_model.", "model."),):
        if key.startswith(a):
            return b + key[len(a):]
    return key


def build_pair(size: str, which: tuple[str, ...] = ("base", "llava", "llm")) -> dict[str, Path]:
    """Build base/, llava/, llm/ (those in ``which``) under _work/<size>/ unless already there. Returns their paths."""
    from transformers import LlamaForCausalLM, LlavaForConditionalGeneration

    root = WORK / size
    dirs = {"base": root / "base", "llava": root / "llava", "llm": root / "llm"}
    text, llava = _configs(size)
    lm_shapes = _shapes(LlamaForCausalLM, text)
    shard_bytes = SHARD_BYTES.get(size, DEFAULT_SHARD_BYTES)
    if not (dirs["base"] / "model.safetensors.index.json").exists():
        print(f"building {dirs['base']} ...", flush=True)
        _write_sharded(dirs["base"], ((k, lambda k=k, s=s: _tensor(k, s, "base")) for k, s in lm_shapes.items()), text, shard_bytes)
    if "llm" in which and not (dirs["llm"] / "model.safetensors.index.json").exists():
        print(f"building {dirs['llm']} ...", flush=True)
        _write_sharded(dirs["llm"], ((k, lambda k=k, s=s: _tensor(k, s, "tuned")) for k, s in lm_shapes.items()), text, shard_bytes)
    if "llava" in which and not (dirs["llava"] / "model.safetensors.index.json").exists():
        print(f"building {dirs['llava']} ...", flush=True)
        shapes = _shapes(LlavaForConditionalGeneration, llava)

        def items():
            for key, s in shapes.items():
                canon = _canonical(key)
                if canon in lm_shapes:
                    yield _hf_llava_key(key), (lambda c=canon, s=s: _tensor(c, s, "tuned"))
                else:  # vision tower / projector
                    yield _hf_llava_key(key), (lambda k=key, s=s: _randn(k, s, 2, 0.02).to(torch.bfloat16))

        _write_sharded(dirs["llava"], items(), llava, shard_bytes)
    return dirs


# ----------------------------------------------------------------------------- measuring
def measure(label: str, cmd: list[str], out: Path | None, env=None) -> dict:
    """Run cmd under /usr/bin/time -v; return wall seconds and the child's peak RSS (MiB)."""
    if out is not None:
        shutil.rmtree(out, ignore_errors=True)
    subprocess.run(["sync"], check=False)
    print(f"[{label}] {' '.join(map(str, cmd))}", flush=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(["/usr/bin/time", "-v", *map(str, cmd)], stdout=subprocess.DEVNULL, stderr=err,
                                 text=True, env=env)
        peak_anon, done = [0], threading.Event()

        def poll():  # anonymous memory (heap, copies), excluding mmap'd file pages, every 0.1 s
            while not done.wait(0.1):
                peak_anon[0] = max(peak_anon[0], _anon_rss_kb(child.pid))

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        child.wait()  # the wall time ends when the child does, not at the next poll
        wall = time.perf_counter() - t0
        done.set()
        poller.join()
        peak_anon = peak_anon[0]
        err.seek(0)
        stderr = err.read()
    rss_kb = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr)
    if child.returncode != 0:
        print(stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"[{label}] failed with exit code {child.returncode}")
    row = {"label": label, "seconds": round(wall, 2), "peak_rss_mib": round(int(rss_kb.group(1)) / 1024, 1),
           "peak_anon_mib": round(peak_anon / 1024, 1), "cmd": " ".join(map(str, cmd))}
    if out is not None and out.exists():
        row["output_bytes"] = sum(p.stat().st_size for p in out.rglob("*.safetensors"))
    print(f"    {row['seconds']:.1f} s, peak RSS {row['peak_rss_mib']:.0f} MiB "
          f"(anonymous {row['peak_anon_mib']:.0f} MiB)", flush=True)
    return row


def _anon_rss_kb(pid: int) -> int:
    """Sum of RssAnon (kB) over `pid` and its descendants (polled; /proc on Linux)."""
    try:
        import psutil

        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except Exception:
        return 0
    total = 0
    for p in procs:
        try:
            for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


COPY_SCRIPT = r"""
import sys, shutil
from pathlib import Path
from safetensors.torch import load_file, save_file
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
dst.mkdir(parents=True)
for f in sorted(src.glob("*.safetensors")):
    save_file(load_file(str(f)), str(dst / f.name), metadata={"format": "pt"})
for f in src.iterdir():
    if f.suffix != ".safetensors":
        shutil.copy2(f, dst / f.name)
"""


MERGEKIT_PARAMS = {"ties": {"density": 0.2}, "task_arithmetic": {}, "dare_linear": {"density": 0.2},
                   "della_linear": {"density": 0.2, "epsilon": 0.1, "lambda": 1.0}}


def mergekit_config(path: Path, method: str, base: Path, tuned: Path) -> Path:
    params = {"weight": 1.0, **MERGEKIT_PARAMS[method]}
    text = (f"merge_method: {method}\nbase_model: {base}\nmodels:\n  - model: {tuned}\n    parameters:\n"
            + "".join(f"      {k}: {v}\n" for k, v in params.items()) + "dtype: bfloat16\n")
    path.write_text(text)
    return path


# label -> lfm merge flags; every one runs on the LLM pair, TIES and TA on the LLaVA pair too
LFM_RUNS = {"TIES K=0.2": ["--method", "ties", "--density", "0.2"],
            "TA": ["--method", "task_arithmetic"],
            "Neu-S-TIES K=0.2 M=0.3": ["--method", "neu-s-ties", "--density", "0.2", "--neurons", "0.3"],
            "Neu-P-TIES K=0.2 M=0.3": ["--method", "neu-p-ties", "--density", "0.2", "--neurons", "0.3"],
            "DARE K=0.2": ["--method", "dare", "--density", "0.2"],
            "DELLA K=0.2": ["--method", "della", "--density", "0.2", "--epsilon", "0.1"]}
MERGEKIT_RUNS = {"TIES K=0.2": "ties", "TA": "task_arithmetic", "DARE K=0.2": "dare_linear",
                 "DELLA K=0.2": "della_linear"}
RSS_OVERHEAD_MIB = 300  # the interpreter with torch imported, and the heap it keeps
# with --device cuda the process also holds the CUDA libraries and context (host side; measured by the first GPU
# run of benchmarks/gpu_check.py: not yet, no GPU lent) on top
CUDA_RSS_OVERHEAD_MIB = 1500


def largest_tensor_numel(model_dir: Path) -> int:
    """Entries of the checkpoint's largest tensor, from the safetensors headers."""
    largest = 0
    for file in model_dir.glob("*.safetensors"):
        with open(file, "rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        for key, info in header.items():
            if key != "__metadata__":
                largest = max(largest, math.prod(info["shape"]))
    return largest


# `lfm merge` in a child that reports (on stderr) the moment it maps its first tensor: the audit event of the
# first mmap (lfm maps each input tensor, Checkpoint.map_one; headers are read with plain reads), then stops
FIRST_READ_DRIVER = r"""
import os, sys, time
def hook(event, args):
    if event == "mmap.__new__":
        print(f"first-read {time.monotonic()}", file=sys.stderr, flush=True)
        os._exit(0)
sys.addaudithook(hook)
from lfm.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _until_first_read(cmd: list) -> float:
    """Seconds from starting `cmd` (an `lfm merge`) to its first tensor's memory map."""
    t0 = time.monotonic()
    done = subprocess.run([PY, "-c", FIRST_READ_DRIVER, *cmd], capture_output=True, text=True)
    stamps = [line.split()[1] for line in done.stderr.splitlines() if line.startswith("first-read ")]
    if not stamps:
        raise RuntimeError(f"no tensor was read: {done.stderr[-2000:]}")
    return float(stamps[0]) - t0


def startup_seconds(size: str = "1b") -> dict:
    """Start-up, median of 5: `lfm --help`; `lfm merge` from launch to its first tensor read (a memory map)
    on the tiny pair and on the `size` pair (every header read and validated before); a whole `lfm merge`
    of the tiny pair (start-up + a few KB of tensors + exit); torch's import alone (the part lfm cannot
    shorten)."""
    tiny, big = build_pair("tiny", ("base", "llm")), build_pair(size, ("base", "llm"))
    out = WORK / "tiny" / "out"

    def merge_args(pair):
        return ["merge", "--quiet", "--force", "--base", str(pair["base"]), "--tuned", str(pair["llm"]),
                "--out", str(out), "--method", "ties", "--device", "cpu"]  # start-up of a CPU merge: no CUDA set-up

    def wall(cmd):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - t0

    measures = {"lfm --help": lambda: wall([PY, "-m", "lfm.cli", "--help"]),
                "lfm merge, until its first tensor read (tiny pair)": lambda: _until_first_read(merge_args(tiny)),
                f"lfm merge, until its first tensor read ({size} pair)": lambda: _until_first_read(merge_args(big)),
                "lfm merge, whole run on the tiny pair": lambda: wall([PY, "-m", "lfm.cli", *merge_args(tiny)]),
                "import torch": lambda: wall([PY, "-c", "import torch"])}
    rows = {label: round(sorted(measure() for _ in range(5))[2], 2) for label, measure in measures.items()}
    shutil.rmtree(out, ignore_errors=True)
    return rows


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages (the machine is shared: they say how much of it the runs had)."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run_size(size: str, args) -> dict:
    pairs = ("llm",) if size in LLM_PAIR_ONLY else ("llava", "llm")
    dirs = build_pair(size, ("base", *pairs))
    root = WORK / size
    n_params = sum(p.stat().st_size for p in dirs["base"].glob("*.safetensors")) // 2
    largest = largest_tensor_numel(dirs[pairs[0]])
    overhead = RSS_OVERHEAD_MIB + (CUDA_RSS_OVERHEAD_MIB if args.device.startswith("cuda") else 0)
    bound_mib = round(largest * 4 * 4 / 2**20 + overhead, 1)
    lfm = [PY, "-m", "lfm.cli", "merge", "--quiet", "--device", args.device]
    rows, load = [], {"before": loadavg()}

    def run(label, cmd, out, repeat=args.repeat):
        """The median of ``repeat`` runs (each run's seconds kept in the row)."""
        runs = []
        for _ in range(repeat):
            runs.append({**measure(label, cmd, out), "loadavg": loadavg()})
            if out is not None and not args.keep_outputs:
                shutil.rmtree(out, ignore_errors=True)
        row = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]
        rows.append({**row, "all_seconds": [r["seconds"] for r in runs],
                     "peak_rss_mib": max(r["peak_rss_mib"] for r in runs)})

    out = root / "out"
    for pair in pairs:
        run(f"copy floor ({pair})", [PY, "-c", COPY_SCRIPT, dirs[pair], out], out)
    for label, flags in LFM_RUNS.items():
        for pair in (pairs if label in ("TIES K=0.2", "TA") else ("llm",)):
            run(f"lfm {label} ({pair})", lfm + ["--base", dirs["base"], "--tuned", dirs[pair], "--out", out, *flags],
                out)
    if not args.skip_mergekit:
        mk = BIN / "mergekit-yaml"
        for label, method in MERGEKIT_RUNS.items():
            cfg = mergekit_config(root / f"mergekit-{method}.yml", method, dirs["base"], dirs["llm"])
            run(f"mergekit {label} (llm)", [mk, cfg, out, "--lazy-unpickle", "--device", args.device,
                                            "--no-copy-tokenizer"], out, repeat=args.mergekit_repeat)
    load["after"] = loadavg()

    by = {r["label"]: r for r in rows}
    lfm_ties, copy = by["lfm TIES K=0.2 (llm)"], by["copy floor (llm)"]
    ratios = {f"lfm_ties_over_copy_floor_time_{pair}": round(by[f"lfm TIES K=0.2 ({pair})"]["seconds"]
                                                             / by[f"copy floor ({pair})"]["seconds"], 2)
              for pair in ("llm", *pairs[:-1])}
    ratios["lfm_ta_over_copy_floor_time_llm"] = round(by["lfm TA (llm)"]["seconds"] / copy["seconds"], 2)
    for label in ("Neu-S-TIES K=0.2 M=0.3", "Neu-P-TIES K=0.2 M=0.3"):
        ratios[f"lfm_{label.split()[0].lower()}_over_lfm_ties_time"] = round(
            by[f"lfm {label} (llm)"]["seconds"] / lfm_ties["seconds"], 2)
    lfm_rows = [r for r in rows if r["label"].startswith("lfm ")]
    ratios["lfm_max_peak_rss_mib"] = max(r["peak_rss_mib"] for r in lfm_rows)
    ratios["lfm_peak_rss_bound_mib"] = bound_mib
    if not args.skip_mergekit:
        for label in MERGEKIT_RUNS:
            mk_row, lfm_row = by[f"mergekit {label} (llm)"], by[f"lfm {label} (llm)"]
            tag = label.split()[0].lower()
            ratios[f"mergekit_{tag}_over_lfm_{tag}_time"] = round(mk_row["seconds"] / lfm_row["seconds"], 2)
            ratios[f"lfm_{tag}_over_mergekit_{tag}_rss"] = round(lfm_row["peak_rss_mib"] / mk_row["peak_rss_mib"], 3)
    targets = {
        f"lfm TIES <= 2x the copy floor ({', '.join(pairs)})": max(
            ratios[f"lfm_ties_over_copy_floor_time_{pair}"] for pair in pairs) <= 2,
        f"every lfm merge's peak RSS <= bound (largest tensor x 4 float32 bytes x 4 + {overhead} MiB)":
            ratios["lfm_max_peak_rss_mib"] <= bound_mib,
        "Neu-S-TIES and Neu-P-TIES <= 1.5x lfm TIES": max(ratios["lfm_neu-s-ties_over_lfm_ties_time"],
                                                         ratios["lfm_neu-p-ties_over_lfm_ties_time"]) <= 1.5,
    }
    if not args.skip_mergekit:  # mergekit's targets only where mergekit ran (skipped: no row, not a FAIL)
        targets.update({
            "lfm TIES >= 8x faster than mergekit TIES": ratios["mergekit_ties_over_lfm_ties_time"] >= 8,
            "lfm TIES peak RSS <= 0.4x mergekit TIES": ratios["lfm_ties_over_mergekit_ties_rss"] <= 0.4,
            "every lfm merge's peak RSS <= 0.4x its mergekit counterpart's (TIES, TA, DARE, DELLA)": all(
                ratios[f"lfm_{t}_over_mergekit_{t}_rss"] <= 0.4 for t in ("ties", "ta", "dare", "della"))})
    if size in GPU_SECONDS_TARGET and args.device.startswith("cuda"):
        limit = GPU_SECONDS_TARGET[size]
        targets[f"lfm TIES and Neu-S-TIES <= {limit:.0f} s on the GPU"] = max(
            lfm_ties["seconds"], by["lfm Neu-S-TIES K=0.2 M=0.3 (llm)"]["seconds"]) <= limit

    print(f"\n{size}: {n_params / 1e9:.2f}B parameters per model (bf16), device {args.device}, "
          f"{os.cpu_count()} CPU cores, load average {load['before']} -> {load['after']}")
    print(f"{'run':<34} {'seconds':>9} {'peak RSS MiB':>13} {'anon MiB':>9}")
    for r in rows:
        print(f"{r['label']:<34} {r['seconds']:>9.1f} {r['peak_rss_mib']:>13.0f} {r['peak_anon_mib']:>9.0f}")
    print()
    for k, v in ratios.items():
        print(f"{k:<44} {v}")
    for k, ok in targets.items():
        print(f"{'PASS' if ok else 'FAIL'}  {k}")
    return {"size": size, "parameters": n_params, "largest_tensor_numel": largest, "device": args.device,
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "time": time.strftime("%Y-%m-%d %H:%M:%S"),
            "loadavg": load, "runs": rows, "ratios": ratios, "targets": targets}


README_ROWS = [  # a row of docs/benchmarks.md's table -> the runs it shows, as "a / b"
    ("copy floor (safetensors load + save), LLM / LLaVA pair", ["copy floor (llm)", "copy floor (llava)"]),
    ("lfm TIES K=0.2, LLM / LLaVA pair", ["lfm TIES K=0.2 (llm)", "lfm TIES K=0.2 (llava)"]),
    ("lfm task arithmetic", ["lfm TA (llm)"]),
    ("lfm Neu-S-TIES / Neu-P-TIES K=0.2 M=0.3", ["lfm Neu-S-TIES K=0.2 M=0.3 (llm)", "lfm Neu-P-TIES K=0.2 M=0.3 (llm)"]),
    ("lfm DARE / DELLA K=0.2", ["lfm DARE K=0.2 (llm)", "lfm DELLA K=0.2 (llm)"]),
    ("mergekit TIES K=0.2 / TA", ["mergekit TIES K=0.2 (llm)", "mergekit TA (llm)"]),
    ("mergekit dare_linear / della_linear K=0.2", ["mergekit DARE K=0.2 (llm)", "mergekit DELLA K=0.2 (llm)"]),
]


def readme_table(results=RESULTS) -> str:
    """The speed table of docs/benchmarks.md (Markdown) from the recorded results/merge_speed_0.4b.json and merge_speed.json."""
    sizes = [json.loads((results / name).read_text()) for name in ("merge_speed_0.4b.json", "merge_speed.json")]
    by_size = [{r["label"]: r for r in d["runs"]} for d in sizes]
    lines = ["| run (bf16, cpu, median of 3; mergekit once) | 0.4B seconds | 0.4B peak RSS MiB | 1.03B seconds "
             "| 1.03B peak RSS MiB |", "|---|---:|---:|---:|---:|"]
    for title, labels in README_ROWS:
        cells = []
        for by in by_size:
            cells.append(" / ".join(f"{by[label]['seconds']:.1f}" for label in labels))
            cells.append(" / ".join(f"{by[label]['peak_rss_mib']:.0f}" for label in labels))
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", nargs="+", choices=sorted(SIZES), default=["0.4b", "1b"])
    ap.add_argument("--device", default="cpu", help="device for lfm and mergekit (cpu | cuda)")
    ap.add_argument("--skip-mergekit", action="store_true")
    ap.add_argument("--keep-outputs", action="store_true", help="keep merged outputs under _work/<size>/out")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each lfm merge and copy floor (median kept)")
    ap.add_argument("--mergekit-repeat", type=int, default=1, help="runs of each mergekit merge (median kept)")
    ap.add_argument("--table", action="store_true", help="print the table of docs/benchmarks.md from the recorded results, run nothing")
    args = ap.parse_args(argv)
    if args.table:
        print(readme_table())
        return 0

    RESULTS.mkdir(exist_ok=True)
    startup_size = args.size[-1]  # the biggest pair asked for
    startup = startup_seconds(startup_size)
    print(f"start-up: {startup}")
    for size in args.size:
        result = run_size(size, args)
        result["startup_seconds"] = startup
        result["targets"]["lfm --help and lfm merge start-up <= 1 s"] = max(
            startup["lfm --help"], startup[f"lfm merge, until its first tensor read ({startup_size} pair)"]) <= 1.0
        name = "merge_speed.json" if size == "1b" else f"merge_speed_{size}.json"
        path = RESULTS / (name if args.device == "cpu" else name.replace(".json", f"_{args.device.split(':')[0]}.json"))
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
