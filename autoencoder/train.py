"""Train the adversarially regularised autoencoder: the loop and its command line.

Each step (``autoencoder/step.py``): encode a batch, decode its codes, mixes of pairs of
codes and prior draws, then (1) update the three critics, (2) update encoder and decoder
against them. Under torchrun each process trains a DDP replica on its share of every
batch (``autoencoder/distributed.py``); rank 0 writes the run folder. Randomness of step s comes from a generator seeded with (seed, s), and the data order of
epoch e from (seed, e), so a resumed run takes the same steps as an unbroken one.

Examples:
    python -m autoencoder.train --preset smoke --data data/cifar10-jpeg
    python -m autoencoder.train --preset cpu --data data/cifar10-jpeg --out outputs/runs/cpu
    python -m autoencoder.train --out outputs/runs/cpu --resume      # continue a killed run
    torchrun --nproc_per_node=2 -m autoencoder.train --preset cpu --data data --out outputs/runs/ddp
"""
from __future__ import annotations

import contextlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from autoencoder import distributed
from autoencoder.averaging import WeightAverage, averaged
from autoencoder.checkpoint import (
    clean_run_folder,
    has_checkpoint,
    load_train_state,
    refuse_foreign_folder,
    state_file,
    trim_metrics,
    write_checkpoint,
)
from autoencoder.cifar10 import CIFAR10_CLASSES
from autoencoder.cli import (
    CONFIG_FILE,
    ConfigError,
    UserError,
    check_writable,
    lock_folder,
    release_folder,
    run_cli,
    save_config,
)
from autoencoder.compute import resolve_device, resolve_precision
from autoencoder.config import TrainConfig, load_train_config, make_config
from autoencoder.data import DataNotFoundError, load_cifar10, to_float
from autoencoder.distributed import SINGLE, BatchSampler, Shard
from autoencoder.grids import save_picture
from autoencoder.metrics import laplacian_variance, reconstruction
from autoencoder.models import Networks, build_networks
from autoencoder.roundtrip import reconstruct
from autoencoder.run_folder import (
    METRICS_FILE,
    MODEL_FILE,
    POINTER_FILE,
    RunError,
    load_start_weights,
    load_weights,
    model_file,
    weights_metadata,
)
from autoencoder.samples import choose_sample_inputs, render_grid
from autoencoder.step import make_optimisers, set_learning_rates, step_generator, train_step

# Flags that may differ when resuming: they change where or how long, not what is learned.
RESUMABLE_FLAGS = {"steps", "max_minutes", "threads", "data", "cache_dir", "download", "log_every",
                   "sample_every", "checkpoint_every"}
# Paths are never taken from a loaded config.json (a run folder may come from someone else):
# on --resume they come from the flags or their defaults.
PATH_FLAGS = ("data", "cache_dir")
RUN_FILES = {CONFIG_FILE, METRICS_FILE, MODEL_FILE, POINTER_FILE, "train_state.pt", "samples", "checkpoints"}


class TrainingDiverged(UserError):
    """A loss or weight became non-finite; the last good checkpoint is kept."""


def held_out_reconstruction(nets: Networks, images: torch.Tensor, device: torch.device,
                            dtype: torch.dtype) -> dict[str, float]:
    """Mean squared error, mean PSNR (dB) and sharpness ratio (mean Laplacian variance of the reconstructions over
    that of the images) of reconstructions of uint8 images (N, 3, 32, 32)."""
    was_training = nets.training
    nets.eval()
    rebuilt = reconstruct(nets, images, device, dtype)
    result = reconstruction(images, rebuilt)
    nets.train(was_training)
    sharpness = laplacian_variance(rebuilt).mean() / laplacian_variance(to_float(images)).mean()
    return {"eval/mse": result["mse"], "eval/psnr": result["psnr_db"], "eval/sharpness": sharpness.item()}


def save_checkpoint(run_dir: Path, nets: Networks, opt_ae, opt_critic, step: int,
                    average: WeightAverage | None = None) -> None:
    """Weights, optimiser state, step and RNG as one atomic unit (autoencoder/checkpoint.py). With a weight
    average, ``model.safetensors`` holds the averaged autoencoder and the training state its raw weights."""
    nonfinite = [name for name, t in nets.state_dict().items() if t.is_floating_point() and not t.isfinite().all()]
    if nonfinite:
        raise TrainingDiverged(f"training diverged: {nonfinite[0]} holds NaN or infinity at step {step}; "
                               f"nothing was saved, the last good checkpoint is kept")
    state = {"step": step, "opt_ae": opt_ae.state_dict(), "opt_critic": opt_critic.state_dict(),
             "torch_rng": torch.get_rng_state()}
    if average is not None:
        state["raw_autoencoder"] = average.raw(nets)
    with averaged(average, nets):
        write_checkpoint(run_dir, nets, state, step)


def check_shardable(config: TrainConfig, shard: Shard) -> None:
    if shard.world_size > 1 and config.r1_weight > 0:
        raise ConfigError("--r1_weight takes a second derivative through the critic, which DistributedDataParallel "
                          "does not support; train it in one process")
    if config.batch_size % (2 * shard.world_size):
        raise ConfigError(f"--batch_size {config.batch_size} cannot be split into {shard.world_size} equal "
                          f"shares of whole pairs; use a multiple of {2 * shard.world_size} "
                          f"(2 x --nproc_per_node)")


def out_of_time(began: float, step: int, config: TrainConfig, shard: Shard, device: torch.device) -> bool:
    """Whether --max_minutes has passed; under torchrun the ranks agree on it at log steps only."""
    if config.max_minutes <= 0:
        return False
    late = time.monotonic() - began > 60 * config.max_minutes
    if shard.world_size == 1:
        return late
    return step % config.log_every == 0 and distributed.any_rank(late, shard, device)


def restore(run_dir: Path, nets: Networks, opt_ae, opt_critic, shard: Shard) -> tuple[int, dict | None]:
    """Weights, optimiser states and RNG of the run's checkpoint; returns the step it was taken at and the raw
    autoencoder weights a run with a weight average kept (None without one)."""
    state = load_train_state(state_file(run_dir))
    weights_step = weights_metadata(model_file(run_dir)).get("step")
    if weights_step is not None and weights_step != str(state["step"]):  # None: unstamped, older file
        raise RunError(f"{run_dir} holds weights of step {weights_step} but training state of step "
                       f"{state['step']}; start the run again")
    load_weights(nets, model_file(run_dir))
    try:
        opt_ae.load_state_dict(state["opt_ae"])
        opt_critic.load_state_dict(state["opt_critic"])
        torch.set_rng_state(state["torch_rng"])
    except (KeyError, ValueError, RuntimeError, TypeError) as error:
        raise RunError(f"{state_file(run_dir)} does not fit this run's networks ({error}); start a new run") from None
    if shard.is_main:
        trim_metrics(run_dir / METRICS_FILE, int(state["step"]))
    return int(state["step"]), state.get("raw_autoencoder")


def perceptual_net(config: TrainConfig, device: torch.device) -> torch.nn.Module | None:
    """The frozen feature net of the perceptual term (never the evaluator), or None."""
    if config.perceptual_weight <= 0 or config.perceptual_source != "net":
        return None
    from autoencoder.classifier import SHIPPED_PERCEPTUAL, load_perceptual

    net = load_perceptual(config.perceptual_net or SHIPPED_PERCEPTUAL, device)
    return net.to(memory_format=torch.channels_last) if config.channels_last else net


def training_data(config: TrainConfig):
    """(train split, test split, the held-out images of the PSNR log); a class --classes names that the data
    lacks is an error (with no --classes, the run trains on the classes the data has)."""
    train_set = load_cifar10(config.data, "train", config.classes, config.cache_dir, config.download)
    held_out = load_cifar10(config.data, "test", config.classes, config.cache_dir, config.download)
    for name, split in (("train", train_set), ("test", held_out)) if config.classes else ():
        present = set(split.labels.unique().tolist())
        missing = [c for c in config.class_names if CIFAR10_CLASSES.index(c) not in present]
        if missing:
            raise DataNotFoundError(f"--data {config.data} has no {name} images of {', '.join(missing)}; "
                                    f"add them, or leave them out of --classes")
    # A seeded random subset: the split is sorted by class, so its head would be airplanes only.
    eval_order = torch.randperm(len(held_out), generator=torch.Generator().manual_seed(config.seed))
    return train_set, held_out, held_out.images[eval_order[:config.eval_images]]


class Interval:
    """Loss sums since the last log line, on the device; evaluation, grids and checkpoints stay out of its time."""

    def __init__(self, device: torch.device):
        self.started, self.sums, self.steps = time.monotonic(), {}, 0
        self.finite = torch.ones((), dtype=torch.bool, device=device)  # every loss since the last check was finite

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
            self.finite &= v.isfinite()  # read only at log and checkpoint steps
        self.steps += 1

    def restart(self) -> None:
        self.started, self.sums, self.steps = time.monotonic(), {}, 0


def log_record(step: int, interval: Interval, config: TrainConfig, steps_per_epoch: int, nets: Networks,
               eval_images: torch.Tensor, device: torch.device, dtype: torch.dtype, shard: Shard) -> dict | None:
    """The metrics line of ``step`` (rank 0; None on the others): interval means, speed, held-out PSNR."""
    seconds = time.monotonic() - interval.started
    means = distributed.mean_over_ranks({k: v / interval.steps for k, v in interval.sums.items()}, shard)
    if not shard.is_main:
        return None
    record: dict[str, Any] = {"step": step, "epoch": step / steps_per_epoch,
                              "images_per_s": interval.steps * config.batch_size / seconds}
    record.update({k: v.item() for k, v in means.items()})
    record.update(held_out_reconstruction(nets, eval_images, device, dtype))
    return record


def train(config: TrainConfig, resume: bool = False, progress: bool = True, shard: Shard = SINGLE) -> Path:
    """Run (or continue) training as ``config`` says; returns the run folder.

    ``shard``: this process's place in a torchrun job (its process group already joined);
    rank 0 alone writes the run folder.
    """
    run_dir = Path(config.out)
    check_shardable(config, shard)
    if shard.is_main:  # a second training into the same folder is refused, not mixed in
        check_writable(run_dir)
        lock_folder(run_dir)
    try:
        return train_locked(config, run_dir, resume, progress, shard)
    finally:
        if shard.is_main:
            release_folder(run_dir)


def train_locked(config: TrainConfig, run_dir: Path, resume: bool, progress: bool, shard: Shard) -> Path:
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device, shard.local_rank)
    dtype = resolve_precision(config.precision, device)
    torch.manual_seed(config.seed)
    nets = build_networks(config).to(device)
    if config.channels_last:
        nets = nets.to(memory_format=torch.channels_last)
    opt_ae, opt_critic = make_optimisers(nets, config, device)
    if shard.is_main and run_dir.is_dir():
        clean_run_folder(run_dir)  # temporary files and unfinished checkpoints of a killed run
    if config.init_from and not resume:
        fresh = load_start_weights(nets, config.init_from)
        if shard.is_main:
            print(f"started from {config.init_from}'s weights" + (f"; fresh: {', '.join(fresh)}" if fresh else ""),
                  file=sys.stderr)
    if not config.train_encoder:  # kept as loaded: no gradients, so DDP waits for none
        for part in (nets.encoder, nets.class_head):
            if part is not None:
                part.requires_grad_(False)
    start, raw = restore(run_dir, nets, opt_ae, opt_critic, shard) if resume else (0, None)
    average = WeightAverage(nets, config.ema) if config.ema > 0 else None  # from the saved average on resume
    if average is not None and resume:
        if raw is None:
            raise RunError(f"{run_dir}'s checkpoint keeps no raw weights for --ema; start a new run")
        average.load_raw(nets, raw)
    perceptual = perceptual_net(config, device)
    # The data is read after the checkpoint (a damaged run is reported before a long decode)
    # and before a new run writes anything (missing data leaves no half-made run folder).
    train_set, held_out, eval_images = training_data(config)
    if config.batch_size > len(train_set.images):  # steps would use fewer images than recorded, and overstate images/s
        raise ConfigError(f"--batch_size {config.batch_size} is more than the {len(train_set.images)} training images "
                          f"of --classes {config.classes or 'all'} at --data {config.data}; give --batch_size "
                          f"{len(train_set.images)} or less")
    if not resume and shard.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    if shard.is_main:  # a resumed run records what it continues with (a longer --steps, the paths it read)
        save_config(config, run_dir / CONFIG_FILE)
    sampler = BatchSampler(train_set.images.to(device), config.batch_size, config.seed, shard,
                           train_set.labels.to(device) if config.class_weight > 0 else None)
    loop = Loop(config, run_dir, nets, average, distributed.replicate(nets, shard, device), opt_ae, opt_critic, sampler,
                perceptual, eval_images, choose_sample_inputs(held_out, config, config.seed), device, dtype, shard)
    loop.run(start, progress)
    distributed.barrier(shard)  # the run folder is complete when train returns on any rank
    return run_dir


@dataclass
class Loop:
    """The training loop's parts; ``run`` is the loop: for each step (1) critics and (2) autoencoder
    (``train_step``), then log, sample and checkpoint."""
    config: TrainConfig
    run_dir: Path
    nets: Networks
    average: WeightAverage | None  # the moving average of the autoencoder's weights (--ema), or None
    step_nets: Any  # the nets, or their DDP replicas under torchrun
    opt_ae: torch.optim.Optimizer
    opt_critic: torch.optim.Optimizer
    sampler: BatchSampler
    perceptual: torch.nn.Module | None
    eval_images: torch.Tensor
    sample_inputs: Any
    device: torch.device
    dtype: torch.dtype
    shard: Shard

    def run(self, start: int, progress: bool) -> None:
        config, shard = self.config, self.shard
        began, interval, step = time.monotonic(), Interval(self.device), start
        bar = tqdm(total=config.steps, initial=start, disable=not (progress and shard.is_main), dynamic_ncols=True,
                   desc=f"train {self.run_dir.name}")
        metrics_file = open(self.run_dir / METRICS_FILE, "a") if shard.is_main else contextlib.nullcontext()
        with metrics_file:
            while step < config.steps:
                set_learning_rates(self.opt_ae, self.opt_critic, step, config)
                labels = self.sampler.batch_labels(step) if config.class_weight > 0 else None
                interval.add(train_step(self.step_nets, self.sampler.batch(step), config,
                                        step_generator(config.seed, step, self.device), self.opt_ae, self.opt_critic,
                                        self.device, self.dtype, shard, self.perceptual, labels))
                step += 1
                if self.average is not None:
                    self.average.update(self.nets, step)
                bar.update(1)
                stop = out_of_time(began, step, config, shard, self.device)
                self.after_step(step, interval, step == config.steps or stop, metrics_file, bar, began)
                if stop:
                    if shard.is_main:
                        print(f"stopped at step {step}: --max_minutes {config.max_minutes} reached; "
                              f"continue with --resume", file=sys.stderr)
                    break
        bar.close()

    def after_step(self, step: int, interval: Interval, last: bool, metrics_file, bar, began: float) -> None:
        """Check the losses, log, sample and checkpoint when ``step`` is due for each."""
        config, shard = self.config, self.shard
        if step % config.log_every == 0 or step % config.checkpoint_every == 0 or last:
            if distributed.any_rank(not bool(interval.finite), shard, self.device):
                raise TrainingDiverged(
                    f"training diverged: a loss became NaN or infinite before step {step}; nothing more "
                    f"was saved, {self.run_dir} keeps its last good checkpoint. Lower --lr or the loss weights "
                    f"and start a new run")
        if step % config.log_every == 0 or last:
            with averaged(self.average, self.nets):  # what the run saves is what it measures
                record = log_record(step, interval, config, self.sampler.steps_per_epoch, self.nets,
                                    self.eval_images, self.device, self.dtype, shard)
            if record is not None:
                record["elapsed_s"] = time.monotonic() - began
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()
                bar.set_postfix({"psnr": f"{record['eval/psnr']:.2f}", "recon": f"{record['loss/recon']:.4f}",
                                 "img/s": f"{record['images_per_s']:.0f}"})
            interval.sums, interval.steps = {}, 0
        if shard.is_main and (step % config.sample_every == 0 or last):
            with averaged(self.average, self.nets):
                save_picture(render_grid(self.nets, self.sample_inputs, self.device),
                             self.run_dir / "samples" / f"step_{step:06d}.png", scale=2)
        if shard.is_main and (step % config.checkpoint_every == 0 or last):
            save_checkpoint(self.run_dir, self.nets, self.opt_ae, self.opt_critic, step, self.average)
        if interval.steps == 0:  # evaluation, grids and checkpoints stay out of images_per_s
            interval.restart()


def config_for(preset: str, resume: bool, flags: dict[str, Any]) -> TrainConfig:
    """The config of a new run (preset, by default cpu, + flags) or of the run being resumed (+ allowed flags; a
    --preset other than the run's is refused)."""
    if not resume:
        preset = preset or "cpu"
        config = make_config(preset, **flags)
        if not config.out:
            config.out = f"outputs/runs/{preset}-{time.strftime('%Y%m%d-%H%M%S')}"
        if not config.schedule_steps:
            config.schedule_steps = config.steps
        run_dir = Path(config.out)
        if run_dir.is_symlink() or (run_dir.exists() and not run_dir.is_dir()):
            refuse_foreign_folder(run_dir, RUN_FILES, "a run folder")  # a link or a file, said as such
        if has_checkpoint(run_dir):
            raise ConfigError(f"{run_dir} already holds a run; continue it with --resume, "
                              f"or pass a new --out")
        if config.init_from:  # a start run that does not fit is refused before the run folder is named
            load_start_weights(build_networks(config), config.init_from)
        refuse_foreign_folder(run_dir, RUN_FILES, "a run folder")  # hidden names count: a .git is the user's
        return config
    if not flags.get("out"):
        raise ConfigError("--resume needs --out RUN_FOLDER, the run to continue")
    run_dir = Path(flags["out"])
    if run_dir.is_symlink():  # the run in its own folder only: never one a link leads to
        refuse_foreign_folder(run_dir, RUN_FILES, "a run folder")
    if not (run_dir / CONFIG_FILE).exists() or not has_checkpoint(run_dir):
        raise RunError(f"{run_dir} has no checkpoint to resume ({CONFIG_FILE} and a checkpoint needed); "
                       f"start a new run without --resume")
    try:
        saved = load_train_config(run_dir / CONFIG_FILE)
    except ConfigError as error:
        raise RunError(str(error)) from None
    if not saved.schedule_steps:  # written before schedule_steps existed: its decay spanned its steps
        saved.schedule_steps = saved.steps
    if preset and preset != saved.preset:
        raise ConfigError(f"cannot change --preset when resuming {run_dir}: the run was trained with preset="
                          f"{saved.preset!r}; drop --preset, or start a new run with --preset {preset}")
    kept = {k: v for k, v in vars(saved).items() if k not in ("preset", *PATH_FLAGS)}
    fresh = make_config(saved.preset, **{**kept, **flags})
    changed = sorted(k for k in flags if k != "out" and getattr(fresh, k) != getattr(saved, k)
                     and k not in RESUMABLE_FLAGS)
    if changed:
        raise ConfigError(f"cannot change {', '.join('--' + c for c in changed)} when resuming "
                          f"{run_dir}: the run was trained with " +
                          ", ".join(f"{c}={getattr(saved, c)!r}" for c in changed))
    fresh.out = str(run_dir)
    for name in sorted(k for k in flags if k != "out" and getattr(fresh, k) != getattr(saved, k)):
        print(f"train: resuming {run_dir} with --{name} {getattr(fresh, name)!r} (it was {getattr(saved, name)!r}); "
              f"config.json records the new value")
    return fresh


def main(preset: str = "", resume: bool = False, **flags: Any) -> None:
    """Train a run. Every field of autoencoder.config.TrainConfig is a flag (--latent_dim 64 ...).

    Under torchrun (``torchrun --nproc_per_node=N -m autoencoder.train ...``) each process
    trains one DDP replica on its share of every batch; --batch_size stays the global batch.
    """
    shard = distributed.shard_from_env()

    def body() -> None:
        config = config_for(preset, resume, flags)
        check_shardable(config, shard)
        with distributed.process_group(shard, resolve_device(config.device, shard.local_rank).type):
            config.out = distributed.from_main(config.out, shard)  # one timestamped folder for all ranks
            if shard.is_main:
                print(f"run folder: {config.out}" +  # stdout: stderr holds only an error, as one line
                      (f" ({shard.world_size} processes)" if shard.world_size > 1 else ""), flush=True)
            train(config, resume=resume, shard=shard)

    distributed.end_without_teardown(shard, lambda: run_cli(body, shard.is_main))


if __name__ == "__main__":
    from autoencoder.cli import fire_command

    fire_command(main)
