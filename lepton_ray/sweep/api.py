"""The Python entry point, `lepton_ray.sweep(...)`: what `lepton-ray sweep` does, for notebooks and scripts."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from lepton_ray.config import WorkflowConfig, apply_overrides, load_workflow, parse_workflow

from lepton_ray.search_space import SearchSpace
from lepton_ray.console import echo
from lepton_ray.sweep.results import SweepOutcome
from lepton_ray.sweep.runner import run_sweep


def sweep(
    workflow: str | Path | WorkflowConfig,
    overrides: dict[str, Any] | None = None,
    *,
    resume: bool = False,
    select_and_export: bool = True,
    address: str | None = None,
    log: Callable[[str], None] = echo,
    **dotted: Any,
) -> SweepOutcome:
    """Run (or `resume`) a workflow's sweep, then select, export and register the pick; returns the outcome
    (`.trials`: the leaderboard as a DataFrame, `.parent_run_id`, `.selection`).

    `workflow` is a YAML path or a `WorkflowConfig`. `overrides` maps dotted paths to values as `--set` does
    ({"training.epochs": 2}); keyword arguments do the same with `__` for each dot (`training__epochs=2`).
    Every check of `lepton-ray validate` runs first: bad input raises a `LeptonError` naming the field. An error
    after the trials finished (an int8 file outside `export.tolerance`: `ExportError`) carries the outcome as
    `err.outcome`; `lepton-ray export WORKFLOW --trial N` then exports another trial.
    """
    wf = workflow_with(workflow, {**(overrides or {}), **dotted_overrides(dotted)})
    space = check_run(wf, address, "address")
    return run_sweep(wf, space, resume=resume, address=address, select_and_export=select_and_export, log=log)


def dotted_overrides(keywords: dict[str, Any]) -> dict[str, Any]:
    """`training__epochs=2` -> {"training.epochs": 2}."""
    return {key.replace("__", "."): value for key, value in keywords.items()}


def workflow_with(workflow: str | Path | WorkflowConfig, overrides: dict[str, Any]) -> WorkflowConfig:
    if isinstance(workflow, WorkflowConfig):
        return parse_workflow(apply_overrides(workflow.to_dict(), overrides)) if overrides else workflow
    return load_workflow(Path(workflow), overrides)


def check_run(wf: WorkflowConfig, address: str | None, address_field: str) -> SearchSpace | None:
    """Every check `validate` runs, resources sized to this machine unless joining a cluster, and a cluster
    to join answering (Ray itself would wait, then fail after the teacher stage and MLflow started)."""
    from lepton_ray.checks import check_workflow, local_cluster_size
    from lepton_ray.cluster.ray_runtime import check_reachable, cluster_address
    from lepton_ray.sweep.checks import check_sweep

    joining = cluster_address(address)
    space = check_workflow(wf, None if joining else local_cluster_size())
    check_sweep(wf, space)
    if joining:
        check_reachable(joining, address_field if address else "RAY_ADDRESS")
    return space
