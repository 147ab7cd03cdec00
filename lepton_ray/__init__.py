"""lepton-ray: distill a big teacher into the best small int8 student with Ray Train, Ray Tune + Optuna and MLflow.

The public entry points are the `lepton-ray` command (`lepton_ray.cli`), `lepton_ray.sweep.run_sweep`,
`lepton_ray.pareto.select` and `lepton_ray.export.export_int8`.
"""

__version__ = "0.1.0"
