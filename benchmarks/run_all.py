"""Run every benchmark one after another, then print and write one table of their headline figures.

    .venv/bin/python -m benchmarks.run_all [--quick] [--only NAME ...] [--collect]    # or: make benchmarks

Each benchmark is a module of this package with `main(argv) -> dict` and `figures(payload)` (the
contract is in `benchmarks/common.py`); a module not written yet is skipped with a note. `--quick`
passes `--quick` to every benchmark (smoke runs, `*.quick.*` files). `--collect` runs nothing and
rebuilds the table from the result files already in benchmarks/results/. Writes
benchmarks/results/summary.json and benchmarks/results/README.md.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
import traceback
from dataclasses import asdict
from types import ModuleType
from typing import Any

from benchmarks.common import RESULTS, Figure, describe_machine, describe_machine_line, figures_table, result_path

BENCHMARKS = ["kd_overhead", "throughput_vs_peak", "plain_loop", "default_speedups", "search_grid", "search_efficiency", "multi_fidelity", "image_folder", "low_bit", "int8_speedup", "sweep_overhead", "ddp_fixed_cost", "concurrency_scaling", "worker_threads", "fashion_mnist", "distill_gain", "end_to_end", "sweep_scale", "text_kd", "sensitivity_profile", "allocation_front"]


def load_benchmark(name: str) -> ModuleType | None:
    """The benchmark's module, or None when it does not exist (an import error inside it still raises)."""
    try:
        return importlib.import_module(f"benchmarks.{name}")
    except ModuleNotFoundError as err:
        if err.name != f"benchmarks.{name}":
            raise
        return None


def run_benchmark(module: ModuleType, quick: bool) -> dict[str, Any]:
    """`main(argv)`; a `main()` without parameters is called as it is (it then runs at full settings)."""
    if inspect.signature(module.main).parameters:
        return module.main(["--quick"] if quick else [])
    return module.main()


def figures_of(name: str, module: ModuleType | None, payload: dict[str, Any]) -> list[Figure]:
    """The module's `figures(payload)`; without one, every top-level number of the payload, goal-less."""
    if module is not None and hasattr(module, "figures"):
        return module.figures(payload)
    print(f"note: benchmarks.{name} has no figures(payload); listing its top-level numbers without goals")
    return [Figure(name, key, float(value)) for key, value in payload.items() if isinstance(value, (int, float)) and not isinstance(value, bool)]


def why_skipped(name: str, module: ModuleType | None, run: bool, quick: bool) -> str | None:
    if run and module is None:
        return f"no module benchmarks/{name}.py yet"
    if not run and not result_path(name, quick).is_file():
        return f"no result file {result_path(name, quick).name}"
    return None


def collect(names: list[str], quick: bool, run: bool) -> tuple[list[Figure], dict[str, dict[str, Any]]]:
    """Run (or read the results of) each benchmark in turn; its figures, and a status entry per benchmark."""
    figures: list[Figure] = []
    status: dict[str, dict[str, Any]] = {}
    for name in names:
        module = load_benchmark(name)
        skipped = why_skipped(name, module, run, quick)
        if skipped:
            status[name] = {"status": "skipped", "note": skipped}
            print(f"== {name}: skipped ({skipped})", flush=True)
            continue
        print(f"== {name}", flush=True)
        try:
            payload = run_benchmark(module, quick) if run else json.loads(result_path(name, quick).read_text())
            figures += figures_of(name, module, payload)
        except Exception as err:  # one broken benchmark must not lose the others' results
            traceback.print_exc()
            status[name] = {"status": "error", "note": f"{type(err).__name__}: {err}"}
            print(f"== {name}: error ({status[name]['note']})", flush=True)
            continue
        status[name] = {"status": "ran" if run else "collected", "result_file": result_path(name, quick).name, "measured_at": payload.get("measured_at"),
                        "load_average_1_5_15_min": payload.get("machine", {}).get("load_average_1_5_15_min")}
    return figures, status


def status_lines(status: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    for name, entry in status.items():
        if "result_file" not in entry:
            lines.append(f"- `{name}`: {entry['status']} ({entry['note']})")
            continue
        measured = f", measured {entry['measured_at']}" if entry["measured_at"] else ""
        load = f", load average {entry['load_average_1_5_15_min']}" if entry["load_average_1_5_15_min"] else ""
        lines.append(f"- `{name}`: [{entry['result_file']}]({entry['result_file']}){measured}{load}")
    return lines


def write_summary(figures: list[Figure], status: dict[str, dict[str, Any]], quick: bool) -> None:
    machine = describe_machine()
    summary = {"quick": quick, "machine": machine, "benchmarks": status, "figures": [{**asdict(f), "goal": f.goal, "verdict": f.verdict} for f in figures]}
    suffix = ".quick" if quick else ""
    (RESULTS / f"summary{suffix}.json").write_text(json.dumps(summary, indent=2) + "\n")
    readme = [
        "# Benchmark results", "",
        "Written by `python -m benchmarks.run_all` (`make benchmarks`) from the JSON files in this folder, one per",
        "benchmark, each with the machine it ran on; each figure is a ratio measured side by side in one run.", "",
        f"Machine: {describe_machine_line(machine)} (each JSON file describes the machine it was measured on).", "",
        figures_table(figures), "",
        *status_lines(status), "",
    ]
    (RESULTS / f"README{suffix}.md").write_text("\n".join(readme))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run of every benchmark")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=BENCHMARKS, metavar="NAME", help=f"a subset of {BENCHMARKS}")
    parser.add_argument("--collect", action="store_true", help="run nothing; summarise the result files already written")
    args = parser.parse_args(argv)
    figures, status = collect(args.only, args.quick, run=not args.collect)
    write_summary(figures, status, args.quick)
    print(f"\nMachine: {describe_machine_line(describe_machine())}")
    print(figures_table(figures))
    print("\n".join(status_lines(status)))
    return 1 if any(entry["status"] == "error" for entry in status.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
