"""Per-layer compression (issue 33): per-layer QAT grids and sparsities in a real trial, the allocation of them from the
measured sensitivity profile under a budget, and a sweep over that budget through `lepton-ray sweep`."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from test_sweep import TINY

from lepton_ray import metrics
from lepton_ray.checkpoints import load_safe
from lepton_ray.cli import main
from lepton_ray.compress.cost import FLOAT_BITS
from lepton_ray.compress.layers import weight_layers
from lepton_ray.config import load_workflow, stored_bits_per_weight
from lepton_ray.errors import ConfigError
from lepton_ray.data.datasets import build_data
from lepton_ray.tracking.tracker import PARENT_TAG, Tracker
from lepton_ray.trial.files import ALLOCATION_FILE, STUDENT_FILE
from lepton_ray.trial.loop import run_trial
from lepton_ray.trial.per_layer import allocated_workflow, measure_profile
from lepton_ray.trial.sessions import InProcessSession

from conftest import QUICKSTART

CPU = torch.device("cpu")
HAND_SET = {"quantization": {"per_layer": {"features.0.0": 7, "features.1.0": 2, "classifier.1": 4}},
            "pruning": {"per_layer": {"features.1.0": 0.6}}}
"""The quickstart student's three weight layers, each with its own grid; only the middle one pruned."""


def _run(tmp_path: Path, compression: dict, epochs: int = 3) -> tuple[dict, dict, Path]:
    """One in-process digits trial; its last report, its saved student payload and its last checkpoint folder."""
    wf = load_workflow(QUICKSTART, {"training.epochs": epochs, "distillation.alpha": 0.0, "output_dir": str(tmp_path), "compression": compression})
    reports: list[dict] = []
    run_trial({"workflow": wf.to_dict(), "teachers": [], "data": build_data(wf.data), "teacher_cache": None},
              InProcessSession(tmp_path / "trial", reports.append, CPU))
    folder = Path(reports[-1]["checkpoint_path"])
    return reports[-1], load_safe(folder / STUDENT_FILE), folder


def _codes_per_layer(state_dict: dict[str, torch.Tensor], layer: str) -> int:
    """Distinct values per output channel, at most, of a layer's baked weights."""
    weight = state_dict[f"{layer}.weight"].flatten(1)
    return max(len(torch.unique(row)) for row in weight)


def test_hand_set_per_layer_bits_and_sparsity_train_ship_and_export_each_layers_own_grid(tmp_path):
    final, payload, _ = _run(tmp_path, HAND_SET)
    state = payload["state_dict"]
    assert _codes_per_layer(state, "features.0.0") <= 2**7 - 1
    assert _codes_per_layer(state, "features.1.0") <= 3  # ternary: {-a, 0, +a}
    assert _codes_per_layer(state, "classifier.1") <= 2**4 - 1
    pruned = state["features.1.0.weight"]
    assert float((pruned == 0).float().mean()) >= 0.6  # its own target (ternary rounding adds zeros on top)
    assert float((state["features.0.0.weight"] == 0).float().mean()) < 0.2, "unnamed in pruning.per_layer: not pruned"
    assert payload["weight_bits"] == {"features.0.0": 7, "features.1.0": 2, "classifier.1": 4}
    counts = [state[f"{name}.weight"].numel() for name in ("features.0.0", "features.1.0", "classifier.1")]
    assert final[metrics.BITS] == pytest.approx(np.average([7, 2, 4], weights=counts)), "bits: the weights' mean width"
    assert final["test_accuracy"] > 0.7
    assert abs(final[metrics.INT8_VAL_ACCURACY] - final[metrics.BEST_VAL_ACCURACY]) <= 0.02, "the int8 file computes the trained student"


def test_a_per_layer_setting_naming_no_layer_is_refused_with_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"compression.quantization.per_layer: no conv/linear layer named 'features.9'.*features.0"):
        _run(tmp_path, {"quantization": {"per_layer": {"features.9": 4}}}, epochs=1)
    with pytest.raises(ConfigError, match="compression.pruning: per_layer cannot be set with sparsity"):
        load_workflow(QUICKSTART, {"compression": {"pruning": {"sparsity": 0.5, "per_layer": {"features.0.0": 0.5}}}})


@pytest.mark.parametrize(("overrides", "message"), [
    ({"compression.allocation.bits_per_weight": 1.2}, r"compression.allocation: bits_per_weight 1.2 is below the cheapest candidate \(1.40"),
    ({"compression.allocation.bits_per_weight": 3, "compression.quantization.bits": 4},
     r"^compression.quantization.bits: cannot be set with compression.allocation.bits_per_weight"),
    ({"compression.allocation.bits_per_weight": 3, "compression.low_rank.rank_ratio": 0.5}, r"^compression.low_rank.rank_ratio: cannot be set"),
])
def test_an_allocation_that_cannot_be_met_or_fights_uniform_settings_is_refused_naming_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_workflow(QUICKSTART, overrides)


def test_the_allocation_fits_the_budget_on_the_trials_own_layers_and_spends_it_where_the_profile_says(tmp_path):
    """Profiled once, allocated at two budgets: each fits (weights at the budget's bits, scales on top), the larger
    budget never shifts the outputs more, and the cheap one compresses the layer the profile finds least fragile most."""
    wf = load_workflow(QUICKSTART, {"compression.allocation.bits_per_weight": 2.0})
    data = build_data(wf.data)
    profile = measure_profile(wf, data, CPU, log=lambda line: None)
    assert set(profile) == {"features.0.0", "features.1.0", "classifier.1"} and all(len(rows) == 9 for rows in profile.values())
    assert all(row["shift"] >= 0 for rows in profile.values() for row in rows)
    uncompressed = {name: next(r["shift"] for r in rows if r["bits"] == 7 and r["sparsity"] == 0) for name, rows in profile.items()}
    harsh = {name: next(r["shift"] for r in rows if r["bits"] == 2 and r["sparsity"] == 0.8) for name, rows in profile.items()}
    assert all(harsh[name] > uncompressed[name] for name in profile), "2 bits, 80% sparse hurts every layer more than 7 bits dense"
    shifts = {}
    for budget in (2.0, 5.0):
        cfg = wf.compression.allocation.model_copy(update={"bits_per_weight": budget})
        resolved, allocation = allocated_workflow(wf.model_copy(update={"compression": wf.compression.model_copy(update={"allocation": cfg})}), profile, data)
        layers = dict(weight_layers(_student(resolved, data)))
        spent = sum(layers[name].weight.numel() * stored_bits_per_weight(o.setting["bits"], o.setting["sparsity"]) for name, o in allocation.choices.items())
        assert spent <= budget * sum(layer.weight.numel() for layer in layers.values()) + 1e-6
        assert allocation.cost == pytest.approx(spent + sum(layer.weight.shape[0] for layer in layers.values()) * FLOAT_BITS)
        assert resolved.compression.quantization.per_layer == {name: o.setting["bits"] for name, o in allocation.choices.items()}
        assert not resolved.compression.allocation.active, "resolved into per-layer settings"
        shifts[budget] = allocation.sensitivity
    assert shifts[5.0] <= shifts[2.0]


def _student(wf, data):
    from lepton_ray.models.zoo import build_model

    return build_model(wf.student, data.model_input, data.num_classes)


def test_an_allocated_trial_trains_the_allocated_grids_and_writes_its_per_layer_table(tmp_path):
    final, payload, folder = _run(tmp_path, {"allocation": {"bits_per_weight": 2.5, "profile_epochs": 1, "profile_samples": 200}})
    table = json.loads((folder / ALLOCATION_FILE).read_text())
    assert [row["layer"] for row in table] == ["features.0.0", "features.1.0", "classifier.1"]
    assert payload["weight_bits"] == {row["layer"]: row["bits"] for row in table}
    for row in table:
        assert _codes_per_layer(payload["state_dict"], row["layer"]) <= (3 if row["bits"] == 2 else 2 ** row["bits"] - 1)
    weights = sum(row["weights"] for row in table)
    assert sum(row["weights"] * stored_bits_per_weight(row["bits"], row["sparsity"]) for row in table) <= 2.5 * weights + 1e-6
    assert final[metrics.SIZE_BYTES] > 0 and abs(final[metrics.INT8_VAL_ACCURACY] - final[metrics.BEST_VAL_ACCURACY]) <= 0.03


@pytest.mark.ray
def test_a_sweep_over_the_budget_runs_end_to_end_through_lepton_ray_sweep(ray_session, write_workflow, tmp_path):
    """The space searches the budget next to T and alpha; each trial's run logs the budget and its per-layer table,
    and its int8 file holds each layer on its allocated grid."""
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"params": {
        "compression.allocation.bits_per_weight": {"type": "float", "low": 1.5, "high": 6.0},
        "distillation.temperature": {"type": "float", "low": 1.0, "high": 8.0, "log": True},
    }}))
    path = write_workflow({**TINY, "sweep.space": str(space), "sweep.num_samples": 2, "compression.allocation.profile_epochs": 1,
                           "compression.allocation.profile_samples": 100, "resources.num_workers": 1, "resources.max_concurrent_trials": 1})
    assert main(["sweep", str(path), "--no-export"]) == 0
    wf = load_workflow(path)
    assert len(list((wf.run_dir / "sweep").glob("sensitivity-*.json"))) == 1, "profiled once for the sweep"
    tracker = Tracker(wf.tracking.uri, wf.tracking.experiment)
    (parent,) = tracker.client.search_runs([tracker.experiment_id], "tags.`lepton.kind` = 'sweep'")
    runs = mlflow.search_runs(experiment_ids=[tracker.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'")
    assert len(runs) == 2 and (runs["status"] == "FINISHED").all()
    for run_id in runs["run_id"]:
        folder = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="allocation", tracking_uri=wf.tracking.uri, dst_path=str(tmp_path / run_id)))
        table = json.loads((folder / ALLOCATION_FILE).read_text())
        budget = float(mlflow.get_run(run_id).data.params["compression.allocation.bits_per_weight"])
        assert [row["budget_bits_per_weight"] for row in table] == pytest.approx([budget] * len(table))
        student = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="student", tracking_uri=wf.tracking.uri, dst_path=str(tmp_path / run_id)))
        assert load_safe(student / STUDENT_FILE)["weight_bits"] == {row["layer"]: row["bits"] for row in table}
