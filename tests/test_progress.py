"""The sweep's live status line counts what `select` will count: the front without trials whose int8 file fell
outside export.tolerance, and no trial both done and running."""

from __future__ import annotations

from types import SimpleNamespace

from lepton_ray import metrics
from lepton_ray.sweep.progress import SweepProgress


def trial(trial_id: str, val: float, int8_val: float, cost: float) -> SimpleNamespace:
    result = {metrics.BEST_VAL_ACCURACY: val, metrics.SELECTION_ACCURACY: int8_val, metrics.INT8_GZIP_BYTES: cost}
    return SimpleNamespace(trial_id=trial_id, status="RUNNING", last_result=result)


def test_the_status_line_keeps_an_int8_file_outside_tolerance_off_the_front_and_a_completing_trial_out_of_running():
    lines: list[str] = []
    progress = SweepProgress(3, 0, metrics.INT8_GZIP_BYTES, log=lines.append, max_int8_drop_points=1.0)
    trials = [trial("a", 0.90, 0.899, 1_000.0), trial("b", 0.95, 0.92, 500.0), trial("c", 0.93, 0.93, 2_000.0)]
    for finished in trials:  # Tune calls on_trial_complete while it still lists the trial RUNNING
        progress.on_trial_complete(0, trials, finished)

    assert lines[-1].startswith("[sweep] 3/3 done (0 failed, 0 pruned, 1 int8 file outside export.tolerance), 0 running"), lines[-1]
    assert "| front size 2 |" in lines[-1], "b's int8 file lost 3 pt: off the front, which a and c then make up"
    assert lines[0].startswith("[sweep] 1/3 done (0 failed, 0 pruned), 2 running |"), lines[0]


def test_after_a_resume_the_status_line_counts_the_trials_finished_before_it_in_best_and_front():
    lines: list[str] = []
    earlier = [trial("x", 0.94, 0.94, 800.0).last_result, trial("y", 0.95, 0.90, 100.0).last_result]  # y: int8 lost 5 pt
    progress = SweepProgress(3, 2, metrics.INT8_GZIP_BYTES, log=lines.append, max_int8_drop_points=1.0, earlier_results=earlier)
    progress.on_step_end(0, [])
    assert "| best int8_val_accuracy 0.9400 | front size 1 |" in lines[-1], lines[-1]

    trials = [trial("c", 0.93, 0.93, 400.0)]
    progress.on_trial_complete(0, trials, trials[0])
    assert lines[-1].startswith("[sweep] 3/3 done (0 failed, 0 pruned), 0 running | best int8_val_accuracy 0.9400 | front size 2 |"), lines[-1]
