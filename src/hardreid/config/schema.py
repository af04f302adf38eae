"""The sections of the training config (data, model, cluster, memory, optim, train, eval, method) as pydantic models.

Every hyperparameter is a key here with what it accepts next to it: a type of :mod:`.fields` (strict: nothing is
truncated or guessed), bounds (``Field(ge=..., gt=..., le=..., lt=...)``), choices (``Literal[...]``, or
``from_registry`` for names a registry holds) and ``rule`` for what those cannot say. A new key is one line.
The defaults are the Cluster Contrast baseline of docs/architecture.md, "The Cluster Contrast baseline"
(ResNet-50, 256x128, Jaccard k1 30 / k2 6, DBSCAN eps 0.5 / min_samples 4, memory momentum 0.1, temperature 0.05,
Adam 3.5e-4, weight decay 5e-4). The sections of the methods are in :mod:`.method_sections`; the rules between
keys are :meth:`Config.rules_between_keys`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from .base import Section
from .fields import (Bool, BoolOrAuto, Float, Int, ListOf, Str, camera_regex, compile_mode, eps_value, from_registry, increasing,
                     pairs_ok, rule, to_int, to_str)
from .messages import SOURCE, user_error
from .method_sections import AcflConfig, HngConfig, IceConfig, SpclConfig, StrongBaselineConfig

TEXT, INT = BeforeValidator(to_str), BeforeValidator(to_int)  # the types of a Literal of names / of integers
RGB = rule(lambda v: len(v) == 3, "hold 3 values (R, G, B)")
LOW_HIGH = rule(lambda v: len(v) == 2 and v[0] <= v[1], "be [low, high] with low <= high")
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


class DataConfig(Section):
    section = "data"

    format: Annotated[Literal["auto", "market1501", "dukemtmc", "msmt17", "cuhk03np", "market", "folder"], TEXT] = "auto"
    subset: Annotated[Literal["labeled", "detected"], TEXT] = "detected"  # CUHK03-NP
    # folder format: regex whose first group is the camera id
    camera_pattern: Annotated[Str, rule(camera_regex, "be empty or a regular expression whose first group is the "
                                                       "camera id, e.g. 'c(\\d+)'")] = ""
    height: Int = Field(256, ge=1)
    width: Int = Field(128, ge=1)
    batch_size: Int = Field(64, ge=1)  # P x K = 16 x 4
    num_instances: Int = Field(4, ge=1)  # K images per pseudo identity in a batch
    # P x K sampler (data/sampler.py): auto = the base's official one (Cluster Contrast, SpCL, strong_baseline:
    # multi_camera; ICE: more_camera) | pk (K random images) | multi_camera (RandomMultipleGallerySampler: an anchor
    # and K - 1 images from its other cameras) | more_camera (ICE's MoreCameraSampler: one image per camera first)
    sampler: Annotated[Literal["auto", "pk", "multi_camera", "more_camera"], TEXT] = "auto"
    workers: Int = Field(4, ge=0)
    flip_p: Float = Field(0.5, ge=0, le=1)
    pad: Int = Field(10, ge=0)
    erasing_p: Float = Field(0.5, ge=0, le=1)
    # random erasing as the official codes (Zhong et al.): area fraction drawn from [low, high], aspect ratio from
    # [r1, 1/r1], the rectangle filled with erasing_fill in the *normalised* tensor (they write the ImageNet mean there)
    erasing_area: Annotated[list[Annotated[Float, Field(gt=0, le=1)]], ListOf, LOW_HIGH] = Field(
        default_factory=lambda: [0.02, 0.4])
    erasing_aspect: Float = Field(0.3, gt=0, le=1)
    erasing_fill: Annotated[list[Float], ListOf, RGB] = Field(default_factory=lambda: [0.485, 0.456, 0.406])
    blur_p: Float = Field(0.0, ge=0, le=1)  # Gaussian blur of training images with this probability (ICE: 0.5)
    # blur radius drawn uniformly from this range
    blur_sigma: Annotated[list[Annotated[Float, Field(gt=0)]], ListOf, LOW_HIGH] = Field(
        default_factory=lambda: [0.1, 2.0])
    mean: Annotated[list[Float], ListOf, RGB] = Field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: Annotated[list[Annotated[Float, Field(gt=0)]], ListOf, RGB] = Field(default_factory=lambda: [0.229, 0.224, 0.225])


class ModelConfig(Section):
    section = "model"

    # resnet18 | resnet34 | resnet50 | mobilenet_v2 | vit_small (ViT-S/16, needs timm) | vit_small_pass | vit_small_pass_mean | vit_small_ics (person-pretrained ViT-S): the backbones' registry
    backbone: Annotated[Str, from_registry("model.backbone")] = "resnet50"
    last_stride: Annotated[Literal[1, 2], INT] = 1
    pooling: Annotated[Literal["avg", "gem"], TEXT] = "avg"
    gem_p: Float = Field(3.0, gt=0)  # GeM exponent (its initial value when learnable)
    # GeM's p is a trained parameter (fast-reid's GeneralizedMeanPoolingP, Cluster Contrast's "gem")
    gem_learnable: Bool = True
    weights: Str = ""  # local torchvision-layout state dict (timm layout for vit_small); "" = random init
    pretrained: Bool = False  # torchvision download (fails offline with a clear message)
    # camera-based BatchNorm (Zhuang et al., ECCV 2020; models/camera_bn.py): in training each camera's images of a
    # batch are normalised with that camera's statistics (images drawn in same-camera pairs), and before every
    # extraction each camera's statistics are recalibrated from its own images; false = the papers' plain BatchNorm;
    # auto = true when every training image names its camera and there are 2 cameras or more, else false (decided
    # when a run starts, training/camera_keys.py; the run's config.yaml holds the decision)
    camera_bn: BoolOrAuto = False
    # camera_bn: images of a camera its test-time statistics are averaged over; the official 50 batches of 64
    # (batch_num_bn_estimatation x test_batch in its config.py); a camera with fewer uses all of its images
    camera_bn_images: Int = Field(3200, ge=2)


class ClusterConfig(Section):
    """Pseudo labels each epoch (hardreid.pseudo_labels.cluster_epoch): Jaccard distance, then DBSCAN or HDBSCAN."""

    section = "cluster"

    k1: Int = Field(30, ge=1)
    k2: Int = Field(6, ge=1)
    # standard (k-reciprocal, k1 / k2) | camera_aware: CA-Jaccard (Chen et al., CVPR 2024; pseudo_labels/ca_jaccard.py)
    # | auto: camera_aware when every training image names its camera and there are 2 cameras or more, else standard
    jaccard: Annotated[Literal["standard", "camera_aware", "auto"], TEXT] = "standard"
    # camera_aware: k-reciprocal neighbours on the intra-camera list (i + its k1_intra nearest same-camera images)
    # and on the inter-camera list (k1_inter + 1 nearest other-camera images); official train_caj.py: 5, 20
    k1_intra: Int = Field(5, ge=1)
    k1_inter: Int = Field(20, ge=1)
    # camera_aware query expansion: mean over i + its k2_intra - 1 nearest same-camera and its k2_inter nearest
    # other-camera images; the official README's commands: 2, 4 (its argparse default and epoch-0 warm-up: 3, 3)
    k2_intra: Int = Field(2, ge=1)
    k2_inter: Int = Field(4, ge=1)
    # dbscan | hdbscan (scikit-learn's HDBSCAN on the sparse Jaccard graph, no eps)
    algorithm: Annotated[Literal["dbscan", "hdbscan"], TEXT] = "dbscan"
    # DBSCAN radius on Jaccard distances, in (0, 1) (0.7 for MSMT17), or "auto": set each epoch by the rule of
    # eps_rho (pseudo_labels/density.py)
    eps: Annotated[float | Literal["auto"], BeforeValidator(eps_value)] = 0.5
    eps_rho: Float = Field(1.6e-3, gt=0, le=1)  # eps auto: mean distance of this fraction of closest pairs (Song et al.)
    min_samples: Int = Field(4, ge=1)
    min_cluster_size: Int = Field(0, ge=0)  # hdbscan: smallest cluster; 0 = min_samples
    # hdbscan: eom (excess of mass, scikit-learn's default) | leaf
    hdbscan_selection: Annotated[Literal["eom", "leaf"], TEXT] = "eom"
    search: Annotated[Literal["exact", "fast"], TEXT] = "exact"  # see pseudo_labels/jaccard.py
    # per-camera feature statistics removed before Jaccard
    camera_normalize: Annotated[Literal["none", "mean", "standardize"], TEXT] = "none"
    # added to same-camera d = 2 - 2cos in the kNN of the Jaccard distance; 4 = the largest change of d: every
    # other-camera neighbour ranks before every same-camera one
    same_camera_penalty: Float = Field(0.0, ge=0, le=4)
    large_cluster_factor: Float = Field(25.0, gt=0)  # diagnostics: a cluster is large above this x min_samples images
    warn_large_share: Float = Field(0.2, ge=0, le=1)  # collapse warning: share of images in large clusters above this
    # collapse warning: share of one-camera clusters above this (>1 camera)
    warn_single_camera_share: Float = Field(0.9, ge=0, le=1)


class MemoryConfig(Section):
    section = "memory"

    temperature: Float = Field(0.05, gt=0)
    momentum: Float = Field(0.1, ge=0, le=1)  # m <- momentum * m + (1 - momentum) * f, then renormalised
    # momentum (Cluster Contrast) | instance (ACFL 3.1: C = means of M) | queue (ACFL Table 10)
    kind: Annotated[Literal["momentum", "instance", "queue"], TEXT] = "momentum"
    queue_ratio: Float = Field(1.0, gt=0, le=1)  # mu of ACFL Table 10: the queue holds mu x N features (kind=queue)
    normalize_person_features: Bool = False  # instance/queue: L2-normalise the means (ACFL averages only)


class OptimConfig(Section):
    section = "optim"

    name: Annotated[Literal["adam", "sgd"], TEXT] = "adam"
    lr: Float = Field(3.5e-4, gt=0)
    weight_decay: Float = Field(5e-4, ge=0)
    step_size: Int = Field(20, ge=1)  # epochs between lr decays (when milestones is empty)
    gamma: Float = Field(0.1, gt=0)
    # epochs after which lr *= gamma; non-empty replaces step_size
    milestones: Annotated[list[Annotated[Int, Field(ge=1)]], ListOf, rule(increasing, "be increasing epochs")] = Field(
        default_factory=list)
    warmup_epochs: Int = Field(0, ge=0)  # linear warm-up from warmup_factor x lr to lr over these epochs (ICE: 10)
    warmup_factor: Float = Field(0.1, gt=0)
    # Piecewise-constant lr factors [[epoch, factor], ...] (factor applies from that epoch on); non-empty replaces
    # step_size / gamma / milestones (warm-up still applies). Lets one run hold several stages, e.g. SHNG's
    # warm-up + joint fine-tuning.
    lr_schedule: Annotated[
        list[Annotated[list[Float], ListOf]], ListOf,
        rule(pairs_ok, "be a list of [epoch >= 0, factor >= 0] pairs"),
        rule(lambda s: not s or (s[0][0] == 0 and increasing([e[0] for e in s])),
             "start at epoch 0 with increasing epochs")] = Field(default_factory=list)


class TrainConfig(Section):
    section = "train"

    epochs: Int = Field(50, ge=1)
    iters: Int = Field(400, ge=0)  # optimiser steps per epoch; 0 = one pass over the clustered images
    eval_every: Int = Field(10, ge=0)  # evaluate every N epochs (and after the last one); 0 = only at the end
    # also score the model before epoch 1 (the weights training starts from), so the end of the run can say whether
    # training made it better or worse (RUN_DIR/start_scores.json, the curves' epoch 0); needs query and gallery
    eval_at_start: Bool = True
    seed: Int = Field(1, ge=0)
    device: Annotated[Str, rule(lambda v: bool(_DEVICE.fullmatch(v)), "be auto, cpu, cuda or cuda:N")] = "auto"
    amp: Bool = True  # mixed precision (autocast) of the training steps on CUDA; on CPU only with amp_cpu
    # auto (float16 on CUDA, bfloat16 on CPU) | float16 | bfloat16
    amp_dtype: Annotated[Literal["auto", "float16", "bfloat16"], TEXT] = "auto"
    amp_cpu: Bool = False  # autocast on CPU too (bfloat16): the mixed-precision path without a GPU (tests)
    # BatchNorm statistics before epoch 1: auto (only from random init) | always | never
    calibrate_bn: Annotated[Literal["auto", "always", "never"], TEXT] = "auto"
    channels_last: Bool = True  # NHWC layout (~1.5x faster eager CPU steps: compile.py --parts layout; good with CUDA AMP)
    # torch.compile the re-ID network (training steps, feature extraction, evaluation; models/compiled.py): false |
    # true (= default) | default | reduce-overhead | max-autotune. Compiling takes minutes on a CPU (once per machine
    # and setting: cached on disk, see compile_cache) and pays only in long runs where the compiled step is faster
    # (README, "Compiled training"); without a C++ compiler on a CPU, or if compiling fails, one warning, eager
    compile: Annotated[Literal[False, "default", "reduce-overhead", "max-autotune"],
                       BeforeValidator(compile_mode)] = False
    # folder of inductor's on-disk cache of compiled kernels; "" = $TORCHINDUCTOR_CACHE_DIR when set, else
    # ${XDG_CACHE_HOME:-~/.cache}/hardreid/inductor
    compile_cache: Str = ""
    # >0: BatchNorm normalises chunks of this many images, the per-GPU share of an official multi-GPU batch
    # (Cluster Contrast 256 / 4 GPUs = 64, SpCL 64 / 4 = 16, ICE 32 / 4 = 8, ACFL 64 / 2 = 32; set in each base's configs)
    bn_chunk: Int = Field(0, ge=0)
    sync_bn: Bool = False  # several processes (torchrun, CUDA): SyncBatchNorm over the global batch, not per process
    dist_timeout: Float = Field(30.0, gt=0)  # several processes: minutes a collective waits for the others
    check_ranks: Bool = False  # several processes: compare weights and memories of every process each epoch (debug)
    save_every: Int = Field(1, ge=1)  # write last.pth every N epochs
    # also write each epoch's metrics as TensorBoard scalars (RUN_DIR/tensorboard; needs tensorboard)
    tensorboard: Bool = False


class EvalConfig(Section):
    section = "eval"

    flip: Bool = False  # average features of the image and its mirror
    rerank: Bool = False
    batch_size: Int = Field(128, ge=1)
    max_rank: Int = Field(10, ge=1)


class MethodConfig(Section):
    section = "method"

    # cluster_contrast | spcl | ice | strong_baseline: the methods' registry
    base: Annotated[Str, from_registry("method.base")] = "cluster_contrast"
    # generators and add-ons, each at most once, e.g. [hpf, hpi] (ACFL) or [hng] (SHNG)
    hard_samples: Annotated[list[Str], ListOf, from_registry("method.hard_samples", many=True)] = Field(
        default_factory=list)



class Config(BaseModel):
    """The whole config: one attribute per section (``cfg.train.epochs``), plus the rules between keys."""

    model_config = ConfigDict(extra="forbid", validate_default=False, revalidate_instances="never")

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    memory: MemoryConfig = Field(default_factory=MemoryConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    spcl: SpclConfig = Field(default_factory=SpclConfig)
    ice: IceConfig = Field(default_factory=IceConfig)
    acfl: AcflConfig = Field(default_factory=AcflConfig)
    hng: HngConfig = Field(default_factory=HngConfig)
    strong_baseline: StrongBaselineConfig = Field(default_factory=StrongBaselineConfig)

    def __init__(self, **sections: Any) -> None:
        try:
            super().__init__(**sections)
        except ValidationError as exc:
            raise user_error(exc, sections, SOURCE.get(), Config) from None

    def to_dict(self) -> dict[str, Any]:
        """``{section: {key: value}}`` of plain Python values (what checkpoints and config.yaml hold)."""
        return self.model_dump(warnings=False)

    @model_validator(mode="after")
    def rules_between_keys(self) -> Config:
        """The rules that involve several keys, checked when a whole config is validated."""
        d, c, t = self.data, self.cluster, self.train
        need(d.batch_size % d.num_instances == 0,
             f"data.batch_size ({d.batch_size}) must be a multiple of data.num_instances ({d.num_instances}): "
             "a batch holds P identities x K = num_instances images")
        need(d.batch_size >= 2 * d.num_instances,
             f"data.batch_size ({d.batch_size}) must hold at least 2 identities of data.num_instances "
             f"({d.num_instances}) images, i.e. be >= {2 * d.num_instances}: contrastive losses need negatives in the batch")
        need(c.k2 <= c.k1, f"cluster.k2 ({c.k2}) must not exceed cluster.k1 ({c.k1}): query expansion uses the k2 "
                           "nearest of the k1 neighbours")
        need(c.jaccard == "standard" or c.same_camera_penalty == 0,
             f"cluster.same_camera_penalty ({c.same_camera_penalty}) and cluster.jaccard={c.jaccard} (camera_aware"
             f"{' on data with cameras' if c.jaccard == 'auto' else ''}) both act on the cameras of the neighbours: "
             "choose one (cluster.same_camera_penalty=0, or cluster.jaccard=standard)")
        need(not (t.sync_bn and t.bn_chunk > 0),
             f"train.sync_bn normalises over the global batch and train.bn_chunk={t.bn_chunk} over chunks of it: "
             "choose one (train.bn_chunk=0 with train.sync_bn=true)")
        if self.model.camera_bn:  # (true or auto) each camera's images of every BatchNorm group in same-camera pairs
            need(d.num_instances % 2 == 0,
                 f"model.camera_bn draws each identity's images in same-camera pairs (so that every camera has at least "
                 f"2 images in each BatchNorm group): data.num_instances must be even, got {d.num_instances}")
            need(t.bn_chunk % 2 == 0, f"model.camera_bn normalises each camera's images within each train.bn_chunk "
                                      f"chunk, which must then hold whole same-camera pairs: use an even train.bn_chunk, "
                                      f"got {t.bn_chunk}")
            need(not t.sync_bn, "model.camera_bn normalises each camera's images of each process's share, which "
                                "differ between processes; train.sync_bn cannot synchronise them: set train.sync_bn=false "
                                f"(or model.camera_bn=false{', which auto would not be on data with cameras' if self.model.camera_bn == 'auto' else ''})")
        if self.method.base == "spcl" and c.eps != "auto":
            need(self.spcl.eps_gap < c.eps, f"spcl.eps_gap ({self.spcl.eps_gap}) must be smaller than cluster.eps "
                                            f"({c.eps}): SpCL clusters again with eps - eps_gap")
        if self.method.base == "strong_baseline":  # the margin of its softmax triplet loss (a difference of softmaxes)
            need(self.strong_baseline.triplet_margin <= 1, "strong_baseline.triplet_margin must be in [0, 1] with "
                 f"method.base=strong_baseline, got {self.strong_baseline.triplet_margin}")
        if self.model.backbone.startswith("vit"):
            need(d.height % 16 == 0 and d.width % 16 == 0,
                 f"data.height and data.width must be multiples of 16 for {self.model.backbone} (16x16 patches), "
                 f"got {d.height}x{d.width}")
        return self


def need(condition: bool, message: str) -> None:
    if not condition:
        raise PydanticCustomError("hr_config", "{message}", {"message": message})


def choices_of(key: str) -> tuple[Any, ...]:
    """The valid values of a choice key (``"memory.kind"`` -> ``("momentum", "instance", "queue")``): the code that
    acts on a choice takes its names from here rather than keeping its own list."""
    section, name = key.split(".")
    return get_args(Config.model_fields[section].annotation.model_fields[name].annotation)
