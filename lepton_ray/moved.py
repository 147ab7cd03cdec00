"""Old import paths of modules that moved into the stage packages (0.1 -> 0.2) keep working for one
release: `import lepton_ray.pareto` gives `lepton_ray.deploy.pareto` itself (same module, same
registries) with a DeprecationWarning that names the new path."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED = {
    "lepton_ray.batches": "lepton_ray.data.batches",
    "lepton_ray.features": "lepton_ray.models.features",
    "lepton_ray.losses": "lepton_ray.distill.losses",
    "lepton_ray.teacher_cache": "lepton_ray.distill.teacher_cache",
    "lepton_ray.cost": "lepton_ray.compress.cost",
    "lepton_ray.onnx_utils": "lepton_ray.export.onnx_graph",
    "lepton_ray.teacher": "lepton_ray.trial.teacher",
    "lepton_ray.sessions": "lepton_ray.trial.sessions",
    "lepton_ray.train": "lepton_ray.trial.trainer",
    "lepton_ray.search": "lepton_ray.sweep.search",
    "lepton_ray.tune_callbacks": "lepton_ray.sweep.callbacks",
    "lepton_ray.leaderboard": "lepton_ray.tracking.leaderboard",
    "lepton_ray.pareto": "lepton_ray.deploy.pareto",
    "lepton_ray.publish": "lepton_ray.deploy.publish",
    "lepton_ray.report": "lepton_ray.deploy.report",
    "lepton_ray.jobs": "lepton_ray.cluster.jobs",
    "lepton_ray.ray_runtime": "lepton_ray.cluster.ray_runtime",
}
"""Old module path -> new one; submodules follow (`lepton_ray.losses.base` -> `lepton_ray.distill.losses.base`)."""


def new_name(old: str) -> str | None:
    for prefix, target in MOVED.items():
        if old == prefix or old.startswith(prefix + "."):
            return target + old[len(prefix):]
    return None


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if new_name(fullname) is None:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        new = new_name(spec.name)
        warnings.warn(f"{spec.name} moved to {new}; import it from there (the old path goes away in lepton-ray 0.3)", DeprecationWarning, stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module) -> None:
        """The module is already executed under its new name."""


def install() -> None:
    if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _MovedModuleFinder())  # before the path finder, which would load a second copy of an old submodule path
