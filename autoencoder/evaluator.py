"""Train the evaluator classifier from scratch on CIFAR-10's train split, and load it for the metrics.

No pre-trained network is used anywhere: this classifier is the project's own, trained
here on CIFAR-10 alone. Its penultimate layer is the feature space of the sample-quality,
uniqueness and diversity metrics (``latent_ops/metrics.py``); its softmax answers "does
this look like a horse, does it look winged".

Recipe: SGD with Nesterov momentum, a linear warm-up then linear decay of the learning
rate, batch-norm biases at 64x the learning rate, label smoothing 0.2, flips and 2-pixel
translations, bf16 autocast where the CPU or
GPU supports it, and left-right flip test-time augmentation (Page 2018; Jordan 2024, see
``classifier.py``). Each epoch ends with an atomic checkpoint; ``--resume true`` goes on
from the last one. The finished run writes ``evaluator.safetensors`` (fp16), ``config.json``
and ``card.md``; ``--ship DIR`` copies those three where the package finds them.

Example: ``python -m autoencoder.evaluator --data data --out outputs/evaluator/main --ship autoencoder/weights/evaluator``
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from autoencoder.checkpoint import (MODEL_FILE, METRICS_FILE, STATE_FILE, load_train_state, load_weights,
                                    save_train_state, save_weights)
from autoencoder.classifier import EvaluatorNet
from autoencoder.config import CIFAR10_CLASSES, ConfigError, dataclass_from_flags, load_config, save_config
from autoencoder.data import DataNotFoundError, epoch_order, load_cifar10, random_flip, to_float
from autoencoder.hardware import autocast

SHIPPED = Path(__file__).parent / "weights" / "evaluator"  # the committed evaluator
WEIGHTS_FILE = "evaluator.safetensors"  # fp16 weights of a finished evaluator
CONFIG_FILE = "config.json"
CARD_FILE = "card.md"
RESULT_FILE = "result.json"


@dataclass
class EvaluatorConfig:
    out: str = "outputs/evaluator/main"  # run folder
    seed: int = 0  # data order, augmentation and initialisation
    data: str = "data"  # folder with CIFAR-10 (torchvision layout or train/<class>/ image folders)
    cache_dir: str = "data/cache"  # where the decoded uint8 tensors are cached
    download: bool = False  # fetch CIFAR-10 with torchvision when the folder has none
    widths: str = "64,256,256"  # channels of the three conv groups
    logit_scale: float = 1 / 9  # the head's logits are multiplied by this
    epochs: int = 12  # passes over the train split
    batch_size: int = 1024  # images per step
    lr: float = 1.3  # peak SGD learning rate (mean loss over the batch)
    bias_lr_scale: float = 64.0  # batch-norm biases learn this much faster (their decay per step is unchanged)
    momentum: float = 0.85  # Nesterov momentum
    weight_decay: float = 1.53e-3  # L2 coefficient; the decay per step is lr * weight_decay
    label_smoothing: float = 0.2  # cross-entropy label smoothing
    warmup: float = 0.2  # fraction of all steps over which the learning rate rises linearly from 0
    translate: int = 2  # random translation in pixels, with reflected borders
    train_images: int = 0  # use only the first N training images (tests); 0: all
    precision: str = "auto"  # auto (bf16 autocast where supported), bf16 or fp32
    channels_last: bool = True  # NHWC memory layout for the convolutions
    device: str = "auto"  # auto (CUDA if present, else CPU), cpu or cuda
    threads: int = 0  # CPU threads for torch; 0 keeps torch's default
    ship: str = ""  # after training, copy weights, config and card into this folder

    @property
    def width_tuple(self) -> tuple[int, int, int]:
        return parse_widths(self.widths)


RESUMABLE_FLAGS = {"data", "cache_dir", "download", "threads", "ship", "out"}


def parse_widths(text: str | tuple) -> tuple[int, int, int]:
    parts = text if isinstance(text, (tuple, list)) else str(text).split(",")
    try:
        widths = tuple(int(p) for p in parts)
    except ValueError:
        widths = ()
    if len(widths) != 3 or min(widths) < 1:
        raise ConfigError(f"--widths takes three positive channel counts like 64,256,256, got {text!r}")
    return widths


def make_evaluator_config(**flags) -> EvaluatorConfig:
    config = dataclass_from_flags(EvaluatorConfig, {}, flags)
    parse_widths(config.widths)
    for name in ("epochs", "batch_size"):
        if getattr(config, name) < 1:
            raise ConfigError(f"--{name} must be at least 1, got {getattr(config, name)}")
    if not 0 <= config.warmup < 1:
        raise ConfigError(f"--warmup is a fraction of the steps in [0, 1), got {config.warmup}")
    if config.precision not in ("auto", "bf16", "fp32"):
        raise ConfigError(f"--precision must be auto, bf16 or fp32, got {config.precision!r}")
    return config


def resolve(config: EvaluatorConfig) -> tuple[torch.device, torch.dtype]:
    """The device and autocast dtype: bf16 wherever the hardware has it, unless fp32 is asked for."""
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but torch sees no CUDA GPU; use --device auto or cpu")
    device = torch.device("cuda" if config.device != "cpu" and torch.cuda.is_available() else "cpu")
    if config.precision == "fp32":
        return device, torch.float32
    supported = (torch.cuda.is_bf16_supported() if device.type == "cuda"
                 else torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if config.precision == "bf16" and not supported:
        raise ConfigError(f"--precision bf16 is not supported on this {device.type}; use auto or fp32")
    return device, torch.bfloat16 if supported else torch.float32


def random_translate(images: torch.Tensor, pixels: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to ``pixels`` in x and y, filling with the reflected border.

    images: (B, C, H, W); the shifts come from ``generator`` so a seed fixes them.
    """
    if pixels == 0:
        return images
    b, _, h, w = images.shape
    padded = F.pad(images.float(), (pixels,) * 4, mode="reflect").to(images.dtype)
    shifts = torch.randint(0, 2 * pixels + 1, (2, b), generator=generator)
    out = torch.empty_like(images)
    for dy in range(2 * pixels + 1):
        for dx in range(2 * pixels + 1):
            chosen = ((shifts[0] == dy) & (shifts[1] == dx)).nonzero().flatten()
            if len(chosen):
                out[chosen] = padded[chosen, :, dy:dy + h, dx:dx + w]
    return out


def learning_rate(step: int, total: int, config: EvaluatorConfig) -> float:
    """Linear warm-up to ``lr`` over the first ``warmup`` of the steps, then linear decay to 0."""
    rise = max(1, round(config.warmup * total))
    if step < rise:
        return config.lr * (step + 1) / rise
    return config.lr * max(0.0, (total - step) / max(1, total - rise))


class Evaluator:
    """A trained EvaluatorNet with batched, autocast inference on float images in [-1, 1]."""

    def __init__(self, net: EvaluatorNet, device: torch.device, dtype: torch.dtype, batch_size: int = 500):
        self.net, self.device, self.dtype, self.batch_size = net.to(device).eval(), device, dtype, batch_size

    @torch.no_grad()
    def _batched(self, images: torch.Tensor, fn) -> torch.Tensor:
        outs = []
        for start in range(0, len(images), self.batch_size):
            x = images[start:start + self.batch_size]
            x = (to_float(x) if x.dtype == torch.uint8 else x.float()).to(
                self.device, memory_format=torch.channels_last)
            with autocast(self.device, self.dtype):
                outs.append(fn(x).float().cpu())
        return torch.cat(outs) if outs else torch.empty(0)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, 32, 32) uint8 or float [-1, 1] -> (N, feature_dim) penultimate features."""
        return self._batched(images, self.net.features)

    def logits(self, images: torch.Tensor, flip_tta: bool = True) -> torch.Tensor:
        """(N, 10) logits, averaged over the image and its mirror when ``flip_tta``."""
        if flip_tta:
            return self._batched(images, lambda x: (self.net(x) + self.net(x.flip(-1))) / 2)
        return self._batched(images, self.net)

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 10) class probabilities, in CIFAR10_CLASSES order."""
        return self.logits(images).softmax(dim=1)

    def accuracy(self, images: torch.Tensor, labels: torch.Tensor, flip_tta: bool = True) -> float:
        return (self.logits(images, flip_tta).argmax(1) == labels).float().mean().item()


def machine_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name and core count, for the records."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} CPU, {os.cpu_count()} cores"


def build_net(config: EvaluatorConfig) -> EvaluatorNet:
    return EvaluatorNet(config.width_tuple, logit_scale=config.logit_scale)


def load_evaluator(folder: str | Path = SHIPPED, device: str = "cpu", precision: str = "auto") -> Evaluator:
    """The evaluator in ``folder`` (the committed one by default), ready for inference."""
    folder = Path(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.exists():
        weights = folder / MODEL_FILE  # an unfinished run folder: its last epoch's checkpoint
    if not (folder / CONFIG_FILE).exists() or not weights.exists():
        raise FileNotFoundError(f"no evaluator in {folder} (needs {CONFIG_FILE} and {WEIGHTS_FILE}); "
                                f"train one with python -m autoencoder.evaluator --data data --out {folder}")
    config = load_config(folder / CONFIG_FILE, EvaluatorConfig)
    config = dataclasses.replace(config, device=device, precision=precision)
    net = build_net(config)
    load_weights(net, weights)
    dev, dtype = resolve(config)
    return Evaluator(net.to(memory_format=torch.channels_last), dev, dtype)


def _parameter_groups(net: EvaluatorNet, config: EvaluatorConfig) -> list[dict]:
    """Batch-norm biases at ``bias_lr_scale`` times the learning rate, with their L2 coefficient
    divided by as much so that their decay per step matches the other parameters'."""
    trainable = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    norm_biases = [p for n, p in trainable if ".norm" in n]
    rest = [p for n, p in trainable if ".norm" not in n]
    return [dict(params=rest, weight_decay=config.weight_decay, lr_scale=1.0),
            dict(params=norm_biases, weight_decay=config.weight_decay / config.bias_lr_scale,
                 lr_scale=config.bias_lr_scale)]


def _check_resume(out: Path, config: EvaluatorConfig) -> None:
    saved = load_config(out / CONFIG_FILE, EvaluatorConfig)
    changed = [f.name for f in dataclasses.fields(EvaluatorConfig)
               if f.name not in RESUMABLE_FLAGS and getattr(saved, f.name) != getattr(config, f.name)]
    if changed:
        raise ConfigError(f"--resume true with different {', '.join('--' + c for c in changed)} than the run "
                          f"in {out} was started with; drop those flags or start a new --out")


def write_card(out: Path, config: EvaluatorConfig, result: dict) -> None:
    curve = "\n".join(f"| {r['epoch']} | {r['train_loss']:.3f} | {100 * r['test_accuracy']:.2f} | "
                      f"{r['seconds']:.0f} |" for r in result["epochs"])
    card = f"""# Evaluator card

A CIFAR-10 classifier trained **from scratch** by this project (`autoencoder/evaluator.py`,
network in `autoencoder/classifier.py`). No pre-trained weights and no data other than
CIFAR-10's train split went into it. It is the feature space of the sample-quality metrics:
its Frechet and kernel distances are **not** Inception FID/KID numbers and cannot be compared
with published ones.

- Test accuracy (10,000 test images, flip TTA): **{100 * result['test_accuracy']:.2f}%**
  (without TTA: {100 * result['test_accuracy_no_tta']:.2f}%)
- Training time: {result['train_seconds'] / 60:.1f} min of training steps,
  {result['wall_seconds'] / 60:.1f} min wall including per-epoch test passes, on
  {result['machine']} ({result['threads']} threads), {result['precision']} autocast
- Parameters: {result['parameters']:,}; shipped in fp16 ({WEIGHTS_FILE}); features: {result['feature_dim']}-d
- Command: `{result['command']}`
- Recipe: SGD Nesterov (momentum {config.momentum}), peak lr {config.lr} (batch-norm biases
  x{config.bias_lr_scale:g}), batch {config.batch_size},
  {config.epochs} epochs, warm-up {config.warmup:.0%} then linear decay, weight decay
  {config.weight_decay}, label smoothing {config.label_smoothing}, flips and {config.translate}-pixel
  translations, frozen 2x2 patch-whitening stem, batch-norm scales fixed at 1, dirac-initialised
  convolutions. Seed {config.seed}.

| epoch | train loss | test acc. % (no TTA) | seconds |
|---|---|---|---|
{curve}
"""
    (out / CARD_FILE).write_text(card)


def train_evaluator(config: EvaluatorConfig, resume: bool = False, progress: bool = True) -> dict:
    """Train (or resume) the evaluator in ``config.out``; returns the result record."""
    out = Path(config.out)
    if config.threads:
        torch.set_num_threads(config.threads)
    device, dtype = resolve(config)
    if resume and not (out / STATE_FILE).exists():
        raise ConfigError(f"--resume true but {out / STATE_FILE} does not exist; start without --resume")
    if not resume and (out / STATE_FILE).exists():
        raise ConfigError(f"{out} already holds an evaluator run; pass --resume true to go on, "
                          f"or choose another --out")
    if resume:
        _check_resume(out, config)
    train = load_cifar10(config.data, "train", cache_dir=config.cache_dir, download=config.download)
    test = load_cifar10(config.data, "test", cache_dir=config.cache_dir)
    images, labels = train.images, train.labels
    if config.train_images:
        images, labels = images[:config.train_images], labels[:config.train_images]

    torch.manual_seed(config.seed)
    net = build_net(config)
    fit = torch.Generator().manual_seed(config.seed)
    net.set_whitening(to_float(images[torch.randperm(len(images), generator=fit)[:5000]]))
    net = net.to(device, memory_format=torch.channels_last)
    optimiser = torch.optim.SGD(_parameter_groups(net, config), lr=config.lr,
                                momentum=config.momentum, nesterov=True)
    steps_per_epoch = max(1, len(images) // config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    start_epoch, train_seconds, wall_seconds, history = 0, 0.0, 0.0, []
    out.mkdir(parents=True, exist_ok=True)
    if resume:
        state = load_train_state(out / STATE_FILE)
        load_weights(net, out / MODEL_FILE)
        optimiser.load_state_dict(state["optimiser"])
        start_epoch, history = state["epoch"], state["history"]
        train_seconds, wall_seconds = state["train_seconds"], state["wall_seconds"]
    else:
        save_config(config, out / CONFIG_FILE)
        (out / METRICS_FILE).write_text("")
    evaluator = Evaluator(net, device, dtype)

    for epoch in range(start_epoch, config.epochs):
        net.train()
        order = epoch_order(config.seed, epoch, len(images))
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
        epoch_start, losses = time.time(), []
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress,
                   file=sys.stderr)
        for i in bar:
            for group in optimiser.param_groups:
                group["lr"] = group["lr_scale"] * learning_rate(epoch * steps_per_epoch + i, total_steps, config)
            index = order[i * config.batch_size:(i + 1) * config.batch_size]
            if len(index) < config.batch_size:  # fewer images than a batch (tests): wrap around
                index = torch.arange(i * config.batch_size, (i + 1) * config.batch_size) % len(images)
            batch = random_translate(random_flip(images[index], generator), config.translate, generator)
            x = to_float(batch).to(device, memory_format=torch.channels_last)  # (B, 3, 32, 32)
            y = labels[index].to(device)
            with autocast(device, dtype):
                loss = F.cross_entropy(net(x).float(), y, label_smoothing=config.label_smoothing)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            losses.append(loss.detach())
        train_seconds += time.time() - epoch_start
        net.eval()
        record = dict(epoch=epoch + 1, train_loss=torch.stack(losses).mean().item(),
                      test_accuracy=evaluator.accuracy(test.images, test.labels, flip_tta=False),
                      seconds=train_seconds)
        history.append(record)
        save_weights(net, out / MODEL_FILE, metadata={"epoch": str(epoch + 1)})
        wall_seconds += time.time() - epoch_start
        save_train_state(dict(optimiser=optimiser.state_dict(), epoch=epoch + 1, train_seconds=train_seconds,
                              wall_seconds=wall_seconds, history=history), out / STATE_FILE)
        # the log line follows the checkpoint, so a resumed run never logs an epoch twice
        with open(out / METRICS_FILE, "a") as f:
            f.write(json.dumps(record) + "\n")
        if progress:
            print(f"epoch {epoch + 1}: loss {record['train_loss']:.3f}, test accuracy "
                  f"{100 * record['test_accuracy']:.2f}% (no TTA), {train_seconds:.0f} s of training", flush=True)

    net.eval()
    final_start = time.time()
    predictions = evaluator.logits(test.images, flip_tta=True).argmax(1)  # one pass: overall and per class
    result = dict(
        test_accuracy=(predictions == test.labels).float().mean().item(),
        test_accuracy_no_tta=evaluator.accuracy(test.images, test.labels, flip_tta=False),
        per_class_accuracy={}, train_seconds=train_seconds,
        epochs=history, parameters=sum(p.numel() for p in net.parameters()), feature_dim=net.feature_dim,
        machine=machine_name(device), threads=torch.get_num_threads(),
        precision=str(dtype).replace("torch.", ""),
        command="python -m autoencoder.evaluator " + " ".join(
            f"--{k} {v}" for k, v in dataclasses.asdict(config).items()
            if v != getattr(EvaluatorConfig, k) and k not in ("ship",)),
    )
    for label, name in enumerate(CIFAR10_CLASSES):
        mine = test.labels == label
        if mine.any():
            result["per_class_accuracy"][name] = (predictions[mine] == label).float().mean().item()
    result["wall_seconds"] = wall_seconds + time.time() - final_start
    save_weights(net, out / WEIGHTS_FILE, dtype=torch.float16,
                 metadata={"test_accuracy": f"{result['test_accuracy']:.4f}"})
    (out / RESULT_FILE).write_text(json.dumps(result, indent=2) + "\n")
    write_card(out, config, result)
    if config.ship:
        ship = Path(config.ship)
        ship.mkdir(parents=True, exist_ok=True)
        for name in (WEIGHTS_FILE, CONFIG_FILE, CARD_FILE, RESULT_FILE):
            shutil.copyfile(out / name, ship / name)
    return result


def main(resume: bool = False, **flags) -> None:
    """Train the evaluator; prints test accuracy with and without flip TTA."""
    try:
        config = make_evaluator_config(**flags)
        result = train_evaluator(config, resume=resume)
    except (ConfigError, DataNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2)
    print(f"test accuracy {100 * result['test_accuracy']:.2f}% with flip TTA "
          f"({100 * result['test_accuracy_no_tta']:.2f}% without); "
          f"{result['train_seconds'] / 60:.1f} min of training; card: {Path(config.out) / CARD_FILE}")


if __name__ == "__main__":
    import fire

    fire.Fire(main)
