"""``task=sample``: ``sample.num`` samples from a checkpoint into samples.npz and samples.png."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from dgmrun.checkpoint import model_from_checkpoint
from dgmrun.io import picture, sample_in_batches, save_png, save_samples_npz
from dgmrun.tasks.common import config_from_checkpoint, pick_device, run_dir, write_run_files


def sample(cfg: DictConfig) -> None:
    cfg, checkpoint = config_from_checkpoint(cfg)
    device = pick_device(cfg)
    model = model_from_checkpoint(checkpoint, cfg.ckpt_path, cfg.model).to(device).eval()
    generator = torch.Generator(device).manual_seed(cfg.sample.seed)
    samples = sample_in_batches(model.sampler(cfg.sample.classes, cfg.sample), cfg.sample.num, cfg.sample.batch_size, generator)
    out = run_dir(cfg)
    save_samples_npz(out / "samples.npz", samples)
    save_png(out / "samples.png", picture(samples))
    write_run_files(cfg, {"sample/num": cfg.sample.num, "sample/seed": cfg.sample.seed})
