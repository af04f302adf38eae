"""Image transforms of docs/architecture.md, "The Cluster Contrast baseline" (Cluster Contrast's augmentation)."""

from __future__ import annotations

import math
import random

import torch
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


class RandomErasing:
    """Random erasing (Zhong et al.) as the official re-ID codes write it (``RandomErasing`` of
    ``clustercontrast/utils/data/transforms.py``, SpCL's, ICE's and OpenUnReID's copies).

    With probability ``p``, up to 100 attempts: an area fraction drawn uniformly from ``area``, an aspect
    ratio h/w drawn uniformly from [``aspect``, 1 / ``aspect``]; the first rectangle strictly inside the image
    is set to ``fill`` per channel. It runs after normalisation, so ``fill`` is a value of the normalised
    tensor (the official codes fill with the ImageNet mean 0.485, 0.456, 0.406 there, not with the mean
    colour). torchvision's ``RandomErasing`` differs: area up to 0.33, log-uniform aspect, 10 attempts.
    Random numbers come from torch's generator (seeded per loader worker).
    """

    def __init__(self, p: float = 0.5, area: tuple[float, ...] = (0.02, 0.4), aspect: float = 0.3,
                 fill: tuple[float, ...] = (0.485, 0.456, 0.406)) -> None:
        if len(area) != 2 or not 0 < area[0] <= area[1] <= 1:
            raise UserError(f"data.erasing_area must be [low, high] with 0 < low <= high <= 1, not {list(area)}")
        if not 0 < aspect <= 1:
            raise UserError(f"data.erasing_aspect must be in (0, 1], not {aspect}")
        self.p, self.area, self.aspect, self.fill = p, area, aspect, tuple(fill)

    @staticmethod
    def _uniform(low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand(()))

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if float(torch.rand(())) >= self.p:
            return image
        channels, height, width = image.shape
        if len(self.fill) not in (1, channels):
            raise UserError(f"data.erasing_fill has {len(self.fill)} values for {channels}-channel images")
        for _ in range(100):
            target = self._uniform(*self.area) * height * width
            ratio = self._uniform(self.aspect, 1 / self.aspect)
            h, w = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
            if w < width and h < height:
                top = int(torch.randint(0, height - h + 1, ()))
                left = int(torch.randint(0, width - w + 1, ()))
                fill = torch.tensor(self.fill, dtype=image.dtype).view(-1, 1, 1)
                image[:, top:top + h, left:left + w] = fill
                return image
        return image

    def __repr__(self) -> str:
        return f"RandomErasing(p={self.p}, area={self.area}, aspect={self.aspect}, fill={self.fill})"


def train_transform(cfg: DataConfig) -> T.Compose:
    """Resize, random flip, pad + random crop, optional blur, normalise, random erasing (the official codes')."""
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
        RandomErasing(cfg.erasing_p, tuple(cfg.erasing_area), cfg.erasing_aspect, tuple(cfg.erasing_fill)),
    ])


def eval_transform(cfg: DataConfig) -> T.Compose:
    """Resize and normalise."""
    return T.Compose([
        T.Resize((cfg.height, cfg.width), interpolation=T.InterpolationMode.BICUBIC),
        T.ToTensor(),
        T.Normalize(mean=cfg.mean, std=cfg.std),
    ])
