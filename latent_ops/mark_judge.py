"""A judge learned from a person's by-eye marks: how likely a composed image is to be marked (e.g. "a winged horse").

Blind counts (``latent_ops.blind_count``) leave, image by image, what a person marked. Read as labels they train a
small judge of what the person looks for, a reward model learned from human judgements (Christiano et al. 2017,
arXiv:1706.03741), used here only to order candidates, as reward-ranked selection does (Lee et al. 2023,
arXiv:2302.12192). ``latent_ops.learn_marks`` fits it; ``compose --mark_gate`` uses it. A run holds one judge per
expression whose composes were counted, in ``RUN/marks/<expression>/`` (what is marked differs: a winged horse for
``pegasus``, a pale wing for ``pegasus_white``).

- **What it sees** (``mark_features``): the perceptual net's features and its class activation maps (3 x 3 per class,
  Zhou et al. 2016), the rising mass above the back (``latent_ops.subject``), and the picture's layout at 8 x 8: the
  silhouette against the border's colour and the grey level. The evaluator is never read: it only measures.
- **What it is**: a logistic regression on the standardised features, fitted by scikit-learn with L2 strength
  ``1 / C``. It is saved as numbers only (``judge.npz`` without pickles, ``judge.json``), and scores an image as the
  mean of its reading and that of the image's mirror (a mark does not depend on which way the horse faces).
- **The judge of features** (``judge-features.npz``, optional): the same regression on the perceptual net's features
  alone, which the run's feature proxy predicts from codes, so that ``compose --repel_reading marks`` can guide draws
  up its reading while they are drawn (guidance by a reward model learned from human judgements, as in Christiano et
  al. 2017 and, for diffusion, Lee et al. 2023, arXiv:2302.12192; ``marks_reading``).

Example: ``python -c "from latent_ops.mark_judge import load_judge; print(load_judge('models/pegasus-cifar10', 'pegasus').what)"``
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import re

import numpy as np
import torch
import torch.nn.functional as F

from autoencoder.atomic import replace_atomically, write_json
from autoencoder.cli import ConfigError, read_json
from autoencoder.data import to_float
from autoencoder.run_folder import RunError
from latent_ops.subject import rising_mass, silhouette

JUDGE_FOLDER, WEIGHTS_FILE, RECORD_FILE = "marks", "judge.npz", "judge.json"
FEATURES_FILE = "judge-features.npz"  # the judge of the perceptual net's features alone (--repel_reading marks)
LAYOUT = 8  # the silhouette and grey level are read on a LAYOUT x LAYOUT grid
JUDGED_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")  # an expression that can name its judge's folder


@dataclass
class MarkJudge:
    mean: np.ndarray  # (F,) the features' means over the marked images
    scale: np.ndarray  # (F,) and their spreads
    weights: np.ndarray  # (F,) the logistic regression's coefficients on the standardised features
    bias: float
    what: str  # what the person marked, e.g. "a winged horse (strict rule)"
    expression: str  # the expression whose composes were counted: the judge knows only it

    def probability(self, features: np.ndarray) -> np.ndarray:
        """(N,) the probability that each image (N, F) of features is marked."""
        if features.ndim != 2 or features.shape[1] != len(self.weights):
            raise RunError(f"the judge of marks for {self.expression!r} reads {len(self.weights)} features, but these "
                           f"images give {features.shape[-1]} (was the perceptual net replaced?); fit it again with "
                           f"python -m latent_ops.learn_marks")
        logits = ((features - self.mean) / self.scale) @ self.weights + self.bias
        return 0.5 * (1.0 + np.tanh(0.5 * logits))  # the logistic function, without overflow


def perceptual_reading(perceptual: torch.nn.Module, x: torch.Tensor, batch_size: int = 512
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """The perceptual net's features (N, C) and class activation maps (N, 10, 3, 3) of images x in [-1, 1], from one
    pass (its features are the maximum of its last maps, ``EvaluatorNet.features``; the maps as in
    ``latent_ops.sources.classifier_views``)."""
    device = next(perceptual.parameters()).device
    features, maps = [], []
    for part in x.split(batch_size):
        last = perceptual.feature_maps(part.to(device))[-1]  # (B, C, 3, 3)
        features.append(torch.amax(last, dim=(2, 3)).float().cpu())
        maps.append(torch.einsum("kc,bchw->bkhw", perceptual.head.weight, last).float().cpu())
    return torch.cat(features), torch.cat(maps)


def mark_features(images: torch.Tensor, perceptual: torch.nn.Module, outline: torch.Tensor | None = None
                  ) -> np.ndarray:
    """(N, F) float64 features of uint8 images (N, 3, 32, 32): the perceptual net's features, its class activation
    maps, the rising mass, and the silhouette and grey level on a LAYOUT x LAYOUT grid. ``outline``: the images'
    ``silhouette`` when already computed."""
    with torch.no_grad():
        x = to_float(images)
        features, maps = perceptual_reading(perceptual, x)
        outline = silhouette(x) if outline is None else outline
        layout = [F.adaptive_avg_pool2d(part[:, None], LAYOUT).flatten(1) for part in (outline, x.mean(1))]
        parts = [features, maps.flatten(1), rising_mass(x, outline)[:, None].float(), *layout]
    return torch.cat(parts, 1).double().numpy()


def mark_features_both_ways(images: torch.Tensor, perceptual: torch.nn.Module) -> tuple[np.ndarray, np.ndarray]:
    """The features of uint8 images and of their mirrors. The silhouette is read once: the border's median colour
    does not change when a picture is mirrored, so the mirror's silhouette is the silhouette mirrored."""
    outline = silhouette(to_float(images))
    return mark_features(images, perceptual, outline), mark_features(images.flip(3), perceptual, outline.flip(2))


def judge_images(judge: MarkJudge, images: torch.Tensor, perceptual: torch.nn.Module) -> torch.Tensor:
    """(N,) the judge's probability that each uint8 image is marked, averaged over the image and its mirror."""
    plain, mirrored = mark_features_both_ways(images, perceptual)
    return torch.from_numpy((judge.probability(plain) + judge.probability(mirrored)) / 2).float()


def fit_judge(features: np.ndarray, marked: np.ndarray, strength: float, what: str, expression: str) -> MarkJudge:
    """The judge fitted on features (N, F) and marks (N,) bool, with L2 strength 1 / ``strength`` (scikit-learn's C)."""
    from sklearn.linear_model import LogisticRegression

    if len(set(marked.tolist())) < 2:
        raise ValueError(f"the marks are all {bool(marked[0])}: a judge needs marked and unmarked images")
    mean, scale = features.mean(0), features.std(0) + 1e-6
    model = LogisticRegression(C=strength, max_iter=5000).fit((features - mean) / scale, marked.astype(int))
    return MarkJudge(mean, scale, model.coef_[0].astype(np.float64), float(model.intercept_[0]), what, expression)


def save_judge(judge: MarkJudge, folder: Path, record: dict, weights_file: str = WEIGHTS_FILE) -> None:
    """``weights_file`` (judge.npz, or FEATURES_FILE for the judge of features; numbers only) and judge.json (what it
    judges, and ``record``) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"mean": judge.mean, "scale": judge.scale, "weights": judge.weights, "bias": np.array(judge.bias)}
    replace_atomically(lambda path: np.savez(path, **arrays), folder / weights_file)
    write_json({"what": judge.what, "expression": judge.expression, **record}, folder / RECORD_FILE)


def judge_folder(run: str | Path, expression: str) -> Path:
    """RUN/marks/<expression>: where the judge of an expression's marks lives (refused for a name that cannot be a
    folder's)."""
    if not names_a_folder(expression):
        raise ConfigError(f"a judge of marks is kept under the name of its expression, and {expression!r} cannot name "
                          f"a folder; judge a plain name (a learned concept such as pegasus)")
    return Path(run) / JUDGE_FOLDER / expression


def has_feature_judge(run: str | Path, expression: str) -> bool:
    """Whether the run has a judge of features (FEATURES_FILE) for ``expression`` (False for any expression that
    cannot name a judge's folder)."""
    return names_a_folder(expression) and (judge_folder(run, expression) / FEATURES_FILE).exists()


def names_a_folder(expression: str) -> bool:
    """Whether an expression can name its judge's folder (a plain name such as pegasus)."""
    return JUDGED_NAME.fullmatch(expression) is not None and ".." not in expression


def judged_expressions(run: str | Path) -> list[str]:
    """The expressions the run has a judge of marks for."""
    root = Path(run) / JUDGE_FOLDER
    return sorted(p.name for p in root.iterdir() if (p / WEIGHTS_FILE).exists()) if root.is_dir() else []


def load_judge(run: str | Path, expression: str, weights_file: str = WEIGHTS_FILE) -> MarkJudge:
    """The run's judge of ``expression``'s marks (RUN/marks/<expression>/; ``weights_file`` FEATURES_FILE: its judge
    of features), refused in one line when missing or damaged."""
    folder = judge_folder(run, expression)
    fix = f"fit one with python -m latent_ops.learn_marks --run {run}"
    if not (folder / weights_file).exists():
        have = ", ".join(judged_expressions(run)) or "none"
        raise RunError(f"{run} has no {'judge of features' if weights_file == FEATURES_FILE else 'judge'} of by-eye "
                       f"marks for {expression!r} ({folder / weights_file} is missing; judged: {have}); {fix}")
    record = read_json(folder / RECORD_FILE, "judge record")
    try:
        with np.load(folder / weights_file, allow_pickle=False) as arrays:
            mean, scale, weights = (np.asarray(arrays[k], dtype=np.float64) for k in ("mean", "scale", "weights"))
            bias = float(arrays["bias"])
        if not mean.shape == scale.shape == weights.shape or mean.ndim != 1:
            raise ValueError(f"mean, scale and weights have shapes {mean.shape}, {scale.shape}, {weights.shape}")
        return MarkJudge(mean, scale, weights, bias, str(record["what"]), str(record["expression"]))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise RunError(f"{folder / weights_file} is damaged ({error}); {fix}") from None


def marks_reading(judge: MarkJudge) -> Callable[[torch.Tensor], torch.Tensor]:
    """A differentiable reading of (B, F) perceptual features to (B,) log probabilities that each picture is marked,
    by a judge of features (FEATURES_FILE)."""
    mean, scale, weights = (torch.tensor(a, dtype=torch.float32) for a in (judge.mean, judge.scale, judge.weights))

    def read(features: torch.Tensor) -> torch.Tensor:
        if features.shape[-1] != len(weights):
            raise RunError(f"the judge of features for {judge.expression!r} reads {len(weights)} features, but these "
                           f"are {features.shape[-1]}; fit it again with python -m latent_ops.learn_marks")
        f = features.float()
        logits = ((f - mean.to(f.device)) / scale.to(f.device)) @ weights.to(f.device) + judge.bias
        return F.logsigmoid(logits)
    return read
