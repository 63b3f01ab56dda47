"""Reading a trained run folder: its config, its weights, their digest, and one ``load_run``.

This is all that inference needs; writing and resuming checkpoints stay with training
(``autoencoder/checkpoint.py``). A run folder holds ``config.json`` and its weights:
``checkpoints/step_NNNNNNNN/model.safetensors`` named by the pointer ``checkpoint.json``,
else ``model.safetensors`` at the top (shipped models). Nothing loaded here executes code;
a missing or damaged file is a ``RunError`` naming it.

Example: ``python -c "from autoencoder.run_folder import load_run; print(load_run('models/pegasus-cifar10').config)"``
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from autoencoder.cifar10 import CACHE_FOLDER, DATA_FOLDER, SelectsClasses, parse_classes
from autoencoder.cli import CONFIG_FILE, ConfigError, UserError, check_ranges, load_config, read_json
from autoencoder.compute import resolve_device, resolve_precision
from autoencoder.models import ModelConfig, Networks, build_networks, check_code_grid

MODEL_FILE = "model.safetensors"
STATE_FILE = "train_state.pt"
METRICS_FILE = "metrics.jsonl"
POINTER_FILE = "checkpoint.json"
CHECKPOINTS_FOLDER = "checkpoints"
STEP_FOLDER = re.compile(r"step_\d{8}")


class RunError(UserError, FileNotFoundError):
    """A run folder that is missing, incomplete or damaged; the message says what to do."""


@dataclass
class RunConfig(SelectsClasses):
    """What inference reads from a run's ``config.json``: the networks and the data they were trained on.

    The training config (``autoencoder.config.TrainConfig``) has these fields and more; the rest
    are ignored here.
    """
    latent_dim: int = 128  # size of the code z
    width: int = 32  # channels of the first autoencoder stage
    res_blocks: int = 0  # residual blocks per resolution stage
    critic_width: int = 16  # channels of the critics' first stage
    latent_critic_hidden: int = 512  # hidden units of the latent critic
    image_critic_width: int = 0  # channels of the image critic's first stage; 0: critic_width
    image_critic_patches: bool = False  # the image critic judges 20-pixel patches (PatchGAN)
    image_critic_spectral: bool = True  # spectral normalisation in the image critic
    spatial_channels: int = 0  # 0: a flat code; C: a C x G x G code
    code_grid: int = 4  # G: cells per side of a spatial code
    class_weight: float = 0.0  # > 0: the networks include the class head
    classes: str = ""  # the classes it was trained on; empty: all ten
    data: str = DATA_FOLDER  # the data folder it was trained from
    cache_dir: str = CACHE_FOLDER  # its uint8 cache
    preset: str = ""  # the preset it started from
    seed: int = 0  # its training seed
    steps: int = 0  # its training steps
    device: str = "auto"  # the device it asked for
    precision: str = "auto"  # the precision it asked for
    channels_last: bool = True  # NHWC memory layout for the convolutions

    @property
    def model(self) -> ModelConfig:
        return ModelConfig.of(self)

    @property
    def code_shape(self) -> tuple[int, ...]:
        return self.model.code_shape


RUN_RANGES = {"latent_dim": (1, 65536), "width": (1, 4096), "res_blocks": (0, 64), "critic_width": (1, 4096),
              "latent_critic_hidden": (1, 65536), "image_critic_width": (0, 4096), "spatial_channels": (0, 4096),
              "class_weight": (0, 1e4), "seed": (0, 2**31 - 1), "steps": (0, 10**9)}


def check_run_config(config: RunConfig) -> None:
    check_ranges(config, RUN_RANGES)
    parse_classes(config.classes)
    check_code_grid(config)


def load_run_config(run_dir: str | Path) -> RunConfig:
    """A run's config.json, checked like flags; a bad or foreign one is a RunError naming the file."""
    file = Path(run_dir) / CONFIG_FILE
    try:
        values = read_json(file, "run config")
        if not isinstance(values, dict) or "latent_dim" not in values:
            raise ConfigError(f"{file} is not a run config (it has no latent_dim)")
        return load_config(file, RunConfig, check_run_config)
    except ConfigError as error:
        raise RunError(f"{error}; it is not a run config: pass --run a folder made by python -m autoencoder.train") \
            from None


def damaged(file: Path, error: BaseException, fix: str) -> RunError:
    """The one message for a file that cannot be read: which file, what the reader said (whole words), the fix."""
    said = " ".join(str(error).split()[:16])
    return RunError(f"{file} is damaged or not the file it should be ({type(error).__name__}: {said}); {fix}")


def read_tensors(file: Path, fix: str) -> dict[str, torch.Tensor]:
    """A safetensors file; a missing or damaged one is a RunError naming it and saying ``fix``."""
    if not Path(file).exists():
        raise RunError(f"{file} is missing; {fix}")
    try:
        return load_file(str(file))
    except Exception as error:  # safetensors raises its own error types for torn or foreign files
        raise damaged(file, error, fix) from None


def load_weights(networks: torch.nn.Module, file: Path, same_as: tuple[str, str] | None = None) -> None:
    """Load safetensors weights into ``networks``, casting to each tensor's own dtype.

    ``same_as`` = (prefix, source prefix): a tensor under ``prefix`` that the file does not hold is read from the
    one under ``source prefix`` (a file that saved two identical copies of a net once)."""
    tensors = read_tensors(file, "restore it from where it came, or train the run again")
    own = networks.state_dict()
    if same_as is not None:
        prefix, source = same_as
        tensors.update({k: tensors[source + k[len(prefix):]] for k in own if k.startswith(prefix)
                        and k not in tensors and source + k[len(prefix):] in tensors})
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


CRITIC_NAMES = ("latent_critic", "interp_critic", "image_critic")


def load_start_weights(networks: torch.nn.Module, run_dir: str | Path) -> list[str]:
    """Start ``networks`` from another run's saved weights (``--init_from``); returns the critics that start fresh.

    The autoencoder's tensors (encoder, decoder, class head) must all be there with the same shapes; a critic
    whose tensors are missing or shaped otherwise (a wider image critic) keeps its fresh initialisation.
    """
    run_dir = Path(run_dir)
    file = model_file(run_dir)
    if not (run_dir / CONFIG_FILE).exists() or not file.exists():
        raise RunError(f"--init_from {run_dir} is not a run folder with weights (it needs {CONFIG_FILE} and "
                       f"{MODEL_FILE}); pass a folder made by python -m autoencoder.train")
    tensors = read_tensors(file, "pass another --init_from run")
    own = networks.state_dict()

    def fits(name: str) -> bool:
        return name in tensors and tensors[name].shape == own[name].shape

    misfit = [k for k in own if not k.startswith(CRITIC_NAMES) and not fits(k)]
    if misfit:
        raise RunError(f"--init_from {run_dir}: its autoencoder does not fit this config's networks ({misfit[0]} is "
                       f"missing or shaped otherwise); give the same --latent_dim, --width, --res_blocks, "
                       f"--spatial_channels, --code_grid and --class_weight as that run")
    fresh = sorted({k.split(".")[0] for k in own if k.startswith(CRITIC_NAMES) and not fits(k)})
    loaded = {k: tensors[k].to(own[k].dtype) for k in own if not k.startswith(tuple(fresh)) and fits(k)}
    broken = next((k for k, v in loaded.items() if v.is_floating_point() and not v.isfinite().all()), None)
    if broken is not None:
        raise RunError(f"--init_from {run_dir}: tensor {broken} holds NaN or infinity; pass a run that did not diverge")
    networks.load_state_dict(loaded, strict=False)
    return fresh


def weights_metadata(file: Path) -> dict[str, str]:
    """The string metadata stored in a safetensors file (e.g. the step it was saved at)."""
    try:
        with safe_open(str(file), framework="pt") as f:
            return f.metadata() or {}
    except Exception as error:
        raise damaged(file, error, "train the run again or restore the file") from None


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
    if folder.is_symlink() or (Path(run_dir) / CHECKPOINTS_FOLDER).is_symlink():
        raise RunError(f"{folder} is a link, so its checkpoint may be another run's; a run is only read from its "
                       f"own checkpoints: replace the link by the run's own folder, or start a new run")
    if not folder.is_dir():
        raise RunError(f"{pointer} names {folder}, which is missing; the run is damaged")
    return folder


def checkpoint_file(run_dir: str | Path, name: str) -> Path:
    """File ``name`` of the current checkpoint, else of the run folder's top (shipped models, older runs)."""
    folder = checkpoint_folder(Path(run_dir))
    return (folder if folder is not None else Path(run_dir)) / name


def model_file(run_dir: str | Path) -> Path:
    """The weights a run is loaded from: the current checkpoint's, else ``model.safetensors`` at the top."""
    return checkpoint_file(run_dir, MODEL_FILE)


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


def checked_weights_digest(run_dir: str | Path) -> str:
    """``weights_digest``, after checking that the weights can be read: a file derived from the weights is compared
    with this stamp, and damaged weights must be said as damaged, not as other weights."""
    if model_file(run_dir).exists():
        weights_metadata(model_file(run_dir))
    return weights_digest(run_dir)


@dataclass
class LoadedRun:
    """A run ready for inference: its config, its networks (eval mode, on ``device``) and the precision
    to compute in."""
    folder: Path
    config: RunConfig
    nets: Networks
    device: torch.device
    dtype: torch.dtype

    @property
    def code_shape(self) -> tuple[int, ...]:
        return self.config.code_shape


def load_run(run_dir: str | Path, device: str = "auto", precision: str = "auto") -> LoadedRun:
    """The one way to open a run: config, networks with their weights, device and precision resolved."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).exists() or not model_file(run_dir).exists():
        raise RunError(f"{run_dir} is not a finished run folder (it needs {CONFIG_FILE} and {MODEL_FILE}); "
                       f"train one with python -m autoencoder.train --out {run_dir}")
    config = load_run_config(run_dir)
    networks = build_networks(config.model)
    load_weights(networks, model_file(run_dir))
    where = resolve_device(device)
    return LoadedRun(run_dir, config, networks.to(where).eval(), where, resolve_precision(precision, where))

