"""What a dataset tells the models about itself (torch-free, so configs can be checked cheaply)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class DataInfo:
    """Shape and value type of one example, shared by every split of a dataset.

    Images are float tensors in [0, 1] of shape (C, H, W); with ``levels = L`` their values lie on the
    grid k / (L - 1), k = 0..L-1 (L = 2 for binarized data, 256 for 8-bit images, 17 for sklearn's
    digits). Points (toy2d) are unbounded floats of shape (D,) with ``levels = None``.
    """

    name: str
    shape: tuple[int, ...]
    num_classes: int = 0
    levels: int | None = None

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3

    @property
    def is_binary(self) -> bool:
        return self.levels == 2

    @property
    def num_dims(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataInfo":
        return cls(name=d["name"], shape=tuple(d["shape"]), num_classes=d.get("num_classes", 0), levels=d.get("levels"))
