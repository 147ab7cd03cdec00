"""The selection report: a Pareto plot (PNG) and a short Markdown page, written to local files.

Pure file output; the caller logs the files to MLflow. Accuracies are fractions, shown as such.
Estimated figures (`metrics.ESTIMATES`) are labelled as such, and the page says how well the
estimated size ranked the trials by what their int8 files really cost (Spearman).
"""

from __future__ import annotations

import math
import textwrap
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import numpy as np
import pandas as pd

from lepton_ray import metrics
from lepton_ray.deploy.pareto import ACCURACY, Selection, completed, format_cost, noise_note
from lepton_ray.deploy.published import REGISTERED_FILE, Published
from lepton_ray.data.contract import LAYOUT, TOKEN_LAYOUT
from lepton_ray.deploy.leaderboard import OFF_FRONT_COLUMN, knob_columns
from lepton_ray.export.metadata import CLASS_NAMES_KEY, PREPROCESSING_KEY, describe, preprocessing

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from lepton_ray.deploy.kd_gain import DistillationGain
    from lepton_ray.export.int8 import Int8Checks, Int8Files, WeightBits


SELECTION_ARTIFACTS = "selection"
"""The sweep run's artifact folder for the report, its plot, the leaderboard and the distillation control."""
PARETO_FILE = "pareto.png"
REPORT_FILE = "report.md"
UNCHANGED_FILE_KNOBS = (
    "Knobs that change nothing in the shipped file: unstructured sparsity (`compression.pruning.sparsity`) and the bit-width "
    "(`compression.quantization.bits`: a b-bit grid is stored as int8) leave `int8_file_bytes` and int8 latency as they are "
    "and lower only `int8_gzip_bytes`; channel pruning, low-rank and the student's width change the file."
)
REPORTED_COLUMNS = (metrics.BEST_VAL_ACCURACY, metrics.TEST_ACCURACY, metrics.INT8_GZIP_BYTES, metrics.INT8_FILE_BYTES, metrics.LATENCY_MS, metrics.SIZE_BYTES)
"""Shown in the report's leaderboard next to the accuracy and the cost the front was drawn against (test accuracy
is shown, never ranked by)."""
ACCURACY_COLUMNS = (metrics.INT8_VAL_ACCURACY, metrics.BEST_VAL_ACCURACY, metrics.TEST_ACCURACY)


def label(metric: str) -> str:
    """A metric's name, marked when it is an estimate from the torch student rather than measured on the int8 file."""
    return f"{metric} (estimate)" if metric in metrics.ESTIMATES else metric


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation: Pearson's r of the ranks (ties get their average rank); NaN under 3 pairs or a constant side."""
    ranks_x = pd.Series(np.asarray(x, dtype=float)).rank().to_numpy()
    ranks_y = pd.Series(np.asarray(y, dtype=float)).rank().to_numpy()
    if len(ranks_x) < 3 or ranks_x.std() == 0 or ranks_y.std() == 0:
        return math.nan
    return float(np.corrcoef(ranks_x, ranks_y)[0, 1])


def cost_agreement_markdown(trials: pd.DataFrame) -> str:
    """How the estimate `size_bytes` ranks the finished trials against the bytes measured on their int8 files."""
    lines = []
    for measured in (metrics.INT8_GZIP_BYTES, metrics.INT8_FILE_BYTES):
        if {metrics.SIZE_BYTES, measured} <= set(trials.columns):
            pairs = trials[[metrics.SIZE_BYTES, measured]].astype(float).dropna()
            rho = spearman(pairs[metrics.SIZE_BYTES].to_numpy(), pairs[measured].to_numpy())
            figure = f"n/a ({_no_correlation_reason(pairs)})" if math.isnan(rho) else f"{rho:.3f}"
            lines.append(f"- Spearman rank correlation of `{metrics.SIZE_BYTES}` (estimate) with `{measured}` (measured): "
                         f"{figure} over {len(pairs)} finished trials")
    return "\n".join([*lines, f"- {UNCHANGED_FILE_KNOBS}"])


def _no_correlation_reason(pairs: pd.DataFrame) -> str:
    """Why `spearman` gave NaN on these pairs: too few, or a side with one value for every trial."""
    if len(pairs) < 3:
        return "fewer than 3 finished trials have both figures"
    same = [f"`{name}` is {format_cost(pairs[name].iloc[0])} B for every trial" for name in pairs.columns if pairs[name].nunique() == 1]
    return "; ".join(same) + ": no ranking to compare"


def pareto_figure(trials: pd.DataFrame, cost_column: str, on_front: np.ndarray, selection: Selection, teacher_accuracy: float) -> "Figure":
    """Accuracy against cost: the front as a line through its own points only (each labelled with its trial number),
    dominated trials as separate markers, the pick ringed, the teacher as a dashed line; the title gives the
    selection's own reason, so it says "knee" only when a knee decided."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    front = trials[on_front].sort_values([cost_column, ACCURACY])
    dominated = trials[~np.asarray(on_front, dtype=bool)]
    figure = Figure(figsize=(6.4, 4.6), dpi=120)
    axes = figure.subplots()
    # Straight segments between consecutive front points: a point inside one would dominate neither end nor be
    # dominated, so it would be on the front itself. A step line's corners pass through dominated points.
    axes.plot(front[cost_column], front[ACCURACY], color="tab:blue", linewidth=1.2, marker="o", markersize=5, label="Pareto front", zorder=3)
    axes.scatter(dominated[cost_column], dominated[ACCURACY], s=22, marker="x", color="0.55", label="dominated", zorder=2)
    for row in front.to_dict("records"):
        axes.annotate(str(row["trial"]), (row[cost_column], row[ACCURACY]), xytext=(4, 4), textcoords="offset points", fontsize=7, color="tab:blue")
    axes.scatter([selection.row[cost_column]], [selection.row[ACCURACY]], s=160, facecolors="none", edgecolors="tab:red",
                 linewidths=2, label=f"picked: trial {selection.trial}", zorder=4)
    if math.isfinite(teacher_accuracy):
        axes.axhline(teacher_accuracy, color="0.2", linestyle="--", linewidth=1, label=f"teacher {teacher_accuracy:.3f} (validation)")
    axes.set_xlabel(label(cost_column) if cost_column in metrics.ESTIMATES else f"{cost_column} (measured on the int8 file)")
    axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: format_cost(value)))  # 14,270 as in the tables, not 1.427e+04
    axes.set_ylabel(f"{ACCURACY} (validation)")
    axes.set_title(textwrap.fill(f"{len(front)} of {len(trials)} trials on the front; picked trial {selection.trial}: {selection.reason}", 80), fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    return figure


def plot_pareto(trials: pd.DataFrame, cost_column: str, on_front: np.ndarray, selection: Selection, teacher_accuracy: float, path: Path) -> Path:
    """`pareto_figure` saved as a PNG at `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pareto_figure(trials, cost_column, on_front, selection, teacher_accuracy).savefig(path)
    return path


def leaderboard_markdown(trials: pd.DataFrame, cost_column: str, on_front: np.ndarray, selection: Selection) -> str:
    """Trials by accuracy (best first): a Markdown table with the int8 file's figures, front membership and the pick."""
    table = trials.assign(on_front=on_front).sort_values([ACCURACY, cost_column], ascending=[False, True], kind="stable")
    extra = [name for name in REPORTED_COLUMNS if name in table.columns and name != cost_column]
    headers = [ACCURACY, label(cost_column), *map(label, extra)]
    lines = [f"| trial | {' | '.join(headers)} | on front | picked |", "|---:|" + "---:|" * len(headers) + ":---:|:---:|"]
    for row in table.to_dict("records"):
        picked = "**yes**" if row["trial"] == selection.trial else ""
        values = [f"{row[ACCURACY]:.4f}", *(_cell(name, row[name]) for name in [cost_column, *extra])]
        lines.append(f"| {row['trial']} | {' | '.join(values)} | {'yes' if row['on_front'] else ''} | {picked} |")
    return "\n".join(lines)


def write_leaderboard_csv(path: Path, trials: pd.DataFrame, cost_column: str, selection: Selection) -> Path:
    """Every trial of the sweep, most accurate first, as a CSV the MLflow UI shows as a table: the figures the report
    shows, the searched knobs, front membership (and why not), the pick, status, error and run id."""
    table = trials.assign(picked=trials["trial"] == selection.trial)
    table = table.sort_values([ACCURACY, cost_column, "trial"], ascending=[False, True, True], na_position="last", kind="stable")
    figures = [ACCURACY, *(name for name in REPORTED_COLUMNS if name != cost_column), cost_column]
    order = ["trial", "status", *dict.fromkeys(figures), *knob_columns(trials), "on_front", OFF_FRONT_COLUMN, "picked", "error", "run_id"]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table[[name for name in order if name in table.columns]].to_csv(path, index=False)
    return path


def _cell(metric: str, value: float) -> str:
    if value is None or not math.isfinite(float(value)):
        return ""
    return f"{value:.4f}" if metric in ACCURACY_COLUMNS else format_cost(float(value))


LISTED_LAYERS = 6
"""Layers a per-layer weight line names before it stops with '...': the line stays short."""


def weight_grids(weight_bits: "WeightBits") -> str:
    """The int8 file's weight grid in a few words: '4-bit grid', or 'per-layer grids (2-7 bits: features.0 7, ...)'."""
    if not isinstance(weight_bits, Mapping):
        return f"{min(weight_bits, 8)}-bit grid"
    if not weight_bits:
        return "per-layer grids (none: every layer float, rounded to 7 bits)"
    widths = sorted(set(weight_bits.values()))
    span = f"{widths[0]}-{widths[-1]}" if len(widths) > 1 else f"{widths[0]}"
    layers = [f"{layer} {bits}" for layer, bits in weight_bits.items()]
    listed = ", ".join(layers[:LISTED_LAYERS]) + (", ..." if len(layers) > LISTED_LAYERS else "")
    return f"per-layer grids ({span} bits: {listed})"


def export_markdown(files: "Int8Files", checks: "Int8Checks", published: "Published | None") -> str:
    """The export checks as a list: accuracies, verdict, sizes, latency ratios, where the model went."""
    verdict = "passed" if checks.passed else "FAILED"
    lines = [
        f"- validation accuracy: trial (fake-quant) {checks.trial_accuracy:.4f}, fp32 ONNX {checks.fp32_accuracy:.4f}, "
        f"int8 ONNX {checks.int8_accuracy:.4f}; drop {checks.drop_points:.2f} pt, tolerance {checks.tolerance_points} pt: **{verdict}**",
        f"- test accuracy of the int8 ONNX file: {checks.int8_test_accuracy:.4f} (the estimate of what ships; measured once, compared with nothing)",
        f"- weights: {weight_grids(files.weight_bits)}, largest int8 code {files.max_weight_code}",
        f"- size: fp32 ONNX {format_cost(checks.fp32_bytes)} B, int8 ONNX {format_cost(checks.int8_bytes)} B ({checks.size_ratio:.2f}x)",
    ]
    for batch_size, latency in sorted(checks.latency_ms.items()):
        lines.append(
            f"- latency, batch {batch_size} (median, interleaved): fp32 {latency['fp32']:.3f} ms, int8 {latency['int8']:.3f} ms, "
            f"int8 speed-up {checks.speedup(batch_size):.2f}x"
        )
    if published is not None:
        lines.append(f"- published: model `{published.model_name}` version {published.version} (alias `champion`), {published.model_uri}; "
                     f"its file is `{REGISTERED_FILE}`, the export folder's `{files.int8.name}` as MLflow's ONNX flavour stores it")
    else:
        lines.append("- published: **no** (a check failed)")
    lines.append("- files in the export folder: " + ", ".join(f"`{path.name}`" for path in (files.fp32, files.int8, *files.shipped_with)))
    return "\n".join(lines)


def usage_code(file_name: str, layout: str = LAYOUT) -> str:
    """onnxruntime code that runs either shipped file on `raw` (images) or `texts` from the file's own metadata alone."""
    return _USAGE_CODE[layout](file_name)


def _image_usage_code(file_name: str) -> str:
    return f"""\
import json
import numpy as np
import onnxruntime as ort

# raw: an (N, C, H, W) array in raw units, as prep["raw"] describes them
session = ort.InferenceSession("{file_name}", providers=["CPUExecutionProvider"])
meta = session.get_modelmeta().custom_metadata_map
prep, class_names = json.loads(meta["{PREPROCESSING_KEY}"]), json.loads(meta["{CLASS_NAMES_KEY}"])
channel = (1, -1, 1, 1)  # per-channel mean/std broadcast over N, H, W
x = (np.asarray(raw, np.float32) * np.float32(prep["scale"]) - np.float32(prep["mean"]).reshape(channel)) / np.float32(prep["std"]).reshape(channel)
logits = session.run([prep["output_name"]], {{prep["input_name"]: x}})[0]
predicted = [class_names[i] for i in logits.argmax(axis=1)]
"""


def _token_usage_code(file_name: str) -> str:
    return f"""\
import json
import re
import numpy as np
import onnxruntime as ort

# texts: a list of strings
session = ort.InferenceSession("{file_name}", providers=["CPUExecutionProvider"])
meta = session.get_modelmeta().custom_metadata_map
prep, class_names = json.loads(meta["{PREPROCESSING_KEY}"]), json.loads(meta["{CLASS_NAMES_KEY}"])
vocab = prep["vocabulary"]
word_ids = {{word: vocab["first_word_id"] + i for i, word in enumerate(vocab["words"])}}
def encode(text):
    ids = [word_ids.get(word, vocab["unknown_id"]) for word in re.findall(vocab["pattern"], text.lower())][: vocab["max_length"]]
    return ids + [vocab["pad_id"]] * (vocab["max_length"] - len(ids))
x = np.array([encode(text) for text in texts], dtype=np.int64).reshape(-1, vocab["max_length"])
logits = session.run([prep["output_name"]], {{prep["input_name"]: x}})[0]
predicted = [class_names[i] for i in logits.argmax(axis=1)]
"""


_USAGE_CODE = {LAYOUT: _image_usage_code, TOKEN_LAYOUT: _token_usage_code}


def usage_markdown(metadata: "Mapping[str, str]", file_name: str) -> str:
    """How to call the model: its input contract in one line and the onnxruntime code that applies it."""
    if PREPROCESSING_KEY not in metadata:
        return "- the files carry no input contract (exported without one): feed them as the trial's tensors were made"
    return f"{describe(metadata)}\n\n```python\n{usage_code(file_name, preprocessing(metadata)['layout'])}```"


def pareto_image_markdown(run_id: str | None) -> str:
    """The plot as the MLflow UI renders it: its markdown viewer leaves a relative link as it is, so the browser would
    ask the server root for a bare `pareto.png`; `get-artifact` (relative to the UI's root) serves the run's artifact."""
    local = f"The plot is `{PARETO_FILE}`, next to this page (the sweep run's `{SELECTION_ARTIFACTS}/` artifacts)."
    if run_id is None:
        return local
    query = urllib.parse.urlencode({"path": f"{SELECTION_ARTIFACTS}/{PARETO_FILE}", "run_uuid": run_id})
    return f"![Pareto front](get-artifact?{query})\n\n{local}"


def write_report(
    path: Path, trials: pd.DataFrame, cost_column: str, on_front: np.ndarray, selection: Selection, teacher_accuracy: float,
    files: "Int8Files", checks: "Int8Checks", published: "Published | None", sweep_trials: pd.DataFrame | None = None,
    gain: "DistillationGain | None" = None, test_samples: int | None = None, run_id: str | None = None,
) -> Path:
    """The page: pick, plot, leaderboard of the candidate `trials`, what distillation bought (`gain`), estimate against
    measured cost over `sweep_trials` (all of the sweep's trials; default: the candidates), export checks. `run_id`: the
    sweep run the page and its plot are logged to (under `selection/`), so that the plot renders in MLflow."""
    sweep_trials = trials if sweep_trials is None else sweep_trials
    teacher = f"{teacher_accuracy:.4f}" if math.isfinite(teacher_accuracy) else "unknown"
    shipped = f"{checks.int8_test_accuracy:.4f} ({noise_note(checks.int8_test_accuracy, test_samples, 'test')})"
    left_off = len(completed(sweep_trials, cost_column)) - len(trials)
    held = f" {left_off} finished trial(s) left off the front: their int8 file lost more than `export.tolerance` on the validation split." if left_off else ""
    model_file = REGISTERED_FILE if published is not None else files.int8.name
    where = (f"`{model_file}` of `{published.model_uri}` (the same code runs the export folder's `{files.int8.name}`)" if published is not None
             else f"`{model_file}` in the export folder (nothing was registered)")
    text = "\n\n".join([
        "# Selection and int8 export",
        f"Policy `{selection.policy}` on {label(cost_column)}: {selection.explanation}. Teacher validation accuracy: {teacher}.{held}",
        f"Chosen on validation only: the front and the pick rank by `{ACCURACY}`, the int8 file's accuracy on the validation split. "
        f"Estimate of what ships: the exported int8 file's test accuracy, {shipped}; no decision read the test split.",
        pareto_image_markdown(run_id),
        "## What distillation bought",
        gain.markdown() if gain is not None else "- not measured: `selection.distillation_control.enabled` is off",
        "## Leaderboard",
        leaderboard_markdown(trials, cost_column, on_front, selection),
        f"`{metrics.TEST_ACCURACY}` is measured for every trial and shown; nothing is ranked by it.",
        "## Estimated and measured cost",
        cost_agreement_markdown(sweep_trials),
        "## Export checks",
        export_markdown(files, checks, published),
        "## How to call the model",
        f"For {where}:",
        usage_markdown(files.metadata, model_file),
    ])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    return path
