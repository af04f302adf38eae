"""Feature fusion h(f_anc, f_neg) of the generator's latent maps (SHNG Sec. 3.2, Eq. 2-3, Table 2).

``part_fusion`` is the paper's method; ``global_fusion``, ``noise_fusion`` and ``concat_fusion`` are the
other generator rows of Table 2. (Table 2's "mixup" fuses re-ID feature vectors instead, see
``mixup_features``: no generator is involved.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ....config import choices_of
from ....errors import UserError

FUSIONS = choices_of("hng.fusion")


@dataclass
class Fused:
    features: torch.Tensor  # f_new, the decoder's input
    part_rows: torch.Tensor | None = None  # B x 2: [h1, h2) latent rows of the selected window (part fusion only)


def part_windows(height: int, stride: int) -> list[tuple[int, int]]:
    """Sliding windows of height H/2 (full width) with stride d over H latent rows: [(h1, h2), ...]."""
    if stride < 1:
        raise UserError(f"hng.part_stride must be >= 1, got {stride}")
    size = max(height // 2, 1)
    return [(start, start + size) for start in range(0, height - size + 1, stride)]


def select_parts(f_anc: torch.Tensor, f_neg: torch.Tensor, stride: int = 2) -> torch.Tensor:
    """Index of the window of f_neg whose pooled feature g_neg^j is most cosine-similar to g_anc (B,)."""
    _, _, height, _ = f_neg.shape
    windows = part_windows(height, stride)
    size = windows[0][1] - windows[0][0]
    g_anc = f_anc.mean(dim=(2, 3))  # global average pooling of f_anc (B x C)
    rows = f_neg.mean(dim=3)  # B x C x H: pooled over the full width
    g_neg = rows.unfold(2, size, stride).mean(dim=3)  # B x C x M: one pooled vector per window
    sim = F.cosine_similarity(g_anc.unsqueeze(2), g_neg, dim=1)  # B x M
    return sim.argmax(dim=1)


def part_fusion(f_anc: torch.Tensor, f_neg: torch.Tensor, lam: float, stride: int = 2) -> Fused:
    """Eq. 2 inside the selected window [h1:h2, 0:W] (lambda f_anc + (1 - lambda) f_neg), Eq. 3 outside it."""
    _, _, height, _ = f_neg.shape
    windows = torch.tensor(part_windows(height, stride), device=f_anc.device)
    rows = windows[select_parts(f_anc, f_neg, stride)]  # B x 2
    r = torch.arange(height, device=f_anc.device)
    inside = ((r >= rows[:, :1]) & (r < rows[:, 1:])).to(f_anc.dtype)  # B x H
    w_anc = (lam * inside + (1 - lam) * (1 - inside))[:, None, :, None]  # weight of f_anc per row
    return Fused(w_anc * f_anc + (1 - w_anc) * f_neg, rows)


def global_fusion(f_anc: torch.Tensor, f_neg: torch.Tensor, lam: float) -> Fused:
    """Table 2 "global-fusion": lambda f_anc + (1 - lambda) f_neg over the whole map."""
    return Fused(lam * f_anc + (1 - lam) * f_neg)


def noise_fusion(f_anc: torch.Tensor, std: float, generator: torch.Generator | None = None) -> Fused:
    """Table 2 "random noise": f_anc + Gaussian noise (std ``hng.noise_std``); the negative is not used."""
    noise = torch.randn(f_anc.shape, generator=generator, device="cpu", dtype=torch.float32)
    return Fused(f_anc + std * noise.to(f_anc.device, f_anc.dtype))


def concat_fusion(f_anc: torch.Tensor, f_neg: torch.Tensor) -> Fused:
    """Table 2 "concatenation": [f_anc, f_neg] along the channel axis (the decoder takes 2C channels)."""
    return Fused(torch.cat([f_anc, f_neg], dim=1))


def fuse(kind: str, f_anc: torch.Tensor, f_neg: torch.Tensor, lam: float, stride: int = 2, noise_std: float = 1.0,
         generator: torch.Generator | None = None) -> Fused:
    """h(f_anc, f_neg) by name (``hng.fusion``)."""
    if kind == "part":
        return part_fusion(f_anc, f_neg, lam, stride)
    if kind == "global":
        return global_fusion(f_anc, f_neg, lam)
    if kind == "noise":
        return noise_fusion(f_anc, noise_std, generator)
    if kind == "concat":
        return concat_fusion(f_anc, f_neg)
    raise UserError(f"unknown hng.fusion '{kind}' for the generator; choose one of {', '.join(FUSIONS)}")


def mixup_features(v_anc: torch.Tensor, v_neg: torch.Tensor, lam: float) -> torch.Tensor:
    """Table 2 "mixup": normalise(lambda v_anc + (1 - lambda) v_neg) of re-ID feature vectors, a new negative."""
    return F.normalize(lam * v_anc + (1 - lam) * v_neg, dim=1)


def pick_negatives(labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """For each anchor i a random batch index j with y_j != y_i (x_neg, "a randomly selected negative")."""
    labels = labels.cpu()
    different = labels[None, :] != labels[:, None]  # B x B
    if not different.any(dim=1).all():
        raise UserError("hard negative generation needs at least two pseudo identities in every batch "
                        "(data.batch_size / data.num_instances >= 2)")
    scores = torch.rand(different.shape, generator=generator) * different  # 0 where not a negative
    return (scores + different.float()).argmax(dim=1)  # uniform among the negatives
