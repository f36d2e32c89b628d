"""The one GPU check (docs/devices.md): `make gpu-check` on a GPU box, one device run of at most ~8 minutes.

    python benchmarks/gpu_check.py --device cuda --size 8b --out "$OUT"     # on an H200: the measured run
    python benchmarks/gpu_check.py --device cpu --size tiny --out DIR       # in `make test` (tests/test_gpu_check.py)

1. the `gpu` tests (tests/test_gpu.py; skipped with --device cpu or --no-tests);
2. a bf16 pair generated on the device from a seeded generator of it (no download): the base a LlamaForCausalLM,
   the tuned a LlavaNextForConditionalGeneration whose language model has the base's shapes (size '8b':
   Llama-3-8B's, with a CLIP-L/336 tower; 'tiny': a few MB), tuned = base + N(0, 1e-3);
3. `lfm merge --device DEV` of TIES K=0.2, Neu-S-TIES K=0.2 M=0.3 and DARE K=0.2, and the copy floor (every
   tuned shard loaded and saved), each in a fresh process: end-to-end wall seconds (process start included),
   the merge's own seconds, peak GPU memory (PyTorch's allocator: allocated and reserved) and peak RSS; each
   output removed after it is measured (64 GiB of disk holds the pair and one output);
4. ResidentPair on DEV (fresh process): open, load the tuned model there, apply (first and second recipe), a K
   move's views (the viewed tensor, and every tensor's as the explorer's outcome table draws them);
5. gpu_check.json in --out: every row above, the targets (8B TIES and Neu-S-TIES <= 30 s each end to end, the
   copy floor beside; apply <= 1 s; a K move's view <= 0.2 s) and whether they were met, the machine.

Wheels for packages the box lacks: benchmarks/gpu_wheels.sh (run beforehand where a registry is reachable).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable

# text configs (Llama): '8b' is Llama-3-8B's; 'tiny' is benchmarks/merge_speed.py's
SIZES = {
    "8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=14336, vocab_size=128256),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=256),
}
VISION = {  # LLaVA-Next's CLIP-L/336 tower, and a tiny one
    "8b": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
               image_size=336, patch_size=14, projection_dim=768),
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                 image_size=28, patch_size=14, projection_dim=32),
}
SHARD_BYTES = {"8b": 5_000_000_000, "tiny": 200_000}  # 8b: 4 shards per model as Llama-3-8B; tiny: a few
MERGES = {"TIES K=0.2": ["--method", "ties", "--density", "0.2"],
          "Neu-S-TIES K=0.2 M=0.3": ["--method", "neu-s-ties", "--density", "0.2", "--neurons", "0.3"],
          "DARE K=0.2": ["--method", "dare", "--density", "0.2"]}
TARGETS = {"8b": {"merge_seconds": 30.0, "apply_seconds": 1.0, "k_move_view_seconds": 0.2}}
TESTS_SECONDS = 180  # the gpu tests' budget (issue 27)


# ----------------------------------------------------------------------------- the pair, generated on the device

def _configs(size: str):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextConfig

    text = LlamaConfig(**SIZES[size], max_position_embeddings=2048, tie_word_embeddings=False, bos_token_id=1,
                       eos_token_id=2, dtype="bfloat16")
    text.architectures = ["LlamaForCausalLM"]
    tuned = LlavaNextConfig(vision_config=CLIPVisionConfig(**VISION[size]), text_config=text,
                            image_token_index=SIZES[size]["vocab_size"] - 1)
    tuned.dtype = "bfloat16"
    tuned.architectures = ["LlavaNextForConditionalGeneration"]
    return text, tuned


def _shapes(model_cls, config) -> dict[str, tuple[int, ...]]:
    import torch

    with torch.device("meta"):
        model = model_cls(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


SAVED_NAMES = (("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head."),
               ("model.vision_tower.", "vision_tower."), ("model.multi_modal_projector.", "multi_modal_projector."),
               ("model.image_newline", "image_newline"))


def _saved_name(key: str) -> str:
    """transformers' in-memory LLaVA-Next names -> the names its checkpoints on the hub carry."""
    for a, b in SAVED_NAMES:
        if key.startswith(a):
            return b + key[len(a):]
    return key


def _write(out: Path, tensors, config, shard_bytes: int) -> None:
    """tensors: iterable of (key, tensor on the host); shards of ~shard_bytes and an index, as save_pretrained."""
    from safetensors.torch import save_file

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    config.save_pretrained(out)
    shards, current, size = [], {}, 0
    for key, tensor in tensors:
        if current and size + tensor.nbytes > shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[key] = tensor
        size += tensor.nbytes
    shards.append(current)
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(p.stat().st_size for p in out.glob("model-*.safetensors"))
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                  "weight_map": weight_map}, indent=2))


def build_pair(root: Path, size: str, device: str) -> dict[str, Path]:
    """base/ (Llama) and tuned/ (LLaVA-Next), drawn on ``device`` by seeded generators of it, written as bf16:
    base = N(0, 0.02) (norms 1), tuned = base + N(0, 1e-3) for the LM, N(0, 0.02) for the vision side. Every
    base tensor has a generator of its own, so the tuned side redraws it instead of holding it; a shard's
    tensors are the only ones held on the host at once."""
    import torch
    from transformers import LlamaForCausalLM, LlavaNextForConditionalGeneration

    text, tuned_cfg = _configs(size)
    lm_index = {key: (i, shape) for i, (key, shape) in enumerate(_shapes(LlamaForCausalLM, text).items())}
    noise = torch.Generator(device=device).manual_seed(0)

    def base_tensor(key):
        i, shape = lm_index[key]
        if key.endswith("norm.weight"):
            return torch.ones(shape, device=device)
        return torch.randn(shape, generator=torch.Generator(device=device).manual_seed(1 + i), device=device).mul_(0.02)

    def tuned_tensors():
        for key, shape in _shapes(LlavaNextForConditionalGeneration, tuned_cfg).items():
            lm_key = "model." + key.removeprefix("model.language_model.") if key.startswith("model.language_model.") \
                else key
            tuned = base_tensor(lm_key) if lm_key in lm_index else torch.zeros(shape, device=device)
            std = 1e-3 if lm_key in lm_index else 0.02  # the fine-tuning; the vision tower, projector, image_newline
            yield _saved_name(key), tuned.add_(torch.randn(shape, generator=noise, device=device).mul_(std)) \
                .to(torch.bfloat16).cpu()

    dirs = {"base": root / "base", "tuned": root / "tuned"}
    _write(dirs["base"], ((key, base_tensor(key).to(torch.bfloat16).cpu()) for key in lm_index), text,
           SHARD_BYTES[size])
    _write(dirs["tuned"], tuned_tensors(), tuned_cfg, SHARD_BYTES[size])
    return dirs


# ----------------------------------------------------------------------------- measuring, in fresh processes

def _peaks(device: str) -> dict:
    """This process's peak RSS and (on a GPU) peak memory of PyTorch's allocator."""
    import torch

    row = {"peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if device.startswith("cuda"):
        row["peak_gpu_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        row["peak_gpu_reserved_mib"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
    return row


def child_merge(args) -> dict:
    from lfm.cli import main as lfm_main

    started = time.perf_counter()
    rc = lfm_main(["merge", "--base", args.base, "--tuned", args.tuned, "--out", args.target, "--device",
                   args.device, "--quiet", *args.flags])
    if rc:
        raise SystemExit(rc)
    # to the microsecond: a tiny merge on a fast machine takes < 5 ms (rounded to 0.01 it read 0.0)
    return {"merge_seconds": round(time.perf_counter() - started, 6), **_peaks(args.device)}


def child_copy(args) -> dict:
    """The disk-write floor: every tuned shard loaded and saved again (what any merge must at least do)."""
    from safetensors.torch import load_file, save_file

    started = time.perf_counter()
    out = Path(args.target)
    out.mkdir(parents=True)
    for f in sorted(Path(args.tuned).glob("*.safetensors")):
        save_file(load_file(str(f)), str(out / f.name), metadata={"format": "pt"})
    return {"merge_seconds": round(time.perf_counter() - started, 6), **_peaks(args.device)}


def child_resident(args) -> dict:
    """ResidentPair on the device: open, the tuned model loaded there, apply, a K move's views."""
    import torch
    from transformers import AutoModelForImageTextToText

    import lfm
    from lfm.methods import Recipe

    def timed(fn):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        started = time.perf_counter()
        value = fn()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return value, round(time.perf_counter() - started, 6)

    resident, open_s = timed(lambda: lfm.ResidentPair(args.base, args.tuned, device=args.device, progress=False,
                                                      model_device=args.device))
    from lfm.evaluate.models import straight_to

    model, load_s = timed(lambda: AutoModelForImageTextToText.from_pretrained(
        args.tuned, dtype=torch.bfloat16, **straight_to(resident.device)).to(resident.device))
    _, first_apply_s = timed(lambda: resident.apply(model, Recipe(method="ties", density=0.2)))
    _, apply_s = timed(lambda: resident.apply(model, Recipe(density=0.2, neurons=0.3)))  # Neu-S-TIES
    _, apply_again_s = timed(lambda: resident.apply(model, Recipe(method="ties", density=0.3)))
    name = resident.names[len(resident.names) // 2]
    resident.view(name, Recipe(density=0.2, neurons=0.3))
    _, view_s = timed(lambda: resident.view(name, Recipe(density=0.25, neurons=0.3)))  # the K move
    _, all_views_s = timed(lambda: [resident.view(n, Recipe(density=0.3, neurons=0.3)) for n in resident.names])
    direct = not resident._stage
    return {"open_seconds": open_s, "model_load_seconds": load_s, "first_apply_seconds": first_apply_s,
            "apply_seconds": apply_s, "apply_other_k_seconds": apply_again_s, "k_move_view_seconds": view_s,
            "k_move_all_views_seconds": all_views_s, "n_tensors_viewed": len(resident.names),
            "direct_path": direct, "device": str(resident.device), **_peaks(args.device)}


CHILDREN = {"merge": child_merge, "copy": child_copy, "resident": child_resident}


def measure(kind: str, args, target: Path | None = None, flags=()) -> dict:
    """Run one child (a fresh process: CUDA and the allocator start clean), wall time end to end; its row."""
    if target is not None:
        shutil.rmtree(target, ignore_errors=True)
    cmd = [PY, __file__, "--child", kind, "--device", args.device, "--base", str(args.pair["base"]),
           "--tuned", str(args.pair["tuned"]), "--target", str(target or ""), "--", *flags]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env())
    wall = round(time.perf_counter() - started, 2)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1], "seconds": wall}
    row = {"seconds": wall, **json.loads(proc.stdout.strip().splitlines()[-1])}
    if target is not None and target.exists():
        row["output_bytes"] = sum(p.stat().st_size for p in target.rglob("*.safetensors"))
        shutil.rmtree(target)  # the disk holds one output at a time
    print(f"  {kind} {' '.join(flags)}: {row}", flush=True)
    return row


def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def run_tests(args) -> dict:
    """tests/test_gpu.py (marked gpu), within its budget: counts, seconds, the summary line."""
    started = time.perf_counter()
    try:
        proc = subprocess.run([PY, "-m", "pytest", "-q", "-m", "gpu", "tests/test_gpu.py", "-p", "no:cacheprovider"],
                              cwd=ROOT, capture_output=True, text=True, env=_env(), timeout=TESTS_SECONDS * 2)
    except subprocess.TimeoutExpired as e:  # recorded, and the measurements still run
        tail = (e.stdout or b"").decode(errors="replace").splitlines()[-40:] if isinstance(e.stdout, bytes) else \
            (e.stdout or "").splitlines()[-40:]
        return {"seconds": TESTS_SECONDS * 2, "within_budget": False, "returncode": "timeout", "output": tail}
    seconds = round(time.perf_counter() - started, 1)
    summary = (proc.stdout.strip().splitlines() or [""])[-1]
    counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|error)", summary)}
    failures = [line for line in proc.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    return {"seconds": seconds, "within_budget": seconds <= TESTS_SECONDS, "returncode": proc.returncode,
            "summary": summary, **counts, "failures": failures[:40]}


def machine(device: str) -> dict:
    import torch
    import transformers

    row = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "cpus": os.cpu_count(), "device": device}
    if device.startswith("cuda"):
        row["gpu"] = torch.cuda.get_device_name()
        row["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (the check) or cpu (make test's run)")
    ap.add_argument("--size", default="8b", choices=sorted(SIZES))
    ap.add_argument("--out", default=os.environ.get("OUT") or str(HERE / "results"),
                    help="where gpu_check.json goes (default $OUT, else benchmarks/results)")
    ap.add_argument("--work", help="where the pair is generated (default: a folder beside --out, removed after)")
    ap.add_argument("--no-tests", action="store_true", help="skip tests/test_gpu.py")
    ap.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    ap.add_argument("--base", help=argparse.SUPPRESS)
    ap.add_argument("--tuned", help=argparse.SUPPRESS)
    ap.add_argument("--target", help=argparse.SUPPRESS)
    ap.add_argument("flags", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(CHILDREN[args.child](args)))
        return 0

    from lfm.device import resolve_device

    args.device = str(resolve_device(args.device))  # an unavailable device: one line, before anything is built
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else out.parent / f".gpu_check_work_{args.size}"
    started = time.perf_counter()
    path = out / f"gpu_check_{args.size}_{args.device.split(':')[0]}.json"
    report = {"size": args.size, "machine": machine(args.device), "targets": TARGETS.get(args.size, {}),
              "merges": {}}

    def save():  # after every step: a run cut short still leaves what it measured
        report["total_seconds"] = round(time.perf_counter() - started, 1)
        path.write_text(json.dumps(report, indent=2) + "\n")

    if not args.no_tests and args.device.startswith("cuda"):
        print("gpu tests ...", flush=True)
        report["tests"] = run_tests(args)
        print(f"  {report['tests'].get('summary', report['tests']['returncode'])} ({report['tests']['seconds']} s)",
              flush=True)
        save()
    try:
        t0 = time.perf_counter()
        args.pair = build_pair(work, args.size, args.device)
        report["pair"] = {"generate_seconds": round(time.perf_counter() - t0, 1),
                          **{k: sum(p.stat().st_size for p in d.glob("*.safetensors")) for k, d in args.pair.items()}}
        print(f"pair: {report['pair']}", flush=True)
        save()
        # the targets first (TIES, Neu-S-TIES, the floor beside them, ResidentPair), DARE last: a run cut short
        # by the device's time limit loses the least
        for label in ("TIES K=0.2", "Neu-S-TIES K=0.2 M=0.3"):
            report["merges"][label] = measure("merge", args, work / "out", MERGES[label])
            save()
        report["merges"]["copy floor"] = measure("copy", args, work / "out")
        save()
        report["resident"] = measure("resident", args)
        save()
        report["merges"]["DARE K=0.2"] = measure("merge", args, work / "out", MERGES["DARE K=0.2"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    targets = report["targets"]
    if targets:
        merges, resident = report["merges"], report["resident"]
        report["met"] = {
            **{f"{label} <= {targets['merge_seconds']} s": merges[label].get("seconds", 1e9) <= targets["merge_seconds"]
               for label in ("TIES K=0.2", "Neu-S-TIES K=0.2 M=0.3")},
            f"apply <= {targets['apply_seconds']} s": resident.get("apply_seconds", 1e9) <= targets["apply_seconds"],
            f"a K move's view <= {targets['k_move_view_seconds']} s":
                resident.get("k_move_view_seconds", 1e9) <= targets["k_move_view_seconds"]}
    save()
    print(f"wrote {path} ({report['total_seconds']} s)")
    failed = [k for k, v in report.get("merges", {}).items() if "error" in v] + \
        (["resident"] if "error" in report.get("resident", {}) else []) + \
        (["tests"] if report.get("tests", {}).get("returncode", 0) not in (0,) else [])
    if failed:
        print(f"FAILED: {', '.join(failed)} (see {path})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
