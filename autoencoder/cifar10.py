"""What CIFAR-10 is to every command: its ten class names, and where its copy lives by default.

Example: ``python -c "from autoencoder.cifar10 import parse_classes; print(parse_classes('horse,bird'))"``
"""
from __future__ import annotations

import typing

from autoencoder.cli import ConfigError

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
DATA_FOLDER = "data"  # the default --data of every command
CACHE_FOLDER = "data/cache"  # the default --cache_dir: where the decoded uint8 tensors are cached


class SelectsClasses:
    """For a config with ``classes`` and ``class_weight`` fields (a run's, for training or reading)."""
    classes: str
    class_weight: float

    @property
    def class_names(self) -> tuple[str, ...]:
        """The selected class names, in CIFAR-10 label order."""
        return parse_classes(self.classes)

    @property
    def class_head(self) -> bool:
        """Whether the networks include the class head (read by models.ModelConfig.of)."""
        return self.class_weight > 0


def parse_classes(text: str | typing.Sequence[str]) -> tuple[str, ...]:
    """Class names from ``"horse,bird"`` (or a sequence), checked and put in label order."""
    names = [text] if isinstance(text, str) else list(text)
    names = [n.strip().lower() for part in names for n in str(part).split(",") if n.strip()]
    if not names:
        return CIFAR10_CLASSES
    unknown = [n for n in names if n not in CIFAR10_CLASSES]
    if unknown:
        raise ConfigError(f"unknown class name(s) {', '.join(unknown)}; "
                          f"CIFAR-10's classes are: {', '.join(CIFAR10_CLASSES)}")
    return tuple(c for c in CIFAR10_CLASSES if c in names)
