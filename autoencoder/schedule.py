"""The learning-rate schedule every training uses: cosine decay to a floor (Loshchilov & Hutter 2017, SGDR).

Example: ``python -c "from autoencoder.schedule import cosine_decay; print(cosine_decay(50, 101, 0.05))"``
"""
from __future__ import annotations

import math


def cosine_decay(step: int, span: int, floor: float) -> float:
    """The rate's factor at ``step``: 1 at step 0, ``floor`` at step ``span - 1`` and after, half a cosine between."""
    progress = min(step / max(1, span - 1), 1.0)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
