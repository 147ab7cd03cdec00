"""The sweep. From Python: `lepton_ray.sweep("workflows/digits_quickstart.yaml", training__epochs=2)` runs
what `lepton-ray sweep` runs and returns its outcome (`sweep/api.py`, whose docstring gives the arguments).

Inside: Ray Tune runs the trials (`runner.py`, `trial_driver.py`), an Optuna study decides what to try
(`search.py`), callbacks log to MLflow and print progress, and a finished sweep is read back and published (`results.py`)."""

import inspect
import sys
import types

from lepton_ray.sweep.api import sweep
from lepton_ray.sweep.runner import run_sweep

__all__ = ["run_sweep", "sweep"]


class _CallablePackage(types.ModuleType):
    """This package is also the function `sweep`: importing a submodule sets the package as the attribute
    `lepton_ray.sweep`, so a plain function of that name on `lepton_ray` would be replaced by it."""

    def __call__(self, *args, **kwargs):
        return sweep(*args, **kwargs)


__signature__ = inspect.signature(sweep)
sys.modules[__name__].__class__ = _CallablePackage
