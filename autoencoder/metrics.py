"""Sample-quality metrics as pure functions of tensors: each answers one of the users' questions.

- psnr, reconstruction: PSNR per image, and MSE and PSNR of reconstructions (images in [-1, 1]);
- pca_reconstruction: the same for PCA with k components, the linear floor to beat;
- frechet_distance: the Frechet distance between Gaussians fitted to two feature sets
  (Heusel et al. 2017, arXiv:1706.08500), here in the project's own evaluator features:
  **not** Inception FID, and not comparable with published FIDs;
- kernel_distance: KID, the unbiased MMD^2 with the cubic polynomial kernel, averaged over
  random subsets (Binkowski et al. 2018, arXiv:1801.01401), same features and caveat;
- recognisability: the evaluator's P(horse), P(winged) = P(bird) + P(airplane) and
  2 * sqrt(P(horse) * P(winged)), which is 1 only when both are present in equal measure
  and 0 when either is absent;
- nearest_distances: distance of each sample to its nearest reference vector (pixels or
  features): a copy of a training image scores 0;
- mean_pairwise_distance: the diversity of a batch;
- laplacian_variance: a blur measure (Pech-Pacheco et al. 2000): variance of the 3x3
  Laplacian of the grey image, lower for blurrier images.

They import nothing from the project: images, features and probabilities come in as tensors.

Example: ``python -c "import torch; from autoencoder.metrics import frechet_distance as f; x=torch.randn(500,8); print(f(x, x))"``
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

WINGED_CLASSES = ("bird", "airplane")


def psnr(x: torch.Tensor, x_rec: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image, for images in [-1, 1] (peak-to-peak 2). -> (B,)"""
    mse = (x_rec.float() - x.float()).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(4.0 / mse.clamp_min(1e-10))


def reconstruction(originals: torch.Tensor, reconstructions: torch.Tensor) -> dict[str, float]:
    """MSE (pixels in [-1, 1]), mean per-image PSNR and PSNR of the mean MSE (dB): the one reconstruction
    metric of the project. originals: (N, 3, H, W) uint8 or float in [-1, 1]; reconstructions: float, same shape."""
    if originals.shape != reconstructions.shape:
        raise ValueError(f"originals {tuple(originals.shape)} and reconstructions "
                         f"{tuple(reconstructions.shape)} must have the same shape")
    x = originals.float() / 127.5 - 1 if originals.dtype == torch.uint8 else originals.float()
    mse = (reconstructions.float() - x).pow(2).flatten(1).mean(1).mean()
    return {"mse": mse.item(), "psnr_db": psnr(x, reconstructions).mean().item(),
            "psnr_of_mean_mse_db": (10 * torch.log10(4 / mse.clamp_min(1e-10))).item()}


def pca_reconstruction(train: torch.Tensor, test: torch.Tensor, components: int, seed: int = 0) -> torch.Tensor:
    """``test`` (N, 3, H, W) in [-1, 1] reconstructed by PCA with ``components`` fitted on ``train``."""
    from sklearn.decomposition import PCA

    pca = PCA(n_components=components, svd_solver="randomized", random_state=seed)
    pca.fit(train.flatten(1).float().numpy())
    rec = pca.inverse_transform(pca.transform(test.flatten(1).float().numpy()))
    return torch.from_numpy(rec).float().view_as(test).clamp(-1, 1)


def _mean_covariance(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    x = features.double().cpu().numpy()
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"features must be (N, D) with N >= 2, got shape {tuple(features.shape)}")
    return x.mean(0), np.cov(x, rowvar=False)


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between Gaussians fitted to (N, D) features.

    The trace of the matrix square root is computed from the eigenvalues of the symmetric
    S_a^(1/2) S_b S_a^(1/2), which are those of S_a S_b and real, so no complex sqrtm is needed.
    """
    if features_a.shape[1] != features_b.shape[1]:
        raise ValueError(f"feature sizes differ: {features_a.shape[1]} and {features_b.shape[1]}")
    mu_a, cov_a = _mean_covariance(features_a)
    mu_b, cov_b = _mean_covariance(features_b)
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(values.clip(min=0))) @ vectors.T
    middle = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace_root = np.sqrt(middle.clip(min=0)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root)


def kernel_distance(features_a: torch.Tensor, features_b: torch.Tensor, subsets: int = 50,
                    subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """KID: mean and standard deviation over ``subsets`` draws of the unbiased MMD^2 with the
    kernel k(x, y) = (x.y / D + 1)^3. Subsets are capped at the smaller set's size."""
    if features_a.shape[1] != features_b.shape[1]:
        raise ValueError(f"feature sizes differ: {features_a.shape[1]} and {features_b.shape[1]}")
    m = min(subset_size, len(features_a), len(features_b))
    if m < 2:
        raise ValueError(f"kernel distance needs at least 2 vectors in each set, got {len(features_a)} "
                         f"and {len(features_b)}")
    a, b = features_a.double().cpu(), features_b.double().cpu()
    dims = a.shape[1]
    generator = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(subsets):
        x = a[torch.randperm(len(a), generator=generator)[:m]]
        y = b[torch.randperm(len(b), generator=generator)[:m]]
        k_xx, k_yy, k_xy = ((p @ q.T / dims + 1) ** 3 for p, q in ((x, x), (y, y), (x, y)))
        off_diagonal = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
        values.append((off_diagonal - 2 * k_xy.mean()).item())
    values = torch.tensor(values)
    return values.mean().item(), (values.std().item() if len(values) > 1 else 0.0)


def recognisability(probabilities: torch.Tensor, class_names: tuple[str, ...], subject: str = "horse",
                    winged: tuple[str, ...] = WINGED_CLASSES) -> dict[str, torch.Tensor]:
    """Per image (N,): P(subject), P(winged) summed over the winged classes, and their combined
    score 2 * sqrt(P(subject) * P(winged)) in [0, 1]. probabilities: (N, K), columns named by ``class_names``."""
    if probabilities.ndim != 2 or probabilities.shape[1] != len(class_names):
        raise ValueError(f"probabilities must be (N, {len(class_names)}), got {tuple(probabilities.shape)}")
    unknown = [c for c in (subject, *winged) if c not in class_names]
    if unknown:
        raise ValueError(f"unknown class(es) {', '.join(unknown)}; known: {', '.join(class_names)}")
    p_subject = probabilities[:, class_names.index(subject)]
    p_winged = probabilities[:, [class_names.index(c) for c in winged]].sum(1)
    return {subject: p_subject, "winged": p_winged, "combined": 2 * (p_subject * p_winged).clamp_min(0).sqrt()}


def _as_float(x: torch.Tensor) -> torch.Tensor:
    """(N, ...) uint8 images or float vectors -> (N, size) float32 (uint8 mapped to [-1, 1])."""
    return x.flatten(1).float().div(127.5).sub(1) if x.dtype == torch.uint8 else x.flatten(1).float()


@torch.no_grad()
def nearest_neighbours(queries: torch.Tensor, reference: torch.Tensor | ShortlistIndex, k: int = 1, chunk: int = 4096,
                       shortlist: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """RMS distances (N, k) to the k nearest reference vectors, nearest first, and their indices (N, k).

    The one nearest-neighbour search of the project. queries (N, ...) and reference (M, ...)
    are flattened to vectors of one size; images may be float in [-1, 1] or uint8 (converted
    chunk by chunk, so a uint8 training set is never held as floats); features are (N, D).
    RMS = L2 / sqrt(size), so pixel distances read as a typical per-pixel difference.

    ``shortlist`` > k: a first pass in bf16 (3x faster on CPUs with native bf16) keeps that many
    candidates per query, whose distances are then computed exactly in fp32; only a true neighbour
    that bf16's rounding (about 1% of a squared distance) pushes out of the shortlist can be missed.
    ``reference`` may be a ``shortlist_index`` made once for many searches of the same set.
    """
    q = _as_float(queries)
    index = reference if isinstance(reference, ShortlistIndex) else None
    reference = index.reference if index is not None else reference
    if q.shape[1] != reference[:1].flatten(1).shape[1]:
        raise ValueError(f"queries have {q.shape[1]} values each, reference {reference[:1].flatten(1).shape[1]}")
    if len(reference) < 1 or k < 1:
        raise ValueError(f"need k >= 1 and a non-empty reference, got k={k} and {len(reference)} vectors")
    if shortlist > k and len(reference) > shortlist:
        return _shortlisted(q, index or shortlist_index(reference, chunk), k, chunk, shortlist)
    best_d = torch.full((len(q), 0), float("inf"))
    best_i = torch.zeros((len(q), 0), dtype=torch.long)
    for start in range(0, len(reference), chunk):
        d = torch.cdist(q, _as_float(reference[start:start + chunk]))  # (N, chunk)
        top = d.topk(min(k, d.shape[1]), largest=False)
        best_d = torch.cat([best_d, top.values], 1)
        best_i = torch.cat([best_i, top.indices + start], 1)
        keep = best_d.topk(min(k, best_d.shape[1]), largest=False)
        best_d, best_i = keep.values, best_i.gather(1, keep.indices)
    return best_d / q.shape[1] ** 0.5, best_i


@dataclass
class ShortlistIndex:
    """A reference set prepared once for many shortlisted searches: bf16 vectors and their squared norms."""
    reference: torch.Tensor  # (M, ...) as given (uint8 images or float vectors): exact distances read it
    low: torch.Tensor  # (M, size) bf16, uint8 images mapped to [-1, 1]
    norms: torch.Tensor  # (M,) fp32 squared norms of the exact vectors

    def __len__(self) -> int:
        return len(self.reference)


@torch.no_grad()
def shortlist_index(reference: torch.Tensor, chunk: int = 4096) -> ShortlistIndex:
    """``reference`` (M, ...) prepared for ``nearest_neighbours(..., shortlist=S)``: convert once, search often."""
    low = torch.empty((len(reference), reference[:1].flatten(1).shape[1]), dtype=torch.bfloat16)
    norms = torch.empty(len(reference))
    for i in range(0, len(reference), 1024):  # in blocks that stay in cache: 4x faster than whole passes
        block = _as_float(reference[i:i + 1024])
        norms[i:i + 1024] = torch.linalg.vector_norm(block, dim=1).square()
        low[i:i + 1024] = block
    return ShortlistIndex(reference, low, norms)


def _shortlisted(q: torch.Tensor, index: ShortlistIndex, k: int, chunk: int, shortlist: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``nearest_neighbours`` by a bf16 shortlist of ``shortlist`` per query, ranked again exactly in fp32."""
    q16 = q.bfloat16()
    best_s = torch.full((len(q), 0), float("inf"))
    best_i = torch.zeros((len(q), 0), dtype=torch.long)
    for start in range(0, len(index), chunk):
        score = index.norms[None, start:start + chunk] - 2 * (q16 @ index.low[start:start + chunk].T).float()
        top = score.topk(min(shortlist, score.shape[1]), largest=False)  # squared distance minus |q|^2
        best_s, best_i = torch.cat([best_s, top.values], 1), torch.cat([best_i, top.indices + start], 1)
        keep = best_s.topk(min(shortlist, best_s.shape[1]), largest=False)
        best_s, best_i = keep.values, best_i.gather(1, keep.indices)
    exact = torch.cat([(_as_float(index.reference[rows.flatten()]).view(*rows.shape, -1) - part[:, None]).pow(2).sum(2)
                       for part, rows in zip(q.split(256), best_i.split(256))])  # (N, S), 256 queries at a time
    keep = exact.topk(k, largest=False)
    return keep.values.sqrt() / q.shape[1] ** 0.5, best_i.gather(1, keep.indices)


def nearest_distances(queries: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance (N,) to the nearest reference vector and its index (N,): ``nearest_neighbours`` with k = 1."""
    distance, index = nearest_neighbours(queries, reference, k=1)
    return distance[:, 0], index[:, 0]


def mean_pairwise_distance(vectors: torch.Tensor) -> float:
    """Mean RMS distance between distinct members of a batch (N, ...): 0 when all are equal."""
    flat = vectors.flatten(1).double()
    n = len(flat)
    if n < 2:
        raise ValueError(f"diversity needs at least 2 samples, got {n}")
    return float(torch.cdist(flat, flat).sum() / (n * (n - 1)) / flat.shape[1] ** 0.5)


LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def laplacian_variance(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) in [-1, 1] -> (N,): variance of the Laplacian of the grey image in [0, 1]."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (N, 3, H, W), got {tuple(images.shape)}")
    grey = (images.float().add(1).div(2) * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    response = F.conv2d(grey, LAPLACIAN.view(1, 1, 3, 3))  # valid region only: no border effects
    return response.flatten(1).var(1)
