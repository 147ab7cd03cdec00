"""The trial loop: real DDP sharding and sync, and distillation that beats hard labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lepton_ray.checkpoints import load_safe
from lepton_ray.config import ModelSpec, load_workflow
from lepton_ray.data.datasets import build_data
from lepton_ray.models.zoo import build_model
from lepton_ray.data.batches import iterate_batches, train_indices
from lepton_ray.models.saved import load_teacher_module
from lepton_ray.trial.epoch import Precision, build_optimizer, epoch_lr, evaluate, train_epoch
from lepton_ray.trial.loop import build_objective

from conftest import QUICKSTART

CPU = torch.device("cpu")


def test_train_indices_are_disjoint_equal_shards_that_reshuffle_each_epoch(monkeypatch):
    shards = []
    for rank in range(3):
        monkeypatch.setattr("lepton_ray.data.batches.world", lambda rank=rank: (rank, 3))
        shards.append(train_indices(100, epoch=0, seed=1))
    assert [len(s) for s in shards] == [33, 33, 33]
    assert len(set().union(*map(set, shards))) == 99
    monkeypatch.setattr("lepton_ray.data.batches.world", lambda: (0, 3))
    assert train_indices(100, epoch=1, seed=1) != shards[0]


FEATURE_LOSSES = [
    {"name": "kd", "weight": 1.0},
    {"name": "hint", "weight": 1.0, "options": {"student_layer": "features.1", "teacher_layer": "features.1"}},
    {"name": "attention", "weight": 1.0, "options": {"pairs": ["features.0:features.0"]}},
]


def _ddp_probe(config: dict) -> None:
    """Ray Train worker: one optimizer step of the real set-up and loop (kd + hint with its adapter + attention
    transfer, live teacher) on this rank's shard, then dump what it saw."""
    import ray.train
    import ray.train.torch

    from lepton_ray.data.batches import world
    from lepton_ray.trial.loop import set_up_student

    torch.set_num_threads(1)
    wf = load_workflow(QUICKSTART, {
        "data.name": "synthetic", "student.options": {"channels": [8, 16]}, "distillation.losses": FEATURE_LOSSES, "training.optimizer": "sgd",
    })
    data = build_data(wf.data)
    torch.manual_seed(0)
    teacher = build_model(ModelSpec(name="cnn_small"), data.input_shape, data.num_classes).eval()
    rank, world_size = world()
    indices = train_indices(len(data.train), epoch=0, seed=0)
    model, _, objective, optimizer, precision = set_up_student(wf, data, [teacher], ray.train.torch.prepare_model, CPU)
    assert isinstance(model, torch.nn.parallel.DistributedDataParallel) and len(list(objective.parameters())) > 0

    def flat(module):
        return torch.cat([p.detach().flatten().clone() for p in module.parameters()]).tolist()

    before, adapters_before = flat(model), flat(objective)
    train_epoch(model, [teacher], objective, iterate_batches(data.train, indices[:32], 32, CPU), optimizer, precision)
    record = {"rank": rank, "world": world_size, "indices": indices, "before": before, "after": flat(model),
              "adapters_before": adapters_before, "adapters_after": flat(objective)}
    Path(config["out"], f"rank{rank}.json").write_text(json.dumps(record))
    ray.train.report({"done": 1})


@pytest.mark.ray
def test_ddp_ranks_see_disjoint_shards_and_end_a_step_with_identical_parameters_and_adapters(ray_session, tmp_path):
    """Real 2-worker DDP with feature losses: hooks on the DDP-wrapped student, adapters averaged across ranks."""
    import sys

    from ray import cloudpickle
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/ modules by name
    TorchTrainer(
        _ddp_probe,
        train_loop_config={"out": str(tmp_path)},
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.49}),
        run_config=RunConfig(name="ddp-probe", storage_path=str(tmp_path / "ray")),
    ).fit()
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert not set(ranks[0]["indices"]) & set(ranks[1]["indices"])
    for before, after in (("before", "after"), ("adapters_before", "adapters_after")):
        assert ranks[0][before] == ranks[1][before]
        assert ranks[0][after] != ranks[0][before], f"no optimizer step happened ({after})"
        np.testing.assert_allclose(ranks[0][after], ranks[1][after], rtol=0, atol=1e-6)


def _train_student(teacher, alpha: float, seed: int, label_fraction: float) -> float:
    wf = load_workflow(QUICKSTART, {"distillation.alpha": alpha, "data.label_fraction": label_fraction, "training.seed": seed})
    data = build_data(wf.data)
    torch.manual_seed(seed)
    student = build_model(wf.student, data.input_shape, data.num_classes)
    objective = build_objective(wf, student, [teacher] if alpha > 0 else [], data.train.tensors[0][:2])
    optimizer = build_optimizer(wf.training, list(student.parameters()))
    for epoch in range(wf.training.epochs):
        batches = iterate_batches(data.train, train_indices(len(data.train), epoch, seed), 16, CPU)
        train_epoch(student, [teacher] if alpha > 0 else [], objective, batches, optimizer, Precision("fp32", CPU))
    return evaluate(student, data.test, 256, CPU)[0]


def test_distillation_from_a_good_teacher_beats_hard_labels_alone_over_seeds(teacher_checkpoint):
    """Few labels (8% of train labeled, the rest an unlabeled transfer set), same student, data, seeds, epochs."""
    torch.set_num_threads(1)
    teacher = load_teacher_module(load_safe(teacher_checkpoint))
    seeds = [0, 1, 2]
    distilled = [_train_student(teacher, 0.9, seed, 0.08) for seed in seeds]
    hard_only = [_train_student(teacher, 0.0, seed, 0.08) for seed in seeds]
    assert np.mean(distilled) - np.mean(hard_only) > 0.10, (distilled, hard_only)
    assert min(distilled) > max(hard_only), (distilled, hard_only)


def test_cosine_lr_schedule_decays_from_the_base_rate_to_near_zero_and_constant_stays():
    rates = [epoch_lr(0.01, "cosine", epoch, 6) for epoch in range(6)]
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert rates[0] > 0.0095 and rates[-1] < 0.0005
    assert [epoch_lr(0.01, "constant", epoch, 6) for epoch in range(6)] == [0.01] * 6


def test_a_trial_trains_each_epoch_at_its_scheduled_rate(tmp_path):
    from lepton_ray.trial.loop import run_trial
    from lepton_ray.trial.sessions import InProcessSession

    wf = load_workflow(QUICKSTART, {"training.epochs": 3, "training.lr_schedule": "cosine", "distillation.alpha": 0.0, "compression": {},
                                    "output_dir": str(tmp_path)})
    rates: list[float] = []  # read from each epoch's checkpoint when it is reported (older ones are pruned)

    def on_report(report: dict) -> None:
        rates.append(load_safe(Path(report["checkpoint_path"]) / "trial_state.pt")["optimizer"]["param_groups"][0]["lr"])

    run_trial({"workflow": wf.to_dict(), "teachers": [], "data": build_data(wf.data), "teacher_cache": None}, InProcessSession(tmp_path, on_report, CPU))
    assert rates == pytest.approx([epoch_lr(wf.training.lr, "cosine", epoch, 3) for epoch in range(3)])


@pytest.mark.parametrize(("cpus", "threads"), [(0.49, 1), (1.0, 1), (2.0, 2), (2.9, 2)])
def test_a_cpu_trial_trains_with_as_many_torch_threads_as_cpus_it_was_given(tmp_path, cpus, threads):
    """Rounded down, at least 1: what Ray reserved for the worker, no more (cores beyond it are other trials')."""
    from lepton_ray.trial.loop import run_trial
    from lepton_ray.trial.sessions import InProcessSession

    wf = load_workflow(QUICKSTART, {"training.epochs": 1, "distillation.alpha": 0.0, "compression": {}, "output_dir": str(tmp_path),
                                    "resources.cpus_per_worker": cpus})
    seen: list[int] = []
    before = torch.get_num_threads()
    try:
        run_trial({"workflow": wf.to_dict(), "teachers": [], "data": build_data(wf.data), "teacher_cache": None},
                  InProcessSession(tmp_path, lambda report: seen.append(torch.get_num_threads()), CPU))
    finally:
        torch.set_num_threads(before)
    assert seen == [threads]


def test_channels_last_weights_and_a_fused_optimizer_train_and_ship_the_same_student(tmp_path):
    """The speed knobs change kernels, not the model: a 4-bit, half-pruned student trains to the same accuracy
    within a point or two, its conv weights really are channels_last, and its int8 file matches the trial."""
    from lepton_ray.trial.loop import run_trial, set_up_student
    from lepton_ray.trial.sessions import InProcessSession

    finals = {}
    for knobs in (False, True):
        wf = load_workflow(QUICKSTART, {"training.epochs": 3, "distillation.alpha": 0.0, "output_dir": str(tmp_path),
                                        "compression": {"quantization": {"bits": 4}, "pruning": {"sparsity": 0.5}},
                                        "training.channels_last": knobs, "training.fused_optimizer": knobs})
        data = build_data(wf.data)
        student, _, _, optimizer, _ = set_up_student(wf, data, [], lambda model: model, CPU)
        trained = [conv.parametrizations.weight.original for conv in student.modules() if isinstance(conv, torch.nn.Conv2d) and conv.in_channels > 1]
        assert trained and all(weight.stride(1) == 1 for weight in trained) == knobs  # channels innermost: NHWC
        assert bool(optimizer.defaults["fused"]) == knobs
        reports: list[dict] = []
        run_trial({"workflow": wf.to_dict(), "teachers": [], "data": data, "teacher_cache": None}, InProcessSession(tmp_path / str(knobs), reports.append, CPU))
        finals[knobs] = reports[-1]
    assert finals[True]["test_accuracy"] > 0.85
    assert abs(finals[True]["test_accuracy"] - finals[False]["test_accuracy"]) <= 0.03
    assert abs(finals[True]["int8_val_accuracy"] - finals[True]["best_val_accuracy"]) <= 0.01


class _ViewsAConvOutput(torch.nn.Module):
    """A student whose forward `.view`s a conv output: it cannot run on channels_last weights."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = torch.nn.Conv2d(1, 4, 3), torch.nn.Linear(4 * 6 * 6, 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.conv(images)
        return self.head(features.view(features.shape[0], -1))


def test_unset_channels_last_is_on_for_a_conv_student_and_off_for_a_student_that_cannot_run_it():
    from lepton_ray.config import TrainingConfig
    from lepton_ray.trial.epoch import memory_format

    example = torch.randn(2, 1, 8, 8)
    unset = TrainingConfig()
    assert unset.channels_last is None and unset.fused_optimizer
    conv_student = build_model(load_workflow(QUICKSTART).student, (1, 8, 8), 10)
    assert memory_format(unset, conv_student, example) == torch.channels_last
    assert memory_format(TrainingConfig(channels_last=False), conv_student, example) == torch.contiguous_format
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    assert memory_format(unset, mlp, example) == torch.contiguous_format, "no conv weights: nothing to lay out"
    viewer = _ViewsAConvOutput()
    with pytest.raises(RuntimeError):
        viewer.to(memory_format=torch.channels_last)(example)
    viewer = _ViewsAConvOutput()
    assert memory_format(unset, viewer, example) == torch.contiguous_format
    assert next(viewer.parameters()).is_contiguous(), "the probe ran on a copy"
    assert memory_format(TrainingConfig(channels_last=True), viewer, example) == torch.channels_last, "asked for: validate refuses it first"


@pytest.mark.parametrize(("amx", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_precision_is_bf16_on_a_cpu_with_amx_tiles_and_fp32_elsewhere_and_an_explicit_choice_stands(monkeypatch, amx, expected):
    from lepton_ray.trial.epoch import Precision, resolve_precision

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert resolve_precision("auto", CPU) == expected
    assert Precision("auto", CPU).name == expected
    assert (Precision("auto", CPU).autocast().__class__ is torch.autocast) == (expected == "bf16")
    assert resolve_precision("fp32", CPU) == "fp32" and resolve_precision("bf16", CPU) == "bf16"
    assert load_workflow(QUICKSTART).training.precision == "auto", "the shipped default"


def test_the_losses_read_fp32_logits_under_bf16_autocast():
    """A bf16 forward, an fp32 loss: what the objective receives is fp32 whatever the forward's dtype."""
    from lepton_ray.distill.losses import DistillationObjective
    from lepton_ray.config import DistillationConfig
    from lepton_ray.data.batches import Batch

    seen = []

    class Spy(DistillationObjective):
        def forward(self, inputs):
            seen.append((inputs.student_logits.dtype, [t.dtype for t in inputs.teacher_logits]))
            return super().forward(inputs)

    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    objective = Spy(DistillationConfig(alpha=0.5), uses_teacher=True)
    batch = Batch(torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,)), torch.arange(8))
    loss = train_epoch(student, [teacher], objective, [batch], torch.optim.SGD(student.parameters(), lr=0.1), Precision("bf16", CPU))
    assert seen == [(torch.float32, [torch.float32])] and np.isfinite(loss)
