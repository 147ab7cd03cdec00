"""The file a student ships as: fp32 ONNX and graph plumbing (`onnx_graph.py`), the int8 QDQ export and
its checks (`int8.py`), running it in ONNX Runtime: accuracy, interleaved latency (`runtime.py`). Every trial
builds it to measure it; `deploy/` publishes the pick's."""

from lepton_ray.export.int8 import export_int8

__all__ = ["export_int8"]
