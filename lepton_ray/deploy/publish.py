"""Publishing: load the picked trial's student from its checkpoint, export it to int8
(`export/int8.py`), verify it, register it in MLflow as `champion`, and write the report.

Kept apart from the export (which works on any module) so the export stays free of run folders and MLflow.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from lepton_ray import metrics
from lepton_ray.checkpoints import load_safe
from lepton_ray.config import WorkflowConfig, parse_workflow
from lepton_ray.deploy.kd_gain import DistillationGain
from lepton_ray.deploy.pareto import ACCURACY, Selection, chosen_trial, completed, noise_note, pareto_front, select
from lepton_ray.data.contract import LAYOUT, TOKEN_LAYOUT, TOKENIZER_FILE, DataContract, TokenContract
from lepton_ray.deploy.published import REGISTERED_FILE, Published
from lepton_ray.deploy.report import (
    PARETO_FILE, REPORT_FILE, SELECTION_ARTIFACTS, plot_pareto, usage_markdown, write_leaderboard_csv, write_report,
)
from lepton_ray.deploy.review import knobs, mark_champion, trial_run_id
from lepton_ray.errors import CheckpointError
from lepton_ray.export.int8 import Int8Checks, Int8Files, WeightBits, calibration_images, export_int8, measure_int8, verify_int8
from lepton_ray.export.metadata import DATASET_KEY, LAYOUT_KEY, SWEEP_RUN_KEY, TRIAL_KEY, WORKFLOW_KEY, artifact_metadata
from lepton_ray.export.runtime import dataset_images, ort_session
from lepton_ray.export.onnx_graph import INPUT_NAME, OUTPUT_NAME
from lepton_ray.trial.files import STUDENT_FILE, load_student, newest_student_file, trial_run_name

if TYPE_CHECKING:
    import pandas as pd

    from lepton_ray.data.datasets import DataSplits
    from lepton_ray.tracking.tracker import Tracker


CHAMPION_ALIAS = "champion"
RAW_EXAMPLE_FILE = "raw_input_example.json"
"""Shipped with the MLflow model: one test image in raw units, its label and what the int8 file predicts for it."""
FRONT_TAG = "lepton.pareto_front"
"""Tag on each trial run of a published sweep: whether it is on the Pareto front."""
PER_LAYER_BITS_KEY = "weight_bits"
"""Key of a student payload trained with per-layer bits: layer name -> weight bits (absent when one width served all)."""


def student_file(trials_root: Path, trial: int) -> Path:
    """The shipped student of a finished trial, or a clear error when it never finished."""

    path = newest_student_file(Path(trials_root) / trial_run_name(trial))
    if path is None:
        raise CheckpointError(f"trial {trial}: no {STUDENT_FILE} under {trials_root}; the trial did not finish, pick another or --resume the sweep")
    return path


def student_loader(trials_root: Path) -> Callable[[dict[str, Any]], tuple[nn.Module, dict[str, Any]]]:
    """Rebuild a trial's student with that trial's own workflow (its compression decides the structure), with its
    metrics and, for a per-layer-bits student, its `PER_LAYER_BITS_KEY` map."""

    def load(row: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
        path = student_file(trials_root, int(row["trial"]))
        payload = load_safe(path, f"trial {row['trial']} student")
        per_layer = {PER_LAYER_BITS_KEY: payload[PER_LAYER_BITS_KEY]} if PER_LAYER_BITS_KEY in payload else {}
        return load_student(parse_workflow(payload["workflow"]), payload), {**payload.get("metrics", {}), **per_layer}

    return load


def write_raw_example(contract: DataContract | TokenContract, example: np.ndarray, label: int, predicted: int, path: Path) -> Path:
    """One model-ready test sample back in raw units (a text: its words as the vocabulary knows them), with its label
    and the int8 file's prediction, as JSON."""
    names = contract.class_names
    content = {
        "raw": contract.raw_example(example), "label": names[label], "predicted": names[predicted],
        "note": "raw units; apply the formula in the model's lepton.preprocessing metadata before calling it",
    }
    path.write_text(json.dumps(content) + "\n")
    return path


def model_description(files: Int8Files) -> str:
    """The registered version's description: provenance, then how to call it from its metadata alone."""
    source = ", ".join(f"{key.removeprefix('lepton.')} `{files.metadata[key]}`" for key in (WORKFLOW_KEY, DATASET_KEY, TRIAL_KEY, SWEEP_RUN_KEY) if key in files.metadata)
    return "\n\n".join([
        f"int8 ONNX student ({source}). {_INPUT_NOTES[files.metadata.get(LAYOUT_KEY, LAYOUT)]}",
        usage_markdown(files.metadata, REGISTERED_FILE),
        f"Through MLflow (`mlflow.pyfunc.load_model`), pass a dict naming the input tensor: `predict({{\"{INPUT_NAME}\": batch}})` returns "
        f"`{{\"{OUTPUT_NAME}\": ...}}`. The logged input example is one test sample already preprocessed; `extra_files/{RAW_EXAMPLE_FILE}` (in the model's artifacts) holds it in raw units with its label and this model's prediction.",
    ])


_INPUT_NOTES = {
    LAYOUT: "It takes preprocessed float32 input, not raw pixels.",
    TOKEN_LAYOUT: f"It takes int64 token ids, not raw text: the tokenizer is the `vocabulary` in its metadata, also shipped as `extra_files/{TOKENIZER_FILE}`.",
}


def publish(
    files: Int8Files, example: torch.Tensor, label: int, contract: DataContract | TokenContract, tracker: "Tracker", run_id: str, model_name: str,
    tags: dict[str, str], notes: tuple[str, ...] = (), params: dict[str, Any] | None = None,
) -> Published:
    """Log the int8 model to `run_id` (a signature naming the file's input and output tensors, a model-ready input
    example, the raw example file, `params`: the knobs it was trained with, shown on the logged model), register it
    with a description (`notes` first: how it was chosen, what distillation bought) and `tags` plus the file's
    metadata (its contract) as tags, alias the new version `champion`.

    Call only after `verify_int8` passed.
    """
    import mlflow
    import mlflow.onnx
    from mlflow.models import infer_signature

    # log_model files the logged model under the *active* experiment (Default if none), not the run's.
    mlflow.set_experiment(experiment_id=tracker.experiment_id)
    example = contract.model_input.cast(example[:1]).cpu().numpy()
    output = ort_session(files.int8).run([OUTPUT_NAME], {INPUT_NAME: example})[0]
    raw_example = write_raw_example(contract, example, label, int(output.argmax()), files.int8.parent / RAW_EXAMPLE_FILE)
    info = mlflow.onnx.log_model(
        onnx.load(str(files.int8)), name="int8_model", signature=infer_signature({INPUT_NAME: example}, {OUTPUT_NAME: output}),
        input_example={INPUT_NAME: example},
        registered_model_name=model_name, run_id=run_id, params=params, save_as_external_data=False, onnx_execution_providers=["CPUExecutionProvider"],
        pip_requirements=[f"onnx=={onnx.__version__}", f"onnxruntime=={ort.__version__}"],  # inferring them spawns a 10 s subprocess
        extra_files=[str(raw_example), *(str(path) for path in files.shipped_with)],
    )
    version = str(info.registered_model_version)
    for key, value in {**files.metadata, **tags}.items():
        tracker.client.set_model_version_tag(model_name, version, key, value)
    tracker.client.update_model_version(model_name, version, description="\n\n".join([*notes, model_description(files)]))
    tracker.client.set_registered_model_alias(model_name, CHAMPION_ALIAS, version)
    return Published(model_name, version, f"models:/{model_name}/{version}")


StudentLoader = Callable[[dict[str, Any]], tuple[nn.Module, dict[str, Any]]]


@dataclass(frozen=True)
class ExportResult:
    selection: Selection
    files: Int8Files
    checks: Int8Checks
    published: Published
    plot: Path
    report: Path
    gain: DistillationGain | None = None
    """What distillation bought for the pick (`selection.distillation_control`); None when the control is off."""


GAIN_FILE = "distillation_control.json"
LEADERBOARD_FILE = "leaderboard.csv"


def select_and_export(
    wf: WorkflowConfig, trials: "pd.DataFrame", teacher_accuracy: float, load_student: StudentLoader,
    data: "DataSplits", tracker: "Tracker", parent_run_id: str, out_dir: Path,
    measure_gain: Callable[[Selection], DistillationGain] | None = None, trial: int | None = None,
) -> ExportResult:
    """Select a trial by the workflow's policy (on validation; `teacher_accuracy` is the teacher's validation accuracy),
    measure what distillation bought for it (`measure_gain`, the labels-only control), export it to int8, verify it
    on validation, measure its test accuracy (the estimate of what ships), publish it; report either way.

    `trial` replaces the policy's pick with that trial (`export --trial N`).
    Raises SelectionError (no trial qualifies) or ExportError (a check failed: nothing published,
    the report still says why). See the module docstring for the export route.
    """
    cost_column = wf.sweep.cost_metric
    selection = (select(trials, cost_column, teacher_accuracy, wf.selection, wf.export.tolerance, len(data.val)) if trial is None
                 else chosen_trial(trials, trial, cost_column, len(data.val)))
    candidates = completed(trials, cost_column, wf.export.tolerance)
    on_front = pareto_front(candidates[ACCURACY].to_numpy(), candidates[cost_column].to_numpy())
    _tag_trials(tracker, parent_run_id, candidates, on_front, selection)
    out_dir = Path(out_dir)
    plot = plot_pareto(candidates, cost_column, on_front, selection, teacher_accuracy, out_dir / PARETO_FILE)
    leaderboard = write_leaderboard_csv(out_dir / LEADERBOARD_FILE, trials, cost_column, selection)
    tracker.log_artifacts(parent_run_id, [plot, leaderboard], SELECTION_ARTIFACTS)
    gain = measure_gain(selection) if measure_gain is not None else None
    if gain is not None:
        tracker.log_metrics(parent_run_id, gain.as_metrics())
        gain_file = out_dir / GAIN_FILE
        gain_file.write_text(json.dumps(asdict(gain), indent=2) + "\n")
        tracker.log_artifacts(parent_run_id, [gain_file], SELECTION_ARTIFACTS)

    student, student_metrics = load_student(selection.row)
    weight_bits = export_weight_bits(student_metrics)
    metadata = artifact_metadata(data.contract, wf.name, selection.trial, parent_run_id)
    images = calibration_images(data.train, wf.export.calibration_samples, wf.data.seed)
    files = export_int8(student, data.model_input, images, weight_bits, out_dir, metadata)
    files = replace(files, shipped_with=tuple(data.contract.write_shipped_files(out_dir)))
    checks = measure_int8(files, data.val, data.test, data.model_input, selection.row[metrics.BEST_VAL_ACCURACY], wf.export)
    tracker.log_metrics(parent_run_id, checks.as_metrics())
    published = None
    try:
        verify_int8(checks)
        tags = {"lepton.selection": selection.explanation}  # trial and sweep run id come with the file's metadata
        example, label = dataset_images(data.test, [0])
        notes = (shipped_estimate(selection, checks, len(data.test)), *([gain.sentence()] if gain is not None else []))
        source_run = trial_run_id(selection) or parent_run_id  # the version's source: the trial that trained it
        published = publish(files, example, int(label[0]), data.contract, tracker, source_run, wf.tracking.model_name,
                            {**tags, "lepton.sweep_run_id": parent_run_id}, notes, knobs(selection))
        mark_champion(tracker, parent_run_id, selection, published, notes, cost_column)
    finally:
        report = write_report(out_dir / REPORT_FILE, candidates, cost_column, on_front, selection, teacher_accuracy, files, checks, published, trials,
                              gain, len(data.test), parent_run_id)
        tracker.log_artifacts(parent_run_id, [report], SELECTION_ARTIFACTS)
    return ExportResult(selection, files, checks, published, plot, report, gain)


def export_weight_bits(student_metrics: dict[str, Any]) -> WeightBits:
    """The weight bits the student is exported with: its per-layer map when it was trained with one
    (`PER_LAYER_BITS_KEY`, from the payload via `student_loader`), else its one width (32, a float student, if none)."""
    if PER_LAYER_BITS_KEY in student_metrics:
        return {layer: int(bits) for layer, bits in student_metrics[PER_LAYER_BITS_KEY].items()}
    return int(student_metrics.get(metrics.BITS, 32))


def shipped_estimate(selection: Selection, checks: Int8Checks, test_samples: int) -> str:
    """One line: how the pick was chosen, and its int8 file's test accuracy as the estimate of what ships."""
    return (f"Chosen on validation only: {selection.explanation}. Estimate of what ships: the int8 file's test accuracy "
            f"{checks.int8_test_accuracy:.4f} ({noise_note(checks.int8_test_accuracy, test_samples, 'test')}); no decision read the test split.")


def _tag_trials(tracker: "Tracker", parent_run_id: str, candidates: "pd.DataFrame", on_front: np.ndarray, selection: Selection) -> None:
    """Mark front runs (when the table has `run_id`) and record the choice on the sweep run."""
    if "run_id" in candidates.columns:
        for run_id, front in zip(candidates["run_id"], on_front):
            tracker.set_tags(str(run_id), {FRONT_TAG: str(bool(front)).lower()})
    tracker.set_tags(parent_run_id, {"lepton.selected_trial": str(selection.trial), "lepton.selection": selection.explanation})
