"""Run folders on disk: checkpoints written as one atomic unit, and loading a run back.

A run folder holds ``config.json``, ``metrics.jsonl``, ``samples/`` and its checkpoints:

- ``checkpoints/step_NNNNNNNN/`` holds ``model.safetensors`` (all networks) and
  ``train_state.pt`` (optimisers, step, RNG; tensors and plain values only, loaded with
  ``weights_only=True``) of one step. It is built under a temporary name and renamed into
  place whole; then ``checkpoint.json``, the pointer to the current one, is replaced
  atomically; only then is the previous step's folder removed. A kill at any moment
  leaves the pointer naming a complete checkpoint.
- ``model.safetensors`` at the top is a copy of the current checkpoint's weights, for
  people and tools that look there; loading prefers the pointer's.

Folders without a pointer (shipped models, older runs) keep their weights at the top.
Nothing loaded here executes code; a damaged file is an error naming it.

Example: ``python -c "from autoencoder.checkpoint import load_run; print(load_run('outputs/runs/NAME')[0])"``
"""
from __future__ import annotations

import json
import hashlib
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from autoencoder.atomic import remove_temporaries, replace_atomically, save_tensors, write_json, write_text
from autoencoder.config import ConfigError, TrainConfig, load_config, read_json
from autoencoder.errors import UserError
from autoencoder.models import Networks, build_networks

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
STATE_FILE = "train_state.pt"
METRICS_FILE = "metrics.jsonl"
POINTER_FILE = "checkpoint.json"
CHECKPOINTS_FOLDER = "checkpoints"
STEP_FOLDER = re.compile(r"step_\d{8}")



class RunError(UserError, FileNotFoundError):
    """A run folder that is missing, incomplete or damaged; the message says what to do."""


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


def damaged(file: Path, error: BaseException, fix: str) -> RunError:
    return RunError(f"{file} is damaged or not the file it should be ({type(error).__name__}: "
                    f"{str(error)[:100]}); {fix}")


def read_tensors(file: Path, fix: str) -> dict[str, torch.Tensor]:
    """A safetensors file; a missing or damaged one is a RunError naming it and saying ``fix``."""
    if not Path(file).exists():
        raise RunError(f"{file} is missing; {fix}")
    try:
        return load_file(str(file))
    except Exception as error:  # safetensors raises its own error types for torn or foreign files
        raise damaged(file, error, fix) from None


def load_weights(networks: torch.nn.Module, file: Path) -> None:
    """Load safetensors weights into ``networks``, casting to each tensor's own dtype."""
    tensors = read_tensors(file, "restore it from where it came, or train the run again")
    own = networks.state_dict()
    missing = sorted(set(own) - set(tensors))
    if missing:
        raise RunError(f"{file} lacks {len(missing)} tensors the config's networks need "
                       f"(first: {missing[0]}); was it written by another config?")
    wrong = [k for k in own if tensors[k].shape != own[k].shape]
    if wrong:
        raise RunError(f"{file}: tensor {wrong[0]} is {tuple(tensors[wrong[0]].shape)} but the config's "
                       f"networks need {tuple(own[wrong[0]].shape)}; the weights and config.json do not match")
    broken = next((k for k in own if tensors[k].is_floating_point() and not tensors[k].isfinite().all()), None)
    if broken is not None:
        raise RunError(f"{file}: tensor {broken} holds NaN or infinity (weights of a diverged run); "
                       f"use an earlier checkpoint or train again")
    networks.load_state_dict({k: v.to(own[k].dtype) for k, v in tensors.items() if k in own})


def weights_metadata(file: Path) -> dict[str, str]:
    """The string metadata stored in a safetensors file (e.g. the step it was saved at)."""
    try:
        with safe_open(str(file), framework="pt") as f:
            return f.metadata() or {}
    except Exception as error:
        raise damaged(file, error, "train the run again or restore the file") from None


def save_train_state(state: dict[str, Any], file: Path) -> None:
    replace_atomically(lambda tmp: torch.save(state, tmp), file)


def load_train_state(file: Path) -> dict[str, Any]:
    """Training state, loaded with ``weights_only=True`` (plain values and tensors only)."""
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise RunError(f"{file} is missing; the run has no training state to resume") from None
    except Exception as error:  # a torn zip, a foreign pickle refused by weights_only, ...
        raise damaged(file, error, "it cannot be resumed from; start a new run") from None
    if not isinstance(state, dict) or not all(isinstance(state.get(k, 0), int) and state.get(k, 0) >= 0
                                              for k in ("step", "epoch")):
        raise RunError(f"{file} is not a training state (no valid step number); start a new run")
    return state


# --- checkpoints as one unit ---------------------------------------------------------------------

def checkpoint_folder(run_dir: Path) -> Path | None:
    """The folder of the current checkpoint (named by the pointer), or None when there is no pointer."""
    pointer = Path(run_dir) / POINTER_FILE
    if not pointer.exists():
        return None
    try:
        record = read_json(pointer, "checkpoint pointer")
    except ConfigError as error:
        raise RunError(str(error)) from None
    name = record.get("folder") if isinstance(record, dict) else None
    if not isinstance(name, str) or not STEP_FOLDER.fullmatch(name):  # never a path outside the run
        raise RunError(f"{pointer} does not name a checkpoint folder (got {name!r}); the run is damaged")
    folder = Path(run_dir) / CHECKPOINTS_FOLDER / name
    if not folder.is_dir():
        raise RunError(f"{pointer} names {folder}, which is missing; the run is damaged")
    return folder


def model_file(run_dir: str | Path) -> Path:
    """The weights a run is loaded from: the current checkpoint's, else ``model.safetensors`` at the top."""
    folder = checkpoint_folder(Path(run_dir))
    return (folder if folder is not None else Path(run_dir)) / MODEL_FILE


def state_file(run_dir: str | Path) -> Path:
    folder = checkpoint_folder(Path(run_dir))
    return (folder if folder is not None else Path(run_dir)) / STATE_FILE


def has_checkpoint(run_dir: str | Path) -> bool:
    run_dir = Path(run_dir)
    return (run_dir / POINTER_FILE).exists() or (run_dir / MODEL_FILE).exists() or (run_dir / STATE_FILE).exists()


def write_checkpoint(run_dir: Path, networks: torch.nn.Module, state: dict[str, Any], step: int) -> Path:
    """Weights and training state of ``step`` as one unit (see the module docstring); returns its folder."""
    run_dir = Path(run_dir)
    parent = run_dir / CHECKPOINTS_FOLDER
    name = f"step_{step:08d}"
    folder = parent / name
    current = checkpoint_folder(run_dir) if (run_dir / POINTER_FILE).exists() else None
    if current is not None and current.name == name:
        return folder  # this step is already the current checkpoint

    def build(tmp: Path) -> None:
        save_weights(networks, tmp / MODEL_FILE, metadata={"step": str(step)})
        save_train_state(state, tmp / STATE_FILE)

    from autoencoder.atomic import replace_folder

    replace_folder(build, folder)
    write_json({"step": step, "folder": name}, run_dir / POINTER_FILE)
    copy_to_top(run_dir, folder)
    for old in parent.iterdir():  # the previous checkpoints, now that the new one is current
        if old.name != name and STEP_FOLDER.fullmatch(old.name):
            shutil.rmtree(old, ignore_errors=True)
    (run_dir / STATE_FILE).unlink(missing_ok=True)  # an older run's top-level state is superseded
    return folder


def copy_to_top(run_dir: Path, folder: Path) -> None:
    replace_atomically(lambda tmp: shutil.copyfile(folder / MODEL_FILE, tmp), run_dir / MODEL_FILE)


def clean_run_folder(run_dir: Path) -> list[Path]:
    """Remove what a killed writer left: temporary files and folders, checkpoints the pointer does not name."""
    run_dir = Path(run_dir)
    removed = remove_temporaries(run_dir) + remove_temporaries(run_dir / CHECKPOINTS_FOLDER)
    parent = run_dir / CHECKPOINTS_FOLDER
    if parent.is_dir() and (run_dir / POINTER_FILE).exists():
        current = checkpoint_folder(run_dir)
        for old in parent.iterdir():
            if STEP_FOLDER.fullmatch(old.name) and old != current:
                shutil.rmtree(old, ignore_errors=True)
                removed.append(old)
        top = run_dir / MODEL_FILE
        wanted = weights_metadata(current / MODEL_FILE).get("step")
        if not top.exists() or weights_metadata(top).get("step") != wanted:  # killed before the copy
            copy_to_top(run_dir, current)
    return removed


def trim_metrics(file: Path, last_step: int) -> None:
    """Drop metric lines logged after the checkpoint a resumed run restarts from."""
    if file.exists():
        kept = []
        for line in file.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= last_step:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):  # a line torn by a kill mid-write
                continue
        write_text("".join(line + "\n" for line in kept), file)


def weights_digest(run_dir: str | Path) -> str:
    """SHA-256 (hex, 16 characters) of the weights a run loads: the stamp of every file derived from them
    ("" for a folder without weights)."""
    file = model_file(run_dir)
    if not file.exists():
        return ""
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def load_run_config(run_dir: Path) -> TrainConfig:
    """A run's config.json, checked like flags; a bad one is a RunError naming the file."""
    try:
        return load_config(Path(run_dir) / CONFIG_FILE)
    except ConfigError as error:
        raise RunError(str(error)) from None


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[TrainConfig, Networks]:
    """The config and the networks (in eval mode) of a run folder."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).exists() or not model_file(run_dir).exists():
        raise RunError(f"{run_dir} is not a finished run folder (it needs {CONFIG_FILE} and {MODEL_FILE}); "
                       f"train one with python -m autoencoder.train --out {run_dir}")
    config = load_run_config(run_dir)
    networks = build_networks(config)
    load_weights(networks, model_file(run_dir))
    return config, networks.to(device).eval()
