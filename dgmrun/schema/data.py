"""Typed configs of the datasets (``conf/data/*.yaml``), and what each gives, known without reading files."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from omegaconf import MISSING

from dgmrun.data.info import DataInfo
from dgmrun.schema.base import one_of, require, require_finite, require_sizes

BINARIZE = ("auto", "none", "static", "dynamic")  # auto: the model decides (ModelConfig.binarize_auto)
# What each image dataset gives, by data.name: (shape, classes, grey levels of the raw images). The
# datamodules describe what they read from this table.
IMAGE_DATASETS = {
    "mnist": ((1, 28, 28), 10, 256), "fashion_mnist": ((1, 28, 28), 10, 256), "kmnist": ((1, 28, 28), 10, 256),
    "cifar10": ((3, 32, 32), 10, 256), "digits": ((1, 8, 8), 10, 17),
}
MNIST_NAMES = ("mnist", "fashion_mnist", "kmnist")
# The toy2d shapes (dgmrun.data.readers.sample_toy2d) and their default Gaussian std (the components' for mixtures).
TOY2D_NOISE = {"8gaussians": 0.02, "25gaussians": 0.05, "swissroll": 0.1, "moons": 0.05, "rings": 0.05}
TOY2D_MODES = {"8gaussians": 8, "25gaussians": 25}  # mixture components; the other shapes are not mixtures
# Training-set sizes, so that one epoch count fits every shape: the default 50 epochs of batch 256 are 12,000
# batches (~90 s for the GAN), and 28,800 for the 5x5 grid, whose 25 tight modes a GAN needs longer to find.
TOY2D_NUM_TRAIN = {"25gaussians": 147_456}
TOY2D_DEFAULT_NUM_TRAIN = 61_440


@dataclass
class DataConfig:
    _target_: str = MISSING
    name: str = MISSING
    batch_size: int = 128
    eval_batch_size: int = 500
    seed: int = 0  # the options set ${seed}: the run seed

    def check(self) -> None:
        require_finite(self, "data")
        require_sizes("data.batch_size", self.batch_size)
        require_sizes("data.eval_batch_size", self.eval_batch_size)

    def info(self) -> DataInfo:
        """What the data will look like, known from the config alone (no files read)."""
        raise NotImplementedError


@dataclass
class ImageDataConfig(DataConfig):
    val_fraction: float = 0.1  # carved from the training part with the run seed; 0: no validation, train on all
    binarize: str = "auto"  # auto (the model's choice: none for GANs, GMMN, DDPM; else dynamic) | none | static | dynamic

    def check(self) -> None:
        super().check()
        require(0 <= self.val_fraction < 1, f"data.val_fraction must be in [0, 1), got {self.val_fraction}")
        one_of("data.binarize", self.binarize, BINARIZE)

    def info(self) -> DataInfo:
        shape, num_classes, levels = IMAGE_DATASETS[self.name]
        return DataInfo(self.name, shape, num_classes, 2 if self.binarize != "none" else levels)


@dataclass
class FileImageDataConfig(ImageDataConfig):
    root: str = MISSING  # the folder of the dataset's files


@dataclass
class MNISTLikeConfig(FileImageDataConfig):
    def check(self) -> None:
        super().check()
        one_of("data.name", self.name, MNIST_NAMES)


@dataclass
class CIFAR10Config(FileImageDataConfig):
    name: str = "cifar10"
    binarize: str = "none"  # the 8-bit colours (auto would binarize them for the VAE family)

    def check(self) -> None:
        super().check()
        one_of("data.name", self.name, ("cifar10",))


@dataclass
class DigitsConfig(ImageDataConfig):
    name: str = "digits"
    test_fraction: float = 0.2  # the same test images for every run seed

    def check(self) -> None:
        super().check()
        require(0 < self.test_fraction < 1, f"data.test_fraction must be in (0, 1), got {self.test_fraction}")
        require(self.val_fraction + self.test_fraction < 1,
                f"data.val_fraction + data.test_fraction must leave some training data (sum < 1), got "
                f"{self.val_fraction} + {self.test_fraction}")


MAX_IMAGE_SIZE = 4096  # a batch of 128 RGB images of 4096 x 4096 px is 6 GiB already


@dataclass
class ImageFolderConfig(DigitsConfig):
    name: str = "image_folder"  # names the evaluator cached for these images (task=train_evaluator)
    root: str = MISSING  # PNG/JPEG files under it, recursively
    image_size: int = 64  # resized and centre-cropped to image_size x image_size
    channels: int = 3  # 1: grey, 3: RGB
    num_workers: int = 2  # DataLoader workers decoding the files
    test_fraction: float = 0.1
    binarize: str = "none"

    def check(self) -> None:
        super().check()
        require(0 < self.image_size <= MAX_IMAGE_SIZE,
                f"data.image_size must be in [1, {MAX_IMAGE_SIZE}] pixels, got {self.image_size}")
        require(self.channels in (1, 3), f"data.channels must be 1 or 3, got {self.channels}")
        require(self.num_workers >= 0, f"data.num_workers must be >= 0, got {self.num_workers}")

    def info(self) -> DataInfo:
        shape = (self.channels, self.image_size, self.image_size)
        return DataInfo(self.name, shape, 0, 2 if self.binarize != "none" else 256)


TOY2D_SHAPES = tuple(TOY2D_NOISE)


@dataclass
class Toy2DConfig(DataConfig):
    name: str = "toy2d"
    batch_size: int = 256
    shape: str = "8gaussians"  # 8gaussians | 25gaussians | swissroll | moons | rings
    num_train: Optional[int] = None  # null: the shape's (TOY2D_NUM_TRAIN: 147456 for 25gaussians, else 61440)
    num_val: int = 2500
    num_test: int = 2500
    noise: Optional[float] = None  # null: the shape's default std (TOY2D_NOISE: 8gaussians 0.02, 25gaussians 0.05)

    def check(self) -> None:
        super().check()
        one_of("data.shape", self.shape, TOY2D_SHAPES)
        for key in ("num_train", "num_val", "num_test"):
            value = getattr(self, key)
            require(value is None or value > 0, f"data.{key} must be > 0, got {value}")
        require(self.noise is None or self.noise >= 0, f"data.noise must be >= 0, got {self.noise}")
        if self.num_train is None:
            self.num_train = TOY2D_NUM_TRAIN.get(self.shape, TOY2D_DEFAULT_NUM_TRAIN)
        if self.noise is None:
            self.noise = TOY2D_NOISE[self.shape]

    def info(self) -> DataInfo:
        return DataInfo(self.name, (2,), TOY2D_MODES.get(self.shape, 0), None)


DATA_SCHEMAS: dict[str, type[DataConfig]] = {
    "dgmrun.data.datamodule.Digits": DigitsConfig,
    "dgmrun.data.datamodule.MNISTLike": MNISTLikeConfig,
    "dgmrun.data.datamodule.CIFAR10": CIFAR10Config,
    "dgmrun.data.datamodule.ImageFolder": ImageFolderConfig,
    "dgmrun.data.datamodule.Toy2D": Toy2DConfig,
}


