"""Sample-quality metrics computed from features (N x D) or class probabilities (N x C).

Everything here is a pure function of tensors or arrays; the feature networks that produce
the inputs live elsewhere. Statistics that must be exact (means, covariances, the Frechet
distance, kernel sums) are computed in float64; nearest-neighbour searches run in the
inputs' own floating dtype (at least float32) because they only compare distances.

References:
    FID: Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a
        Local Nash Equilibrium" (arXiv:1706.08500).
    KID: Binkowski et al. 2018, "Demystifying MMD GANs" (arXiv:1801.01401).
    IS: Salimans et al. 2016, "Improved Techniques for Training GANs" (arXiv:1606.03498).
    Precision/recall: Kynkaanniemi et al. 2019, "Improved Precision and Recall Metric for
        Assessing Generative Models" (arXiv:1904.06991).
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Union

import numpy as np
import torch

from dgmrun.errors import DgmrunError

ArrayLike = Union[torch.Tensor, np.ndarray]

# Rows of the query set per torch.cdist call in precision_recall: a 1024 x 10,000 float32
# distance block is 40 MB, small enough for any machine and large enough for fast matmuls.
_CDIST_CHUNK = 1024


def _as_tensor(x: ArrayLike, dtype: torch.dtype | None = None) -> torch.Tensor:
    t = x.detach().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return t.to(dtype) if dtype is not None else t


def _as_float64(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().to(torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def _check_features(name: str, x: torch.Tensor) -> None:
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty N x D matrix, got shape {tuple(x.shape)}")


# --------------------------------------------------------------------------------------- FID


class GaussianStats:
    """Streaming mean and covariance of feature vectors, for FID (Heusel et al. 2017).

    Batches are merged with the parallel update of Chan et al. (1979): each batch's own mean
    and centred scatter matrix are combined with the running ones, which is numerically
    stable (no ``E[xx^T] - mu mu^T`` cancellation) and never holds more than one batch.
    All accumulators are float64 NumPy arrays.

    The saved ``.npz`` uses the ``mu``/``sigma`` keys of pytorch-fid statistics files, plus
    ``count`` so that a loaded accumulator can keep being updated.
    """

    def __init__(self, dim: int | None = None) -> None:
        self.count = 0
        self._mean: np.ndarray | None = None if dim is None else np.zeros(dim)
        self._scatter: np.ndarray | None = None if dim is None else np.zeros((dim, dim))

    def update(self, feats: ArrayLike) -> "GaussianStats":
        """Add a batch of features (N x D); returns self so calls can be chained."""
        x = _as_float64(feats)
        if x.ndim != 2:
            raise ValueError(f"features must be an N x D matrix, got shape {x.shape}")
        n_b = x.shape[0]
        if n_b == 0:
            return self
        if self._mean is None:
            self._mean = np.zeros(x.shape[1])
            self._scatter = np.zeros((x.shape[1], x.shape[1]))
        if x.shape[1] != self._mean.shape[0]:
            raise ValueError(f"feature dim {x.shape[1]} != accumulated dim {self._mean.shape[0]}")
        mean_b = x.mean(axis=0)
        centred = x - mean_b
        n_a, n = self.count, self.count + n_b
        delta = mean_b - self._mean
        self._mean = self._mean + delta * (n_b / n)
        self._scatter = self._scatter + centred.T @ centred + np.outer(delta, delta) * (n_a * n_b / n)
        self.count = n
        return self

    @classmethod
    def from_features(cls, feats: ArrayLike) -> "GaussianStats":
        return cls().update(feats)

    @property
    def mean(self) -> np.ndarray:
        """Mean feature vector (D,), float64."""
        if self._mean is None or self.count == 0:
            raise ValueError("GaussianStats has no samples yet")
        return self._mean.copy()

    @property
    def cov(self) -> np.ndarray:
        """Unbiased (N - 1) covariance matrix (D x D), float64."""
        if self._scatter is None or self.count < 2:
            raise ValueError(f"covariance needs at least 2 samples, have {self.count}")
        return self._scatter / (self.count - 1)

    def save(self, path: str | os.PathLike) -> None:
        """Write ``mu``, ``sigma`` and ``count`` to an ``.npz`` file, atomically.

        The data goes to a temporary file in the same directory first and is then renamed
        over ``path``, so a crash never leaves a truncated statistics file behind.
        """
        path = Path(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, mu=self.mean, sigma=self.cov, count=np.int64(self.count))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike) -> "GaussianStats":
        """Read a file written by :meth:`save`."""
        with np.load(path) as data:
            missing = {"mu", "sigma", "count"} - set(data.files)
            if missing:
                raise DgmrunError(f"{path} is not a dgmrun statistics file (missing {sorted(missing)})")
            mu, sigma, count = data["mu"], data["sigma"], int(data["count"])
        stats = cls()
        stats.count = count
        stats._mean = np.asarray(mu, dtype=np.float64)
        stats._scatter = np.asarray(sigma, dtype=np.float64) * (count - 1)
        return stats


def frechet_distance(mu1: ArrayLike, cov1: ArrayLike, mu2: ArrayLike, cov2: ArrayLike) -> float:
    """Frechet distance between N(mu1, cov1) and N(mu2, cov2) (FID, Heusel et al. 2017).

    Returns ``||mu1 - mu2||^2 + Tr(C1 + C2 - 2 (C1 C2)^{1/2})`` as a float (>= 0).

    ``Tr((C1 C2)^{1/2})`` is the sum of square roots of the eigenvalues of C1 C2, which equal
    those of the symmetric PSD matrix ``sqrt(C1) C2 sqrt(C1)``. Working with symmetric
    eigendecompositions (clamping round-off negatives to 0) avoids the complex results and
    the eps-offset retry that ``scipy.linalg.sqrtm`` needs on near-singular covariances.
    """
    mu1, mu2 = _as_float64(mu1).ravel(), _as_float64(mu2).ravel()
    c1, c2 = _as_float64(cov1), _as_float64(cov2)
    d = mu1.shape[0]
    if mu2.shape != (d,) or c1.shape != (d, d) or c2.shape != (d, d):
        raise ValueError(f"shape mismatch: mu {mu1.shape}/{mu2.shape}, cov {c1.shape}/{c2.shape}")
    c1, c2 = (c1 + c1.T) / 2, (c2 + c2.T) / 2
    w, v = np.linalg.eigh(c1)
    sqrt_c1 = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    m = sqrt_c1 @ c2 @ sqrt_c1
    ev = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = np.sqrt(np.clip(ev, 0.0, None)).sum()
    diff = mu1 - mu2
    fid = diff @ diff + np.trace(c1) + np.trace(c2) - 2.0 * tr_covmean
    # Identical inputs give a round-off-sized negative number; the true value is >= 0.
    return max(float(fid), 0.0)


# --------------------------------------------------------------------------------------- KID


def _unbiased_mmd2(k_xx: torch.Tensor, k_yy: torch.Tensor, k_xy: torch.Tensor) -> torch.Tensor:
    """Unbiased MMD^2 from kernel matrices: diagonals of k_xx and k_yy are left out."""
    m = k_xx.shape[0]
    sum_xx = k_xx.sum() - k_xx.diagonal().sum()
    sum_yy = k_yy.sum() - k_yy.diagonal().sum()
    return (sum_xx + sum_yy) / (m * (m - 1)) - 2.0 * k_xy.sum() / (m * m)


def kernel_inception_distance(
    feats_real: ArrayLike,
    feats_fake: ArrayLike,
    num_subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """Kernel Inception Distance (Binkowski et al. 2018, "Demystifying MMD GANs").

    The unbiased MMD^2 estimate with the polynomial kernel ``k(x, y) = (gamma x.y + coef0)^degree``
    (``gamma = 1 / D`` by default) is computed on ``num_subsets`` random subsets of
    ``m = min(subset_size, N_real, N_fake)`` samples from each set, drawn without replacement
    with ``generator`` (torch's global RNG when None), as in torch-fidelity and torchmetrics.

    Returns ``(mean, std)`` over the subsets; std is the population std (0 for one subset).
    The estimate can be slightly negative when both sets come from the same distribution.
    """
    x, y = _as_tensor(feats_real, torch.float64), _as_tensor(feats_fake, torch.float64)
    _check_features("feats_real", x)
    _check_features("feats_fake", y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature dims differ: {x.shape[1]} vs {y.shape[1]}")
    m = min(subset_size, x.shape[0], y.shape[0])
    if m < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    gamma = 1.0 / x.shape[1] if gamma is None else gamma

    def kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (gamma * (a @ b.T) + coef0) ** degree

    scores = torch.empty(num_subsets, dtype=torch.float64)
    for i in range(num_subsets):
        xs = x[torch.randperm(x.shape[0], generator=generator)[:m]]
        ys = y[torch.randperm(y.shape[0], generator=generator)[:m]]
        scores[i] = _unbiased_mmd2(kernel(xs, xs), kernel(ys, ys), kernel(xs, ys))
    return scores.mean().item(), scores.std(unbiased=False).item()


# ---------------------------------------------------------------------------------------- IS


def inception_score(probs: ArrayLike, num_splits: int = 10) -> tuple[float, float]:
    """Inception Score (Salimans et al. 2016): ``exp(E_x KL(p(y|x) || p(y)))``.

    ``probs`` holds the classifier's class probabilities p(y|x), one row per sample (N x C).
    The rows are cut, in order, into ``num_splits`` near-equal splits (np.array_split: no
    sample is dropped); p(y) is the mean prediction within each split.

    Returns ``(mean, std)`` of the per-split scores (population std, as in the original code).
    The score is 1 when every prediction is the same and C when predictions are confident
    one-hot vectors spread evenly over the C classes.
    """
    p = _as_tensor(probs, torch.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        raise ValueError(f"probs must be a non-empty N x C matrix, got shape {tuple(p.shape)}")
    if not 1 <= num_splits <= p.shape[0]:
        raise ValueError(f"num_splits must be in [1, {p.shape[0]}], got {num_splits}")
    # Catch logits or log-probabilities passed by mistake: those give meaningless scores.
    if (p < 0).any() or not torch.allclose(p.sum(dim=1), torch.ones(1, dtype=p.dtype), atol=1e-3):
        raise ValueError("probs rows must be probability vectors (non-negative, summing to 1)")

    scores = []
    for part in torch.tensor_split(p, num_splits):
        p_y = part.mean(dim=0, keepdim=True)
        # xlogy gives 0 * log 0 = 0, so classes with zero probability contribute nothing.
        kl = (torch.special.xlogy(part, part) - torch.special.xlogy(part, p_y)).sum(dim=1)
        scores.append(math.exp(kl.mean().item()))
    return float(np.mean(scores)), float(np.std(scores))


# ------------------------------------------------------------------------ precision / recall


def _kth_nn_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each row of x to its k-th nearest other row of x."""
    radii = torch.empty(x.shape[0], dtype=x.dtype)
    for start in range(0, x.shape[0], _CDIST_CHUNK):
        d = torch.cdist(x[start : start + _CDIST_CHUNK], x)
        # The point itself is the nearest (distance ~0), so the k-th neighbour is the
        # (k+1)-th smallest; an exact duplicate is rightly counted as a neighbour.
        radii[start : start + _CDIST_CHUNK] = d.topk(k + 1, dim=1, largest=False).values[:, k]
    return radii


def precision_recall(
    feats_real: ArrayLike,
    feats_fake: ArrayLike,
    k: int = 3,
    max_samples: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019).

    Each set's manifold is the union of balls around its points, with radius the distance
    to the point's k-th nearest neighbour in the same set (the point itself excluded).

    Returns ``(precision, recall)``: precision is the fraction of fake samples inside the
    real manifold (within the radius of at least one real point), recall the fraction of
    real samples inside the fake manifold. With ``max_samples`` each set is first
    subsampled at random (using ``generator``) to at most that many rows.

    Distances come from chunked ``torch.cdist`` calls, so memory stays at a few chunk-sized
    blocks even for 10,000 x 10,000 sets.
    """
    x, y = _as_tensor(feats_real), _as_tensor(feats_fake)
    _check_features("feats_real", x)
    _check_features("feats_fake", y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature dims differ: {x.shape[1]} vs {y.shape[1]}")
    dtype = torch.promote_types(torch.promote_types(x.dtype, y.dtype), torch.float32)
    x, y = x.to(dtype), y.to(dtype)
    if max_samples is not None:
        x = x[torch.randperm(x.shape[0], generator=generator)[:max_samples]]
        y = y[torch.randperm(y.shape[0], generator=generator)[:max_samples]]
    if not 1 <= k < min(x.shape[0], y.shape[0]):
        raise ValueError(f"k must be in [1, {min(x.shape[0], y.shape[0]) - 1}], got {k}")

    r_real, r_fake = _kth_nn_radii(x, k), _kth_nn_radii(y, k)
    # One pass over the real x fake distance matrix serves both directions: a row-wise "any"
    # gives recall (real inside fake balls), a column-wise "any" gives precision.
    real_covered = torch.empty(x.shape[0], dtype=torch.bool)
    fake_covered = torch.zeros(y.shape[0], dtype=torch.bool)
    for start in range(0, x.shape[0], _CDIST_CHUNK):
        stop = start + _CDIST_CHUNK
        d = torch.cdist(x[start:stop], y)
        real_covered[start:stop] = (d <= r_fake).any(dim=1)
        fake_covered |= (d <= r_real[start:stop, None]).any(dim=0)
    return fake_covered.double().mean().item(), real_covered.double().mean().item()


# ----------------------------------------------------------------------- class histograms


def _class_counts(pred_labels: ArrayLike, num_classes: int) -> torch.Tensor:
    labels = _as_tensor(pred_labels).long().ravel()
    if labels.numel() == 0:
        raise ValueError("pred_labels is empty")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")
    return torch.bincount(labels, minlength=num_classes)


def matched_accuracy(codes: ArrayLike, pred_labels: ArrayLike, num_codes: int, num_classes: int) -> float:
    """Accuracy of an unsupervised labelling (``codes``) of samples whose classes are ``pred_labels``,
    under the one-to-one matching of code values to classes that maximises it (the Hungarian algorithm
    on the num_codes x num_classes co-occurrence counts; unmatched values count as errors). This is how
    the InfoGAN paper scores its categorical code on MNIST (5% error). In [0, 1]."""
    from scipy.optimize import linear_sum_assignment  # scipy comes with scikit-learn

    codes, labels = _as_tensor(codes).long().ravel(), _as_tensor(pred_labels).long().ravel()
    if codes.numel() != labels.numel() or codes.numel() == 0:
        raise ValueError(f"codes and pred_labels must be non-empty and of one length, got {codes.numel()} "
                         f"and {labels.numel()}")
    counts = torch.zeros(num_codes, num_classes, dtype=torch.long)
    counts.index_put_((codes, labels), torch.ones_like(codes), accumulate=True)
    rows, cols = linear_sum_assignment(counts.numpy(), maximize=True)
    return float(counts[rows, cols].sum().item() / codes.numel())


def class_coverage(pred_labels: ArrayLike, num_classes: int, threshold: float = 0.1) -> int:
    """Number of classes predicted for at least ``threshold`` x N / num_classes samples.

    A mode-coverage count for class-labelled data (e.g. stacked MNIST in Metz et al. 2017,
    Srivastava et al. 2017): under a uniform target each class expects N / num_classes
    samples. Returns an int in [0, num_classes].
    """
    counts = _class_counts(pred_labels, num_classes)
    expected = counts.sum().item() / num_classes
    return int((counts >= threshold * expected).sum().item())


def class_kl(pred_labels: ArrayLike, num_classes: int) -> float:
    """KL(predicted class histogram || uniform) in nats, as in the VEEGAN and PacGAN papers.

    Returns a float in [0, log num_classes]: 0 for a perfectly balanced histogram,
    log(num_classes) when every sample falls in one class.
    """
    counts = _class_counts(pred_labels, num_classes).double()
    p = counts / counts.sum()
    # Empty classes: instead of adding a tiny epsilon inside the log, use the exact limit
    # 0 * log 0 = 0 (xlogy), so the value is exact; an epsilon would only shift it ~1e-11.
    return float(torch.special.xlogy(p, p * num_classes).sum().item())
