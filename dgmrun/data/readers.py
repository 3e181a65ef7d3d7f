"""Readers of the on-disk dataset formats: plain functions that return CPU tensors (no Lightning).

Images come back as uint8 (N, C, H, W) or, for sklearn's digits, float32 already in [0, 1]; labels as
int64. Every problem a user can fix (missing, truncated or foreign files) is a ``DgmrunError`` that
names the file, never a numpy/gzip/pickle traceback. No file can run code: pickles are read by an
unpickler that knows only the globals of the data they hold.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from dgmrun.errors import DgmrunError

try:  # the array reconstructors of pickled arrays (numpy 2 moved numpy.core to numpy._core)
    from numpy._core.multiarray import _reconstruct
    from numpy._core.numeric import _frombuffer
except ImportError:  # numpy 1
    from numpy.core.multiarray import _reconstruct
    from numpy.core.numeric import _frombuffer

Split = tuple[Tensor, Tensor]  # (x, y)


def resolve_root(root: str | os.PathLike) -> Path:
    """An absolute path; relative ones are taken from the current directory (the launch dir)."""
    return Path(os.path.abspath(os.path.expanduser(os.fspath(root))))


def _locate(
    layouts: dict[str, dict[str, list[Path]]], what: str, root: Path, source: str
) -> dict[str, Path]:
    """The files of the first layout (in order) that has them all, each at its first existing path; or one
    paragraph naming every path looked for. ``layouts`` maps a description ("" for a set with one layout)
    to each file's candidate paths."""
    counts, looked_for = [], []
    for layout, candidates in layouts.items():
        found = {name: next((p for p in paths if p.is_file()), None) for name, paths in candidates.items()}
        missing = [name for name, path in found.items() if path is None]
        if not missing:
            return found  # type: ignore[return-value]
        counts.append(f"{len(missing)} of {len(candidates)} files" + (f" of {layout}" if layout else ""))
        looked_for += [str(p) for name in missing for p in candidates[name]]
    raise DgmrunError(
        f"{what} not found under {root}: {' and '.join(counts)} are missing. Looked for: {'; '.join(looked_for)}. "
        f"The official files come from {source}; put them in that folder, or set data.root=PATH to the folder "
        "that holds them."
    )


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise DgmrunError(f"cannot read {path}: {e.strerror}") from None


# ----------------------------------------------------------------------------------------------- IDX
IDX_UBYTE = 0x08  # the only element type the MNIST-style sets use


def read_idx(path: str | os.PathLike) -> Tensor:
    """An IDX file (gzip-compressed or not) as a uint8 tensor shaped as its header says."""
    path = Path(path)
    raw = _read_bytes(path)
    if raw[:2] == b"\x1f\x8b":  # gzip's magic bytes: trust the content, not the file name
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DgmrunError(f"{path} is a truncated or corrupt gzip file ({e}); download it again") from None
    ndim = raw[3] if len(raw) >= 4 else 0
    if raw[:3] != bytes([0, 0, IDX_UBYTE]) or not 1 <= ndim <= 4:
        raise DgmrunError(
            f"{path} is not an IDX file of unsigned bytes: its magic number is 0x{raw[:4].hex():0>8} "
            "(expected 0x00000803 for images, 0x00000801 for labels)"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DgmrunError(f"{path} is truncated: the file ends inside its IDX header")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected, actual = math.prod(dims), len(raw) - header
    if actual != expected:
        shape = "×".join(map(str, dims))
        raise DgmrunError(
            f"{path} is corrupt: its header says {shape} = {expected} bytes of data, the file has {actual}"
        )
    return torch.from_numpy(np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy())


# ------------------------------------------------------------------------------------- MNIST-style
MNIST_SOURCES = {
    "mnist": "http://yann.lecun.com/exdb/mnist",
    "fashion_mnist": "https://github.com/zalandoresearch/fashion-mnist",
    "kmnist": "https://github.com/rois-codh/kmnist",
}
# All three sets publish the same four file names, each with or without .gz.
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def check_mnist_name(name: str) -> str:
    if name not in MNIST_SOURCES:
        raise DgmrunError(f"unknown MNIST-style dataset {name!r}: data.name must be one of {', '.join(MNIST_SOURCES)}")
    return name


def read_mnist_like(name: str, root: str | os.PathLike) -> dict[str, Split]:
    """{"train": (x, y), "test": (x, y)} with x uint8 (N, 1, 28, 28) and y int64, from the official files."""
    root = resolve_root(root)
    names = [f for files in MNIST_FILES.values() for f in files]
    source = MNIST_SOURCES[check_mnist_name(name)]
    paths = _locate({"": {f: [root / f, root / f"{f}.gz"] for f in names}}, f"{name} files", root, source)
    out = {}
    for split, (image_file, label_file) in MNIST_FILES.items():
        x, y = read_idx(paths[image_file]), read_idx(paths[label_file])
        if x.ndim != 3 or y.ndim != 1:
            raise DgmrunError(
                f"{paths[image_file]} and {paths[label_file]} must hold N×H×W images and N labels, "
                f"found shapes {tuple(x.shape)} and {tuple(y.shape)}"
            )
        if len(x) != len(y):
            raise DgmrunError(f"{paths[image_file]} has {len(x)} images but {paths[label_file]} has {len(y)} labels")
        out[split] = (x.unsqueeze(1), y.long())
    return out


# ----------------------------------------------------------------------------------------- CIFAR-10
CIFAR10_SOURCE = "https://www.cs.toronto.edu/~kriz/cifar.html (the CIFAR-10 binary or python version)"
CIFAR10_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
CIFAR10_SUBDIR = "cifar-10-batches-py"  # what the official python archive unpacks to
CIFAR10_BIN_SUBDIR = "cifar-10-batches-bin"  # ... and the binary one (its files end in .bin)
CIFAR10_IMAGE_BYTES = 3 * 32 * 32
# Every global a pickled CIFAR-10 batch may name: numpy's array reconstruction, under its numpy 1 name (the
# official files) and numpy 2 name, and the protocol-5 variant (a batch re-pickled by Python 3.8+). The rest
# of a batch (dicts, lists, bytes, strings, ints) needs no global. numpy.dtype only describes element types.
CIFAR10_PICKLE_GLOBALS = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    **{(f"numpy.{core}.multiarray", "_reconstruct"): _reconstruct for core in ("core", "_core")},
    **{(f"numpy.{core}.numeric", "_frombuffer"): _frombuffer for core in ("core", "_core")},
}


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only the data of a CIFAR-10 python batch: a pickle naming any other global (a function to
    call, a class to build) is refused before that global is even imported."""

    def __init__(self, file, path: Path) -> None:
        super().__init__(file, encoding="bytes")  # the official files were written by Python 2
        self.path = path

    def find_class(self, module: str, name: str) -> object:
        try:
            return CIFAR10_PICKLE_GLOBALS[module, name]
        except KeyError:
            raise DgmrunError(
                f"refusing to load {self.path}: it asks to run {module}.{name}; a CIFAR-10 batch holds only "
                "arrays, lists and strings"
            ) from None


def _cifar_split(data: np.ndarray, labels: np.ndarray, path: Path) -> Split:
    if data.ndim != 2 or data.shape[1] != CIFAR10_IMAGE_BYTES or labels.shape != (len(data),):
        raise DgmrunError(
            f"{path} is corrupt: expected N×3072 data and N labels, found {data.shape} and {labels.shape}"
        )
    if len(labels) and not 0 <= labels.min() <= labels.max() <= 9:
        raise DgmrunError(f"{path} is corrupt: its labels span {labels.min()}..{labels.max()}, not 0..9")
    # Each row is the 3×32×32 image in row-major (channel, height, width) order, in both versions.
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels.astype(np.int64))


def _read_cifar_python_batch(path: Path) -> Split:
    try:
        with open(path, "rb") as f:
            batch = _CifarUnpickler(f, path).load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except DgmrunError:
        raise
    except Exception as e:  # a damaged pickle can fail in many ways; all mean "not a CIFAR-10 batch"
        raise DgmrunError(f"{path} is truncated or not a CIFAR-10 python batch ({type(e).__name__}: {e})") from None
    return _cifar_split(data, labels, path)


def _read_cifar_binary_batch(path: Path) -> Split:
    raw = _read_bytes(path)
    record = 1 + CIFAR10_IMAGE_BYTES  # a label byte, then the image
    if not raw or len(raw) % record:
        raise DgmrunError(
            f"{path} is truncated or not a CIFAR-10 binary batch: its {len(raw)} bytes are not a whole number of "
            f"{record}-byte records (1 label byte + 3072 image bytes); download it again"
        )
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(-1, record)
    return _cifar_split(rows[:, 1:], rows[:, 0], path)


def read_cifar10(root: str | os.PathLike) -> dict[str, Split]:
    """{"train": (x, y), "test": (x, y)}, x uint8 (N, 3, 32, 32), from the binary version (preferred) or the
    python version, each directly under root or in the folder its archive unpacks to."""
    root = resolve_root(root)
    names = [n for batches in CIFAR10_BATCHES.values() for n in batches]
    layouts = {
        "the binary version": {n: [root / f"{n}.bin", root / CIFAR10_BIN_SUBDIR / f"{n}.bin"] for n in names},
        "the python version": {n: [root / n, root / CIFAR10_SUBDIR / n] for n in names},
    }
    paths = _locate(layouts, "CIFAR-10 batches", root, CIFAR10_SOURCE)
    out = {}
    for split, batches in CIFAR10_BATCHES.items():
        read = [_read_cifar_binary_batch(p) if p.suffix == ".bin" else _read_cifar_python_batch(p)
                for p in (paths[n] for n in batches)]
        xs, ys = zip(*read)
        out[split] = (torch.cat(xs), torch.cat(ys))
    return out


# ------------------------------------------------------------------------------------------- digits
def read_digits() -> Split:
    """scikit-learn's bundled 8×8 digits (1797 images): x float32 (N, 1, 8, 8) = v / 16 for v in 0..16."""
    from sklearn.datasets import load_digits  # a slow import, paid only when digits are used

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    return x, torch.from_numpy(digits.target.astype(np.int64))


# -------------------------------------------------------------------------------------------- toy2d
RING_RADII = (0.75, 1.5, 2.25, 3.0)


def toy2d_modes(shape: str, noise: float) -> tuple[Tensor, float]:
    """(centers K×2, std) of a mixture shape (``dgmrun.schema.data.TOY2D_NOISE``: the shapes and their default
    std); K = 0 for the shapes that are not mixtures. A sample within 3 std of a center counts as a
    high-quality sample of that mode.
    """
    std = float(noise)
    if shape == "8gaussians":
        angle = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
        centers = 2.0 * torch.stack([angle.cos(), angle.sin()], dim=1)
    elif shape == "25gaussians":
        grid = torch.tensor([-4.0, -2.0, 0.0, 2.0, 4.0])
        centers = torch.cartesian_prod(grid, grid)
    else:
        centers = torch.empty(0, 2)
    return centers.float(), std


def sample_toy2d(shape: str, n: int, generator: torch.Generator, noise: float) -> Split:
    """n points (float32 N×2) and labels: the component index for mixtures, -1 for the other shapes."""
    centers, std = toy2d_modes(shape, noise)
    eps = std * torch.randn(n, 2, generator=generator)
    if len(centers):
        y = torch.randint(len(centers), (n,), generator=generator)
        return centers[y] + eps, y
    u = torch.rand(n, generator=generator)
    if shape == "swissroll":  # the classic roll, scaled by 1/5 to fit in about [-3, 3]^2
        t = 1.5 * math.pi * (1 + 2 * u)
        x = torch.stack([t * t.cos(), t * t.sin()], dim=1) / 5
    elif shape == "moons":  # sklearn's two interleaved half circles, ×2 and centred on the origin
        theta = math.pi * u
        lower = torch.rand(n, generator=generator) < 0.5
        upper_pts = torch.stack([theta.cos(), theta.sin()], dim=1)
        lower_pts = torch.stack([1 - theta.cos(), 0.5 - theta.sin()], dim=1)
        x = 2 * torch.where(lower[:, None], lower_pts, upper_pts) - torch.tensor([1.0, 0.5])
    else:  # rings: concentric circles, the same expected number of points on each
        radius = torch.tensor(RING_RADII)[torch.randint(len(RING_RADII), (n,), generator=generator)]
        angle = 2 * math.pi * u
        x = radius[:, None] * torch.stack([angle.cos(), angle.sin()], dim=1)
    return (x + eps).float(), torch.full((n,), -1, dtype=torch.int64)


# ------------------------------------------------------------------------------------- image folder
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
IMAGE_MODES = {1: "L", 3: "RGB"}


def list_images(root: str | os.PathLike) -> list[Path]:
    """Every PNG/JPEG file under root, recursively, in a fixed (sorted) order."""
    root = resolve_root(root)
    files = []
    if root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        state = "is empty of images" if root.is_dir() else "does not exist"
        raise DgmrunError(
            f"image folder {root} {state}: looked recursively for {', '.join(IMAGE_EXTENSIONS)} files "
            "(any letter case). Set data.root=PATH to a folder of images."
        )
    return files


def load_image(path: str | os.PathLike, image_size: int, channels: int) -> Tensor:
    """uint8 (C, S, S): the shorter side resized to S, then the centre S×S crop."""
    if channels not in IMAGE_MODES:
        raise DgmrunError(f"data.channels must be 1 (grey) or 3 (RGB), not {channels}")
    try:
        with Image.open(path) as im:
            im = im.convert(IMAGE_MODES[channels])
    except (OSError, Image.DecompressionBombError) as e:
        raise DgmrunError(f"cannot read image {path}: {e}") from None
    w, h = im.size
    if min(w, h) != image_size:
        scale = image_size / min(w, h)
        size = (max(image_size, round(w * scale)), max(image_size, round(h * scale)))
        im = im.resize(size, Image.Resampling.BICUBIC)
    left, top = (im.width - image_size) // 2, (im.height - image_size) // 2
    arr = np.asarray(im.crop((left, top, left + image_size, top + image_size)), dtype=np.uint8)
    return torch.from_numpy(arr.reshape(image_size, image_size, channels).transpose(2, 0, 1).copy())
