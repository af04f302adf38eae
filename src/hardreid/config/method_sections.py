"""The sections of the methods' own keys: spcl, ice, acfl, hng and strong_baseline (as :mod:`.schema`)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field

from .base import Section
from .fields import Bool, Float, Int, ListOf, rule, to_str

TEXT = BeforeValidator(to_str)


class SpclConfig(Section):
    """SpCL (Ge et al. 2020) base; defaults of its official code (examples/spcl_train_usl.py)."""

    section = "spcl"

    temperature: Float = Field(0.05, gt=0)  # tau of the unified contrastive loss (Eq. 1), --temp
    momentum: Float = Field(0.2, ge=0, le=1)  # m of the instance memory update v <- m v + (1 - m) f (Eq. 3), --momentum
    # reliability: DBSCAN again with cluster.eps -/+ eps_gap (tight / loose), --eps-gap
    eps_gap: Float = Field(0.02, gt=0, lt=1)
    # alpha: R_indep threshold = this percentile of the clusters' scores at epoch 1
    indep_percentile: Float = Field(0.9, ge=0, le=1)


class IceConfig(Section):
    """ICE (Chen et al. 2021) base; defaults of its official code (examples/unsupervised_train.py, ice/trainers.py).

    The add-ons ``camera_proxy`` and ``mean_teacher`` (method.hard_samples) read the keys they share with ICE here.
    """

    section = "ice"

    # alpha of the EMA teacher (also the mean_teacher add-on), --alpha. Tuned for 400 steps per epoch: with fewer
    # steps per epoch the teacher lags; keep 1 - alpha**iters about equal (100 steps: 0.996)
    ema_momentum: Float = Field(0.999, ge=0, le=1)
    agnostic_temperature: Float = Field(0.5, gt=0)  # tau_a of the camera-agnostic proxy loss on cluster centres, --tau-c
    label_smoothing: Float = Field(0.1, ge=0, lt=1)  # CrossEntropyLabelSmooth of the camera-agnostic loss
    camera_temperature: Float = Field(0.07, gt=0)  # tau_c (beta) of the camera-aware proxy losses
    hard_negatives: Int = Field(50, ge=1)  # k hardest negative proxies of the inter-camera loss (bg_knn)
    camera_weight: Float = Field(0.5, ge=0)  # lambda_c of L_cam (also the camera_proxy add-on: mu = 0.5 in ACFL-C)
    intra_camera_weight: Float = Field(0.0, ge=0)  # intra-camera proxy loss: commented out in the official code
    instance_temperature: Float = Field(0.1, gt=0)  # tau_h of the hard instance contrastive loss, --tau-v
    instance_weight: Float = Field(1.0, ge=0)  # lambda_h of L_h_ins
    consistency_temperature: Float = Field(0.4, gt=0)  # tau_s of the soft instance consistency loss, --scale-kl
    consistency_weight: Float = Field(10.0, ge=0)  # lambda_s of L_s_ins (the official "* 10")
    evaluate_teacher: Bool = True  # evaluate / save the EMA teacher (ICE and the mean_teacher add-on), as ICE does
    # inter-camera proxy scores (ICE and camera_proxy): official = normalize(f) @ normalize(P^T) as ice/trainers.py
    # writes it (each feature dimension normalised across the proxies) | cosine (each proxy a unit vector)
    proxy_scoring: Annotated[Literal["official", "cosine"], TEXT] = "official"
    # the teacher also runs on view 1 (output unused), as officially: 3 BN updates per step
    teacher_on_view1: Bool = True
    # teacher inputs shuffled before its (train.bn_chunk) BatchNorm chunks, as the official ShuffleBN
    shuffle_bn: Bool = True


class AcflConfig(Section):
    """ACFL (Pattern Recognition 2024); paper values."""

    section = "acfl"

    hpf_steps: Int = Field(10, ge=0)  # V, Eq. 2
    hpf_lr_positive: Float = Field(0.00035, ge=0)  # eta1
    hpf_lr_negative: Float = Field(0.0028, ge=0)  # eta2
    hpi_steps: Int = Field(3, ge=0)  # Z, Eq. 4
    hpi_lr: Float = Field(1.0, ge=0)  # eta3
    # Table 3: both | positive (c*_y, {c_a}) | negative (c_y, {c*_a})
    hpf_mode: Annotated[Literal["both", "positive", "negative"], TEXT] = "both"
    # L_ins of the align/hpi components: re (Eq. 7) | distance (Table 2, L_d = 2(1 - q.k))
    alignment: Annotated[Literal["re", "distance"], TEXT] = "re"
    re_detach_target: Bool = False  # Eq. 5 has no stop-gradient; true: v(Q(x_i)) is a constant (as ICE's KL)
    # x_j in the batch: random (Alg. 1 line 9) | hardest (lowest similarity, Table 4 "Mining")
    positive: Annotated[Literal["random", "hardest"], TEXT] = "random"
    # positive: hardest searches: identity (every image of the pseudo identity by the epoch's instance-memory similarity;
    # the loader brings it with the batch, Table 4 "Mining") | batch (the K images of the batch)
    mining_scope: Annotated[Literal["identity", "batch"], TEXT] = "identity"
    ins_weight: Float = Field(1.0, ge=0)  # weight of L_ins in Eq. 5 (the paper adds it with weight 1)
    # Eq. 7: forward KL(v(Q(x_i)) || v(Q(x_j))) | reverse (F.kl_div(log v_i, v_j) reading)
    re_direction: Annotated[Literal["forward", "reverse"], TEXT] = "forward"
    # BatchNorm during the Z ascent steps (Eq. 4 is a per-pair gradient): frozen_batch (the positives' batch statistics
    # computed once at x^(0), then constant) | running (running statistics) | batch (statistics of every step's batch)
    hpi_bn: Annotated[Literal["frozen_batch", "running", "batch"], TEXT] = "frozen_batch"
    # [H, W] at which eta3 is the paper's: the step is scaled by sqrt(H W / (H_ref W_ref)), so each pixel moves as
    # far as at the paper's 256x128 at any input size; [] (or null) = the unscaled step
    hpi_lr_reference: Annotated[list[Annotated[Int, Field(ge=1)]], ListOf,
                                rule(lambda v: len(v) in (0, 2), "be [height, width] or null")] = Field(
        default_factory=lambda: [256, 128])


class HngConfig(Section):
    """Self-guided hard negative generation (SHNG, IJCAI 2022); paper values where it gives them."""

    section = "hng"

    fusion: Annotated[Literal["part", "global", "concat", "noise", "mixup"], TEXT] = "part"  # h(f_anc, f_neg), Table 2
    # lambda, Eq. 2-3 (also global fusion and mixup); the paper gives none (docs/architecture.md, "Hard negative
    # generation")
    fusion_lambda: Float = Field(0.75, ge=0, le=1)
    part_stride: Int = Field(2, ge=1)  # d, the sliding window's stride in latent rows (window: H/2 x W), Sec. 3.2
    noise_std: Float = Field(1.0, ge=0)  # Table 2 "random noise": std of the Gaussian added to f_anc (paper gives none)
    ngf: Int = Field(64, ge=1)  # generator width (CycleGAN's default)
    ndf: Int = Field(64, ge=1)  # discriminator width (PatchGAN's default)
    res_blocks: Int = Field(3, ge=0)  # residual blocks in the encoder and in the decoder, Sec. 4.2
    # the norm of conv-norm-ReLU (CycleGAN: instance)
    norm: Annotated[Literal["instance", "batch"], TEXT] = "instance"
    lr: Float = Field(1.0e-4, gt=0)  # Adam lr of G and D, Sec. 4.2
    weight_decay: Float = Field(5.0e-4, ge=0)  # Sec. 4.2
    beta1: Float = Field(0.9, ge=0, lt=1)  # Adam beta1 (paper: "Adam", no betas given; torch default)
    temperature: Float = Field(0.05, gt=0)  # tau, Eq. 4 and Eq. 7
    rec_weight: Float = Field(1.0, ge=0)  # L_rec, Eq. 1 (Eq. 9 sums all terms with weight 1)
    hng_weight: Float = Field(1.0, ge=0)  # L_hng, Eq. 4-5
    adv_weight: Float = Field(1.0, ge=0)  # L_adv, Eq. 6
    con_weight: Float = Field(1.0, ge=0)  # L_con, Eq. 7-8
    # warm-up stage (epochs 0..warmup_epochs-1), then joint fine-tuning, Sec. 4.2
    warmup_epochs: Int = Field(50, ge=0)
    warmup_lr_step: Int = Field(20, ge=1)  # G's lr x lr_gamma after this many warm-up epochs
    joint_lr_step: Int = Field(10, ge=1)  # G's and D's lr x lr_gamma after this many joint epochs
    lr_gamma: Float = Field(0.1, gt=0)
    warmup_generator: Bool = True  # train G with L_rec during warm-up (Table 3 "w/o gen warm-up": false)
    pictures: Int = Field(8, ge=0)  # samples in the per-epoch picture grid; 0 = no pictures
    # BatchNorm running statistics and the L_con forward of [augmented, generated, parts]: frozen (only the real
    # anchors' forward updates them, the statistics stay those of real images) | update (every forward updates them)
    bn_synthetic: Annotated[Literal["frozen", "update"], TEXT] = "frozen"


class StrongBaselineConfig(Section):
    """OpenUnReID's strong clustering baseline (tools/strong_baseline/config.yaml), SHNG Table 1 "baseline"."""

    section = "strong_baseline"

    # CrossEntropyLoss epsilon over the epoch's clusters (models/losses/classification.py)
    label_smoothing: Float = Field(0.1, ge=0, lt=1)
    ce_weight: Float = Field(1.0, ge=0)  # TRAIN.LOSS.losses cross_entropy
    triplet_weight: Float = Field(1.0, ge=0)  # TRAIN.LOSS.losses softmax_triplet
    triplet_margin: Float = Field(0.0, ge=0)  # TRAIN.LOSS.margin of the softmax triplet loss (on the pooled features)
    # the runner's reset_optim: Adam's state is cleared when the labels change (each epoch)
    reset_optimizer: Bool = True
