"""Time FID, KID, IS and precision/recall together on 10,000 generated 28 px images with the domain classifier.

    python scripts/bench_evaluation.py [--root ../shared/data/mnist-small] [--evaluators-dir DIR] [--num 10000]

"Generated" images are real MNIST digits (train + test, repeated as needed) with a little noise, so the
scores are meaningful; the timed part is everything the metrics cost after sampling: feature extraction
of the generated images in batches, the streaming statistics, and the four scores against cached
reference statistics (computed once before the timer starts, and timed on their own). The classifier is
the cached one for the data when ``--evaluators-dir`` holds it (dgmrun task=train_evaluator), else an
untrained LeNet of the same architecture (same cost, meaningless scores).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from dgmrun.data.datamodule import MNISTLike
from dgmrun.metrics.features import (
    ClassifierFeatures,
    build_classifier,
    data_checksum,
    dataset_key,
    evaluator_path,
    load_classifier,
)
from dgmrun.metrics.samples import (
    FEATURE_BATCH,
    FeatureStream,
    reference_statistics,
    score_features,
)

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(REPO / ".." / "shared" / "data" / "mnist-small"))
    parser.add_argument("--evaluators-dir", default="/tmp/dgmrun-bench-evaluators")
    parser.add_argument("--num", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    root = str(Path(args.root).resolve())
    datamodule = MNISTLike.build(name="mnist", root=root, binarize="none")
    checksum = data_checksum(datamodule)
    path = evaluator_path(args.evaluators_dir, "mnist", checksum)
    if path.is_file():
        network = load_classifier(path)
        print(f"feature network: {network.description}")
    else:
        network = ClassifierFeatures(build_classifier("lenet", (1, 28, 28), 10), "classifier:lenet:untrained",
                                     "0" * 64, 10, (1, 28, 28))
        print(f"feature network: untrained LeNet ({path} not found; same cost, meaningless scores)")

    data_cfg = OmegaConf.create({"_target_": "dgmrun.data.datamodule.MNISTLike", "name": "mnist", "root": root,
                                 "binarize": "none"})
    eval_cfg = {"kid_subset_size": 1000, "kid_num_subsets": 100, "pr_num_samples": 10_000}
    pool = max(eval_cfg["kid_subset_size"], eval_cfg["pr_num_samples"])
    cache = Path(args.evaluators_dir) / dataset_key("mnist", checksum)
    start = time.perf_counter()
    ref = reference_statistics(network, data_cfg, cache, "train", pool_size=pool)
    print(f"reference statistics: {ref.count} train images, {'cache hit' if ref.from_cache else 'computed'} "
          f"in {time.perf_counter() - start:.2f} s")

    x = torch.cat([datamodule.split_tensors("train")[0], datamodule.split_tensors("test")[0]])
    x = x.repeat((args.num + len(x) - 1) // len(x), 1, 1, 1)[: args.num]
    generated = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)

    times = {}
    start = time.perf_counter()
    stream = FeatureStream(pool, seed=0)
    for batch in generated.split(FEATURE_BATCH):
        stream.update(*network(batch))
    times["features"] = time.perf_counter() - start
    t = time.perf_counter()
    metrics = score_features(stream, ref, network, eval_cfg, 10, seed=0)
    times["scores"] = time.perf_counter() - t
    total = time.perf_counter() - start
    print(f"threads={torch.get_num_threads()}  {args.num} generated images, 28 px, batches of {FEATURE_BATCH}")
    for key in ("fid", "kid", "kid_std", "is", "is_std", "precision", "recall", "class_coverage", "class_kl"):
        print(f"  test/{key} = {metrics[f'test/{key}']:.4f}")
    print(f"  protocol: {metrics['test/fid_protocol']}")
    print(f"time: features {times['features']:.2f} s + FID/KID/IS/PR/class scores {times['scores']:.2f} s "
          f"= {total:.2f} s (target < 30 s)")


if __name__ == "__main__":
    main()
