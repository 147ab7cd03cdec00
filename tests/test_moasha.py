"""`sweep.scheduler: moasha`: successive halving by Pareto rank, and the planned cost it weighs at each rung."""

from __future__ import annotations

import math

import mlflow
import optuna
import pytest
import torch
from ray.tune.schedulers import TrialScheduler
from test_sweep import TINY

from lepton_ray import metrics
from lepton_ray.cli import main
from lepton_ray.compress.cost import static_cost
from lepton_ray.compress.pipeline import Compression
from lepton_ray.config import CompressionConfig, load_workflow
from lepton_ray.models.zoo import MODELS
from lepton_ray.sweep.moasha import MultiObjectiveAsha, ParetoRungs, constrained_order, crowding_distances, nondominated_fronts, pareto_order, rung_milestones
from lepton_ray.deploy.leaderboard import trials_frame
from lepton_ray.tracking.tracker import PARENT_TAG, Tracker


def test_fronts_peel_off_in_order_of_domination():
    points = [(0.9, 100.0), (0.8, 50.0), (0.85, 120.0), (0.7, 60.0), (0.9, 100.0)]
    assert nondominated_fronts(points) == [[0, 1, 4], [2, 3]]


def test_crowding_keeps_both_ends_of_a_front_and_then_the_point_in_the_sparsest_stretch():
    points = [(0.70, 10.0), (0.71, 11.0), (0.80, 50.0), (0.90, 100.0)]
    distance = crowding_distances(points, [0, 1, 2, 3])
    assert math.isinf(distance[0]) and math.isinf(distance[3])
    assert distance[2] > distance[1]
    assert pareto_order(points)[:3] == [0, 3, 2]


def test_rungs_sit_at_grace_times_powers_of_eta_below_the_last_epoch():
    assert rung_milestones(1, 3, 3) == [1]
    assert rung_milestones(3, 10, 3) == [3, 9]
    assert rung_milestones(1, 27, 3) == [1, 3, 9]
    assert rung_milestones(2, 2, 3) == []


def test_a_cheap_student_survives_a_rung_that_accuracy_alone_would_stop_it_at():
    """Tune's ASHA keeps the most accurate third; by Pareto rank the cheapest student is kept too."""
    rungs = ParetoRungs([1], 3)
    assert rungs.goes_on("big", 1, (0.90, 30_000.0))
    assert not rungs.goes_on("middling", 1, (0.85, 40_000.0)), "dominated by the first"
    assert not rungs.goes_on("dominated", 1, (0.55, 50_000.0))
    assert rungs.goes_on("tiny", 1, (0.60, 3_000.0)), "4 seen, 2 kept: the front's two ends (ASHA would stop it: 0.60 < 0.85)"
    assert not rungs.goes_on("cheap too", 1, (0.58, 3_500.0)), "5 seen, 2 kept: dominated by tiny"
    assert rungs.goes_on("tiny", 2, (0.1, 1.0)), "judged once per rung: a later report does not judge it again"


def test_with_an_accuracy_floor_a_rung_keeps_students_that_may_reach_it_before_cheap_ones_that_never_will():
    """Constrained domination: points at or above the floor first (Pareto order), then the rest by accuracy."""
    points = [(0.60, 3_000.0), (0.80, 30_000.0), (0.70, 20_000.0), (0.92, 50_000.0), (0.90, 40_000.0)]
    assert constrained_order(points, None) == pareto_order(points)
    assert constrained_order(points, 0.85) == [3, 4, 1, 2, 0]
    rungs = ParetoRungs([1], 3, accuracy_floor=0.85)  # the arrivals of the test above, which keeps "tiny" without a floor
    assert rungs.goes_on("big", 1, (0.90, 30_000.0))
    assert not rungs.goes_on("middling", 1, (0.85, 40_000.0))
    assert not rungs.goes_on("dominated", 1, (0.55, 50_000.0))
    assert not rungs.goes_on("tiny", 1, (0.60, 3_000.0)), "4 seen, 2 kept: big and middling, the two at the floor"


def test_the_scheduler_stops_at_a_rung_and_never_at_the_final_report():
    scheduler = MultiObjectiveAsha(max_t=3, grace_period=1)

    class Trial:
        def __init__(self, trial_id):
            self.trial_id = trial_id

    def epoch(number, accuracy, cost, **final):
        return {metrics.EPOCH: number, metrics.VAL_ACCURACY: accuracy, metrics.PLANNED_SIZE_BYTES: cost, **final}

    assert scheduler.on_trial_result(None, Trial("a"), epoch(1, 0.9, 100.0)) == TrialScheduler.CONTINUE
    assert scheduler.on_trial_result(None, Trial("b"), epoch(1, 0.5, 200.0)) == TrialScheduler.STOP
    assert scheduler.on_trial_result(None, Trial("c"), {metrics.EPOCH: 1}) == TrialScheduler.CONTINUE, "nothing to judge by"
    last = epoch(3, 0.1, 900.0, **{metrics.BEST_VAL_ACCURACY: 0.1})  # the final report: it carries the best epoch's figures
    assert scheduler.on_trial_result(None, Trial("d"), last) == TrialScheduler.CONTINUE
    assert scheduler.stopped == 1


def test_the_planned_student_has_the_finished_students_sparsity_even_when_the_schedule_ends_early():
    """Pruning reaches its target at epoch 1 of 4: the planned copy must apply that step, not only the last epoch's."""
    config = CompressionConfig.model_validate({"pruning": {"sparsity": 0.6, "end_epoch": 1}, "quantization": {"bits": 4}})
    torch.manual_seed(0)
    compression = Compression(config, 4)
    model = compression.prepare(MODELS.get("cnn_small")((1, 8, 8), 10, channels=[8, 16], hidden=32), torch.randn(2, 1, 8, 8))
    planned = static_cost(compression.planned(model), (1, 8, 8), 4)
    assert planned[metrics.SPARSITY] == pytest.approx(0.6, abs=0.01)
    assert static_cost(model, (1, 8, 8), 4)[metrics.SPARSITY] == 0.0, "the trained student itself is untouched"
    for epoch in range(4):
        compression.on_epoch_start(model, epoch)
    assert planned[metrics.SIZE_BYTES] == pytest.approx(static_cost(compression.finalize(model), (1, 8, 8), 4)[metrics.SIZE_BYTES], rel=0.02)


@pytest.mark.ray
def test_a_moasha_sweep_stops_trials_at_the_rung_and_keeps_them_off_the_front(ray_session, write_workflow, capsys):
    """Through `lepton-ray sweep`: 5 trials of 3 epochs one at a time, judged at epoch 1. The sweep is seeded, so
    which trials stop is fixed; every stopped one is PRUNED in Optuna, KILLED in MLflow and absent from the leaderboard."""
    path = write_workflow({**TINY, "training.epochs": 3, "sweep.num_samples": 5, "sweep.scheduler": "moasha",
                           "resources.num_workers": 1, "resources.max_concurrent_trials": 1})
    assert main(["sweep", str(path), "--no-export"]) == 0
    wf = load_workflow(path)
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{wf.run_dir / 'sweep' / 'study.db'}")
    states = {t.number: t.state.name for t in study.trials}
    pruned = [number for number, state in states.items() if state == "PRUNED"]
    assert pruned and set(states.values()) == {"PRUNED", "COMPLETE"}, states
    tracker = Tracker(wf.tracking.uri, wf.tracking.experiment)
    (parent,) = tracker.client.search_runs([tracker.experiment_id], "tags.`lepton.kind` = 'sweep'")
    runs = mlflow.search_runs(experiment_ids=[tracker.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'")
    status = dict(zip(runs["tags.optuna_trial"].astype(int), runs["status"]))
    assert status == {n: "KILLED" if n in pruned else "FINISHED" for n in states}
    killed = runs[runs["status"] == "KILLED"]
    assert (killed[f"metrics.{metrics.EPOCH}"] == 1).all() and killed[f"metrics.{metrics.PLANNED_SIZE_BYTES}"].notna().all()
    board = trials_frame(tracker, parent.info.run_id, wf.sweep.cost_metric, wf.export.tolerance)
    assert not board[board["trial"].isin(pruned)]["on_front"].any()
    assert board[~board["trial"].isin(pruned)]["on_front"].any()
