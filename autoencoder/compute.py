"""Where and in what precision a command computes: the device, bf16 autocast where it is native, and
the machine's name for the records.

Example: ``python -c "from autoencoder.compute import resolve_device, resolve_precision; print(resolve_precision('auto', resolve_device('auto')))"``
"""
from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path

import torch

from autoencoder.cli import ConfigError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "bf16", "fp32")


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto``: CUDA if torch sees a GPU, else the CPU; under torchrun, GPU number ``local_rank``."""
    if device not in DEVICES:
        raise ConfigError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but torch sees no CUDA GPU; use --device auto or cpu")
    kind = device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device("cuda", local_rank) if kind == "cuda" else torch.device("cpu")


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """bf16 autocast where the hardware has native bf16 (measured faster, see docs/performance.md), else fp32."""
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return torch.float32
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
    else:
        supported = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    if precision == "bf16" and not supported:
        raise ConfigError(f"--precision bf16 is not supported on this {device.type}; use auto or fp32")
    return torch.bfloat16 if supported else torch.float32


def autocast(device: torch.device, dtype: torch.dtype):
    """bf16 autocast on ``device``, or nothing for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def machine_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name and core count, for the records."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} CPU, {os.cpu_count()} cores"
