"""Backbone -> pooling (average or GeM) -> BatchNorm neck -> L2 normalisation.

The L2-normalised BatchNorm output is the re-ID feature (docs/architecture.md, "The Cluster Contrast baseline",
as in Cluster Contrast: no embedding layer, the neck's bias is frozen).
ViT backbones give a token feature instead of a pooled map: ``vit_small`` (timm, ``models/vit.py``) its CLS token,
the person-pretrained ``vit_small_pass`` / ``vit_small_pass_mean`` / ``vit_small_ics`` (``models/vit_person.py``)
the feature of their authors' fine-tuning code; the neck and normalisation are the same.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from ..errors import UserError
from ..serialization import WEIGHTS_FILE_GLOBALS, load_pth
from .weights import load_fitting_state, refuse_other_family, unwrap_backbone_state
from .vit import TIMM_NAMES, ViTBackbone, download_vit_weights, load_vit_weights, vit_backbone
from .vit_person import PERSON_VITS, PersonViT, load_person_vit_weights, no_person_vit_download, person_vit_backbone


class GeneralizedMeanPooling(nn.Module):
    """GeM pooling: (mean x^p)^(1/p) over the spatial map.

    ``learnable``: p is a trained parameter initialised at ``p`` (fast-reid's ``GeneralizedMeanPoolingP``, the
    "gem" of Cluster Contrast's ``clustercontrast/models/pooling.py`` and of OpenUnReID); otherwise p is fixed.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learnable: bool = False) -> None:
        super().__init__()
        self.eps = eps
        self.p = nn.Parameter(torch.tensor([float(p)])) if learnable else p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)


@contextlib.contextmanager
def running_statistics_kept(module: nn.Module) -> Iterator[None]:
    """BatchNorm layers of ``module`` normalise with their batch statistics but leave their running statistics
    (and ``num_batches_tracked``) as they were inside the block."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m, m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0  # running <- (1 - 0) running + 0 batch: unchanged
    try:
        yield
    finally:
        for m, momentum, tracked in saved:
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


@contextlib.contextmanager
def whole_batch_batchnorm(module: nn.Module) -> Iterator[None]:
    """Train-mode forwards inside the block normalise each batch as one BatchNorm group: ``bn_chunk`` (per-GPU
    BatchNorm, emulated) is off for every ``ReidModel`` in ``module``. For passes that measure statistics (BatchNorm
    calibration), where chunks would keep the first chunk's statistics only and fail on a 1-image last chunk."""
    models = [m for m in module.modules() if isinstance(m, ReidModel)]
    saved = [(m, m.bn_chunk) for m in models]
    for m in models:
        m.bn_chunk = 0
    try:
        yield
    finally:
        for m, chunk in saved:
            m.bn_chunk = chunk


def _resnet(name: str, last_stride: int) -> tuple[nn.Module, int]:
    net = getattr(torchvision.models, name)(weights=None)
    if last_stride == 1:  # layer4 keeps the 16x8 map at 256x128 input
        block = net.layer4[0]
        (block.conv2 if name == "resnet50" else block.conv1).stride = (1, 1)
        block.downsample[0].stride = (1, 1)
    body = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)
    return body, net.fc.in_features


def _mobilenet_v2(last_stride: int) -> tuple[nn.Module, int]:
    net = torchvision.models.mobilenet_v2(weights=None)
    if last_stride == 1:  # the last stride-2 block (features[14]) keeps its resolution
        net.features[14].conv[1][0].stride = (1, 1)
    return net.features, net.last_channel


# name -> builder(last_stride, img_size) -> (backbone, feature dim)
BACKBONES: dict[str, Callable[[int, tuple[int, int]], tuple[nn.Module, int]]] = {
    "resnet18": lambda s, size: _resnet("resnet18", s),
    "resnet34": lambda s, size: _resnet("resnet34", s),
    "resnet50": lambda s, size: _resnet("resnet50", s),
    "mobilenet_v2": lambda s, size: _mobilenet_v2(s),
    "vit_small": lambda s, size: vit_backbone("vit_small", size),  # ViT-S/16, ACFL-VIT (Table 7); needs timm
    # ViT-S/16 of the LUPerson-pretrained checkpoints (ACFL-VIT "as in PASS"); need timm
    "vit_small_pass": lambda s, size: person_vit_backbone("vit_small_pass", size),  # PASS, CLS + parts: 768-d
    "vit_small_pass_mean": lambda s, size: person_vit_backbone("vit_small_pass_mean", size),  # PASS, 384-d
    "vit_small_ics": lambda s, size: person_vit_backbone("vit_small_ics", size),  # TransReID-SSL ViT-S/16+ICS
}
# Backbones whose feature is a token, not a pooled map: no pooling choice.
TOKEN_BACKBONES = set(TIMM_NAMES) | set(PERSON_VITS)

# Prefix of the backbone's parameters in torchvision's key layout.
_TORCHVISION_PREFIX = {"mobilenet_v2": "features."}
_RESNET_BODY = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


class ReidModel(nn.Module):
    """Re-ID feature extractor: ``forward`` returns L2-normalised features (B x dim)."""

    def __init__(self, backbone: str = "resnet50", last_stride: int = 1, pooling: str = "avg", gem_p: float = 3.0,
                 bn_chunk: int = 0, img_size: tuple[int, int] = (256, 128), gem_learnable: bool = False) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise UserError(f"unknown backbone '{backbone}'; choose one of {', '.join(BACKBONES)}")
        if pooling not in ("avg", "gem"):
            raise UserError(f"unknown pooling '{pooling}'; choose avg or gem")
        if backbone in TOKEN_BACKBONES and pooling != "avg":
            raise UserError(f"model.pooling={pooling} does not apply to '{backbone}': a ViT's feature is its CLS token "
                            "(and part tokens); leave model.pooling at avg")
        self.backbone_name = backbone
        self.backbone, self.feat_dim = BACKBONES[backbone](last_stride, tuple(img_size))
        if isinstance(self.backbone, (ViTBackbone, PersonViT)):
            self.pool = nn.Identity()  # the backbone already returns its token feature (B x dim)
        else:
            self.pool = (GeneralizedMeanPooling(gem_p, learnable=gem_learnable) if pooling == "gem"
                         else nn.AdaptiveAvgPool2d(1))
        self.neck = nn.BatchNorm1d(self.feat_dim)
        nn.init.ones_(self.neck.weight)
        nn.init.zeros_(self.neck.bias)
        self.neck.bias.requires_grad_(False)
        self.bn_chunk = bn_chunk
        self.channels_last = False
        # model.camera_bn: extraction recalibrates BatchNorm per camera from up to this many images (None: off)
        self.camera_bn_images: int | None = None

    def use_channels_last(self, enable: bool = True) -> "ReidModel":
        """NHWC memory layout: about 1.5x faster training steps on CPU (oneDNN; benchmarks/compile.py --parts layout)."""
        self.channels_last = enable
        return self.to(memory_format=torch.channels_last if enable else torch.contiguous_format)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Unnormalised neck output (B x dim)."""
        return self.pool_and_embed(x)[1]

    def pool_and_embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The pooled backbone features before the neck and the unnormalised neck output (both B x dim)."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.training and 0 < self.bn_chunk < x.shape[0]:
            # Emulate per-GPU BatchNorm (nn.DataParallel, one DDP process per GPU): each chunk is normalised on its
            # own; the running statistics follow the first chunk only, as DataParallel keeps the first GPU's
            # replica's and DDP's ranks take rank 0's.
            first, *rest = x.split(self.bn_chunk)
            parts = [self.embed_chunk(first)]
            with running_statistics_kept(self):
                parts += [self.embed_chunk(c) for c in rest]
            return torch.cat([p for p, _ in parts]), torch.cat([e for _, e in parts])
        return self.embed_chunk(x)

    def embed_chunk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled features and neck outputs of one BatchNorm group; compiled when ``models.compiled.compile_model``
        was applied (``train.compile``), else :meth:`embed_chunk_eager`."""
        compiled = self.__dict__.get("compiled_embed")
        if compiled is not None:
            return compiled(self, x)
        return self.embed_chunk_eager(x)

    def embed_chunk_eager(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.pool(self.backbone(x)).flatten(1)
        return pooled, self.neck(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.embed(x), dim=1)


def _backbone_state(state: dict[str, torch.Tensor], backbone: str) -> dict[str, torch.Tensor]:
    """Map a torchvision-layout state dict onto our ``backbone`` module's keys."""
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if backbone in _TORCHVISION_PREFIX:
        prefix = _TORCHVISION_PREFIX[backbone]
        return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    out = {}
    for key, value in state.items():
        head = key.split(".", 1)[0]
        if head in _RESNET_BODY:
            out[f"{_RESNET_BODY.index(head)}.{key.split('.', 1)[1]}"] = value
    return out


def load_backbone_weights(model: ReidModel, path: str | Path) -> None:
    """Load ImageNet (or any torchvision-layout; timm layout for ViT) weights into the backbone; strict on its keys."""
    if isinstance(model.backbone, ViTBackbone):
        load_vit_weights(model.backbone, path, model.neck)
        return
    if isinstance(model.backbone, PersonViT):
        load_person_vit_weights(model.backbone, path, model.neck)
        return
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist; pass a torchvision-layout state dict (e.g. --weights mobilenet_v2_imagenet.pth)")
    state = load_pth(path, "weights file", allowed=WEIGHTS_FILE_GLOBALS)
    if isinstance(state, dict):  # a ViT's file (a DINO checkpoint too) is refused naming the backbone it needs
        family = {"mobilenet_v2": "mobilenet_v2", "resnet50": "resnet50"}.get(model.backbone_name, "resnet")
        refuse_other_family(unwrap_backbone_state(state).tensors, family, model.backbone_name, path)
    mapped = _backbone_state(state, model.backbone_name)
    load_fitting_state(model.backbone, mapped, path, model.backbone_name,
                       "Pass a torchvision state dict of the same architecture.", refuse_extra=True)



def _download_pretrained(model: ReidModel) -> None:
    """torchvision's ImageNet download (timm's for ViT); a clear error when offline."""
    if isinstance(model.backbone, ViTBackbone):
        download_vit_weights(model.backbone)
        return
    if isinstance(model.backbone, PersonViT):
        no_person_vit_download(model.backbone)
    name = model.backbone_name
    enum = torchvision.models.get_model_weights(name).DEFAULT
    try:
        state = enum.get_state_dict(progress=True)
    except Exception as exc:  # noqa: BLE001 - network errors come in many types
        raise UserError(
            f"cannot download ImageNet weights for {name} ({type(exc).__name__}: {exc}). "
            f"This machine may be offline: download {enum.url} elsewhere and pass it with --weights PATH "
            "(or model.weights=PATH), or train from random init with model.pretrained=false."
        ) from None
    mapped = _backbone_state(state, name)
    model.backbone.load_state_dict({k: mapped[k] for k in model.backbone.state_dict()}, strict=True)


def build_model(backbone: str = "resnet50", weights: str | Path | None = None, pretrained: bool = False, last_stride: int = 1,
                pooling: str = "avg", gem_p: float = 3.0, bn_chunk: int = 0,
                img_size: tuple[int, int] = (256, 128), gem_learnable: bool = False) -> ReidModel:
    """Build a re-ID model; ``weights`` is a local torchvision-layout file (timm layout for ViT), ``pretrained`` downloads.

    ``img_size`` (height, width) only matters for ViT: the grid of its position embedding.
    """
    model = ReidModel(backbone, last_stride=last_stride, pooling=pooling, gem_p=gem_p, bn_chunk=bn_chunk, img_size=img_size,
                      gem_learnable=gem_learnable)
    if weights:
        load_backbone_weights(model, weights)
    elif pretrained:
        _download_pretrained(model)
    return model
