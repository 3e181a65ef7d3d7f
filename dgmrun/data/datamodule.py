"""LightningDataModules: every dataset as (x, y) batches; x float32, y int64 (-1 when unlabelled).

Images are in [0, 1] with shape (N, C, H, W); toy2d points are (N, 2). The in-memory sets live on the
training device and are sliced there (``DeviceBatches``): no DataLoader, no workers, no host-to-device
copy per step. Only ``ImageFolder`` decodes files on the fly through a DataLoader.

Randomness is derived from the run ``seed`` with ``derive_seed(seed, purpose, ...)`` so that every
purpose (split, shuffle of epoch e, binarization, ...) has its own stream, and each is reproducible on
its own (e.g. the order of epoch e after resuming from a checkpoint).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, default_collate, get_worker_info

from dgmrun.data import readers
from dgmrun.data.info import DataInfo
from dgmrun.errors import DgmrunError
from dgmrun.schema import declared_data
from dgmrun.schema.data import IMAGE_DATASETS, TOY2D_MODES

Batch = tuple[Tensor, Tensor]
SPLITS = ("train", "val", "test")
# Seeds what must not depend on the run seed: the one Bernoulli draw of validation/test data under
# dynamic binarization, the test images of sets without an official test split, and the reference side
# of the sample metrics. Test NLLs (and FIDs) of runs with different seeds are then measured on
# identical data and can be compared.
EVAL_SEED = 20240601


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from a tuple of ints and strings: an independent stream per (seed, purpose, ...)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def bernoulli(x: Tensor, seed: int) -> Tensor:
    """x ~ Bernoulli(x), drawn reproducibly from ``seed``."""
    return torch.bernoulli(x, generator=make_generator(seed, x.device))


def fixed_binarization_seed(mode: str, seed: int, evaluating: bool) -> int | None:
    """Seed of the fixed Bernoulli draw of an example, or None: used as is (``none``) or redrawn per batch
    (``dynamic`` training data). Combine it with an example's identity so each example has its own draw."""
    if mode == "static":
        return derive_seed(seed, "static")
    if mode == "dynamic" and evaluating:
        return derive_seed(EVAL_SEED, "binarize")
    return None


def carve(indices: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """(rest, carved): round(fraction * n) of the indices picked at random; both sorted."""
    perm = indices[torch.randperm(len(indices), generator=make_generator(seed))]
    k = round(fraction * len(indices))
    return perm[k:].sort().values, perm[:k].sort().values


def split_indices(n: int, seed: int, val_fraction: float, test_fraction: float = 0.0) -> dict[str, Tensor]:
    """Disjoint train/val/test indices covering range(n). The test part is drawn with EVAL_SEED (the
    same for every run), the validation part from the rest with the run seed."""
    rest, test = carve(torch.arange(n), test_fraction, derive_seed(EVAL_SEED, "test"))
    train, val = carve(rest, val_fraction, derive_seed(seed, "val"))
    return {"train": train, "val": val, "test": test}


def _to_unit(x: Tensor) -> Tensor:
    """uint8 images to float32 in [0, 1]; float images (already in [0, 1]) pass through."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


class RunState(NamedTuple):
    """What batching reads from the trainer: the epoch (for the shuffle) and the DDP rank and size."""

    epoch: int = 0
    rank: int = 0
    world_size: int = 1


class BatchOrder:
    """Which examples each batch of an epoch takes, and where in that order an iteration stands.

    Training (``train=True``): each epoch a permutation from a generator seeded by (seed, epoch), the
    same on every rank; rank r takes ``perm[r::world_size]``, cut so all ranks hold the same number of
    examples, in full batches only (the remainder is dropped, so all ranks take the same number of
    steps; a rank with fewer examples than a batch gets one short batch rather than none).

    Evaluation (``train=False``): in order, every example exactly once, no padding. On one device,
    batches of ``batch_size`` with a short last batch. Under DDP, rank r takes ``arange(n)[r::world_size]``
    (shards differ in length by at most one) cut into the same number of batches on every rank, so the
    ranks stay in step; batches then hold at most ``batch_size`` examples.

    The state (epoch, rank, world size) is read when an iteration starts, from ``state()``.
    ``state_dict()`` is the position in the epoch's order (Lightning saves it with every checkpoint);
    after ``load_state_dict``, the next iteration of that epoch starts where it stood, so a run resumed
    from a mid-epoch checkpoint sees the batches (and binarization draws) the uninterrupted run saw.
    """

    def __init__(self, n: int, batch_size: int, *, train: bool, seed: int,
                 state: Callable[[], RunState] = RunState) -> None:
        self.n, self.batch_size, self.train, self.seed, self.state = n, batch_size, train, seed, state
        self._position = (0, 0)  # (epoch, batches yielded) of the current iteration
        self._resume_at: tuple[int, int] | None = None

    def num_batches(self, st: RunState) -> int:
        n, bs = self.n, self.batch_size
        if self.train:
            per_rank = n // st.world_size
            return max(per_rank // bs, min(per_rank, 1))
        return math.ceil(math.ceil(n / st.world_size) / bs)

    def batch_indices(self, st: RunState) -> list[Tensor]:
        """The (CPU) index tensors of this rank's batches, in order."""
        n, bs, k = self.n, self.batch_size, self.num_batches(st)
        if self.train:
            perm = torch.randperm(n, generator=make_generator(derive_seed(self.seed, "shuffle", st.epoch)))
            shard = perm[st.rank :: st.world_size][: n // st.world_size]
            return [shard[i * bs : (i + 1) * bs] for i in range(k)]
        shard = torch.arange(st.rank, n, st.world_size)
        if k == 0:
            return []
        return list(shard.split(bs)) if st.world_size == 1 else list(torch.tensor_split(shard, k))

    def state_dict(self) -> dict[str, int]:
        epoch, batches = self._position
        return {"epoch": epoch, "batches": batches}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self._resume_at = (int(state_dict["epoch"]), int(state_dict["batches"]))

    def start(self) -> tuple[RunState, int]:
        """Begin an iteration: (the run state, the number of leading batches to skip to resume)."""
        st = self.state()
        resume_at, self._resume_at = self._resume_at, None
        skip = resume_at[1] if resume_at is not None and resume_at[0] == st.epoch else 0
        self._position = (st.epoch, skip)
        return st, skip

    def advance(self, epoch: int, batches: int) -> None:
        self._position = (epoch, batches)

    def transform_generator(self, st: RunState, *parts: object, device: torch.device | str = "cpu") -> torch.Generator:
        """The generator of a training transform (dynamic binarization) of this epoch and rank."""
        return make_generator(derive_seed(self.seed, "transform", st.epoch, st.rank, *parts), device)


class DeviceBatches(BatchOrder):
    """(x, y) batches sliced from tensors that already sit on the training device, in ``BatchOrder``.
    ``transform(x, generator)`` runs on each training batch, on the device, with a generator seeded by
    (seed, epoch, rank): dynamic binarization."""

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        batch_size: int,
        *,
        train: bool,
        seed: int,
        state: Callable[[], RunState] = RunState,
        transform: Callable[[Tensor, torch.Generator], Tensor] | None = None,
    ) -> None:
        super().__init__(len(x), batch_size, train=train, seed=seed, state=state)
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return self.num_batches(self.state())

    def __iter__(self) -> Iterator[Batch]:
        st, skip = self.start()
        device = self.x.device
        generator = self.transform_generator(st, device=device) if self.transform is not None else None
        for i, idx in enumerate(self.batch_indices(st)):
            if i < skip and self.transform is None:
                continue
            idx = idx.to(device)
            xb = self.x[idx]
            if self.transform is not None:
                xb = self.transform(xb, generator)  # also on skipped batches: the generator stays in step
            if i >= skip:
                self.advance(st.epoch, i + 1)
                yield xb, self.y[idx]


class Grouped:
    """``trainer.steps_per_execution``: ``k`` consecutive training batches of ``batches`` stacked into one
    (k x batch x ...) batch, which the model steps on one by one (``GenerativeModel.execute_steps``); the
    epoch's last group may hold fewer. The position checkpoints save stays that of ``batches``, in batches."""

    def __init__(self, batches: Iterable[Batch], k: int) -> None:
        self.batches, self.k = batches, k

    @property
    def num_updates(self) -> int:
        return len(self.batches)

    def __len__(self) -> int:
        return math.ceil(self.num_updates / self.k)

    def __iter__(self) -> Iterator[Batch]:
        group: list[Batch] = []
        for batch in self.batches:
            group.append(batch)
            if len(group) == self.k:
                yield self._stack(group)
                group = []
        if group:
            yield self._stack(group)

    @staticmethod
    def _stack(group: list[Batch]) -> Batch:
        return torch.stack([x for x, _ in group]), torch.stack([y for _, y in group])


def _dynamic_binarize(x: Tensor, generator: torch.Generator) -> Tensor:
    return torch.bernoulli(x, generator=generator)


class BaseDataModule(LightningDataModule):
    """What every dataset shares: batch sizes, seed, the cached ``load()`` and ``info``, the run state.

    The settings are declared in ``dgmrun.schema.data`` (defaults, types, ranges); the constructors take
    them all, checked, as the command line or ``Dataset.build(**settings)`` gives them."""

    def __init__(self, name: str, batch_size: int, eval_batch_size: int, seed: int) -> None:
        super().__init__()
        self.name = name
        self.batch_size, self.eval_batch_size, self.seed = batch_size, eval_batch_size, seed
        self._info: DataInfo | None = None
        self._train_batches: BatchOrder | None = None
        self.steps_per_execution = 1  # trainer.steps_per_execution, set by dgmrun.callbacks.StepsPerExecution
        self._train_position: dict[str, int] | None = None  # restored from a checkpoint, for the next train loader

    @classmethod
    def build(cls, **settings: Any) -> "BaseDataModule":
        """This dataset as the command line builds it: the settings not given take their declared defaults,
        and all are checked (``data.binarize`` must be none, static or dynamic)."""
        from hydra.utils import instantiate

        return instantiate(declared_data({"_target_": f"{cls.__module__}.{cls.__qualname__}", **settings}))

    # The position in the training order goes into checkpoints twice: Lightning saves the loader's own
    # state, but restores it only into a loader it builds after the checkpoint is read, and a model whose
    # configure_optimizers asks for trainer.estimated_stepping_batches has it built before. The
    # data module's state is restored in either case.
    def state_dict(self) -> dict[str, dict[str, int]]:
        return {"train_position": self._train_batches.state_dict()} if self._train_batches is not None else {}

    def load_state_dict(self, state_dict: dict[str, dict[str, int]]) -> None:
        position = state_dict.get("train_position")
        if position is not None and self._train_batches is not None:
            self._train_batches.load_state_dict(position)
        else:
            self._train_position = position

    def _track(self, batches: BatchOrder) -> None:
        """``batches`` is the training order whose position checkpoints save (and a restored one applies to)."""
        if self._train_position is not None:
            batches.load_state_dict(self._train_position)
            self._train_position = None
        self._train_batches = batches

    def _load(self) -> DataInfo:
        """Read the data (on the CPU) and describe it; called once."""
        raise NotImplementedError

    def load(self) -> None:
        """Read everything on the CPU; idempotent (the data is cached)."""
        if self._info is None:
            self._info = self._load()

    @property
    def info(self) -> DataInfo:
        self.load()
        assert self._info is not None
        return self._info

    def run_state(self) -> RunState:
        trainer = self.trainer
        if trainer is None:
            return RunState()
        return RunState(trainer.current_epoch, trainer.global_rank, trainer.world_size)

    def setup(self, stage: str | None = None) -> None:
        self.load()

    def _loader(self, split: str) -> Iterable[Batch]:
        raise NotImplementedError

    def train_dataloader(self) -> Iterable[Batch]:
        batches = self._loader("train")
        return batches if self.steps_per_execution == 1 else Grouped(batches, self.steps_per_execution)

    def val_dataloader(self) -> Iterable[Batch]:
        return self._loader("val")

    def test_dataloader(self) -> Iterable[Batch]:
        return self._loader("test")

    def _split_tensors(self, split: str) -> Batch:
        raise NotImplementedError

    def modes(self) -> tuple[Tensor, float]:
        """The centres (K×D) and standard deviation of the mixture the data are drawn from: none but toy2d's."""
        return torch.empty(0, 2), 0.0

    def split_tensors(self, split: str) -> Batch:
        """CPU (x, y) of "train", "val" or "test" (reference data for metrics). Val and test are
        binarized as the model sees them; under dynamic binarization "train" holds the grey levels
        (the Bernoulli means)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
        self.load()
        return self._split_tensors(split)


class ImageOptions:
    """Options shared by the in-memory image sets and ImageFolder: the split and the binarization."""

    binarize: str
    split_indices: dict[str, Tensor]

    def _set_image_options(self, val_fraction: float, test_fraction: float, binarize: str) -> None:
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.binarize = binarize
        self.split_indices = {}  # each split's indices into its pool of images

    def _levels(self, raw_levels: int) -> int:
        return 2 if self.binarize != "none" else raw_levels


class InMemoryDataModule(BaseDataModule):
    """Sets small enough to hold whole on the device: ``_load`` fills ``self._cpu[split] = (x, y)``."""

    # Applied to each training batch on the device, e.g. dynamic binarization.
    train_transform: Callable[[Tensor, torch.Generator], Tensor] | None = None

    def __init__(self, name: str, batch_size: int, eval_batch_size: int, seed: int) -> None:
        super().__init__(name, batch_size, eval_batch_size, seed)
        self._cpu: dict[str, Batch] = {}
        self._on_device: dict[str, Batch] = {}

    def setup(self, stage: str | None = None) -> None:
        self.load()
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        if not self._on_device or self._on_device["train"][0].device != device:
            self._on_device = {s: (x.to(device), y.to(device)) for s, (x, y) in self._cpu.items()}

    def _loader(self, split: str) -> DeviceBatches:
        if not self._on_device:  # used outside a Trainer
            self.setup()
        x, y = self._on_device[split]
        train = split == "train"
        batches = DeviceBatches(
            x,
            y,
            self.batch_size if train else self.eval_batch_size,
            train=train,
            seed=self.seed,
            state=self.run_state,
            transform=self.train_transform if train else None,
        )
        if train:
            self._track(batches)
        return batches

    def _split_tensors(self, split: str) -> Batch:
        return self._cpu[split]


class ImageDataModule(ImageOptions, InMemoryDataModule):
    """Labelled image sets held in memory. Subclasses say how to read them (``_read_pools``) and their
    grey levels; this class splits, binarizes and describes them.

    Binarization is per image, independent of the split the image lands in: ``static`` draws each image
    once from the run seed; ``dynamic`` redraws training images every batch, while validation and test
    images get one draw from EVAL_SEED, whatever the run seed.
    """

    def __init__(self, name: str, batch_size: int, eval_batch_size: int, seed: int, val_fraction: float,
                 binarize: str, test_fraction: float) -> None:
        super().__init__(name, batch_size, eval_batch_size, seed)
        # split_indices["test"] indexes the official test set when there is one, else the one pool.
        self._set_image_options(val_fraction, test_fraction, binarize)
        if binarize == "dynamic":
            self.train_transform = _dynamic_binarize

    def _read_pools(self) -> tuple[Batch, Batch | None]:
        """(training pool, official test set or None); images uint8 or float in [0, 1]."""
        raise NotImplementedError

    def _load(self) -> DataInfo:
        train_pool, test_pool = self._read_pools()
        self.split_indices = split_indices(len(train_pool[0]), self.seed, self.val_fraction, self.test_fraction)
        pools, source = {"train": train_pool}, {"train": "train", "val": "train", "test": "train"}
        if test_pool is not None:
            pools["test"], source["test"] = test_pool, "test"
            self.split_indices["test"] = torch.arange(len(test_pool[0]))
        views: dict[tuple[str, bool], Tensor] = {}  # (pool, evaluating) -> the images as the model sees them
        for split in SPLITS:
            key = (source[split], split != "train")
            if key not in views:
                x = _to_unit(pools[key[0]][0])
                seed = fixed_binarization_seed(self.binarize, self.seed, key[1])
                views[key] = x if seed is None else bernoulli(x, derive_seed(seed, key[0]))
            idx = self.split_indices[split]
            self._cpu[split] = (views[key][idx], pools[key[0]][1][idx].long())
        shape, num_classes, levels = IMAGE_DATASETS[self.name]
        read = tuple(self._cpu["train"][0].shape[1:])
        if read != shape:
            raise DgmrunError(f"data {self.name}: the files hold images of shape {read}, not {shape}")
        return DataInfo(self.name, shape, num_classes, self._levels(levels))


class Digits(ImageDataModule):
    """scikit-learn's 1797 digits, 1×8×8 on the grid k/16 (levels 17), no official test split."""

    def __init__(self, *, name: str, batch_size: int, eval_batch_size: int, seed: int, val_fraction: float,
                 test_fraction: float, binarize: str) -> None:
        super().__init__(name, batch_size, eval_batch_size, seed, val_fraction, binarize, test_fraction)

    def _read_pools(self) -> tuple[Batch, Batch | None]:
        return readers.read_digits(), None


class FileImageDataModule(ImageDataModule):
    """Image sets read from official files under ``root``, with an official test split."""

    def __init__(self, *, name: str, root: str, batch_size: int, eval_batch_size: int, seed: int,
                 val_fraction: float, binarize: str) -> None:
        super().__init__(name, batch_size, eval_batch_size, seed, val_fraction, binarize, test_fraction=0.0)
        self.root = root

    def _read(self) -> dict[str, Batch]:
        raise NotImplementedError

    def _read_pools(self) -> tuple[Batch, Batch | None]:
        splits = self._read()
        return splits["train"], splits["test"]


class MNISTLike(FileImageDataModule):
    """MNIST, Fashion-MNIST or KMNIST (``name``: mnist | fashion_mnist | kmnist): 1×28×28, 10 classes."""

    def _read(self) -> dict[str, Batch]:
        return readers.read_mnist_like(self.name, self.root)


class CIFAR10(FileImageDataModule):
    """CIFAR-10 from the official binary or python batches (``readers.read_cifar10``): 3×32×32, 10 classes."""

    def _read(self) -> dict[str, Batch]:
        return readers.read_cifar10(self.root)


class Toy2D(InMemoryDataModule):
    """2-D point sets (see ``readers.sample_toy2d``); each split drawn from its own seeded generator."""

    def __init__(self, *, name: str, shape: str, num_train: int, num_val: int, num_test: int, noise: float,
                 batch_size: int, eval_batch_size: int, seed: int) -> None:
        super().__init__(name, batch_size, eval_batch_size, seed)
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.shape, self.noise = shape, noise

    def modes(self) -> tuple[Tensor, float]:
        """(centers K×2, std) of the mixture; K = 0 for shapes that are not mixtures."""
        return readers.toy2d_modes(self.shape, self.noise)

    def _load(self) -> DataInfo:
        for split, n in self.sizes.items():
            generator = make_generator(derive_seed(self.seed, "toy2d", split))
            self._cpu[split] = readers.sample_toy2d(self.shape, n, generator, self.noise)
        return DataInfo(self.name, (2,), TOY2D_MODES.get(self.shape, 0), None)


class ImageFiles(Dataset):
    """Images decoded from files on demand; ``ids`` are the images' indices in the whole folder's
    sorted list, which seed their fixed binarization (so an image's draw does not depend on its split)."""

    def __init__(
        self,
        paths: list[Path],
        ids: list[int],
        image_size: int,
        channels: int,
        binarize_seed: int | None,
    ) -> None:
        self.paths, self.ids = paths, ids
        self.image_size, self.channels = image_size, channels
        self.binarize_seed = binarize_seed

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[Tensor, int] | DgmrunError:
        j = self.ids[i]
        try:
            x = _to_unit(readers.load_image(self.paths[j], self.image_size, self.channels))
        except DgmrunError as error:  # returned, not raised: see ImageLoader
            return error
        if self.binarize_seed is not None:
            x = bernoulli(x, derive_seed(self.binarize_seed, j))
        return x, -1


def _collate_images(items: list[tuple[Tensor, int] | DgmrunError]) -> Batch | DgmrunError:
    """The batch, or the error of its first unreadable image."""
    error = next((item for item in items if isinstance(item, DgmrunError)), None)
    return error if error is not None else default_collate(items)


class ImageBatches(IterableDataset):
    """Training batches of ``files`` in ``order`` (the shuffle, sharding and resume point of the in-memory
    sets), decoded by a DataLoader's workers: worker w of W reads batches w, w + W, ... of the epoch,
    which the DataLoader yields back in order. A batch is binarized (``dynamic``) with a generator of its
    own, seeded by (seed, epoch, rank, batch): the draws, like the order, do not depend on the workers."""

    def __init__(self, files: ImageFiles, order: BatchOrder, dynamic: bool) -> None:
        self.files, self.order, self.dynamic = files, order, dynamic
        self.epoch: tuple[RunState, int] = (RunState(), 0)  # (state, batches to skip), set before workers start

    def __len__(self) -> int:
        return self.order.num_batches(self.order.state())

    def __iter__(self) -> Iterator[Batch | DgmrunError]:
        st, skip = self.epoch
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for i, idx in enumerate(self.order.batch_indices(st)):
            if i < skip or (i - skip) % workers != worker:
                continue
            batch = _collate_images([self.files[j] for j in idx.tolist()])
            if self.dynamic and not isinstance(batch, DgmrunError):
                x, y = batch
                batch = torch.bernoulli(x, generator=self.order.transform_generator(st, i)), y
            yield batch


def _as_is(batch: Batch | DgmrunError) -> Batch | DgmrunError:
    return batch


class ImageLoader(DataLoader):
    """A DataLoader of ``ImageFiles`` (with ``collate_fn=_collate_images``) or of ``ImageBatches`` that raises
    an unreadable image's DgmrunError in the main process. The error travels as the batch: raised in a
    worker, torch would re-raise it with the worker's traceback as its message, and the user would read
    that instead of one line."""

    def __iter__(self) -> Iterator[Batch]:
        batches = self.dataset if isinstance(self.dataset, ImageBatches) else None
        if batches is not None:  # before the workers start, each with a copy of the dataset
            batches.epoch = batches.order.start()
        for k, batch in enumerate(super().__iter__()):
            if isinstance(batch, DgmrunError):
                raise batch
            if batches is not None:
                st, skip = batches.epoch
                batches.order.advance(st.epoch, skip + k + 1)
            yield batch


class ImageFolder(ImageOptions, BaseDataModule):
    """Unlabelled PNG/JPEG images under ``root`` (recursively), resized and centre-cropped to
    ``image_size``; read by a DataLoader with ``num_workers`` (Lightning adds the DistributedSampler)."""

    def __init__(self, *, name: str, root: str, image_size: int, channels: int, batch_size: int, eval_batch_size: int,
                 seed: int, val_fraction: float, test_fraction: float, binarize: str, num_workers: int) -> None:
        super().__init__(name, batch_size, eval_batch_size, seed)
        self._set_image_options(val_fraction, test_fraction, binarize)
        self.root = root
        self.image_size, self.channels, self.num_workers = image_size, channels, num_workers
        self.paths: list[Path] = []

    def _load(self) -> DataInfo:
        self.paths = readers.list_images(self.root)
        self.split_indices = split_indices(len(self.paths), self.seed, self.val_fraction, self.test_fraction)
        return DataInfo(self.name, (self.channels, self.image_size, self.image_size), 0, self._levels(256))

    def _dataset(self, split: str) -> ImageFiles:
        self.load()
        seed = fixed_binarization_seed(self.binarize, self.seed, evaluating=split != "train")
        ids = self.split_indices[split].tolist()
        return ImageFiles(self.paths, ids, self.image_size, self.channels, seed)

    def _workers_generator(self) -> torch.Generator:
        """A loader draws its workers' base seed from a generator of its own: from torch's global one, which
        the models draw their noise from, it would put a resumed run out of step by a draw per iteration."""
        return make_generator(derive_seed(self.seed, "workers"))

    def _loader(self, split: str) -> DataLoader:
        dataset = self._dataset(split)
        generator = self._workers_generator()
        if split != "train":
            return ImageLoader(dataset, collate_fn=_collate_images, batch_size=self.eval_batch_size,
                               num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                               generator=generator)
        order = BatchOrder(len(dataset), self.batch_size, train=True, seed=self.seed, state=self.run_state)
        self._track(order)
        # Workers start afresh each epoch: each copies the dataset with that epoch's order and resume point.
        return ImageLoader(ImageBatches(dataset, order, dynamic=self.binarize == "dynamic"), batch_size=None,
                           collate_fn=_as_is, num_workers=self.num_workers, generator=generator)

    def _split_tensors(self, split: str) -> Batch:
        dataset = self._dataset(split)
        loader = ImageLoader(dataset, collate_fn=_collate_images, batch_size=self.eval_batch_size,
                             num_workers=self.num_workers, generator=self._workers_generator())
        batches = list(loader)
        if not batches:
            return torch.empty(0, *self.info.shape), torch.empty(0, dtype=torch.int64)
        return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])
