"""Which run folder a latent_ops command works on: the one named, else the newest trained run, else
the model the repository ships (``models/pegasus-cifar10``, made by ``make model``).

Example: ``python -c "from latent_ops.runs import resolve_run; print(resolve_run(''))"``
"""
from __future__ import annotations

from pathlib import Path

from autoencoder.cli import ConfigError
from autoencoder.run_folder import MODEL_FILE, RunError, model_file

RUNS_FOLDER = Path("outputs/runs")
SHIPPED_MODEL = Path(__file__).resolve().parent.parent / "models" / "pegasus-cifar10"


def resolve_run(run: str | Path = "", runs_folder: Path = RUNS_FOLDER, shipped: Path = SHIPPED_MODEL) -> Path:
    """``run`` when given (it must hold weights), else the run whose weights were written last, else
    the shipped model."""
    if run:
        path = Path(run)
        if not path.is_dir() or not model_file(path).exists():
            raise RunError(f"{path} has no {MODEL_FILE}: pass --run a trained run folder "
                           f"(python -m autoencoder.train makes one)")
        return path
    runs = sorted(runs_folder.glob(f"*/{MODEL_FILE}"), key=lambda f: f.stat().st_mtime)
    if not runs and model_file(shipped).exists():
        return shipped
    if not runs:
        raise RunError(f"no trained run in {runs_folder}/ and no --run given: train one with "
                       f"python -m autoencoder.train, or pass --run RUN_FOLDER")
    return runs[-1].parent


def refuse_foreign_folder(out: Path, own_files: set[str], what: str) -> None:
    """An output folder is replaced whole, so one holding anything but ``own_files`` is refused before any work."""
    if out.exists():
        if not out.is_dir():
            raise ConfigError(f"--out {out} is a file; pass a folder")
        foreign = sorted(p.name for p in out.iterdir() if p.name not in own_files)
        if foreign:
            raise ConfigError(f"--out {out} is not empty and not {what} output (it holds {foreign[0]}); "
                              f"nothing was written: pass a new --out")
