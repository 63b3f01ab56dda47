"""Which run folder a latent_ops command works on: the one named, else the newest trained run, else
the model the repository ships (``models/pegasus-cifar10``, made by ``make model``).

Example: ``python -c "from latent_ops.runs import resolve_run; print(resolve_run(''))"``
"""
from __future__ import annotations

from pathlib import Path

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


def repository_path(path: str | Path) -> str:
    """``path`` relative to the repository when it lies inside it (so an output never carries this machine's
    absolute paths), else as given."""
    try:
        return Path(path).resolve().relative_to(SHIPPED_MODEL.parent.parent).as_posix()
    except ValueError:
        return str(path)
