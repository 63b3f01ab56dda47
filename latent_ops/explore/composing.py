"""Composes for the explorer: the CLI's pipeline on a small pool, one at a time in a background thread, with progress.

The stages are ``latent_ops.compose``'s own (draw, first look, refinement by the critic, ranking, a diverse kept
set), so the page shows what ``python -m latent_ops.compose EXPRESSION --pool 64 --n 16`` would keep; nothing is
written to disk until the person saves one. The run's networks and judges are opened once per expression and the
data (for uniqueness) once per process. A bad expression is refused before any work with the CLI's own message.

Example: ``python -c "from latent_ops.explore.composing import Composer; print(Composer.__doc__)"``
"""
from __future__ import annotations

import contextlib
import itertools
import threading
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from autoencoder.cli import UserError
from latent_ops.compose import check_repel, check_start, draw, open_reference, open_setting, rank, settle_recipe_repel
from latent_ops.compose_config import ComposeConfig, make_compose_config
from latent_ops.compose_state import Reference, Setting
from latent_ops.editor import to_pixels
from latent_ops.expression import parse
from latent_ops.scoring import score
from latent_ops.timing import StageClock
from latent_ops.trained_prior import learned_names

STAGES = ("setup", "sampling", "ranking", "refinement", "ranking", "done")  # in the order a compose passes them
OPEN_SETTINGS = 4  # expressions whose opened setting is kept
# A compose that starts from real pictures carries them this far to the expression, as make pegasus-varied does
# (docs/regions.md, "Starting from real pictures": without the negative the pool varies most).
START_FLAGS = {"project": 0.8, "negative": "", "repel": 0.0, "guidance": 2.25}
# A compose whose draws push each other apart, as make pegasus-diverse does (particle guidance; docs/regions.md,
# "Pushing the pool apart"), with no guard: the recipe's own push is guided up the judge of marks (docs/regions.md,
# "Guided up the judge of marks"); on a pool of 64 both take about 3.8 s. Both keep the guidance they were measured at
# (2.25; the recipe's is 3.25 since 2026-12-07's twelfth sitting, docs/regions.md).
APART_FLAGS = {"repel": 1.0, "repel_toward": 0.0, "guidance": 2.25}


class ProgressClock(StageClock):
    """A StageClock that also records which stage is running and how many have begun."""

    def __init__(self, job: "ComposeJob") -> None:
        super().__init__()
        self.job = job

    @contextlib.contextmanager
    def __call__(self, name: str):
        self.job.stage = name
        self.job.progress = min(self.job.progress + 1 / len(STAGES), 0.95)
        with super().__call__(name):
            yield


@dataclass
class ComposeJob:
    id: int
    expression: str
    seed: int
    command: str  # the CLI command that composes the same pool
    start: str = ""  # the class or cluster whose real pictures the candidates start from ("": noise)
    apart: bool = False  # the draws pushed each other apart (APART_FLAGS)
    state: str = "queued"  # queued, running, done or failed
    stage: str = ""
    progress: float = 0.0
    error: str = ""
    seconds: float = 0.0
    stage_seconds: dict = field(default_factory=dict)
    codes: np.ndarray | None = None  # (k, D) the kept codes, best first
    results: list = field(default_factory=list)  # per kept image: its scores and rank

    def public(self) -> dict:
        return {"id": self.id, "expression": self.expression, "seed": self.seed, "start": self.start,
                "apart": self.apart, "state": self.state,
                "stage": self.stage, "progress": self.progress, "error": self.error, "seconds": self.seconds,
                "stage_seconds": self.stage_seconds, "command": self.command, "results": self.results}


class Composer:
    """Composes of ``pool`` candidates keeping ``kept``, in a background thread, one at a time."""

    def __init__(self, run: Path, data: str, cache_dir: str, pool: int = 64, kept: int = 16, keep_jobs: int = 32):
        self.run, self.data, self.cache_dir = run, data, cache_dir
        self.pool, self.kept, self.keep_jobs = pool, kept, keep_jobs
        self.settings: OrderedDict[tuple, Setting] = OrderedDict()  # by expression, start, push and its guard
        self.reference: Reference | None = None
        self.jobs: OrderedDict[int, ComposeJob] = OrderedDict()
        self.ids = itertools.count(1)
        self.busy = threading.Lock()

    def config(self, expression: str, seed: int, start: str = "", apart: bool = False) -> ComposeConfig:
        """The compose config, every check of the CLI made (grammar, the run's concept names, ``start``, a class
        or cluster whose real pictures the candidates start from, as ``make pegasus-varied`` does, and ``apart``,
        draws that push each other apart, as ``make pegasus-diverse`` does); a UserError with the CLI's message
        otherwise."""
        config = make_compose_config(expression=expression, run=str(self.run), data=self.data,
                                     cache_dir=self.cache_dir, pool=self.pool, n=self.kept, seed=seed, refine_top=0,
                                     **(dict(start=start, **START_FLAGS) if start else {}),
                                     **(APART_FLAGS if apart else {}))
        setting = next((opened for key, opened in self.settings.items() if key[0] == expression), None)  # its concepts
        if setting is not None:
            concepts = setting.concepts
        else:
            from latent_ops.run_concepts import load_concepts

            concepts = load_concepts(self.run)
        learned = learned_names(self.run, concepts.names)
        weights = parse(expression, concepts.names + learned)
        check_start(start, concepts, learned)
        settle_recipe_repel(config, weights, learned, self.run)
        check_repel(config, weights, learned)
        return config

    def command(self, config: ComposeConfig) -> str:
        import shlex

        started = ["--start", config.start, "--project", f"{config.project:g}", "--negative", config.negative]
        pushed = ["--repel", f"{config.repel:g}", "--repel_toward", f"{config.repel_toward:g}"]
        if config.repel_toward > 0:
            pushed += ["--repel_reading", config.repel_reading]
            pushed += ["--repel_class", f"{config.repel_class:g}"] if config.repel_reading == "class+marks" else []
        return shlex.join(["python", "-m", "latent_ops.compose", config.expression, "--run", str(self.run),
                           "--data", self.data, "--pool", str(config.pool), "--n", str(config.n), "--seed",
                           str(config.seed), "--refine_top", "0", "--guidance", f"{config.guidance:g}",
                           *(started if config.start else []),
                           *(pushed if config.repel else ["--repel", "0"] if config.start else [])])

    def submit(self, expression: str, seed: int = 0, start: str = "", apart: bool = False) -> ComposeJob:
        """Check the expression, the start and ``apart`` now (a UserError says what is wrong), then compose in the
        background."""
        config = self.config(expression, seed, start, apart)
        job = ComposeJob(next(self.ids), expression, seed, self.command(config), start, apart)
        self.jobs[job.id] = job
        while len(self.jobs) > self.keep_jobs:
            self.jobs.popitem(last=False)
        threading.Thread(target=self.work, args=(job, config), daemon=True, name=f"compose-{job.id}").start()
        return job

    def warm(self, delay: float = 0.0) -> None:
        """Open the recipe's setting and the data before the first compose asks (in a background thread at start,
        after ``delay`` seconds, so that the first page loads first); a failure is left for that compose to report."""
        time.sleep(delay)
        with self.busy:
            try:
                config = make_compose_config(run=str(self.run), data=self.data, cache_dir=self.cache_dir,
                                             pool=self.pool, n=self.kept, refine_top=0)
                self.setting(config)
                if self.reference is None:
                    self.reference = open_reference(config, self.run)
            except Exception:  # noqa: BLE001  (the compose that needs it says what is wrong)
                pass

    def setting(self, config: ComposeConfig) -> Setting:
        # a start changes the negative, a push the nets it reads with, its guard the judge of features it reads
        key = (config.expression, config.start, config.repel > 0, config.repel_toward > 0 and config.repel_reading)
        setting = self.settings.pop(key, None) or open_setting(config)
        self.settings[key] = setting
        while len(self.settings) > OPEN_SETTINGS:
            self.settings.popitem(last=False)
        setting.sources.placed = None  # a following region's cells are found again for every draw
        return setting

    def work(self, job: ComposeJob, config: ComposeConfig) -> None:
        with self.busy:
            job.state = "running"
            clock = ProgressClock(job)
            began = time.monotonic()
            try:
                self.compose(job, config, clock)
                job.state, job.stage, job.progress = "done", "done", 1.0
            except UserError as error:
                job.state, job.error = "failed", f"error: {error}"
            except Exception as error:  # the page says so; the server keeps running
                traceback.print_exc()
                job.state, job.error = "failed", f"error: {type(error).__name__}: {error}"
            job.seconds, job.stage_seconds = time.monotonic() - began, clock.snapshot()

    def compose(self, job: ComposeJob, config: ComposeConfig, clock: StageClock) -> None:
        with clock("setup"):
            setting = self.setting(config)
            if self.reference is None:
                self.reference = open_reference(config, setting.run)
        with clock("sampling"):
            drawn = draw(config, setting)
        scored = score(config, setting, drawn, self.reference, clock)
        with clock("ranking"):
            kept = rank(config, setting, drawn, scored)
        shown = kept.shown.tolist()
        job.codes = scored.found["z"][shown].float().numpy()
        pictures = to_pixels(kept.after)
        found = scored.found
        order = {candidate: position for position, candidate in enumerate(scored.order.tolist())}
        for i, (candidate, picture) in enumerate(zip(shown, pictures)):
            entry = {"index": i, "candidate": candidate, "rank": order[candidate],
                     "combined": float(scored.combined[candidate]), "realism": float(found["realism"][candidate]),
                     "intent": float(scored.intent[candidate]), "sharpness": float(found["sharpness"][candidate]),
                     "intent_terms": {k: float(v[candidate]) for k, v in scored.intents.items()},
                     "passed_gates": bool(scored.gated[candidate]), "picture": picture}
            if self.reference.distance is not None:
                entry["uniqueness"] = float(found["distance"][candidate, 0])
            job.results.append(entry)

    def code(self, job_id: int, index: int) -> tuple[ComposeJob, np.ndarray]:
        job = self.jobs.get(job_id)
        if job is None or job.codes is None or not 0 <= index < len(job.codes):
            raise UserError(f"compose {job_id} image {index} is not here (composes are kept while the server runs, "
                            f"the last {self.keep_jobs}); compose again")
        return job, job.codes[index]

