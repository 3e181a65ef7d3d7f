"""``task=sample``: ``sample.num`` samples from a checkpoint into samples.npz and samples.png."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from dgmrun.checkpoint import load_model
from dgmrun.io import picture, sample_in_batches, save_png, save_samples_npz
from dgmrun.tasks.common import config_from_checkpoint, pick_device, run_dir, write_run_files


def sample(cfg: DictConfig) -> None:
    cfg, _ = config_from_checkpoint(cfg)
    device = pick_device(cfg)
    model = load_model(cfg.ckpt_path, map_location=device, model_overrides=dict(cfg.model))
    generator = torch.Generator(device).manual_seed(cfg.sample.seed)
    samples = sample_in_batches(model.sampler(cfg.sample.classes, cfg.sample), cfg.sample.num, cfg.sample.batch_size, generator)
    out = run_dir(cfg)
    save_samples_npz(out / "samples.npz", samples)
    save_png(out / "samples.png", picture(samples))
    write_run_files(cfg, {"sample/num": cfg.sample.num, "sample/seed": cfg.sample.seed})
