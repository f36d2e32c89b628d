"""Run the hostile-input / fault catalogue of docs/hostile.md against an lfm tree and print its table.

Run by hand (not collected by pytest; needs root for the tmpfs cases):

    PYTHONPATH=/path/to/lfm-tree python tests/hostile_probe.py /tmp/probe > table.md

Each case builds its inputs from the test fixtures, runs `python -m lfm.cli merge ...` (PYTHONPATH is
inherited, so the tree under test is the one that runs), and reports the exit code, the last line of
stderr, and whether anything was left next to --out.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
from fixtures import INTERMEDIATE, TinyZoo, build_base, build_tuned, copy_dir, read_state, rewrite_single  # noqa: E402

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
VISION_KEY = "vision_tower.post_layernorm.weight"


def lfm(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "lfm.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV, **kw)


def merge_args(base, tuned, out, *extra):
    return ["merge", "--base", base, "--tuned", tuned, "--out", out, "--method", "ties", "--quiet",
            "--device", "cpu", *extra]


def leftovers(out: Path) -> list[str]:
    parent = out.parent
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{out.name}.lfm-"))


def sharded(zoo, root: Path, name: str) -> Path:
    return copy_dir(zoo.base_sharded, root / name)


def index_of(d: Path) -> dict:
    return json.loads((d / "model.safetensors.index.json").read_text())


def write_index(d: Path, index) -> None:
    (d / "model.safetensors.index.json").write_text(json.dumps(index))


def build_cases(zoo: TinyZoo, root: Path) -> list[tuple[str, list, Path]]:
    """(case, lfm args, out) for the plain cases (run to completion)."""
    cases = []

    def add(name, base, tuned, *extra):
        out = root / "out" / name.split(":")[0]
        cases.append((name, merge_args(base, tuned, out, *extra), out))

    # 2. pickle through an index, paths outside the directory
    d = sharded(zoo, root, "index_bin")
    idx = index_of(d)
    first = sorted(set(idx["weight_map"].values()))[0]
    keys = [k for k, v in idx["weight_map"].items() if v == first]
    torch.save({k: v for k, v in read_state(d).items() if k in keys}, d / "weights.bin")
    (d / first).unlink()
    idx["weight_map"] = {k: ("weights.bin" if v == first else v) for k, v in idx["weight_map"].items()}
    write_index(d, idx)
    add("2a: index -> weights.bin (torch.save), no --allow-pickle", d, zoo.llava_sharded)
    for tag, target in (("2b", "../outside.safetensors"), ("2c", None)):
        d = sharded(zoo, root, f"index_{tag}")
        idx = index_of(d)
        first = sorted(set(idx["weight_map"].values()))[0]
        dest = root / "outside.safetensors" if target else root / f"abs_{tag}.safetensors"
        shutil.move(d / first, dest)
        name = target or str(dest)
        idx["weight_map"] = {k: (name if v == first else v) for k, v in idx["weight_map"].items()}
        write_index(d, idx)
        add(f"{tag}: index names {'../outside.safetensors' if target else 'an absolute path'}", d, zoo.llava_sharded)

    # 5. two shards hold one key / a shard key not in the index
    d = sharded(zoo, root, "dup_key")
    idx = index_of(d)
    names = sorted(set(idx["weight_map"].values()))
    key1 = next(k for k, v in idx["weight_map"].items() if v == names[0])
    s2 = read_state_file(d / names[1])
    s2[key1] = torch.full_like(read_state(d)[key1], 7.0)
    save_file(s2, str(d / names[1]), metadata={"format": "pt"})
    add("5a: a key in two shards", d, zoo.llava_sharded)
    d = sharded(zoo, root, "unlisted_key")
    idx = index_of(d)
    key1 = sorted(idx["weight_map"])[0]
    del idx["weight_map"][key1]
    write_index(d, idx)
    add("5b: a shard key the index does not list", d, zoo.llava_sharded)

    # 6. config disagrees with the tensors
    b, t = copy_dir(zoo.base, root / "cfg_base"), copy_dir(zoo.llava, root / "cfg_tuned")
    for f, sub in ((b / "config.json", None), (t / "config.json", "text_config")):
        cfg = json.loads(f.read_text())
        (cfg[sub] if sub else cfg)["hidden_size"] = 128
        f.write_text(json.dumps(cfg))
    add("6: hidden_size 128 in both configs, tensors 32 wide", b, t)

    # 7. non-finite output, integer weight
    t = copy_dir(zoo.llava, root / "big_value")
    rewrite_single(t, lambda sd: sd["language_model.model.norm.weight"].__setitem__(0, 1e6))
    add("7a: --dtype float16 turns 1e6 into Inf", zoo.base, t, "--dtype", "float16")
    t = copy_dir(zoo.llava, root / "inf_vision")
    rewrite_single(t, lambda sd: sd[VISION_KEY].__setitem__(0, float("inf")))
    add("7b: Inf in a copied vision tensor", zoo.base, t)
    b, t = copy_dir(zoo.base, root / "i64_base"), copy_dir(zoo.llava, root / "i64_tuned")
    rewrite_single(b, lambda sd: sd.__setitem__("model.norm.weight", sd["model.norm.weight"].long()))
    rewrite_single(t, lambda sd: sd.__setitem__("language_model.model.norm.weight",
                                                sd["language_model.model.norm.weight"].long() + 1))
    add("7c: an I64 LM weight", b, t)

    # 9. malformed JSON and dtypes
    for tag, edit, label in (
            ("9c", lambda cfg: [], "config.json is []"),
            ("9d", lambda cfg: {**cfg, "text_config": None}, "text_config: null")):
        t = copy_dir(zoo.llava, root / f"json_{tag}")
        cfg = json.loads((t / "config.json").read_text())
        (t / "config.json").write_text(json.dumps(edit(cfg)))
        add(f"{tag}: {label}", zoo.base, t)
    d = sharded(zoo, root, "wm_list")
    idx = index_of(d)
    idx["weight_map"] = list(idx["weight_map"].items())
    write_index(d, idx)
    add("9e: weight_map is a list", d, zoo.llava_sharded)
    d = sharded(zoo, root, "shard_number")
    idx = index_of(d)
    k0 = sorted(idx["weight_map"])[0]
    idx["weight_map"][k0] = 5
    write_index(d, idx)
    add("9f: a shard name that is a number", d, zoo.llava_sharded)
    for tag, dtype in (("9g", "F8_E4M3"), ("9h", "BOOL")):
        t = copy_dir(zoo.llava, root / f"dtype_{tag}")
        set_header_dtype(t / "model.safetensors", "language_model.model.norm.weight", dtype)
        add(f"{tag}: a {dtype} LM weight", zoo.base, t)
    return cases


def read_state_file(f: Path) -> dict:
    from safetensors.torch import load_file
    return dict(load_file(str(f)))


def set_header_dtype(f: Path, key: str, dtype: str) -> None:
    """Relabel one tensor's dtype in a safetensors header (same byte size: F32 data read as 4 x 1 byte
    would not fit, so the shape is widened to keep data_offsets valid)."""
    import struct
    raw = f.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    info = header[key]
    info["dtype"] = dtype
    info["shape"] = [info["shape"][0] * 4] if len(info["shape"]) == 1 else info["shape"]
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    f.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + n:])


def run_plain(cases) -> list[tuple[str, int, str, str]]:
    rows = []
    for name, args, out in cases:
        proc = lfm(*args)
        _, err = proc.communicate(timeout=300)
        rows.append((name, proc.returncode, last_line(err), describe_out(out)))
    return rows


def last_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    if "Traceback" in err:
        return "Traceback: " + lines[-1][:160]
    return lines[-1][:260]


def describe_out(out: Path) -> str:
    parts = []
    if out.exists():
        parts.append("out written")
    left = leftovers(out) if out.parent.exists() else []
    if left:
        parts.append("left: " + ", ".join(left))
    return "; ".join(parts) or "nothing written"


def run_faults(zoo: TinyZoo, root: Path) -> list[tuple[str, int, str, str]]:
    rows = []
    big = root / "big"
    base = build_base(big / "base", seed=0, hidden_size=768, intermediate_size=2048, num_hidden_layers=8)
    tuned = build_tuned(big / "tuned", base, kind="llm", seed=5)
    for sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
        out = root / "out" / f"sig_{sig.name}"
        proc = lfm(*merge_args(base, tuned, out))
        deadline = time.time() + 120
        while time.time() < deadline and not leftovers(out) and proc.poll() is None:
            time.sleep(0.01)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        rows.append((f"8: {sig.name} mid-merge", proc.returncode, last_line(err), describe_out(out)))
    out = root / "out" / "sig_SIGKILL"
    proc = lfm(*merge_args(base, tuned, out))
    said, err = proc.communicate(timeout=300)
    removed = [line for line in said.splitlines() if line.startswith("removed ")]
    rows.append(("8: the next run after SIGKILL", proc.returncode, last_line(err) or "stdout: " + " ".join(removed),
                 describe_out(out)))
    out = root / "out" / "a_file"
    out.write_text("x")
    proc = lfm(*merge_args(zoo.base, zoo.llava, out, "--force"))
    _, err = proc.communicate(timeout=300)
    rows.append(("8: --out FILE --force", proc.returncode, last_line(err), describe_out(out)))

    for tag, opts, label in (("full", "size=64k", "disk full (ENOSPC)"), ("ro", "ro,size=1M", "read-only (EROFS)")):
        mnt = root / f"mnt_{tag}"
        mnt.mkdir(exist_ok=True)
        if subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mnt)]).returncode:
            rows.append((f"9: {label}", -1, "(skipped: cannot mount tmpfs)", ""))
            continue
        try:
            out = mnt / "out"
            proc = lfm(*merge_args(zoo.base, zoo.llava, out))
            _, err = proc.communicate(timeout=300)
            rows.append((f"9: {label}", proc.returncode, last_line(err),
                         describe_out(out) + ("" if tag == "ro" else f"; {sorted(os.listdir(mnt))}")))
        finally:
            subprocess.run(["umount", str(mnt)])
    return rows


def main(root: Path) -> None:
    if root.exists():
        shutil.rmtree(root)
    (root / "out").mkdir(parents=True)
    zoo = TinyZoo(root / "zoo")
    rows = run_plain(build_cases(zoo, root)) + run_faults(zoo, root)
    print("| case | exit | last stderr line | output |")
    print("|---|---|---|---|")
    for name, rc, line, out in rows:
        line = line.replace("|", "\\|")
        print(f"| {name} | {rc} | {line} | {out} |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/probe"))
