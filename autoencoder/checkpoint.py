"""Run folders on disk: atomic writes of weights and training state, and loading a run back.

A run folder holds ``config.json``, ``model.safetensors`` (all networks),
``train_state.pt`` (optimisers, step, RNG; tensors and plain values only, loaded with
``weights_only=True``), ``metrics.jsonl`` and ``samples/``. Nothing loaded here
executes code.

Example: ``python -c "from autoencoder.checkpoint import load_run; print(load_run('outputs/runs/NAME')[0])"``
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from autoencoder.config import TrainConfig, load_config
from autoencoder.models import Networks, build_networks

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
STATE_FILE = "train_state.pt"
METRICS_FILE = "metrics.jsonl"


class RunError(FileNotFoundError):
    """A run folder that is missing or incomplete; the message says what to do."""


def replace_atomically(write, file: Path) -> None:
    """Write through ``write(tmp_path)`` then rename, so a kill never leaves half a file.

    The temporary name keeps the file's suffix (``.latents.tmp123.npz``): numpy adds
    ``.npz`` to a name without it.
    """
    file = Path(file)
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.stem}.tmp{os.getpid()}{file.suffix}")
    write(tmp)
    os.replace(tmp, file)


def save_tensors(tensors: dict[str, torch.Tensor], file: Path, metadata: dict[str, str] | None = None) -> None:
    """A dict of tensors to a safetensors file, replaced atomically."""
    replace_atomically(lambda tmp: save_file(tensors, str(tmp), metadata=metadata), file)


def save_weights(networks: torch.nn.Module, file: Path, dtype: torch.dtype | None = None,
                 metadata: dict[str, str] | None = None) -> None:
    """All parameters and buffers to safetensors; ``dtype`` (e.g. fp16) casts floating tensors."""
    tensors = {}
    for name, t in networks.state_dict().items():
        t = t.detach().cpu()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        tensors[name] = t.contiguous().clone()
    save_tensors(tensors, file, metadata)


def load_weights(networks: torch.nn.Module, file: Path) -> None:
    """Load safetensors weights into ``networks``, casting to each tensor's own dtype."""
    tensors = load_file(str(file))
    own = networks.state_dict()
    missing = sorted(set(own) - set(tensors))
    if missing:
        raise RunError(f"{file} lacks {len(missing)} tensors the config's networks need "
                       f"(first: {missing[0]}); was it written by another config?")
    networks.load_state_dict({k: v.to(own[k].dtype) for k, v in tensors.items() if k in own})


def weights_metadata(file: Path) -> dict[str, str]:
    """The string metadata stored in a safetensors file (e.g. the step it was saved at)."""
    with safe_open(str(file), framework="pt") as f:
        return f.metadata() or {}


def save_train_state(state: dict[str, Any], file: Path) -> None:
    replace_atomically(lambda tmp: torch.save(state, tmp), file)


def load_train_state(file: Path) -> dict[str, Any]:
    return torch.load(file, map_location="cpu", weights_only=True)


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[TrainConfig, Networks]:
    """The config and the networks (in eval mode) of a run folder."""
    run_dir = Path(run_dir)
    for name in (CONFIG_FILE, MODEL_FILE):
        if not (run_dir / name).exists():
            raise RunError(f"{run_dir / name} is missing: {run_dir} is not a finished run folder "
                           f"(train one with python -m autoencoder.train --out {run_dir})")
    config = load_config(run_dir / CONFIG_FILE)
    networks = build_networks(config)
    load_weights(networks, run_dir / MODEL_FILE)
    return config, networks.to(device).eval()
