"""Deploy: the Pareto front and selection policies, on validation (`pareto.py`), what distillation bought for the
pick (`kd_gain.py`), the leaderboard read back from MLflow (`leaderboard.py`), publishing the pick as the MLflow `champion` (`publish.py`), and the selection report (`report.py`).

Register a selection policy with `@POLICIES.register("name")`.
"""

from lepton_ray.deploy.pareto import POLICIES, pareto_front, select

__all__ = ["POLICIES", "pareto_front", "select"]
