"""Exporting models (ONNX, TorchScript, torch.export) with parity checks, and model size (parameters, FLOPs)."""

from .formats import FORMATS, ONNX_OPSET, Parity, check_parity, export_model, exported_runner, parity_images
from .info import count_flops, count_parameters, model_info, write_model_info

__all__ = ["FORMATS", "ONNX_OPSET", "Parity", "check_parity", "export_model", "exported_runner", "parity_images",
           "count_flops", "count_parameters", "model_info", "write_model_info"]
