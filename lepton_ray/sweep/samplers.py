"""The Optuna samplers a sweep's two-objective study (accuracy up, cost down) can use, by `sweep.searcher` name.

Each factory takes the sampler's seed and the sweep config. `optuna` names the default searcher, so that
workflows written before there was a choice keep working. `benchmarks/search_efficiency.py` compares them
by replaying a measured grid of configurations.
"""

from __future__ import annotations

import warnings
from typing import Callable

import optuna

from lepton_ray.config import SweepConfig
from lepton_ray.registry import Registry

SamplerFactory = Callable[[int, SweepConfig], optuna.samplers.BaseSampler]

SAMPLERS: Registry[SamplerFactory] = Registry("searcher", "sweep.searcher")

DEFAULT_SEARCHER = "gp"
"""What `sweep.searcher: optuna` (the default) means. Chosen from `benchmarks/results/search_efficiency.md`: given
`sweep.accuracy_floor`, gp reached the highest hypervolume of all searchers at 12 and 24 trials, well above random;
without a floor no searcher beat random by more than its spread. Its ask takes 0.2-0.5 s at 24-150 trials (tpe: ms)."""
GP_STARTUP_TRIALS = 5
"""Random trials before the GP models the objectives: a sweep here runs 12-24 trials, not Optuna's 100s."""
NSGA2_POPULATION = 8
"""NSGA-II generation size: 1-3 generations at these budgets (Optuna's default of 50 would stay random)."""


def make_sampler(cfg: SweepConfig, trials_so_far: int = 0) -> optuna.samplers.BaseSampler:
    """Seeded by `sweep.seed` plus the trials the study already holds: a resumed sweep continues the
    sequence instead of replaying the first suggestions (which would re-run configurations)."""
    return SAMPLERS.get(cfg.searcher)(cfg.seed + trials_so_far, cfg)


@SAMPLERS.register("tpe")
def tpe(seed: int, cfg: SweepConfig) -> optuna.samplers.BaseSampler:
    """Multivariate TPE after min(10, max(3, num_samples // 3)) random trials (MOTPE, Ozaki et al. 2020).

    Optuna 5's default constant liar is on here too: it differs from `tpe_liar*` in its startup rule (and `group`)."""
    startup = min(10, max(3, cfg.num_samples // 3))
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, multivariate=True)


def _tpe_liar(startup: int) -> SamplerFactory:
    def factory(seed: int, cfg: SweepConfig) -> optuna.samplers.BaseSampler:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # `group`: chosen knowingly, not news in every sweep's log
            return optuna.samplers.TPESampler(
                seed=seed, n_startup_trials=startup, multivariate=True, group=True, constant_liar=True,
            )

    factory.__doc__ = (f"Multivariate, grouped TPE with the constant liar (running trials count as bad) after {startup} random trials, "
                       "whatever the budget.")
    return factory


for _startup in (4, 6):
    SAMPLERS.register(f"tpe_liar{_startup}")(_tpe_liar(_startup))


@SAMPLERS.register("gp")
def gp(seed: int, cfg: SweepConfig) -> optuna.samplers.BaseSampler:
    """Gaussian-process Bayesian optimisation, log expected hypervolume improvement, after 5 random trials."""
    return optuna.samplers.GPSampler(seed=seed, n_startup_trials=GP_STARTUP_TRIALS)


@SAMPLERS.register("nsga2")
def nsga2(seed: int, cfg: SweepConfig) -> optuna.samplers.BaseSampler:
    """NSGA-II (Deb et al. 2002), a genetic algorithm, in generations of 8 trials."""
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=NSGA2_POPULATION)


@SAMPLERS.register("random")
def random_search(seed: int, cfg: SweepConfig) -> optuna.samplers.BaseSampler:
    """Uniform random search: the baseline every other searcher must beat."""
    return optuna.samplers.RandomSampler(seed=seed)


@SAMPLERS.register("optuna")
def default(seed: int, cfg: SweepConfig) -> optuna.samplers.BaseSampler:
    """The default searcher (`DEFAULT_SEARCHER`: gp); the name workflows used before there was a choice."""
    return SAMPLERS.get(DEFAULT_SEARCHER)(seed, cfg)
