"""The searcher registry: every sampler runs the sweep's two-objective study; names as a workflow gives them."""

from __future__ import annotations

import warnings

import optuna
import pytest

from lepton_ray import metrics
from lepton_ray.config import SweepConfig
from lepton_ray.errors import ConfigError
from lepton_ray.sweep.samplers import DEFAULT_SEARCHER, SAMPLERS, make_sampler
from lepton_ray.sweep.study import constraint_values, set_constraints

GRID = {
    "student.options.width": [0.25, 0.5, 0.75, 1.0], "compression.channel_pruning.sparsity": [0.0, 0.25, 0.5],
    "compression.pruning.sparsity": [0.0, 0.4, 0.8], "compression.quantization.bits": [4, 5, 6, 7],
}
GRID_SPACE = {
    "student.options.width": optuna.distributions.FloatDistribution(0.25, 1.0, step=0.25),
    "compression.channel_pruning.sparsity": optuna.distributions.FloatDistribution(0.0, 0.5, step=0.25),
    "compression.pruning.sparsity": optuna.distributions.FloatDistribution(0.0, 0.8, step=0.4),
    "compression.quantization.bits": optuna.distributions.IntDistribution(4, 7),
}
"""The grid's values as the distributions `benchmarks/search_efficiency.py` replays it with."""


def objectives(params: dict) -> list[float]:
    """A smooth stand-in: wider and less compressed is more accurate and costs more."""
    kept = params["student.options.width"] * (1 - params["compression.channel_pruning.sparsity"])
    accuracy = 0.6 + 0.3 * kept - 0.05 * params["compression.pruning.sparsity"] ** 2 + 0.005 * params["compression.quantization.bits"]
    return [accuracy, kept * (1 - 0.6 * params["compression.pruning.sparsity"]) * params["compression.quantization.bits"]]


def run_study(cfg: SweepConfig, trials: int) -> list[dict]:
    """`trials` asked and told with two in flight, as a sweep's two concurrent trials, constraints set as `StudySearcher`
    sets them; the params in the order asked."""
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=make_sampler(cfg))
    running, asked = [], []
    for _ in range(trials):
        if len(running) == 2:
            trial = running.pop(0)
            accuracy, cost = objectives(trial.params)
            set_constraints(trial, cfg, {metrics.BEST_VAL_ACCURACY: accuracy, metrics.INT8_GZIP_BYTES: cost})
            study.tell(trial, [accuracy, cost])
        running.append(study.ask(GRID_SPACE))
        asked.append(running[-1].params)
    return asked


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_every_searcher_suggests_grid_values_past_its_random_start_with_trials_running(name):
    asked = run_study(SweepConfig(searcher=name, seed=0, num_samples=8), trials=8)
    assert len(asked) == 8
    for params in asked:
        for path, values in GRID.items():
            assert any(params[path] == pytest.approx(value) for value in values), (path, params[path])


@pytest.mark.parametrize("name", ["gp", "tpe", "tpe_liar4", "nsga2", "random"])
def test_the_same_seed_gives_the_same_suggestions(name):
    cfg = SweepConfig(searcher=name, seed=3, num_samples=12)
    assert run_study(cfg, trials=7) == run_study(cfg, trials=7)


def test_optuna_names_the_default_searcher_and_suggests_what_it_does():
    assert DEFAULT_SEARCHER in SAMPLERS
    assert run_study(SweepConfig(searcher="optuna", seed=1), 7) == run_study(SweepConfig(searcher=DEFAULT_SEARCHER, seed=1), 7)
    assert SweepConfig().searcher == "optuna", "existing workflows keep their searcher"


def test_an_unknown_searcher_is_one_line_naming_the_field_and_the_choices():
    with pytest.raises(ConfigError) as caught:
        make_sampler(SweepConfig(searcher="tpee"))
    message = str(caught.value)
    assert message.startswith("sweep.searcher: unknown searcher 'tpee'; did you mean 'tpe'?")
    assert all(name in message for name in SAMPLERS.names()) and "\n" not in message


def test_the_workflow_check_refuses_an_unknown_searcher_before_anything_runs():
    from lepton_ray.sweep.checks import check_sweep
    from lepton_ray.config import load_workflow

    from conftest import QUICKSTART

    check_sweep(load_workflow(QUICKSTART, {"sweep.searcher": "gp"}), None)
    with pytest.raises(ConfigError, match="sweep.searcher: unknown searcher 'bayes'"):
        check_sweep(load_workflow(QUICKSTART, {"sweep.searcher": "bayes"}), None)


@pytest.mark.parametrize("name", ["tpe", "tpe_liar6", "gp", "nsga2"])
def test_constraints_reach_every_searcher_through_the_trial_without_optunas_deprecation_warning(name):
    """The sweep sets each trial's constraints with `Trial.set_constraint` (Optuna 5), not the deprecated `constraints_func`."""
    cfg = SweepConfig(searcher=name, seed=0, constraints={"int8_gzip_bytes": 1.0}, accuracy_floor=0.8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        study = optuna.create_study(directions=["maximize", "minimize"], sampler=make_sampler(cfg))
        for _ in range(7):
            trial = study.ask(GRID_SPACE)
            accuracy, cost = objectives(trial.params)
            set_constraints(trial, cfg, {metrics.BEST_VAL_ACCURACY: accuracy, metrics.INT8_GZIP_BYTES: cost})
            study.tell(trial, [accuracy, cost])
    for trial in study.trials:
        accuracy, cost = trial.values
        assert trial.constraints == pytest.approx({"int8_gzip_bytes": cost - 1.0, "accuracy_floor": 0.8 - accuracy})


def test_the_accuracy_floor_is_a_constraint_after_the_cost_limits():
    cfg = SweepConfig(constraints={"int8_gzip_bytes": 1000.0}, accuracy_floor=0.8)
    result = {metrics.BEST_VAL_ACCURACY: 0.75, "int8_gzip_bytes": 900.0}
    assert constraint_values(cfg, result) == pytest.approx({"int8_gzip_bytes": -100.0, "accuracy_floor": 0.05}), "under the byte limit, below the floor"
    assert constraint_values(cfg, None) == {"int8_gzip_bytes": 1.0, "accuracy_floor": 1.0}, "a failed trial is infeasible on every constraint"
    assert constraint_values(SweepConfig(accuracy_floor=0.7), result) == pytest.approx({"accuracy_floor": -0.05})
    assert constraint_values(SweepConfig(), result) == {}, "no constraints: the sampler sees an unconstrained study"


@pytest.mark.parametrize("name", ["gp", "tpe"])
def test_a_searcher_given_an_accuracy_floor_spends_its_trials_above_it(name):
    """The floor is what makes the search beat random (`benchmarks/results/search_efficiency.md`): past the random start,
    the sampler asks mostly for students above the floor instead of the cheap, useless end of the front."""
    floor = 0.85

    def above(cfg: SweepConfig) -> int:
        return sum(objectives(params)[0] >= floor for params in run_study(cfg, trials=14)[8:])

    free = [above(SweepConfig(searcher=name, seed=seed, num_samples=14)) for seed in range(2)]  # gp: about 0.3 s an ask
    floored = [above(SweepConfig(searcher=name, seed=seed, num_samples=14, accuracy_floor=floor)) for seed in range(2)]
    assert sum(floored) >= 1.5 * sum(free), (free, floored)


def test_the_default_gp_searcher_runs_its_batched_acquisition_search_with_greenlet():
    """Without greenlet Optuna's GP sampler warns on every sweep and optimises its acquisition sequentially (slower asks)."""
    from optuna._gp import batched_lbfgsb

    assert batched_lbfgsb._greenlet_imports.is_successful()
