"""Opening a run's trained latent priors: the prior itself (``RUN/prior/``) and the priors that learned a
concept (``RUN/learned/NAME/``). Inference only; ``latent_ops.prior`` and ``latent_ops.learn`` train them.

A prior folder holds ``model.safetensors`` (the moving average of the weights, what sampling uses),
a config (``config.json``, or ``net.json`` for a learned concept) whose net fields rebuild the net,
and ``source.json`` (the run's weights digest, the code shape and the label names): a prior made
from other weights than the run's is refused as stale.

Example: ``python -c "from latent_ops.trained_prior import load_prior; print(load_prior('models/pegasus-cifar10').label_names)"``
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from autoencoder.cifar10 import CIFAR10_CLASSES
from autoencoder.cli import ConfigError, check_choice, check_ranges, load_config
from autoencoder.run_folder import RunError, checked_weights_digest, load_weights, model_file
from latent_ops.encode import StaleError
from latent_ops.flow import ConvVelocityNet, FlowNet, VelocityNet

PRIOR_FOLDER = "prior"
SOURCE_FILE = "source.json"
LEARNED_FOLDER = "learned"
SOURCE_SEPARATOR = "|"  # between the sources a concept was learned from (latent_ops.learn)
NET_CONFIG_FILE = "net.json"
NETS = ("auto", "conv", "mlp")
NET_RANGES = {"hidden": (8, 8192), "channels": (8, 4096), "blocks": (1, 64), "ema": (0, 1)}


@dataclass
class PriorNetConfig:
    """What a prior's net is made of (the prior's training config has these fields and more)."""
    net: str = "auto"  # conv (on the code's (C, H, W) grid), mlp (on the flat code), auto: conv on a spatial code
    hidden: int = 256  # width of the velocity MLP, and of the conv net's time and label features
    channels: int = 128  # channels of the conv net
    blocks: int = 4  # residual FiLM blocks of either net
    ema: float = 0.999  # decay of the moving average of the weights


def check_net_config(config: PriorNetConfig) -> None:
    check_choice("net", config.net, NETS)
    check_ranges(config, NET_RANGES)


def build_flow_net(config: PriorNetConfig, code_shape: tuple[int, ...], classes: int) -> FlowNet:
    """The velocity net that ``config`` names, for codes of ``code_shape`` and ``classes`` labels."""
    if config.net == "conv" or (config.net == "auto" and len(code_shape) == 3):
        if len(code_shape) != 3:
            raise ConfigError(f"--net conv needs a spatial code, but this run's code is flat ({code_shape[0]} "
                              f"numbers); use --net mlp")
        return ConvVelocityNet(code_shape, classes, config.channels, config.blocks, config.hidden)
    return VelocityNet(math.prod(code_shape), classes, config.hidden, config.blocks)


class PriorWeights(torch.nn.Module):
    """What a prior checkpoint holds: the trained net and its moving average."""

    def __init__(self, code_shape: tuple[int, ...], config: PriorNetConfig, classes: int = len(CIFAR10_CLASSES)):
        super().__init__()
        self.net = build_flow_net(config, code_shape, classes)
        self.ema = AveragedModel(self.net, multi_avg_fn=get_ema_multi_avg_fn(config.ema))


def prior_folder(run: Path) -> Path:
    return Path(run) / PRIOR_FOLDER


def load_prior(run: str | Path, device: str | torch.device = "cpu", folder: Path | None = None,
               config_file: str = "config.json") -> FlowNet:
    """The run's trained prior (moving-average weights, eval mode), refused when missing or stale.

    ``folder`` (default ``RUN/prior``) and ``config_file`` name another prior of the run, e.g. one
    that ``latent_ops.learn`` taught a new concept; its ``source.json`` lists its labels.
    """
    run = Path(run)
    folder = prior_folder(run) if folder is None else Path(folder)
    fix = f"train it with python -m latent_ops.prior --run {run}"
    if not model_file(folder).exists():
        raise RunError(f"{run} has no latent prior ({folder / 'model.safetensors'} is missing); {fix}")
    try:
        config = load_config(folder / config_file, PriorNetConfig, check_net_config)
    except ConfigError as error:
        raise RunError(f"{error}; {fix}") from None
    try:
        source = json.loads((folder / SOURCE_FILE).read_text())
        code_shape = tuple(int(n) for n in source.get("code_shape") or (source["dim"],))
        labels = [str(name) for name in source.get("labels", CIFAR10_CLASSES)]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise RunError(f"{folder / SOURCE_FILE} is missing or damaged ({error}); {fix}") from None
    if source.get("weights_digest") != checked_weights_digest(run):
        raise StaleError(f"{folder} was trained on codes of other weights than {run}'s current ones; "
                         f"delete it and {fix}")
    weights = PriorWeights(code_shape, config, len(labels))
    load_weights(weights, model_file(folder), same_as=("net.", "ema.module."))  # a learned prior saves one copy
    net = weights.ema.module.to(device).eval()
    net.label_names = labels  # what each label means: CIFAR-10's classes, then learned concepts
    return net


def learned_folder(run: Path, name: str) -> Path:
    return Path(run) / LEARNED_FOLDER / name


def learned_names(run: Path, built_in: list[str] | None = None) -> list[str]:
    """The concepts learned for this run (folders of RUN/learned with a prior in them). With ``built_in`` (the run's
    own concept names), a learned folder that would hide one of them is refused (a RunError naming it)."""
    root = Path(run) / LEARNED_FOLDER
    names = sorted(p.name for p in root.iterdir() if (p / SOURCE_FILE).exists()) if root.is_dir() else []
    hidden = sorted(set(names) & set(built_in or ()))
    if hidden:
        raise RunError(f"{root / hidden[0]} is a learned concept named like the built-in concept {hidden[0]!r}, which "
                       f"it would hide; nothing was composed: rename or remove that folder")
    return names


def load_learned(run: Path, name: str, device: str | torch.device = "cpu") -> FlowNet:
    """The prior that knows ``name`` (and every CIFAR-10 class)."""
    return load_prior(run, device, learned_folder(run, name), NET_CONFIG_FILE)


def learned_expression(run: Path, name: str, seen: tuple[str, ...] = ()) -> str:
    """The expression a learned concept was learned from (what its images should show); of a concept learned from
    several sources (``A | B``, ``latent_ops.learn``), the first; of one learned from a warm start (whose pools came
    from another learned concept, not from its --expression), that concept's, unless the chain comes back to itself."""
    try:
        config = json.loads((learned_folder(run, name) / "config.json").read_text())
        expression, warm = str(config["expression"]), str(config.get("warm_start") or "")
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as error:
        raise RunError(f"{learned_folder(run, name) / 'config.json'} is missing or damaged ({error}); learn "
                       f"{name} again with python -m latent_ops.learn {name} --run {run}") from None
    if warm and warm != name and warm not in seen and (learned_folder(run, warm) / "config.json").exists():
        return learned_expression(run, warm, (*seen, name))
    return expression.split(SOURCE_SEPARATOR)[0].strip()
