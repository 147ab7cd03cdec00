"""Searchers compared by replaying a measured grid: hypervolume at equal trial budgets, and trials to 90% of the known front.

The table is `benchmarks/search_grid.py`'s (Fashion-MNIST, every configuration of width x channel pruning x
pruning x bits trained once). Each searcher is the sweep's own sampler (`lepton_ray/sweep/samplers.py`, built
by `make_sampler` with the searcher's name, the sampler seed and the budget as `sweep.num_samples`) over a
real in-memory Optuna study whose distributions hold exactly the grid's values (stepped floats, bits an int).
The table answers each configuration asked with what it measured; objectives as the sweep's: best_val_accuracy
up, int8_gzip_bytes down. Two trials are in flight, told first in, first out: every ask after the first sees
the other trial still running, as in a sweep where Tune fills a freed slot at once (so the constant liar acts).

Reference point: accuracy = the dense labels-only student's best_val_accuracy minus 5 pt; cost = that dense
fp32 student's int8_gzip_bytes (the file an uncompressed float student ships). Hypervolume is normalised by
the grid's own front: the table holds every configuration, so that front is the known one.

Each searcher runs with `sweep.accuracy_floor` at the reference accuracy (the user's "nothing below this ships",
told to the sampler as an Optuna constraint exactly as a sweep does, `study.set_constraints`); the default searcher
and tpe also run without it. Random search ignores constraints: one arm.

    .venv/bin/python -m benchmarks.search_efficiency [--quick] [--grid FILE]    # writes benchmarks/results/search_efficiency.{json,md}
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import optuna
import torch

from benchmarks.common import REPO, RESULTS, Figure, figures_table, format_table, result_path, write_result
from lepton_ray import metrics
from lepton_ray.config import SweepConfig
from lepton_ray.sweep.samplers import DEFAULT_SEARCHER, SAMPLERS, make_sampler
from lepton_ray.sweep.study import set_constraints

NAME = "search_efficiency"
ACCURACY, COST = metrics.BEST_VAL_ACCURACY, metrics.INT8_GZIP_BYTES
REFERENCE_DROP = 0.05
"""The reference accuracy is this far below the dense labels-only student's."""
SHARE = 0.9
"""Trials to reach this share of the known front's hypervolume."""
CONCURRENT = 2
"""Trials in flight, as the Fashion-MNIST workflow's `resources.max_concurrent_trials`."""
FULL = {"seeds": 10, "budgets": (12, 24), "max_trials": 48}
QUICK = {"seeds": 2, "budgets": (4, 8), "max_trials": 12}
PROCESSES = 2
SEARCHERS = [name for name in SAMPLERS.names() if name != "optuna"]
"""Every registered searcher once (`optuna` is another name of the default)."""
ARMS = [*((name, name != "random") for name in SEARCHERS), *dict.fromkeys([(DEFAULT_SEARCHER, False), ("tpe", False)])]
"""(searcher, given the accuracy floor): every searcher with it (random ignores it), the default and tpe also without."""


def arm_name(searcher: str, floored: bool) -> str:
    return searcher if floored or searcher == "random" else f"{searcher} (no floor)"

Outcome = tuple[float, float] | None
"""(accuracy, cost) of a told trial; None where the configuration diverged (told as failed)."""


def hypervolume_2d(accuracy: Sequence[float], cost: Sequence[float], reference: tuple[float, float]) -> float:
    """Area dominated by the points (accuracy up, cost down) within the box bounded by `reference` =
    (accuracy, cost); points not better than it on both axes, or not finite, add nothing. Sweeping by
    cost: from one point's cost to the next, the dominated height is the best accuracy so far."""
    reference_accuracy, reference_cost = reference
    points = sorted((c, a) for a, c in zip(accuracy, cost) if math.isfinite(a) and math.isfinite(c) and a > reference_accuracy and c < reference_cost)
    next_costs = [c for c, _ in points[1:]] + [reference_cost]
    area, best_accuracy = 0.0, reference_accuracy
    for (point_cost, point_accuracy), next_cost in zip(points, next_costs):
        best_accuracy = max(best_accuracy, point_accuracy)
        area += (next_cost - point_cost) * (best_accuracy - reference_accuracy)
    return area


def _key(values: Sequence[float]) -> tuple[float, ...]:
    """Grid values as a lookup key: a stepped float Optuna suggests may differ from the table's in the last bits."""
    return tuple(round(float(value), 9) for value in values)


def distribution(values: Sequence[float | int]) -> optuna.distributions.BaseDistribution:
    """The Optuna distribution holding exactly these evenly spaced values: an int one for whole numbers
    (bits: GPSampler models categoricals poorly), else a stepped float one."""
    steps = {round(b - a, 9) for a, b in zip(values, values[1:])}
    if len(steps) != 1 or min(steps) <= 0:
        raise ValueError(f"grid values {list(values)} are not evenly spaced and increasing; a stepped distribution cannot hold exactly them")
    step = steps.pop()
    if all(isinstance(value, int) for value in values):
        return optuna.distributions.IntDistribution(values[0], values[-1], step=int(step))
    return optuna.distributions.FloatDistribution(values[0], values[-1], step=step)


@dataclass(frozen=True)
class GridTable:
    """What a replay needs from `search_grid`'s payload: the searched knobs, each configuration's outcome, the reference point."""

    distributions: dict[str, optuna.distributions.BaseDistribution]
    """Knobs with more than one value in the grid (the others are fixed)."""
    outcomes: dict[tuple[float, ...], Outcome]
    reference: tuple[float, float]

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> "GridTable":
        searched = {path: values for path, values in payload["setting"]["grid"].items() if len(values) > 1}
        outcomes = {
            _key([row["knobs"][path] for path in searched]): None if row["diverged"] else (row[ACCURACY], row[COST]) for row in payload["configs"]
        }
        dense = payload["dense_labels_only"]
        return cls({path: distribution(values) for path, values in searched.items()}, outcomes, (dense[ACCURACY] - REFERENCE_DROP, dense[COST]))

    def outcome(self, params: dict[str, Any]) -> Outcome:
        return self.outcomes[_key([params[path] for path in self.distributions])]

    @cached_property
    def known_hypervolume(self) -> float:
        """Hypervolume of the grid's own front: every configuration is in the table, so no searcher finds more."""
        return _area(list(self.outcomes.values()), self.reference)

    def hypervolume(self, outcomes: Sequence[Outcome]) -> float:
        """Hypervolume of these outcomes as a share of the known front's; NaN where no configuration beats the reference point."""
        return _area(outcomes, self.reference) / self.known_hypervolume if self.known_hypervolume else math.nan


def _area(outcomes: Sequence[Outcome], reference: tuple[float, float]) -> float:
    finished = [outcome for outcome in outcomes if outcome is not None]
    return hypervolume_2d([a for a, _ in finished], [c for _, c in finished], reference)


def replay(table: GridTable, searcher: str, seed: int, trials: int, concurrent: int = CONCURRENT, floored: bool = False) -> list[Outcome]:
    """One sweep of `trials` trials by the named searcher (given the reference accuracy as `sweep.accuracy_floor`
    where `floored`), the table answering; outcomes in the order told."""
    cfg = SweepConfig(searcher=searcher, seed=seed, num_samples=trials, accuracy_floor=table.reference[0] if floored else None)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=make_sampler(cfg))
    running: list[optuna.trial.Trial] = []
    told: list[Outcome] = []

    def tell_oldest() -> None:
        trial = running.pop(0)
        outcome = table.outcome(trial.params)
        set_constraints(trial, cfg, dict(zip((ACCURACY, COST), outcome)) if outcome else None)  # as StudySearcher does
        study.tell(trial, list(outcome) if outcome else None, state=optuna.trial.TrialState.COMPLETE if outcome else optuna.trial.TrialState.FAIL)
        told.append(outcome)

    for _ in range(trials):
        if len(running) == concurrent:
            tell_oldest()
        running.append(study.ask(table.distributions))
    while running:
        tell_oldest()
    return told


def trials_to_share(table: GridTable, outcomes: Sequence[Outcome], share: float = SHARE) -> int | None:
    """The number of told trials after which the hypervolume first reaches `share` of the known front's; None: never."""
    return next((count for count in range(1, len(outcomes) + 1) if table.hypervolume(outcomes[:count]) >= share - 1e-12), None)


def run_searcher(payload: dict[str, Any], searcher: str, floored: bool, seed: int, budgets: Sequence[int], max_trials: int) -> dict[str, Any]:
    """One arm and seed: normalised hypervolume after a sweep of each budget, and trials to 90% in a sweep of `max_trials`."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    table = GridTable.from_payload(payload)
    started = time.perf_counter()
    hypervolume = {str(budget): table.hypervolume(replay(table, searcher, seed, budget, floored=floored)) for budget in budgets}
    return {"searcher": arm_name(searcher, floored), "seed": seed, "hypervolume": hypervolume,
            "trials_to_90": trials_to_share(table, replay(table, searcher, seed, max_trials, floored=floored)), "seconds": time.perf_counter() - started}


def mean_and_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and its standard error (NaN in, NaN out)."""
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0


def summarise(runs: list[dict[str, Any]], budgets: Sequence[int], max_trials: int) -> dict[str, Any]:
    """Per searcher: hypervolume mean and standard error per budget, and trials to 90% (a miss counts as max_trials + 1)."""
    out: dict[str, Any] = {}
    for searcher in dict.fromkeys(run["searcher"] for run in runs):
        own = [run for run in runs if run["searcher"] == searcher]
        reached = [run["trials_to_90"] for run in own]
        out[searcher] = {
            "hypervolume": {str(b): dict(zip(("mean", "se"), mean_and_se([run["hypervolume"][str(b)] for run in own]))) for b in budgets},
            "trials_to_90": {"per_seed": reached, "missed": reached.count(None), "mean": statistics.mean(t or max_trials + 1 for t in reached)},
            "replay_seconds": sum(run["seconds"] for run in own),
        }
    return out


def headline(summary: dict[str, Any], budget: int, arm: str) -> dict[str, Any]:
    """One arm (the default searcher) against random at `budget`: HV ratio, difference in standard errors, trials-to-90% ratio;
    `best`: the arm with the highest mean hypervolume there."""
    best = max(summary, key=lambda name: summary[name]["hypervolume"][str(budget)]["mean"])
    ours, theirs = summary[arm]["hypervolume"][str(budget)], summary["random"]["hypervolume"][str(budget)]
    difference_se = math.hypot(ours["se"], theirs["se"])
    return {
        "arm": arm, "best": best, "budget": budget, "hypervolume_ratio": ours["mean"] / theirs["mean"],
        "difference_in_se": (ours["mean"] - theirs["mean"]) / difference_se if difference_se else math.inf,
        "trials_to_90_ratio": summary[arm]["trials_to_90"]["mean"] / summary["random"]["trials_to_90"]["mean"] if math.isfinite(theirs["mean"]) else math.nan,
    }


def run(grid_file: Path, seeds: int, budgets: Sequence[int], max_trials: int, processes: int) -> dict[str, Any]:
    grid = json.loads(grid_file.read_text())
    table = GridTable.from_payload(grid)
    if not table.known_hypervolume:
        print(f"warning: no configuration of {grid_file.name} beats the reference point {table.reference}: every hypervolume is NaN")
    started = time.perf_counter()
    jobs = [(searcher, floored, seed) for searcher, floored in ARMS for seed in range(seeds)]
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"), initializer=torch.set_num_threads, initargs=(1,)) as pool:
        futures = [pool.submit(run_searcher, grid, searcher, floored, seed, budgets, max_trials) for searcher, floored, seed in jobs]
        runs = [future.result() for future in futures]
    summary = summarise(runs, budgets, max_trials)
    return {
        "setting": {
            "grid_file": str(grid_file.relative_to(REPO) if grid_file.is_relative_to(REPO) else grid_file), "grid_commit": grid["commit"],
            "grid": grid["setting"]["grid"], "configurations": len(table.outcomes), "searched_knobs": {path: repr(d) for path, d in table.distributions.items()},
            "objectives": f"{ACCURACY} up, {COST} down", "trials_in_flight": CONCURRENT, "sampler_seeds": list(range(seeds)),
            "budgets": list(budgets), "max_trials": max_trials, "searchers": SEARCHERS, "default_searcher": DEFAULT_SEARCHER,
            "arms": [arm_name(*arm) for arm in ARMS], "accuracy_floor": table.reference[0],
            "reference_point": {ACCURACY: table.reference[0], COST: table.reference[1], "why": (
                f"accuracy: the dense labels-only student's {ACCURACY} ({grid['dense_labels_only'][ACCURACY]:.4f}) minus {REFERENCE_DROP * 100:g} pt; "
                f"cost: that dense fp32 student's {COST} (its shipped int8 file)")},
            "known_front_hypervolume": table.known_hypervolume,
            "hypervolume_unit": "share of the known front's hypervolume (the grid's own front: every configuration is in the table)",
            "trials_to_90": f"told trials until the hypervolume reaches {SHARE:g} of the known front's, in a sweep of {max_trials}; a miss counts as {max_trials + 1}",
        },
        "seconds": time.perf_counter() - started,
        "summary": summary,
        "headline": headline(summary, budgets[-1], DEFAULT_SEARCHER),
        "headline_without_floor": headline(summary, budgets[-1], arm_name(DEFAULT_SEARCHER, False)),
        "runs": runs,
    }


def figures(payload: dict[str, Any]) -> list[Figure]:
    top, bare = payload["headline"], payload["headline_without_floor"]
    arm, budget, seeds = top["arm"], top["budget"], len(payload["setting"]["sampler_seeds"])
    return [
        Figure(NAME, f"{arm} (default, accuracy floor) / random normalised hypervolume, {budget} trials (mean of {seeds} seeds)", top["hypervolume_ratio"], at_least=1.15),
        Figure(NAME, f"{arm} - random hypervolume, {budget} trials, in standard errors of the difference", top["difference_in_se"], at_least=2.0),
        Figure(NAME, f"{arm} / random trials to {SHARE:.0%} of the known front", top["trials_to_90_ratio"], at_most=0.5),
        Figure(NAME, f"{bare['arm']} / random normalised hypervolume, {budget} trials", bare["hypervolume_ratio"]),
    ]


def markdown(payload: dict[str, Any]) -> str:
    setting, summary = payload["setting"], payload["summary"]
    budgets, max_trials = setting["budgets"], setting["max_trials"]
    random_hv = {b: summary["random"]["hypervolume"][str(b)]["mean"] for b in budgets}
    rows = [[name, *[f"{s['hypervolume'][str(b)]['mean']:.3f} +- {s['hypervolume'][str(b)]['se']:.3f}" for b in budgets],
             f"{s['hypervolume'][str(budgets[-1])]['mean'] / random_hv[budgets[-1]]:.3f}",
             f"{s['trials_to_90']['mean']:.1f} ({s['trials_to_90']['missed']} missed)", f"{s['replay_seconds']:.0f}"]
            for name, s in sorted(summary.items(), key=lambda item: -item[1]["hypervolume"][str(budgets[-1])]["mean"])]
    reference = setting["reference_point"]
    return "\n".join([
        "# Search efficiency: searchers replayed on a measured grid", "",
        f"Measured at commit `{payload['commit']}` by `python -m benchmarks.search_efficiency{' --quick' if payload['quick'] else ''}`{' (smoke run)' if payload['quick'] else ''}; "
        f"grid `{setting['grid_file']}` ({setting['configurations']} configurations, measured at `{setting['grid_commit']}`).", "",
        figures_table(figures(payload)), "",
        f"Normalised hypervolume (share of the known front's), mean +- standard error over {len(setting['sampler_seeds'])} sampler seeds; "
        f"{setting['trials_in_flight']} trials in flight. Trials to {SHARE:.0%}: mean over seeds in sweeps of {max_trials}, a miss counted as {max_trials + 1}. "
        f"Every searcher but random is given `sweep.accuracy_floor` = the reference accuracy ({setting['accuracy_floor']:.4f}) except the rows marked "
        f"(no floor); the default searcher is {setting['default_searcher']}.", "",
        format_table(["searcher", *[f"HV at {b} trials" for b in budgets], f"HV / random at {budgets[-1]}", f"trials to {SHARE:.0%}", "replay s"], rows), "",
        f"Reference point: {ACCURACY} {reference[ACCURACY]:.4f}, {COST} {reference[COST]:,.0f} ({reference['why']}).", "",
    ])


def replay_cli(argv: list[str] | None, name: str, doc: str, run: Callable[..., dict[str, Any]], settings: dict[bool, dict[str, Any]],
               markdown: Callable[[dict[str, Any]], str], figures: Callable[[dict[str, Any]], list[Figure]]) -> dict[str, Any]:
    """The command line of a benchmark that replays the grid table (this one, `multi_fidelity`): run, write JSON and Markdown, print the figures."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {settings[True]}, on search_grid.quick.json unless --grid")
    parser.add_argument("--grid", type=Path, default=None, help="the table to replay (default: results/search_grid[.quick].json)")
    parser.add_argument("--processes", type=int, default=PROCESSES)
    args = parser.parse_args(argv)
    grid_file = args.grid or result_path("search_grid", args.quick)
    if not grid_file.is_file():
        raise FileNotFoundError(f"{grid_file}: no grid table; build it with python -m benchmarks.search_grid{' --quick' if args.quick else ''}")
    payload = write_result(name, run(grid_file, **settings[args.quick], processes=args.processes), args.quick)
    page = RESULTS / f"{name}{'.quick' if args.quick else ''}.md"
    page.write_text(markdown(payload))
    print(f"wrote {page.relative_to(REPO)}")
    print(figures_table(figures(payload)))
    return payload


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return replay_cli(argv, NAME, __doc__, run, {False: FULL, True: QUICK}, markdown, figures)


if __name__ == "__main__":
    main()
