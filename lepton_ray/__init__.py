"""lepton-ray: distill a big teacher into the best small int8 student with Ray Train, Ray Tune + Optuna and MLflow.

The package reads like the pipeline: data -> models -> distill -> compress -> export -> trial ->
sweep -> tracking -> deploy, plus cluster (Ray Jobs) and the `lepton-ray` command (`cli.py`).
Public entry points: the command, `lepton_ray.sweep(workflow, overrides, **dotted)` (`sweep/api.py`),
`lepton_ray.sweep.run_sweep`, `lepton_ray.deploy.select`, `lepton_ray.export.export_int8`, and the
registries `lepton_ray.data.DATASETS`, `lepton_ray.models.MODELS`, `lepton_ray.distill.losses.LOSSES`,
`lepton_ray.deploy.POLICIES`, `lepton_ray.compress.COMPRESSORS`.
"""

import importlib

__version__ = "0.1.0"


def __getattr__(name: str):
    """`lepton_ray.sweep` is imported on first use, so `import lepton_ray` stays cheap (no Ray, no torch)."""
    if name == "sweep":
        return importlib.import_module("lepton_ray.sweep")
    raise AttributeError(f"module 'lepton_ray' has no attribute {name!r}")
