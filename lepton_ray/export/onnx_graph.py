"""ONNX plumbing: the fp32 export with a dynamic batch dimension (cost model and int8 export), and
the int8 graph's compaction."""

from __future__ import annotations

import copy
from pathlib import Path

import onnx
import torch
from onnx import numpy_helper
from torch import nn

from lepton_ray.data.inputs import ModelInput, as_model_input

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def export_fp32_onnx(model: nn.Module, input_shape: ModelInput | tuple[int, ...], path: Path) -> Path:
    """Export a copy of `model` in eval mode and contiguous memory format (dynamo exporter) to `path`; input `input`
    is (batch, *shape), float32 for a plain shape, else the `ModelInput`'s dtype (token ids: int64).

    The example batch is 2 because torch.export specializes a size-1 dimension to a constant. The copy is contiguous
    because a student trained in channels_last traces its flatten as index arithmetic (Shape, Range, Gather: +258 B on
    a 3.5 kB file) that the same student loaded from its checkpoint does not: the file a trial measures is then the
    file `publish` ships. `model` itself is left as it was.
    """
    path = Path(path)
    model = copy.deepcopy(model).eval().to(memory_format=torch.contiguous_format)
    example = as_model_input(input_shape).example(2, next(model.parameters()).device)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
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
    return path


def compact_graph(model: onnx.ModelProto, keep_suffix: str = "_quantized") -> onnx.ModelProto:
    """Shrink a quantized graph's bookkeeping without touching what it computes.

    For a small student the QDQ graph's names are a third of the int8 file: node names are
    dropped, tensors get short ids (the graph's inputs/outputs and the int8 weights, named
    `<module>.weight_quantized`, keep theirs), doc strings, metadata and shape annotations go
    (ORT re-infers shapes), an int32 bias's all-zero zero point is dropped (optional in
    DequantizeLinear; ORT still fuses QLinearConv/QGemm), and unused opset imports go. Weight zero
    points stay: without them ORT does not fuse Gemm into QGemm. (`int8._strip_metadata` cleans
    the fp32 export, whose graph metadata it keeps.)
    """
    graph = model.graph
    keep = {value.name for value in (*graph.input, *graph.output)}
    keep |= {init.name for init in graph.initializer if init.name.endswith(keep_suffix)}
    initializers = {init.name: init for init in graph.initializer}
    for node in graph.node:
        zero_point = initializers.get(node.input[2]) if node.op_type == "DequantizeLinear" and len(node.input) == 3 else None
        if zero_point is not None and zero_point.data_type == onnx.TensorProto.INT32 and not numpy_helper.to_array(zero_point).any():
            del node.input[2]
    used = {name for node in graph.node for name in node.input}
    kept_initializers = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept_initializers)

    short: dict[str, str] = {}

    def rename(name: str) -> str:
        if not name or name in keep:
            return name
        return short.setdefault(name, format(len(short), "x"))

    for init in graph.initializer:
        init.name = rename(init.name)
    for node in graph.node:
        node.name = ""
        node.input[:] = [rename(name) for name in node.input]
        node.output[:] = [rename(name) for name in node.output]
    del graph.value_info[:], graph.metadata_props[:], model.metadata_props[:]
    graph.doc_string = model.doc_string = ""
    domains = {node.domain for node in graph.node} | {""}
    opsets = [opset for opset in model.opset_import if opset.domain in domains]
    del model.opset_import[:]
    model.opset_import.extend(opsets)
    return model
