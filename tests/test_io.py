"""Run files are written atomically and in the documented formats."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dgmrun.checkpoint import AtomicCheckpointIO
from dgmrun.files import atomic_open
from dgmrun.io import image_grid, picture, save_samples_npz


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w") as f:
            f.write("half of the new conte")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_checkpoint_that_cannot_be_written_leaves_the_previous_one(tmp_path):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    with pytest.raises(Exception):
        io.save_checkpoint({"step": 2, "w": torch.ones(3), "bad": lambda: None}, path)  # unpicklable
    assert torch.load(path, weights_only=True)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_atomic_files_get_the_usual_permissions(tmp_path):
    with atomic_open(tmp_path / "a.json", "w") as f:
        f.write("{}")
    plain = tmp_path / "b.json"
    plain.write_text("{}")
    assert (tmp_path / "a.json").stat().st_mode == plain.stat().st_mode


def test_samples_npz_for_images_and_points(tmp_path):
    images = torch.rand(5, 3, 4, 4)
    save_samples_npz(tmp_path / "i.npz", images)
    stored = np.load(tmp_path / "i.npz")["images"]
    assert stored.dtype == np.uint8 and stored.shape == (5, 3, 4, 4)
    assert np.abs(stored / 255.0 - images.numpy()).max() <= 0.5 / 255 + 1e-6
    points = torch.randn(7, 2)
    save_samples_npz(tmp_path / "p.npz", points)
    x = np.load(tmp_path / "p.npz")["x"]
    assert x.dtype == np.float32 and np.array_equal(x, points.numpy())


def test_image_grid_layout():
    images = torch.zeros(10, 1, 8, 8)
    images[3] = 1.0
    grid = image_grid(images, nrow=4, padding=2)
    assert grid.shape == (3 * 10 + 2, 4 * 10 + 2)
    assert grid[2:10, 32:40].min() == 255 and grid[2:10, 2:10].max() == 0  # image 3 is white, image 0 black
    assert picture(torch.zeros(4, 3, 8, 8)).shape == (2 * 34 + 2, 2 * 34 + 2, 3)  # 8 px shown at 32 px
    assert picture(torch.randn(100, 2)).shape == (256, 256)


def test_scatter_draws_each_point_as_a_3x3_dot():
    image = picture(torch.tensor([[-1.0, -1.0], [0.0, 0.0], [1.0, 1.0]]))
    assert image.shape == (256, 256) and (image < 255).sum() == 3 * 9
    assert image[0, 0] == 255 and image[128, 128] == 0  # the corners empty, the middle point dark
