"""Sample-quality metrics against direct NumPy/SciPy references and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from dgmrun.errors import DgmrunError
from dgmrun.metrics.quality import (
    GaussianStats,
    class_coverage,
    class_kl,
    matched_accuracy,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    precision_recall,
)
from dgmrun.metrics.toy import mode_metrics


def _feature_pair(n: int = 2000, d: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / math.sqrt(d)  # correlated features
    real = rng.normal(size=(n, d)) @ mix
    fake = 1.3 * rng.normal(size=(n, d)) @ mix + 0.2
    return real, fake


def _fid_reference(a: np.ndarray, b: np.ndarray) -> float:
    """The pytorch-fid formula with scipy.linalg.sqrtm."""
    mu1, mu2 = a.mean(0), b.mean(0)
    c1, c2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(c1 @ c2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * np.trace(covmean))


# ---------------------------------------------------------------------------- FID / stats


def test_streaming_stats_match_numpy_over_batches() -> None:
    real, _ = _feature_pair(n=1000, d=16)
    real = real + 50.0  # a large offset would expose naive E[xx^T] - mu mu^T cancellation
    batches = np.array_split(real, [1, 7, 300, 301, 640])  # uneven, including 1-row batches
    stats = GaussianStats()
    for i, batch in enumerate(batches):
        stats.update(torch.from_numpy(batch) if i % 2 else batch)  # tensors and arrays
    assert stats.count == 1000
    np.testing.assert_allclose(stats.mean, np.mean(real, axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats.cov, np.cov(real, rowvar=False), rtol=1e-9, atol=1e-12)


def test_stats_save_load_round_trip(tmp_path) -> None:
    real, more = _feature_pair(n=300, d=8)
    stats = GaussianStats.from_features(real)
    path = tmp_path / "ref_stats.npz"
    stats.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["ref_stats.npz"]  # no temp file left
    loaded = GaussianStats.load(path)
    assert loaded.count == 300
    np.testing.assert_array_equal(loaded.mean, stats.mean)
    np.testing.assert_allclose(loaded.cov, stats.cov, rtol=1e-14)
    # A loaded accumulator keeps streaming correctly.
    loaded.update(more)
    both = np.concatenate([real, more])
    np.testing.assert_allclose(loaded.cov, np.cov(both, rowvar=False), rtol=1e-10)


def test_stats_load_rejects_foreign_npz(tmp_path) -> None:
    path = tmp_path / "other.npz"
    np.savez(path, mu=np.zeros(3))
    with pytest.raises(DgmrunError, match="sigma"):
        GaussianStats.load(path)


def test_fid_of_a_set_against_itself_is_zero() -> None:
    real, _ = _feature_pair()
    s = GaussianStats.from_features(real)
    fid = frechet_distance(s.mean, s.cov, s.mean, s.cov)
    assert abs(fid) < 1e-6 * np.trace(s.cov)


def test_fid_matches_scipy_reference() -> None:
    real, fake = _feature_pair(n=2000, d=64)
    a, b = GaussianStats.from_features(real), GaussianStats.from_features(fake)
    fid = frechet_distance(a.mean, a.cov, b.mean, b.cov)
    ref = _fid_reference(real, fake)
    assert ref > 1.0  # the sets differ, so this is not a comparison of two zeros
    assert fid == pytest.approx(ref, rel=1e-6)
    # Torch inputs give the same number.
    as_torch = map(torch.from_numpy, (a.mean, a.cov, b.mean, b.cov))
    assert frechet_distance(*as_torch) == pytest.approx(fid, rel=1e-12)


def test_fid_handles_singular_covariances() -> None:
    # Fewer samples than dimensions: both covariances are rank-deficient.
    real, fake = _feature_pair(n=20, d=64)
    a, b = GaussianStats.from_features(real), GaussianStats.from_features(fake)
    fid = frechet_distance(a.mean, a.cov, b.mean, b.cov)
    assert math.isfinite(fid) and fid > 0
    assert fid == pytest.approx(_fid_reference(real, fake), rel=1e-4)


# -------------------------------------------------------------------------------------- KID


def _mmd2_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Loop-free unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3."""
    m, d = x.shape
    kxx, kyy, kxy = ((p @ q.T / d + 1) ** 3 for p, q in ((x, x), (y, y), (x, y)))
    off_diagonal = (kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))
    return float(off_diagonal / (m * (m - 1)) - 2 * kxy.mean())


def test_kid_matches_numpy_mmd_on_fixed_subset() -> None:
    real, fake = _feature_pair(n=500, d=32)
    # subset_size = N with one subset uses every sample; MMD^2 ignores their order.
    mean, std = kernel_inception_distance(real, fake, num_subsets=1, subset_size=500)
    assert mean == pytest.approx(_mmd2_reference(real, fake), rel=1e-10)
    assert std == 0.0
    # subset_size larger than the sets is capped rather than an error.
    capped, _ = kernel_inception_distance(real, fake, num_subsets=1, subset_size=10_000)
    assert capped == pytest.approx(mean, rel=1e-10)


def test_kid_near_zero_for_same_distribution_and_positive_for_shift() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1000, 16, generator=g), torch.randn(1000, 16, generator=g)
    same, same_std = kernel_inception_distance(a, b, num_subsets=20, subset_size=500, generator=g)
    shifted, _ = kernel_inception_distance(a, b + 0.5, num_subsets=20, subset_size=500, generator=g)
    assert abs(same) < 0.02
    assert shifted > 0.5
    assert shifted > 50 * abs(same)


def test_kid_is_reproducible_with_a_generator() -> None:
    real, fake = _feature_pair(n=300, d=8)
    runs = [
        kernel_inception_distance(
            real, fake, num_subsets=5, subset_size=100, generator=torch.Generator().manual_seed(3)
        )
        for _ in range(2)
    ]
    assert runs[0] == runs[1]


# --------------------------------------------------------------------------------------- IS


def test_inception_score_identical_predictions_is_one() -> None:
    probs = torch.softmax(torch.randn(1, 10), dim=1).repeat(200, 1)
    mean, std = inception_score(probs, num_splits=4)
    assert mean == pytest.approx(1.0, abs=1e-12)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_even_one_hot_is_num_classes() -> None:
    num_classes, splits = 10, 5
    probs = torch.eye(num_classes).repeat(splits * 3, 1)  # every split holds each class 3 times
    mean, std = inception_score(probs, num_splits=splits)
    assert mean == pytest.approx(num_classes, rel=1e-12)
    assert std == pytest.approx(0.0, abs=1e-9)


def test_inception_score_rejects_logits() -> None:
    with pytest.raises(ValueError, match="probability"):
        inception_score(torch.randn(100, 10))


# ----------------------------------------------------------------------- precision / recall


def test_precision_recall_same_set_is_exactly_one() -> None:
    x = torch.randn(500, 8, generator=torch.Generator().manual_seed(0))
    assert precision_recall(x, x) == (1.0, 1.0)


def test_precision_recall_identical_gaussians_near_one() -> None:
    g = torch.Generator().manual_seed(1)
    real, fake = torch.randn(2000, 2, generator=g), torch.randn(2000, 2, generator=g)
    precision, recall = precision_recall(real, fake, k=3)
    assert precision > 0.9 and recall > 0.9


def test_precision_recall_far_shift_near_zero() -> None:
    g = torch.Generator().manual_seed(2)
    real, fake = torch.randn(2000, 8, generator=g), torch.randn(2000, 8, generator=g) + 10.0
    assert precision_recall(real, fake) == (0.0, 0.0)


def test_precision_recall_mode_collapse_high_precision_low_recall() -> None:
    g = torch.Generator().manual_seed(3)
    real, fake = torch.randn(2000, 8, generator=g), 0.1 * torch.randn(2000, 8, generator=g)
    precision, recall = precision_recall(real, fake)
    assert precision > 0.95
    assert recall < 0.05


def test_precision_recall_chunking_and_subsampling() -> None:
    # More rows than one cdist chunk, checked against a brute-force full-matrix computation.
    g = torch.Generator().manual_seed(4)
    real = torch.randn(2500, 4, generator=g, dtype=torch.float64)
    fake = 1.2 * torch.randn(1800, 4, generator=g, dtype=torch.float64)
    k = 3
    r_real = torch.cdist(real, real).sort(dim=1).values[:, k]
    r_fake = torch.cdist(fake, fake).sort(dim=1).values[:, k]
    d = torch.cdist(real, fake)
    ref_precision = (d <= r_real[:, None]).any(dim=0).double().mean().item()
    ref_recall = (d <= r_fake[None, :]).any(dim=1).double().mean().item()
    assert precision_recall(real, fake, k=k) == pytest.approx((ref_precision, ref_recall), abs=1e-12)
    p, r = precision_recall(real, fake, max_samples=1000, generator=torch.Generator().manual_seed(0))
    assert 0 < p <= 1 and 0 < r <= 1


# ---------------------------------------------------------------------- class histograms


def test_class_coverage_on_hand_made_histogram() -> None:
    # 4 classes, 100 samples -> 25 expected per class; threshold 0.1 -> need >= 2.5 samples.
    labels = np.repeat([0, 1, 2, 3], [90, 5, 3, 2])
    assert class_coverage(labels, num_classes=4) == 3
    assert class_coverage(labels, num_classes=4, threshold=0.2) == 2  # need >= 5
    # 5 classes -> 20 expected, need >= 2: classes 0-3 pass, the empty class 4 does not.
    assert class_coverage(labels, num_classes=5) == 4
    assert class_coverage(np.arange(10) % 5, num_classes=5, threshold=1.0) == 5


def test_class_kl_on_hand_made_histograms() -> None:
    assert class_kl(np.arange(100) % 4, num_classes=4) == pytest.approx(0.0, abs=1e-15)
    assert class_kl(np.zeros(50, dtype=int), num_classes=4) == pytest.approx(math.log(4), rel=1e-12)
    # Two of four classes used equally: KL = sum 1/2 log((1/2) / (1/4)) = log 2.
    assert class_kl(torch.tensor([0, 2] * 10), num_classes=4) == pytest.approx(math.log(2), rel=1e-12)
    # Uneven: p = (3/4, 1/4, 0).
    expected = 0.75 * math.log(0.75 * 3) + 0.25 * math.log(0.25 * 3)
    assert class_kl([0, 0, 0, 1], num_classes=3) == pytest.approx(expected, rel=1e-12)


def test_matched_accuracy_on_hand_made_labellings() -> None:
    # codes 0,1,2 -> classes 5,3,{3,1}: the best one-to-one matching is 0->5, 1->3, 2->1: 5 of 6 right
    assert matched_accuracy([0, 0, 1, 1, 2, 2], [5, 5, 3, 3, 3, 1], 3, 10) == pytest.approx(5 / 6)
    assert matched_accuracy(np.arange(40) % 4, (np.arange(40) + 1) % 4, 4, 4) == 1.0  # any relabelling
    assert matched_accuracy([0, 0, 0, 0], [0, 1, 2, 3], 1, 4) == 0.25  # one value can match one class only
    with pytest.raises(ValueError, match="one length"):
        matched_accuracy([0, 1], [0], 2, 2)


def test_class_metrics_reject_out_of_range_labels() -> None:
    with pytest.raises(ValueError):
        class_kl([0, 1, 4], num_classes=4)


# ---------------------------------------------------------------------------- toy modes


def test_mode_metrics_on_hand_placed_points() -> None:
    centers = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    std = 0.5  # high quality within 1.5 of the nearest centre
    points = (
        [[0.0, 0.0]] * 3  # centre 0: 3 exact hits
        + [[1.0, 1.0]] * 2  # centre 0: distance 1.41 < 1.5, high quality
        + [[10.0, 1.4]] * 4  # centre 1: distance 1.4, high quality
        + [[10.0, 1.6]] * 1  # nearest centre 1 but distance 1.6: low quality
        + [[5.0, 5.0]] * 2  # far from everything: low quality
    )
    out = mode_metrics(np.array(points), centers, std=std, min_count=4)
    assert out["hq"] == pytest.approx(9 / 12, abs=1e-15)
    assert out["modes"] == 2  # centre 0 has 5, centre 1 has 4, centre 2 has 0
    assert mode_metrics(torch.tensor(points), torch.tensor(centers), std=std, min_count=5)["modes"] == 1
    assert isinstance(out["modes"], int)
