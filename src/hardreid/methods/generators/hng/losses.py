"""Losses of self-guided hard negative generation (SHNG Eq. 1, 4-8).

Convention for the contrastive losses (Eq. 4 and 7): the anchor's own original image x^i is left out of
both its positive and its negative set (its similarity is the constant 1 and carries no gradient; the
paper's set notation would put it in N^i of Eq. 5 and P^i_con of Eq. 8). Everything else follows the sets
of Eq. 5 and Eq. 8.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ....precision import float32


def reconstruction_loss(reconstructed: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """L_rec, Eq. 1: L1 between x~_anc and x_anc, averaged over images and pixel values
    (Eq. 1's per-image L1 norm divided by the number of values per image, as CycleGAN's L1 loss)."""
    return (reconstructed - images).abs().mean()


@float32
def multi_positive_nce(anchors: torch.Tensor, candidates: torch.Tensor, positive: torch.Tensor, valid: torch.Tensor,
                       temperature: float) -> torch.Tensor:
    """mean_i -log( sum_{p in P^i} exp(s_ip / tau) / sum_{q in P^i u N^i} exp(s_iq / tau) ), s = cosine (unit inputs).

    ``positive`` marks P^i and ``valid`` marks P^i u N^i (B x M boolean masks over ``candidates``).
    Anchors without any positive are left out of the mean.
    """
    logits = anchors @ candidates.t() / temperature
    very_negative = torch.finfo(logits.dtype).min
    has_positive = positive.any(dim=1)
    pos = torch.logsumexp(logits.masked_fill(~positive, very_negative), dim=1)
    everything = torch.logsumexp(logits.masked_fill(~(valid | positive), very_negative), dim=1)
    return (everything - pos)[has_positive].mean()


def hng_loss(v_anc: torch.Tensor, v_gen: torch.Tensor, v_aug: torch.Tensor, labels: torch.Tensor,
             temperature: float) -> torch.Tensor:
    """L_hng, Eq. 4-5 (the generator's objective; the re-ID features are those of a frozen network).

    P^i = {x_gen^k : y^k = y^i} (the generated image of anchor k carries anchor k's pseudo label);
    N^i = {X_gen - P^i, X_aug, X} (X without x^i itself, see the module docstring).
    Candidates are ordered [X_gen, X_aug, X]; v_anc holds E(x^i) for the anchors = the features of X.
    """
    b = len(labels)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(b, dtype=torch.bool, device=labels.device)
    ones = torch.ones_like(same)
    positive = torch.cat([same, ~ones, ~ones], dim=1)
    valid = torch.cat([ones, ones, ~eye], dim=1)
    return multi_positive_nce(v_anc, torch.cat([v_gen, v_aug, v_anc]), positive, valid, temperature)


def con_loss(v_anc: torch.Tensor, v_aug: torch.Tensor, labels: torch.Tensor, temperature: float,
             negatives: list[torch.Tensor] | None = None) -> torch.Tensor:
    """L_con, Eq. 7-8 (the re-ID network's objective).

    P^i_con = {x^k, x_aug^k : y^k = y^i} (x^i itself left out); N^i_con = {X + X_aug - P^i_con, X_gen, X_pa}:
    ``negatives`` are the features of the generated images X_gen and of the selected parts X_pa (or, for
    Table 2's "mixup", the mixed feature vectors). Candidates are ordered [X, X_aug, *negatives].
    """
    b = len(labels)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(b, dtype=torch.bool, device=labels.device)
    extra = torch.cat(negatives) if negatives else v_anc.new_zeros(0, v_anc.shape[1])
    n_extra = extra.shape[0]
    positive = torch.cat([same & ~eye, same, same.new_zeros(b, n_extra)], dim=1)
    valid = torch.cat([~eye, torch.ones_like(same), same.new_ones(b, n_extra)], dim=1)
    return multi_positive_nce(v_anc, torch.cat([v_anc, v_aug, extra]), positive, valid, temperature)


@float32
def lsgan_discriminator_loss(d_real: torch.Tensor, d_reconstructed: torch.Tensor, d_generated: torch.Tensor) -> torch.Tensor:
    """L_adv, Eq. 6 (D's side): 1/3 [ (D(x_anc) - 1)^2 + D(x~_anc)^2 + D(x_gen)^2 ], each averaged over images and patches."""
    return ((d_real - 1).pow(2).mean() + d_reconstructed.pow(2).mean() + d_generated.pow(2).mean()) / 3


@float32
def lsgan_generator_loss(d_reconstructed: torch.Tensor, d_generated: torch.Tensor) -> torch.Tensor:
    """L_adv for G (least-squares GAN, Mao et al. 2017): 1/2 [ (D(x~_anc) - 1)^2 + (D(x_gen) - 1)^2 ], averaged."""
    return ((d_reconstructed - 1).pow(2).mean() + (d_generated - 1).pow(2).mean()) / 2


def pair_statistics(v_anc: torch.Tensor, labels: torch.Tensor, v_gen: torch.Tensor | None, temperature: float) -> dict[str, float]:
    """Paper Fig. 2: anchor-negative similarity and loss for the hardest mined negative vs the generated one.

    similarity: cosine(v^i, hardest in-batch negative) and cosine(v^i, v_gen^i); loss: the two-way InfoNCE
    -log(e^{s+/tau} / (e^{s+/tau} + e^{s-/tau})) with s+ the mean similarity to the anchor's positives in
    the batch and s- that negative's similarity.
    """
    with torch.no_grad():
        v = v_anc.float()
        sim = v @ v.t()
        same = labels[:, None] == labels[None, :]
        eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        pos_mask = same & ~eye
        rows = pos_mask.any(dim=1) & (~same).any(dim=1)
        if not rows.any():
            return {}
        s_pos = (sim * pos_mask).sum(1)[rows] / pos_mask.sum(1)[rows]
        s_mined = sim.masked_fill(same, -2.0).max(dim=1).values[rows]
        out = {"hng_sim_mined": float(s_mined.mean()),
               "hng_loss_mined": float(F.softplus((s_mined - s_pos) / temperature).mean())}
        if v_gen is not None:
            s_gen = (v * v_gen.float()).sum(1)[rows]
            out.update({"hng_sim_generated": float(s_gen.mean()),
                        "hng_loss_generated": float(F.softplus((s_gen - s_pos) / temperature).mean())})
        return out
