"""What compose's stages hand each other: the setting it works with, the codes it drew, the data it measures against.

``latent_ops.compose`` opens a ``Setting`` (the run's networks, concepts, prior and judges), draws ``Drawn`` codes and
measures uniqueness against a ``Reference``; ``latent_ops.scoring`` reads all three. They live here, below both, so
that neither imports the other to name them.

Example: ``python -c "from latent_ops.compose_state import Drawn; print(Drawn.__doc__)"``
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from autoencoder.cifar10 import CIFAR10_CLASSES
from autoencoder.classifier import Evaluator
from autoencoder.compute import autocast
from autoencoder.data import ImageSet
from autoencoder.metrics import ShortlistIndex
from autoencoder.models import Networks
from latent_ops.concepts import Concepts
from latent_ops.feature_proxy import FeatureProxy
from latent_ops.flow import FlowNet
from latent_ops.mark_judge import MarkJudge
from latent_ops.sampling import Sources


@dataclass
class Setting:
    """What a compose works with: the run's networks, concepts and prior, the parsed expression, the judges."""
    run: Path
    nets: Networks
    device: torch.device
    concepts: Concepts
    weights: dict[str, float]  # the expression, parsed
    intent_weights: dict[str, float]  # the same with learned concepts replaced by what they were learned from
    intent_source: str  # evaluator or probe
    judge: Evaluator | None  # the evaluator (ranking only), when it is the intent source
    prior: FlowNet | None
    sources: Sources
    regions: list[str]
    dtype: torch.dtype  # the networks' precision: bf16 autocast or fp32
    negative: str = ""  # the class prior draws are pushed away from ("" when nothing is drawn from the prior)
    marks: MarkJudge | None = None  # the judge of by-eye marks (--mark_gate), reading through sources.perceptual
    proxy: FeatureProxy | None = None  # the run's feature proxy, when --repel pushes draws apart through it
    feature_marks: MarkJudge | None = None  # the judge of features of by-eye marks, when --repel_reading reads it

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(getattr(self.prior, "label_names", CIFAR10_CLASSES))

    @property
    def precision(self) -> str:
        return "bf16" if self.dtype == torch.bfloat16 else "fp32"

    def autocast(self):
        """The networks' precision: bf16 autocast where native (codes, ODE states and scores stay fp32)."""
        return autocast(self.device, self.dtype)


@dataclass
class Drawn:
    edited: np.ndarray  # (N, D) codes of the expression
    codes: np.ndarray  # (N, D) the same projected through the prior (the edited codes under --project 0)
    sources: dict  # source name -> the test index each candidate started from
    conditions: list  # the prior's (label, weight) conditions of the projection
    guides: list | None = None  # with --start, the guides that carried the pictures (start_guides); else None


@dataclass
class Reference:
    train_images: torch.Tensor | None  # (N, 3, 32, 32) uint8, or None without data
    index: ShortlistIndex | None  # the same prepared for nearest-neighbour searches
    distance: float | None  # median nearest-training-image distance of real test images
    data_matches_run: bool | None  # whether --data has the checksums the run recorded (None: none recorded)
    test: ImageSet | None = None  # the test split (--start's pictures), read once with the training split
