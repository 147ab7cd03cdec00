"""Where a published student went in the MLflow Model Registry: what `publish` returns and the report shows."""

from __future__ import annotations

from dataclasses import dataclass

REGISTERED_FILE = "model.onnx"
"""The int8 file's name inside a registered version: MLflow's ONNX flavour saves every model under it."""


@dataclass(frozen=True)
class Published:
    model_name: str
    version: str
    model_uri: str
