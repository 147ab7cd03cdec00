"""Checks of the sweep's own settings (the searcher's name, a warm start), run right after
`lepton_ray.checks.check_workflow` by `validate`, `sweep` and `train`: they need this package, which the
lower `checks` module must not import (the stage packages depend one way)."""

from __future__ import annotations

from lepton_ray.config import SearchSpace, WorkflowConfig
from lepton_ray.sweep.samplers import SAMPLERS
from lepton_ray.sweep.warm_start import read_warm_start


def check_sweep(wf: WorkflowConfig, space: SearchSpace | None) -> None:
    """A `ConfigError` naming the field, before anything is started or written."""
    SAMPLERS.get(wf.sweep.searcher)
    if wf.sweep.warm_start is not None:
        read_warm_start(wf.sweep.warm_start, space, wf.sweep)
