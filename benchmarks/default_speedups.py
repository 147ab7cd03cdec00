"""Do the speed-ups that issue 32 turned on by default cost accuracy? Fashion-MNIST, seeds, side by side.

    .venv/bin/python -m benchmarks.default_speedups [--configs dense,pick] [--seeds 3] [--quick]

Each (config, arm, seed) is one whole trial through the trial's own loop (`benchmarks.distill_gain.one_run`: two at a
time, one thread each, the teacher's outputs from the sweep's cache), on distill_gain's 10-epoch DIST recipe: `defaults`
is the workflow as it ships (channels_last weights, fused Adam, precision auto: bf16 on an AMX CPU), `before` turns them
off (fp32) as the defaults were before.
Both arms share seed, data order and initial weights, so the paired difference of their test accuracies is what the
kernels changed; it is set against the seed spread of each arm. Seconds per run (the whole trial, evaluation and
finish included) give the end-to-end speed-up; `plain_loop` has the per-epoch one. Finished runs are kept under
runs/bench-default_speedups/ and read back. Results: benchmarks/results/default_speedups.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.common import MEASURED_KERNELS, REPO, Figure, figures_table, format_table, write_page, write_result
from benchmarks.distill_gain import CONFIGS, run_overrides, one_run
from benchmarks.fashion_mnist import bench_workflow
from lepton_ray import metrics
from lepton_ray.data.datasets import build_data
from lepton_ray.trial.teacher import prepare_teachers
from lepton_ray.trial.trainer import sweep_teacher_cache

NAME = "default_speedups"
RECIPE = "dist"
"""distill_gain's DIST recipe, 10 epochs: long enough to separate the arms from noise, short enough for 3 seeds x 2 configs."""
ARMS: dict[str, dict[str, Any]] = {
    "defaults": {"training.channels_last": None, "training.fused_optimizer": True, "training.precision": "auto"},
    "before": MEASURED_KERNELS,
}


def run(configs: list[str], seeds: list[int], quick: bool, processes: int) -> dict[str, Any]:
    folder = REPO / "runs" / f"bench-{NAME}{'-quick' if quick else ''}"
    folder.mkdir(parents=True, exist_ok=True)
    wf = bench_workflow(folder, quick, None, run_overrides({}, RECIPE, "teacher", 0, quick))[0]
    data = build_data(wf.data)
    (teacher,) = prepare_teachers(wf, data)
    sweep_teacher_cache(wf, [teacher], data, folder)  # built once here, read by every worker
    runs: dict[str, dict[str, Any]] = {}
    with ProcessPoolExecutor(max_workers=processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {}
        for seed in seeds:
            for config in configs:
                for arm, knobs in ARMS.items():
                    key, out = f"{config}-{arm}-seed{seed}", folder / f"{config}-{arm}-seed{seed}.json"
                    if out.is_file():
                        runs[key] = json.loads(out.read_text())
                        continue
                    overrides = {**run_overrides(CONFIGS[config], RECIPE, "teacher", seed, quick), **knobs}
                    futures[key] = pool.submit(one_run, overrides, teacher, folder, quick, out)
        for key, future in futures.items():
            runs[key] = future.result()
            print(f"  {key}: test {runs[key][metrics.TEST_ACCURACY]:.4f} ({runs[key]['seconds']:.0f} s)", flush=True)
    return {"setting": {"workflow": "workflows/fashion_mnist.yaml", "recipe": RECIPE, "arms": ARMS, "configs": {c: CONFIGS[c] for c in configs},
                        "seeds": seeds, "processes": processes, "teacher_test_accuracy": teacher.test_accuracy},
            "runs": runs, "rows": {config: compare(runs, config, seeds) for config in configs}}


def compare(runs: dict[str, dict[str, Any]], config: str, seeds: list[int]) -> dict[str, Any]:
    """Both arms of one config: test accuracy per seed, the paired difference (points) and each arm's seed spread."""
    accuracy = {arm: [runs[f"{config}-{arm}-seed{s}"][metrics.TEST_ACCURACY] for s in seeds] for arm in ARMS}
    seconds = {arm: [runs[f"{config}-{arm}-seed{s}"]["seconds"] for s in seeds] for arm in ARMS}
    differences = [100 * (new - old) for new, old in zip(accuracy["defaults"], accuracy["before"])]
    spread = {arm: 100 * statistics.stdev(values) if len(values) > 1 else float("nan") for arm, values in accuracy.items()}
    return {
        "test_accuracy": accuracy, "seconds": seconds,
        "difference_points": statistics.mean(differences), "difference_sd_points": statistics.stdev(differences) if len(differences) > 1 else float("nan"),
        "seed_sd_points": spread, "pooled_seed_sd_points": (sum(value**2 for value in spread.values()) / len(spread)) ** 0.5,
        "seconds_ratio": statistics.mean(seconds["defaults"]) / statistics.mean(seconds["before"]),
    }


def figures(payload: dict[str, Any]) -> list[Figure]:
    """Per config: |defaults - before| within the pooled seed sd (the issue's "accuracy unchanged within the seed spread")."""
    out = []
    for config, row in payload["rows"].items():
        out.append(Figure(NAME, f"{config}: |defaults - before| test accuracy, mean of {len(payload['setting']['seeds'])} paired seeds (pt; goal: the pooled seed sd)",
                          abs(row["difference_points"]), at_most=round(row["pooled_seed_sd_points"], 3)))
        out.append(Figure(NAME, f"{config}: seconds per whole trial, defaults / before", row["seconds_ratio"]))
    return out


def markdown(payload: dict[str, Any]) -> str:
    rows = []
    for config, row in payload["rows"].items():
        accuracy = row["test_accuracy"]
        rows.append([config, *(f"{100 * statistics.mean(accuracy[arm]):.2f} +- {row['seed_sd_points'][arm]:.2f}" for arm in ARMS),
                     f"{row['difference_points']:+.2f} +- {row['difference_sd_points']:.2f}",
                     *(f"{statistics.mean(row['seconds'][arm]):.0f}" for arm in ARMS), f"{row['seconds_ratio']:.3f}"])
    return "\n".join([
        "# The default speed-ups against the defaults before them (issue 32)", "",
        f"Measured at commit `{payload['commit']}`, {payload['measured_at']}{' (--quick smoke run)' if payload['quick'] else ''}. "
        f"Fashion-MNIST, distill_gain's `{RECIPE}` recipe (10 epochs), seeds {payload['setting']['seeds']}, both arms of a seed from the same "
        "initial weights and data order. `defaults`: channels_last weights (unset: on for this conv student), fused Adam and "
        "`training.precision: auto` (bf16 autocast on a CPU with AMX tiles, as here); `before`: all off (fp32). Test accuracy in %, "
        "mean +- sd over seeds; difference: mean +- sd of the paired differences.", "",
        "Runs are kept and read back, so an arm may come from an earlier commit: " + "; ".join(
            f"{arm} at {', '.join(sorted({str(run.get('commit', '?'))[:7] for key, run in payload['runs'].items() if f'-{arm}-' in key}))}" for arm in ARMS)
        + ". Seconds of runs measured on different days saw different loads: the ratio is indicative; `plain_loop` times the epochs side by side.", "",
        format_table(["config", "defaults", "before", "defaults - before (pt)", "s per run, defaults", "s per run, before", "ratio"], rows), "",
        figures_table(figures(payload)), "",
        f"Configs: {json.dumps(payload['setting']['configs'])}.", "",
    ])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="dense,pick", help=f"comma-separated, of: {', '.join(CONFIGS)}")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds 0..N-1, the same for both arms")
    parser.add_argument("--processes", type=int, default=2, help="runs at a time, one thread each")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 epoch, the 1-epoch quick teacher")
    args = parser.parse_args(argv)
    configs = args.configs.split(",")
    if set(configs) - set(CONFIGS):
        parser.error(f"unknown config: {', '.join(sorted(set(configs) - set(CONFIGS)))}")
    payload = write_result(NAME, run(configs, list(range(args.seeds)), args.quick, args.processes), args.quick)
    write_page(NAME, markdown(payload), args.quick)
    print(figures_table(figures(payload)))
    return payload


if __name__ == "__main__":
    main()
