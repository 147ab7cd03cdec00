"""Where a published student went in the MLflow Model Registry: what `publish` returns and the report shows."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Published:
    model_name: str
    version: str
    model_uri: str
