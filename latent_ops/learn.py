"""Learn a concept from compositions: compose a large pool, accept the good ones, teach the prior a label.

``python -m latent_ops.learn pegasus --expression "horse&wings@back" --pool 8192`` draws the pool
from the run's latent prior, decodes it, and accepts a candidate when

- the *perceptual* classifier's probabilities meet every term of ``--accept`` (e.g.
  ``horse>=0.3,wings>=0.3``; ``wings`` is P(bird)+P(airplane)); ``pale_subject>=B`` and ``pale_wing>=B``
  read the pixels instead (``latent_ops.subject``: the subject's mean brightness, the rising figure's). The
  evaluator, which measures results, may never accept them: ``--judge evaluator`` is refused;
- the image critic's realism and the sharpness (variance of the Laplacian) are at least the
  pool's ``--critic_quantile`` and ``--sharpness_quantile``;
- with ``--marks NAME --mark_quantile Q``, the run's judge of ``NAME``'s by-eye marks (``latent_ops.mark_judge``, a
  reward model fitted on this project's blind counts; Christiano et al. 2017, arXiv:1706.03741) reads it at least at
  its Q-quantile: the shipped ``pegasus`` was learned so (``make model``'s ``LEARN_PEGASUS``).

Several sources, ``--expression "2*horse:0&3*airplane@top | 2*horse:white&3*airplane@top"``, split the first
round's pool evenly between them and take the quantiles within each source's share, so a concept learns every look
its sources reach (a pool that varies pose, colour and background), not only the commonest one.

With ``--start horse --start_noise 0.8`` every round's pool starts from real held-out pictures of the class or
cluster instead of noise: each picture's code goes that far towards noise and the prior brings it back as the round's
expression (SDEdit from real pictures, Meng et al. 2022, arXiv:2108.01073; ``compose --start``), so the pool has the
poses, colours and backgrounds of real pictures. With ``--repel S`` each chunk of the pool is drawn as one batch whose
members push each other apart in the perceptual net's features (particle guidance, Corso et al. 2024,
arXiv:2310.13102; ``compose --repel``). Measured, the concept learned so composes hardly more varied than one learned
from independent draws (docs/regions.md, "Pushing the pool apart"): the variety is made at compose time.

The accepted codes, and the codes of their mirror images, become a new label of the prior: a
copy of the prior with one more label row (starting as "no condition") is fine-tuned on batches
that mix them with replayed real codes under their own labels (``--replay``), so the old labels
keep their samples (rehearsal against forgetting, Robins 1995). The batch is thereby *sampled*
from what worked, not *selected* out of what did not, and ``compose NAME`` draws from the label
directly (it can also stand inside other expressions: ``NAME&white@back``).

Writes ``RUN/learned/NAME/``: ``model.safetensors`` (the fine-tuned prior, moving average),
``net.json`` (its net config), ``source.json`` (weights digest, labels), ``config.json`` (this
command's flags: the expression and the acceptance rule), ``record.json`` (pool, acceptance,
losses, how far the old labels' samples moved, times), ``accepted.npz`` (the accepted codes) and
``accepted.png`` (32 of them decoded).

Example: ``python -m latent_ops.learn pegasus --run models/pegasus-cifar10 --pool 8192``
"""
from __future__ import annotations

import json
import math
import re
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from autoencoder.atomic import replace_folder, save_weights, write_json
from autoencoder.cifar10 import CIFAR10_CLASSES
from autoencoder.classifier import load_perceptual
from autoencoder.cli import ConfigError, check_ranges, claim_output, dataclass_from_flags, run_cli, save_config
from autoencoder.data import to_uint8
from autoencoder.grids import save_grid
from autoencoder.metrics import laplacian_variance
from autoencoder.run_folder import RunError, load_run, weights_digest
from latent_ops.best_choice import subject_term
from latent_ops.concepts import WINGED
from latent_ops.encode import encode_images, load_bank
from latent_ops.expression import parse
from latent_ops.flow import SOLVERS, FlowNet, flow_matching_loss, project, sample, with_extra_label
from latent_ops.mark_judge import MarkJudge, judge_images, load_judge
from latent_ops.ranking import at_least_quantile
from latent_ops.run_concepts import load_concepts
from latent_ops.runs import resolve_run
from latent_ops.sampling import (DrawSettings, Sources, draw_density, learned_labels, picture_features, prior_generator,
                                 sample_expression, start_guides)
from latent_ops.shipped_folder import SIZE_LIMIT, folder_bytes, is_shipped
from latent_ops.sources import classifier_views
from latent_ops.subject import rising_brightness, rising_mass, subject_colour
from latent_ops.trained_prior import (NET_CONFIG_FILE, PRIOR_FOLDER, SOURCE_FILE, SOURCE_SEPARATOR, learned_folder,
                                      learned_names, load_learned, load_prior)

RECORD_FILE = "record.json"
ACCEPTED_FILE = "accepted.npz"
OUTPUT_FILES = {"model.safetensors", NET_CONFIG_FILE, SOURCE_FILE, "config.json", RECORD_FILE, ACCEPTED_FILE,
                "accepted.png"}
JUDGES = ("perceptual",)  # the evaluator measures results; it never accepts them
MIN_NEW_PER_BATCH = 4  # codes of the new concept in each fine-tuning batch, at least (fewer teach it next to nothing)
RULE_TERM = re.compile(r"^([a-z_]+)>=([0-9.]+)$")
# Terms of --accept read from the pixels, not a classifier (latent_ops.subject): the mean brightness of the subject
# (the silhouette times the perceptual net's map of the rule's first class) and of the figure rising above its back.
PIXEL_TERMS = ("pale_subject", "pale_wing")
NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


@dataclass
class LearnConfig:
    name: str = "pegasus"  # the new concept's name (the first argument)
    expression: str = "horse&wings@back"  # what to compose the pool from; A | B | ...: the first round's pool is
    #   split evenly between the sources and each is accepted against its own quantiles
    run: str = ""  # run folder; empty: the newest in outputs/runs
    out: str = ""  # where the learned prior goes; empty: RUN/learned/NAME
    pool: int = 8192  # candidates composed
    seed: int = 0  # the pool's draws, the fine-tuning's batches and noise
    guidance: float = 1.0  # classifier-free guidance of the pool, per unit weight of each part
    prior_steps: int = 32  # ODE steps of the pool's draws
    solver: str = "heun"  # their ODE solver: heun (two evaluations a step), ab2 or dpmpp2m (one; latent_ops.flow)
    judge: str = "perceptual"  # the classifier whose probabilities accept candidates: only the perceptual net
    accept: str = "horse>=0.3,wings>=0.3"  # every term of the judge's probabilities at least its bound
    #   (a class name, or wings for P(bird)+P(airplane)), comma-separated; pale_subject and pale_wing read the
    #   pixels (brightness of the subject, and of the figure rising above its back; latent_ops.subject)
    critic_quantile: float = 0.5  # accepted candidates' critic realism is at least this quantile of the pool's
    sharpness_quantile: float = 0.5  # and their sharpness at least this quantile
    rise_quantile: float = 0.0  # and their rising mass (figure above the middle of the back, latent_ops.subject) at
    #   least this quantile, when --accept asks for wings: a wing from the back, not blades at the ends (0: off)
    marks: str = ""  # the run's judge of by-eye marks to accept by (an expression judged in RUN/marks, e.g. pegasus:
    #   latent_ops.mark_judge, learned from a person's blind counts); empty: none
    mark_quantile: float = 0.0  # accepted candidates' judged probability of a mark is at least this quantile of
    #   their source's share of the pool (0: off; needs --marks)
    min_accepted: int = 32  # fewer accepted codes than this is an error (loosen --accept)
    steps: int = 2000  # fine-tuning steps
    batch_size: int = 256  # codes per fine-tuning step
    replay: float = 0.5  # share of each batch that is real codes under their own labels
    lr: float = 2e-4  # AdamW learning rate of the fine-tuning (constant)
    label_dropout: float = 0.1  # as in the prior's training (classifier-free guidance)
    ema: float = 0.998  # decay of the moving average that sampling uses
    chunk: int = 1024  # candidates drawn and decoded at once
    balance: float = 0.0  # fine-tuning draws each accepted code with weight (distance to its k-th nearest accepted
    #   neighbour in appearance)^balance: 0 draws them evenly; 1 favours the rare looks over the common one, so the
    #   concept keeps the pool's variety (inverse-density sampling)
    warm_start: str = ""  # a concept this run learned before: the first round composes its pool from that concept
    #   (its prior and label) instead of --expression, so learning goes on where it stopped; later rounds as usual
    start: str = ""  # a class or cluster whose held-out pictures start every round's pool: each goes --start_noise of
    #   the way to noise and the prior brings it back as the round's expression (SDEdit from real pictures, as
    #   compose --start), so the pool varies pose, colour and background as real pictures do; empty: draw from noise
    start_noise: float = 0.8  # with --start: how far the pictures go towards noise (1 forgets them)
    repel: float = 0.0  # particle guidance: each chunk's draws push each other apart (compose --repel); 0: independent
    rounds: int = 1  # rounds of learning: each round after the first composes its pool from the concept the round
    #   before learned and fine-tunes the base prior again on every round's accepted codes (expert iteration)


LEARN_RANGES = {"pool": (2, 10 ** 6), "seed": (0, 2 ** 31 - 1), "guidance": (0, 100), "prior_steps": (1, 1000),
                "critic_quantile": (0, 1), "sharpness_quantile": (0, 1), "rise_quantile": (0, 0.99),
                "mark_quantile": (0, 0.99),
                "min_accepted": (1, 10 ** 6),
                "steps": (0, 10 ** 6), "batch_size": (2, 10 ** 6), "replay": (0, 0.99), "lr": (1e-8, 1.0),
                "label_dropout": (0, 1), "ema": (0, 1), "chunk": (1, 65536), "rounds": (1, 100),
                "balance": (0, 10), "start_noise": (0.01, 1), "repel": (0, 100)}


def parse_rule(text: str) -> dict[str, float]:
    """``horse>=0.3,wings>=0.3`` -> {"horse": 0.3, "wings": 0.3}; a bad term is a ConfigError naming it."""
    rule = {}
    for term in (t.strip() for t in str(text).split(",") if t.strip()):
        match = RULE_TERM.match(term)
        if not match or (match[1] not in CIFAR10_CLASSES and match[1] != "wings" and match[1] not in PIXEL_TERMS):
            raise ConfigError(f"--accept term {term!r} is not CLASS>=NUMBER, wings>=NUMBER or "
                              f"{' or '.join(t + '>=NUMBER' for t in PIXEL_TERMS)}, e.g. horse>=0.3,wings>=0.3")
        try:
            bound = float(match[2])
        except ValueError:
            bound = math.nan
        if not 0 <= bound <= 1:  # NaN fails too
            raise ConfigError(f"--accept term {term!r}: the bound must be one number between 0 and 1, e.g. "
                              f"{match[1]}>=0.3")
        rule[match[1]] = bound
    if not rule:
        raise ConfigError("--accept names no term; write e.g. horse>=0.3,wings>=0.3")
    return rule


def validate_learn_config(config: LearnConfig) -> None:
    check_ranges(config, LEARN_RANGES)
    if config.judge not in JUDGES:
        why = " (the evaluator measures the results, so it may never accept them)" if "evaluator" in config.judge else ""
        raise ConfigError(f"--judge must be one of {', '.join(JUDGES)}, got {config.judge!r}{why}")
    if not NAME.match(config.name) or config.name in CIFAR10_CLASSES:
        raise ConfigError(f"the concept name {config.name!r} must be lower-case letters, digits and _, start with a "
                          f"letter, and not be a CIFAR-10 class")
    parse_rule(config.accept)
    if config.mark_quantile > 0 and not config.marks:
        raise ConfigError(f"--mark_quantile {config.mark_quantile:g} needs --marks, the judge of by-eye marks to accept "
                          f"by (e.g. --marks pegasus); or drop --mark_quantile")
    expressions = source_expressions(config.expression)
    for expression in expressions:
        parse(expression)
    if len(expressions) > config.pool:
        raise ConfigError(f"--pool {config.pool} cannot be split between the {len(expressions)} sources of "
                          f"--expression; compose a larger --pool")
    if config.solver not in SOLVERS:
        raise ConfigError(f"--solver must be one of {', '.join(SOLVERS)}, got {config.solver!r}")
    learning = config.batch_size - int(round(config.batch_size * config.replay))
    if learning < MIN_NEW_PER_BATCH:
        raise ConfigError(f"--replay {config.replay:g} leaves {learning} of each batch of {config.batch_size} for the "
                          f"new concept; at least {MIN_NEW_PER_BATCH} are needed to learn it: lower --replay or raise "
                          f"--batch_size")


def source_expressions(text: str) -> list[str]:
    """``"A | B"`` -> ["A", "B"]: the sources of a learning pool; an empty one is a ConfigError naming it."""
    parts = [part.strip() for part in str(text).split(SOURCE_SEPARATOR)]
    for index, part in enumerate(parts):
        if not part:
            raise ConfigError(f"--expression {text!r}: source {index + 1} of {len(parts)} is empty; write one "
                              f"expression, or several joined by {SOURCE_SEPARATOR!r}, e.g. "
                              f"'2*horse&3*airplane@top | 2*horse:white&3*airplane@top'")
    return parts


def make_learn_config(**flags) -> LearnConfig:
    config = dataclass_from_flags(LearnConfig, {}, flags)
    validate_learn_config(config)
    return config


def judge_terms(probabilities: torch.Tensor, rule: dict[str, float]) -> torch.Tensor:
    """(N,) bool: every class and wings term of the rule reaches its bound in the probabilities (N, 10)."""
    passed = torch.ones(len(probabilities), dtype=torch.bool)
    for name, bound in rule.items():
        if name in PIXEL_TERMS:
            continue
        p = (sum(probabilities[:, CIFAR10_CLASSES.index(c)] for c in WINGED) if name == "wings"
             else probabilities[:, CIFAR10_CLASSES.index(name)])
        passed &= p >= bound
    return passed


@torch.no_grad()
def compose_pool(config: LearnConfig, nets, sources: Sources, perceptual, expression: str,
                 rng: np.random.Generator, marks: MarkJudge | None = None) -> dict[str, torch.Tensor]:
    """Draw the pool of ``expression`` chunk by chunk from ``sources.prior`` (which may know a learned label):
    codes (N, D), the judge's probabilities (N, 10), realism, sharpness, appearance (``appearance``), rising mass,
    the pixel terms (``PIXEL_TERMS``) the rule names and, given ``marks``, its probability of a by-eye mark."""
    weights = parse(expression, sources.concepts.names + learned_labels(sources.prior))
    rule = parse_rule(config.accept)
    subject = subject_term(rule)
    settings = DrawSettings("prior", guidance=config.guidance, prior_steps=config.prior_steps, solver=config.solver,
                            repel=config.repel, repel_features=picture_features(sources) if config.repel else None)
    found: dict[str, list[torch.Tensor]] = {"codes": [], "probabilities": [], "realism": [], "sharpness": [],
                                            "appearance": [], "rise": [],
                                            **{term: [] for term in PIXEL_TERMS if term in rule},
                                            **({"mark": []} if marks is not None else {})}
    guides, placer = start_guides(weights, sources, settings) if config.start else (None, None)
    for first in range(0, config.pool, config.chunk):
        count = min(config.chunk, config.pool - first)
        if config.start:  # real pictures carried to the expression (compose --start)
            pictures_codes, _ = draw_density(config.start, sources, count, rng, replace(settings, source="heldout"))
            z = project(sources.prior, torch.from_numpy(pictures_codes), config.start_noise, guides, settings.schedule,
                        prior_generator(rng), placer)
        else:
            codes, _ = sample_expression(weights, sources, count, rng, settings)
            z = torch.from_numpy(codes)
        images = nets.decoder(z).float()
        pictures = to_uint8(images)
        probabilities, maps = classifier_views(perceptual, pictures)
        found["codes"].append(z)
        found["probabilities"].append(probabilities)
        found["realism"].append(nets.image_critic(images).float().flatten())
        found["sharpness"].append(laplacian_variance(images))
        found["appearance"].append(appearance(perceptual, images))
        found["rise"].append(rising_mass(images))
        if "pale_subject" in rule:  # the pixel terms only when the rule asks for them
            evidence = maps[:, CIFAR10_CLASSES.index(subject)] if subject else None
            found["pale_subject"].append(torch.from_numpy(subject_colour(pictures, evidence)[0]))
        if "pale_wing" in rule:
            found["pale_wing"].append(rising_brightness(images))
        if marks is not None:
            found["mark"].append(judge_images(marks, pictures, perceptual))
    return {k: torch.cat(v) for k, v in found.items()}


def compose_sources(config: LearnConfig, nets, sources: Sources, perceptual, expressions: list[str],
                    rng: np.random.Generator, marks: MarkJudge | None = None) -> dict[str, torch.Tensor]:
    """``compose_pool`` of each expression in turn, ``config.pool`` split evenly between them (the first ones take
    the remainder), concatenated; ``part`` (N,) says which expression drew each candidate."""
    pools = []
    for index, expression in enumerate(expressions):
        share = config.pool // len(expressions) + (index < config.pool % len(expressions))
        pool = compose_pool(replace(config, pool=share), nets, sources, perceptual, expression, rng, marks)
        pools.append({**pool, "part": torch.full((share,), index, dtype=torch.long)})
    return {key: torch.cat([pool[key] for pool in pools]) for key in pools[0]}


def appearance(perceptual, images: torch.Tensor) -> torch.Tensor:
    """(N, F) what each image (N, 3, 32, 32) in [-1, 1] looks like: the perceptual net's features (the kind of
    thing and its pose), then its colours and layout at 4 x 4 (48 numbers), each part scaled to unit mean norm."""
    parts = [perceptual.features(images).float(), torch.nn.functional.adaptive_avg_pool2d(images, 4).flatten(1)]
    return torch.cat([p / p.norm(dim=1).mean().clamp_min(1e-8) for p in parts], 1)


def rarity_weights(features: torch.Tensor, power: float, k: int = 8) -> torch.Tensor:
    """(N,) sampling weights summing to 1: each row's distance to its k-th nearest other row, to ``power``.
    Rows in a crowd get little, rows that look like no other get much; power 0 gives every row the same."""
    n = len(features)
    if n < 2 or power == 0:
        return torch.full((n,), 1.0 / max(n, 1))
    distances = torch.cdist(features.double(), features.double())
    distances.fill_diagonal_(float("inf"))
    kth = distances.topk(min(k, n - 1), dim=1, largest=False).values[:, -1]
    weights = kth.clamp_min(1e-12) ** power
    return (weights / weights.sum()).float()


def accept(pool: dict[str, torch.Tensor], config: LearnConfig) -> torch.Tensor:
    """(N,) bool: the judge's rule (its pixel terms read from the pixels), and realism and sharpness (and, when the
    rule asks for wings, the rising mass; under --mark_quantile, the judged probability of a by-eye mark, ``mark``)
    at least their pool quantiles; with ``part`` in the pool, the quantiles of each source's own share."""
    rule = parse_rule(config.accept)
    parts = pool.get("part")
    passed = judge_terms(pool["probabilities"], rule)
    for name in PIXEL_TERMS:
        if name in rule:
            passed &= pool[name] >= rule[name]
    passed &= at_least_quantile(pool["realism"], config.critic_quantile, parts)
    passed &= at_least_quantile(pool["sharpness"], config.sharpness_quantile, parts)
    if "wings" in rule and config.rise_quantile > 0:
        passed &= at_least_quantile(pool["rise"], config.rise_quantile, parts)
    if config.mark_quantile > 0:
        passed &= at_least_quantile(pool["mark"], config.mark_quantile, parts)
    return passed


@torch.no_grad()
def mirrored_codes(nets, codes: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The codes of the mirror images of what ``codes`` (N, D) decode to."""
    images = to_uint8(nets.decoder(codes.to(device)).float().cpu())
    return torch.from_numpy(encode_images(nets.encoder, images.flip(3), device, dtype, progress=False))


def fine_tune(base: FlowNet, new_codes: torch.Tensor, real_codes: torch.Tensor, real_labels: torch.Tensor,
              config: LearnConfig, new_weights: torch.Tensor | None = None) -> tuple[FlowNet, list[float]]:
    """A copy of ``base`` with one more label, fine-tuned on ``new_codes`` (drawn by ``new_weights``, default
    evenly) under it and replayed real codes under theirs; returns its moving average (eval mode) and the mean
    loss of each tenth of the steps."""
    grown = with_extra_label(base).train()
    for parameter in grown.parameters():
        parameter.requires_grad_(True)
    average = AveragedModel(grown, multi_avg_fn=get_ema_multi_avg_fn(config.ema))
    optimiser = torch.optim.AdamW(grown.parameters(), lr=config.lr, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(config.seed)
    replayed = int(round(config.batch_size * config.replay))
    label = torch.full((config.batch_size - replayed,), grown.classes - 1)
    losses, recent = [], []
    for step in range(config.steps):
        new = (torch.randint(len(new_codes), (config.batch_size - replayed,), generator=generator)
               if new_weights is None else
               torch.multinomial(new_weights, config.batch_size - replayed, replacement=True, generator=generator))
        old = torch.randint(len(real_codes), (replayed,), generator=generator)
        x1 = grown.standardise(torch.cat([new_codes[new], real_codes[old]]))
        loss = flow_matching_loss(grown, x1, torch.cat([label, real_labels[old]]), generator, config.label_dropout)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        average.update_parameters(grown)
        recent.append(loss.item())
        if not math.isfinite(recent[-1]):
            raise RunError(f"the fine-tuning loss became {recent[-1]} at step {step + 1}; try a lower --lr")
        if (step + 1) % max(1, config.steps // 10) == 0:
            losses.append(sum(recent) / len(recent))
            recent = []
    learned = average.module.eval()
    learned.label_names = list(getattr(base, "label_names", CIFAR10_CLASSES)) + ["(learned)"]
    return learned, losses


@torch.no_grad()
def drift_of_old_labels(base: FlowNet, learned: FlowNet, labels: list[int], count: int = 256) -> dict[str, float]:
    """How far samples of old labels moved: mean distance between the two priors' samples from the same
    noise, over the mean distance between two different samples of the base (so 0 is unchanged, 1 unrelated)."""
    moved = {}
    for label in labels:
        before = sample(base, count, [(label, 1.0)], 16, torch.Generator().manual_seed(label))
        after = sample(learned, count, [(label, 1.0)], 16, torch.Generator().manual_seed(label))
        spread = (before - before.roll(1, 0)).norm(dim=1).mean()
        moved[CIFAR10_CLASSES[label]] = ((after - before).norm(dim=1).mean() / spread).item()
    return moved


def claim_learned_folder(config: LearnConfig, run: Path) -> Path:
    out = Path(config.out) if config.out else learned_folder(run, config.name)
    return claim_output(out, OUTPUT_FILES, "a learned concept's")


def learn_rounds(config: LearnConfig, opened, base: FlowNet, perceptual, concepts, bank, quiet: bool,
                 marks: MarkJudge | None = None) -> dict:
    """Compose, accept and fine-tune ``config.rounds`` times; returns every round's accepted codes, the last
    learned prior and its losses, the codes it trained on, each round's record, the replayed real codes and the
    seconds spent composing and fine-tuning."""
    run_config, nets, device, dtype = opened.config, opened.nets, opened.device, opened.dtype
    real = [(bank.codes[s], bank.labels[s]) for s in ("train", "test") if len(bank.codes[s])]
    real_codes = torch.from_numpy(np.concatenate([c for c, _ in real])).float()
    real_labels = torch.from_numpy(np.concatenate([lab for _, lab in real])).long()

    # Expert iteration (Anthony, Tian and Barber 2017; as rejection-sampling fine-tuning, Dong et al. 2023, RAFT):
    # each round composes from what the round before learned, so the accepted share grows round by round.
    pool_prior, expressions, kept, looks, rounds = base, source_expressions(config.expression), [], [], []
    if config.warm_start:  # go on from a concept learned before (its own label draws the first pool)
        pool_prior, expressions = load_learned(opened.folder, config.warm_start), [config.warm_start]
    compose_seconds = fine_tune_seconds = 0.0
    for round_index in range(config.rounds):
        began_round = time.monotonic()
        sources = Sources(concepts, bank, pool_prior, run_config.code_shape, nets.decoder, perceptual)
        rng = np.random.default_rng(config.seed if round_index == 0 else (config.seed, round_index))
        expression = f" {SOURCE_SEPARATOR} ".join(expressions)
        pool = compose_sources(config, nets, sources, perceptual, expressions, rng, marks)
        passed = accept(pool, config)
        accepted = pool["codes"][passed]
        if len(accepted) < config.min_accepted:
            raise RunError(f"only {len(accepted)} of {config.pool} candidates of {expression} met --accept "
                           f"{config.accept} and the quantiles in round {round_index + 1} (at least --min_accepted "
                           f"{config.min_accepted} are needed); loosen --accept, lower the quantiles or compose a "
                           f"larger --pool")
        kept.append(accepted)
        looks.append(pool["appearance"][passed])
        composed_at = time.monotonic()
        everything = torch.cat(kept)
        new_codes = torch.cat([everything, mirrored_codes(nets, everything, device, dtype)])
        weights = None
        if config.balance > 0:  # a mirror image is drawn as often as its original
            weights = rarity_weights(torch.cat(looks), config.balance).repeat(2) / 2
        torch.manual_seed(config.seed)
        learned, losses = fine_tune(base, new_codes, real_codes, real_labels, config, weights)
        learned.label_names[-1] = config.name
        tuned_at = time.monotonic()
        compose_seconds += composed_at - began_round
        fine_tune_seconds += tuned_at - composed_at
        both = judge_terms(pool["probabilities"], {"horse": 0.2, "wings": 0.2}).float().mean().item()
        rounds.append({"expression": expression, "accepted": int(passed.sum()), "acceptance": passed.float().mean().item(),
                       "pool_share_horse_and_wings_at_least_0.2_by_the_judge": both, "trained_on": len(new_codes),
                       "fine_tuning_loss_by_tenth": losses})
        if marks is not None:  # how the judge of marks read the pool and what was accepted
            rounds[-1].update(mark_mean_of_pool=pool["mark"].mean().item(),
                              mark_mean_of_accepted=pool["mark"][passed].mean().item())
        if len(expressions) > 1:  # what each source gave
            rounds[-1]["sources"] = [{"expression": e, "composed": int((pool["part"] == i).sum()),
                                      "accepted": int(passed[pool["part"] == i].sum())}
                                     for i, e in enumerate(expressions)]
        if not quiet and config.rounds > 1:
            print(f"round {round_index + 1}: {expression}: {rounds[-1]['accepted']} of {config.pool} accepted "
                  f"({rounds[-1]['acceptance']:.1%}; horse and wings >= 0.2 by the judge in {both:.1%} of the pool), "
                  f"fine-tuned on {len(new_codes)} codes", flush=True)
        pool_prior, expressions = learned, [config.name]
    return {"accepted": torch.cat(kept), "learned": learned, "losses": losses, "new_codes": new_codes,
            "rounds": rounds, "real_codes": real_codes, "compose_seconds": compose_seconds,
            "fine_tune_seconds": fine_tune_seconds}


def learn(config: LearnConfig, quiet: bool = False) -> Path:
    began = time.monotonic()
    run = resolve_run(config.run)
    config.run = str(run)
    concepts = load_concepts(run)
    if config.name in concepts.names:
        raise ConfigError(f"the concept name {config.name!r} is already a concept of {run} (a class, cluster, source or "
                          f"direction); a learned concept of that name would hide it: choose another name")
    if config.warm_start and config.warm_start not in learned_names(run):
        raise ConfigError(f"--warm_start {config.warm_start!r} is not a concept {run} learned (its learned concepts: "
                          f"{', '.join(learned_names(run)) or 'none'}); learn it first, or leave --warm_start out")
    if config.start and config.start not in concepts.densities:
        raise ConfigError(f"--start {config.start!r} is not a class or cluster of {run}; name the class or cluster whose "
                          f"held-out pictures start the pool, e.g. --start horse, or leave --start out")
    marks = load_judge(run, config.marks) if config.marks else None  # refused in one line before anything is claimed
    out = claim_learned_folder(config, run)
    opened = load_run(run)
    nets = opened.nets
    base = load_prior(run)
    perceptual = load_perceptual()
    bank = load_bank(run)
    found = learn_rounds(config, opened, base, perceptual, concepts, bank, quiet, marks)
    accepted, learned, losses, new_codes = found["accepted"], found["learned"], found["losses"], found["new_codes"]
    rounds, real_codes = found["rounds"], found["real_codes"]
    compose_seconds, fine_tune_seconds = found["compose_seconds"], found["fine_tune_seconds"]
    moved = drift_of_old_labels(base, learned, [CIFAR10_CLASSES.index(c) for c in ("horse", "bird", "airplane")])

    record = {"name": config.name, "expression": config.expression, "judge": config.judge, "accept": config.accept,
              "critic_quantile": config.critic_quantile, "sharpness_quantile": config.sharpness_quantile,
              "rise_quantile": config.rise_quantile, "marks": config.marks, "mark_quantile": config.mark_quantile,
              "start": config.start, "start_noise": config.start_noise if config.start else None, "repel": config.repel,
              "pool": config.pool, "accepted": len(accepted), "acceptance": len(accepted) / (config.pool * config.rounds),
              "trained_on": len(new_codes), "replayed_real_codes": len(real_codes),
              "fine_tuning_loss_by_tenth": losses, "rounds": rounds, "old_label_samples_moved": moved,
              "old_label_samples_moved_means": "mean distance between the base's and the learned prior's samples "
                                               "from the same noise, over that between two base samples (0: unchanged)",
              "compose_seconds": compose_seconds, "fine_tune_seconds": fine_tune_seconds}
    source = json.loads((run / PRIOR_FOLDER / SOURCE_FILE).read_text())
    labels = list(getattr(base, "label_names", CIFAR10_CLASSES)) + [config.name]
    base_config = json.loads((run / PRIOR_FOLDER / "config.json").read_text())

    def build(folder: Path) -> None:
        save_config(config, folder / "config.json")
        write_json(base_config, folder / NET_CONFIG_FILE)
        weights = torch.nn.Module()
        weights.ema = AveragedModel(learned)  # the moving average only: load_prior takes the net from it
        save_weights(weights, folder / "model.safetensors", dtype=torch.float16)  # shipped beside the model
        write_json({**source, "weights_digest": weights_digest(run), "labels": labels,
                    "learned_from": config.expression}, folder / SOURCE_FILE)
        np.savez_compressed(folder / ACCEPTED_FILE, codes=accepted.numpy().astype(np.float16))
        with torch.no_grad():
            save_grid(nets.decoder(accepted[:32]).float(), folder / "accepted.png", nrow=8, scale=3)  # 25 MiB in all
        record["seconds"] = time.monotonic() - began
        write_json(record, folder / RECORD_FILE)

    replace_folder(build, out)
    if is_shipped(run) and folder_bytes(run) > SIZE_LIMIT:  # a shipped model must stay committable
        print(f"warning: {run} now holds {folder_bytes(run) / 2 ** 20:.2f} MiB, over the "
              f"{SIZE_LIMIT / 2 ** 20:.0f} MiB a shipped model may take: remove a learned concept it no longer "
              f"needs (its folder under {out.parent}), or learn into a copy of it", file=sys.stderr)
    if not quiet:
        source = config.warm_start or config.expression
        if config.start:
            source += f", started from held-out {config.start} pictures at noise {config.start_noise:g}"
        source += f", its draws pushed apart x{config.repel:g}" if config.repel else ""
        print(f"learned {config.name} from {source}: {record['accepted']} of {config.pool * config.rounds} accepted "
              f"({record['acceptance']:.1%}), fine-tuned {config.steps} steps in {record['seconds'] / 60:.1f} min "
              f"-> {out}/")
        print("  old labels' samples moved " + ", ".join(f"{k} {v:.2f}" for k, v in moved.items())
              + " (0: unchanged, 1: unrelated); compose it with python -m latent_ops.compose "
              + f"{config.name} --run {run}")
    return out


def main(name: str = "pegasus", **flags) -> None:
    """Learn concept NAME from compositions of --expression (see the module's docstring); every field of
    LearnConfig is a flag."""
    run_cli(lambda: learn(make_learn_config(name=str(name), **flags)))


if __name__ == "__main__":
    from autoencoder.cli import fire_command

    fire_command(main)
