"""Tests of the data layer: readers, splits, binarization, device batching, configs."""

from __future__ import annotations

import gzip
import os
import pickle
import pickletools
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from dgmrun.data import readers
from dgmrun.data.datamodule import (
    CIFAR10,
    Digits,
    ImageFolder,
    MNISTLike,
    RunState,
    Toy2D,
)
from dgmrun.data.info import DataInfo
from dgmrun.errors import DgmrunError
from tests.conftest import run_dgmrun

REPO = Path(__file__).resolve().parents[1]
TRAIN_COUNTS = [773, 905, 834, 803, 788, 723, 756, 813, 787, 818]
T10K_COUNTS = [207, 230, 198, 207, 194, 169, 202, 215, 187, 191]
MNIST_NAMES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]


def fake_trainer(epoch: int = 0, rank: int = 0, world_size: int = 1) -> SimpleNamespace:
    """The attributes of a Trainer that the data modules read."""
    return SimpleNamespace(
        current_epoch=epoch,
        global_rank=rank,
        world_size=world_size,
        strategy=SimpleNamespace(root_device=torch.device("cpu")),
    )


def mnist(root: Path, **kwargs) -> MNISTLike:
    return MNISTLike.build(name="mnist", root=str(root), **{"binarize": "none", **kwargs})


def write_idx(path: Path, array: np.ndarray, magic: int | None = None) -> None:
    magic = (0x0800 | array.ndim) if magic is None else magic
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


# --------------------------------------------------------------------------------------------- IDX
def test_mnist_small_class_counts(mnist_small: Path) -> None:
    splits = readers.read_mnist_like("mnist", mnist_small)
    x, y = splits["train"]
    assert x.shape == (8000, 1, 28, 28) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert torch.bincount(y).tolist() == TRAIN_COUNTS
    x, y = splits["test"]
    assert x.shape == (2000, 1, 28, 28)
    assert torch.bincount(y).tolist() == T10K_COUNTS
    assert x.max() == 255 and x.min() == 0


def test_gz_and_uncompressed_idx_are_identical(mnist_small: Path, tmp_path: Path) -> None:
    for name in MNIST_NAMES:
        (tmp_path / name).write_bytes(gzip.decompress((mnist_small / f"{name}.gz").read_bytes()))
    plain, packed = readers.read_mnist_like("mnist", tmp_path), readers.read_mnist_like("mnist", mnist_small)
    for split in ("train", "test"):
        assert torch.equal(plain[split][0], packed[split][0])
        assert torch.equal(plain[split][1], packed[split][1])


@pytest.mark.parametrize(
    "name, source",
    [
        ("mnist", "yann.lecun.com/exdb/mnist"),
        ("fashion_mnist", "zalandoresearch/fashion-mnist"),
        ("kmnist", "rois-codh/kmnist"),
    ],
)
def test_missing_mnist_files_name_every_path(tmp_path: Path, name: str, source: str) -> None:
    with pytest.raises(DgmrunError) as err:
        MNISTLike.build(name=name, root=str(tmp_path), binarize="none").load()
    msg = str(err.value)
    for f in MNIST_NAMES:
        assert str(tmp_path / f) in msg and str(tmp_path / f"{f}.gz") in msg
    assert source in msg and "data.root=PATH" in msg and "\n" not in msg


def test_missing_one_file_names_only_it(mnist_small: Path, tmp_path: Path) -> None:
    for name in MNIST_NAMES[1:]:
        shutil.copy(mnist_small / f"{name}.gz", tmp_path)
    with pytest.raises(DgmrunError, match="1 of 4 files") as err:
        readers.read_mnist_like("mnist", tmp_path)
    assert str(tmp_path / MNIST_NAMES[0]) in str(err.value)
    assert MNIST_NAMES[1] not in str(err.value)


def test_relative_root_resolves_against_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert MNISTLike.build(name="mnist", root="data/mnist", binarize="none").root == str(tmp_path / "data" / "mnist")
    with pytest.raises(DgmrunError, match="data.name='fmnist' is not one of: mnist, fashion_mnist, kmnist"):
        MNISTLike.build(name="fmnist", root="data", binarize="none")


def test_truncated_gzip_is_a_dgmrun_error(mnist_small: Path, tmp_path: Path) -> None:
    data = (mnist_small / "train-labels-idx1-ubyte.gz").read_bytes()
    bad = tmp_path / "train-labels-idx1-ubyte.gz"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DgmrunError, match="truncated or corrupt gzip") as err:
        readers.read_idx(bad)
    assert str(bad) in str(err.value)


def test_wrong_magic_and_wrong_size_are_dgmrun_errors(tmp_path: Path) -> None:
    labels = np.arange(10, dtype=np.uint8)
    wrong_magic = tmp_path / "wrong-magic"
    write_idx(wrong_magic, labels, magic=0x12345678)
    with pytest.raises(DgmrunError, match="magic number is 0x12345678") as err:
        readers.read_idx(wrong_magic)
    assert str(wrong_magic) in str(err.value)

    short = tmp_path / "short.gz"
    write_idx(tmp_path / "full", labels)
    short.write_bytes(gzip.compress((tmp_path / "full").read_bytes()[:-3]))
    with pytest.raises(DgmrunError, match="says 10 = 10 bytes of data, the file has 7") as err:
        readers.read_idx(short)
    assert str(short) in str(err.value)

    assert readers.read_idx(tmp_path / "full").tolist() == list(range(10))


# ------------------------------------------------------------------------------------ binarization
def test_static_binarization_is_fixed_per_seed(mnist_small: Path) -> None:
    a, b, other = (mnist(mnist_small, binarize="static", seed=seed) for seed in (3, 3, 4))
    assert a.info == DataInfo("mnist", (1, 28, 28), 10, 2)
    for split in ("train", "val", "test"):
        xa, xb = a.split_tensors(split)[0], b.split_tensors(split)[0]
        assert torch.equal(xa, xb)
        assert set(xa.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(a.split_tensors("test")[0], other.split_tensors("test")[0])
    # Training batches are the stored binary images, unchanged between epochs.
    x, _ = next(iter(a.train_dataloader()))
    assert set(x.unique().tolist()) == {0.0, 1.0}


def _binarized_by_index(dm: MNISTLike, epoch: int) -> dict[int, torch.Tensor]:
    dm.trainer = fake_trainer(epoch=epoch)
    batches = dm.train_dataloader()
    indices = batches.batch_indices(RunState(epoch))
    return {int(i): x for idx, (xb, _) in zip(indices, batches) for i, x in zip(idx, xb)}


def test_dynamic_binarization_per_epoch_and_fixed_eval_across_seeds(mnist_small: Path) -> None:
    dm = mnist(mnist_small, binarize="dynamic", seed=0, batch_size=500)
    grey = dm.split_tensors("train")[0]
    assert grey.unique().numel() > 2  # the Bernoulli means
    epoch0, epoch0_again, epoch1 = (_binarized_by_index(dm, e) for e in (0, 0, 1))
    common = sorted(set(epoch0) & set(epoch1))[:200]
    assert len(common) == 200
    x0, x0_again, x1 = (torch.stack([d[i] for i in common]) for d in (epoch0, epoch0_again, epoch1))
    assert set(x0.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(x0, x0_again)  # reproducible when an epoch is replayed (resume)
    assert not torch.equal(x0, x1)  # a fresh draw each epoch
    g = grey[common]
    assert torch.all(x0[g == 0] == 0) and torch.all(x0[g == 1] == 1)

    other = mnist(mnist_small, binarize="dynamic", seed=1)
    assert torch.equal(dm.split_tensors("test")[0], other.split_tensors("test")[0])
    assert set(dm.split_tensors("val")[0].unique().tolist()) == {0.0, 1.0}
    # Validation images differ between seeds, but an image in both sets has the same binarization.
    va, vb = dm.split_indices["val"].tolist(), other.split_indices["val"].tolist()
    shared = sorted(set(va) & set(vb))
    assert shared and va != vb
    xa, xb = dm.split_tensors("val")[0], other.split_tensors("val")[0]
    assert torch.equal(xa[[va.index(i) for i in shared]], xb[[vb.index(i) for i in shared]])


# ------------------------------------------------------------------------------------------ splits
def _check_partition(indices: dict[str, torch.Tensor], n: int) -> None:
    all_idx = torch.cat(list(indices.values()))
    assert len(all_idx) == n and torch.equal(all_idx.sort().values, torch.arange(n))


def test_digits_splits_deterministic_disjoint_covering() -> None:
    a, b, c = (Digits.build(seed=seed, binarize="none") for seed in (0, 0, 1))
    for dm in (a, b, c):
        dm.load()
        _check_partition(dm.split_indices, 1797)
    assert {k: len(v) for k, v in a.split_indices.items()} == {"train": 1294, "val": 144, "test": 359}
    for split in ("train", "val", "test"):
        assert torch.equal(a.split_indices[split], b.split_indices[split])
        assert torch.equal(a.split_tensors(split)[0], b.split_tensors(split)[0])
    assert not torch.equal(a.split_indices["val"], c.split_indices["val"])
    # The test images are the same for every run seed, so test NLLs are comparable across runs.
    assert torch.equal(a.split_indices["test"], c.split_indices["test"])


def test_mnist_val_carved_from_train(mnist_small: Path) -> None:
    a, c = mnist(mnist_small, seed=0, val_fraction=0.1), mnist(mnist_small, seed=1, val_fraction=0.1)
    a.load(), c.load()
    _check_partition({k: a.split_indices[k] for k in ("train", "val")}, 8000)
    assert len(a.split_indices["val"]) == 800
    assert not torch.equal(a.split_indices["val"], c.split_indices["val"])
    assert a.info == DataInfo("mnist", (1, 28, 28), 10, 256)
    x, y = a.split_tensors("val")
    assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1 and y.dtype == torch.int64
    # Labels stay with their images: the val labels are the pool's labels at the val indices.
    pool_y = readers.read_mnist_like("mnist", mnist_small)["train"][1]
    assert torch.equal(y, pool_y[a.split_indices["val"]])


def test_bad_config_values_are_dgmrun_errors() -> None:
    with pytest.raises(DgmrunError, match="binarize"):
        Digits.build(binarize="yes")
    with pytest.raises(DgmrunError, match="val_fraction"):
        Digits.build(val_fraction=1.5)
    with pytest.raises(DgmrunError, match="data.shape='spiral' is not one of"):
        Toy2D.build(shape="spiral")


# -------------------------------------------------------------------------------- device batching
def _shard(dm: Toy2D, split: str, rank: int, world_size: int, epoch: int = 0) -> list[torch.Tensor]:
    dm.trainer = fake_trainer(epoch, rank, world_size)
    dm.setup("fit")
    loader = {"train": dm.train_dataloader, "val": dm.val_dataloader}[split]()
    batches = loader.batch_indices(RunState(epoch, rank, world_size))
    assert len(batches) == len(loader) == len(list(loader))
    return batches


def test_ddp_shards_are_disjoint_and_equal() -> None:
    dm = Toy2D.build(num_train=1003, num_val=1001, num_test=10, batch_size=100, eval_batch_size=100)
    r0, r1 = _shard(dm, "train", 0, 2), _shard(dm, "train", 1, 2)
    assert len(r0) == len(r1) == 5  # 501 examples each, full batches only
    i0, i1 = torch.cat(r0), torch.cat(r1)
    assert len(i0) == len(i1) == 500 and not set(i0.tolist()) & set(i1.tolist())
    assert not torch.equal(torch.cat(_shard(dm, "train", 0, 2, epoch=1)), i0)  # reshuffled per epoch
    # Evaluation: disjoint shards that together hold every example once, the same number of batches.
    v0, v1 = _shard(dm, "val", 0, 2), _shard(dm, "val", 1, 2)
    assert len(v0) == len(v1) == 6 and all(len(b) <= 100 for b in v0 + v1)
    _check_partition({"0": torch.cat(v0), "1": torch.cat(v1)}, 1001)


def test_single_device_batches() -> None:
    dm = Toy2D.build(num_train=1000, num_val=250, num_test=10, batch_size=300, eval_batch_size=100)
    train = _shard(dm, "train", 0, 1)
    assert [len(b) for b in train] == [300, 300, 300]  # the remainder is dropped
    assert [len(b) for b in _shard(dm, "val", 0, 1)] == [100, 100, 50]  # the last partial batch is kept
    assert torch.equal(torch.cat(train), torch.cat(_shard(dm, "train", 0, 1)))  # (seed, epoch) fixes the order
    x, y = next(iter(dm.val_dataloader()))
    assert torch.equal(x, dm.split_tensors("val")[0][:100]) and y.dtype == torch.int64


def test_batch_transform_stream_depends_on_epoch_and_rank() -> None:
    from dgmrun.data.datamodule import DeviceBatches

    def noise(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return torch.rand(x.shape, generator=generator)  # shows the generator's stream, not the data

    def first_batch(state: RunState) -> torch.Tensor:
        batches = DeviceBatches(torch.zeros(64, 2), torch.zeros(64, dtype=torch.long), 16, train=True, seed=0,
                                state=lambda: state, transform=noise)
        return next(iter(batches))[0]

    a = first_batch(RunState(0, 0, 1))
    assert torch.equal(a, first_batch(RunState(0, 0, 1)))
    assert not torch.equal(a, first_batch(RunState(1, 0, 1)))
    assert not torch.equal(first_batch(RunState(0, 0, 2)), first_batch(RunState(0, 1, 2)))


def test_lightning_fit_uses_device_batches() -> None:
    import lightning.pytorch as pl

    class Probe(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)
            self.first = []

        def training_step(self, batch, batch_idx):
            x, y = batch
            if batch_idx == 0:
                self.first.append(x[0].clone())
            return self.layer(x).pow(2).mean()

        def validation_step(self, batch, batch_idx) -> None:
            pass

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    dm, model = Toy2D.build(num_train=512, num_val=64, num_test=64, batch_size=128), Probe()
    trainer = pl.Trainer(
        max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 8 and not torch.equal(model.first[0], model.first[1])


# ------------------------------------------------------------------------------------------- toy2d
def test_toy2d_shapes_modes_and_labels() -> None:
    dm = Toy2D.build(shape="8gaussians", num_train=2000, num_val=100, num_test=300, seed=0)
    assert dm.info == DataInfo("toy2d", (2,), 8, None)
    x, y = dm.split_tensors("train")
    assert x.shape == (2000, 2) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert dm.split_tensors("val")[0].shape == (100, 2) and dm.split_tensors("test")[0].shape == (300, 2)
    assert ((x.norm(dim=1) - 2).abs() < 0.2).all()
    centers, std = dm.modes()
    assert std == 0.02 and centers.shape == (8, 2)
    assert ((x - centers[y]).norm(dim=1) < 3 * std * 2).all()  # each point sits at its labelled center
    assert torch.bincount(y, minlength=8).min() > 150  # all components drawn
    assert not torch.equal(x[:100], dm.split_tensors("val")[0])  # splits from different generators
    assert torch.equal(x, Toy2D.build(num_train=2000, num_val=100, num_test=300, seed=0).split_tensors("train")[0])
    assert not torch.equal(x, Toy2D.build(num_train=2000, num_val=100, num_test=300, seed=1).split_tensors("train")[0])

    grid = Toy2D.build(shape="25gaussians", num_train=2000, noise=0.01)
    x, y = grid.split_tensors("train")
    centers, std = grid.modes()
    assert grid.info.num_classes == 25 and std == 0.01 and set(centers.unique().tolist()) == {-4.0, -2.0, 0.0, 2.0, 4.0}
    assert torch.equal(torch.cdist(x, centers).argmin(dim=1), y)

    for shape in ("swissroll", "moons", "rings"):
        dm = Toy2D.build(shape=shape, num_train=1000)
        x, y = dm.split_tensors("train")
        assert dm.info.num_classes == 0 and len(dm.modes()[0]) == 0
        assert x.shape == (1000, 2) and (y == -1).all() and x.abs().max() < 4
    r = Toy2D.build(shape="rings", num_train=1000, noise=0.0).split_tensors("train")[0].norm(dim=1)
    radii = torch.tensor(readers.RING_RADII)
    assert torch.allclose(r, radii[(r[:, None] - radii).abs().argmin(dim=1)], atol=1e-5)  # on the circles


# ---------------------------------------------------------------------------------------- CIFAR-10
CIFAR_NAMES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
CifarBatches = dict[str, tuple[np.ndarray, list[int]]]


def _cifar_batches(n: int = 4, seed: int = 0) -> CifarBatches:
    """Random images and labels for each of the six batches."""
    rng = np.random.default_rng(seed)
    return {name: (rng.integers(0, 256, size=(n, 3072), dtype=np.uint8), rng.integers(0, 10, size=n).tolist())
            for name in CIFAR_NAMES}


def _python_batch(name: str, data: np.ndarray, labels: object, protocol: int = pickle.DEFAULT_PROTOCOL) -> bytes:
    """A batch pickled the way the official files are: a dict with a uint8 N×3072 array."""
    batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data,
             b"filenames": [f"img_{i}.png".encode() for i in range(len(data))]}
    return pickle.dumps(batch, protocol)


def _numpy1_names(blob: bytes) -> bytes:
    """A protocol-4 pickle made by numpy 2, as numpy 1 (the official files) names the array reconstructor."""
    old, new = b"\x8c\x16numpy._core.multiarray", b"\x8c\x15numpy.core.multiarray"  # (opcode, length, name)
    assert blob.count(old) == 1
    return pickletools.optimize(blob.replace(old, new))  # re-frames the shortened pickle


def _write_cifar_python(folder: Path, batches: CifarBatches, writer=_python_batch) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, (data, labels) in batches.items():
        (folder / name).write_bytes(writer(name, data, labels))


def _write_cifar_binary(folder: Path, batches: CifarBatches) -> None:
    """The binary version: per image, a label byte then the 3072 image bytes, in data_batch_<i>.bin."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, (data, labels) in batches.items():
        (folder / f"{name}.bin").write_bytes(np.column_stack([np.array(labels, dtype=np.uint8), data]).tobytes())


@pytest.mark.parametrize("subdir", ["", "cifar-10-batches-py", "cifar-10-batches-bin"])
def test_cifar10_reader_on_official_formats(tmp_path: Path, subdir: str) -> None:
    batches = _cifar_batches()
    write = _write_cifar_binary if subdir.endswith("bin") else _write_cifar_python
    write(tmp_path / subdir, batches)
    splits = readers.read_cifar10(tmp_path)  # root above the archive's folder works too
    x, y = splits["train"]
    assert x.shape == (20, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert y.tolist() == [label for name in CIFAR_NAMES[:5] for label in batches[name][1]]
    # Row-major channel, height, width: pixel (c, h, w) of image i is data[i, c*1024 + h*32 + w].
    d = batches["data_batch_2"][0]
    assert x[4, 2, 5, 7] == d[0, 2 * 1024 + 5 * 32 + 7] and x[5, 0, 31, 0] == d[1, 31 * 32]
    assert torch.equal(splits["test"][0].flatten(1), torch.from_numpy(batches["test_batch"][0]))

    dm = CIFAR10.build(name="cifar10", root=str(tmp_path / subdir), val_fraction=0.25)
    assert dm.info == DataInfo("cifar10", (3, 32, 32), 10, 256)
    assert len(dm.split_tensors("val")[0]) == 5 and len(dm.split_tensors("test")[0]) == 4
    assert torch.allclose(dm.split_tensors("test")[0], splits["test"][0].float() / 255)


@pytest.mark.parametrize("writer", [
    _python_batch,
    lambda name, data, labels: _python_batch(name, data, labels, protocol=5),  # numpy's out-of-band-ready form
    lambda name, data, labels: _numpy1_names(_python_batch(name, data, labels, protocol=4)),
], ids=["default-protocol", "protocol-5", "numpy-1-names"])
def test_cifar10_python_and_binary_batches_read_identically(tmp_path: Path, writer) -> None:
    batches = _cifar_batches()
    _write_cifar_python(tmp_path / "py", batches, writer)
    _write_cifar_binary(tmp_path / "bin", batches)
    from_python, from_binary = readers.read_cifar10(tmp_path / "py"), readers.read_cifar10(tmp_path / "bin")
    for split in ("train", "test"):
        assert torch.equal(from_python[split][0], from_binary[split][0])
        assert torch.equal(from_python[split][1], from_binary[split][1])


def test_cifar10_prefers_the_binary_version(tmp_path: Path) -> None:
    _write_cifar_python(tmp_path / "cifar-10-batches-py", _cifar_batches(seed=0))
    _write_cifar_binary(tmp_path / "cifar-10-batches-bin", binary := _cifar_batches(seed=1))
    assert torch.equal(readers.read_cifar10(tmp_path)["test"][0].flatten(1), torch.from_numpy(binary["test_batch"][0]))
    # An incomplete binary version is passed over for a complete python one.
    (tmp_path / "cifar-10-batches-bin" / "data_batch_4.bin").unlink()
    python = readers.read_cifar10(tmp_path)["test"][0].flatten(1)
    assert torch.equal(python, torch.from_numpy(_cifar_batches(seed=0)["test_batch"][0]))


def test_cifar10_missing_names_every_path_of_both_versions(tmp_path: Path) -> None:
    with pytest.raises(DgmrunError) as err:
        readers.read_cifar10(tmp_path)
    msg = str(err.value)
    assert "www.cs.toronto.edu/~kriz/cifar.html" in msg and "binary or python version" in msg
    assert "data.root=PATH" in msg and "\n" not in msg
    for name in CIFAR_NAMES:
        for path in (tmp_path / name, tmp_path / "cifar-10-batches-py" / name, tmp_path / f"{name}.bin",
                     tmp_path / "cifar-10-batches-bin" / f"{name}.bin"):
            assert f"{path};" in msg or f"{path}." in msg
    assert "6 of 6 files of the binary version and 6 of 6 files of the python version are missing" in msg


def test_cifar10_truncated_and_foreign_batches(tmp_path: Path) -> None:
    batches = _cifar_batches()
    _write_cifar_python(tmp_path / "py", batches)
    bad = tmp_path / "py" / "data_batch_3"
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(DgmrunError, match="truncated or not a CIFAR-10 python batch") as err:
        readers.read_cifar10(tmp_path / "py")
    assert str(bad) in str(err.value)

    _write_cifar_binary(tmp_path / "bin", batches)
    bad = tmp_path / "bin" / "test_batch.bin"
    bad.write_bytes(bad.read_bytes()[:-10])
    with pytest.raises(DgmrunError) as err:
        readers.read_cifar10(tmp_path / "bin")
    assert str(err.value) == (f"{bad} is truncated or not a CIFAR-10 binary batch: its {4 * 3073 - 10} bytes are not "
                              "a whole number of 3073-byte records (1 label byte + 3072 image bytes); download it again")
    records = np.zeros((2, 3073), dtype=np.uint8)
    records[1, 0] = 10
    bad.write_bytes(records.tobytes())
    with pytest.raises(DgmrunError, match="labels span 0..10, not 0..9"):
        readers.read_cifar10(tmp_path / "bin")


class _CreatesFile:
    """Unpickling this opens (and so creates) ``path``: what a crafted batch could do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


class _RunsShell(_CreatesFile):
    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def _write_malicious_cifar(root: Path, payload: type[_CreatesFile]) -> Path:
    """Every batch a proper one except data_batch_1, whose labels are the payload; returns its marker file."""
    marker = root.parent / f"{root.name}-was-here"
    batches = _cifar_batches()
    _write_cifar_python(root, batches)
    data = batches["data_batch_1"][0]
    (root / "data_batch_1").write_bytes(_python_batch("data_batch_1", data, payload(marker)))
    return marker


@pytest.mark.parametrize("payload, refused", [(_CreatesFile, f"{open.__module__}.open"),  # io.open
                                             (_RunsShell, f"{os.system.__module__}.system")])  # posix.system
def test_cifar10_batch_that_runs_code_is_refused(tmp_path: Path, payload: type[_CreatesFile], refused: str) -> None:
    marker = _write_malicious_cifar(tmp_path / "cifar", payload)
    pickle.loads((tmp_path / "cifar" / "data_batch_1").read_bytes())  # shows the payload works when unpickled
    assert marker.exists()
    marker.unlink()
    with pytest.raises(DgmrunError) as err:
        readers.read_cifar10(tmp_path / "cifar")
    batch = tmp_path / "cifar" / "data_batch_1"
    assert str(err.value) == (f"refusing to load {batch}: it asks to run {refused}; a CIFAR-10 batch holds only "
                              "arrays, lists and strings")
    assert not marker.exists()


@pytest.mark.slow
def test_cli_refuses_a_cifar10_batch_that_runs_code(tmp_path: Path) -> None:
    marker = _write_malicious_cifar(tmp_path / "cifar", _CreatesFile)
    out = run_dgmrun("data=cifar10", f"data.root={tmp_path / 'cifar'}", "trainer=debug", cwd=tmp_path)
    assert out.returncode != 0 and "Traceback" not in out.stderr + out.stdout
    errors = [line for line in out.stderr.splitlines() if "error" in line.lower()]
    assert errors == [f"dgmrun: error: refusing to load {tmp_path / 'cifar' / 'data_batch_1'}: it asks to run "
                      f"{open.__module__}.open; a CIFAR-10 batch holds only arrays, lists and strings"], out.stderr
    assert not marker.exists()


# ------------------------------------------------------------------------------------ image folder
def _stripes(path: Path, width: int = 40, height: int = 20) -> None:
    """Red outer quarters, green middle half: a centre crop of the shorter side is all green."""
    arr = np.zeros((height, width, 3), dtype=np.uint8)
    arr[:, :] = (255, 0, 0)
    arr[:, width // 4 : 3 * width // 4] = (0, 255, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_image_folder_reader_crop_and_range(tmp_path: Path) -> None:
    _stripes(tmp_path / "a.png")
    x = readers.load_image(tmp_path / "a.png", image_size=20, channels=3)
    assert x.shape == (3, 20, 20) and x.dtype == torch.uint8
    assert (x[1] == 255).all() and (x[0] == 0).all()  # only the green middle survives the crop
    small = readers.load_image(tmp_path / "a.png", image_size=8, channels=1)
    assert small.shape == (1, 8, 8)

    _stripes(tmp_path / "sub" / "deeper" / "b.PNG", 20, 40)
    Image.new("RGB", (30, 30), (0, 0, 255)).save(tmp_path / "sub" / "c.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    files = readers.list_images(tmp_path)
    assert [p.name for p in files] == ["a.png", "c.jpg", "b.PNG"]  # sorted by path, recursive

    # (fractions of 3 images that round to none: every image is a training image)
    dm = ImageFolder.build(root=str(tmp_path), image_size=16, channels=3, val_fraction=0.1, test_fraction=0.1,
                           batch_size=2, num_workers=0)
    assert dm.info == DataInfo("image_folder", (3, 16, 16), 0, 256)
    xb, yb = next(iter(dm.train_dataloader()))
    assert xb.shape == (2, 3, 16, 16) and xb.dtype == torch.float32 and (yb == -1).all()
    x, y = dm.split_tensors("train")
    assert x.shape == (3, 3, 16, 16) and 0 <= x.min() and x.max() <= 1 and x.max() == 1


def test_image_folder_splits_and_binarization(tmp_path: Path) -> None:
    for i in range(10):
        Image.fromarray(np.full((12, 12), 25 * i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
    kw = dict(root=str(tmp_path), image_size=12, channels=1, val_fraction=0.2, test_fraction=0.2, num_workers=0)
    dm = ImageFolder.build(binarize="dynamic", seed=0, **kw)
    dm.load()
    _check_partition(dm.split_indices, 10)
    assert dm.info.levels == 2 and {k: len(v) for k, v in dm.split_indices.items()} == {"train": 6, "val": 2, "test": 2}
    test = dm.split_tensors("test")[0]
    assert set(test.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(test, ImageFolder.build(binarize="dynamic", seed=5, **kw).split_tensors("test")[0])
    assert dm.split_tensors("train")[0].unique().numel() > 2  # grey levels under dynamic binarization


def test_image_folder_empty_names_folder_and_extensions(tmp_path: Path) -> None:
    with pytest.raises(DgmrunError) as err:
        ImageFolder.build(root=str(tmp_path)).load()
    assert str(tmp_path) in str(err.value) and ".png" in str(err.value) and ".jpeg" in str(err.value)


def _folder_with_unreadable_image(root: Path) -> Path:
    for i in range(6):
        _stripes(root / f"{i}.png", 12, 12)
    bad = root / "3.png"
    bad.write_bytes(b"not a PNG: the download was cut short")
    return bad


def test_image_folder_unreadable_image_same_message_with_workers(tmp_path: Path) -> None:
    bad = _folder_with_unreadable_image(tmp_path)
    messages = []
    for workers in (0, 2):
        dm = ImageFolder.build(root=str(tmp_path), image_size=8, val_fraction=0.05, test_fraction=0.05, batch_size=6,
                               num_workers=workers)  # (fractions of 6 images that round to none)
        for read in (lambda: next(iter(dm.train_dataloader())), lambda: dm.split_tensors("train")):
            with pytest.raises(DgmrunError) as err:
                read()
            messages.append(str(err.value))
    assert messages[0].startswith(f"cannot read image {bad}: ") and "\n" not in messages[0]
    assert messages == [messages[0]] * 4  # a worker's error reads as the error itself, not its traceback


@pytest.mark.slow
def test_cli_unreadable_image_same_one_line_with_and_without_workers(tmp_path: Path) -> None:
    bad = _folder_with_unreadable_image(tmp_path / "images")
    errors = []
    for workers in (0, 2):
        out = run_dgmrun("data=image_folder", f"data.root={tmp_path / 'images'}", "data.image_size=8",
                         "data.batch_size=8", f"data.num_workers={workers}", "trainer=debug", cwd=tmp_path)
        assert out.returncode != 0 and "Traceback" not in out.stderr + out.stdout
        errors.append([line for line in out.stderr.splitlines() if "error" in line.lower()])
    assert errors[0] == errors[1] and len(errors[0]) == 1, errors
    assert errors[0][0].startswith(f"dgmrun: error: cannot read image {bad}: ")


# ------------------------------------------------------------------------------------------ digits
def test_digits_grid_and_levels() -> None:
    dm = Digits.build(binarize="none")
    assert dm.info == DataInfo("digits", (1, 8, 8), 10, 17)
    x, y = dm.split_tensors("train")
    assert x.shape[1:] == (1, 8, 8) and x.dtype == torch.float32 and y.max() == 9
    assert torch.equal(x * 16, (x * 16).round()) and x.min() == 0 and x.max() == 1
    assert Digits.build(binarize="dynamic").info.levels == 2


# -------------------------------------------------------------------------------- configs, imports
@pytest.mark.parametrize("name", ["digits", "mnist", "fashion_mnist", "kmnist", "cifar10", "image_folder", "toy2d"])
def test_config_instantiates(name: str, tmp_path: Path) -> None:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from dgmrun.schema import declared_data
    from tests.conftest import compose_config

    data = OmegaConf.to_container(compose_config([f"data={name}", "seed=7", f"paths.data_dir={tmp_path}"]).data,
                                  resolve=True)
    if data.get("binarize") == "auto":  # the model's choice, made by the config check before the loader sees it
        data["binarize"] = "none"
    dm = instantiate(declared_data(data))
    assert dm.name == name and dm.seed == 7
    if hasattr(dm, "root"):
        assert dm.root.startswith(str(tmp_path))


def test_data_package_does_not_import_torch() -> None:
    code = "import sys, dgmrun.data.info; assert not {'torch', 'lightning'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
