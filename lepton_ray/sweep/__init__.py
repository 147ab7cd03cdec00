"""The sweep: Ray Tune runs the trials (`runner.py`, `trial_driver.py`), an Optuna study decides what to try
(`search.py`), callbacks log to MLflow and print progress, and a finished sweep is read back and published (`results.py`)."""

from lepton_ray.sweep.runner import run_sweep

__all__ = ["run_sweep"]
