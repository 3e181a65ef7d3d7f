"""Metrics computed from a model's samples (as opposed to its likelihood), for any GenerativeModel.

- toy2d mixtures: mode coverage and quality (``modes``, ``hq``).
- images: FID, KID, IS, improved precision/recall, class coverage and class KL, from a feature
  network (``dgmrun.metrics.features``) against cached statistics of a reference split.

Generated images are scored in a stream: each batch goes through the feature network and updates
the Gaussian statistics (FID) and a random pool of at most ``max(eval.kid_subset_size,
eval.pr_num_samples)`` feature vectors (KID, precision/recall), so memory does not grow with the
number of samples beyond the class probabilities (N x classes, for IS).

Reference statistics (mean, covariance and a random pool of features of the reference split) are
cached under ``paths.evaluators_dir/<data name>-<data checksum>/reference/``, keyed by split, view
(grey levels or one fixed Bernoulli draw for binarized data), feature network (name + weights
checksum) and sample count. Every score is written with a ``<name>_protocol`` string beside it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dgmrun.data.datamodule import EVAL_SEED, bernoulli, derive_seed
from dgmrun.errors import DgmrunError
from dgmrun.files import atomic_open
from dgmrun.io import sample_in_batches
from dgmrun.metrics.features import (
    FeatureNetwork,
    check_inception,
    data_checksum,
    dataset_key,
    missing_network_note,
    resolve_feature_network,
)
from dgmrun.metrics.quality import (
    GaussianStats,
    class_coverage,
    class_kl,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    matched_accuracy,
    precision_recall,
)
from dgmrun.metrics.toy import mode_metrics

log = logging.getLogger("dgmrun")

FEATURE_BATCH = 500
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _setting(eval_cfg: Any, key: str, default: Any) -> Any:
    value = eval_cfg.get(key, default) if eval_cfg is not None else default
    return default if value is None else value


# ------------------------------------------------------------------------------ streaming features
class FeatureStream:
    """Gaussian statistics of every feature vector seen, a uniform random pool of at most ``pool_size``
    of them (priority sampling: the ``pool_size`` smallest random keys), and the class probabilities."""

    def __init__(self, pool_size: int, seed: int) -> None:
        self.stats = GaussianStats()
        self.pool_size = pool_size
        self.generator = torch.Generator().manual_seed(seed)
        self.pool: Tensor | None = None
        self.keys = torch.empty(0)
        self.probs: list[Tensor] = []
        self.asked_correct = self.asked_count = 0
        self.codes: list[Tensor] = []

    def update(self, feats: Tensor, probs: Tensor | None = None, asked: Tensor | None = None,
               codes: Tensor | None = None) -> None:
        """``asked``: the classes a class-conditional model was asked for (scored against argmax ``probs``);
        ``codes``: the values of an unsupervised categorical code (InfoGAN's) the samples were drawn with."""
        self.stats.update(feats)
        if probs is not None:
            self.probs.append(probs.float())
            if asked is not None:
                self.asked_correct += int((probs.argmax(1).cpu() == asked.cpu()).sum())
                self.asked_count += len(asked)
            if codes is not None:
                self.codes.append(codes.cpu())
        keys = torch.rand(len(feats), generator=self.generator)
        pool = feats.float() if self.pool is None else torch.cat([self.pool, feats.float()])
        keys = torch.cat([self.keys, keys])
        if len(pool) > self.pool_size:
            keep = keys.topk(self.pool_size, largest=False).indices
            pool, keys = pool[keep], keys[keep]
        self.pool, self.keys = pool, keys

    @property
    def count(self) -> int:
        return self.stats.count

    def all_probs(self) -> Tensor:
        return torch.cat(self.probs)


@dataclass
class Reference:
    stats: GaussianStats
    features: Tensor  # a random pool of the reference features (float32)
    split: str
    view: str
    from_cache: bool
    path: Path

    @property
    def count(self) -> int:
        return self.stats.count


def reference_view(data_cfg: Any) -> str:
    """``grey`` for data used as is, ``bernoulli`` for binarized data (one fixed draw of the grey levels)."""
    return "grey" if str(data_cfg.get("binarize", "none") or "none") == "none" else "bernoulli"


def reference_images(data_cfg: Any, split: str, num: int = 0) -> Tensor:
    """The reference split as the generative model sees it: grey levels, or one fixed Bernoulli draw of
    them for binarized data (the same draw whatever the run seed); ``num`` > 0 keeps a fixed random subset.
    The splits are those of data seed 0 whatever the run seed (the seed moves the val carve-out of the
    training pool), so one cached reference serves every run."""
    from hydra.utils import instantiate

    overrides: dict[str, Any] = {"binarize": "none"} if "binarize" in data_cfg else {}
    if "seed" in data_cfg:
        overrides["seed"] = 0
    datamodule = instantiate(data_cfg, _convert_="all", **overrides)
    x, _ = datamodule.split_tensors(split)
    if num and num < len(x):
        generator = torch.Generator().manual_seed(derive_seed(EVAL_SEED, "subset", split))
        x = x[torch.randperm(len(x), generator=generator)[:num].sort().values]
    if reference_view(data_cfg) == "bernoulli":
        x = bernoulli(x, derive_seed(EVAL_SEED, "reference", split))
    return x


def _save_reference(path: Path, stats: GaussianStats, features: Tensor, meta: dict[str, str]) -> None:
    with atomic_open(path, "wb") as f:
        np.savez(f, mu=stats.mean, sigma=stats.cov, count=np.int64(stats.count), features=features.numpy(),
                 **{k: np.array(v) for k, v in meta.items()})


def _load_reference(path: Path) -> tuple[GaussianStats, Tensor]:
    stats = GaussianStats.load(path)
    with np.load(path) as data:
        features = torch.from_numpy(np.asarray(data["features"], dtype=np.float32))
    return stats, features


def reference_statistics(network: FeatureNetwork, data_cfg: Any, cache_dir: str | os.PathLike, split: str = "train",
                         num: int = 0, pool_size: int = 10_000,
                         images: Tensor | None = None) -> Reference:
    """Statistics of the reference split's features, from the cache when there (``from_cache``), else
    computed and cached. ``cache_dir`` is the dataset's own folder (name + checksum); the file name holds
    split, view, feature network (with its checksum), sample count (``all`` or num) and pool size."""
    view = reference_view(data_cfg)
    path = Path(cache_dir) / "reference" / f"{split}-{view}-{network.id}-n{num or 'all'}-pool{pool_size}.npz"
    if path.is_file():
        try:
            stats, features = _load_reference(path)
            return Reference(stats, features, split, view, True, path)
        except Exception as e:  # a damaged cache file is recomputed, not fatal
            log.warning("reference statistics %s unreadable (%s); recomputing", path, e)
    x = reference_images(data_cfg, split, num) if images is None else images
    if len(x) < 2:
        raise DgmrunError(f"the {split} split has {len(x)} images: too few for reference statistics")
    stream = FeatureStream(pool_size, EVAL_SEED)
    for batch in x.split(FEATURE_BATCH):
        feats, _ = network(batch)
        stream.update(feats)
    assert stream.pool is not None
    _save_reference(path, stream.stats, stream.pool, {"network": network.description, "split": split, "view": view})
    return Reference(stream.stats, stream.pool, split, view, False, path)


# ------------------------------------------------------------------------------ scores
def score_features(gen: FeatureStream, ref: Reference, network: FeatureNetwork, eval_cfg: Any, num_classes: int,
                   seed: int, prefix: str = "test") -> dict[str, Any]:
    """Every sample-quality score of generated features against a reference, each with its protocol."""
    n_gen, n_ref = gen.count, ref.count
    if n_gen < 2:
        raise DgmrunError(f"sample-quality metrics need at least 2 samples, got {n_gen}")
    assert gen.pool is not None
    generator = torch.Generator().manual_seed(seed)
    where = f"{network.description}; {n_gen} generated vs {n_ref} reference ({ref.split} split, {ref.view})"
    out: dict[str, Any] = {}

    out[f"{prefix}/fid"] = frechet_distance(gen.stats.mean, gen.stats.cov, ref.stats.mean, ref.stats.cov)
    out[f"{prefix}/fid_protocol"] = where

    subsets = int(_setting(eval_cfg, "kid_num_subsets", 100))
    subset_size = int(_setting(eval_cfg, "kid_subset_size", 1000))
    m = min(subset_size, len(gen.pool), len(ref.features))
    kid, kid_std = kernel_inception_distance(ref.features, gen.pool, num_subsets=subsets, subset_size=subset_size,
                                             generator=generator)
    out[f"{prefix}/kid"], out[f"{prefix}/kid_std"] = kid, kid_std
    out[f"{prefix}/kid_protocol"] = f"{where}; {subsets} subsets of {m}, cubic polynomial kernel"

    pr_num = int(_setting(eval_cfg, "pr_num_samples", 10_000))
    k = 3
    if min(len(gen.pool), len(ref.features), pr_num) > k:
        precision, recall = precision_recall(ref.features, gen.pool, k=k, max_samples=pr_num, generator=generator)
        pr_where = (f"{network.description}; k={k}, {min(pr_num, len(gen.pool))} of {n_gen} generated vs "
                    f"{min(pr_num, len(ref.features))} of {n_ref} reference ({ref.split} split, {ref.view})")
        out[f"{prefix}/precision"], out[f"{prefix}/recall"] = precision, recall
        out[f"{prefix}/precision_protocol"] = out[f"{prefix}/recall_protocol"] = pr_where

    probs = gen.all_probs() if gen.probs else None
    if probs is not None:
        splits = min(10, len(probs))
        out[f"{prefix}/is"], out[f"{prefix}/is_std"] = inception_score(probs, num_splits=splits)
        out[f"{prefix}/is_protocol"] = f"{network.description}; {n_gen} generated, {splits} splits"
        # Class histograms only mean something when the network's classes are the dataset's.
        if num_classes and probs.shape[1] == num_classes:
            labels = probs.argmax(dim=1)
            out[f"{prefix}/class_coverage"] = class_coverage(labels, num_classes)
            out[f"{prefix}/class_kl"] = class_kl(labels, num_classes)
            hist = f"{network.description}; argmax classes of {n_gen} generated, {num_classes} classes"
            out[f"{prefix}/class_coverage_protocol"] = f"{hist}, >= 0.1 x uniform share"
            out[f"{prefix}/class_kl_protocol"] = f"{hist}, KL(histogram || uniform) in nats"
            if gen.asked_count:
                out[f"{prefix}/class_accuracy"] = gen.asked_correct / gen.asked_count
                out[f"{prefix}/class_accuracy_protocol"] = (
                    f"{network.description}; {gen.asked_count} generated, classes 0..{num_classes - 1} asked for in "
                    f"turn, fraction whose argmax class is the one asked for")
            if gen.codes:
                codes = torch.cat(gen.codes)
                out[f"{prefix}/code_accuracy"] = matched_accuracy(codes, labels, int(codes.max()) + 1, num_classes)
                out[f"{prefix}/code_accuracy_protocol"] = (
                    f"{network.description}; {len(codes)} generated, the values of the first categorical code in "
                    f"turn, matched one-to-one to the argmax classes (Hungarian), fraction whose class is the match")
    return out


class SampleScorer:
    """Feature network and reference statistics of one run's data, resolved once and reused (the end of
    training, the ``eval.every_n_epochs`` callback, ``task=eval``)."""

    def __init__(self, cfg: Any, datamodule: Any, device: torch.device | str | None = None) -> None:
        self.eval_cfg, self.data_cfg, self.sample_cfg = cfg.eval, cfg.data, cfg.get("sample")
        self.evaluators_dir = Path(os.path.expanduser(str(cfg.paths.evaluators_dir)))
        self.datamodule, self.device = datamodule, device
        self._network: FeatureNetwork | None = None
        self._resolved = False
        self._reference: Reference | None = None
        self._noted = False

    def check(self) -> None:
        """Fail early (before hours of training) when Inception is asked for and cannot run."""
        if str(_setting(self.eval_cfg, "feature_network", "auto")) == "inception":
            check_inception(self.eval_cfg.get("inception_weights"), self.evaluators_dir)

    @property
    def info(self) -> Any:
        return self.datamodule.info

    @property
    def network(self) -> FeatureNetwork | None:
        if not self._resolved:
            self.checksum = data_checksum(self.datamodule)
            self._network = resolve_feature_network(self.eval_cfg, self.evaluators_dir, self.info.name,
                                                    self.checksum, self.device or "cpu")
            self._resolved = True
        return self._network

    def note_missing(self) -> str:
        if str(self.eval_cfg.get("feature_network", "auto")) == "none":
            note = "sample-quality metrics (FID, KID, IS, precision/recall) skipped: eval.feature_network=none"
        else:
            note = missing_network_note(self.info.name)
        if not self._noted:
            log.info(note)
            self._noted = True
        return note

    @property
    def pool_size(self) -> int:
        return max(int(_setting(self.eval_cfg, "kid_subset_size", 1000)),
                   int(_setting(self.eval_cfg, "pr_num_samples", 10_000)))

    def reference(self) -> Reference:
        if self._reference is None:
            network = self.network
            assert network is not None
            pool = self.pool_size
            self._reference = reference_statistics(
                network, self.data_cfg, self.evaluators_dir / dataset_key(self.info.name, self.checksum),
                split=str(_setting(self.eval_cfg, "reference_split", "train")),
                num=int(_setting(self.eval_cfg, "reference_num_samples", 0)), pool_size=pool)
        return self._reference

    def score(self, batches: Iterable[tuple[Tensor, Tensor | None, Tensor | None]], seed: int,
              prefix: str = "test") -> dict[str, Any]:
        """Scores of (images, classes asked for or None, categorical codes or None) batches."""
        network = self.network
        assert network is not None
        ref = self.reference()
        stream = FeatureStream(self.pool_size, seed)
        for batch, asked, codes in batches:
            feats, probs = network(batch)
            stream.update(feats, probs, asked, codes)
        return score_features(stream, ref, network, self.eval_cfg, self.info.num_classes, seed, prefix)


def _model_batches(model: Any, n: int, batch_size: int, generator: torch.Generator,
                   settings: Any = None) -> Iterator[tuple[Tensor, Tensor | None, Tensor | None]]:
    """(samples, classes asked for, codes): a class-conditional model is asked for every class in turn; a
    model with an unsupervised categorical code (``sample_by_code``) says which value drew each sample.
    ``settings`` (the run's ``sample`` group) gives the model's sampler options."""
    classes = list(range(model.data_info.num_classes)) if model.class_conditional else None
    sample = None if model.categorical_code else model.sampler(classes, settings)
    for start in range(0, n, batch_size):
        size = min(batch_size, n - start)
        if sample is None:
            samples, codes = model.sample_by_code(size, generator)
            yield samples, None, codes
        else:  # a conditional model cycles through the classes given: sample i has class i mod K
            yield sample(size, generator), None if classes is None else torch.arange(size) % len(classes), None


@torch.no_grad()
def sample_metrics(model: Any, datamodule: Any, num_samples: int, seed: int, batch_size: int = 500,
                   cfg: Any = None, prefix: str = "test", scorer: SampleScorer | None = None) -> dict[str, Any]:
    """``<prefix>/*`` sample metrics for this data: mode coverage and quality on toy2d mixtures
    (PacGAN/VEEGAN protocol: within 3 std of a component; a mode counts with >= 20 such samples), and,
    for images when ``cfg`` (the run config) is given, FID/KID/IS/precision/recall/class metrics.
    Without a feature network for an image dataset the image metrics are skipped with one log line."""
    centers, std = datamodule.modes()
    settings = scorer.sample_cfg if scorer is not None else cfg.get("sample") if cfg is not None else None
    was_training = model.training
    model.eval()
    try:
        if len(centers) > 0:
            generator = torch.Generator(model.device).manual_seed(seed)
            samples = sample_in_batches(model.sampler(None, settings), num_samples, batch_size, generator)
            return with_sampler(toy_metrics(samples, centers, std, prefix), model.sampler_description(settings))
        if (cfg is None and scorer is None) or not datamodule.info.is_image:
            return {}
        scorer = scorer or SampleScorer(cfg, datamodule)
        if scorer.device is None:
            scorer.device = model.device
        if scorer.network is None:
            scorer.note_missing()
            return {}
        # Slow samplers (autoregressive models on a CPU) can take minutes here: say what is happening.
        log.info("sample-quality metrics: drawing %d samples (eval.num_samples; eval.feature_network=none skips this)",
                 num_samples)
        generator = torch.Generator(model.device).manual_seed(seed)
        scores = scorer.score(_model_batches(model, num_samples, batch_size, generator, settings), seed, prefix)
        return with_sampler(scores, model.sampler_description(settings))
    finally:
        model.train(was_training)


def with_sampler(metrics: dict[str, Any], description: str | None) -> dict[str, Any]:
    """The protocol strings with the sampler that drew the samples appended (where the model has options)."""
    if description:
        metrics = {k: f"{v}; {description}" if k.endswith("_protocol") else v for k, v in metrics.items()}
    return metrics


def toy_metrics(samples: Tensor, centers: Tensor, std: float, prefix: str = "test") -> dict[str, Any]:
    found = mode_metrics(samples.cpu(), centers, std)
    return {f"{prefix}/hq": found["hq"], f"{prefix}/modes": found["modes"], f"{prefix}/modes_total": len(centers),
            f"{prefix}/sample_metrics_protocol": f"{len(samples)} samples, 3-std radius, >=20 per mode"}


# ------------------------------------------------------------------------------ sample files
def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def load_samples(path: str | os.PathLike, shape: tuple[int, ...]) -> tuple[Iterator[Tensor], int]:
    """(batches of samples in [0, 1], count) from a folder of PNG/JPEG images or an ``.npz`` with
    ``images`` (uint8 N x C x H x W, or N x H x W x C) or ``x`` (float32 N x D), the format of task=sample."""
    path = Path(path)
    if path.is_dir():
        files = _image_files(path)
        if not files:
            raise DgmrunError(f"eval.samples={path}: no .png/.jpg/.jpeg files in that folder")
        return _folder_batches(files, shape), len(files)
    if not path.is_file():
        raise DgmrunError(f"eval.samples={path}: no such file or folder")
    try:
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as e:
        raise DgmrunError(f"eval.samples={path} is not a readable .npz file ({type(e).__name__}: {e})") from None
    if "images" in arrays:
        a = arrays["images"]
        if a.ndim == 3:
            a = a[:, None]
        if a.ndim == 4 and a.shape[1] not in (1, 3) and a.shape[-1] in (1, 3):
            a = a.transpose(0, 3, 1, 2)  # N x H x W x C
        x = torch.from_numpy(np.ascontiguousarray(a))
        x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
    elif "x" in arrays:
        x = torch.from_numpy(np.asarray(arrays["x"], dtype=np.float32))
        if len(shape) == 3 and x.ndim == 2 and x.shape[1] == int(np.prod(shape)):
            x = x.reshape(len(x), *shape)
    else:
        raise DgmrunError(f"eval.samples={path} holds {sorted(arrays)}; expected `images` (uint8 N x C x H x W) "
                          "or `x` (float32 N x D), as task=sample writes")
    if tuple(x.shape[1:]) != tuple(shape):
        raise DgmrunError(f"eval.samples={path} holds samples of shape {tuple(x.shape[1:])}; the data "
                          f"expects {tuple(shape)}")
    if len(shape) == 3:
        x = x.clamp(0, 1)
    return iter(x.split(FEATURE_BATCH)), len(x)


def _folder_batches(files: list[Path], shape: tuple[int, ...]) -> Iterator[Tensor]:
    from PIL import Image

    c, h, w = shape
    mode = {1: "L", 3: "RGB"}[c]
    for start in range(0, len(files), FEATURE_BATCH):
        arrays = []
        for p in files[start:start + FEATURE_BATCH]:
            try:
                with Image.open(p) as im:
                    a = np.asarray(im.convert(mode), dtype=np.uint8)
            except Exception as e:
                raise DgmrunError(f"cannot read image {p} ({type(e).__name__}: {e})") from None
            if a.shape[:2] != (h, w):
                raise DgmrunError(f"{p} is {a.shape[1]}x{a.shape[0]} pixels; the data expects {w}x{h}")
            arrays.append(a.reshape(h, w, c).transpose(2, 0, 1))
        yield torch.from_numpy(np.stack(arrays)).float().div_(255)


def score_sample_file(cfg: Any, datamodule: Any, path: str | os.PathLike, seed: int,
                      device: torch.device | str = "cpu") -> dict[str, Any]:
    """``test/*`` sample metrics of samples made by any tool, against the data's reference statistics."""
    info = datamodule.info
    batches, count = load_samples(path, tuple(info.shape))
    if not info.is_image:
        centers, std = datamodule.modes()
        if len(centers) == 0:
            raise DgmrunError(f"no sample metrics for data={info.name} (only toy2d mixtures and images have some)")
        return toy_metrics(torch.cat(list(batches)), centers, std)
    scorer = SampleScorer(cfg, datamodule, device)
    if scorer.network is None:
        raise DgmrunError(missing_network_note(info.name).replace("skipped", "unavailable"))
    metrics = scorer.score(((batch, None, None) for batch in batches), seed)
    metrics["test/num_samples"] = count
    return metrics
