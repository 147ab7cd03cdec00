"""Multi-fidelity by replay: MO-ASHA (`sweep.scheduler: moasha`) against full-fidelity trials, in hypervolume per CPU-second.

The table is `benchmarks/search_grid.py`'s, with each configuration's learning curve (validation accuracy and
compute seconds after each epoch). A replay runs a sweep on `CONCURRENT` slots in simulated time: when a slot
frees, the searcher (the sweep's own sampler, as in `search_efficiency`) asks for a configuration; the trial
pays its measured start-up (the row's seconds minus its compute seconds), then each epoch's measured seconds.
With the scheduler, the sweep's own rule (`lepton_ray/sweep/moasha.py: ParetoRungs`, rungs as `sweep/schedulers.py`
sets them for the grid's epochs) judges each trial at each rung on (that epoch's validation accuracy, the finished
student's `size_bytes`, which the trial reports as `planned_size_bytes` from its first epoch); a stopped trial
frees its slot and is told to Optuna as PRUNED. Hypervolume counts finished trials only (stopped ones never reach
the front), normalised by the grid's known front as in `search_efficiency`; CPU seconds are the slots' busy time.

Target: random search's mean hypervolume after 24 full-fidelity trials, and those sweeps' mean CPU seconds. For
each arm and seed, the CPU seconds at which the sweep first reaches that hypervolume (a miss counts as the cap).

    .venv/bin/python -m benchmarks.multi_fidelity [--quick] [--grid FILE]    # writes benchmarks/results/multi_fidelity.{json,md}
"""

from __future__ import annotations

import heapq
import itertools
import json
import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import optuna
import torch

from benchmarks.common import REPO, Figure, figures_table, format_table
from benchmarks.search_efficiency import ACCURACY, COST, CONCURRENT, GridTable, Outcome, _key, mean_and_se, replay_cli
from lepton_ray import metrics
from lepton_ray.config import SweepConfig
from lepton_ray.sweep.moasha import ParetoRungs
from lepton_ray.sweep.samplers import DEFAULT_SEARCHER, make_sampler
from lepton_ray.sweep.study import set_constraints
from lepton_ray.sweep.schedulers import MOASHA_REDUCTION_FACTOR, moasha_milestones

NAME = "multi_fidelity"
BASELINE_TRIALS = 24
CPU_CAP = 2.0
"""A sweep stops at this multiple of the baseline's CPU seconds; an arm that has not reached the target by then counts as the cap."""
FULL = {"seeds": 10}
QUICK = {"seeds": 2}
PROCESSES = 2
ARMS = [("random", False, False), ("random", True, False), ("random", True, True), (DEFAULT_SEARCHER, False, True), (DEFAULT_SEARCHER, True, True)]
"""(searcher, MO-ASHA on, `sweep.accuracy_floor` at the reference accuracy): random without either is the baseline; the
floor reaches the sampler (random ignores it) and the rungs' order (`moasha.constrained_order`)."""


def arm_name(searcher: str, scheduled: bool, floored: bool) -> str:
    return f"{searcher}{' + moasha' if scheduled else ''}{' + floor' if floored else ''}"


@dataclass(frozen=True)
class Curve:
    """What a replayed trial of one configuration costs and shows: start-up seconds, seconds of each epoch, the
    validation accuracy after each epoch, the finished student's `size_bytes` (its planned cost)."""

    startup: float
    epoch_seconds: tuple[float, ...]
    accuracy: tuple[float, ...]
    planned_cost: float


def curves(payload: dict[str, Any], table: GridTable) -> dict[tuple[float, ...], Curve]:
    out = {}
    for row in payload["configs"]:
        compute = [point[metrics.COMPUTE_S] for point in row["curve"]]
        out[_key([row["knobs"][path] for path in table.distributions])] = Curve(
            startup=max(0.0, row["seconds"] - compute[-1]),
            epoch_seconds=tuple(b - a for a, b in zip([0.0, *compute], compute)),
            accuracy=tuple(point[metrics.VAL_ACCURACY] for point in row["curve"]),
            planned_cost=row.get(metrics.SIZE_BYTES, math.inf),
        )
    return out


def replay_in_time(table: GridTable, by_key: dict[tuple[float, ...], Curve], searcher: str, seed: int, scheduled: bool,
                   max_trials: int | None, cpu_budget: float, epochs: int, floored: bool = False) -> list[tuple[float, Outcome]]:
    """One simulated sweep: (CPU seconds so far, outcome) at each finished trial, until `max_trials` have been
    started or `cpu_budget` is spent. Trials stopped at a rung add nothing to the list (they cost CPU all the same)."""
    cfg = SweepConfig(searcher=searcher, seed=seed, num_samples=max_trials or 48, accuracy_floor=table.reference[0] if floored else None)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=make_sampler(cfg))
    rungs = ParetoRungs(moasha_milestones(epochs) if scheduled else [], MOASHA_REDUCTION_FACTOR, cfg.accuracy_floor)
    events: list[tuple[float, int, int, int]] = []  # (time an epoch ends, tie-breaker, trial number, that epoch)
    live: dict[int, tuple[optuna.trial.Trial, Curve, float]] = {}  # number -> (trial, curve, start time)
    spent: list[float] = []  # busy seconds of trials that ended
    started = itertools.count()
    finished: list[tuple[float, Outcome]] = []

    def cpu_at(now: float) -> float:
        return sum(spent) + sum(now - start for _, _, start in live.values())

    def start(now: float) -> None:
        if max_trials is not None and len(live) + len(spent) >= max_trials:
            return
        trial = study.ask(table.distributions)
        curve = by_key[_key([trial.params[path] for path in table.distributions])]
        live[trial.number] = (trial, curve, now)
        heapq.heappush(events, (now + curve.startup + curve.epoch_seconds[0], next(started), trial.number, 1))

    def end(number: int, now: float) -> optuna.trial.Trial:
        trial, _, start_time = live.pop(number)
        spent.append(now - start_time)
        return trial

    for _ in range(CONCURRENT):
        start(0.0)
    while events:
        now, _, number, epoch = heapq.heappop(events)
        if cpu_at(now) > cpu_budget:
            break
        trial, curve, _ = live[number]
        if epoch < len(curve.epoch_seconds):
            if rungs.goes_on(str(number), epoch, (curve.accuracy[epoch - 1], curve.planned_cost)):
                heapq.heappush(events, (now + curve.epoch_seconds[epoch], next(started), number, epoch + 1))
                continue
            end(number, now)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            end(number, now)
            outcome = table.outcome(trial.params)
            set_constraints(trial, cfg, dict(zip((ACCURACY, COST), outcome)) if outcome else None)
            study.tell(trial, list(outcome) if outcome else None, state=optuna.trial.TrialState.COMPLETE if outcome else optuna.trial.TrialState.FAIL)
            finished.append((cpu_at(now), outcome))
        start(now)
    return finished


def hypervolume_curve(table: GridTable, finished: Sequence[tuple[float, Outcome]]) -> list[tuple[float, float]]:
    """(CPU seconds, normalised hypervolume of the trials finished by then) at each finish."""
    return [(cpu, table.hypervolume([outcome for _, outcome in finished[: index + 1]])) for index, (cpu, _) in enumerate(finished)]


def cpu_to_reach(curve: Sequence[tuple[float, float]], target: float, cap: float) -> float:
    return next((cpu for cpu, hypervolume in curve if hypervolume >= target - 1e-12), cap)


def hypervolume_at(curve: Sequence[tuple[float, float]], cpu: float) -> float:
    return max((hypervolume for spent, hypervolume in curve if spent <= cpu), default=0.0)


def run_arm(payload: dict[str, Any], searcher: str, scheduled: bool, floored: bool, seed: int, max_trials: int | None, cpu_budget: float) -> dict[str, Any]:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    table = GridTable.from_payload(payload)
    started = time.perf_counter()
    finished = replay_in_time(table, curves(payload, table), searcher, seed, scheduled, max_trials, cpu_budget, payload["setting"]["epochs"], floored)
    return {"arm": arm_name(searcher, scheduled, floored), "searcher": searcher, "moasha": scheduled, "floor": floored, "seed": seed, "curve": hypervolume_curve(table, finished),
            "finished": len(finished), "seconds": time.perf_counter() - started}


def _pool(processes: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"), initializer=torch.set_num_threads, initargs=(1,))


def run(grid_file: Path, seeds: int, processes: int) -> dict[str, Any]:
    grid = json.loads(grid_file.read_text())
    if any("curve" not in row for row in grid["configs"]):
        raise ValueError(f"{grid_file}: rows without a learning curve; rebuild it with python -m benchmarks.search_grid")
    started = time.perf_counter()
    with _pool(processes) as pool:
        baseline = list(pool.map(run_arm, *zip(*[(grid, "random", False, False, seed, BASELINE_TRIALS, math.inf) for seed in range(seeds)])))
        target, _ = mean_and_se([run["curve"][-1][1] for run in baseline])
        reference_cpu, reference_cpu_se = mean_and_se([run["curve"][-1][0] for run in baseline])
        cap = CPU_CAP * reference_cpu
        arms = list(pool.map(run_arm, *zip(*[(grid, *arm, seed, None, cap) for arm in ARMS for seed in range(seeds)])))
    summary = {}
    for arm in ARMS:
        own = [run for run in arms if run["arm"] == arm_name(*arm)]
        to_target = [cpu_to_reach(run["curve"], target, cap) for run in own]
        mean, se = mean_and_se([cpu / reference_cpu for cpu in to_target])
        summary[arm_name(*arm)] = {
            "cpu_to_target_ratio": {"mean": mean, "se": se}, "missed": sum(cpu >= cap for cpu in to_target),
            "hypervolume_at_half": dict(zip(("mean", "se"), mean_and_se([hypervolume_at(run["curve"], reference_cpu / 2) for run in own]))),
            "hypervolume_at_reference": dict(zip(("mean", "se"), mean_and_se([hypervolume_at(run["curve"], reference_cpu) for run in own]))),
            "finished_trials_at_cap": dict(zip(("mean", "se"), mean_and_se([run["finished"] for run in own]))),
        }
    return {
        "setting": {
            "grid_file": str(grid_file.relative_to(REPO) if grid_file.is_relative_to(REPO) else grid_file), "grid_commit": grid["commit"],
            "epochs": grid["setting"]["epochs"], "rungs": moasha_milestones(grid["setting"]["epochs"]),
            "reduction_factor": MOASHA_REDUCTION_FACTOR, "trials_in_flight": CONCURRENT, "sampler_seeds": list(range(seeds)),
            "objectives": f"{ACCURACY} up, {COST} down; at a rung: that epoch's {metrics.VAL_ACCURACY} up, the finished student's {metrics.SIZE_BYTES} down",
            "baseline": f"random search, {BASELINE_TRIALS} full-fidelity trials", "cpu_cap": f"{CPU_CAP:g} x the baseline's CPU seconds",
        },
        "target_hypervolume": target,
        "reference_cpu_seconds": {"mean": reference_cpu, "se": reference_cpu_se},
        "seconds": time.perf_counter() - started,
        "summary": summary,
        "runs": [{key: value for key, value in run.items() if key != "curve"} for run in baseline + arms],
    }


def figures(payload: dict[str, Any]) -> list[Figure]:
    """The goal on the best arm with the scheduler; beside it the same ratio for the scheduler alone (random + moasha +
    floor) and for the default searcher alone, so that what the scheduler adds is visible."""
    summary, seeds = payload["summary"], len(payload["setting"]["sampler_seeds"])
    best = min((name for name in summary if "moasha" in name), key=lambda name: summary[name]["cpu_to_target_ratio"]["mean"])
    def ratio(name: str, goal: float | None = None) -> Figure:
        return Figure(NAME, f"{name}: CPU seconds to random-{BASELINE_TRIALS}'s hypervolume / random-{BASELINE_TRIALS}'s CPU seconds"
                      f"{f' (mean of {seeds} seeds)' if goal else ''}", summary[name]["cpu_to_target_ratio"]["mean"], at_most=goal)
    others = [name for name in (arm_name("random", True, True), arm_name(DEFAULT_SEARCHER, False, True)) if name in summary and name != best]
    return [ratio(best, 0.5), *(ratio(name) for name in others)]


def markdown(payload: dict[str, Any]) -> str:
    setting = payload["setting"]
    rows = [[name, f"{s['cpu_to_target_ratio']['mean']:.2f} +- {s['cpu_to_target_ratio']['se']:.2f} ({s['missed']} missed)",
             f"{s['hypervolume_at_half']['mean']:.3f} +- {s['hypervolume_at_half']['se']:.3f}",
             f"{s['hypervolume_at_reference']['mean']:.3f} +- {s['hypervolume_at_reference']['se']:.3f}",
             f"{s['finished_trials_at_cap']['mean']:.1f}"] for name, s in payload["summary"].items()]
    return "\n".join([
        "# Multi-fidelity: MO-ASHA against full-fidelity trials, replayed on the measured grid", "",
        f"Measured at commit `{payload['commit']}` by `python -m benchmarks.multi_fidelity{' --quick' if payload['quick'] else ''}`; "
        f"grid `{setting['grid_file']}` (measured at `{setting['grid_commit']}`), {setting['epochs']} epochs, rungs at epoch(s) {setting['rungs']}, "
        f"eta {setting['reduction_factor']}, {setting['trials_in_flight']} trials in flight.", "",
        figures_table(figures(payload)), "",
        f"Target: {setting['baseline']}: hypervolume {payload['target_hypervolume']:.3f} (share of the known front's), "
        f"{payload['reference_cpu_seconds']['mean']:,.0f} CPU seconds (means over {len(setting['sampler_seeds'])} seeds). "
        f"Each arm runs until {setting['cpu_cap']}; mean +- standard error over seeds.", "",
        format_table(["arm", "CPU to target / baseline CPU", "HV at half the baseline CPU", "HV at the baseline CPU", "finished trials at the cap"], rows), "",
    ])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return replay_cli(argv, NAME, __doc__, run, {False: FULL, True: QUICK}, markdown, figures)


if __name__ == "__main__":
    main()
