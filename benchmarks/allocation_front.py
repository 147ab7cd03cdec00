"""Per-layer allocation against uniform compression on Fashion-MNIST (issue 33): the same sweep, two search spaces.

    .venv/bin/python -m benchmarks.allocation_front [--trials 16] [--seeds 3] [--epochs N] [--quick] [--space S] [--partial]

`uniform` is `search_spaces/fashion_mnist.yaml` (one bit-width and one sparsity for the whole student);
`allocation` is `search_spaces/fashion_mnist_allocation.yaml` (a budget in stored bits per weight, each layer's bits
and sparsity allocated from the sweep's sensitivity profile). Everything else is the workflow's: student, teacher
(the committed asset), recipe, searcher; both spaces run with the same sampler seeds and trial counts through
`lepton-ray sweep --no-export`. Per sweep: the normalised hypervolume of its trials (int8 validation accuracy up,
int8 gzip bytes down) in the box from (the workflow's `sweep.accuracy_floor`, the dense distilled student's gzip
bytes) to (1, 0), as `search_efficiency` measures fronts; and, at the uniform champion's validation accuracy (the
workflow's policy on the uniform sweep, within 0.3 pt), the cheapest allocated student. `--epochs` shortens every
trial (a screen, not the issue's figure). Every trial's int8 file is also re-tested in ONNX Runtime on the test split;
the allocation sweeps' most accurate student within 10,800 B (chosen on validation) is issue 31's size goal.

A full run is six 16-trial sweeps of 30 epochs: about five hours on 2 cores, longer than a working session. Each
finished sweep is therefore kept as a committed record, `results/allocation_front_sweeps/<sweep>.json`, with the
commit and machine it ran on; a later run reads the records back and runs only the missing sweeps (resuming one that a
stopped session left under runs/ on the same machine), and `--partial` writes the page from the seeds whose two
sweeps are both recorded, without running any (issue 31's size figure from every recorded allocation sweep).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Any

from benchmarks.common import REPO, RESULTS, Figure, describe_machine, figures_table, format_table, measured_commit, write_result_and_page
from benchmarks.fashion_mnist import bench_workflow, retest_trials, run_sweep
from benchmarks.search_efficiency import hypervolume_2d
from lepton_ray import metrics
from lepton_ray.deploy.pareto import completed, select
from lepton_ray.config import WorkflowConfig
from lepton_ray.data.datasets import build_data
from lepton_ray.sweep.paths import sweep_paths
from lepton_ray.sweep.results import SweepOutcome, existing_sweep

NAME = "allocation_front"
SPACES = {"uniform": "search_spaces/fashion_mnist.yaml", "allocation": "search_spaces/fashion_mnist_allocation.yaml"}
DENSE_GZIP_BYTES = 24_581
"""The dense distilled FM student's int8 gzip bytes (`benchmarks/results/fashion_mnist.json: dense_kd_student_cost`): the box's cost edge."""
MATCH_POINTS = 0.3
BUDGET_BYTES = 10_800
"""Issue 31's size for a Fashion-MNIST student (int8 gzip bytes): each sweep's most accurate trial within it is shown."""
BUDGET_LADDER = (3_000, 4_000, 6_000, 8_000, BUDGET_BYTES, 16_000)
"""Sizes at which the page compares the spaces' most accurate students: where along the front allocation helps."""
ACCURACY, COST = metrics.SELECTION_ACCURACY, metrics.INT8_GZIP_BYTES
INT8_TEST = "int8_ort_test_accuracy"


def sweep_record(space: str, seed: int, trials: int, epochs: int | None, quick: bool) -> Path:
    """Where a finished sweep is kept: committed beside the results, a smoke run's under runs/ only."""
    tag = f"{space}-seed{seed}-n{trials}" + (f"-e{epochs}" if epochs else "")
    return REPO / "runs" / f"bench-{NAME}" / f"{tag}-quick" / "result.json" if quick else RESULTS / f"{NAME}_sweeps" / f"{tag}.json"


def one_sweep(space: str, seed: int, trials: int, epochs: int | None, quick: bool) -> dict[str, Any]:
    """One space's sweep for one sampler seed: read back when recorded, else run and recorded; in either case every
    trial's int8 file is re-tested on the test split while its trials are still on disk (`int8_retest`)."""
    kept = sweep_record(space, seed, trials, epochs, quick)
    result = json.loads(kept.read_text()) if kept.is_file() else None
    if result and all(INT8_TEST in p for p in result["points"]):
        return result
    folder = REPO / "runs" / f"bench-{NAME}" / (kept.parent.name if quick else kept.stem)
    extra = {"sweep.space": str(REPO / SPACES[space]), "sweep.seed": seed, "sweep.num_samples": trials, **({"training.epochs": epochs} if epochs else {})}
    if result and not folder.is_dir():
        return result  # recorded before the int8 retest, on a machine whose trials are gone: its table says "not measured"
    folder.mkdir(parents=True, exist_ok=True)
    wf, overrides = bench_workflow(folder, quick, None, extra)
    resumed = result is None and sweep_paths(wf, single=False).study.is_file()  # a session stopped mid-sweep on this machine
    seconds = run_sweep(overrides, resume=resumed) if result is None else None
    outcome, _ = existing_sweep(wf)
    if result is None:
        done = completed(outcome.trials, COST, wf.export.tolerance)
        champion = select(outcome.trials, COST, float("nan"), wf.selection, wf.export.tolerance)
        result = {"space": space, "seed": seed, "trials": trials, "epochs": wf.training.epochs, "seconds": seconds, "resumed": resumed,  # seconds: this run's part
                  "accuracy_floor": wf.sweep.accuracy_floor,
                  "commit": measured_commit(), "cpu_model": describe_machine()["cpu_model"],
                  "points": [{"trial": int(row["trial"]), ACCURACY: float(row[ACCURACY]), COST: float(row[COST]), metrics.TEST_ACCURACY: float(row[metrics.TEST_ACCURACY])}
                             for _, row in done.iterrows()],
                  "champion": {"trial": int(champion.trial), ACCURACY: float(champion.row[ACCURACY]), COST: float(champion.row[COST])}}
    result = int8_retest(result, wf, outcome, folder / "retest")
    kept.parent.mkdir(parents=True, exist_ok=True)
    kept.write_text(json.dumps(result, indent=1) + "\n")
    return result


def int8_retest(result: dict[str, Any], wf: WorkflowConfig, outcome: SweepOutcome, out: Path) -> dict[str, Any]:
    """Each point's int8 file, exported with the trial's own (per-layer) grids, in ONNX Runtime on the test split: what
    ships, as `fashion_mnist` re-tests its sweep. The cost stays the one the trial logged on its shipped file."""
    retested = {row["trial"]: row for row in retest_trials(wf, outcome.trials, build_data(wf.data), outcome.paths.trials, out)}
    points = [{**p, INT8_TEST: retested[p["trial"]]["int8_ort_test_accuracy"]} for p in result["points"]]
    return {**result, "points": points, "int8_retest_commit": measured_commit()}


def normalised_hypervolume(result: dict[str, Any]) -> float:
    floor = result["accuracy_floor"]
    area = hypervolume_2d([p[ACCURACY] for p in result["points"]], [p[COST] for p in result["points"]], (floor, DENSE_GZIP_BYTES))
    return area / ((1.0 - floor) * DENSE_GZIP_BYTES)


def within_budget(result: dict[str, Any], budget: float = BUDGET_BYTES) -> dict[str, Any] | None:
    """The trial with the best validation accuracy at most `budget` bytes (default: issue 31's size), or None."""
    fitting = [p for p in result["points"] if p[COST] <= budget]
    return max(fitting, key=lambda p: p[ACCURACY]) if fitting else None


def budget_ladder(sweeps: dict[str, dict[str, Any]]) -> str:
    """Each sweep's best int8 validation accuracy within each size of `BUDGET_LADDER`, and the allocation - uniform
    difference per seed where both are recorded: the hypervolume in one number hides where the fronts differ."""
    def best(sweep: dict[str, Any], budget: int) -> float:
        pick = within_budget(sweep, budget)
        return pick[ACCURACY] if pick else float("nan")

    def shown(points: float, sign: str = "") -> str:
        return "-" if math.isnan(points) else f"{points:{sign}.2f}"

    rows = [[key, *(shown(100 * best(sweep, budget)) for budget in BUDGET_LADDER)] for key, sweep in sweeps.items()]
    seeds = sorted({sweep["seed"] for sweep in sweeps.values()})
    rows += [[f"allocation - uniform, seed {seed} (pt)", *(shown(100 * (best(sweeps[f"allocation-seed{seed}"], b) - best(sweeps[f"uniform-seed{seed}"], b)), "+")
                                                         for b in BUDGET_LADDER)]
             for seed in seeds if f"uniform-seed{seed}" in sweeps and f"allocation-seed{seed}" in sweeps]
    return format_table(["best int8 val % within", *(f"{budget:,} B" for budget in BUDGET_LADDER)], rows)


def cheaper_at_champion(uniform: dict[str, Any], allocation: dict[str, Any]) -> float:
    """Uniform champion's gzip bytes / the cheapest allocated student within `MATCH_POINTS` of its validation accuracy (NaN: none)."""
    target = uniform["champion"][ACCURACY] - MATCH_POINTS / 100
    matching = [p[COST] for p in allocation["points"] if p[ACCURACY] >= target]
    return uniform["champion"][COST] / min(matching) if matching else float("nan")


def recorded_seeds(trials: int, seeds: list[int], epochs: int | None) -> list[int]:
    """The seeds whose sweeps in both spaces are already recorded."""
    return [seed for seed in seeds if all(sweep_record(space, seed, trials, epochs, False).is_file() for space in SPACES)]


def run(trials: int, seeds: list[int], epochs: int | None, quick: bool, budget_seeds: list[int] | None = None) -> dict[str, Any]:
    """`seeds`: both spaces' sweeps (the comparison); `budget_seeds` (default `seeds`): the allocation sweeps issue 31's
    size figure is taken over, which need no uniform sweep beside them."""
    budget_seeds = seeds if budget_seeds is None else budget_seeds
    sweeps = {f"{space}-seed{seed}": one_sweep(space, seed, trials, epochs, quick) for seed in seeds for space in SPACES}
    sweeps |= {f"allocation-seed{seed}": one_sweep("allocation", seed, trials, epochs, quick) for seed in budget_seeds if seed not in seeds}
    hv = {space: [normalised_hypervolume(sweeps[f"{space}-seed{seed}"]) for seed in seeds] for space in SPACES}
    ratios = [a / u if u else float("nan") for a, u in zip(hv["allocation"], hv["uniform"])]
    differences = [a - u for a, u in zip(hv["allocation"], hv["uniform"])]
    standard_error = statistics.stdev(differences) / len(differences) ** 0.5 if len(differences) > 1 else float("nan")
    return {"setting": {"trials": trials, "seeds": seeds, "epochs": epochs or "the workflow's", "spaces": SPACES, "dense_gzip_bytes": DENSE_GZIP_BYTES,
                        "match_points": MATCH_POINTS},
            "sweeps": sweeps, "hypervolume": hv, "hypervolume_ratio": statistics.mean(ratios),
            "hypervolume_difference": statistics.mean(differences), "hypervolume_difference_se": standard_error,
            "cheaper_at_uniform_champion": [cheaper_at_champion(sweeps[f"uniform-seed{s}"], sweeps[f"allocation-seed{s}"]) for s in seeds],
            "budget_pick_int8_test": {**budget_pick_test([sweeps[f"allocation-seed{s}"] for s in budget_seeds]), "seeds": budget_seeds}}


def budget_pick_test(sweeps: list[dict[str, Any]]) -> dict[str, float]:
    """Issue 31's size goal across sampler seeds: the int8 ORT test accuracy of each sweep's `within_budget` pick
    (NaN where a sweep has none, or was recorded before its trials were re-tested)."""
    tests = [pick.get(INT8_TEST, float("nan")) if (pick := within_budget(sweep)) else float("nan") for sweep in sweeps]
    return {"per_seed": tests, "mean": statistics.mean(tests), "sd": statistics.stdev(tests) if len(tests) > 1 else float("nan")}


def figures(payload: dict[str, Any]) -> list[Figure]:
    seeds = len(payload["setting"]["seeds"])
    budget_seeds = len(payload["budget_pick_int8_test"].get("seeds", payload["setting"]["seeds"]))
    return [
        Figure(NAME, f"allocation / uniform normalised hypervolume, mean of {seeds} sampler seed(s)", payload["hypervolume_ratio"], at_least=1.10),
        Figure(NAME, "allocation - uniform hypervolume / its standard error (goal: > 2)",
               payload["hypervolume_difference"] / payload["hypervolume_difference_se"] if payload["hypervolume_difference_se"] else float("nan"), at_least=2.0),
        Figure(NAME, f"uniform champion's gzip bytes / cheapest allocated student within {MATCH_POINTS} pt of its val accuracy, mean",
               statistics.mean(payload["cheaper_at_uniform_champion"]), at_least=1.3),
        Figure(NAME, f"most accurate allocated student within {BUDGET_BYTES:,} B on validation: int8 ORT test accuracy, mean of {budget_seeds} seed(s) (issue 31)",
               payload["budget_pick_int8_test"]["mean"], at_least=0.91),
    ]


def budget_line(pick: dict[str, Any]) -> str:
    """Issue 31's figure with its spread: one line under the figures table."""
    per_seed = ", ".join(f"{100 * value:.2f}%" for value in pick["per_seed"])
    spread = f" +- {100 * pick['sd']:.2f} pt (sd over seeds)" if len(pick["per_seed"]) > 1 else " (one seed: no spread)"
    return (f"Issue 31's size figure, per allocation sweep (sampler seeds {pick.get('seeds', 'as above')}): {per_seed}; "
            f"mean {100 * pick['mean']:.2f}%{spread}.")


def markdown(payload: dict[str, Any]) -> str:
    rows = []
    for key, sweep in payload["sweeps"].items():
        best = max(sweep["points"], key=lambda p: p[ACCURACY])
        within = within_budget(sweep)
        rows.append([key, sweep["epochs"], len(sweep["points"]), f"{normalised_hypervolume(sweep):.4f}", f"{100 * best[ACCURACY]:.2f}",
                     f"trial {sweep['champion']['trial']}: {100 * sweep['champion'][ACCURACY]:.2f}% at {sweep['champion'][COST]:,.0f} B",
                     f"trial {within['trial']}: {100 * within[ACCURACY]:.2f}% / {100 * within[metrics.TEST_ACCURACY]:.2f}% / "
                     + (f"{100 * within[INT8_TEST]:.2f}%" if INT8_TEST in within else "not measured") + f" at {within[COST]:,.0f} B" if within else "none",
                     f"{sweep['seconds']:.0f}" + (" (resumed: the last part)" if sweep.get("resumed") else ""), f"`{sweep.get('commit', 'not recorded')[:12]}`, {sweep.get('cpu_model', 'the page machine')}"])
    return "\n".join([
        "# Per-layer allocation against uniform compression, Fashion-MNIST (issue 33)", "",
        f"Measured at commit `{payload['commit']}`, {payload['measured_at']}{' (--quick smoke run)' if payload['quick'] else ''}: "
        f"{payload['setting']['trials']} trials per sweep, sampler seeds {payload['setting']['seeds']}, epochs: {payload['setting']['epochs']}.", "",
        figures_table(figures(payload)), "",
        budget_line(payload["budget_pick_int8_test"]), "",
        format_table(["sweep", "epochs", "finished trials", "normalised hypervolume", "best int8 val %", "champion (workflow policy)",
                      f"most accurate within {BUDGET_BYTES:,} B on validation: int8 val / test (PyTorch) / int8 ORT test", "sweep s", "measured at, on"], rows), "",
        "Where along the front the spaces differ: each sweep's most accurate student (int8 validation accuracy) within each size.", "",
        budget_ladder(payload["sweeps"]), "",
    ])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=3, help="sampler seeds 0..N-1, the same for both spaces")
    parser.add_argument("--epochs", type=int, default=None, help="shorter trials than the workflow's (a screen)")
    parser.add_argument("--quick", action="store_true", help="smoke run: the workflow's quick settings, 2 trials, 1 seed")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--partial", action="store_true", help="run nothing: the page from the seeds already recorded in both spaces")
    only.add_argument("--space", choices=list(SPACES), default=None,
                        help="run and record only this space's sweeps (one sweep is ~1.5 h on 2 cores); the page needs both: --partial after")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.trials < 1:
        parser.error("--seeds and --trials count sweeps and trials: give 1 or more")
    trials, seeds = (2, [0]) if args.quick else (args.trials, list(range(args.seeds)))
    if args.space:
        for seed in seeds:
            result = one_sweep(args.space, seed, trials, args.epochs, args.quick)
            print(f"{args.space}-seed{seed}: recorded at {sweep_record(args.space, seed, trials, args.epochs, args.quick)} "
                  f"(normalised hypervolume {normalised_hypervolume(result):.4f})")
        return {}
    budget_seeds = None
    if args.partial:
        budget_seeds = [seed for seed in seeds if sweep_record("allocation", seed, trials, args.epochs, False).is_file()]
        seeds = recorded_seeds(trials, seeds, args.epochs)
        if not seeds:
            raise SystemExit(f"{NAME} --partial: no seed has both sweeps recorded under {RESULTS.relative_to(REPO)}/{NAME}_sweeps/; run without --partial")
    return write_result_and_page(NAME, run(trials, seeds, args.epochs, args.quick, budget_seeds), args.quick, markdown, figures)


if __name__ == "__main__":
    main()
