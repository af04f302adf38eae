"""Image transforms of DESIGN.md section 3 (Cluster Contrast's augmentation)."""

from __future__ import annotations

from torchvision import transforms as T

from ..config import DataConfig


def train_transform(cfg: DataConfig) -> T.Compose:
    """Resize, random flip, pad + random crop, normalise, random erasing (filled with the mean, i.e. 0)."""
    size = (cfg.height, cfg.width)
    return T.Compose([
        T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(p=cfg.flip_p),
        T.Pad(cfg.pad),
        T.RandomCrop(size),
        T.ToTensor(),
        T.Normalize(mean=cfg.mean, std=cfg.std),
        T.RandomErasing(p=cfg.erasing_p, value=0),
    ])


def eval_transform(cfg: DataConfig) -> T.Compose:
    """Resize and normalise."""
    return T.Compose([
        T.Resize((cfg.height, cfg.width), interpolation=T.InterpolationMode.BICUBIC),
        T.ToTensor(),
        T.Normalize(mean=cfg.mean, std=cfg.std),
    ])
