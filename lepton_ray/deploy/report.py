"""The selection report: a Pareto plot (PNG) and a short Markdown page, written to local files.

Pure file output; the caller logs the files to MLflow. Accuracies are fractions, shown as such.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from lepton_ray.deploy.pareto import ACCURACY, Selection, format_cost

if TYPE_CHECKING:
    from lepton_ray.export.int8 import Int8Checks, Int8Files
    from lepton_ray.deploy.publish import Published


def plot_pareto(trials: pd.DataFrame, cost_column: str, on_front: np.ndarray, selection: Selection, teacher_accuracy: float, path: Path) -> Path:
    """Accuracy against cost: all trials, the front as a step line, the pick ringed, the teacher as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    front = trials[on_front].sort_values(cost_column)
    figure, axes = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    axes.scatter(trials[cost_column], trials[ACCURACY], s=22, color="0.6", label="trials")
    axes.step(front[cost_column], front[ACCURACY], where="post", color="tab:blue", linewidth=1.2)
    axes.scatter(front[cost_column], front[ACCURACY], s=30, color="tab:blue", label="Pareto front", zorder=3)
    axes.scatter([selection.row[cost_column]], [selection.row[ACCURACY]], s=160, facecolors="none", edgecolors="tab:red",
                 linewidths=2, label=f"picked: trial {selection.trial}", zorder=4)
    if math.isfinite(teacher_accuracy):
        axes.axhline(teacher_accuracy, color="0.2", linestyle="--", linewidth=1, label=f"teacher {teacher_accuracy:.3f}")
    axes.set_xlabel(cost_column)
    axes.set_ylabel(ACCURACY)
    axes.set_title(f"{selection.policy}: {len(front)} of {len(trials)} trials on the front", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def leaderboard_markdown(trials: pd.DataFrame, cost_column: str, on_front: np.ndarray, selection: Selection) -> str:
    """Trials by accuracy (best first): a Markdown table with front membership and the pick."""
    table = trials.assign(on_front=on_front).sort_values([ACCURACY, cost_column], ascending=[False, True], kind="stable")
    lines = [f"| trial | {ACCURACY} | {cost_column} | on front | picked |", "|---:|---:|---:|:---:|:---:|"]
    for trial, accuracy, cost, front in table[["trial", ACCURACY, cost_column, "on_front"]].itertuples(index=False, name=None):
        picked = "**yes**" if trial == selection.trial else ""
        lines.append(f"| {trial} | {accuracy:.4f} | {format_cost(cost)} | {'yes' if front else ''} | {picked} |")
    return "\n".join(lines)


def export_markdown(files: "Int8Files", checks: "Int8Checks", published: "Published | None") -> str:
    """The export checks as a list: accuracies, verdict, sizes, latency ratios, where the model went."""
    verdict = "passed" if checks.passed else "FAILED"
    lines = [
        f"- accuracy: trial (fake-quant) {checks.trial_accuracy:.4f}, fp32 ONNX {checks.fp32_accuracy:.4f}, "
        f"int8 ONNX {checks.int8_accuracy:.4f}; drop {checks.drop_points:.2f} pt, tolerance {checks.tolerance_points} pt: **{verdict}**",
        f"- weights: {files.weight_bits if files.weight_bits <= 8 else 8}-bit grid, largest int8 code {files.max_weight_code}",
        f"- size: fp32 ONNX {checks.fp32_bytes:,} B, int8 ONNX {checks.int8_bytes:,} B ({checks.size_ratio:.2f}x)",
    ]
    for batch_size, latency in sorted(checks.latency_ms.items()):
        lines.append(
            f"- latency, batch {batch_size} (median, interleaved): fp32 {latency['fp32']:.3f} ms, int8 {latency['int8']:.3f} ms, "
            f"int8 speed-up {checks.speedup(batch_size):.2f}x"
        )
    if published is not None:
        lines.append(f"- published: model `{published.model_name}` version {published.version} (alias `champion`), {published.model_uri}")
    else:
        lines.append("- published: **no** (a check failed)")
    lines.append(f"- files: `{files.fp32.name}`, `{files.int8.name}`")
    return "\n".join(lines)


def write_report(
    path: Path, trials: pd.DataFrame, cost_column: str, on_front: np.ndarray, selection: Selection, teacher_accuracy: float,
    files: "Int8Files", checks: "Int8Checks", published: "Published | None",
) -> Path:
    teacher = f"{teacher_accuracy:.4f}" if math.isfinite(teacher_accuracy) else "unknown"
    text = "\n\n".join([
        "# Selection and int8 export",
        f"Policy `{selection.policy}` on {cost_column}: {selection.explanation}. Teacher test accuracy: {teacher}.",
        "![Pareto front](pareto.png)",
        "## Leaderboard",
        leaderboard_markdown(trials, cost_column, on_front, selection),
        "## Export checks",
        export_markdown(files, checks, published),
    ])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    return path
