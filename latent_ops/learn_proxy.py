"""Learn a run's feature proxy (``latent_ops.feature_proxy``): what ``compose --repel`` pushes draws apart through.

    python -m latent_ops.learn_proxy --run models/pegasus-cifar10

For each expression (default: the concepts the run learned, e.g. ``pegasus`` and ``pegasus_white``), pools of
``--pool`` are drawn with the run's compose recipe and ``--repel``, pushed apart through the decoded pictures (the
exact, slow way). At every push the recorder keeps each denoised estimate, the perceptual net's features of its
picture, its push in feature space and the code-space gradient that push asks for. The proxy is fitted to those
(distillation with Sobolev training, ``feature_proxy.proxy_loss``) for ``--steps`` batches. Each expression's last
draw is held out: ``proxy.json`` says how well the proxy's gradients agree with the pictures' there (cosine; the
plain code-space push beside it) and how much of the features' spread it explains.

Writes ``RUN/proxy/`` (or ``--out``): ``model.safetensors``, ``proxy.json``, ``config.json``. Only the perceptual
net is read; the evaluator, which measures results, never is.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from autoencoder.atomic import replace_folder
from autoencoder.cli import ConfigError, check_ranges, claim_output, command, save_config
from latent_ops.feature_proxy import (RECORD_FILE, WEIGHTS_FILE, FeatureProxy, gradient_agreement, proxy_folder,
                                      proxy_loss, pushed_gradient, save_proxy)
from latent_ops.flow import away_from_neighbours
from latent_ops.sampling import picture_features
from latent_ops.runs import resolve_run
from latent_ops.shipped_folder import SIZE_LIMIT, folder_bytes, is_shipped
from latent_ops.trained_prior import learned_names

OUTPUT_FILES = {WEIGHTS_FILE, RECORD_FILE}
PLAIN_EXPRESSION = "horse&wings@back"  # drawn when the run learned no concept


@dataclass
class LearnProxyConfig:
    run: str = ""  # run folder; empty: the newest trained run in outputs/runs, else the shipped model
    out: str = ""  # where the proxy goes; empty: RUN/proxy
    expressions: str = ""  # comma-separated expressions whose pushed-apart draws it learns from; empty: the run's
    #   learned concepts (else horse&wings@back)
    draws: int = 8  # pools drawn per expression to learn from (one more is held out to measure the proxy)
    pool: int = 1024  # candidates per draw (pushed apart together, as compose's pool is)
    repel: float = 1.0  # the push the draws are made with (compose --repel)
    seed: int = 1000  # the draws' seeds are seed, seed + 1, ...; also the proxy's initialisation and batches
    steps: int = 6000  # training batches
    batch_size: int = 256
    lr: float = 1e-3  # AdamW, decayed to a tenth along a cosine
    sobolev: float = 1.0  # weight of the gradients' disagreement (1 - cosine) beside the features' squared error
    width: int = 32  # channels of the proxy's first convolutions (the second pair has twice as many)


LEARN_PROXY_RANGES = {"draws": (1, 10 ** 4), "pool": (2, 10 ** 5), "repel": (1e-6, 100), "seed": (0, 2 ** 31 - 1),
                      "steps": (0, 10 ** 7), "batch_size": (1, 10 ** 6), "lr": (1e-8, 1.0), "sobolev": (0, 1e4),
                      "width": (1, 1024)}


class PushRecorder:
    """A feature map for particle guidance that reads through ``features`` and keeps, for each block pushed apart,
    the estimates, their features, their push in feature space and the code-space gradient of that push."""

    def __init__(self, features):
        self.features, self.blocks = features, []

    def __call__(self, codes: torch.Tensor) -> torch.Tensor:
        read = self.features(codes)
        push = away_from_neighbours(read.detach().float())
        gradient, = torch.autograd.grad((read.float() * push).sum(), codes, retain_graph=True)
        self.blocks.append({"codes": codes.detach().float().clone(), "features": read.detach().float().clone(),
                            "push": push, "gradient": gradient.detach().float()})
        return read


def record_pushes(config: LearnProxyConfig, run: Path, expression: str) -> tuple[list[list[dict]], tuple[int, ...]]:
    """The blocks each draw of ``expression`` pushed apart through its pictures (``config.draws`` + 1 draws, with
    the run's compose recipe), and the run's code shape."""
    from latent_ops.compose import draw, open_setting
    from latent_ops.compose_config import make_compose_config

    draws = []
    for index in range(config.draws + 1):
        compose_config = make_compose_config(expression=expression, run=str(run), pool=config.pool,
                                             seed=config.seed + index, repel=config.repel, repel_through="pictures",
                                             intent="probe", mark_gate=0.0)
        if index == 0:
            setting = open_setting(compose_config)
        recorder = PushRecorder(picture_features(setting.sources))
        draw(compose_config, setting, features=recorder)
        if not recorder.blocks:
            raise ConfigError(f"{expression!r} drew nothing from the prior to push apart; name expressions that draw "
                              f"from it (a learned concept or a conjunction such as horse&bird)")
        draws.append(recorder.blocks)
    return draws, setting.sources.code_shape


def stacked(blocks: list[dict]) -> dict[str, torch.Tensor]:
    return {key: torch.cat([block[key] for block in blocks]) for key in blocks[0]}


def train_proxy(config: LearnProxyConfig, rows: dict[str, torch.Tensor], code_shape: tuple[int, ...]
                ) -> tuple[FeatureProxy, list[float]]:
    """A proxy fitted to ``rows`` (codes, features, push, gradient) for ``config.steps`` batches; the mean loss
    of each tenth of training."""
    torch.manual_seed(config.seed)
    proxy = FeatureProxy(code_shape, rows["features"].shape[1], config.width)
    proxy.set_statistics(rows["features"])
    optimiser = torch.optim.AdamW(proxy.parameters(), lr=config.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: 0.1 + 0.45 * (1 + math.cos(math.pi * step / max(config.steps, 1))))
    batches = torch.Generator().manual_seed(config.seed)
    losses, tenth = [], []
    for step in range(config.steps):
        pick = torch.randint(len(rows["codes"]), (config.batch_size,), generator=batches)
        loss = proxy_loss(proxy, rows["codes"][pick], rows["features"][pick], rows["push"][pick],
                          rows["gradient"][pick], config.sobolev)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        tenth.append(loss.item())
        if len(tenth) >= max(config.steps // 10, 1):
            losses.append(sum(tenth) / len(tenth))
            tenth = []
    return proxy.eval().requires_grad_(False), losses


def held_out_figures(proxy: FeatureProxy, blocks: list[dict]) -> dict[str, float]:
    """How the proxy does on draws it did not learn from: the cosine of its gradients with the pictures' (mean and
    median), that of the plain code-space push (``away_from_neighbours`` of the estimates) beside it, and the share
    of the features' variance it explains."""
    rows = stacked(blocks)
    read, gradient = pushed_gradient(proxy, rows["codes"], rows["push"])
    agreement = gradient_agreement(gradient, rows["gradient"])
    code_push = torch.cat([away_from_neighbours(block["codes"]) for block in blocks])
    plain = gradient_agreement(code_push, rows["gradient"])
    target = rows["features"]
    explained = 1 - (read - target).square().sum() / (target - target.mean(0)).square().sum()
    return {"rows": len(target), "gradient_cosine_mean": agreement.mean().item(),
            "gradient_cosine_median": agreement.median().item(), "code_push_cosine_mean": plain.mean().item(),
            "features_variance_explained": explained.item()}


def learn_proxy(config: LearnProxyConfig, quiet: bool = False) -> Path:
    began = time.monotonic()
    run = resolve_run(config.run)
    config.run = str(run)
    expressions = [e.strip() for e in config.expressions.split(",") if e.strip()]
    expressions = expressions or learned_names(run) or [PLAIN_EXPRESSION]
    out = claim_output(Path(config.out) if config.out else proxy_folder(run), OUTPUT_FILES, "a feature proxy's")
    learning, held_out = [], {}
    for expression in expressions:
        draws, code_shape = record_pushes(config, run, expression)
        learning += [block for blocks in draws[:-1] for block in blocks]
        held_out[expression] = draws[-1]
        if not quiet:
            print(f"learn_proxy: recorded {len(draws)} pushed-apart draws of {expression}", flush=True)
    recorded = time.monotonic()
    rows = stacked(learning)
    proxy, losses = train_proxy(config, rows, code_shape)
    figures = {expression: held_out_figures(proxy, blocks) for expression, blocks in held_out.items()}
    record = {"expressions": expressions, "rows_learned_from": len(rows["codes"]), "loss_by_tenth": losses,
              "held_out": figures, "record_seconds": recorded - began, "train_seconds": time.monotonic() - recorded}

    def build(folder: Path) -> None:
        save_config(config, folder / "config.json")
        save_proxy(proxy, folder, record)

    replace_folder(build, out)
    if is_shipped(run) and folder_bytes(run) > SIZE_LIMIT:
        print(f"warning: {run} now holds {folder_bytes(run) / 2 ** 20:.2f} MiB, over the {SIZE_LIMIT / 2 ** 20:.0f} "
              f"MiB a shipped model may take: learn into a copy of it, or give a smaller --width", file=sys.stderr)
    if not quiet:
        for expression, found in figures.items():
            print(f"  {expression}, held out: gradients agree with the pictures' at cosine "
                  f"{found['gradient_cosine_mean']:.2f} (the plain code push {found['code_push_cosine_mean']:.2f}); "
                  f"features {found['features_variance_explained']:.0%} explained")
        print(f"learned the feature proxy of {run} in {(time.monotonic() - began) / 60:.1f} min -> {out}/; "
              f"python -m latent_ops.compose pegasus --run {run} --repel 1 pushes through it")
    return out


def main(**flags) -> None:
    """Learn the run's feature proxy for compose --repel (see the module's docstring); every field of
    LearnProxyConfig is a flag."""
    command(LearnProxyConfig, flags, learn_proxy, check=lambda config: check_ranges(config, LEARN_PROXY_RANGES))


if __name__ == "__main__":
    from autoencoder.cli import fire_command

    fire_command(main)
