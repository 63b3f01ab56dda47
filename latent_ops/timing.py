"""Seconds per named stage of a command, for its output and its records, and progress bars for long stages.

Example::

    python -c "from latent_ops.timing import StageClock; c = StageClock(); exec('with c(\\"a\\"): pass'); print(c.seconds)"
"""
from __future__ import annotations

import contextlib
import time


class StageClock:
    """Adds the wall-clock seconds spent inside ``with clock(name):`` to ``seconds[name]`` (a stage may recur)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.began = time.monotonic()
        self.running: dict[str, float] = {}  # stages in progress: when they started

    @contextlib.contextmanager
    def __call__(self, name: str):
        self.running[name] = start = time.monotonic()
        self.seconds.setdefault(name, 0.0)
        try:
            yield
        finally:
            del self.running[name]
            self.seconds[name] += time.monotonic() - start

    def snapshot(self) -> dict[str, float]:
        """The seconds so far, stages in progress counted up to now."""
        now = time.monotonic()
        return {name: value + now - self.running.get(name, now) for name, value in self.seconds.items()}

    def total(self) -> float:
        """Seconds since the clock was made."""
        return time.monotonic() - self.began

    def line(self) -> str:
        """'sampling 4.1 s, ranking 2.0 s, ...' in the order the stages first ran."""
        return ", ".join(f"{name} {value:.1f} s" for name, value in self.seconds.items())


def progress_bar(steps: int, label: str):
    """range(steps), with a tqdm bar labelled ``label`` on a terminal; a plain range without a label, and tqdm
    stays quiet when its output is not a terminal."""
    if not label:
        return range(steps)
    from tqdm import tqdm

    return tqdm(range(steps), desc=label, disable=None, leave=False)
