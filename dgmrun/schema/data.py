"""Typed configs of the datasets (``conf/data/*.yaml``), and what each gives, known without reading files."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from omegaconf import MISSING

from dgmrun.data.info import DataInfo
from dgmrun.schema.base import one_of, require, require_finite, require_sizes

BINARIZE = ("auto", "none", "static", "dynamic")  # auto: the model decides (ModelConfig.binarize_auto)


@dataclass
class DataConfig:
    _target_: str = MISSING
    name: str = MISSING
    batch_size: int = MISSING
    eval_batch_size: int = 500
    seed: int = 0
    val_fraction: float = 0.1

    def check(self) -> None:
        require_finite(self, "data")
        require_sizes("data.batch_size", self.batch_size)
        require_sizes("data.eval_batch_size", self.eval_batch_size)
        require(0 < self.val_fraction < 1, f"data.val_fraction must be in (0, 1), got {self.val_fraction}")

    def info(self) -> DataInfo:
        """What the data will look like, known from the config alone (no files read)."""
        raise NotImplementedError


@dataclass
class ImageDataConfig(DataConfig):
    root: str = MISSING
    binarize: str = "none"

    def check(self) -> None:
        super().check()
        one_of("data.binarize", self.binarize, BINARIZE)

    # (shape, num_classes, levels) of the raw images, per dataset name
    KNOWN = {
        "mnist": ((1, 28, 28), 10, 256), "fashion_mnist": ((1, 28, 28), 10, 256), "kmnist": ((1, 28, 28), 10, 256),
        "cifar10": ((3, 32, 32), 10, 256), "digits": ((1, 8, 8), 10, 17),
    }

    def info(self) -> DataInfo:
        shape, num_classes, levels = self.KNOWN[self.name]
        return DataInfo(self.name, shape, num_classes, 2 if self.binarize != "none" else levels)


@dataclass
class DigitsConfig(ImageDataConfig):
    root: str = ""
    test_fraction: float = 0.2

    def check(self) -> None:
        super().check()
        require(0 < self.test_fraction < 1, f"data.test_fraction must be in (0, 1), got {self.test_fraction}")
        require(self.val_fraction + self.test_fraction < 1,
                f"data.val_fraction + data.test_fraction must leave some training data (sum < 1), got "
                f"{self.val_fraction} + {self.test_fraction}")


MAX_IMAGE_SIZE = 4096  # a batch of 128 RGB images of 4096 x 4096 px is 6 GiB already


@dataclass
class ImageFolderConfig(DigitsConfig):
    root: str = MISSING
    image_size: int = 64
    channels: int = 3
    num_workers: int = 2
    test_fraction: float = 0.1

    def check(self) -> None:
        super().check()
        require(0 < self.image_size <= MAX_IMAGE_SIZE,
                f"data.image_size must be in [1, {MAX_IMAGE_SIZE}] pixels, got {self.image_size}")
        require(self.channels in (1, 3), f"data.channels must be 1 or 3, got {self.channels}")
        require(self.num_workers >= 0, f"data.num_workers must be >= 0, got {self.num_workers}")

    def info(self) -> DataInfo:
        shape = (self.channels, self.image_size, self.image_size)
        return DataInfo(self.name, shape, 0, 2 if self.binarize != "none" else 256)


TOY2D_SHAPES = ("8gaussians", "25gaussians", "swissroll", "moons", "rings")


@dataclass
class Toy2DConfig(DataConfig):
    shape: str = "8gaussians"
    num_train: Optional[int] = None  # None: the shape's default (readers.TOY2D_NUM_TRAIN)
    num_val: int = 2500
    num_test: int = 2500
    noise: Optional[float] = None

    def check(self) -> None:
        super().check()
        one_of("data.shape", self.shape, TOY2D_SHAPES)
        for key in ("num_train", "num_val", "num_test"):
            value = getattr(self, key)
            require(value is None or value > 0, f"data.{key} must be > 0, got {value}")
        require(self.noise is None or self.noise >= 0, f"data.noise must be >= 0, got {self.noise}")

    def info(self) -> DataInfo:
        components = {"8gaussians": 8, "25gaussians": 25}.get(self.shape, 0)
        return DataInfo("toy2d", (2,), components, None)


DATA_SCHEMAS: dict[str, type[DataConfig]] = {
    "dgmrun.data.datamodule.Digits": DigitsConfig,
    "dgmrun.data.datamodule.MNISTLike": ImageDataConfig,
    "dgmrun.data.datamodule.CIFAR10": ImageDataConfig,
    "dgmrun.data.datamodule.ImageFolder": ImageFolderConfig,
    "dgmrun.data.datamodule.Toy2D": Toy2DConfig,
}


