"""The sweep. From Python: `lepton_ray.sweep("workflows/digits_quickstart.yaml", training__epochs=2)` runs
what `lepton-ray sweep` runs and returns its outcome (`sweep/api.py`, whose docstring gives the arguments).

Inside: Ray Tune runs the trials (`runner.py`, `trial_driver.py`), an Optuna study decides what to try
(`study.py`, driven through Tune by `search.py`), callbacks log to MLflow and print progress, and a finished
sweep is read back and published (`results.py`) after the pick's labels-only control (`control.py`).

`sweep` and `run_sweep` are imported on first use: reading a finished sweep back (`select`, `leaderboard`)
imports submodules of this package and must not pay for Ray Tune and torch.
"""

import sys
import types
from typing import Any

__all__ = ["run_sweep", "sweep"]


def __getattr__(name: str) -> Any:
    if name == "sweep":
        from lepton_ray.sweep.api import sweep

        return sweep
    if name == "run_sweep":
        from lepton_ray.sweep.runner import run_sweep

        return run_sweep
    if name == "__signature__":
        import inspect

        from lepton_ray.sweep.api import sweep

        return inspect.signature(sweep)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _CallablePackage(types.ModuleType):
    """This package is also the function `sweep`: importing a submodule sets the package as the attribute
    `lepton_ray.sweep`, so a plain function of that name on `lepton_ray` would be replaced by it."""

    def __call__(self, *args, **kwargs):
        from lepton_ray.sweep.api import sweep

        return sweep(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
