"""sweep_scale: how the sweep driver's cost grows with the number of trials, on a multi-node Ray cluster.

    .venv/bin/python -m benchmarks.sweep_scale [--quick] [--plan tpe:25,100,400 random:25,100,400] [--keep DIR]
    .venv/bin/python -m benchmarks.sweep_scale --reads-only DIR     # leaderboard/select times on the kept sweeps

Tiny trials (synthetic 8x8 data, an MLP student of about 300 parameters, one epoch) run through the
real sweep path (`run_sweep`, as `lepton-ray sweep --no-export` and `lepton_ray.sweep` call it) on a
`ray.cluster_utils.Cluster` on this machine: a head without CPUs (the driver joins it) and worker
nodes with one logical CPU each. One trial at a time, so that the sweep wall minus the trials' own
`compute_s` is the driver's and Ray's time per trial, not overlap. Per size and searcher: that
per-trial driver time, the driver process's CPU seconds and peak RSS, MLflow writes per trial (count,
seconds), the sampler's ask time on the finished study, study / MLflow / run-folder bytes per trial;
on the largest sweep, `lepton-ray leaderboard` and `lepton-ray select` wall time (fresh processes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import MEASURED_KERNELS, QUICKSTART, Figure, measured_commit, result_path, write_result
from lepton_ray import metrics
from lepton_ray.cluster.local_nodes import local_nodes
from lepton_ray.config import apply_overrides, load_workflow

NAME = "sweep_scale"
WORKER_NODES = 3
SPACE = (
    "params:\n"
    "  training.lr: {type: float, low: 0.001, high: 0.1, log: true}\n"
    "  distillation.alpha: {type: float, low: 0.1, high: 0.9}\n"
    "  distillation.temperature: {type: float, low: 1.0, high: 8.0, log: true}\n"
)
TINY_TRIAL = {
    "data.name": "synthetic", "data.options": {"num_samples": 300, "image_size": 8},
    "teacher.name": "cnn_small", "teacher.options": {"channels": [4, 8]}, "teacher.train.epochs": 2,
    "student.name": "mlp", "student.options": {"hidden": [4]}, "training.optimizer": "sgd", "training.epochs": 1,
    "resources.num_workers": 1, "resources.cpus_per_worker": 1, "resources.max_concurrent_trials": 1,
    "export.calibration_samples": 64,
}


def workflow_file(folder: Path, trials: int, searcher: str) -> Path:
    """The quickstart made tiny, with its own storage, MLflow file and search space."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "space.yaml").write_text(SPACE)
    name = f"scale-{searcher}-{trials}"
    content = apply_overrides(yaml.safe_load(QUICKSTART.read_text()), {
        **MEASURED_KERNELS, **TINY_TRIAL, "name": name, "output_dir": str(folder / "runs"), "teacher.checkpoint": str(folder.parent / "teacher.pt"),
        "tracking.uri": f"sqlite:///{folder / 'mlflow.db'}", "tracking.experiment": name, "sweep.space": str(folder / "space.yaml"),
        "sweep.searcher": searcher, "sweep.num_samples": trials,
    })
    path = folder / "workflow.yaml"
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


class PeakRss:
    """Peak resident memory of this process over a block: the kernel's high-water mark, reset at the start."""

    def __enter__(self) -> "PeakRss":
        Path("/proc/self/clear_refs").write_text("5")
        return self

    def __exit__(self, *exc) -> None:
        status = Path("/proc/self/status").read_text().splitlines()
        self.bytes = 1024 * int(next(line.split()[1] for line in status if line.startswith("VmHWM")))


class CountedWrites:
    """Counts and times the MLflow writes the driver makes (every write goes through `WriteQueue.write`)."""

    def __enter__(self) -> "CountedWrites":
        from lepton_ray.tracking.write_queue import WriteQueue

        self.count, self.seconds, self.original = 0, 0.0, WriteQueue.write
        lock = threading.Lock()

        def timed(queue, *args, **kwargs):
            started = time.perf_counter()
            try:
                return self.original(queue, *args, **kwargs)
            finally:
                with lock:
                    self.count += 1
                    self.seconds += time.perf_counter() - started

        WriteQueue.write = timed
        return self

    def __exit__(self, *exc) -> None:
        from lepton_ray.tracking.write_queue import WriteQueue

        WriteQueue.write = self.original


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def ask_seconds(study_db: Path, wf, space, repeats: int = 3) -> float:
    """Median time of the sampler's next suggestion on a copy of the finished study (the cost at the last trial)."""
    import optuna

    from lepton_ray.sweep.samplers import make_sampler
    from lepton_ray.sweep.study import distribution

    copy = study_db.with_name("ask-copy.db")
    shutil.copy(study_db, copy)
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{copy}")
    study.sampler = make_sampler(wf.sweep, len(study.trials))
    distributions = {path: distribution(param) for path, param in space.params.items()}
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        study.ask(fixed_distributions=distributions)
        seconds.append(time.perf_counter() - started)
    copy.unlink()
    return statistics.median(seconds)


def command_seconds(*args: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lepton_ray.cli", *args], check=True, capture_output=True, text=True)
    return time.perf_counter() - started


BODY_TIMES = """
import json, sys, time
from contextlib import redirect_stdout
from io import StringIO
from lepton_ray.cli import main
import lepton_ray.sweep.results, lepton_ray.deploy.pareto, lepton_ray.deploy.leaderboard, mlflow.tracking  # imports paid before timing
seconds = {}
for command in ("leaderboard", "select"):
    started = time.perf_counter()
    with redirect_stdout(StringIO()):
        assert main([command, sys.argv[1]]) == 0
    seconds[command] = time.perf_counter() - started
print(json.dumps(seconds))
"""


def read_times(workflow: Path) -> dict[str, float]:
    """`lepton-ray leaderboard` / `select` as a user runs them (fresh processes), and their work once the imports
    (mlflow, pandas, optuna: a fixed cost whatever the sweep's size) are paid."""
    body = subprocess.run([sys.executable, "-c", BODY_TIMES, str(workflow)], check=True, capture_output=True, text=True).stdout.splitlines()[-1]
    after_imports = json.loads(body)
    return {
        "leaderboard_s": command_seconds("leaderboard", str(workflow)), "select_s": command_seconds("select", str(workflow)),
        "leaderboard_after_imports_s": after_imports["leaderboard"], "select_after_imports_s": after_imports["select"],
    }


def measure(folder: Path, address: str, trials: int, searcher: str, time_reads: bool) -> dict[str, Any]:
    import ray

    from lepton_ray.sweep.api import check_run
    from lepton_ray.sweep.runner import run_sweep
    from lepton_ray.tracking.tracker import PARENT_TAG, Tracker

    path = workflow_file(folder, trials, searcher)
    wf = load_workflow(path)
    space = check_run(wf, address, "address")
    cpu_before = time.process_time()
    with PeakRss() as rss, CountedWrites() as writes:
        started = time.perf_counter()
        outcome = run_sweep(wf, space, address=address, log=lambda _: None)
        wall = time.perf_counter() - started
    driver_cpu = time.process_time() - cpu_before
    ray.shutdown()
    finished = int((outcome.trials["status"] == "finished").sum())
    tracker = Tracker(wf.tracking.uri, wf.tracking.experiment)
    runs = tracker.client.search_runs([tracker.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{outcome.parent_run_id}'", max_results=10_000)
    compute = sum(run.data.metrics.get(metrics.COMPUTE_S, 0.0) for run in runs)
    result = {
        "searcher": searcher, "trials": trials, "finished": finished, "mlflow_runs": len(runs), "sweep_wall_s": wall, "trials_compute_sum_s": compute,
        "driver_s_per_trial": (wall - compute) / trials, "driver_cpu_s_per_trial": driver_cpu / trials, "driver_peak_rss_mib": rss.bytes / 2**20,
        "mlflow_writes_per_trial": writes.count / trials, "mlflow_write_s_per_trial": writes.seconds / trials,
        "ask_s_at_last_trial": ask_seconds(outcome.paths.study, wf, space),
        "study_bytes_per_trial": outcome.paths.study.stat().st_size / trials,
        "mlflow_db_bytes_per_trial": Path(wf.tracking.uri.removeprefix("sqlite:///")).stat().st_size / trials,
        "run_folder_bytes_per_trial": folder_bytes(outcome.paths.trials) / trials,
        "sweep_folder_bytes_per_trial": folder_bytes(outcome.paths.root) / trials,
    }
    if time_reads:
        result.update(read_times(path))
    print(f"{searcher} x{trials}: {finished}/{trials} finished, wall {wall:.0f}s, driver {result['driver_s_per_trial']:.2f}s/trial "
          f"(cpu {result['driver_cpu_s_per_trial']:.3f}s), {result['mlflow_writes_per_trial']:.1f} writes/trial, ask {result['ask_s_at_last_trial'] * 1e3:.1f}ms"
          + (f", leaderboard {result['leaderboard_s']:.1f}s, select {result['select_s']:.1f}s" if time_reads else ""), flush=True)
    return result


def parse_plan(specs: list[str]) -> list[tuple[str, list[int]]]:
    """["tpe:25,100,400", "random:25,100"] -> [("tpe", [25, 100, 400]), ("random", [25, 100])]."""
    plan = []
    for spec in specs:
        searcher, _, sizes = spec.partition(":")
        if not sizes or not all(size.isdigit() for size in sizes.split(",")):
            raise SystemExit(f"--plan: {spec!r} is not SEARCHER:SIZE,SIZE,... (e.g. tpe:25,100,400)")
        plan.append((searcher, sorted(int(size) for size in sizes.split(","))))
    return plan


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from lepton_ray.data.datasets import build_data
    from lepton_ray.trial.teacher import prepare_teachers

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="sizes 3 and 6, tpe only: a smoke run")
    parser.add_argument("--plan", nargs="+", default=["tpe:25,100,400", "random:25,100,400"], help="SEARCHER:SIZE,SIZE,... per searcher")
    parser.add_argument("--keep", type=Path, help="keep the sweeps (studies, MLflow files, run folders) in this folder")
    parser.add_argument("--reads-only", type=Path, metavar="KEPT", help="run no sweep: time leaderboard/select on every sweep a "
                        "--keep run left in KEPT and add the figures to the result file")
    parser.add_argument("--name", default=NAME, help="result file name (a side measurement must not replace the main one)")
    args = parser.parse_args(argv)
    if args.reads_only:
        return add_read_times(args.reads_only, args.quick)
    plan = parse_plan(["tpe:3,6"] if args.quick else args.plan)
    payload: dict[str, Any] = {
        "setup": f"ray.cluster_utils.Cluster on this machine: a head with 0 CPUs (the driver) and {WORKER_NODES} worker nodes x 1 logical CPU; "
        "one trial at a time (synthetic 8x8, MLP student [4] hidden, ~300 parameters, 1 epoch, int8 export and ORT latency included in "
        "compute_s); driver_s_per_trial = (run_sweep wall - sum of trials' compute_s) / trials; run with nice -n 19 beside other work",
        "plan": {searcher: sizes for searcher, sizes in plan}, "runs": [],
    }
    with local_nodes(WORKER_NODES) as cluster, tempfile.TemporaryDirectory(prefix="sweep-scale-") as scratch:
        folder = args.keep or Path(scratch)
        first = load_workflow(workflow_file(folder / "teacher", 1, plan[0][0]))
        prepare_teachers(first, build_data(first.data), log=lambda _: None)  # trained once, outside every timing
        for searcher, sizes in plan:
            for trials in sizes:
                payload["runs"].append(measure(folder / f"{searcher}-{trials}", cluster.address, trials, searcher, time_reads=trials == sizes[-1]))
                written = write_result(args.name, payload, args.quick)  # after each size: a cut-short run keeps what it measured
    return written


def add_read_times(kept: Path, quick: bool) -> dict[str, Any]:
    """Leaderboard/select times on each kept sweep, written into the existing result file with the commit they ran on."""
    path = result_path(NAME, quick)
    payload = json.loads(path.read_text())
    for run in payload["runs"]:
        workflow = kept / f"{run['searcher']}-{run['trials']}" / "workflow.yaml"
        if workflow.is_file():
            run.update(read_times(workflow))
            print(f"{run['searcher']} x{run['trials']}: leaderboard {run['leaderboard_s']:.1f}s ({run['leaderboard_after_imports_s']:.1f}s after imports), "
                  f"select {run['select_s']:.1f}s ({run['select_after_imports_s']:.1f}s after imports)", flush=True)
    payload["reads_measured"] = {"commit": measured_commit(), "at": time.strftime("%Y-%m-%d %H:%M:%S %z"), "load_average_1_5_15_min": [round(x, 2) for x in os.getloadavg()]}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return payload


def marginal_driver_s(smaller: dict[str, Any], larger: dict[str, Any]) -> float:
    """Driver time per added trial between two sweep sizes: the per-sweep fixed costs (joining Ray, MLflow, the
    teacher cache) cancel, so this is what one more trial costs at that scale."""
    def driver_s(run):
        return run["sweep_wall_s"] - run["trials_compute_sum_s"]

    return (driver_s(larger) - driver_s(smaller)) / (larger["trials"] - smaller["trials"])


def figures(payload: dict[str, Any]) -> list[Figure]:
    found = []
    for searcher in payload["plan"]:
        runs = sorted((run for run in payload["runs"] if run["searcher"] == searcher), key=lambda run: run["trials"])
        if len(runs) < 2 or "leaderboard_s" not in runs[-1]:
            continue  # cut short before this searcher's largest sweep
        smallest, largest = runs[0], runs[-1]
        found += [
            Figure(NAME, f"{searcher}: driver s/trial at {largest['trials']} / at {smallest['trials']} trials",
                   largest["driver_s_per_trial"] / smallest["driver_s_per_trial"], at_most=1.2),
            Figure(NAME, f"{searcher}: driver s/trial at {largest['trials']} trials", largest["driver_s_per_trial"]),
            Figure(NAME, f"{searcher}: marginal driver s/trial from {runs[-2]['trials']} to {largest['trials']} trials", marginal_driver_s(runs[-2], largest)),
            Figure(NAME, f"{searcher}: sampler ask (ms) after {largest['trials']} trials", 1e3 * largest["ask_s_at_last_trial"]),
            Figure(NAME, f"{searcher}: leaderboard on {largest['trials']} trials (s)", largest["leaderboard_s"], at_most=10.0),
            Figure(NAME, f"{searcher}: select on {largest['trials']} trials (s)", largest["select_s"], at_most=10.0),
        ]
    return found


if __name__ == "__main__":
    main()
