"""Concepts in code space: class and cluster densities, and directions learned from the data.

- Clusters: inside each class, a Gaussian mixture on the class's codes reduced by PCA,
  the number of clusters (2 to ``max_clusters``) chosen by BIC (Schwarz 1978). Named
  ``horse:0``, ``horse:1``...; a grid of each cluster's most typical members is written
  to ``clusters/<class>.png`` beside ``clusters.json``.
- Densities: each cluster is a Gaussian in the full code space with a Ledoit-Wolf
  shrunk covariance (Ledoit & Wolf 2004); a class is the mixture of its clusters.
- Directions (unit vectors with a boundary offset, the signed distance of a code being
  ``v.z + offset``), each fitted on train codes and scored on held-out test codes:
  ``wings``: winged (bird, airplane) vs wingless animals (cat, deer, dog, frog, horse),
  by three methods: ``linear`` (the normal of a logistic-regression boundary, as in
  InterFaceGAN, Shen et al. 2020, arXiv:2005.09635), ``meandiff`` (difference of the
  class means) and ``flight`` (linear, positives only the birds that look most like
  airplanes, i.e. birds in flight with spread wings). ``white``: pictures whose
  subject (not the whole frame: ``latent_ops.subject``) is bright and unsaturated vs the rest, made orthogonal to ``wings`` (InterFaceGAN's conditional
  manipulation) so that one edit does not drag the other.
- Strength: a direction's unit step is the distance along it at which
  ``cross_fraction`` of the held-out codes on its negative side cross its boundary.

Pure fitting: codes in, concepts out. Reading and writing a run's concept files is
``latent_ops/run_concepts.py``, which is also the command line.

Example: ``python -m latent_ops.run_concepts --run outputs/runs/cpu-main --data data``
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from autoencoder.cifar10 import CIFAR10_CLASSES
from latent_ops.encode import LatentBank

WINGED = ("bird", "airplane")
WINGLESS = ("cat", "deer", "dog", "frog", "horse")
WING_METHODS = ("linear", "meandiff", "flight")
DEFAULT_WING_METHOD = "linear"
WHY_DEFAULT_WINGS = (
    "linear learns from every winged image; directions.json records, for this run, how well each method "
    "separates held-out codes (held_out_accuracy) and what one unit step does to held-out horse codes "
    "(horse_edit_probe: the class probe's mean P(horse) and P(bird)+P(airplane) after the step), so the "
    "choice can be checked on every run")


@dataclass
class Direction:
    vector: np.ndarray  # (D,) unit vector
    offset: float  # signed distance of z to the boundary: vector.z + offset
    step: float  # calibrated unit step along vector
    method: str
    held_out_accuracy: float  # balanced accuracy of sign(vector.z + offset) on test codes
    train_accuracy: float
    note: str = ""

    def signed_distance(self, codes: np.ndarray) -> np.ndarray:
        return codes @ self.vector + self.offset

    def summary(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "vector"}


@dataclass
class Gaussian:
    mean: np.ndarray  # (D,)
    chol: np.ndarray  # (D, D) lower Cholesky factor of the covariance


@dataclass
class ClassProbe:
    """A linear classifier of CIFAR-10 labels from codes (multinomial logistic regression)."""
    coef: np.ndarray  # (C, D)
    intercept: np.ndarray  # (C,)
    labels: np.ndarray  # (C,) CIFAR-10 labels of the rows
    held_out_accuracy: float

    def probabilities(self, codes: torch.Tensor) -> dict[str, torch.Tensor]:
        """{class name: (N,) probability} for codes (N, D)."""
        logits = codes.float().cpu() @ torch.from_numpy(self.coef).float().T + torch.from_numpy(self.intercept).float()
        p = logits.softmax(1)
        return {CIFAR10_CLASSES[label]: p[:, i] for i, label in enumerate(self.labels.tolist())}


def fit_probe(bank: LatentBank, seed: int = 0, max_codes: int = 20000) -> ClassProbe | None:
    """The class probe, fitted on at most ``max_codes`` train codes and scored on all test codes."""
    labels = np.unique(bank.labels["train"])
    if len(labels) < 2:
        return None
    rows = np.random.default_rng(seed).permutation(len(bank.labels["train"]))[:max_codes]  # time, not accuracy
    coef, intercept, classes = fit_logistic(bank.codes["train"][rows], bank.labels["train"][rows], 0.1, seed)
    scores = bank.codes["test"] @ coef.T + intercept
    predicted = classes[scores.argmax(1)] if len(classes) > 2 else classes[(scores[:, 0] > 0).astype(int)]
    accuracy = float((predicted == bank.labels["test"]).mean())
    if len(labels) == 2:  # sklearn gives one row for two classes: expand to two logits
        coef, intercept = np.concatenate([-coef / 2, coef / 2]), np.r_[-intercept / 2, intercept / 2]
    return ClassProbe(coef.astype(np.float32), intercept.astype(np.float32), classes, accuracy)


@dataclass
class Concepts:
    densities: dict[str, list[tuple[float, Gaussian]]] = field(default_factory=dict)  # name -> mixture
    directions: dict[str, Direction] = field(default_factory=dict)
    probe: ClassProbe | None = None
    horse_edit_probe: dict = field(default_factory=dict)  # per wing method, see horse_edit_probe()
    sources: dict[str, np.ndarray] = field(default_factory=dict)  # named source -> its test-split positions

    @property
    def names(self) -> list[str]:
        return [*self.densities, *self.directions]

    def sample(self, name: str, count: int, rng: np.random.Generator, temperature: float = 1.0) -> np.ndarray:
        """(count, D) codes drawn from a density concept; ``temperature`` scales the spread."""
        mixture = self.densities[name]
        weights = np.array([w for w, _ in mixture])
        parts = rng.choice(len(mixture), size=count, p=weights / weights.sum())
        dim = mixture[0][1].mean.shape[0]
        noise = rng.standard_normal((count, dim))
        out = np.empty((count, dim))
        for k, (_, g) in enumerate(mixture):
            rows = parts == k
            out[rows] = g.mean + temperature * noise[rows] @ g.chol.T
        return out.astype(np.float32)


# --- clusters -------------------------------------------------------------------------------

def fit_clusters(codes: np.ndarray, max_clusters: int = 6, pca_dims: int = 16, seed: int = 0
                 ) -> tuple[np.ndarray, dict]:
    """Cluster assignments (N,) and a record of the BIC search, for one class's codes (N, D).

    The mixture is fitted in a PCA space of ``pca_dims``: in the full space with a few
    thousand codes, BIC's penalty on full covariances would always choose one cluster.
    """
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

    dims = min(pca_dims, codes.shape[1], len(codes) - 1)
    reduced = PCA(n_components=dims, random_state=seed).fit_transform(codes)
    bics, models = {}, {}
    for k in range(2, max(2, min(max_clusters, len(codes) // (dims + 2))) + 1):
        model = GaussianMixture(k, covariance_type="full", random_state=seed, init_params="k-means++",
                                reg_covar=1e-4)
        model.fit(reduced)
        bics[k], models[k] = float(model.bic(reduced)), model
    best = min(bics, key=bics.get)
    assignment = models[best].predict(reduced)
    # Order clusters by size, largest first, so the names are stable and meaningful; a
    # component that no code falls in (possible when codes barely differ) is dropped.
    counts = np.bincount(assignment, minlength=best)
    order = np.argsort(-counts, kind="stable")
    order = order[counts[order] > 0]
    rename = np.full(best, -1, dtype=int)
    rename[order] = np.arange(len(order))
    return rename[assignment], {"chosen": int(len(order)), "chosen_by_bic": best, "bic": bics, "pca_dims": dims}


def fit_gaussian(codes: np.ndarray) -> Gaussian:
    """A Gaussian with Ledoit-Wolf shrunk covariance: well-conditioned even with few members."""
    from sklearn.covariance import LedoitWolf

    lw = LedoitWolf().fit(codes)
    return Gaussian(codes.mean(0), np.linalg.cholesky(lw.covariance_ + 1e-6 * np.eye(codes.shape[1])))


# --- directions -----------------------------------------------------------------------------

def _balanced(y: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import balanced_accuracy_score

    return float(balanced_accuracy_score(y, scores > 0))


def crossing_step(direction_vector: np.ndarray, offset: float, negatives: np.ndarray, fraction: float) -> float:
    """The step along the unit vector at which ``fraction`` of the negative codes have crossed the boundary."""
    needed = np.maximum(0.0, -(negatives @ direction_vector + offset))
    return float(np.quantile(needed, fraction))


def fit_logistic(x: np.ndarray, y: np.ndarray, c: float = 0.1, seed: int = 0, balanced: bool = False
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logistic regression fitted on standardised features, returned in the original code space.

    -> (coef (K, D), intercept (K,), classes (K',)). Standardising makes lbfgs converge in
    a fraction of the iterations; folding the scaling back keeps every prediction the same.
    """
    from sklearn.linear_model import LogisticRegression

    mean, scale = x.mean(0), x.std(0) + 1e-8
    model = LogisticRegression(C=c, max_iter=500, random_state=seed,
                               class_weight="balanced" if balanced else None).fit((x - mean) / scale, y)
    coef = model.coef_ / scale
    return coef, model.intercept_ - coef @ mean, model.classes_


def linear_direction(pos: np.ndarray, neg: np.ndarray, seed: int = 0, c: float = 0.1) -> tuple[np.ndarray, float]:
    """Unit normal and offset of a logistic-regression boundary, positives on the + side."""
    x = np.concatenate([pos, neg])
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    coef, intercept, _ = fit_logistic(x, y, c, seed, balanced=True)
    norm = np.linalg.norm(coef[0])
    return coef[0] / norm, float(intercept[0] / norm)


def meandiff_direction(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, float]:
    """Unit vector from the negative mean to the positive mean; boundary at their midpoint."""
    diff = pos.mean(0) - neg.mean(0)
    vector = diff / np.linalg.norm(diff)
    return vector, float(-vector @ (pos.mean(0) + neg.mean(0)) / 2)


def orthogonal_to(vector: np.ndarray, other: np.ndarray) -> np.ndarray:
    """``vector`` with its component along unit ``other`` removed, renormalised."""
    v = vector - (vector @ other) * other
    return v / np.linalg.norm(v)


def refit_offset(vector: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> float:
    """Offset of the best 1-D boundary along a fixed vector (logistic regression on projections)."""
    from sklearn.linear_model import LogisticRegression

    proj = np.concatenate([pos, neg]) @ vector
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    model = LogisticRegression(class_weight="balanced").fit(proj[:, None] / proj.std(), y)
    return float(model.intercept_[0] / model.coef_[0, 0] * proj.std())


def make_direction(vector, offset, pos_train, neg_train, pos_test, neg_test, method, fraction, note=""):
    def accuracy(pos, neg):
        y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
        return _balanced(y, np.concatenate([pos, neg]) @ vector + offset)
    return Direction(vector.astype(np.float32), offset, crossing_step(vector, offset, neg_test, fraction),
                     method, accuracy(pos_test, neg_test), accuracy(pos_train, neg_train), note)


def airplane_like_birds(bank_codes: np.ndarray, bank_labels: np.ndarray, fit_codes=None, fit_labels=None,
                        quantile: float = 0.75, seed: int = 0) -> np.ndarray:
    """Mask of the birds (among ``bank_codes``) that a bird-vs-airplane classifier finds most airplane-like.

    Fitted on (fit_codes, fit_labels) when given (scoring held-out codes), else scored
    out-of-fold on the bank itself so that no bird is judged by a model that saw it.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    bird, plane = CIFAR10_CLASSES.index("bird"), CIFAR10_CLASSES.index("airplane")
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=500, random_state=seed))
    if fit_codes is None:
        keep = np.isin(bank_labels, [bird, plane])
        p = np.zeros(len(bank_labels))
        p[keep] = cross_val_predict(model, bank_codes[keep], bank_labels[keep] == plane, cv=3,
                                    method="predict_proba")[:, 1]
    else:
        keep = np.isin(fit_labels, [bird, plane])
        p = model.fit(fit_codes[keep], fit_labels[keep] == plane).predict_proba(bank_codes)[:, 1]
    birds = bank_labels == bird
    threshold = np.quantile(p[birds], quantile)
    return birds & (p >= threshold)


def whiteness_labels(brightness: np.ndarray, saturation: np.ndarray, top: float = 0.15) -> np.ndarray:
    """True for pale subjects: the top ``top`` by brightness among all, with below-median saturation.

    brightness, saturation: (N,) in [0, 1], of each picture's subject (``latent_ops.sources.subject_colours``).
    """
    return (brightness >= np.quantile(brightness, 1 - top)) & (saturation <= np.median(saturation))


def fit_directions(bank: LatentBank, white_train: np.ndarray | None, white_test: np.ndarray | None,
                   cross_fraction: float = 0.9, seed: int = 0,
                   flight: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Direction]:
    """``wings_<method>`` for each method, ``wings`` (the default method) and ``white`` (when labels given).

    ``flight``: train and test masks of the birds in flight (the ``bird:flight`` source); without
    them the flight direction's birds are the ones a bird-vs-airplane probe on codes finds airplane-like.
    """
    def split_by(split, classes):
        return bank.codes[split][np.isin(bank.labels[split], [CIFAR10_CLASSES.index(c) for c in classes])]

    out: dict[str, Direction] = {}
    pos_tr, neg_tr, pos_te, neg_te = (split_by(s, c) for s, c in
                                      [("train", WINGED), ("train", WINGLESS), ("test", WINGED), ("test", WINGLESS)])
    if len(pos_tr) and len(neg_tr) and len(pos_te) and len(neg_te):
        args = (pos_tr, neg_tr, pos_te, neg_te)
        out["wings_linear"] = make_direction(*linear_direction(pos_tr, neg_tr, seed), *args, "linear",
                                             cross_fraction, "logistic-regression normal, bird+airplane vs animals")
        out["wings_meandiff"] = make_direction(*meandiff_direction(pos_tr, neg_tr), *args, "meandiff",
                                               cross_fraction, "difference of means, bird+airplane vs animals")
        bird_present = CIFAR10_CLASSES.index("bird") in bank.labels["train"]
        plane_present = CIFAR10_CLASSES.index("airplane") in bank.labels["train"]
        if flight is not None and flight[0].any() and flight[1].any():
            fly_tr, fly_te = bank.codes["train"][flight[0]], bank.codes["test"][flight[1]]
            flight_note = "logistic-regression normal, birds in flight (the bird:flight source) vs animals"
        elif bird_present and plane_present:
            fly_tr = bank.codes["train"][airplane_like_birds(bank.codes["train"], bank.labels["train"], seed=seed)]
            fly_te = bank.codes["test"][airplane_like_birds(bank.codes["test"], bank.labels["test"],
                                                            bank.codes["train"], bank.labels["train"], seed=seed)]
            flight_note = "logistic-regression normal, airplane-like birds vs animals"
        else:
            fly_tr = fly_te = None
        if fly_tr is not None and len(fly_tr) and len(fly_te):
            out["wings_flight"] = make_direction(*linear_direction(fly_tr, neg_tr, seed), fly_tr, neg_tr, fly_te,
                                                 neg_te, "flight", cross_fraction, flight_note)
        out["wings"] = out[f"wings_{DEFAULT_WING_METHOD}"]
    white = white_direction(bank, white_train, white_test, out["wings"].vector if "wings" in out else None,
                            cross_fraction, seed)
    if white is not None:
        out["white"] = white
    return out


def white_direction(bank: LatentBank, white_train: np.ndarray | None, white_test: np.ndarray | None,
                    wings: np.ndarray | None, cross_fraction: float = 0.9, seed: int = 0) -> Direction | None:
    """``white``: the logistic-regression normal of the pale-subject codes (masks over the bank's splits) against
    the rest, made orthogonal to ``wings`` when given; None without members in both splits."""
    if white_train is None or not white_train.any() or white_test is None or not white_test.any():
        return None
    pos_tr, neg_tr = bank.codes["train"][white_train], bank.codes["train"][~white_train]
    pos_te, neg_te = bank.codes["test"][white_test], bank.codes["test"][~white_test]
    vector, _ = linear_direction(pos_tr, neg_tr, seed)
    note = "logistic-regression normal, pictures with a pale unsaturated subject vs the rest"
    if wings is not None:
        vector = orthogonal_to(vector, wings.astype(np.float64))
        note += ", made orthogonal to wings"
    return make_direction(vector, refit_offset(vector, pos_tr, neg_tr), pos_tr, neg_tr, pos_te, neg_te,
                          "linear", cross_fraction, note)


# --- fitting all, saving, loading -----------------------------------------------------------

def fit_concepts(bank: LatentBank, white_train=None, white_test=None, max_clusters: int = 6,
                 cross_fraction: float = 0.9, seed: int = 0,
                 sources: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> tuple[Concepts, dict]:
    """All concepts of a bank, and the cluster record (per class: BIC search and member indices).

    ``sources``: named source -> (train mask, test mask) over the bank (``latent_ops.sources``);
    each with at least 2 train and 1 test member becomes a concept.
    """
    concepts, record = Concepts(), {}
    codes, labels = bank.codes["train"], bank.labels["train"]
    for label in np.unique(labels):
        name = CIFAR10_CLASSES[label]
        members = np.flatnonzero(labels == label)
        assignment, search = fit_clusters(codes[members], max_clusters, seed=seed)
        mixture = []
        clusters = []
        for k in range(search["chosen"]):
            rows = members[assignment == k]
            gaussian = fit_gaussian(codes[rows])
            concepts.densities[f"{name}:{k}"] = [(1.0, gaussian)]
            mixture.append((len(rows) / len(members), gaussian))
            typical = np.argsort(np.linalg.norm(codes[rows] - gaussian.mean, axis=1))
            clusters.append({"name": f"{name}:{k}", "size": int(len(rows)),
                             "typical_train_indices": bank.indices["train"][rows[typical[:24]]].tolist()})
        concepts.densities[name] = mixture
        record[name] = {"bic_search": search, "clusters": clusters}
    record["_sources"] = {}
    for name, masks in (sources or {}).items():
        fitted = source_concept(bank, *masks)
        if fitted is not None:
            concepts.densities[name], concepts.sources[name], record["_sources"][name] = fitted
    flight = (sources or {}).get("bird:flight")
    concepts.directions = fit_directions(bank, white_train, white_test, cross_fraction, seed, flight)
    concepts.probe = fit_probe(bank, seed)
    concepts.horse_edit_probe = horse_edit_probe(bank, concepts)
    return concepts, record


def source_concept(bank: LatentBank, train_mask: np.ndarray, test_mask: np.ndarray
                   ) -> tuple[list[tuple[float, Gaussian]], np.ndarray, dict] | None:
    """A named source's mixture (one Gaussian of its train codes), its held-out test positions and its record
    entry; None with fewer than 2 train members or no test member."""
    if train_mask.sum() < 2 or not test_mask.any():
        return None
    codes = bank.codes["train"]
    gaussian = fit_gaussian(codes[train_mask])
    typical = np.argsort(np.linalg.norm(codes[train_mask] - gaussian.mean, axis=1))
    entry = {"train_members": int(train_mask.sum()), "test_members": int(test_mask.sum()),
             "typical_train_indices": bank.indices["train"][np.flatnonzero(train_mask)[typical[:24]]].tolist()}
    return [(1.0, gaussian)], np.flatnonzero(test_mask), entry


def horse_edit_probe(bank: LatentBank, concepts: Concepts, subject: str = "horse") -> dict[str, dict[str, float]]:
    """Per wing method: the probe's mean P(subject) and P(winged) of held-out subject codes after one unit step."""
    label = CIFAR10_CLASSES.index(subject)
    codes = bank.codes["test"][bank.labels["test"] == label]
    if concepts.probe is None or not len(codes):
        return {}
    out = {}
    for name, d in concepts.directions.items():
        if not name.startswith("wings_"):
            continue
        p = concepts.probe.probabilities(torch.from_numpy(codes + d.step * d.vector[None, :]))
        winged = sum(p[c] for c in WINGED if c in p)
        out[d.method] = {subject: float(p[subject].mean()) if subject in p else 0.0,
                         "winged": float(winged.mean()) if not isinstance(winged, int) else 0.0}
    return out


def heldout_members(name: str, concepts: Concepts, bank: LatentBank) -> np.ndarray:
    """Positions (in the test split of the bank) of the held-out codes of a class or cluster concept.

    A held-out code belongs to the cluster of its class under which it is most likely.
    """
    if name in concepts.sources:  # a named source: its own members
        return concepts.sources[name]
    class_name, _, cluster = name.partition(":")
    rows = np.flatnonzero(bank.labels["test"] == CIFAR10_CLASSES.index(class_name))
    if not cluster:
        return rows
    count = sum(1 for n in concepts.densities if n.partition(":")[0] == class_name and n.partition(":")[2].isdigit())
    codes = bank.codes["test"][rows].astype(np.float64)
    loglik = np.empty((len(rows), count))
    for k in range(count):
        g = concepts.densities[f"{class_name}:{k}"][0][1]
        white = np.linalg.solve(g.chol, (codes - g.mean).T)  # (D, N): L^-1 (x - mean)
        loglik[:, k] = -0.5 * (white ** 2).sum(0) - np.log(np.diag(g.chol)).sum()
    return rows[loglik.argmax(1) == int(cluster)]
