"""Typed configuration: dataclasses with the papers' defaults, YAML files that
inherit (``_base_``), and dotted ``key=value`` overrides from the command line.

Every hyperparameter is a key here; the defaults are the Cluster Contrast
baseline of DESIGN.md section 3 (ResNet-50, 256x128, Jaccard k1 30 / k2 6,
DBSCAN eps 0.5 / min_samples 4, memory momentum 0.1, temperature 0.05,
Adam 3.5e-4, weight decay 5e-4).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

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
    workers: int = 4
    flip_p: float = 0.5
    pad: int = 10
    erasing_p: float = 0.5
    blur_p: float = 0.0  # Gaussian blur of training images with this probability (ICE: 0.5)
    blur_sigma: list[float] = field(default_factory=lambda: [0.1, 2.0])  # blur radius drawn uniformly from this range
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])


@dataclass
class ModelConfig:
    backbone: str = "resnet50"  # resnet18 | resnet34 | resnet50 | mobilenet_v2 | vit_small (ViT-S/16, needs timm)
    last_stride: int = 1
    pooling: str = "avg"  # avg | gem
    gem_p: float = 3.0
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
    seed: int = 1
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # mixed precision (autocast) of the training steps on CUDA; on CPU only with amp_cpu
    amp_dtype: str = "auto"  # auto (float16 on CUDA, bfloat16 on CPU) | float16 | bfloat16
    amp_cpu: bool = False  # autocast on CPU too (bfloat16): the mixed-precision path without a GPU (tests)
    calibrate_bn: str = "auto"  # auto (only from random init) | always | never: BatchNorm statistics before epoch 1
    channels_last: bool = True  # NHWC layout (about 2x faster on CPU, also good with CUDA AMP)
    bn_chunk: int = 0  # >0: normalise BatchNorm over chunks of this many images (emulates multi-GPU)
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
    base: str = "cluster_contrast"  # cluster_contrast | spcl | ice
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
    ins_weight: float = 1.0  # weight of L_ins in Eq. 5 (the paper adds it with weight 1)


@dataclass
class HngConfig:
    """Self-guided hard negative generation (SHNG, IJCAI 2022); paper values where it gives them."""

    fusion: str = "part"  # h(f_anc, f_neg), Table 2: part | global | concat | noise | mixup
    fusion_lambda: float = 0.75  # lambda, Eq. 2-3 (also global fusion and mixup); DESIGN.md 5: the paper gives none
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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _section_types(cfg: Config) -> dict[str, type]:
    return {f.name: type(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def _unknown(kind: str, name: str, choices: list[str], source: str) -> UserError:
    close = difflib.get_close_matches(name, choices, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return UserError(f"unknown config {kind} '{name}' in {source}.{hint} Valid: {', '.join(sorted(choices))}")


def _coerce(value: Any, target: Any, key: str, source: str) -> Any:
    """Convert ``value`` to the declared type of ``key`` (YAML scalars, CLI strings)."""
    origin = getattr(target, "__origin__", None)
    if isinstance(target, types.UnionType):  # e.g. cluster.eps: float | str ("auto"): the first type that fits
        for option in target.__args__:
            try:
                return _coerce(value, option, key, source)
            except UserError:
                continue
    try:
        if target is bool:
            if isinstance(value, str):
                low = value.lower()
                if low in ("true", "yes", "1", "on"):
                    return True
                if low in ("false", "no", "0", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if origin is list:
            if isinstance(value, str):
                value = yaml.safe_load(value) if value.strip() else []
                if not isinstance(value, list):
                    value = [value]
            (item_type,) = target.__args__
            return [_coerce(v, item_type, key, source) for v in value]
        if target is str:
            return "" if value is None else str(value)
        return target(value)
    except (TypeError, ValueError):
        raise UserError(f"config key '{key}' in {source}: cannot use {value!r} as {getattr(target, '__name__', target)}") from None


def apply_dict(cfg: Config, values: dict[str, Any], source: str) -> Config:
    """Set the keys of a nested ``{section: {key: value}}`` dict on ``cfg`` (checked)."""
    sections = _section_types(cfg)
    for section, entries in values.items():
        if section not in sections:
            raise _unknown("section", section, list(sections), source)
        if not isinstance(entries, dict):
            raise UserError(f"config section '{section}' in {source} must be a mapping of keys, got {entries!r}")
        obj = getattr(cfg, section)
        hints = get_type_hints(type(obj))
        for key, value in entries.items():
            if key not in hints:
                raise _unknown("key", f"{section}.{key}", [f"{section}.{k}" for k in hints], source)
            setattr(obj, key, _coerce(value, hints[key], f"{section}.{key}", source))
    return cfg


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML file and merge it over its ``_base_`` chain (paths relative to the file)."""
    path = path.resolve()
    if path in seen:
        raise UserError(f"config {path} inherits from itself through _base_")
    if not path.is_file():
        raise UserError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    bases = data.pop("_base_", None) or []
    if isinstance(bases, str):
        bases = [bases]
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
        raise UserError(f"config {path} is a folder; pass a YAML file or a config name such as acfl/market1501")
    names = packaged_configs()
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(close)}?" if close else " 'hardreid configs' lists the names."
    raise UserError(f"config {name_or_file} does not exist: it is neither a file nor a packaged config name.{hint}")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file or packaged config (with its bases), then command-line overrides."""
    cfg = Config()
    if path is not None:
        apply_dict(cfg, _read_yaml(resolve_config(path)), str(path))
    if overrides:
        apply_dict(cfg, parse_overrides(overrides), "command-line overrides")
    return cfg


def config_from_dict(values: dict[str, Any]) -> Config:
    """Rebuild a Config saved in a checkpoint (unknown keys are an error)."""
    return apply_dict(Config(), values, "checkpoint config")


def dump_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


load = load_config
