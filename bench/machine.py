"""What a benchmark table prints about the machine it ran on (shared by the bench scripts)."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch


def machine(device: str = "cpu") -> str:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = next((line.split(":", 1)[1].strip() for line in flags.splitlines() if line.startswith("model name")),
               platform.processor() or platform.machine())
    text = (f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, AMX bf16: "
            f"{'amx_bf16' in flags}, torch {torch.__version__}")
    if device.startswith("cuda"):
        text += f"; GPU: {torch.cuda.get_device_name()}"
    return text


def sync(device: str) -> None:
    """Wait for the device's queued work (a no-op on CPU), so a host clock times it."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_rate(m: int, k: int, n: int, dtype: torch.dtype, *, device: str = "cpu", reps: int = 10,
                warmup: int = 1, stat: Callable[[list[float]], float] = min) -> float:
    """FLOP/s of an (m×k)·(k×n) product in `dtype` on `device`: `stat` (min: a peak; median: a typical
    rate) of `reps` timed products after `warmup` untimed ones."""
    a, b = torch.randn(m, k, dtype=dtype, device=device), torch.randn(k, n, dtype=dtype, device=device)
    for _ in range(warmup):
        a @ b
    times = []
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t)
    return 2 * m * k * n / stat(times)
