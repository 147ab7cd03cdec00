"""Pareto front and selection policies: pure functions, no I/O."""

from __future__ import annotations

from lepton_ray.registry import Registry

POLICIES: Registry = Registry("selection policy", "selection.policy")
