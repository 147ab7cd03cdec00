"""What the benchmark scripts share: machine description, result files, headline figures, a table,
and one student trained in this process the way a trial's worker trains it.

Contract of a benchmark module, as `benchmarks.run_all` calls it:
  `main(argv: list[str] | None) -> dict`  runs it (`--quick` for a smoke run), writes its JSON with
                                          `write_result` and returns that payload;
  `figures(payload) -> list[Figure]`      the headline ratios of a payload and their goals.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import TensorDataset

from lepton_ray.data.batches import augment_view, iterate_batches, train_indices
from lepton_ray.config import WorkflowConfig, load_workflow
from lepton_ray.deploy.pareto import format_cost
from lepton_ray.data.datasets import DataSplits
from lepton_ray.trial.sessions import InProcessSession
from lepton_ray.distill.teacher_cache import TeacherCache
from lepton_ray.trial.epoch import Teachers, train_epoch
from lepton_ray.trial.loop import run_trial, set_up_student

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
QUICKSTART = REPO / "workflows" / "digits_quickstart.yaml"
CPU = torch.device("cpu")
VERSIONED = ("ray", "optuna", "onnxruntime", "onnx")
MEASURED_KERNELS = {"training.channels_last": False, "training.fused_optimizer": False, "training.precision": "fp32"}
"""The training kernels before issue 32 (contiguous weights, unfused optimizer, fp32), which the committed figures were
measured with: a benchmark that trains pins them so a rerun measures what its file says. A benchmark rerun on the
defaults drops the pin and says so in its page."""


# ---- machine and result files ----------------------------------------------------------------

def _proc_field(path: str, key: str) -> str:
    """First `key: value` of a /proc file, or "" where there is none (not Linux)."""
    file = Path(path)
    lines = file.read_text().splitlines() if file.is_file() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith(key)), "")


def describe_machine() -> dict[str, Any]:
    """CPU, cores, memory, GPU and library versions; the load average tells how busy the machine was."""
    flags = _proc_field("/proc/cpuinfo", "flags").split()
    memory_kib = _proc_field("/proc/meminfo", "MemTotal").removesuffix("kB").strip()
    return {
        "cpu_model": _proc_field("/proc/cpuinfo", "model name") or platform.processor(),
        "logical_cores": os.cpu_count(),
        "avx2": "avx2" in flags,
        "avx512_vnni": "avx512_vnni" in flags,
        "memory_gib": round(int(memory_kib) / 2**20, 1) if memory_kib else None,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch_threads": torch.get_num_threads(),
        "load_average_1_5_15_min": [round(load, 2) for load in os.getloadavg()],
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        **{package: metadata.version(package) for package in VERSIONED},
    }


def result_path(name: str, quick: bool) -> Path:
    """Smoke runs write `<name>.quick.json` (git-ignored) so they never replace a full run's file."""
    return RESULTS / f"{name}{'.quick' if quick else ''}.json"


def _checked_out_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=REPO).stdout.strip()

    commit = git("rev-parse", "HEAD") or "unknown"
    return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


_COMMIT_AT_START = _checked_out_commit()


def measured_commit() -> str:
    """The commit the figures were measured on, '+dirty' when the working tree had changes to tracked files.
    Read when the benchmark started: a run of an hour writes its file after commits made meanwhile."""
    return _COMMIT_AT_START


def write_result(name: str, payload: dict[str, Any], quick: bool) -> dict[str, Any]:
    """Write `results/<name>.json` with the commit, the machine description and the date; returns what was written."""
    full = {
        "benchmark": name, "quick": quick, "measured_at": time.strftime("%Y-%m-%d %H:%M:%S %z"), "commit": measured_commit(),
        "machine": describe_machine(), **payload,
    }
    path = result_path(name, quick)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(full, indent=2) + "\n")
    print(f"wrote {path.relative_to(REPO)}")
    return full


def write_page(name: str, text: str, quick: bool) -> Path:
    """Write `results/<name>.md` (`.quick.md` for a smoke run), the Markdown page beside the JSON."""
    page = RESULTS / f"{name}{'.quick' if quick else ''}.md"
    page.write_text(text)
    print(f"wrote {page.relative_to(REPO)}")
    return page


def write_result_and_page(name: str, payload: dict[str, Any], quick: bool, markdown: Callable[[dict[str, Any]], str],
                          figures: Callable[[dict[str, Any]], list["Figure"]]) -> dict[str, Any]:
    """A benchmark's whole output: its JSON, its Markdown page, its figures table on stdout; returns what was written."""
    written = write_result(name, payload, quick)
    write_page(name, markdown(written), quick)
    print(figures_table(figures(written)))
    return written


def describe_machine_line(machine: dict[str, Any]) -> str:
    gpu = f", GPU {machine['gpu']}" if machine.get("gpu") else ", no GPU"
    versions = ", ".join(f"{package} {machine[package]}" for package in ("torch", *VERSIONED) if package in machine)
    return (f"{machine['cpu_model']}, {machine['logical_cores']} logical cores, {machine.get('memory_gib')} GiB{gpu}; "
            f"load average {machine['load_average_1_5_15_min']}; {versions}")


# ---- figures and tables --------------------------------------------------------------------------

@dataclass(frozen=True)
class Figure:
    """One headline number of a benchmark and, where the issue sets one, its goal (at most / at least)."""

    benchmark: str
    name: str
    value: float
    at_most: float | None = None
    at_least: float | None = None

    @property
    def goal(self) -> str:
        if self.at_most is not None:
            return f"<= {format_cost(self.at_most)}"
        return f">= {format_cost(self.at_least)}" if self.at_least is not None else "-"

    @property
    def verdict(self) -> str:
        """"pass", "FAIL", or "-" for a figure without a goal; NaN never passes."""
        if self.at_most is None and self.at_least is None:
            return "-"
        within = (self.at_most is None or self.value <= self.at_most) and (self.at_least is None or self.value >= self.at_least)
        return "pass" if within and math.isfinite(self.value) else "FAIL"

    def row(self) -> list[str]:
        return [self.benchmark, self.name, format_cost(self.value), self.goal, self.verdict]


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    """A Markdown table with padded columns: readable on a terminal and in a README. A `|` inside a cell is escaped,
    or Markdown would split the cell there."""
    rows = [[str(cell).replace("|", "\\|") for cell in row] for row in rows]
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    lines = [headers, ["-" * width for width in widths], *rows]
    return "\n".join("| " + " | ".join(str(cell).ljust(width) for cell, width in zip(line, widths)) + " |" for line in lines)


def figures_table(figures: list[Figure]) -> str:
    return format_table(["benchmark", "figure", "value", "goal", "pass/fail"], [figure.row() for figure in figures])


# ---- a student trained in this process -----------------------------------------------------------

def first_training_images(data: DataSplits, count: int) -> DataSplits:
    """`data` with only its first `count` training images (shorter epochs for timing rounds)."""
    return replace(data, train=TensorDataset(*(tensor[:count] for tensor in data.train.tensors)))


def quickstart_workflow(overrides: dict[str, Any] | None = None) -> WorkflowConfig:
    """The quickstart workflow with its paths made absolute, so a benchmark runs from any folder."""
    paths = {"output_dir": str(REPO / "runs"), "teacher.checkpoint": str(REPO / "runs" / "teachers" / "digits_cnn_large.pt")}
    return load_workflow(QUICKSTART, {**paths, **(overrides or {})})


class StudentRun:
    """A student set up as a trial sets it up (`trial/loop.py: set_up_student`), on this process (world size 1,
    no Ray); then one epoch per call, for per-epoch timing."""

    def __init__(self, wf: WorkflowConfig, data: DataSplits, teachers: Teachers) -> None:
        self.wf, self.data, self.teachers = wf, data, teachers
        self.student, self.compression, self.objective, self.optimizer, self.precision = set_up_student(wf, data, teachers, lambda model: model, CPU)

    def train_epoch(self, epoch: int) -> float:
        """The epoch's compression hook, then one pass over the epoch's augmentation view; the mean loss."""
        self.compression.on_epoch_start(self.student, epoch)
        order = train_indices(len(self.data.train), epoch, self.wf.training.seed)
        view = augment_view(self.wf.data.augment, len(self.data.train), epoch, self.wf.data.seed)
        batches = iterate_batches(self.data.train, order, self.wf.training.batch_size, CPU, view)
        return train_epoch(self.student, self.teachers, self.objective, batches, self.optimizer, self.precision)


def train_student(
    wf: WorkflowConfig, data: DataSplits, teachers: list[torch.nn.Module], teacher_cache: TeacherCache | None = None, run_folder: Path | None = None,
) -> dict[str, float]:
    """A whole trial on this process through the trial's own loop (`run_trial` with an in-process session
    in a scratch folder, no Ray): its last report, i.e. the final metrics, or the diverged epoch's with `diverged: 1`.
    A `run_folder` is kept: its newest checkpoint holds the trial state and the finalized student."""
    return train_student_reports(wf, data, teachers, teacher_cache, run_folder)[-1]


def train_student_reports(
    wf: WorkflowConfig, data: DataSplits, teachers: list[torch.nn.Module], teacher_cache: TeacherCache | None = None, run_folder: Path | None = None,
) -> list[dict[str, float]]:
    """`train_student`'s every report, one per epoch (the learning curve a multi-fidelity scheduler would see)."""
    reports: list[dict[str, Any]] = []
    loop_config = {"workflow": wf.to_dict(), "teachers": teachers, "data": data, "teacher_cache": teacher_cache}
    with tempfile.TemporaryDirectory(prefix="lepton-bench-") as scratch:
        run_trial(loop_config, InProcessSession(Path(run_folder or scratch), reports.append, CPU))
    return [{name: float(value) for name, value in report.items() if isinstance(value, (int, float))} for report in reports]
