"""The benchmarks' int8 retest (`allocation_front.int8_retest` over `fashion_mnist.retest_trials`) measures what a trial
shipped: its student re-exported with the trial's own per-layer grids and input contract is a file of the bytes the
trial logged, tested in ONNX Runtime on the test split."""

from __future__ import annotations

import pytest
import yaml

from benchmarks.allocation_front import INT8_TEST, int8_retest
from lepton_ray import metrics
from lepton_ray.cli import main
from lepton_ray.config import load_workflow
from lepton_ray.export.int8 import INT8_FILE
from lepton_ray.export.shipped_cost import file_cost
from lepton_ray.sweep.results import existing_sweep

from test_sweep import TINY


@pytest.mark.ray
def test_the_int8_retest_re_exports_a_per_layer_students_shipped_file_and_tests_it_in_onnx_runtime(ray_session, write_workflow, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"params": {"compression.allocation.bits_per_weight": {"type": "float", "low": 2.0, "high": 3.0}}}))
    path = write_workflow({**TINY, "sweep.space": str(space), "sweep.num_samples": 1, "compression.allocation.profile_epochs": 1,
                           "compression.allocation.profile_samples": 100, "resources.num_workers": 1, "resources.max_concurrent_trials": 1})
    assert main(["sweep", str(path), "--no-export"]) == 0
    wf = load_workflow(path)
    outcome, _ = existing_sweep(wf)
    (trial,) = [row for _, row in outcome.trials.iterrows() if row["status"] == "finished"]

    retested = int8_retest({"points": [{"trial": int(trial["trial"])}]}, wf, outcome, tmp_path / "retest")

    (point,) = retested["points"]
    shipped = file_cost(tmp_path / "retest" / f"trial{int(trial['trial'])}" / INT8_FILE)
    assert shipped[metrics.INT8_GZIP_BYTES] == float(trial[metrics.INT8_GZIP_BYTES]), \
        "the trial's per-layer grids, input contract and calibration images (64 both here) give the bytes it logged"
    assert abs(point[INT8_TEST] - float(trial[metrics.TEST_ACCURACY])) <= 0.05, "the int8 file of the student the trial reported on"
    assert retested["int8_retest_commit"]
