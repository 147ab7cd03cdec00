"""The file a student ships as: fp32 ONNX and graph plumbing (`onnx_graph.py`), the int8 QDQ export and
its checks in ONNX Runtime (`int8.py`). Trials build it to time it; `deploy/` publishes it."""

from lepton_ray.export.int8 import export_int8

__all__ = ["export_int8"]
