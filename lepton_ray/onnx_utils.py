"""fp32 ONNX export with a dynamic batch dimension, shared by the cost model and the int8 export."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def export_fp32_onnx(model: nn.Module, input_shape: tuple[int, ...], path: Path) -> Path:
    """Export `model` in eval mode (dynamo exporter) to `path`; input `input` is (batch, *input_shape).

    The example batch is 2 because torch.export specializes a size-1 dimension to a constant.
    The model's train/eval mode is restored afterwards.
    """
    path = Path(path)
    was_training = model.training
    model.eval()
    example = torch.zeros((2, *input_shape), device=next(model.parameters()).device)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    try:
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),
            verbose=False,
        )
    finally:
        model.train(was_training)
    return path
