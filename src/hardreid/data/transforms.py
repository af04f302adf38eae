"""Image transforms of DESIGN.md section 3 (Cluster Contrast's augmentation)."""

from __future__ import annotations

import random

from PIL import Image, ImageFilter
from torchvision import transforms as T

from ..config import DataConfig
from ..errors import UserError


class RandomGaussianBlur:
    """PIL Gaussian blur with a radius drawn uniformly from ``sigma`` (ICE's / MoCo v2's augmentation)."""

    def __init__(self, sigma: tuple[float, float] = (0.1, 2.0)) -> None:
        self.sigma = sigma

    def __call__(self, image: Image.Image) -> Image.Image:
        return image.filter(ImageFilter.GaussianBlur(radius=random.uniform(*self.sigma)))

    def __repr__(self) -> str:
        return f"RandomGaussianBlur(sigma={self.sigma})"


def train_transform(cfg: DataConfig) -> T.Compose:
    """Resize, random flip, pad + random crop, optional blur, normalise, random erasing (filled with the mean, i.e. 0)."""
    size = (cfg.height, cfg.width)
    blur = []
    if cfg.blur_p > 0:
        if len(cfg.blur_sigma) != 2 or not 0 < cfg.blur_sigma[0] <= cfg.blur_sigma[1]:
            raise UserError(f"data.blur_sigma must be [low, high] with 0 < low <= high, not {cfg.blur_sigma}")
        blur = [T.RandomApply([RandomGaussianBlur((cfg.blur_sigma[0], cfg.blur_sigma[1]))], p=cfg.blur_p)]
    return T.Compose([
        T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(p=cfg.flip_p),
        T.Pad(cfg.pad),
        T.RandomCrop(size),
        *blur,
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
