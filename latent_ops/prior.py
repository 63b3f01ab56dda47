"""The latent prior: a class-conditional flow (``latent_ops.flow``) trained on a run's code bank.

``python -m latent_ops.prior --run RUN`` trains it on the bank's train-split codes and their
CIFAR-10 labels (encoding the data set first when the run has no bank) and writes
``RUN/prior/``: ``config.json`` (this command's flags), ``source.json`` (the run's weights
digest and the code size: a prior made from other weights is refused), ``model.safetensors``
(the exponential moving average of the weights, what sampling uses), ``metrics.jsonl``
(training and held-out flow loss) and a checkpoint that a killed run resumes from exactly
(the same command again). Compose uses the prior to draw codes of a class
(``--source prior``), to pull edited codes back onto the codes the flow makes
(``--project``), for AND-composition of classes (``horse&bird``), and in the refinement's energy.

``--net mlp`` (the velocity MLP on the flat code) or ``--net conv`` (a residual conv net on the
code's (C, H, W) grid, ``latent_ops.flow.ConvVelocityNet``). ``--splits both`` trains on the codes
of both CIFAR-10 splits (but 2,000 held-out test codes that the held-out loss reads), ``--mirror``
adds the codes of every image's mirror image (both read the data set and encode it once).

Example: ``python -m latent_ops.prior --run outputs/runs/release --data data``
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from autoencoder.atomic import write_json
from autoencoder.checkpoint import (
    clean_run_folder,
    has_checkpoint,
    load_train_state,
    state_file,
    trim_metrics,
    write_checkpoint,
)
from autoencoder.cifar10 import CACHE_FOLDER, CIFAR10_CLASSES, DATA_FOLDER
from autoencoder.cli import (
    ConfigError,
    check_ranges,
    claim_output,
    dataclass_from_flags,
    load_config,
    run_cli,
    save_config,
)
from autoencoder.data import load_cifar10
from autoencoder.run_folder import (
    CHECKPOINTS_FOLDER,
    METRICS_FILE,
    MODEL_FILE,
    POINTER_FILE,
    STATE_FILE,
    RunError,
    load_run,
    load_run_config,
    load_weights,
    model_file,
    weights_digest,
)
from autoencoder.schedule import cosine_decay
from latent_ops.encode import BANK_FILE, LatentBank, StaleError, encode_images, encode_run, load_bank
from latent_ops.flow import VelocityNet, flow_matching_loss
from latent_ops.runs import resolve_run
from latent_ops.shipped_folder import is_shipped
from latent_ops.trained_prior import NETS, SOURCE_FILE, PriorWeights, prior_folder

PRIOR_FILES = {"config.json", SOURCE_FILE, MODEL_FILE, METRICS_FILE, POINTER_FILE, STATE_FILE, CHECKPOINTS_FOLDER}


@dataclass
class PriorConfig:
    run: str = ""  # run folder whose codes the prior models; empty: the newest in outputs/runs
    out: str = ""  # where the prior is written; empty: RUN/prior (the prior compose uses)
    data: str = DATA_FOLDER  # CIFAR-10, only read when the run has no code bank yet
    cache_dir: str = CACHE_FOLDER  # decoded data cache (as for training)
    net: str = "auto"  # conv (a residual conv net on the code's (C, H, W) grid), mlp (on the flat code), or auto:
    #   conv on a spatial code, mlp on a flat one (conv made better class samples at equal time: docs/priors.md)
    hidden: int = 256  # width of the velocity MLP, and of the conv net's time and label features
    channels: int = 128  # channels of the conv net (--net conv)
    blocks: int = 4  # residual FiLM blocks of either net
    splits: str = "both"  # both (train and test but HELD_OUT test codes, kept for the held-out loss), or train
    mirror: bool = True  # also train on the codes of the mirror images (encoded from --data)
    steps: int = 5000  # optimisation steps (the conv net: 12 min alone on 2 AVX-512 bf16 cores)
    batch_size: int = 256  # codes per step
    lr: float = 1e-3  # AdamW learning rate, cosine-decayed to 5% at the last step
    weight_decay: float = 1e-4  # AdamW weight decay
    label_dropout: float = 0.1  # chance a training label becomes "no condition" (classifier-free guidance)
    ema: float = 0.999  # decay of the moving average of the weights that sampling uses
    seed: int = 0  # one seed for the batches, noise, times and dropped labels
    log_every: int = 250  # steps between metrics.jsonl lines (with the held-out loss)
    checkpoint_every: int = 500  # steps between checkpoints
    threads: int = 0  # CPU threads for torch; 0 keeps torch's default



PRIOR_SPLITS = ("train", "both")
LR_FLOOR = 0.05  # the learning rate decays to this fraction of --lr (cosine)
HELD_OUT = 2000  # test codes kept out of training under --splits both
PRIOR_RANGES = {"hidden": (8, 8192), "channels": (8, 4096), "blocks": (1, 64), "steps": (1, 10 ** 7), "batch_size": (2, 10 ** 6),
                "lr": (1e-8, 1.0), "weight_decay": (0, 1.0), "label_dropout": (0, 1), "ema": (0, 1),
                "seed": (0, 2 ** 31 - 1), "log_every": (1, 10 ** 7), "checkpoint_every": (1, 10 ** 7),
                "threads": (0, 1024)}
# What shapes the prior; a killed run resumes only under the same values.
RECIPE_FIELDS = ("net", "hidden", "channels", "blocks", "splits", "mirror", "steps", "batch_size", "lr", "weight_decay", "label_dropout", "ema", "seed")


def make_prior_config(**flags) -> PriorConfig:
    config = dataclass_from_flags(PriorConfig, {}, flags)
    validate_prior_config(config)
    return config


def validate_prior_config(config: PriorConfig) -> None:
    check_ranges(config, PRIOR_RANGES)
    if config.net not in NETS:
        raise ConfigError(f"--net must be one of {', '.join(NETS)}, got {config.net!r}")
    if config.splits not in PRIOR_SPLITS:
        raise ConfigError(f"--splits must be one of {', '.join(PRIOR_SPLITS)}, got {config.splits!r}")


def training_codes(run: Path, bank: LatentBank, config: PriorConfig
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train codes, train labels, held-out codes, held-out labels) for ``config``'s splits and mirrors.

    Codes come from the bank; a split the bank lacks (a shipped model keeps only the test split) and
    the mirror images are encoded from ``config.data`` with the run's encoder.
    """
    wanted = ["train"] + (["test"] if config.splits == "both" else [])
    encoder = None
    parts = []
    for split in wanted:
        keep = slice(HELD_OUT, None) if split == "test" else slice(None)
        flips = [False, True] if config.mirror else [False]
        for flip in flips:
            if not flip and len(bank.codes[split]):
                parts.append((torch.from_numpy(bank.codes[split][keep]).float(),
                              torch.from_numpy(bank.labels[split][keep]).long()))
                continue
            if encoder is None:
                opened = load_run(run)
                encoder = (opened.nets.encoder, opened.device, opened.dtype, opened.config.classes)
            net, device, dtype, classes = encoder
            images = load_cifar10(config.data, split, classes, cache_dir=config.cache_dir)
            pixels = images.images[keep]
            codes = encode_images(net, pixels.flip(3) if flip else pixels, device, dtype, progress=False)
            parts.append((torch.from_numpy(codes), images.labels[keep].long()))
    held = slice(0, HELD_OUT)
    return (torch.cat([c for c, _ in parts]), torch.cat([lab for _, lab in parts]),
            torch.from_numpy(bank.codes["test"][held]).float(), torch.from_numpy(bank.labels["test"][held]).long())


def batch_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


@torch.no_grad()
def held_out_loss(net: VelocityNet, codes: torch.Tensor, labels: torch.Tensor, seed: int, count: int = 4096) -> float:
    """The flow loss on (up to ``count``) held-out codes, with fixed noise and times."""
    generator = torch.Generator().manual_seed(seed + 7)
    codes, labels = codes[:count], labels[:count]
    return flow_matching_loss(net, net.standardise(codes), labels, generator, label_dropout=0.0).item()


def ensure_bank(run: Path, data: str, cache_dir: str) -> LatentBank:
    try:
        return load_bank(run)
    except RunError as problem:
        if is_shipped(run):
            raise
        print(f"prior: encoding the data set into {run / BANK_FILE} ({problem})")
        encode_run(run, data, cache_dir)
        return load_bank(run)


def claim_prior_folder(folder: Path) -> None:
    """A prior is written into a new folder or one that holds a prior; anything else is refused before any work."""
    claim_output(folder, PRIOR_FILES, "a prior's")  # a killed write's hidden temporaries are cleaned on resume
    if (folder / "config.json").exists() and not (folder / SOURCE_FILE).exists():
        raise ConfigError(f"--out {folder} holds a config.json but no {SOURCE_FILE}: it is not a prior's folder; "
                          f"nothing was written: pass a new --out")


def check_resumable(folder: Path, config: PriorConfig) -> None:
    """Refuse to continue a prior trained with other recipe values (they would mix two priors)."""
    saved = load_config(folder / "config.json", PriorConfig, strict=True)
    changed = [f for f in RECIPE_FIELDS if getattr(saved, f) != getattr(config, f)]
    if changed:
        raise ConfigError(f"{folder} holds a prior trained with other {', '.join('--' + f for f in changed)}; "
                          f"pass the same values to resume it, or delete {folder} to train a new one")


def train_prior(config: PriorConfig, progress: bool = True) -> Path:
    """Train (or resume) the run's prior; returns its folder."""
    run = resolve_run(config.run)
    config.run = str(run)
    if config.threads:
        torch.set_num_threads(config.threads)
    folder = Path(config.out) if config.out else prior_folder(run)
    claim_prior_folder(folder)
    if has_checkpoint(folder) and not state_file(folder).exists():
        raise ConfigError(f"{folder} holds a finished prior that was shipped without its training state, so it "
                          f"cannot be trained further; to train a new prior of {run}, pass --out NEW_FOLDER "
                          f"(compose reads RUN/prior: move the new one there when it is done)")
    bank = ensure_bank(run, config.data, config.cache_dir)
    code_shape = load_run_config(run).code_shape
    codes, labels, test_codes, test_labels = training_codes(run, bank, config)  # (N, D), (N,)
    digest = weights_digest(run)

    torch.manual_seed(config.seed)
    weights = PriorWeights(code_shape, config)
    net = weights.net
    optimiser = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    start = 0
    if folder.exists() and has_checkpoint(folder):
        check_resumable(folder, config)
        source = json.loads((folder / SOURCE_FILE).read_text())
        if source.get("weights_digest") != digest:
            raise StaleError(f"{folder} was trained on codes of other weights than {run}'s current ones; "
                             f"delete {folder} and train the prior again")
        clean_run_folder(folder)
        load_weights(weights, model_file(folder))
        state = load_train_state(state_file(folder))
        optimiser.load_state_dict(state["optimiser"])
        start = int(state["step"])
        trim_metrics(folder / METRICS_FILE, start)
    else:
        net.set_statistics(codes)
        weights.ema.module.load_state_dict(net.state_dict())
        folder.mkdir(parents=True, exist_ok=True)
        save_config(config, folder / "config.json")
        write_json({"weights_digest": digest, "dim": int(codes.shape[1]), "code_shape": list(code_shape),
                    "codes": int(len(codes)), "labels": list(CIFAR10_CLASSES)}, folder / SOURCE_FILE)
        (folder / METRICS_FILE).unlink(missing_ok=True)
    if start >= config.steps:
        return folder

    def save(step: int) -> None:
        write_checkpoint(folder, weights, {"step": step, "optimiser": optimiser.state_dict()}, step)

    metrics = (folder / METRICS_FILE).open("a")
    bar = tqdm(range(start, config.steps), initial=start, total=config.steps, desc="prior", disable=not progress)
    clock, recent = time.perf_counter(), []
    for step in bar:
        for group in optimiser.param_groups:
            group["lr"] = config.lr * cosine_decay(step, config.steps, LR_FLOOR)
        generator = batch_generator(config.seed, step)
        pick = torch.randint(len(codes), (config.batch_size,), generator=generator)
        loss = flow_matching_loss(net, net.standardise(codes[pick]), labels[pick], generator, config.label_dropout)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        weights.ema.update_parameters(net)
        recent.append(loss.item())
        done = step + 1
        if done % config.log_every == 0 or done == config.steps:
            if not math.isfinite(recent[-1]):
                raise RunError(f"the prior's loss became {recent[-1]} at step {done}; try a lower --lr "
                               f"(the last good checkpoint is kept)")
            record = {"step": done, "loss": sum(recent) / len(recent),
                      "held_out_loss": held_out_loss(weights.ema.module, test_codes, test_labels, config.seed),
                      "seconds": time.perf_counter() - clock}
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()
            bar.set_postfix(loss=f"{record['loss']:.3f}", held_out=f"{record['held_out_loss']:.3f}")
            recent = []
        if done % config.checkpoint_every == 0 or done == config.steps:
            save(done)
    metrics.close()
    return folder


def main(**flags) -> None:
    """Train RUN/prior (default run: the newest in outputs/runs); the same command resumes a killed one. Every
    field of PriorConfig is a flag."""
    folder = run_cli(lambda: train_prior(make_prior_config(**flags)))
    last = json.loads((folder / METRICS_FILE).read_text().splitlines()[-1])
    print(f"wrote {folder}: step {last['step']}, flow loss {last['loss']:.4f}, held-out {last['held_out_loss']:.4f}")


if __name__ == "__main__":
    from autoencoder.cli import fire_command

    fire_command(main)
