"""Time FID + KID + IS + precision/recall on 10,000 vs 10,000 feature vectors on the CPU.

Feature extraction is not included: random features (dim 128) and class probabilities
(10 classes) stand in for a feature network's outputs. Target: under 30 s on 2 CPU cores.

    python scripts/bench_quality_metrics.py [--threads 2] [--n 10000] [--dim 128]
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable

import torch

from dgmrun.metrics.quality import (
    GaussianStats,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    precision_recall,
)


def _timed(name: str, fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    print(f"{name:<18} {seconds:7.2f} s   -> {result}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (CPU cores used)")
    parser.add_argument("--n", type=int, default=10_000, help="samples per set")
    parser.add_argument("--dim", type=int, default=128, help="feature dimension")
    parser.add_argument("--classes", type=int, default=10, help="classes for the Inception Score")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    g = torch.Generator().manual_seed(0)
    real = torch.randn(args.n, args.dim, generator=g)
    fake = 1.1 * torch.randn(args.n, args.dim, generator=g) + 0.05
    probs = torch.softmax(3.0 * torch.randn(args.n, args.classes, generator=g), dim=1)
    print(f"{args.n} vs {args.n} samples, dim {args.dim}, {args.classes} classes, "
          f"{torch.get_num_threads()} threads")

    def fid() -> float:
        # Streamed in batches, as during evaluation.
        a, b = GaussianStats(), GaussianStats()
        for start in range(0, args.n, 500):
            a.update(real[start : start + 500])
            b.update(fake[start : start + 500])
        return round(frechet_distance(a.mean, a.cov, b.mean, b.cov), 4)

    total = _timed("FID", fid)
    kid_rng = torch.Generator().manual_seed(0)
    total += _timed("KID (100 x 1000)", lambda: kernel_inception_distance(real, fake, generator=kid_rng))
    total += _timed("IS (10 splits)", lambda: inception_score(probs))
    total += _timed("precision/recall", lambda: precision_recall(real, fake, k=3))
    print(f"{'total':<18} {total:7.2f} s")


if __name__ == "__main__":
    main()
