"""Where and in what precision a run computes: the device, bf16 autocast where it is native.

Example: ``python -c "from autoencoder import hardware, config; print(hardware.resolve_precision(config.make_config('cpu'), hardware.resolve_device(config.make_config('cpu'))))"``
"""
from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import Any

import torch

from autoencoder.config import ConfigError
from autoencoder.distributed import SINGLE, Shard


def resolve_device(config: Any, shard: Shard = SINGLE) -> torch.device:
    """The device of this process: under torchrun, GPU number LOCAL_RANK of the node.

    ``config``: any command's config with ``device`` (auto, cpu, cuda) and ``precision`` fields:
    the one resolver for training, the evaluator and every latent_ops command.
    """
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but torch sees no CUDA GPU; use --device auto or cpu")
    kind = config.device if config.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device("cuda", shard.local_rank) if kind == "cuda" else torch.device("cpu")


def resolve_precision(config: Any, device: torch.device) -> torch.dtype:
    """bf16 autocast where the hardware has native bf16 (measured faster, see README), else fp32."""
    if config.precision == "fp32":
        return torch.float32
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
    else:
        supported = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    if config.precision == "bf16" and not supported:
        raise ConfigError(f"--precision bf16 is not supported on this {device.type}; use auto or fp32")
    return torch.bfloat16 if supported else torch.float32


def autocast(device: torch.device, dtype: torch.dtype):
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
