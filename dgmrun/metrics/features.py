"""Feature networks for sample-quality metrics: a small classifier trained per dataset, or Inception-v3.

A feature network maps images in [0, 1] (N x C x H x W, as ``GenerativeModel.sample`` returns them) to
``(features, probs)``: features (N x D, for FID, KID and precision/recall) and class probabilities
(N x K, for the Inception Score and the class histograms).

Domain classifier (``dgmrun task=train_evaluator data=<name>``): a LeNet-like CNN for 28 px grey
images, a small ResNet for 32 px colour images, a small CNN for sklearn's 8 x 8 digits. Features are
its penultimate layer (128 units after ReLU), probabilities its softmax. The weights are cached under
``paths.evaluators_dir/<data name>-<data checksum>/classifier.pt``; the checksum covers the dataset's
files (the arrays, for sklearn's digits), so changed data means a new evaluator.

Binarized data: the classifier always learns from the grey levels (``data.binarize`` is ignored when it
is trained), with half of each training batch replaced by one Bernoulli draw of itself, so the one
evaluator of a dataset reads both grey-level and binarized samples. The reference statistics are
computed on the data as the generative model sees it: the grey levels, or, when ``data.binarize`` is
``static``/``dynamic``, one fixed Bernoulli draw of them (see ``dgmrun.metrics.samples``).

Inception-v3 (``eval.feature_network=inception``): the FID network of TTUR/torch-fidelity through
torchmetrics, 2048-D pool features and the softmax of its unbiased logits, loaded from a local weights
file (``eval.inception_weights``); torch-fidelity and torchvision are optional and nothing downloads.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dgmrun.errors import DgmrunError

log = logging.getLogger("dgmrun")

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
FEATURE_NETWORKS = ("auto", "classifier", "inception", "none")
CLASSIFIER_FILE = "classifier.pt"
FEATURE_DIM = 128


# ------------------------------------------------------------------------------ architectures
class SmallCNN(nn.Module):
    """sklearn's 8 x 8 digits (or any small grey image): two 3x3 convs, one pool, 128-unit hidden layer."""

    def __init__(self, channels: int, size: int, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(64 * (size // 2) ** 2, FEATURE_DIM), nn.ReLU(),
        )
        self.head = nn.Linear(FEATURE_DIM, num_classes)


class LeNet(nn.Module):
    """LeNet-5-like for 28 px grey images: conv5-pool-conv5-pool, then a 128-unit hidden layer."""

    def __init__(self, channels: int, size: int, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(32 * (size // 4) ** 2, FEATURE_DIM), nn.ReLU(),
        )
        self.head = nn.Linear(FEATURE_DIM, num_classes)


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.skip(x))


class SmallResNet(nn.Module):
    """A ResNet for 32 px colour images: stem, three stages of one basic block (32, 64, 128 channels)."""

    def __init__(self, channels: int, size: int, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            _Block(32, 32, 1), _Block(32, 64, 2), _Block(64, FEATURE_DIM, 2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(FEATURE_DIM, num_classes)


def classifier_arch(shape: tuple[int, ...]) -> str:
    c, h, w = shape
    if h != w:
        raise DgmrunError(f"the evaluator classifier needs square images, got {h}x{w}")
    if c == 3 and h >= 16:
        return "resnet"
    if h >= 16:
        return "lenet"
    return "cnn"


ARCHS: dict[str, type[nn.Module]] = {"cnn": SmallCNN, "lenet": LeNet, "resnet": SmallResNet}


def build_classifier(arch: str, shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return ARCHS[arch](shape[0], shape[1], num_classes)


# ------------------------------------------------------------------------------ feature networks
class FeatureNetwork:
    """``(features, probs)`` of images in [0, 1]; ``name`` and ``checksum`` go into every protocol string."""

    name: str
    checksum: str
    num_classes: int
    device: torch.device = torch.device("cpu")

    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    @property
    def id(self) -> str:
        """Short, file-name-safe identity (for reference-statistics cache keys)."""
        return f"{self.name.split(':')[0]}-{self.checksum[:12]}"

    @property
    def description(self) -> str:
        return f"{self.name} (sha256 {self.checksum[:12]})"


class ClassifierFeatures(FeatureNetwork):
    def __init__(self, net: nn.Module, name: str, checksum: str, num_classes: int, shape: tuple[int, ...],
                 device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.name, self.checksum, self.num_classes, self.shape = name, checksum, num_classes, tuple(shape)

    @torch.no_grad()
    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor]:
        x = images.to(self.device, torch.float32)
        if tuple(x.shape[1:]) != self.shape:
            raise DgmrunError(f"{self.name} reads images of shape {self.shape}, got {tuple(x.shape[1:])}")
        feats = self.net.body(x)
        probs = torch.softmax(self.net.head(feats), dim=1)
        return feats.float().cpu(), probs.float().cpu()


def inception_message(reason: str, evaluators_dir: str | os.PathLike | None = None) -> str:
    where = Path(evaluators_dir) / INCEPTION_FILE if evaluators_dir else f"~/.cache/dgmrun/evaluators/{INCEPTION_FILE}"
    return (
        f"eval.feature_network=inception cannot run: {reason}. Inception-v3 features need the optional packages "
        f'torch-fidelity and torchvision (pip install "dgmrun[inception]", on a torch build that torchvision '
        f"supports) and the FID Inception weights file {INCEPTION_FILE}, which dgmrun never downloads: fetch it "
        f"once from {INCEPTION_URL}, put it somewhere readable (e.g. {where}) and pass "
        f"eval.inception_weights=PATH. Without it, train a domain classifier instead: "
        f"dgmrun task=train_evaluator data=<name>."
    )


def check_inception(weights: str | None, evaluators_dir: str | os.PathLike | None = None) -> Path:
    """The weights file, or a DgmrunError saying what to install and where to put the file."""
    try:
        for module in ("torch_fidelity", "torchvision"):  # only: are they installed?
            importlib.import_module(module)
    except ImportError as e:
        raise DgmrunError(inception_message(f"{e.name or 'torch_fidelity'} is not installed", evaluators_dir)) from None
    if not weights:
        raise DgmrunError(inception_message("eval.inception_weights is not set", evaluators_dir))
    path = Path(os.path.expanduser(str(weights))).absolute()
    if not path.is_file():
        raise DgmrunError(inception_message(f"eval.inception_weights={weights}: no such file", evaluators_dir))
    return path


_FILE_SUMS: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    p = Path(path)
    st = p.stat()
    key = (str(p.absolute()), st.st_size, st.st_mtime_ns)
    if key not in _FILE_SUMS:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _FILE_SUMS[key] = h.hexdigest()
    return _FILE_SUMS[key]


class InceptionFeatures(FeatureNetwork):
    """torch-fidelity's Inception-v3 (``inception-v3-compat``) via torchmetrics, TF1-style resize
    (``antialias=False``) so that scores match torch-fidelity and the original TTUR code."""

    num_classes = 1008

    def __init__(self, weights: str, evaluators_dir: str | os.PathLike | None = None,
                 device: torch.device | str = "cpu") -> None:
        path = check_inception(weights, evaluators_dir)
        from torchmetrics.image.fid import NoTrainInceptionV3

        self.device = torch.device(device)
        self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048", "logits_unbiased"],
                                      feature_extractor_weights_path=str(path), antialias=False).to(self.device)
        self.name, self.checksum = f"inception-v3:{path.name}", file_sha256(path)

    @torch.no_grad()
    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor]:
        x = (images.to(self.device, torch.float32).clamp(0, 1) * 255).round().to(torch.uint8)
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        feats, logits = self.net._torch_fidelity_forward(x)
        return feats.float().cpu(), torch.softmax(logits.double(), dim=1).float().cpu()


# ------------------------------------------------------------------------------ data identity
def _hash_files(paths: list[Path], root: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(str(p.relative_to(root) if p.is_relative_to(root) else p.name).encode())
        h.update(file_sha256(p).encode())
    return h.hexdigest()


def _first_existing(candidates: list[Path]) -> Path | None:
    return next((p for p in candidates if p.is_file()), None)


def data_checksum(datamodule: Any) -> str:
    """sha256 of what a dataset is read from: its files (MNIST-like, CIFAR-10, image folders) or, for
    sklearn's digits and anything else, its arrays. Changed data means a new evaluator and new references."""
    from dgmrun.data import datamodule as dm
    from dgmrun.data import readers

    if isinstance(datamodule, (dm.MNISTLike, dm.CIFAR10)):
        root = Path(datamodule.root)
        if isinstance(datamodule, dm.MNISTLike):
            names = [f for files in readers.MNIST_FILES.values() for f in files]
            candidates = [[root / f, root / f"{f}.gz"] for f in names]
        else:
            names = [n for batches in readers.CIFAR10_BATCHES.values() for n in batches]
            candidates = [[root / n, root / readers.CIFAR10_SUBDIR / n] for n in names]
        found = [_first_existing(c) for c in candidates]
        if all(p is not None for p in found):
            return _hash_files(found, root)  # type: ignore[arg-type]
    if isinstance(datamodule, dm.ImageFolder):
        return _hash_files(readers.list_images(datamodule.root), Path(datamodule.root))
    h = hashlib.sha256()
    if isinstance(datamodule, dm.Digits):
        arrays = readers.read_digits()
    else:
        datamodule.load()
        arrays = tuple(t for s in ("train", "val", "test") for t in datamodule.split_tensors(s))
    for a in arrays:
        a = a.detach().cpu().contiguous().numpy() if isinstance(a, Tensor) else np.ascontiguousarray(a)
        h.update(str((a.dtype, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def dataset_key(name: str, checksum: str) -> str:
    return f"{name}-{checksum[:16]}"


def evaluator_path(evaluators_dir: str | os.PathLike, name: str, checksum: str) -> Path:
    return Path(os.path.expanduser(str(evaluators_dir))) / dataset_key(name, checksum) / CLASSIFIER_FILE


def load_classifier(path: str | os.PathLike, device: torch.device | str = "cpu") -> ClassifierFeatures:
    path = Path(path)
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        net = build_classifier(saved["arch"], tuple(saved["shape"]), int(saved["num_classes"]))
        net.load_state_dict(saved["state_dict"])
    except Exception as e:  # a damaged cache file: say which and how to redo it
        raise DgmrunError(f"{path} is not a readable dgmrun evaluator ({type(e).__name__}: {e}); delete it and run "
                          f"dgmrun task=train_evaluator again") from None
    name = f"classifier:{saved['arch']}:{path.parent.name}"
    return ClassifierFeatures(net, name, file_sha256(path), int(saved["num_classes"]), tuple(saved["shape"]), device)


def resolve_feature_network(eval_cfg: Any, evaluators_dir: str | os.PathLike, data_name: str, checksum: str,
                            device: torch.device | str = "cpu") -> FeatureNetwork | None:
    """The network ``eval.feature_network`` asks for; None when there is none to use (auto, classifier) or
    when switched off. ``auto``: the cached domain classifier, else Inception if ``eval.inception_weights``
    is set, else None. Inception that is asked for but cannot run is an error (a DgmrunError)."""
    choice = str(eval_cfg.get("feature_network", "auto"))
    if choice == "none":
        return None
    if choice in ("auto", "classifier"):
        path = evaluator_path(evaluators_dir, data_name, checksum)
        if path.is_file():
            return load_classifier(path, device)
        if choice == "classifier" or not eval_cfg.get("inception_weights"):
            return None
    return InceptionFeatures(eval_cfg.get("inception_weights"), evaluators_dir, device)


def missing_network_note(data_name: str) -> str:
    return (f"sample-quality metrics (FID, KID, IS, precision/recall) skipped: no feature network for "
            f"data={data_name}; train one with `dgmrun task=train_evaluator data={data_name}` "
            f"(or set eval.feature_network=inception eval.inception_weights=PATH)")
