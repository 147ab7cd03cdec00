"""The benchmark suite's pure helpers: hypervolume, the searchers' replay on a grid table, training FLOPs, goal verdicts.
No benchmark runs here."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from pathlib import Path

import optuna
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import REPO, Figure, figures_table
from benchmarks.teacher_asset import RECORD, install_committed_teacher
from lepton_ray.config import load_workflow
from lepton_ray.trial.teacher import fingerprint
from benchmarks.search_efficiency import GridTable, distribution, headline, hypervolume_2d, replay, trials_to_share
from lepton_ray import metrics
from benchmarks.throughput_vs_peak import training_flops
from lepton_ray.compress.cost import count_macs


def brute_force_hypervolume(accuracy: list[float], cost: list[float], reference: tuple[float, float]) -> float:
    """Union of the boxes [cost, ref_cost] x [ref_accuracy, accuracy], cell by cell on the grid of all coordinates."""
    xs = sorted({reference[1], *(min(c, reference[1]) for c in cost)})
    ys = sorted({reference[0], *(max(a, reference[0]) for a in accuracy)})
    area = 0.0
    for (x0, x1), (y0, y1) in itertools.product(zip(xs, xs[1:]), zip(ys, ys[1:])):
        centre_x, centre_y = (x0 + x1) / 2, (y0 + y1) / 2
        if any(c <= centre_x and a >= centre_y for a, c in zip(accuracy, cost)):
            area += (x1 - x0) * (y1 - y0)
    return area


def test_hypervolume_matches_hand_computation_and_ignores_dominated_points():
    # front (cost 2, acc 0.5) and (cost 5, acc 0.8); (cost 6, acc 0.6) is dominated; box up to cost 10
    area = hypervolume_2d([0.5, 0.8, 0.6], [2.0, 5.0, 6.0], reference=(0.0, 10.0))
    assert area == pytest.approx((5 - 2) * 0.5 + (10 - 5) * 0.8)


def test_hypervolume_matches_brute_force_on_random_points():
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        accuracy = torch.rand(12, generator=generator).tolist()
        cost = (torch.rand(12, generator=generator) * 12).tolist()  # some beyond the reference cost
        reference = (0.2, 10.0)
        assert hypervolume_2d(accuracy, cost, reference) == pytest.approx(brute_force_hypervolume(accuracy, cost, reference))


def test_hypervolume_is_zero_without_points_better_than_the_reference():
    assert hypervolume_2d([], [], (0.0, 1.0)) == 0.0
    assert hypervolume_2d([0.9, math.nan, 0.1], [2.0, 0.5, 0.5], reference=(0.1, 1.0)) == 0.0


WIDTH, BITS = "student.options.width", "compression.quantization.bits"
SMALL_GRID = {(0.25, 4): (0.90, 20.0), (0.25, 7): (0.92, 35.0), (0.5, 4): (0.95, 40.0), (0.5, 7): (0.96, 80.0)}
"""(width, bits) -> (best_val_accuracy, int8_gzip_bytes); all four on the front. Reference (0.85, 100): dense 0.90 - 5 pt."""
SMALL_GRID_HYPERVOLUME = (35 - 20) * 0.05 + (40 - 35) * 0.07 + (80 - 40) * 0.10 + (100 - 80) * 0.11


def grid_payload(outcomes: dict[tuple[float, int], tuple[float, float] | None]) -> dict:
    """A `search_grid` payload: a channel-pruning knob with one value (fixed, not searched), width and bits searched."""
    configs = [{"knobs": {WIDTH: width, "compression.channel_pruning.sparsity": 0.0, BITS: bits}, "diverged": outcome is None,
                **({"best_val_accuracy": outcome[0], "int8_gzip_bytes": outcome[1]} if outcome else {})}
               for (width, bits), outcome in outcomes.items()]
    return {"setting": {"grid": {WIDTH: [0.25, 0.5], "compression.channel_pruning.sparsity": [0.0], BITS: [4, 7]}},
            "dense_labels_only": {"best_val_accuracy": 0.90, "int8_gzip_bytes": 100.0, "diverged": False}, "configs": configs}


def test_the_reference_point_is_5_points_below_the_dense_labels_only_student_at_its_cost():
    table = GridTable.from_payload(grid_payload(SMALL_GRID))
    assert table.reference == pytest.approx((0.85, 100.0))
    assert set(table.distributions) == {WIDTH, BITS}, "a knob with one value is not searched"
    assert table.known_hypervolume == pytest.approx(SMALL_GRID_HYPERVOLUME)


def test_one_point_front_hypervolume_matches_hand_computation():
    table = GridTable.from_payload(grid_payload(SMALL_GRID))
    assert table.hypervolume([(0.95, 40.0)]) == pytest.approx((100 - 40) * (0.95 - 0.85) / SMALL_GRID_HYPERVOLUME)
    assert table.hypervolume([None, (0.80, 10.0)]) == 0.0, "a failed trial and a point below the reference add nothing"


def test_a_searcher_that_sees_every_configuration_reaches_the_known_front():
    table = GridTable.from_payload(grid_payload(SMALL_GRID))
    told = replay(table, "random", seed=0, trials=30)
    assert len(told) == 30 and set(told) == set(SMALL_GRID.values())
    assert table.hypervolume(told) == pytest.approx(1.0)


@pytest.mark.parametrize("searcher", ["tpe_liar4", "gp", "nsga2"])
def test_replay_asks_only_grid_configurations_and_tells_diverged_ones_as_failed(searcher):
    table = GridTable.from_payload(grid_payload({**SMALL_GRID, (0.5, 7): None}))
    told = replay(table, searcher, seed=1, trials=8)
    assert len(told) == 8 and set(told) <= {*SMALL_GRID.values(), None}
    assert 0.0 < table.hypervolume(told) <= 1.0 + 1e-12


def test_trials_to_share_counts_told_trials_until_the_share_is_reached():
    table = GridTable.from_payload(grid_payload(SMALL_GRID))
    # after (0.90, 20): 80 x 0.05 = 4.0 (0.55 of 7.3); adding (0.95, 40): 20 x 0.05 + 60 x 0.10 = 7.0 (0.96)
    assert trials_to_share(table, [(0.90, 20.0), None, (0.95, 40.0)], share=0.9) == 3
    assert trials_to_share(table, [(0.90, 20.0), (0.92, 35.0)], share=0.9) is None


def test_stepped_distributions_hold_exactly_the_grid_values():
    from benchmarks.search_grid import GRID, QUICK_GRID

    assert distribution([4, 5, 6, 7]) == optuna.distributions.IntDistribution(4, 7)
    assert distribution([0.0, 0.4, 0.8]) == optuna.distributions.FloatDistribution(0.0, 0.8, step=0.4)
    with pytest.raises(ValueError, match="not evenly spaced"):
        distribution([0.25, 0.5, 1.0])
    for grid in (GRID, QUICK_GRID):
        for values in grid.values():
            if len(values) > 1:
                searched = distribution(values)
                held = [searched.low + k * searched.step for k in range(round((searched.high - searched.low) / searched.step) + 1)]
                assert held == pytest.approx(values)


def test_headline_compares_the_named_searcher_with_random_in_standard_errors():
    summary = {
        "random": {"hypervolume": {"24": {"mean": 0.6, "se": 0.03}}, "trials_to_90": {"mean": 40.0}},
        "tpe": {"hypervolume": {"24": {"mean": 0.75, "se": 0.04}}, "trials_to_90": {"mean": 30.0}},
        "gp": {"hypervolume": {"24": {"mean": 0.8, "se": 0.04}}, "trials_to_90": {"mean": 16.0}},
    }
    top = headline(summary, 24, "tpe")
    assert (top["arm"], top["best"]) == ("tpe", "gp")
    assert top["hypervolume_ratio"] == pytest.approx(0.75 / 0.6)
    assert top["difference_in_se"] == pytest.approx(0.15 / 0.05)
    assert top["trials_to_90_ratio"] == pytest.approx(0.75)


def test_training_flops_equal_forward_plus_backward_flops_counted_by_torch():
    layer = nn.Linear(8, 4, bias=False)
    inputs = torch.randn(5, 8, requires_grad=True)  # so the backward computes input grads too, as for inner layers
    counter = FlopCounterMode(display=False)
    with counter:
        layer(inputs).sum().backward()
    assert training_flops(count_macs(layer, (8,)), samples=5) == counter.get_total_flops()


def test_figure_verdict_follows_its_goal_and_nan_never_passes():
    assert Figure("b", "f", 1.1, at_most=1.15).verdict == "pass"
    assert Figure("b", "f", 1.2, at_most=1.15).verdict == "FAIL"
    assert Figure("b", "f", 1.9, at_least=2.0).verdict == "FAIL"
    assert Figure("b", "f", math.nan, at_least=2.0).verdict == "FAIL"
    assert Figure("b", "f", 0.3).verdict == "-"


def test_figures_table_writes_large_values_with_separators_and_keeps_a_cell_with_a_pipe_in_its_column():
    table = figures_table([Figure("b", "a | b", 21088.0, at_most=10800.0)])
    row = table.splitlines()[2]
    assert "21,088" in row and "<= 10,800" in row and "e+04" not in row
    assert row.count(" | ") + 2 == table.splitlines()[0].count("|")  # as many unescaped separators as the header has
    assert "a \\| b" in row


def curved_payload(epochs: int = 3) -> dict:
    """`grid_payload(SMALL_GRID)` with learning curves: every epoch 1 s, no start-up; accuracy rising to the final value."""
    payload = grid_payload(SMALL_GRID)
    for row in payload["configs"]:
        final = row["best_val_accuracy"]
        row.update(seconds=float(epochs), size_bytes=row["int8_gzip_bytes"], curve=[
            {"epoch": e, "val_accuracy": final - 0.1 * (epochs - e), "compute_s": float(e)} for e in range(1, epochs + 1)])
    payload["setting"]["epochs"] = epochs
    return payload


def test_a_full_fidelity_replay_in_time_charges_every_epoch_of_every_trial():
    from benchmarks.multi_fidelity import curves, replay_in_time

    payload = curved_payload()
    table = GridTable.from_payload(payload)
    finished = replay_in_time(table, curves(payload, table), "random", seed=0, scheduled=False, max_trials=12, cpu_budget=math.inf, epochs=3)
    assert len(finished) == 12 and set(outcome for _, outcome in finished) <= set(SMALL_GRID.values())
    assert finished[-1][0] == pytest.approx(36.0), "12 trials x 3 epochs x 1 s, two at a time"
    assert [cpu for cpu, _ in finished] == sorted(cpu for cpu, _ in finished)


def test_moasha_in_replay_stops_trials_at_the_rung_and_spends_less_on_them():
    from benchmarks.multi_fidelity import curves, replay_in_time

    payload = curved_payload()
    table = GridTable.from_payload(payload)
    finished = replay_in_time(table, curves(payload, table), "random", seed=0, scheduled=True, max_trials=12, cpu_budget=math.inf, epochs=3)
    assert len(finished) < 12, "some of the 12 started trials were stopped after epoch 1"
    assert finished[-1][0] < 36.0


def test_sweep_scale_figures_compare_driver_time_per_trial_and_skip_a_searcher_cut_short():
    from benchmarks.sweep_scale import figures, marginal_driver_s, parse_plan

    def run(searcher, trials, wall, compute, reads=True):
        return {"searcher": searcher, "trials": trials, "sweep_wall_s": wall, "trials_compute_sum_s": compute, "driver_s_per_trial": (wall - compute) / trials,
                "ask_s_at_last_trial": 0.1, **({"leaderboard_s": 4.0, "select_s": 12.0} if reads else {})}

    assert parse_plan(["tpe:100,25", "random:25"]) == [("tpe", [25, 100]), ("random", [25])]
    small, large = run("tpe", 25, 100.0, 50.0, reads=False), run("tpe", 100, 250.0, 120.0)
    assert marginal_driver_s(small, large) == pytest.approx((130.0 - 50.0) / 75)  # the fixed per-sweep cost cancels
    payload = {"plan": {"tpe": [25, 100], "random": [25, 100]}, "runs": [small, large, run("random", 25, 90.0, 50.0, reads=False)]}
    by_name = {figure.name: figure for figure in figures(payload)}
    assert by_name["tpe: driver s/trial at 100 / at 25 trials"].value == pytest.approx(1.3 / 2.0)
    assert by_name["tpe: select on 100 trials (s)"].verdict == "FAIL"
    assert not any(name.startswith("random") for name in by_name), "random never reached its largest size"


def test_distill_gain_pairs_each_seed_and_gives_the_mean_and_sd_of_the_differences():
    from benchmarks.distill_gain import gain_row, planned_jobs, run_key, run_overrides

    runs = [{metrics.TEST_ACCURACY: a, metrics.BEST_VAL_ACCURACY: a, "seconds": 10.0} for a in (0.91, 0.90, 0.93, 0.90, 0.92, 0.90)]  # (teacher, labels only) per seed
    row = gain_row(runs, [0, 1, 2])
    assert row["gain_points"] == pytest.approx(2.0) and row["gain_sd_points"] == pytest.approx(1.0)
    assert row["labels_only_test_accuracy"] == [0.90, 0.90, 0.90]
    labels_only = run_overrides({"student.options.width": 0.5}, "function_matching", "labels_only", 2, quick=True)
    assert labels_only["distillation.alpha"] == 0.0 and labels_only["data.augment"]["mix"] == "mixup", "both arms see the same mixed views"
    assert labels_only["training.epochs"] == 1 and labels_only["data.augment"]["views"] == 2 and labels_only["student.options.width"] == 0.5
    jobs = planned_jobs(["dense"], ["kd", "dkd", "kd_aug_patient"], [0, 1])
    names = [run_key(*job) for job in jobs]
    assert len(names) == len(set(names)) == 2 * (3 + 1 + 1), "kd and dkd share one labels-only run per seed; each pipeline has its own"
    assert run_key("dense", "kd", "labels_only", 0) == run_key("dense", "dist", "labels_only", 0) != run_key("dense", "kd_aug", "labels_only", 0)
    assert [job[3] for job in jobs] == sorted(job[3] for job in jobs), "seed by seed: a stopped benchmark leaves whole seeds"


def test_an_ensemble_recipe_distils_from_the_teacher_and_one_extra_teacher_per_ensemble_seed():
    from benchmarks.distill_gain import ENSEMBLE_SEEDS, extra_teacher_file, run_overrides
    from benchmarks.fashion_mnist import WORKFLOW

    with_teacher = run_overrides({}, "dist_long_ensemble", "teacher", 0)
    files = [Path(teacher["checkpoint"]) for teacher in with_teacher["extra_teachers"]]
    assert files == [extra_teacher_file(seed, False) for seed in ENSEMBLE_SEEDS] and len(set(files)) == len(ENSEMBLE_SEEDS)
    assert all(f.parent == REPO / "runs" / "teachers" and f.name.endswith(f".seed{s}.pt") for f, s in zip(files, ENSEMBLE_SEEDS))
    wf = load_workflow(WORKFLOW, with_teacher)
    assert [t.name for t in wf.extra_teachers] == [wf.teacher.name] * len(ENSEMBLE_SEEDS) and wf.distillation.losses[0].name == "dist"
    assert "extra_teachers" not in run_overrides({}, "dist_long_ensemble", "labels_only", 0), "the labels-only arm is the dist_long pipeline's"
    assert "extra_teachers" not in run_overrides({}, "dist_long", "teacher", 0)


def test_distill_gain_judges_each_gain_against_twice_the_pooled_seed_sd_as_issue_31_asks():
    from benchmarks.distill_gain import figures

    rows = {"pick/dist_long": {"seeds": [0, 1, 2], "gain_points": 0.85, "teacher_test_accuracy": [0.9175, 0.9112, 0.9156],
                               "labels_only_test_accuracy": [0.9048, 0.9063, 0.9076]},
            "dense/dkd": {"seeds": [0], "gain_points": -1.7, "teacher_test_accuracy": [0.8856], "labels_only_test_accuracy": [0.9026]}}
    by_name = {figure.name: figure for figure in figures({"rows": rows})}
    ratio = by_name["pick/dist_long: gain / pooled seed sd of the two arms"]
    assert ratio.value == pytest.approx(0.85 / 0.2491, rel=1e-3) and ratio.verdict == "pass"  # sds 0.32 and 0.14 pt, pooled 0.25
    assert by_name["pick/dist_long: teacher - labels only (pt, 3 seeds)"].verdict == "FAIL", "0.85 pt is under the 1.0 pt goal"
    assert sorted(by_name) == ["dense/dkd: teacher - labels only (pt, 1 seeds)", "pick/dist_long: gain / pooled seed sd of the two arms",
                               "pick/dist_long: teacher - labels only (pt, 3 seeds)"], "one seed has no spread to judge by"
    rows["pick/dist_long"]["gain_points"] = 0.4
    assert {f.name: f for f in figures({"rows": rows})}["pick/dist_long: gain / pooled seed sd of the two arms"].verdict == "FAIL", "0.4 pt is 1.6 sd"


def test_distill_gain_compares_each_arm_at_the_setup_its_validation_chose_not_an_overfitting_or_unsmoothed_baseline():
    """At 60 epochs the labels-only arm overfits, and label smoothing may help it: the fair gain pits the teacher's best
    setup against labels only at theirs, each chosen on validation, paired by seed on test."""
    from benchmarks.distill_gain import best_setup_gains, best_setup_lines, figures, setup_family

    assert [setup_family(r) for r in ("dist", "dist_long", "dist_longer", "dist_long_ls", "dist_long_a75", "dist_long_ensemble")] == \
        ["dist", "dist", "dist", "dist", "dist_long_a75", "dist_long_ensemble"], "same teachers, loss, T and alpha; only epochs or smoothing differ"
    schedules = {  # (teacher val, teacher test per seed, labels-only val, labels-only test per seed)
        "dist": (0.914, [0.905, 0.906], 0.909, [0.902, 0.903]), "dist_long": (0.922, [0.915, 0.911], 0.916, [0.905, 0.906]),
        "dist_longer": (0.923, [0.916, 0.914], 0.908, [0.900, 0.901])}
    rows = {f"pick/{recipe}": {"seeds": [0, 1], "teacher_val_accuracy": [t_val] * 2, "teacher_test_accuracy": t_test,
                               "labels_only_val_accuracy": [l_val] * 2, "labels_only_test_accuracy": l_test, "gain_points": 0.0}
            for recipe, (t_val, t_test, l_val, l_test) in schedules.items()}
    rows["pick/dist_long_a75"] = {**rows["pick/dist_long"]}
    [(config, family, chosen, gain)] = best_setup_gains(rows)
    assert (config, family, chosen) == ("pick", "dist", ("pick/dist_longer", "pick/dist_long")), "the teacher's 60 epochs against labels only's 30"
    assert gain == pytest.approx([1.1, 0.8]), "paired by seed on test: 91.6 - 90.5, 91.4 - 90.6"
    figure = next(f for f in figures({"rows": rows}) if "own setup" in f.name)
    assert figure.value == pytest.approx(0.95) and figure.verdict == "FAIL", "a compressed student's goal is 1.0 pt"
    rows["pick/dist_long_ls"] = {**rows["pick/dist_long"], "labels_only_val_accuracy": [0.918] * 2, "labels_only_test_accuracy": [0.908, 0.909]}
    [(_, _, chosen, gain)] = best_setup_gains(rows)
    assert chosen == ("pick/dist_longer", "pick/dist_long_ls") and gain == pytest.approx([0.8, 0.5]), "the smoothed baseline won on validation"
    assert "labels only 30 epochs, label smoothing 0.1 (pick/dist_long_ls, val 91.80; next 30 epochs, 91.60)" in best_setup_lines(rows)[0]
    assert "with teacher 60 epochs (pick/dist_longer, val 92.30; next 30 epochs, 92.20)" in best_setup_lines(rows)[0]
    rows["pick/dist"]["seeds"] = [0, 2]
    assert best_setup_gains(rows) == [], "setups measured on other seeds are not paired"


def test_the_distill_gain_page_gives_what_the_extra_teachers_bought_paired_by_seed():
    from benchmarks.distill_gain import ensemble_versus_one_teacher, one_teacher_recipe

    assert one_teacher_recipe("dist_long_ensemble") == "dist_long", "same pipeline and loss, one teacher"
    rows = {"pick/dist_long": {"seeds": [0, 1], "teacher_test_accuracy": [0.915, 0.910], "teacher_val_accuracy": [0.920, 0.922]},
            "pick/dist_long_ensemble": {"seeds": [0, 1], "teacher_test_accuracy": [0.914, 0.915], "teacher_val_accuracy": [0.921, 0.922]},
            "dense/dist_long_ensemble": {"seeds": [0], "teacher_test_accuracy": [0.92], "teacher_val_accuracy": [0.92]}}
    lines = [line for line in ensemble_versus_one_teacher(rows) if line]
    assert lines == ["Ensemble against one teacher, same pipeline and seeds: pick/dist_long_ensemble - pick/dist_long, paired by seed (2 seeds): "
                     "validation (what choosing the number of teachers reads) +0.05 +- 0.07 pt (+0.10, +0.00); "
                     "test (reported) +0.20 +- 0.42 pt (-0.10, +0.50)."], "dense has no one-teacher row to pair with"
    rows["pick/dist_long"]["seeds"] = [0, 2]
    assert ensemble_versus_one_teacher(rows) == [], "other seeds: no pairing"


def test_distill_gain_keeps_the_previous_files_rows_whose_runs_are_not_on_disk_with_their_commits(tmp_path):
    from benchmarks.distill_gain import carried_ensemble, carried_rows, finished_rows, run_key

    run = {metrics.TEST_ACCURACY: 0.9, metrics.BEST_VAL_ACCURACY: 0.9, "seconds": 1.0}
    for arm, accuracy in (("teacher", 0.92), ("labels_only", 0.90)):
        (tmp_path / f"{run_key('pick', 'dist', arm, 0)}.json").write_text(json.dumps({**run, metrics.TEST_ACCURACY: accuracy, "commit": "abc1234"}))
    previous = tmp_path / "previous.json"
    ensemble = {"teacher_test_accuracy": [0.931, 0.930], "averaged_test_accuracy": 0.935}
    previous.write_text(json.dumps({"commit": "0d39ead+dirty", "setting": {"ensemble": ensemble},
                                    "rows": {"pick/dist": {"gain_points": -9.0}, "dense/kd": {"gain_points": 0.1}, "dense/gone": {}}}))
    rows = {**carried_rows(previous), **finished_rows(tmp_path)}
    assert rows["pick/dist"]["gain_points"] == pytest.approx(2.0) and rows["pick/dist"]["commits"] == ["abc1234"], "runs on disk win"
    assert rows["dense/kd"] == {"commits": ["0d39ead+dirty"], "gain_points": 0.1}, "a row measured elsewhere is kept with its commit"
    assert "dense/gone" not in rows, "a recipe no longer defined is dropped"
    assert carried_rows(tmp_path / "missing.json") == {}
    assert carried_ensemble(previous) == ensemble, "an invocation without the ensemble keeps its teachers' line on the page"
    assert carried_ensemble(tmp_path / "missing.json") is None


def test_the_committed_fashion_mnist_teacher_is_the_workflows_teacher_and_is_installed_only_where_nothing_is():
    """A workflow change that retrains the FM teacher fails here: retrain it and recommit the asset with its record."""
    record = json.loads(RECORD.read_text())
    asset = RECORD.parent / record["file"]
    assert hashlib.sha256(asset.read_bytes()).hexdigest() == record["sha256"] and asset.stat().st_size <= 2 * 2**20
    wf = load_workflow(REPO / "workflows" / "fashion_mnist.yaml")
    assert fingerprint(wf.teacher, wf.data, wf.training.seed) == record["fingerprint"]
    assert torch.load(asset, weights_only=False)["test_accuracy"] == record["test_accuracy"] >= 0.93


def test_the_fm_benchmarks_install_the_committed_teacher_only_for_the_workflows_own_teacher(tmp_path, monkeypatch, capsys):
    """An ensemble teacher trained with another seed has its own file: no word about the asset, nothing copied for it."""
    from benchmarks import fashion_mnist
    monkeypatch.setattr(fashion_mnist, "REPO", tmp_path)
    installed = tmp_path / load_workflow(fashion_mnist.WORKFLOW).teacher.checkpoint
    fashion_mnist.bench_workflow(tmp_path / "bench", False, None, {"training.seed": 1, "teacher.checkpoint": str(tmp_path / "seed1.pt")})
    assert capsys.readouterr().out == "" and not installed.exists()
    fashion_mnist.bench_workflow(tmp_path / "bench", False, None)
    assert "copied" in capsys.readouterr().out and installed.read_bytes() == (RECORD.parent / json.loads(RECORD.read_text())["file"]).read_bytes()


def test_installing_the_committed_teacher_copies_it_once_and_never_over_a_file(tmp_path):
    record = json.loads(RECORD.read_text())
    target = tmp_path / "teachers" / "fm.pt"
    assert "trains it" in install_committed_teacher(target, "another-fingerprint") and not target.exists()
    assert "copied" in install_committed_teacher(target, record["fingerprint"])
    assert target.read_bytes() == (RECORD.parent / record["file"]).read_bytes()
    target.write_bytes(b"the user's own teacher")
    assert install_committed_teacher(target, record["fingerprint"]) is None and target.read_bytes() == b"the user's own teacher"
    tampered = tmp_path / "record.json"
    (tmp_path / record["file"]).write_bytes(b"not the teacher")
    tampered.write_text(json.dumps(record))
    with pytest.raises(RuntimeError, match="sha256"):
        install_committed_teacher(tmp_path / "other.pt", record["fingerprint"], tampered)
    assert not (tmp_path / "other.pt").exists()


def test_allocation_front_reads_recorded_sweeps_back_and_refuses_what_it_cannot_run(tmp_path, monkeypatch, capsys):
    """A recorded sweep is read, not rerun (`--space`); `--partial` with one space recorded says so in one line; a
    count below 1 and `--space` beside `--partial` are refused by argparse (exit 2)."""
    from benchmarks import allocation_front

    monkeypatch.setattr(allocation_front, "REPO", tmp_path)
    monkeypatch.setattr(allocation_front, "RESULTS", tmp_path / "results")
    record = {"space": "allocation", "seed": 0, "trials": 2, "epochs": 30, "seconds": 1.0, "accuracy_floor": 0.86,
              "points": [{"trial": 0, allocation_front.ACCURACY: 0.93, allocation_front.COST: 10_000.0, metrics.TEST_ACCURACY: 0.92}],
              "champion": {"trial": 0, allocation_front.ACCURACY: 0.93, allocation_front.COST: 10_000.0}}
    path = allocation_front.sweep_record("allocation", 0, 2, None, False)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(record))
    monkeypatch.setattr(allocation_front, "run_sweep", lambda overrides: pytest.fail("a recorded sweep ran again"))
    assert allocation_front.main(["--trials", "2", "--seeds", "1", "--space", "allocation"]) == {}
    expected = (0.93 - 0.86) * (allocation_front.DENSE_GZIP_BYTES - 10_000) / ((1 - 0.86) * allocation_front.DENSE_GZIP_BYTES)  # the box the point dominates
    assert f"allocation-seed0: recorded at {path} (normalised hypervolume {expected:.4f})" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no seed has both sweeps recorded"):
        allocation_front.main(["--trials", "2", "--seeds", "1", "--partial"])
    for argv in (["--seeds", "0"], ["--trials", "0"], ["--partial", "--space", "uniform"]):
        with pytest.raises(SystemExit) as exited:
            allocation_front.main(argv)
        assert exited.value.code == 2, argv
    # Both spaces recorded, the allocation sweep's points re-tested in ORT: issue 31's figure is the int8 test accuracy
    # of the most accurate point within the budget on validation (trial 1, not the more accurate but larger trial 0).
    record["points"] = [{**record["points"][0], allocation_front.INT8_TEST: 0.921},
                        {"trial": 1, allocation_front.ACCURACY: 0.91, allocation_front.COST: 9_000.0, metrics.TEST_ACCURACY: 0.905, allocation_front.INT8_TEST: 0.907}]
    record["points"][0][allocation_front.COST] = allocation_front.BUDGET_BYTES + 1
    path.write_text(json.dumps(record))
    allocation_front.sweep_record("uniform", 0, 2, None, False).write_text(json.dumps({**record, "space": "uniform"}))
    payload = allocation_front.run(2, [0], None, False)
    assert payload["budget_pick_int8_test"]["per_seed"] == [0.907]
    page = allocation_front.markdown({**payload, "commit": "c", "measured_at": "t", "quick": False})
    assert "trial 1: 91.00% / 90.50% / 90.70% at 9,000 B" in page
    # the ladder: nothing within 3,000-8,000 B; 91.00% within 10,800 B (trial 1), 93.00% within 16,000 B (trial 0); equal sweeps differ by 0
    ladder = allocation_front.budget_ladder(payload["sweeps"])
    assert ladder in page
    rows = {cells[0]: cells[1:] for cells in ([cell.strip() for cell in line.strip("|").split("|")] for line in ladder.splitlines()[2:])}
    assert rows["allocation-seed0"] == rows["uniform-seed0"] == ["-", "-", "-", "-", "91.00", "93.00"]
    assert rows["allocation - uniform, seed 0 (pt)"] == ["-", "-", "-", "-", "+0.00", "+0.00"]
    uniform_lower = {"uniform-seed0": {**record, "space": "uniform", "points": [{**record["points"][1], allocation_front.ACCURACY: 0.905}]},
                     "allocation-seed0": record}
    differences = allocation_front.budget_ladder(uniform_lower).splitlines()[-1]
    assert [cell.strip() for cell in differences.strip("|").split("|")][1:] == ["-", "-", "-", "-", "+0.50", "+2.50"]
    # --partial: the comparison from seed 0 (both spaces recorded), issue 31's figure from both allocation sweeps
    from benchmarks import common

    monkeypatch.setattr(common, "REPO", tmp_path)
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    record["points"][1][allocation_front.INT8_TEST] = 0.913
    allocation_front.sweep_record("allocation", 1, 2, None, False).write_text(json.dumps({**record, "seed": 1}))
    payload = allocation_front.main(["--trials", "2", "--seeds", "3", "--partial"])
    assert payload["setting"]["seeds"] == [0] and payload["budget_pick_int8_test"]["seeds"] == [0, 1]
    assert payload["budget_pick_int8_test"]["per_seed"] == [0.907, 0.913]
    page = (tmp_path / "results" / f"{allocation_front.NAME}.md").read_text()
    assert "int8 ORT test accuracy, mean of 2 seed(s)" in page
    assert "(sampler seeds [0, 1]): 90.70%, 91.30%; mean 91.00% +- 0.42 pt (sd over seeds)." in page


def test_allocation_front_resumes_a_sweep_a_stopped_session_left_on_disk(tmp_path, monkeypatch):
    """No record but the sweep's study on disk (a session stopped mid-sweep): the sweep is resumed, not started again."""
    from benchmarks import allocation_front
    from lepton_ray.config import load_workflow
    from lepton_ray.sweep.paths import sweep_paths

    monkeypatch.setattr(allocation_front, "REPO", tmp_path)
    monkeypatch.setattr(allocation_front, "RESULTS", tmp_path / "results")
    wf = load_workflow(REPO / "workflows" / "fashion_mnist.yaml", {"output_dir": str(tmp_path / "runs")})
    monkeypatch.setattr(allocation_front, "bench_workflow", lambda folder, quick, root, extra: (wf, {}))
    calls = []

    class Stop(Exception):
        pass

    def run_sweep(overrides, resume=False):
        calls.append(resume)
        raise Stop

    monkeypatch.setattr(allocation_front, "run_sweep", run_sweep)
    with pytest.raises(Stop):
        allocation_front.one_sweep("allocation", 0, 2, None, False)  # nothing on disk: a new sweep
    study = sweep_paths(wf, single=False).study
    study.parent.mkdir(parents=True)
    study.touch()  # what a driver stopped mid-sweep leaves
    with pytest.raises(Stop):
        allocation_front.one_sweep("allocation", 0, 2, None, False)
    assert calls == [False, True]
