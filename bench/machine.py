"""What a benchmark table prints about the machine it ran on (shared by the bench scripts)."""

from __future__ import annotations

import os
import platform
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
