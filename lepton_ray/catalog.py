"""What each registry holds, for `lepton-ray list KIND`: every name with the first line of its docstring.

A kind imports only its own registry (models and losses bring torch in; policies do not).
"""

from __future__ import annotations

import inspect
import sys
from typing import Callable

from lepton_ray.registry import Registry


def _models() -> dict[str, object]:
    from lepton_ray.models.zoo import MODELS

    return _entries(MODELS)


def _losses() -> dict[str, object]:
    from lepton_ray.distill.losses import LOSSES

    return _entries(LOSSES)


def _datasets() -> dict[str, object]:
    from lepton_ray.data.datasets import DATASETS

    return _entries(DATASETS)


def _compressors() -> dict[str, object]:
    """Named by their `compression.<name>` field; a factory without a docstring is described by its module's."""
    from lepton_ray.compress import COMPRESSORS  # importing the package registers every compressor
    from lepton_ray.config import CompressionConfig

    field_of = {info.annotation: name for name, info in CompressionConfig.model_fields.items()}
    return {field_of.get(config_type, config_type.__name__): factory if inspect.getdoc(factory) else sys.modules[factory.__module__]
            for config_type, factory in COMPRESSORS.items()}


def _policies() -> dict[str, object]:
    from lepton_ray.deploy.pareto import POLICIES

    return {name: policy.select for name, policy in _entries(POLICIES).items()}


def _searchers() -> dict[str, object]:
    from lepton_ray.sweep.samplers import SAMPLERS

    return _entries(SAMPLERS)


def _entries(registry: Registry) -> dict[str, object]:
    return {name: registry.get(name) for name in registry.names()}


KINDS: Registry[Callable[[], dict[str, object]]] = Registry("kind", "list")
for _kind, _loader in {"models": _models, "losses": _losses, "datasets": _datasets, "compressors": _compressors, "policies": _policies, "searchers": _searchers}.items():
    KINDS.register(_kind)(_loader)


BY_IMPORT_PATH = {
    "models": "or your own model by import path, e.g. student.name: my_models:tiny_cnn (its file listed under user_code)",
    "datasets": "or your own data factory by import path, e.g. data.name: my_data:load returning TensorData or DataSplits (its file under user_code)",
}
"""Kinds whose fields also take `module:attribute` (`user_code.py`): said under the list."""


def catalog(kind: str) -> list[tuple[str, str]]:
    """(name, first docstring paragraph on one line) of everything registered under `kind`, sorted by name; unknown kind: ConfigError."""
    return sorted((name, first_line(entry)) for name, entry in KINDS.get(kind)().items())


def first_line(documented: object) -> str:
    """The docstring's first paragraph as one line (a sentence may wrap in the source)."""
    doc = inspect.getdoc(documented) or ""
    return " ".join(line.strip() for line in doc.split("\n\n")[0].splitlines())
