"""Self-guided hard negative generation (SHNG, Li et al. IJCAI 2022) as a plug-in component (``hng``).

Per training step (Sec. 3.4, "the two networks are updated alternately, each with the others fixed"):

1. **D step** (``discriminator_step``): G's outputs are detached; L_adv of Eq. 6 updates D only.
2. **G step** (``generator_step``): L_rec (Eq. 1) + L_hng (Eq. 4-5) + L_adv (G side) update G only. D and
   the re-ID network E are frozen: their parameters get no gradient (``requires_grad`` off), and E runs
   in eval mode so its BatchNorm running statistics are untouched (a frozen network is also a constant
   function of its input: the batch statistics of generated images would otherwise shift E's features).
3. **re-ID step**: the trainer's optimiser minimises the base's own losses + ``losses(ctx)`` = L_con
   (Eq. 7-8), where the generated images and selected parts of step 2 are detached constants. Its forward of
   [augmented, generated, parts] is two-thirds synthetic (the parts half blank); with ``hng.bn_synthetic:
   frozen`` it leaves the BatchNorm running statistics alone (private copies), so the statistics used for
   clustering and evaluation come from the real anchors' forward only, as with the base alone; ``update``
   lets that forward move them too.

Schedule (Sec. 4.2), one run in two stages: epochs ``< hng.warmup_epochs`` are the warm-up (the re-ID
network trains with its base method only; G with L_rec only, D untouched; G's lr x ``lr_gamma`` after
``warmup_lr_step`` epochs), then joint fine-tuning (all three networks, G's and D's lr restart at
``hng.lr`` and are multiplied by ``lr_gamma`` after ``joint_lr_step`` epochs). The re-ID network's lr over
the two stages is ``optim.lr_schedule`` (see ``configs/hng/``). Both stages resume exactly: G, D, their
optimisers and the negative-sampling RNG are in ``state_dict``; the lrs are functions of the epoch.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from .... import distributed
from ....config import Config
from ....errors import UserError
from ....models.batchnorm import eval_mode, scratch_forward
from ...contract import Batch, Component, EpochData, StepContext
from ...registry import register_hard_samples
from . import losses as L
from .fusion import fuse, mixup_features, pick_negatives
from .networks import Generator, PatchDiscriminator, to_gan_space, to_reid_space


@contextlib.contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """No parameter of ``modules`` gets a gradient inside the block (``requires_grad`` restored after)."""
    saved = [(p, p.requires_grad) for m in modules for p in m.parameters()]
    for p, _ in saved:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


@dataclass
class Generated:
    """G's outputs for one batch, in [-1, 1]."""

    reconstructed: torch.Tensor  # x~_anc = G_D(G_E(x_anc))
    images: torch.Tensor  # x_gen = G_D(h(f_anc, f_neg))
    part_rows: torch.Tensor | None  # B x 2 latent rows [h1, h2) of the selected window (part fusion)


@dataclass
class Pending:
    """What the G step hands to the re-ID step of the same batch (detached constants, re-ID input space)."""

    batch_images: torch.Tensor  # identity check: the batch these belong to
    negatives: torch.Tensor  # index of x_neg for each anchor
    generated: torch.Tensor | None = None  # X_gen
    parts: torch.Tensor | None = None  # X_pa: x_gen with everything outside the selected part set to 0 (the mean colour)


@register_hard_samples("hng")
class HardNegativeGeneration(Component):
    """Generator + discriminator with their own Adam optimisers; adds L_con to the re-ID loss."""

    name = "hng"
    num_views = 2  # x_aug: an augmented view of each anchor (Eq. 5 and 8)

    def __init__(self, cfg: Config, device: torch.device) -> None:
        super().__init__(cfg, device)
        h = self.h = cfg.hng  # fusion, fusion_lambda, warmup_epochs, bn_synthetic: checked with the config
        if cfg.data.height % 4 or cfg.data.width % 4:
            raise UserError(f"hng needs data.height and data.width divisible by 4, got {cfg.data.height}x{cfg.data.width}")
        self.mean, self.std = list(cfg.data.mean), list(cfg.data.std)
        self.rng = torch.Generator().manual_seed(cfg.train.seed * 7919 + 17)  # x_neg sampling, noise fusion
        self.uses_generator = h.fusion != "mixup"  # Table 2 "mixup" mixes re-ID features, no image is generated
        self.generator: Generator | None = None
        self.discriminator: PatchDiscriminator | None = None
        if self.uses_generator:
            width = 4 * h.ngf
            self.generator = Generator(h.ngf, h.res_blocks, h.norm, 2 * width if h.fusion == "concat" else None).to(device)
            self.discriminator = PatchDiscriminator(h.ndf, h.norm).to(device)
            self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=h.lr, betas=(h.beta1, 0.999), weight_decay=h.weight_decay)
            self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=h.lr, betas=(h.beta1, 0.999), weight_decay=h.weight_decay)
        self.pending: Pending | None = None
        self.picture_batch: tuple[torch.Tensor, torch.Tensor] | None = None
        self.history: list[dict[str, float]] = []

    # -- schedule --------------------------------------------------------------------------------
    def in_warmup(self, epoch: int) -> bool:
        return epoch < self.h.warmup_epochs

    def lr_factor(self, epoch: int) -> float:
        """G's and D's lr factor: x lr_gamma after warmup_lr_step warm-up epochs / joint_lr_step joint epochs."""
        h = self.h
        if self.in_warmup(epoch):
            return h.lr_gamma if epoch >= h.warmup_lr_step else 1.0
        return h.lr_gamma if epoch - h.warmup_epochs >= h.joint_lr_step else 1.0

    def start_epoch(self, data: EpochData, model: nn.Module) -> None:
        if self.uses_generator:
            for opt in (self.opt_g, self.opt_d):
                for group in opt.param_groups:
                    group["lr"] = self.h.lr * self.lr_factor(data.epoch)
        super().start_epoch(data, model)

    # -- G and D ---------------------------------------------------------------------------------
    def generate(self, x: torch.Tensor, negatives: torch.Tensor) -> Generated:
        """x~_anc and x_gen = G_D(h(G_E(x_anc), G_E(x_neg))) for images ``x`` in [-1, 1]."""
        assert self.generator is not None
        f = self.generator.encode(x)
        fused = fuse(self.h.fusion, f, f[negatives.to(f.device)], self.h.fusion_lambda, self.h.part_stride,
                     self.h.noise_std, self.rng)
        return Generated(self.generator.reconstruct(f), self.generator.decode(fused.features), fused.part_rows)

    def discriminator_step(self, x: torch.Tensor, generated: Generated) -> dict[str, float]:
        """D step: Eq. 6 on real x_anc and detached x~_anc, x_gen; only D's parameters change."""
        assert self.discriminator is not None
        d = self.discriminator
        loss = self.h.adv_weight * L.lsgan_discriminator_loss(d(x), d(generated.reconstructed.detach()), d(generated.images.detach()))
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_gradients(d.parameters())  # D trains on every process's batch share
        self.opt_d.step()
        distributed.broadcast_buffers(d)
        return {"hng_d_adv": float(loss.detach())}

    def generator_step(self, model: nn.Module, batch: Batch, x: torch.Tensor, generated: Generated) -> dict[str, float]:
        """G step: L_rec + L_hng + L_adv(G); D and the re-ID network frozen (no gradients, BN statistics kept)."""
        assert self.discriminator is not None
        h = self.h
        with frozen(model, self.discriminator), eval_mode(model):
            with torch.no_grad():
                v_anc = model(batch.images)
                v_aug = model(self.augmented_view(batch))
            v_gen = model(to_reid_space(generated.images, self.mean, self.std))
            rec = L.reconstruction_loss(generated.reconstructed, x)
            hng = L.hng_loss(v_anc, v_gen, v_aug, batch.labels, h.temperature)
            adv = L.lsgan_generator_loss(self.discriminator(generated.reconstructed), self.discriminator(generated.images))
            loss = h.rec_weight * rec + h.hng_weight * hng + h.adv_weight * adv
            self.opt_g.zero_grad(set_to_none=True)
            loss.backward()
        self.step_generator()
        return {"hng_rec": float(rec.detach()), "hng_hng": float(hng.detach()), "hng_g_adv": float(adv.detach())}

    def warmup_generator_step(self, x: torch.Tensor) -> dict[str, float]:
        """Warm-up: G trained with L_rec only (Sec. 3.4); D untouched."""
        assert self.generator is not None
        rec = L.reconstruction_loss(self.generator(x), x)
        self.opt_g.zero_grad(set_to_none=True)
        (self.h.rec_weight * rec).backward()
        self.step_generator()
        return {"hng_rec": float(rec.detach())}

    def step_generator(self) -> None:
        """G's optimiser step on the gradients averaged over the processes (as DDP would), then rank 0's buffers."""
        assert self.generator is not None
        distributed.average_gradients(self.generator.parameters())
        self.opt_g.step()
        distributed.broadcast_buffers(self.generator)

    @staticmethod
    def augmented_view(batch: Batch) -> torch.Tensor:
        if not batch.views:
            raise RuntimeError("hng needs an augmented view of each anchor (batch.views); the loader was built "
                               "without the method's num_views")
        return batch.views[0]

    def part_images(self, generated: torch.Tensor, rows: torch.Tensor, latent_height: int) -> torch.Tensor:
        """X_pa: the selected part [scale*h1, scale*h2) of each generated image, the rest set to 0 (mean colour)."""
        scale = generated.shape[2] // latent_height
        r = torch.arange(generated.shape[2], device=generated.device)
        rows = rows.to(generated.device) * scale
        inside = (r >= rows[:, :1]) & (r < rows[:, 1:])  # B x H
        return generated * inside[:, None, :, None].to(generated.dtype)

    # -- hooks -----------------------------------------------------------------------------------
    def before_step(self, model: nn.Module, batch: Batch, epoch: int, step: int) -> dict[str, float]:
        self.pending = None
        negatives = pick_negatives(batch.labels, self.rng).to(batch.images.device)
        n = self.h.pictures
        if n > 0:
            self.picture_batch = (batch.images[:n].detach(), batch.images[negatives[:n]].detach())  # stays on the device
        if not self.uses_generator:
            self.pending = Pending(batch.images, negatives)
            return {}
        with torch.autocast(self.device.type, enabled=False):  # G and D train in float32 (no grad scaler here)
            x = to_gan_space(batch.images.float(), self.mean, self.std)
            if self.in_warmup(epoch):
                return self.warmup_generator_step(x) if self.h.warmup_generator else {}
            generated = self.generate(x, negatives)
            logs = self.discriminator_step(x, generated)
            logs.update(self.generator_step(model, batch, x, generated))
        images = to_reid_space(generated.images.detach(), self.mean, self.std)
        parts = None
        if generated.part_rows is not None:
            parts = self.part_images(images, generated.part_rows, x.shape[2] // 4)
        self.pending = Pending(batch.images, negatives, images, parts)
        return logs

    def losses(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        """L_con (Eq. 7-8) in the joint stage; nothing in the warm-up (the base alone trains E)."""
        labels = ctx.batch.labels
        if self.in_warmup(ctx.epoch):
            self.record(L.pair_statistics(ctx.features.detach(), labels, None, self.h.temperature))
            return {}
        pending = self.pending
        if pending is None or pending.batch_images is not ctx.batch.images:
            raise RuntimeError("hng.losses called without hng.before_step on the same batch")
        aug = self.augmented_view(ctx.batch)
        if not self.uses_generator:  # Table 2 "mixup": mixed re-ID feature vectors as the new negatives
            v_aug = ctx.model(aug)
            mixed = mixup_features(ctx.features.detach(), ctx.features.detach()[pending.negatives], self.h.fusion_lambda)
            negatives, v_gen = [mixed], mixed
        else:
            assert pending.generated is not None
            inputs = [aug, pending.generated] + ([pending.parts] if pending.parts is not None else [])
            forward = scratch_forward(ctx.model) if self.h.bn_synthetic == "frozen" else ctx.model
            outputs = forward(torch.cat(inputs)).split(len(labels))
            v_aug, v_gen, negatives = outputs[0], outputs[1], list(outputs[1:])
        self.record(L.pair_statistics(ctx.features.detach(), labels, v_gen.detach(), self.h.temperature))
        return {"hng_con": self.h.con_weight * L.con_loss(ctx.features, v_aug, labels, self.h.temperature, negatives)}

    def record(self, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.stats.add(key, value)

    def end_epoch(self, epoch: int, run_dir: Path | None) -> dict[str, float]:
        row = self.stats.means()
        row["hng_stage_joint"] = float(not self.in_warmup(epoch))
        self.history.append({"epoch": epoch + 1, **row})
        if run_dir is not None:
            from .pictures import plot_hard_negative_statistics, save_picture_grid

            if self.uses_generator and self.picture_batch is not None:
                assert self.generator is not None
                save_picture_grid(self.generator, self.h, self.mean, self.std, *self.picture_batch,
                                  Path(run_dir) / "hng" / f"epoch_{epoch + 1:03d}.png", epoch)
            plot_hard_negative_statistics(self.history, Path(run_dir) / "hng_similarity.png")
        return row

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"rng": self.rng.get_state(), "history": list(self.history)}
        if self.uses_generator:
            assert self.generator is not None and self.discriminator is not None
            state.update(generator=self.generator.state_dict(), discriminator=self.discriminator.state_dict(),
                         opt_g=self.opt_g.state_dict(), opt_d=self.opt_d.state_dict())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.set_state(state["rng"])
        self.history = list(state.get("history", []))
        if self.uses_generator:
            assert self.generator is not None and self.discriminator is not None
            if "generator" not in state:
                raise UserError("the checkpoint's hng state has no generator (was it trained with hng.fusion=mixup?)")
            self.generator.load_state_dict(state["generator"])
            self.discriminator.load_state_dict(state["discriminator"])
            self.opt_g.load_state_dict(state["opt_g"])
            self.opt_d.load_state_dict(state["opt_d"])
