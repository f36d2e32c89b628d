"""Where tensors live: the device a user asked for, and how much memory it has free.

    >>> resolve_device("cpu"), resolve_device("cpu:0")
    (device(type='cpu'), device(type='cpu'))
    >>> same_device("cpu", torch.device("cpu:0"))
    True
    >>> available_bytes("cpu") > 0
    True
"""

from __future__ import annotations

import os

import torch


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device a user named, as the one value every comparison uses: 'auto'/None -> cuda when available,
    else cpu; a CUDA device always carries its index ('cuda' -> 'cuda:<current>', as the tensors put there
    report it: torch counts ``device('cuda') == device('cuda:0')`` as False); the CPU never does ('cpu:0' ->
    'cpu', as CPU tensors report it). An unavailable cuda is an error, not a fallback."""
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
        index = torch.cuda.current_device() if dev.index is None else dev.index
        if index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                             f"choose cuda:0..cuda:{torch.cuda.device_count() - 1}")
        return torch.device("cuda", index)
    return dev


def same_device(a: str | torch.device, b: str | torch.device) -> bool:
    """Whether two device names mean the same device (compared resolved: 'cuda' is 'cuda:0' on a one-GPU box)."""
    return resolve_device(a) == resolve_device(b)


def available_bytes(device: str | torch.device) -> int:
    """Memory this process can still use on ``device``: on a GPU its free memory plus what PyTorch's caching
    allocator holds without using it (reserved - allocated: freed tensors' memory, reused before the driver is
    asked again, and invisible to ``mem_get_info``); on CPU the kernel's MemAvailable."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free) + torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def gib(n_bytes: int) -> str:
    """'1.9 GiB'."""
    return f"{n_bytes / 2**30:.1f} GiB"


__all__ = ["resolve_device", "same_device", "available_bytes", "gib"]
