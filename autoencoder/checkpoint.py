"""Writing and resuming a training run's checkpoints, each one an atomic unit: the resume machinery that every
training shares (the autoencoder's ``autoencoder.train``, the evaluator's and perceptual net's
``autoencoder.train_evaluator``, the latent prior's ``latent_ops.prior``). It knows no network and no loss, and
imports nothing of any training, so no training reaches another's code through it, and no inference command
imports it.

A run folder holds ``config.json``, ``metrics.jsonl``, ``samples/`` and its checkpoints:

- ``checkpoints/step_NNNNNNNN/`` holds ``model.safetensors`` (all networks) and
  ``train_state.pt`` (optimisers, step, RNG; tensors and plain values only, loaded with
  ``weights_only=True``) of one step. It is built under a temporary name and renamed into
  place whole; then ``checkpoint.json``, the pointer to the current one, is replaced
  atomically; only then is the previous step's folder removed. A kill at any moment
  leaves the pointer naming a complete checkpoint.
- ``model.safetensors`` at the top is a copy of the current checkpoint's weights, for
  people and tools that look there; loading prefers the pointer's.

Reading a finished run is ``autoencoder/run_folder.py``'s job; this module is the trainings'.

Example: ``python -c "from autoencoder.checkpoint import has_checkpoint; print(has_checkpoint('outputs/runs/NAME'))"``
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Iterable

import torch

from autoencoder.atomic import (
    is_temporary,
    remove_temporaries,
    replace_atomically,
    replace_folder,
    save_weights,
    write_json,
    write_text,
)
from autoencoder.cli import ConfigError, refuse_link_or_file
from autoencoder.run_folder import (
    CHECKPOINTS_FOLDER,
    MODEL_FILE,
    POINTER_FILE,
    STATE_FILE,
    STEP_FOLDER,
    RunError,
    checkpoint_file,
    checkpoint_folder,
    damaged,
    weights_metadata,
)


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


def state_file(run_dir: str | Path) -> Path:
    """The training state a run resumes from (beside the weights it loads)."""
    return checkpoint_file(run_dir, STATE_FILE)


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
    if file.is_symlink() or (file.exists() and not file.is_file()):
        raise ConfigError(f"{file} is not a plain file (a folder or a link), so the run's metrics cannot be "
                          f"continued; nothing was changed: move it away and resume again")
    if file.exists():
        kept, unreadable = [], 0
        for line in file.read_bytes().decode("utf-8", errors="replace").splitlines():
            try:
                entry = json.loads(line)
                if entry["step"] <= last_step:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):  # a line torn by a kill mid-write, or bytes that are not JSON
                unreadable += bool(line.strip())
        if unreadable > 1:  # one torn last line is what a kill leaves; more is damage, said aloud
            print(f"resume: {unreadable} lines of {file} were not metrics (damaged) and were dropped")
        write_text("".join(line + "\n" for line in kept), file)


def refuse_foreign_folder(run_dir: Path, own_files: Iterable[str], what: str) -> None:
    """Refuse, before any work, an --out that a training may not write into: a link (a run is written only in its
    own folder, never through a link it did not make), a file, or a folder holding anything but ``own_files``
    (hidden names count: a ``.git`` or a ``.env`` is the user's). Temporary names of this project's writers pass."""
    run_dir = Path(run_dir)
    refuse_link_or_file(run_dir, "a training writes only in its own folder, never through a link")
    own = set(own_files)
    foreign = sorted(p.name for p in run_dir.iterdir() if p.name not in own and not is_temporary(p.name)) \
        if run_dir.is_dir() else []
    if foreign:
        raise ConfigError(f"--out {run_dir} is not empty and not {what} (it holds {foreign[0]}"
                          f"{' and more' if len(foreign) > 1 else ''}); nothing was written: pass a new --out")
