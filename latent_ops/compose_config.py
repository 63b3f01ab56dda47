"""The compose command's config: its flags, their checks, the run's recipe under them, and the output's folder name.

``make_compose_config`` reads flags over the run's recipe (``RUN/compose.json``, written by ``compose --save_recipe
true``) over the defaults: each flag is checked alone before the recipe is read, and the flags against each other
after it. ``latent_ops.compose`` runs the pipeline with the result; the explorer, the report and the benches build
their composes through the same function, so every one of them refuses what the command line refuses.

Example: ``python -c "from latent_ops.compose_config import make_compose_config; print(make_compose_config(seed=3))"``
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass

from autoencoder.cifar10 import CACHE_FOLDER, DATA_FOLDER
from autoencoder.cli import ConfigError, check_choice, check_ranges, dataclass_from_flags, load_config
from autoencoder.compute import PRECISIONS
from autoencoder.run_folder import RunError
from latent_ops import ranking
from latent_ops.best_choice import BEST_RULES
from latent_ops.expression import parse
from latent_ops.flow import SOLVERS
from latent_ops.intent import INTENTS
from latent_ops.runs import resolve_run
from latent_ops.sampling import SOURCES, check_negative

RECIPE_FILE = "compose.json"  # a run's compose recipe: the defaults of its composes
SHOWN = 64  # batch64.png: the best 64
MAX_NAME = 80  # characters of the expression kept in a folder name
DEFAULT_EXPRESSION = "horse+wings"  # composed when neither the command line nor the run's recipe names one
WHERE_FLAGS = ("run", "out", "data", "cache_dir", "save_recipe")  # never taken from a recipe


@dataclass
class ComposeConfig:
    expression: str = DEFAULT_EXPRESSION  # the concept expression (the first argument on the command line)
    run: str = ""  # run folder; empty: the newest trained run in outputs/runs, else the shipped model
    data: str = DATA_FOLDER  # CIFAR-10 folder, for uniqueness and neighbour panels (skipped when absent)
    cache_dir: str = CACHE_FOLDER  # where the decoded data is cached
    out: str = ""  # output folder; empty: outputs/compose/<run>/<expression>-<seed> (two runs never share one)
    n: int = 64  # images kept (a diverse set of the best, at most 64); candidates composed when --pool is 0
    seed: int = 0  # draws of source codes and density samples
    refine_steps: int = 10  # critic refinement steps (0: none)
    refine_step_size: float = 0.02  # gradient step size of the refinement (each step's length is capped)
    refine_anchor: float = 1.0  # pull towards the starting code during refinement
    strength: float = 1.0  # scales every direction's calibrated step
    temperature: float = 1.0  # spread of --source density samples and of the prior's starting noise (Glow's
    #   temperature)
    source: str = "heldout"  # heldout (codes of real test images), density (the fitted Gaussian mixture)
    #   or prior (the run's latent prior, latent_ops.prior)
    guidance: float = 2.0  # classifier-free guidance of the latent prior per condition (prior draws, a&b, --project)
    prior_steps: int = 12  # ODE steps of the latent prior
    solver: str = "ab2"  # the prior's ODE solver: ab2 or dpmpp2m (one evaluation a step), heun (two; latent_ops.flow)
    guidance_from: float = 0.0  # guidance applies from this time of the prior's flow (0: noise) ...
    guidance_until: float = 1.0  # ... until this one (1: the codes); outside, the plain conditional velocity
    repel: float = 0.0  # particle guidance (Corso et al. 2024): the prior's draws of one pool push each other apart, in
    #   the perceptual net's features of their decoded pictures, by this many neighbour distances per unit of time
    #   (1: kept diversity about 1.2x, about 1.03x the time through the run's feature proxy; docs/regions.md); a pool
    #   over 1,024 in blocks of 1,024; 0: independent draws
    repel_until: float = 0.35  # ... while the flow's time is at most this (0: noise; the early steps set the layout)
    repel_through: str = "auto"  # what reads the draws' features for --repel: proxy (the run's feature proxy, a small
    #   net distilled from the decoder and the perceptual net: latent_ops.feature_proxy, about 5% of a compose),
    #   pictures (decode and read them: exact, 1.6-1.8x the time) or auto (the proxy when the run has one)
    repel_keep: bool = False  # --repel never lowers the perceptual net's reading of the expression (the sum of its
    #   terms' log probabilities, read from the same features): the part of a push against it is dropped
    repel_toward: float = 0.0  # ... and draws move this many push lengths up that reading (guidance by the perceptual
    #   net; the guard is on whenever this is above 0)
    repel_reading: str = "class"  # the reading the guard keeps and --repel_toward climbs: class (the perceptual net's
    #   reading of the expression's classes), marks (the run's judge of features of by-eye marks: how likely a person
    #   is to mark the picture, latent_ops.mark_judge) or class+marks (their sum, the class reading weighted by:)
    repel_class: float = 1.0  # ... the class reading's weight in class+marks (0.1: the pool share of the recipe before
    #   with the judge's by-eye gain kept; docs/regions.md, "Guided up the judge of marks")
    negative: str = ""  # a class (or cluster: its class) that guidance pushes prior draws away from: its velocity
    #   stands in for the unconditional one, so it costs no extra evaluation (a negative prompt); "": none
    project: float = 0.0  # SDEdit: edited codes go this far towards noise and the prior brings them back; 0: off
    start: str = ""  # a class or cluster whose held-out pictures start the candidates (needs --project): their codes go
    #   --project of the way to noise and the prior brings them back as the expression (every term read as one
    #   conjunction), keeping their poses, colours and backgrounds (SDEdit from real pictures); "": draw the expression
    refine_prior: float = 0.0  # each refinement step moves this share (0-1) of the way to the prior's denoised code
    pool: int = 0  # candidates to compose and rank (0: --n); a diverse min(n, 64) of the best are kept and shown
    dedup: float = 0.5  # no two kept images closer than this fraction of the pool's median pairwise distance
    select: str = "dedup"  # how the kept are taken from the ranked pool: dedup (the best, no near-duplicates) or
    #   dpp (quality and diversity together: a determinantal point process on the perceptual net's features)
    best: str = "agreement"  # how the best image and the next three are chosen: agreement (of the evaluator and
    #   the perceptual net, and the rising mass; latent_ops.best_choice) or rank (the ranking's first four)
    dpp_quality: float = 0.25  # dpp: quality exp(-this x rank / kept); higher keeps closer to the ranking
    dpp_bandwidth: float = 1.0  # dpp: the similarity kernel's width, in median pairwise feature distances
    intent: str = "auto"  # auto (the evaluator when shipped), evaluator or probe
    rank_sharpness: float = 1.0  # weight of sharpness (Laplacian variance) in the ranking, beside realism, intent
    #   and uniqueness (each weight 1): blurred blobs that the critic and evaluator accept sink; 0: off
    rank_intent: float = 1.0  # weight of intent in the ranking, beside realism, sharpness and uniqueness
    rank_terms: str = ""  # weights of named intent terms in intent's geometric mean, e.g. "horse=2" (others 1): a
    #   ranking that leans on one part of the expression (the evaluator ranks; it never trains or guides)
    rank_gate: float = 0.2  # candidates with every intent term >= this rank above the rest (0: no gate), so
    #   the best shows every part of the expression (a sharp horse without wings does not come first)
    rise_gate: float = 0.0  # rank candidates whose rising mass (figure in the middle third above the back: a wing
    #   from the back, not blades at the ends of a table; latent_ops.subject) is below this quantile of the pool
    #   after the rest, like rank_gate, when the expression asks for wings (0: off)
    mark_gate: float = 0.0  # rank candidates that the run's judge of by-eye marks (latent_ops.mark_judge, learned
    #   from blind counts) scores below this quantile of the pool after the rest, like rise_gate (0: off)
    chunk: int = 64  # candidates refined and decoded at once (64: fastest on a 2-core CPU, bench/compose_speed.py)
    refine_top: int = 192  # refine only this many of a first ranking's best, then rank again (0: every candidate);
    #   at least the number kept, min(n, 64)
    precision: str = "auto"  # auto (bf16 where the CPU or GPU has it natively, else fp32), bf16 or fp32
    save_recipe: bool = False  # also store these settings as the run's compose.json, the defaults of its composes

    @property
    def candidates(self) -> int:
        return self.pool or self.n

    @property
    def kept(self) -> int:
        """The images kept and shown: a diverse set of the best."""
        return min(self.n, SHOWN)
COMPOSE_RANGES = {"n": (1, 10**6), "seed": (0, 2**32 - 1), "refine_steps": (0, 10**4),
                  "refine_step_size": (0, 100), "refine_anchor": (0, 1e4), "strength": (0, 100),
                  "temperature": (1e-6, 100), "chunk": (1, 65536), "guidance": (0, 100), "prior_steps": (1, 1000),
                  "project": (0, 1), "refine_prior": (0, 1), "pool": (0, 10**6), "dedup": (0, 10),
                  "rank_sharpness": (0, 100), "rank_intent": (0, 100), "rank_gate": (0, 1), "rise_gate": (0, 0.99),
                  "mark_gate": (0, 0.99), "guidance_from": (0, 1), "guidance_until": (0, 1), "repel": (0, 100),
                  "repel_until": (0, 1), "repel_toward": (0, 100), "repel_class": (0, 100),
                  "refine_top": (0, 10**6), "dpp_quality": (0, 100), "dpp_bandwidth": (1e-3, 100)}
SELECTIONS = ("dedup", "dpp")
REPEL_THROUGH = ("auto", "proxy", "pictures")
REPEL_READINGS = ("class", "marks", "class+marks")
REPEL_FIELDS = {"repel", "repel_until", "repel_through", "repel_keep", "repel_toward", "repel_reading", "repel_class"}


def validate_compose_config(config: ComposeConfig) -> None:
    check_each_flag(config)
    check_flags_together(config)


def check_each_flag(config: ComposeConfig) -> None:
    """The checks of one flag at a time: ranges, choices, the grammar. A run's recipe cannot make these right."""
    check_ranges(config, COMPOSE_RANGES)
    check_choice("source", config.source, SOURCES)
    check_choice("intent", config.intent, INTENTS)
    check_choice("solver", config.solver, SOLVERS)
    check_choice("precision", config.precision, PRECISIONS)
    check_choice("select", config.select, SELECTIONS)
    check_choice("best", config.best, BEST_RULES)
    check_choice("repel_through", config.repel_through, REPEL_THROUGH)
    check_choice("repel_reading", config.repel_reading, REPEL_READINGS)
    check_negative(config.negative)
    try:
        ranking.parse_term_weights(config.rank_terms)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    parse(config.expression)  # grammar, length and numbers checked before any work


def check_flags_together(config: ComposeConfig) -> None:
    """The checks of flags against each other, made once the run's recipe is under the flags (a --repel_toward given
    over a recipe whose --repel is on guards that push)."""
    if config.guidance_from > config.guidance_until:
        raise ConfigError(f"--guidance_from {config.guidance_from} is after --guidance_until {config.guidance_until}: "
                          f"guidance applies between them; give from <= until (0 and 1: throughout)")
    if config.start and config.project <= 0:
        raise ConfigError(f"--start {config.start} gives the pictures the candidates start from; --project says how "
                          f"far they go towards noise before the prior brings them back as the expression: give "
                          f"--project, e.g. 0.8, or drop --start")
    if (config.repel_keep or config.repel_toward > 0) and config.repel <= 0:
        raise ConfigError("--repel_keep and --repel_toward guard the push of --repel, which is off; add --repel 1, or "
                          "drop them")
    if 0 < config.refine_top < config.kept:
        raise ConfigError(f"--refine_top {config.refine_top} refines fewer candidates than the {config.kept} kept "
                          f"(min(--n, {SHOWN})); give at least {config.kept}, or 0 to refine every candidate")


def read_recipe(run: str) -> dict:
    """The values of the run's compose recipe (``RUN/compose.json``), checked like flags; {} without one."""
    try:
        folder = resolve_run(run)
    except RunError:
        return {}  # the command reports the missing run itself
    if not (folder / RECIPE_FILE).exists():
        return {}
    recipe = load_config(folder / RECIPE_FILE, ComposeConfig, validate_compose_config, strict=True)
    return {k: v for k, v in dataclasses.asdict(recipe).items() if k not in WHERE_FLAGS}


def make_compose_config(**flags) -> ComposeConfig:
    """Flags over the run's recipe over the defaults; each flag is checked before the recipe is read, and the flags
    against each other after it (a flag the recipe makes right, --repel_toward over its push, is not refused)."""
    config = dataclass_from_flags(ComposeConfig, {}, flags)
    check_each_flag(config)
    recipe = read_recipe(config.run)
    if recipe:
        config = dataclass_from_flags(ComposeConfig, recipe, flags)
        if config.repel <= 0:  # --repel 0 turns the recipe's push off, and with it the recipe's guard of it
            to_defaults(config, {"repel_keep", "repel_toward", "repel_reading", "repel_class"} - set(flags))
    validate_compose_config(config)
    if recipe:
        config.negative_from_recipe = "negative" not in flags  # a default for prior draws, not a request (open_setting)
        config.mark_gate_from_recipe = "mark_gate" not in flags  # a default where the judge knows the expression
        config.repel_from_recipe = not REPEL_FIELDS & set(flags)  # a default where it can push (settle_recipe_repel)
    if "repel_reading" in flags and config.repel_reading != "class" and not guards(config):
        raise ConfigError(f"--repel_reading {config.repel_reading} is what the guard of --repel reads, which is off; "
                          f"add --repel 1 --repel_toward 2, or drop it")
    return config


def folder_name(expression: str, seed: int) -> str:
    """A folder name for an expression and seed; two different expressions never share one.

    Expressions made only of letters, digits, ``+ - . _ :`` keep a readable name (``:``
    becomes ``~``, which the grammar never contains); any other character (``*``, ``/``,
    parentheses, spaces) adds a hash of the exact expression, and so does a name cut short.
    """
    safe = expression.replace(":", "~")
    plain = re.fullmatch(r"[A-Za-z0-9+.\-_~]+", safe) is not None and len(safe) <= MAX_NAME
    if plain:
        return f"{safe}-{seed}"
    readable = re.sub(r"[^A-Za-z0-9+.\-_~]", "", safe.replace("*", "x").replace("/", "over"))[:MAX_NAME]
    digest = hashlib.sha1(expression.encode()).hexdigest()[:8]
    return f"{readable}-{digest}-{seed}"


def guards(config: ComposeConfig) -> bool:
    """Whether --repel's push is guarded by the perceptual net's reading of the expression."""
    return config.repel > 0 and (config.repel_keep or config.repel_toward > 0)


def to_defaults(config: ComposeConfig, names) -> None:
    """Set the fields ``names`` of ``config`` back to ComposeConfig's defaults."""
    for name in names:
        setattr(config, name, getattr(ComposeConfig, name))
