"""hardreid: unsupervised re-identification with hard samples.

    import hardreid as hr
    data = hr.data.load("market1501", root="~/data/Market-1501-v15.09.15")
    cfg = hr.config.load("cluster_contrast/market1501")  # packaged config by name, or a YAML file
    model = hr.models.build("resnet50", weights="resnet50-imagenet.pth")
    run = hr.train(cfg, data, output="runs/cc", model=model)
    print(hr.evaluate(run.model, data).mAP)  # percent
"""

from __future__ import annotations

from . import config, data, models
from .errors import UserError
from .methods import registry as _registry  # noqa: F401 - gives config the valid method.base / hard_samples names
from .version import __version__


def train(cfg, dataset, output, model=None, resume: bool = False):
    """Train ``cfg``'s method on ``dataset`` into the run directory ``output`` (see ``hardreid.runs.train``)."""
    from .runs import train as _train

    return _train(cfg, dataset, output, model=model, resume=resume)


def evaluate(model, dataset, cfg=None, rerank: bool | str = False, device: str = "auto"):
    """CMC / mAP of ``model`` on ``dataset``'s query and gallery (Market-1501 protocol), in percent.

    ``rerank``: False, True or ``"standard"`` (k-reciprocal), ``"camera_aware"`` (CA-Jaccard with the
    ``cluster`` section's k1_intra, k1_inter, k2_intra, k2_inter).

    ``.mAP``, ``.cmc`` and ``.all_ap`` are percentages, the numbers the logs, ``metrics.csv``
    and ``hardreid evaluate --json`` show.
    """
    from .config import Config
    from .evaluation.pipeline import evaluate_model
    from .runtime import resolve_device

    cfg = cfg or Config()
    dev = resolve_device(device)
    return evaluate_model(model.to(dev), dataset, cfg.data, cfg.eval, dev, rerank=rerank, cluster_cfg=cfg.cluster)


__all__ = ["config", "data", "models", "train", "evaluate", "UserError", "__version__"]
