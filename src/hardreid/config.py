"""Typed configuration: dataclasses with the papers' defaults, YAML files that
inherit (``_base_``), and dotted ``key=value`` overrides from the command line.

Every hyperparameter is a key here; the defaults are the Cluster Contrast
baseline of docs/architecture.md, "The Cluster Contrast baseline" (ResNet-50, 256x128, Jaccard k1 30 / k2 6,
DBSCAN eps 0.5 / min_samples 4, memory momentum 0.1, temperature 0.05,
Adam 3.5e-4, weight decay 5e-4).

Validation (every config built by :func:`load_config` or :func:`config_from_dict`, and every run before it
starts, passes through it; a bad value is one line naming the key, the value and what is allowed):

* **types** come from the dataclass annotations and are strict: an ``int`` key refuses ``1.9`` (and ``true``),
  a ``float`` key refuses ``nan`` / ``inf``, a ``bool`` key takes true/false (yes/no, on/off, 1/0 as text),
  a ``str`` key refuses numbers and lists. Keys without a rule are only type-checked.
* **ranges and choices** are one line per key in :data:`RULES`, keyed by ``"section.key"``::

      "cluster.eps": Range(0, 1, low_open=True, high_open=True),  # DBSCAN radius on Jaccard distances
      "memory.kind": OneOf("momentum", "instance", "queue"),

  A new key adds one such line. Rules: ``Range`` (shorthands ``POSITIVE``, ``NON_NEGATIVE``, ``ABOVE_ZERO``,
  ``PROBABILITY``), ``OneOf`` (choices kept in a registry: ``OneOf(function returning them)``), ``Matches``
  (a regular expression the text must match), ``Pattern`` (the text is a regex with a group), ``Each(rule)``
  for list keys.
* **rules between keys** (batch_size a multiple of num_instances, increasing milestones, ...) live in
  :func:`validate_config`, next to the table.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, get_args, get_origin, get_type_hints

import yaml

from .errors import UserError


@dataclass
class DataConfig:
    format: str = "auto"  # market1501 | dukemtmc | msmt17 | cuhk03np | market | folder | auto
    subset: str = "detected"  # CUHK03-NP: labeled | detected
    camera_pattern: str = ""  # folder format: regex whose first group is the camera id
    height: int = 256
    width: int = 128
    batch_size: int = 64  # P x K = 16 x 4
    num_instances: int = 4  # K images per pseudo identity in a batch
    # P x K sampler (data/sampler.py): auto = the base's official one (Cluster Contrast, SpCL, strong_baseline:
    # multi_camera; ICE: more_camera) | pk (K random images) | multi_camera (RandomMultipleGallerySampler: an anchor
    # and K - 1 images from its other cameras) | more_camera (ICE's MoreCameraSampler: one image per camera first)
    sampler: str = "auto"
    workers: int = 4
    flip_p: float = 0.5
    pad: int = 10
    erasing_p: float = 0.5
    # random erasing as the official codes (Zhong et al.): area fraction drawn from [low, high], aspect ratio from
    # [r1, 1/r1], the rectangle filled with erasing_fill in the *normalised* tensor (they write the ImageNet mean there)
    erasing_area: list[float] = field(default_factory=lambda: [0.02, 0.4])
    erasing_aspect: float = 0.3
    erasing_fill: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    blur_p: float = 0.0  # Gaussian blur of training images with this probability (ICE: 0.5)
    blur_sigma: list[float] = field(default_factory=lambda: [0.1, 2.0])  # blur radius drawn uniformly from this range
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])


@dataclass
class ModelConfig:
    backbone: str = "resnet50"  # resnet18 | resnet34 | resnet50 | mobilenet_v2 | vit_small (ViT-S/16, needs timm)
    last_stride: int = 1
    pooling: str = "avg"  # avg | gem
    gem_p: float = 3.0  # GeM exponent (its initial value when learnable)
    gem_learnable: bool = True  # GeM's p is a trained parameter (fast-reid's GeneralizedMeanPoolingP, Cluster Contrast's "gem")
    weights: str = ""  # local torchvision-layout state dict (timm layout for vit_small); "" = random init
    pretrained: bool = False  # torchvision download (fails offline with a clear message)


@dataclass
class ClusterConfig:
    """Pseudo labels each epoch (hardreid.pseudo_labels.cluster_epoch): Jaccard distance, then DBSCAN or HDBSCAN."""

    k1: int = 30
    k2: int = 6
    algorithm: str = "dbscan"  # dbscan | hdbscan (scikit-learn's HDBSCAN on the sparse Jaccard graph, no eps)
    eps: float | str = 0.5  # DBSCAN radius (0.7 for MSMT17), or "auto": set each epoch by the rule of eps_rho
    eps_rho: float = 1.6e-3  # eps auto: mean distance of this fraction of closest pairs (Song et al.; SSG / MMT code)
    min_samples: int = 4
    min_cluster_size: int = 0  # hdbscan: smallest cluster; 0 = min_samples
    hdbscan_selection: str = "eom"  # hdbscan: eom (excess of mass, scikit-learn's default) | leaf
    search: str = "exact"  # exact | fast (see pseudo_labels/jaccard.py)
    camera_normalize: str = "none"  # none | mean | standardize: per-camera feature statistics removed before Jaccard
    same_camera_penalty: float = 0.0  # added to same-camera d = 2 - 2cos in the kNN of the Jaccard distance (0-4)
    large_cluster_factor: float = 25.0  # diagnostics: a cluster is large above this x min_samples images
    warn_large_share: float = 0.2  # collapse warning: share of images in large clusters above this
    warn_single_camera_share: float = 0.9  # collapse warning: share of one-camera clusters above this (>1 camera)


@dataclass
class MemoryConfig:
    temperature: float = 0.05
    momentum: float = 0.1  # m <- momentum * m + (1 - momentum) * f, then renormalised
    kind: str = "momentum"  # momentum (Cluster Contrast) | instance (ACFL 3.1: C = means of M) | queue (ACFL Table 10)
    queue_ratio: float = 1.0  # mu of ACFL Table 10: the queue holds mu x N features (memory.kind=queue)
    normalize_person_features: bool = False  # instance/queue: L2-normalise the means (ACFL averages only)


@dataclass
class OptimConfig:
    name: str = "adam"
    lr: float = 3.5e-4
    weight_decay: float = 5e-4
    step_size: int = 20  # epochs between lr decays (when milestones is empty)
    gamma: float = 0.1
    milestones: list[int] = field(default_factory=list)  # epochs after which lr *= gamma; non-empty replaces step_size
    warmup_epochs: int = 0  # linear warm-up from warmup_factor x lr to lr over these epochs (ICE: 10)
    warmup_factor: float = 0.1
    # Piecewise-constant lr factors [[epoch, factor], ...] (factor applies from that epoch on); non-empty replaces
    # step_size / gamma / milestones (warm-up still applies). Lets one run hold several stages, e.g. SHNG's
    # warm-up + joint fine-tuning.
    lr_schedule: list[list[float]] = field(default_factory=list)


@dataclass
class TrainConfig:
    epochs: int = 50
    iters: int = 400  # optimiser steps per epoch; 0 = one pass over the clustered images
    eval_every: int = 10  # evaluate every N epochs (and after the last one); 0 = only at the end
    # also score the model before epoch 1 (the weights training starts from), so the end of the run can say whether
    # training made it better or worse (RUN_DIR/start_scores.json, the curves' epoch 0); needs query and gallery
    eval_at_start: bool = True
    seed: int = 1
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # mixed precision (autocast) of the training steps on CUDA; on CPU only with amp_cpu
    amp_dtype: str = "auto"  # auto (float16 on CUDA, bfloat16 on CPU) | float16 | bfloat16
    amp_cpu: bool = False  # autocast on CPU too (bfloat16): the mixed-precision path without a GPU (tests)
    calibrate_bn: str = "auto"  # auto (only from random init) | always | never: BatchNorm statistics before epoch 1
    channels_last: bool = True  # NHWC layout (about 2x faster on CPU, also good with CUDA AMP)
    # >0: BatchNorm normalises chunks of this many images, the per-GPU share of an official multi-GPU batch
    # (Cluster Contrast 256 / 4 GPUs = 64, SpCL 64 / 4 = 16, ICE 32 / 4 = 8, ACFL 64 / 2 = 32; set in each base's configs)
    bn_chunk: int = 0
    sync_bn: bool = False  # several processes (torchrun, CUDA): SyncBatchNorm over the global batch, not per process
    dist_timeout: float = 30.0  # several processes: minutes a collective waits for the others before the job fails
    check_ranks: bool = False  # several processes: compare weights and memories of every process each epoch (debug)
    save_every: int = 1  # write last.pth every N epochs
    tensorboard: bool = False  # also write each epoch's metrics as TensorBoard scalars (RUN_DIR/tensorboard; needs tensorboard)


@dataclass
class EvalConfig:
    flip: bool = False  # average features of the image and its mirror
    rerank: bool = False
    batch_size: int = 128
    max_rank: int = 10


@dataclass
class MethodConfig:
    base: str = "cluster_contrast"  # cluster_contrast | spcl | ice | strong_baseline
    hard_samples: list[str] = field(default_factory=list)  # generators, e.g. [hpf, hpi] (ACFL) or [hng] (SHNG)


@dataclass
class SpclConfig:
    """SpCL (Ge et al. 2020) base; defaults of its official code (examples/spcl_train_usl.py)."""

    temperature: float = 0.05  # tau of the unified contrastive loss (Eq. 1), --temp
    momentum: float = 0.2  # m of the instance memory update v <- m v + (1 - m) f (Eq. 3), --momentum
    eps_gap: float = 0.02  # reliability: DBSCAN again with cluster.eps -/+ eps_gap (tight / loose), --eps-gap
    indep_percentile: float = 0.9  # alpha: R_indep threshold = this percentile of the clusters' scores at epoch 1


@dataclass
class IceConfig:
    """ICE (Chen et al. 2021) base; defaults of its official code (examples/unsupervised_train.py, ice/trainers.py).

    The add-ons ``camera_proxy`` and ``mean_teacher`` (method.hard_samples) read the keys they share with ICE here.
    """

    # alpha of the EMA teacher (also the mean_teacher add-on), --alpha. Tuned for 400 steps per epoch: with fewer
    # steps per epoch the teacher lags; keep 1 - alpha**iters about equal (100 steps: 0.996)
    ema_momentum: float = 0.999
    agnostic_temperature: float = 0.5  # tau_a of the camera-agnostic proxy loss on cluster centres, --tau-c
    label_smoothing: float = 0.1  # CrossEntropyLabelSmooth of the camera-agnostic loss
    camera_temperature: float = 0.07  # tau_c (beta) of the camera-aware proxy losses
    hard_negatives: int = 50  # k hardest negative proxies of the inter-camera loss (bg_knn)
    camera_weight: float = 0.5  # lambda_c of L_cam (also the camera_proxy add-on: mu = 0.5 in ACFL-C)
    intra_camera_weight: float = 0.0  # intra-camera proxy loss: commented out in the official code
    instance_temperature: float = 0.1  # tau_h of the hard instance contrastive loss, --tau-v
    instance_weight: float = 1.0  # lambda_h of L_h_ins
    consistency_temperature: float = 0.4  # tau_s of the soft instance consistency loss, --scale-kl
    consistency_weight: float = 10.0  # lambda_s of L_s_ins (the official "* 10")
    evaluate_teacher: bool = True  # evaluate / save the EMA teacher (ICE and the mean_teacher add-on), as ICE does
    # inter-camera proxy scores (ICE and camera_proxy): official = normalize(f) @ normalize(P^T) as ice/trainers.py
    # writes it (each feature dimension normalised across the proxies) | cosine (each proxy a unit vector)
    proxy_scoring: str = "official"
    teacher_on_view1: bool = True  # the teacher also runs on view 1 (output unused), as officially: 3 BN updates per step
    shuffle_bn: bool = True  # teacher inputs shuffled before its (train.bn_chunk) BatchNorm chunks, as the official ShuffleBN


@dataclass
class AcflConfig:
    """ACFL (Pattern Recognition 2024); paper values."""

    hpf_steps: int = 10  # V, Eq. 2
    hpf_lr_positive: float = 0.00035  # eta1
    hpf_lr_negative: float = 0.0028  # eta2
    hpi_steps: int = 3  # Z, Eq. 4
    hpi_lr: float = 1.0  # eta3
    hpf_mode: str = "both"  # Table 3: both | positive (c*_y, {c_a}) | negative (c_y, {c*_a})
    alignment: str = "re"  # L_ins of the align/hpi components: re (Eq. 7) | distance (Table 2, L_d = 2(1 - q.k))
    re_detach_target: bool = False  # Eq. 5 has no stop-gradient; true: v(Q(x_i)) is a constant (as ICE's KL)
    positive: str = "random"  # x_j in the batch: random (Alg. 1 line 9) | hardest (lowest similarity, Table 4 "Mining")
    # positive: hardest searches: identity (every image of the pseudo identity by the epoch's instance-memory similarity;
    # the loader brings it with the batch, Table 4 "Mining") | batch (the K images of the batch)
    mining_scope: str = "identity"
    ins_weight: float = 1.0  # weight of L_ins in Eq. 5 (the paper adds it with weight 1)
    re_direction: str = "forward"  # Eq. 7: forward KL(v(Q(x_i)) || v(Q(x_j))) | reverse (F.kl_div(log v_i, v_j) reading)
    # BatchNorm during the Z ascent steps (Eq. 4 is a per-pair gradient): frozen_batch (the positives' batch statistics
    # computed once at x^(0), then constant) | running (running statistics) | batch (statistics of every step's batch)
    hpi_bn: str = "frozen_batch"
    # [H, W] at which eta3 is the paper's: the step is scaled by sqrt(H W / (H_ref W_ref)), so each pixel moves as
    # far as at the paper's 256x128 at any input size; [] (or null) = the unscaled step
    hpi_lr_reference: list[int] = field(default_factory=lambda: [256, 128])


@dataclass
class HngConfig:
    """Self-guided hard negative generation (SHNG, IJCAI 2022); paper values where it gives them."""

    fusion: str = "part"  # h(f_anc, f_neg), Table 2: part | global | concat | noise | mixup
    fusion_lambda: float = 0.75  # lambda, Eq. 2-3 (also global fusion and mixup); the paper gives none (docs/architecture.md, "Hard negative generation")
    part_stride: int = 2  # d, the sliding window's stride in latent rows (window: H/2 x W), Sec. 3.2
    noise_std: float = 1.0  # Table 2 "random noise": std of the Gaussian added to f_anc (paper gives none)
    ngf: int = 64  # generator width (CycleGAN's default)
    ndf: int = 64  # discriminator width (PatchGAN's default)
    res_blocks: int = 3  # residual blocks in the encoder and in the decoder, Sec. 4.2
    norm: str = "instance"  # instance | batch: the norm of conv-norm-ReLU (CycleGAN: instance)
    lr: float = 1.0e-4  # Adam lr of G and D, Sec. 4.2
    weight_decay: float = 5.0e-4  # Sec. 4.2
    beta1: float = 0.9  # Adam beta1 (paper: "Adam", no betas given; torch default)
    temperature: float = 0.05  # tau, Eq. 4 and Eq. 7
    rec_weight: float = 1.0  # L_rec, Eq. 1 (Eq. 9 sums all terms with weight 1)
    hng_weight: float = 1.0  # L_hng, Eq. 4-5
    adv_weight: float = 1.0  # L_adv, Eq. 6
    con_weight: float = 1.0  # L_con, Eq. 7-8
    warmup_epochs: int = 50  # warm-up stage (epochs 0..warmup_epochs-1), then joint fine-tuning, Sec. 4.2
    warmup_lr_step: int = 20  # G's lr x lr_gamma after this many warm-up epochs
    joint_lr_step: int = 10  # G's and D's lr x lr_gamma after this many joint epochs
    lr_gamma: float = 0.1
    warmup_generator: bool = True  # train G with L_rec during warm-up (Table 3 "w/o gen warm-up": false)
    pictures: int = 8  # samples in the per-epoch picture grid; 0 = no pictures
    # BatchNorm running statistics and the L_con forward of [augmented, generated, parts]: frozen (only the real
    # anchors' forward updates them, the statistics stay those of real images) | update (every forward updates them)
    bn_synthetic: str = "frozen"


@dataclass
class StrongBaselineConfig:
    """OpenUnReID's strong clustering baseline (tools/strong_baseline/config.yaml), SHNG Table 1 "baseline"."""

    label_smoothing: float = 0.1  # CrossEntropyLoss epsilon over the epoch's clusters (models/losses/classification.py)
    ce_weight: float = 1.0  # TRAIN.LOSS.losses cross_entropy
    triplet_weight: float = 1.0  # TRAIN.LOSS.losses softmax_triplet
    triplet_margin: float = 0.0  # TRAIN.LOSS.margin of the softmax triplet loss (on the pooled features)
    reset_optimizer: bool = True  # the runner's reset_optim: Adam's state is cleared when the labels change (each epoch)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    spcl: SpclConfig = field(default_factory=SpclConfig)
    ice: IceConfig = field(default_factory=IceConfig)
    acfl: AcflConfig = field(default_factory=AcflConfig)
    hng: HngConfig = field(default_factory=HngConfig)
    strong_baseline: StrongBaselineConfig = field(default_factory=StrongBaselineConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)



# -- validation: one rule per key ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Range:
    """A number within bounds (``None`` = unbounded); ``*_open`` excludes the bound itself."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def ok(self, value: Any) -> bool:
        low_ok = self.low is None or (value > self.low if self.low_open else value >= self.low)
        high_ok = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return low_ok and high_ok

    def describe(self, kind: Any) -> str:
        noun = "an integer" if kind is int else "a number"
        if self.low is not None and self.high is not None:
            return f"{noun} in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{noun} {'>' if self.low_open else '>='} {self.low:g}"
        return f"{noun} {'<' if self.high_open else '<='} {self.high:g}"


class OneOf:
    """One of fixed choices, or of the names a registry holds (``OneOf(provider)``, asked when checking)."""

    def __init__(self, *choices: Any) -> None:
        self._choices = choices

    def choices(self) -> tuple[Any, ...]:
        if len(self._choices) == 1 and callable(self._choices[0]):
            return tuple(self._choices[0]())
        return self._choices

    def ok(self, value: Any) -> bool:
        return value in self.choices()

    def describe(self, kind: Any) -> str:
        choices = self.choices()
        return str(choices[0]) if len(choices) == 1 else "one of " + ", ".join(str(c) for c in choices)


@dataclass(frozen=True)
class Matches:
    """Text matching a regular expression (in full)."""

    pattern: str
    text: str

    def ok(self, value: Any) -> bool:
        return re.fullmatch(self.pattern, value) is not None

    def describe(self, kind: Any) -> str:
        return self.text


class Pattern:
    """A regular expression with at least one group, or empty."""

    def ok(self, value: Any) -> bool:
        try:
            return not value or re.compile(value).groups >= 1
        except re.error:
            return False

    def describe(self, kind: Any) -> str:
        return "empty or a regular expression whose first group is the camera id, e.g. 'c(\\d+)'"


@dataclass(frozen=True)
class Each:
    """Every item of a list key satisfies ``rule``."""

    rule: Any

    def ok(self, value: Any) -> bool:
        return all(self.rule.ok(item) for item in value)

    def describe(self, kind: Any) -> str:
        (item,) = get_args(kind) or (float,)
        if isinstance(self.rule, OneOf):
            return f"a list of names from: {', '.join(str(c) for c in self.rule.choices())}"
        return f"a list of {self.rule.describe(item).replace('an integer', 'integers').replace('a number', 'numbers')}"


@dataclass(frozen=True)
class AnyOf:
    """Satisfies one of ``rules`` (e.g. cluster.eps: a number in (0, 1) or ``auto``)."""

    rules: tuple[Any, ...]

    def ok(self, value: Any) -> bool:
        for rule in self.rules:
            try:
                if rule.ok(value):
                    return True
            except TypeError:  # a number rule asked about text, or the reverse
                continue
        return False

    def describe(self, kind: Any) -> str:
        kinds = get_args(kind) or (kind,)
        return " or ".join(rule.describe(k) for rule, k in zip(self.rules, kinds))


#: key -> function returning the valid names of a choice that a registry above this module holds (the methods'
#: registry: method.base, method.hard_samples; the backbones: model.backbone). Each registry adds its own when it is
#: imported (``register_choices``), so that this module imports nothing above it (docs/architecture.md, "Layers").
CHOICES: dict[str, Callable[[], Any]] = {}


def register_choices(key: str, names: Callable[[], Any]) -> None:
    """Let ``names()`` (asked when a value is checked) give the valid values of ``key`` (``"section.key"``)."""
    CHOICES[key] = names


def registered(key: str) -> Callable[[], list[Any]]:
    """The names the registry of ``key`` holds when asked (``OneOf(registered("method.base"))``)."""
    def names() -> list[Any]:
        if key not in CHOICES:
            raise RuntimeError(f"no registry gave the choices of {key}: import hardreid (the package) first")
        return list(CHOICES[key]())
    return names


POSITIVE = Range(1)  # integers >= 1
NON_NEGATIVE = Range(0)
ABOVE_ZERO = Range(0, low_open=True)  # temperatures, learning rates
PROBABILITY = Range(0, 1)

#: "section.key" -> what the key accepts beyond its type. Keys not listed here are only type-checked.
RULES: dict[str, Any] = {
    "data.format": OneOf("auto", "market1501", "dukemtmc", "msmt17", "cuhk03np", "market", "folder"),
    "data.subset": OneOf("labeled", "detected"),
    "data.camera_pattern": Pattern(),
    "data.height": POSITIVE,
    "data.width": POSITIVE,
    "data.batch_size": POSITIVE,
    "data.num_instances": POSITIVE,
    "data.workers": NON_NEGATIVE,
    "data.flip_p": PROBABILITY,
    "data.pad": NON_NEGATIVE,
    "data.erasing_p": PROBABILITY,
    "data.sampler": OneOf("auto", "pk", "multi_camera", "more_camera"),
    "data.erasing_area": Each(Range(0, 1, low_open=True)),
    "data.erasing_aspect": Range(0, 1, low_open=True),
    "data.blur_p": PROBABILITY,
    "data.blur_sigma": Each(ABOVE_ZERO),
    "data.std": Each(ABOVE_ZERO),
    "model.backbone": OneOf(registered("model.backbone")),
    "model.last_stride": OneOf(1, 2),
    "model.pooling": OneOf("avg", "gem"),
    "model.gem_p": ABOVE_ZERO,
    "cluster.k1": POSITIVE,
    "cluster.k2": POSITIVE,
    "cluster.algorithm": OneOf("dbscan", "hdbscan"),
    # DBSCAN radius on Jaccard distances (in [0, 1]), or auto (set each epoch, pseudo_labels/density.py)
    "cluster.eps": AnyOf((Range(0, 1, low_open=True, high_open=True), OneOf("auto"))),
    "cluster.eps_rho": Range(0, 1, low_open=True),
    "cluster.min_samples": POSITIVE,
    "cluster.min_cluster_size": NON_NEGATIVE,  # 0 = min_samples
    "cluster.hdbscan_selection": OneOf("eom", "leaf"),
    "cluster.search": OneOf("exact", "fast"),
    "cluster.camera_normalize": OneOf("none", "mean", "standardize"),
    # 4 = the largest change of d = 2 - 2cos: every other-camera neighbour ranks before every same-camera one
    "cluster.same_camera_penalty": Range(0, 4),
    "cluster.large_cluster_factor": ABOVE_ZERO,
    "cluster.warn_large_share": PROBABILITY,
    "cluster.warn_single_camera_share": PROBABILITY,
    "memory.temperature": ABOVE_ZERO,
    "memory.momentum": PROBABILITY,
    "memory.kind": OneOf("momentum", "instance", "queue"),
    "memory.queue_ratio": Range(0, 1, low_open=True),
    "optim.name": OneOf("adam", "sgd"),
    "optim.lr": ABOVE_ZERO,
    "optim.weight_decay": NON_NEGATIVE,
    "optim.step_size": POSITIVE,
    "optim.gamma": ABOVE_ZERO,
    "optim.milestones": Each(POSITIVE),
    "optim.warmup_epochs": NON_NEGATIVE,
    "optim.warmup_factor": ABOVE_ZERO,
    "train.epochs": POSITIVE,
    "train.iters": NON_NEGATIVE,  # 0 = one pass over the clustered images
    "train.eval_every": NON_NEGATIVE,
    "train.seed": NON_NEGATIVE,
    "train.device": Matches(r"auto|cpu|cuda(:\d+)?", "auto, cpu, cuda or cuda:N"),
    "train.calibrate_bn": OneOf("auto", "always", "never"),
    "train.bn_chunk": NON_NEGATIVE,
    "train.dist_timeout": ABOVE_ZERO,
    "train.amp_dtype": OneOf("auto", "float16", "bfloat16"),
    "train.save_every": POSITIVE,
    "eval.batch_size": POSITIVE,
    "eval.max_rank": POSITIVE,
    "method.base": OneOf(registered("method.base")),
    "method.hard_samples": Each(OneOf(registered("method.hard_samples"))),
    "spcl.temperature": ABOVE_ZERO,
    "spcl.momentum": PROBABILITY,
    "spcl.eps_gap": Range(0, 1, low_open=True, high_open=True),
    "spcl.indep_percentile": PROBABILITY,
    "ice.ema_momentum": PROBABILITY,
    "ice.agnostic_temperature": ABOVE_ZERO,
    "ice.label_smoothing": Range(0, 1, high_open=True),
    "ice.camera_temperature": ABOVE_ZERO,
    "ice.hard_negatives": POSITIVE,
    "ice.camera_weight": NON_NEGATIVE,
    "ice.intra_camera_weight": NON_NEGATIVE,
    "ice.instance_temperature": ABOVE_ZERO,
    "ice.instance_weight": NON_NEGATIVE,
    "ice.consistency_temperature": ABOVE_ZERO,
    "ice.consistency_weight": NON_NEGATIVE,
    "ice.proxy_scoring": OneOf("official", "cosine"),
    "acfl.hpf_steps": NON_NEGATIVE,
    "acfl.hpf_lr_positive": NON_NEGATIVE,
    "acfl.hpf_lr_negative": NON_NEGATIVE,
    "acfl.hpi_steps": NON_NEGATIVE,
    "acfl.hpi_lr": NON_NEGATIVE,
    "acfl.hpf_mode": OneOf("both", "positive", "negative"),
    "acfl.alignment": OneOf("re", "distance"),
    "acfl.positive": OneOf("random", "hardest"),
    "acfl.ins_weight": NON_NEGATIVE,
    "acfl.mining_scope": OneOf("identity", "batch"),
    "acfl.re_direction": OneOf("forward", "reverse"),
    "acfl.hpi_bn": OneOf("frozen_batch", "running", "batch"),
    "acfl.hpi_lr_reference": Each(POSITIVE),  # [height, width] or [] (null): see validate_config
    "hng.fusion": OneOf("part", "global", "concat", "noise", "mixup"),
    "hng.fusion_lambda": PROBABILITY,
    "hng.part_stride": POSITIVE,
    "hng.noise_std": NON_NEGATIVE,
    "hng.ngf": POSITIVE,
    "hng.ndf": POSITIVE,
    "hng.res_blocks": NON_NEGATIVE,
    "hng.norm": OneOf("instance", "batch"),
    "hng.lr": ABOVE_ZERO,
    "hng.weight_decay": NON_NEGATIVE,
    "hng.beta1": Range(0, 1, high_open=True),
    "hng.temperature": ABOVE_ZERO,
    "hng.rec_weight": NON_NEGATIVE,
    "hng.hng_weight": NON_NEGATIVE,
    "hng.adv_weight": NON_NEGATIVE,
    "hng.con_weight": NON_NEGATIVE,
    "hng.warmup_epochs": NON_NEGATIVE,
    "hng.warmup_lr_step": POSITIVE,
    "hng.joint_lr_step": POSITIVE,
    "hng.lr_gamma": ABOVE_ZERO,
    "hng.pictures": NON_NEGATIVE,
    "hng.bn_synthetic": OneOf("frozen", "update"),
    "strong_baseline.label_smoothing": Range(0, 1, high_open=True),
    "strong_baseline.ce_weight": NON_NEGATIVE,
    "strong_baseline.triplet_weight": NON_NEGATIVE,
    "strong_baseline.triplet_margin": NON_NEGATIVE,
}


def check_value(key: str, value: Any, kind: Any, source: str = "") -> None:
    """Raise a UserError when ``value`` of ``key`` (already of type ``kind``) breaks its rule in RULES."""
    rule = RULES.get(key)
    if rule is not None and not rule.ok(value):
        where = f" in {source}" if source else ""
        raise UserError(f"config key '{key}'{where} must be {rule.describe(kind)}, got {value!r}")


def check_section(name: str, section: Any) -> None:
    """Check every key of one section object (e.g. ``cfg.cluster``) as :func:`validate_config` does: for library
    calls that take a section rather than a whole config."""
    for key, kind in get_type_hints(type(section)).items():
        value = getattr(section, key)
        _coerce(value, kind, f"{name}.{key}", "the config")
        check_value(f"{name}.{key}", value, kind)


def _fields(cfg: Config) -> list[tuple[str, Any, Any]]:
    """(section.key, value, annotated type) of every key."""
    out = []
    for section in dataclasses.fields(cfg):
        obj = getattr(cfg, section.name)
        for key, kind in get_type_hints(type(obj)).items():
            out.append((f"{section.name}.{key}", getattr(obj, key), kind))
    return out


def validate_config(cfg: Config) -> Config:
    """Check every key's type and rule, then the rules between keys; raise one clear UserError."""
    for key, value, kind in _fields(cfg):
        _coerce(value, kind, key, "the config")  # types of values set in Python (not through apply_dict)
        check_value(key, value, kind)
    d, c, o = cfg.data, cfg.cluster, cfg.optim

    def need(condition: bool, message: str) -> None:
        if not condition:
            raise UserError(f"config: {message}")

    need(d.batch_size % d.num_instances == 0,
         f"data.batch_size ({d.batch_size}) must be a multiple of data.num_instances ({d.num_instances}): "
         "a batch holds P identities x K = num_instances images")
    need(d.batch_size >= 2 * d.num_instances,
         f"data.batch_size ({d.batch_size}) must hold at least 2 identities of data.num_instances ({d.num_instances}) "
         f"images, i.e. be >= {2 * d.num_instances}: contrastive losses need negatives in the batch")
    need(len(d.blur_sigma) == 2 and d.blur_sigma[0] <= d.blur_sigma[1],
         f"data.blur_sigma must be [low, high] with low <= high, got {d.blur_sigma}")
    need(len(d.mean) == 3 and len(d.std) == 3, f"data.mean and data.std need 3 values (R, G, B), got {d.mean} and {d.std}")
    need(len(d.erasing_area) == 2 and d.erasing_area[0] <= d.erasing_area[1],
         f"data.erasing_area must be [low, high] with low <= high, got {d.erasing_area}")
    need(len(d.erasing_fill) == 3, f"data.erasing_fill needs 3 values (R, G, B), got {d.erasing_fill}")
    need(len(cfg.acfl.hpi_lr_reference) in (0, 2),
         f"acfl.hpi_lr_reference must be [height, width] or null, got {cfg.acfl.hpi_lr_reference}")
    need(c.k2 <= c.k1, f"cluster.k2 ({c.k2}) must not exceed cluster.k1 ({c.k1}): query expansion uses the k2 "
                       "nearest of the k1 neighbours")
    need(all(a < b for a, b in zip(o.milestones, o.milestones[1:])),
         f"optim.milestones must be increasing epochs, got {o.milestones}")
    need(all(len(e) == 2 and e[0] >= 0 and float(e[0]).is_integer() and e[1] >= 0 for e in o.lr_schedule),
         f"optim.lr_schedule must be a list of [epoch >= 0, factor >= 0] pairs, got {o.lr_schedule}")
    starts = [e[0] for e in o.lr_schedule]
    need(not starts or (starts[0] == 0 and all(a < b for a, b in zip(starts, starts[1:]))),
         f"optim.lr_schedule must start at epoch 0 with increasing epochs, got {o.lr_schedule}")
    need(not (cfg.train.sync_bn and cfg.train.bn_chunk > 0),
         f"train.sync_bn normalises over the global batch and train.bn_chunk={cfg.train.bn_chunk} over chunks of it: "
         "choose one (train.bn_chunk=0 with train.sync_bn=true)")
    need(len(set(cfg.method.hard_samples)) == len(cfg.method.hard_samples),
         f"method.hard_samples lists a generator twice: {cfg.method.hard_samples}")
    if cfg.method.base == "spcl" and c.eps != "auto":
        need(cfg.spcl.eps_gap < c.eps, f"spcl.eps_gap ({cfg.spcl.eps_gap}) must be smaller than cluster.eps ({c.eps}): "
                                        "SpCL clusters again with eps - eps_gap")
    if cfg.model.backbone.startswith("vit"):
        need(d.height % 16 == 0 and d.width % 16 == 0,
             f"data.height and data.width must be multiples of 16 for {cfg.model.backbone} (16x16 patches), "
             f"got {d.height}x{d.width}")
    return cfg


# -- building a config: defaults, YAML files, overrides ------------------------------------------------------
def _section_types(cfg: Config) -> dict[str, type]:
    return {f.name: type(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def _unknown(kind: str, name: str, choices: list[str], source: str) -> UserError:
    close = difflib.get_close_matches(name, choices, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return UserError(f"unknown config {kind} '{name}' in {source}.{hint} Valid: {', '.join(sorted(choices))}")


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _coerce(value: Any, target: Any, key: str, source: str) -> Any:
    """``value`` as the declared type of ``key`` (YAML scalars, CLI strings); strict: nothing is truncated."""
    def refuse(expected: str) -> UserError:
        return UserError(f"config key '{key}' in {source} must be {expected}, got {value!r}")

    if isinstance(target, types.UnionType):  # e.g. cluster.eps: float | str ("auto"): the first type that fits
        for option in get_args(target):
            try:
                return _coerce(value, option, key, source)
            except UserError:
                continue
        raise refuse(" or ".join(getattr(t, "__name__", str(t)) for t in get_args(target)))
    if get_origin(target) is list:
        if isinstance(value, str):  # command line (or a YAML string): parse as YAML
            try:
                value = yaml.safe_load(value) if value.strip() else []
            except yaml.YAMLError:
                raise refuse("a list such as [a, b]") from None
        if value is None:
            value = []
        if not isinstance(value, list):
            value = [value]
        (item_type,) = get_args(target)
        return [_coerce(v, item_type, key, source) for v in value]
    if target is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise refuse("true or false")
    if target is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
            return int(value)
        raise refuse("an integer")
    if target is float:
        number = value
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                raise refuse("a number") from None
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
            raise refuse("a finite number")
        return float(number)
    if target is str:
        if value is None:
            return ""
        if isinstance(value, str):
            return value
        raise refuse("text (put it in quotes)")
    return value


def apply_dict(cfg: Config, values: dict[str, Any], source: str) -> Config:
    """Set the keys of a nested ``{section: {key: value}}`` dict on ``cfg`` (checked)."""
    sections = _section_types(cfg)
    for section, entries in values.items():
        if section not in sections:
            raise _unknown("section", section, list(sections), source)
        if entries is None:
            continue
        if not isinstance(entries, dict):
            raise UserError(f"config section '{section}' in {source} must be a mapping of keys, got {entries!r}")
        obj = getattr(cfg, section)
        hints = get_type_hints(type(obj))
        for key, value in entries.items():
            if key not in hints:
                raise _unknown("key", f"{section}.{key}", [f"{section}.{k}" for k in hints], source)
            value = _coerce(value, hints[key], f"{section}.{key}", source)
            check_value(f"{section}.{key}", value, hints[key], source)
            setattr(obj, key, value)
    return cfg


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML file and merge it over its ``_base_`` chain (paths relative to the file)."""
    try:
        path = path.expanduser().resolve()
    except (OSError, RuntimeError) as exc:  # a symbolic link loop
        raise UserError(f"config file {path} cannot be resolved: {exc}") from None
    if path in seen:
        raise UserError(f"config {path} inherits from itself through _base_")
    if path.is_dir():
        raise UserError(f"config {path} is a folder, expected a YAML file (e.g. {path}/market1501.yaml)")
    if not path.is_file():
        raise UserError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise UserError(f"config file {path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at position "
                        f"{exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise UserError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"config file {path} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    bases = data.pop("_base_", None) or []
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise UserError(f"_base_ in {path} must be a file name or a list of file names, got {bases!r}")
    merged: dict[str, Any] = {}
    for base in bases:
        _deep_merge(merged, _read_yaml(path.parent / base, seen + (path,)))
    _deep_merge(merged, data)
    return merged


def _deep_merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value


def parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """``["train.epochs=5", "model.backbone=resnet18"]`` -> nested dict of strings."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise UserError(f"override '{item}' must look like section.key=value, e.g. train.epochs=5")
        key, value = item.split("=", 1)
        section, name = key.split(".", 1)
        out.setdefault(section, {})[name] = value
    return out


CONFIG_DIR = Path(__file__).resolve().parent / "configs"  # shipped with the package (package data)


def packaged_configs() -> list[str]:
    """Names of the packaged configs (``acfl/market1501``, ...), for ``--config NAME``."""
    return sorted(p.relative_to(CONFIG_DIR).with_suffix("").as_posix() for p in CONFIG_DIR.rglob("*.yaml"))


def resolve_config(name_or_file: str | Path) -> Path:
    """A YAML file that exists, else the packaged config of that name (``acfl/market1501``, ``.yaml`` optional).

    ``configs/acfl/market1501.yaml`` (the checkout's path) also resolves to the packaged file when there is
    no such file relative to the working directory.
    """
    path = Path(name_or_file).expanduser()
    if path.is_file():
        return path
    name = path.as_posix().removesuffix(".yaml").removeprefix("configs/")
    packaged = CONFIG_DIR / f"{name}.yaml"
    if packaged.is_file():
        return packaged
    if path.is_dir():
        raise UserError(f"config {path} is a folder, expected a YAML file or a config name such as acfl/market1501")
    names = packaged_configs()
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(close)}?" if close else " 'hardreid configs' lists the names."
    raise UserError(f"config {name_or_file} does not exist: it is neither a file nor a packaged config name.{hint}")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, base: Config | None = None) -> Config:
    """Defaults (or a copy of ``base``), then the YAML file or packaged config (with its bases), then command-line
    overrides."""
    cfg = copy.deepcopy(base) if base is not None else Config()
    if path is not None:
        apply_dict(cfg, _read_yaml(resolve_config(path)), str(path))
    if overrides:
        apply_dict(cfg, parse_overrides(overrides), "command-line overrides")
    return validate_config(cfg)


def config_from_dict(values: dict[str, Any], source: str = "checkpoint config") -> Config:
    """Rebuild a Config saved in a checkpoint (unknown keys and bad values are an error)."""
    if not isinstance(values, dict):
        raise UserError(f"{source} must be a mapping of sections, got {type(values).__name__}")
    return validate_config(apply_dict(Config(), values, source))


def dump_config(cfg: Config, path: str | Path) -> None:
    """Write ``cfg`` as YAML, atomically (a kill never leaves a half-written config.yaml)."""
    from .files import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


load = load_config
