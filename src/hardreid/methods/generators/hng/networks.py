"""The hard negative generation network (HNGN) and its discriminator (SHNG Sec. 3.2 and 4.2).

Generator G = encoder G_E + decoder G_D, CycleGAN style (Zhu et al. 2017):

* G_E: 3 conv-norm-ReLU (7x7 stride 1, 3x3 stride 2, 3x3 stride 2) + 3 residual blocks; the latent map f
  is (4 ngf) x H/4 x W/4.
* G_D: 3 residual blocks + 2 transposed conv-norm-ReLU (stride 2) + 1 conv (7x7) with tanh; it gives back
  the input size. Images live in [-1, 1] (``to_gan_space`` / ``to_reid_space`` convert from / to the
  re-ID network's ImageNet-normalised inputs).

D: PatchGAN (Isola et al. 2017) with 3 conv-norm-LeakyReLU layers and a final 1-channel conv; one score
per patch, trained with the least-squares GAN loss (Eq. 6, ``losses.py``).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ....errors import UserError


def norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    raise UserError(f"unknown hng.norm '{kind}'; choose instance or batch")


class ResidualBlock(nn.Module):
    """CycleGAN residual block: x + (pad-conv3x3-norm-ReLU-pad-conv3x3-norm)(x)."""

    def __init__(self, channels: int, norm: str = "instance") -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), norm_layer(norm, channels), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), norm_layer(norm, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Encoder(nn.Module):
    """G_E: image (B x 3 x H x W, in [-1, 1]) -> latent map f (B x 4ngf x H/4 x W/4)."""

    def __init__(self, ngf: int = 64, res_blocks: int = 3, norm: str = "instance") -> None:
        super().__init__()
        self.out_channels = 4 * ngf
        self.net = nn.Sequential(
            nn.ReflectionPad2d(3), nn.Conv2d(3, ngf, 7), norm_layer(norm, ngf), nn.ReLU(True),
            nn.Conv2d(ngf, 2 * ngf, 3, stride=2, padding=1), norm_layer(norm, 2 * ngf), nn.ReLU(True),
            nn.Conv2d(2 * ngf, 4 * ngf, 3, stride=2, padding=1), norm_layer(norm, 4 * ngf), nn.ReLU(True),
            *[ResidualBlock(4 * ngf, norm) for _ in range(res_blocks)],
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """G_D: latent map -> image in [-1, 1] of 4x the latent size.

    ``in_channels`` > 4ngf (the "concatenation" fusion of Table 2 feeds [f_anc, f_neg]) adds a 1x1 conv
    that maps the input to 4ngf channels before the residual blocks (which keep their width).
    """

    def __init__(self, ngf: int = 64, res_blocks: int = 3, norm: str = "instance", in_channels: int | None = None) -> None:
        super().__init__()
        width = 4 * ngf
        in_channels = in_channels or width
        self.in_channels = in_channels
        self.project = nn.Conv2d(in_channels, width, 1) if in_channels != width else nn.Identity()
        self.net = nn.Sequential(
            *[ResidualBlock(width, norm) for _ in range(res_blocks)],
            nn.ConvTranspose2d(width, 2 * ngf, 3, stride=2, padding=1, output_padding=1), norm_layer(norm, 2 * ngf), nn.ReLU(True),
            nn.ConvTranspose2d(2 * ngf, ngf, 3, stride=2, padding=1, output_padding=1), norm_layer(norm, ngf), nn.ReLU(True),
            nn.ReflectionPad2d(3), nn.Conv2d(ngf, 3, 7), nn.Tanh(),
        )

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.net(self.project(f))


class Generator(nn.Module):
    """HNGN: ``encode`` (G_E) and ``decode`` (G_D); ``forward`` reconstructs (x~_anc = G_D(G_E(x_anc)), Eq. 1)."""

    def __init__(self, ngf: int = 64, res_blocks: int = 3, norm: str = "instance", decoder_in_channels: int | None = None) -> None:
        super().__init__()
        self.encoder = Encoder(ngf, res_blocks, norm)
        self.decoder = Decoder(ngf, res_blocks, norm, decoder_in_channels)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % 4 or x.shape[-1] % 4:
            raise UserError(f"the hard negative generator needs image sizes divisible by 4, got {tuple(x.shape[-2:])}")
        return self.encoder(x)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return self.decoder(f)

    def reconstruct(self, f: torch.Tensor) -> torch.Tensor:
        """x~_anc from f_anc = G_E(x_anc); a concatenation decoder (twice as wide) gets [f_anc, f_anc]."""
        return self.decoder(torch.cat([f, f], dim=1) if self.decoder.in_channels == 2 * f.shape[1] else f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reconstruct(self.encode(x))


class PatchDiscriminator(nn.Module):
    """PatchGAN D: 3 conv(4x4)-norm-LeakyReLU(0.2) (strides 2, 2, 1) + conv(4x4) to one score per patch."""

    def __init__(self, ndf: int = 64, norm: str = "instance") -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = [3, ndf, 2 * ndf, 4 * ndf]
        for i, stride in enumerate((2, 2, 1)):
            layers += [nn.Conv2d(channels[i], channels[i + 1], 4, stride=stride, padding=1),
                       norm_layer(norm, channels[i + 1]), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(4 * ndf, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def to_gan_space(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """ImageNet-normalised re-ID input -> [-1, 1] (the generator's tanh range)."""
    m = x.new_tensor(mean).view(1, -1, 1, 1)
    s = x.new_tensor(std).view(1, -1, 1, 1)
    return (x * s + m) * 2 - 1


def to_reid_space(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """[-1, 1] -> the re-ID network's ImageNet-normalised inputs."""
    m = x.new_tensor(mean).view(1, -1, 1, 1)
    s = x.new_tensor(std).view(1, -1, 1, 1)
    return ((x + 1) / 2 - m) / s
