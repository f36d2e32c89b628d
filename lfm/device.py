"""Where tensors live: the device a user asked for, and how much memory it has free.

    >>> resolve_device("cpu")
    device(type='cpu')
    >>> available_bytes("cpu") > 0
    True
"""

from __future__ import annotations

import os

import torch


def resolve_device(device: str | torch.device | None) -> torch.device:
    """'auto'/None -> cuda when available, else cpu. An unavailable cuda is an error, not a fallback."""
    if isinstance(device, torch.device):
        return device
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    return dev


def available_bytes(device: str | torch.device) -> int:
    """Free memory on ``device``: the GPU's free memory, or the kernel's MemAvailable on CPU."""
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free)
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


__all__ = ["resolve_device", "available_bytes", "gib"]
