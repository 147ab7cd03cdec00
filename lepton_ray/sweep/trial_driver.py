"""The Tune function trainable of a sweep: one Optuna trial = one run under `trials/` named by its number."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lepton_ray import metrics
from lepton_ray.checkpoints import is_storage_full
from lepton_ray.config import WorkflowConfig, apply_overrides, parse_workflow
from lepton_ray.errors import LeptonError
from lepton_ray.sweep.study import NUMBER_KEY
from lepton_ray.trial.files import finished_trial_metrics, trial_run_name
from lepton_ray.trial.loop import run_trial
from lepton_ray.trial.sessions import InProcessSession
from lepton_ray.trial.trainer import TrialInputs, build_trainer, raise_if_diverged


RUN_NAME_KEY = "run_name"
"""Key of a run's folder name in a Tune config that is not an Optuna trial (the distillation control's runs)."""
TRIAL_DRIVER_CPU = 0.01
"""Tune's per-trial driver only waits on its TorchTrainer; 0 is rejected by Ray, 1 deadlocks 2-CPU nodes."""


def trial_driver(config: dict[str, Any], base_workflow: dict[str, Any], inputs: TrialInputs, trials_root: str) -> None:
    """Tune function trainable: one Optuna trial = one run under `trials/` named by its number (or by
    `config[RUN_NAME_KEY]`: the distillation control's runs); a finished run reports its saved final metrics.

    Several workers: a `TorchTrainer` (real DDP). One worker: the same loop in this actor
    (`trial.sessions.InProcessSession`), which saves a Ray Train start-up per trial.
    """
    import ray
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    name = config.get(RUN_NAME_KEY) or trial_run_name(config[NUMBER_KEY])
    already = finished_trial_metrics(Path(trials_root) / name)
    if already is not None:
        tune.report(already)
        return
    try:
        wf = checked_workflow(base_workflow, config)
        if runs_in_process(wf):
            node = {metrics.NODE_ID: ray.get_runtime_context().get_node_id()}
            session = InProcessSession(Path(trials_root) / name, on_report=lambda reported: tune.report({**reported, **node}))
            run_trial(inputs.loop_config(wf), session)
            final_metrics = session.last_metrics
        else:
            final_metrics = build_trainer(wf, inputs, Path(trials_root), name, [TuneReportCallback()]).fit().metrics or {}
            wait_until_tune_took_every_report()
    except Exception as err:
        if is_storage_full(err):
            tune.report({metrics.STORAGE_FULL: 1})  # the searcher leaves the trial to --resume; the driver stops the sweep
        elif isinstance(err, LeptonError):
            tune.report({metrics.INPUT_ERROR: f"{type(err).__name__}: {err}"})  # failed without a retry: it would fail again
        else:
            raise
        return
    raise_if_diverged(final_metrics)


def wait_until_tune_took_every_report(poll_s: float = 0.05, settle_s: float = 0.5) -> None:
    """Return from a DDP trial only once Tune's actor has taken every report `TuneReportCallback` forwarded.

    Ray 2.60 deadlocks otherwise: when this function returns, Tune's runner thread puts a last result into its
    one-slot result queue; if a forwarded report is still waiting in the inter-actor queue, the actor's main
    thread takes it and blocks forever putting it into that full queue (`_TrainSession._get_result_from_queues`;
    seen in CI: a 2-worker sweep stuck after both trials finished). The main thread empties the queue whenever
    Tune asks the trial for a result; `settle_s` covers the few statements between its taking the last report
    and passing it on."""
    from ray.train._internal.session import get_session

    forwarded = getattr(get_session(), "_inter_actor_queue", None)
    if forwarded is None:
        return
    while not forwarded.empty():
        time.sleep(poll_s)
    time.sleep(settle_s)


def checked_workflow(base_workflow: dict[str, Any], config: dict[str, Any]) -> WorkflowConfig:
    """The trial's workflow, checked in this process before any worker starts: a name registered only in
    the sweep's driver process (a plugin it imported) is unknown here, and would fail every worker."""
    from lepton_ray.checks import check_parsed

    wf = parse_workflow(apply_overrides(base_workflow, {key: value for key, value in config.items() if key not in (NUMBER_KEY, RUN_NAME_KEY)}))
    check_parsed(wf, on_worker=True)
    return wf


def runs_in_process(wf: WorkflowConfig) -> bool:
    return wf.resources.num_workers == 1


def trial_resources(wf: WorkflowConfig) -> dict[str, float]:
    """What Tune reserves for a trial's actor: the whole worker when it trains in-process, else a sliver
    (the `TorchTrainer` reserves its workers itself)."""
    if not runs_in_process(wf):
        return {"cpu": TRIAL_DRIVER_CPU}
    return {"cpu": wf.resources.cpus_per_worker, **({"gpu": wf.resources.gpus_per_worker} if wf.resources.use_gpu else {})}
