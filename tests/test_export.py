"""Export (ONNX, TorchScript, torch.export) with parity checks, model info (parameters, FLOPs), TensorBoard logging."""

from __future__ import annotations

import copy
import importlib.util
import json

import numpy as np
import pytest
import torch
from torch import nn

from hardreid.cli import main
from hardreid.errors import UserError
from hardreid.export.formats import check_parity, export_model, exported_runner, parity_images
from hardreid.export.info import count_flops, count_parameters, model_info
from hardreid.models import build_model
from hardreid.retrieval.model import load_feature_model

from conftest import tiny_config
from rounding import forward_error

HAS_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime"))


@pytest.fixture(scope="module")
def fm(tiny_checkpoint):
    return load_feature_model(tiny_checkpoint)


def parity_tolerance(model, images: torch.Tensor) -> float:
    """Largest difference between two float32 evaluations of the model's unit features that run different kernels
    (the exported graph or ONNX Runtime, a batch of 1 against a batch of 5): each is within forward_error (relative,
    tests/rounding.py) before normalising, twice that after, two of them. About 2e-3 for this MobileNetV2 at 64x32:
    above hardreid's own PARITY_TOLERANCE (1e-4), which the export command applies (measured here: ~1e-7)."""
    return 4 * forward_error(copy.deepcopy(model).eval(), images)


@pytest.fixture(scope="module")
def onnx_export(tiny_checkpoint, tiny_root, tmp_path_factory):
    """One ONNX export through the command line (the exporter takes several seconds), with its parity report."""
    if not HAS_ONNX:
        pytest.skip("ONNX export needs onnx, onnxscript, onnxruntime (pip install 'hardreid[export]')")
    folder = tmp_path_factory.mktemp("onnx")
    code = main(["export", "--checkpoint", str(tiny_checkpoint), "--format", "onnx", "--output", str(folder / "m.onnx"),
                 "--images", str(tiny_root / "query"), "--json", str(folder / "parity.json")])
    assert code == 0
    return folder / "m.onnx", json.loads((folder / "parity.json").read_text())


def test_onnx_export_has_a_dynamic_batch_axis_and_metadata(onnx_export, fm, tiny_root):
    import onnx

    path, _ = onnx_export
    graph = onnx.load(str(path))
    assert graph.opset_import[0].version == 18
    assert [i.name for i in graph.graph.input] == ["images"] and [o.name for o in graph.graph.output] == ["features"]
    batch_dim = graph.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.HasField("dim_value")  # symbolic: any batch size
    meta = {p.key: p.value for p in graph.metadata_props}
    assert meta["hardreid.backbone"] == "mobilenet_v2" and meta["hardreid.opset"] == "18"
    assert json.loads(meta["hardreid.height"]) == 64 and meta["hardreid.sha256"] == fm.sha256
    images = parity_images(tiny_root / "query", fm.cfg.data, 5)
    assert images.shape == (5, 3, 64, 32)
    tol = parity_tolerance(fm.model, images)
    parity = check_parity(fm.model, exported_runner("onnx", path), images, tol)  # real images, batches of 5 and 1
    # the cosine of unit vectors d apart is 1 - d^2 / 2 (< 3e-6 here), numpy's float32 sums of 1280 products add
    # ~2e-6 more: 1e-5 holds
    assert parity.ok and parity.min_cosine > 0.99999 and parity.batch_sizes == [5, 1]
    assert exported_runner("onnx", path)(images[:3].numpy()).shape == (3, fm.model.feat_dim)


def test_onnx_export_command_reports_parity_on_real_images(onnx_export):
    _, report = onnx_export
    assert report["ok"] and report["images"] == 12 and report["inputs"].startswith("images from")
    assert report["max_abs_diff"] < 1e-4 and report["min_cosine"] > 0.99999 and report["opset"] == 18
    assert report["backbone"] == "mobilenet_v2" and report["weights_used"] == "model"


def _torch_format_parity(fm, tmp_path, fmt):
    images = torch.randn(4, 3, 64, 32, generator=torch.Generator().manual_seed(1))
    path = export_model(fm.model, fmt, tmp_path / f"m.{fmt}", 64, 32)
    return check_parity(fm.model, exported_runner(fmt, path), images, parity_tolerance(fm.model, images)), path


@pytest.mark.parametrize("fmt", ["torchscript", "pt2"])
def test_torch_formats_match_pytorch(fm, tmp_path, fmt):
    parity, path = _torch_format_parity(fm, tmp_path, fmt)
    assert parity.ok, parity.text()
    assert exported_runner(fmt, path)(np.zeros((3, 3, 64, 32), dtype=np.float32)).shape == (3, fm.model.feat_dim)


@pytest.mark.parametrize("fmt", ["torchscript", "pt2"])
def test_parity_check_catches_a_model_exported_in_train_mode(fm, tmp_path, fmt, monkeypatch):
    """Negative twin: the exporter traces the network in train mode (BatchNorm with the batch's statistics)."""
    from hardreid.export import formats

    real_plain, real_export = formats._plain, formats.export_model

    def export_in_train_mode(*args, **kwargs):
        with monkeypatch.context() as patch:  # a copy: the trace updates the running statistics
            patch.setattr(formats, "_plain", lambda model: real_plain(copy.deepcopy(model)).train())
            return real_export(*args, **kwargs)

    monkeypatch.setitem(globals(), "export_model", export_in_train_mode)
    parity, _ = _torch_format_parity(fm, tmp_path, fmt)
    assert not parity.ok and parity.max_abs_diff > 10 * parity.tolerance, parity.text()


def test_parity_check_catches_a_different_model(fm):
    images = torch.randn(3, 3, 64, 32)
    with torch.no_grad():
        reference = fm.model(images).numpy()
    parity = check_parity(fm.model, lambda x: reference[: len(x)] + 2e-4, images)
    assert not parity.ok and parity.max_abs_diff == pytest.approx(2e-4, rel=1e-3) and "ABOVE" in parity.text()


def test_the_evaluated_model_is_exported(tiny_checkpoint, tmp_path):
    """A checkpoint with an EMA teacher (eval_model) exports the teacher, as evaluation uses it."""
    state = torch.load(tiny_checkpoint, weights_only=False)
    teacher = {k: v * 1.1 if v.is_floating_point() and k.endswith("weight") else v for k, v in state["model"].items()}
    state["eval_model"] = teacher
    from hardreid.training.checkpoint import save_checkpoint

    save_checkpoint({k: v for k, v in state.items() if k != "format"}, tmp_path / "ema.pth")
    fm = load_feature_model(tmp_path / "ema.pth")
    assert fm.weights_used == "eval_model"
    expected = build_model("mobilenet_v2", last_stride=2).eval()
    expected.load_state_dict(teacher)
    path = export_model(fm.model, "torchscript", tmp_path / "m.ts", 64, 32)
    images = torch.randn(2, 3, 64, 32)
    with torch.no_grad():  # the trace replays the same kernels on the same shapes: equal here (teacher vs student: ~0.1)
        np.testing.assert_allclose(exported_runner("torchscript", path)(images.numpy()), expected(images).numpy(), atol=1e-5)


def test_export_command_fails_above_the_tolerance(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    from hardreid.export import formats

    real = formats.exported_runner
    monkeypatch.setattr(formats, "exported_runner", lambda fmt, path: (lambda x: real(fmt, path)(x) + 2e-4))  # a broken export
    code = main(["export", "--checkpoint", str(tiny_checkpoint), "--format", "torchscript", "--output", str(tmp_path / "m.ts")])
    captured = capsys.readouterr()
    assert "random inputs" in captured.out and "ABOVE 1e-04" in captured.out
    assert code == 1 and "differs from PyTorch by 2.0" in captured.err
    monkeypatch.setattr(formats, "exported_runner", real)
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "--format", "torchscript", "--output", str(tmp_path / "m.ts")]) == 2
    assert "m.ts already exists: pass --overwrite" in capsys.readouterr().err  # the failed export's file stays
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "--format", "torchscript", "--output", str(tmp_path / "m.ts"),
                 "--overwrite"]) == 0
    assert "within 1e-04" in capsys.readouterr().out


def test_flops_are_counted_per_image_at_the_input_size():
    conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU())
    assert count_flops(conv, 10, 6) == 2 * (8 * 10 * 6) * (3 * 3 * 3)  # 2 x multiply-adds
    assert count_parameters(conv) == (8 * 3 * 3 * 3, 8 * 3 * 3 * 3)
    # torchvision's ResNet-50 at 224x224: 4.09 G multiply-adds (its documented "GFLOPS"); ours lacks the 2048x1000 fc
    info = model_info(build_model("resnet50", last_stride=2), 224, 224)
    assert info["gmacs"] == pytest.approx(4.09 - 0.002, abs=0.02) and info["feat_dim"] == 2048
    assert info["parameters"] == pytest.approx(25.557e6 - 2.049e6 + 2 * 2048, rel=1e-3)  # minus fc, plus the BN neck
    last_stride_1 = model_info(build_model("resnet50", last_stride=1), 256, 128)["flops"]
    assert last_stride_1 > model_info(build_model("resnet50", last_stride=2), 256, 128)["flops"]  # layer4 at 4x the area


def test_info_command_and_model_info_of_a_run(tmp_path, capsys, tiny_checkpoint):
    assert main(["info", "--config", str(_tiny_yaml(tmp_path)), "--json", str(tmp_path / "i.json")]) == 0
    info = json.loads((tmp_path / "i.json").read_text())
    assert info["backbone"] == "mobilenet_v2" and info["input"] == [64, 32] and info["flops"] > 0
    assert "GFLOPs per image" in capsys.readouterr().out
    run_info = json.loads((tiny_checkpoint.parent.parent / "model_info.json").read_text())  # written by train
    assert {k: run_info[k] for k in ("backbone", "input", "flops", "parameters")} == \
           {k: info[k] for k in ("backbone", "input", "flops", "parameters")}
    assert main(["info", "--config", str(_tiny_yaml(tmp_path)), "--all-backbones"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("resnet18", "resnet34", "resnet50", "mobilenet_v2", "vit_small"))


def _tiny_yaml(tmp_path):
    from hardreid.config import dump_config

    path = tmp_path / "tiny.yaml"
    dump_config(tiny_config(), path)
    return path


def test_tensorboard_gets_the_metrics_row_of_every_epoch(tiny_root, tmp_path):
    pytest.importorskip("tensorboard", reason="train.tensorboard needs tensorboard (pip install 'hardreid[tensorboard]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from hardreid.data.datasets import load_dataset
    from hardreid.runs import train

    result = train(tiny_config(train={"iters": 1, "tensorboard": True}), load_dataset("market", tiny_root), tmp_path / "run",
                   log_to_stderr=False)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"mAP", "top1", "clusters", "outliers", "loss", "cluster_sizes/size_max", "cluster_sizes/size_histogram/1-3"} <= tags
    assert [(e.step, round(e.value, 4)) for e in events.Scalars("mAP")] == \
           [(row["epoch"], round(row["mAP"], 4)) for row in result.history]


def test_tensorboard_missing_is_a_clear_error(tiny_root, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard") or name.startswith("tensorboard"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    from hardreid.data.datasets import load_dataset
    from hardreid.runs import train

    with pytest.raises(UserError, match=r"train.tensorboard=true needs the tensorboard package: pip install 'hardreid\[tensorboard\]'"):
        train(tiny_config(train={"tensorboard": True}), load_dataset("market", tiny_root), tmp_path / "run", log_to_stderr=False)
