"""BatchNorm re-estimation: the statistics it computes, what it leaves alone, its agreement across
DDP ranks, and a compressed student whose eval-mode accuracy matches its batch-statistics accuracy."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from lepton_ray import metrics
from lepton_ray.compress.quantize import ActivationFQ, QuantizationAwareTraining
from lepton_ray.config import QuantizationConfig
from lepton_ray.data.batches import Batch
from lepton_ray.models.zoo import cnn_small
from lepton_ray.trial.batchnorm import batchnorm_layers, reestimate_batchnorm

EPS = 1e-5


def as_batches(images: torch.Tensor, batch_size: int) -> list[Batch]:
    return [Batch(chunk, torch.zeros(len(chunk), dtype=torch.long), torch.arange(len(chunk))) for chunk in images.split(batch_size)]


def tiny_net() -> nn.Sequential:
    """conv -> BN2d -> ReLU -> pool -> dropout -> linear -> BN1d, with stale statistics and non-trivial affine terms."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5), nn.Linear(3, 4), nn.BatchNorm1d(4),
    )
    for bn in (net[1], net[7]):
        bn.running_mean.fill_(7.0)
        bn.running_var.fill_(9.0)
        bn.num_batches_tracked.fill_(50)  # as after training: a cumulative average that is not reset keeps mostly these
        nn.init.uniform_(bn.weight, 0.5, 2.0)
        nn.init.uniform_(bn.bias, -1.0, 1.0)
    return net


def hand_statistics(net: nn.Sequential, batches: list[Batch]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per BatchNorm: mean over batches of the batch mean and of the unbiased batch variance of its input,
    with the layers before it normalising by batch statistics and dropout off."""
    conv, bn2d, _, _, _, _, linear, bn1d = net
    means, variances = [[], []], [[], []]
    with torch.no_grad():
        for batch in batches:
            conv_out = conv(batch.images)
            means[0].append(conv_out.mean(dim=(0, 2, 3)))
            variances[0].append(conv_out.var(dim=(0, 2, 3), unbiased=True))
            normalised = (conv_out - conv_out.mean(dim=(0, 2, 3), keepdim=True)) / (conv_out.var(dim=(0, 2, 3), unbiased=False, keepdim=True) + EPS).sqrt()
            hidden = F.relu(normalised * bn2d.weight[:, None, None] + bn2d.bias[:, None, None]).mean(dim=(2, 3))
            linear_out = linear(hidden)
            means[1].append(linear_out.mean(dim=0))
            variances[1].append(linear_out.var(dim=0, unbiased=True))
    return [(torch.stack(m).mean(dim=0), torch.stack(v).mean(dim=0)) for m, v in zip(means, variances)]


@pytest.mark.parametrize("training", [True, False])
def test_reestimated_statistics_equal_the_average_over_the_batches_seen_and_nothing_else_changes(training):
    net = tiny_net().train(training)
    images = torch.randn(40, 2, 6, 6) * 3 + 1
    batches = as_batches(images, 8)
    parameters = copy.deepcopy([p.detach() for p in net.parameters()])
    seen = reestimate_batchnorm(net, batches, max_samples=20)
    assert seen == 24, "whole batches until the budget is reached: 3 of 5"
    for bn, (mean, variance) in zip((net[1], net[7]), hand_statistics(net, batches[:3])):
        torch.testing.assert_close(bn.running_mean, mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(bn.running_var, variance, rtol=1e-5, atol=1e-5)
        assert bn.momentum == 0.1 and int(bn.num_batches_tracked) == 3
    assert all(module.training == training for module in net.modules())
    assert all(torch.equal(before, after) for before, after in zip(parameters, net.parameters()))


def test_a_model_without_batchnorm_or_without_batches_is_left_alone():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(8, 4))
    assert reestimate_batchnorm(mlp, iter(()), max_samples=10) == 0
    assert reestimate_batchnorm(mlp, as_batches(torch.randn(4, 2, 2, 2), 2)) == 0
    net = tiny_net()
    assert reestimate_batchnorm(net, []) == 0
    assert float(net[1].running_mean[0]) == 7.0


def test_activation_fake_quant_ranges_are_unchanged_by_the_reestimation_pass():
    torch.manual_seed(0)
    student = cnn_small((3, 8, 8), 10)
    qat = QuantizationAwareTraining(QuantizationConfig(bits=4), epochs=3)
    student = qat.prepare(student, torch.randn(2, 3, 8, 8))
    qat.on_epoch_start(student, 2)
    student.train()
    with torch.no_grad():
        student(torch.randn(16, 3, 8, 8))
    observers = [module for module in student.modules() if isinstance(module, ActivationFQ)]
    ranges = [(observer.min_val.clone(), observer.max_val.clone()) for observer in observers]
    assert observers and all(torch.isfinite(high) for _, high in ranges)
    statistics = [bn.running_var.clone() for bn in batchnorm_layers(student)]
    reestimate_batchnorm(student, as_batches(torch.randn(64, 3, 8, 8) * 5 + 3, 16))  # far wider than what the observers saw
    assert not all(torch.equal(before, bn.running_var) for before, bn in zip(statistics, batchnorm_layers(student)))
    for observer, (low, high) in zip(observers, ranges):
        assert torch.equal(observer.min_val, low) and torch.equal(observer.max_val, high)
    assert all(observer.training for observer in observers), "modes restored"


def _rank_reestimates(rank: int, world_size: int, folder: str, rank_without_batches: int = -1) -> None:
    """One of two gloo ranks: its own half of the images (none on `rank_without_batches`), the student wrapped in DDP as the trial wraps it."""
    dist.init_process_group("gloo", init_method=f"file://{folder}/init", rank=rank, world_size=world_size)
    try:
        torch.set_num_threads(1)
        net = nn.parallel.DistributedDataParallel(tiny_net())
        images = torch.randn(2, 24, 2, 6, 6, generator=torch.Generator().manual_seed(1)) * 3 + 1
        reestimate_batchnorm(net, [] if rank == rank_without_batches else as_batches(images[rank], 8))
        buffers = {name: tensor for name, tensor in net.module.state_dict().items() if "running" in name or "tracked" in name}
        torch.save(buffers, f"{folder}/rank{rank}.pt")
        dist.barrier()  # tear down together: a rank leaving while gloo still talks to it aborted (SIGABRT) under load
    finally:
        dist.destroy_process_group()


def test_under_two_ranks_the_batchnorm_buffers_are_identical_and_average_both_shards(tmp_path):
    mp.spawn(_rank_reestimates, args=(2, str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(2)]
    assert ranks[0].keys() == ranks[1].keys() and len(ranks[0]) == 6
    for name in ranks[0]:
        assert torch.equal(ranks[0][name], ranks[1][name]), name
    images = torch.randn(2, 24, 2, 6, 6, generator=torch.Generator().manual_seed(1)) * 3 + 1
    both_shards = tiny_net()
    expected = hand_statistics(both_shards, as_batches(images[0], 8) + as_batches(images[1], 8))
    for prefix, (mean, variance) in zip(("1", "7"), expected):
        torch.testing.assert_close(ranks[0][f"{prefix}.running_mean"], mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ranks[0][f"{prefix}.running_var"], variance, rtol=1e-5, atol=1e-5)


def test_a_rank_without_batches_joins_the_average_and_takes_the_other_ranks_statistics(tmp_path):
    """A shard can run dry (fewer batches than ranks): that rank must still join the all-reduce, or the others hang."""
    mp.spawn(_rank_reestimates, args=(2, str(tmp_path), 1), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(2)]
    images = torch.randn(2, 24, 2, 6, 6, generator=torch.Generator().manual_seed(1)) * 3 + 1
    expected = hand_statistics(tiny_net(), as_batches(images[0], 8))
    for prefix, (mean, variance) in zip(("1", "7"), expected):
        for rank in ranks:
            torch.testing.assert_close(rank[f"{prefix}.running_mean"], mean, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(rank[f"{prefix}.running_var"], variance, rtol=1e-5, atol=1e-5)


# ---- in the trial loop ------------------------------------------------------------------------

def _compressed_trial(tmp_path, epochs: int) -> tuple[dict, list[dict]]:
    """A cnn_small student (3 BatchNorm layers) through channel pruning + low-rank + 4-bit QAT, in-process.

    Large batches and a high learning rate leave the training-time running averages well behind the
    weights (5-8 pt of test accuracy lost without re-estimation)."""
    from lepton_ray.config import load_workflow
    from lepton_ray.data.datasets import build_data
    from lepton_ray.models.saved import model_payload
    from lepton_ray.trial.loop import run_trial
    from lepton_ray.trial.sessions import InProcessSession

    from conftest import QUICKSTART

    wf = load_workflow(QUICKSTART, {
        "data.name": "synthetic", "data.options": {"num_samples": 1500, "image_size": 8, "channels": 3},
        "teacher.name": "cnn_small", "student.options": {"channels": [16, 32, 64]}, "distillation.alpha": 0.0,
        "compression.channel_pruning.sparsity": 0.5, "compression.low_rank.rank_ratio": 0.5, "compression.quantization.bits": 4,
        "training.epochs": epochs, "training.lr": 0.03, "training.batch_size": 128, "resources.num_workers": 1,
    })
    data = build_data(wf.data)
    teacher = cnn_small(data.input_shape, data.num_classes)
    config = {"workflow": wf.to_dict(), "teachers": [model_payload(teacher, "cnn_small", {}, data)], "data": data, "teacher_cache": None}
    reports: list[dict] = []
    run_trial(config, InProcessSession(tmp_path, reports.append, torch.device("cpu")))
    return config, reports


def _test_accuracy(model: nn.Module, test_set, batch_statistics: bool) -> float:
    """Accuracy in eval mode, or with every BatchNorm normalising by the statistics of the test split itself."""
    model = copy.deepcopy(model).eval()
    for bn in batchnorm_layers(model) if batch_statistics else []:
        bn.train()
    images, labels = test_set.tensors[:2]
    with torch.no_grad():
        return (model(images).argmax(dim=-1) == labels).float().mean().item()


def test_a_pruned_low_rank_qat_student_scores_in_eval_mode_what_it_scores_with_batch_statistics(tmp_path):
    """Both the test accuracy a trial reports and the student it ships lose at most 1 pt to batch statistics."""
    from pathlib import Path

    from lepton_ray.checkpoints import load_safe
    from lepton_ray.config import parse_workflow
    from lepton_ray.trial.files import STUDENT_FILE, load_student
    from lepton_ray.trial.sessions import CHECKPOINT_PATH_KEY

    torch.set_num_threads(1)
    config, reports = _compressed_trial(tmp_path, epochs=3)
    shipped = load_student(parse_workflow(config["workflow"]), load_safe(Path(reports[-1][CHECKPOINT_PATH_KEY]) / STUDENT_FILE))
    test_set = config["data"].test
    with_batch_statistics = _test_accuracy(shipped, test_set, batch_statistics=True)
    assert with_batch_statistics > 0.8, "the student learnt the task"
    assert reports[-1][metrics.TEST_ACCURACY] >= with_batch_statistics - 0.01, (reports[-1][metrics.TEST_ACCURACY], with_batch_statistics)
    assert _test_accuracy(shipped, test_set, batch_statistics=False) >= with_batch_statistics - 0.01


def recording(events: list[tuple[str, int]], name: str, real):
    """`real`, logging (name, id of the plain module it was given first) on each call."""
    from lepton_ray.models.features import unwrap

    def call(*args, **kwargs):
        events.append((name, id(unwrap(args[0]))))
        return real(*args, **kwargs)

    return call


def test_the_trial_reestimates_after_set_up_before_each_evaluation_that_may_pick_best_and_on_the_finalized_student(tmp_path, monkeypatch):
    """Three epochs, QAT from the last third: epochs 1 and 2 cannot become `best` (their compression is not
    final), so their validation reads the running statistics; epoch 3's is re-estimated, and so is the finalized copy."""
    from lepton_ray.trial import loop

    events: list[tuple[str, int]] = []
    for name in ("reestimate_batchnorm", "train_epoch", "evaluate", "static_cost", "packed_size_bytes"):
        monkeypatch.setattr(loop, name, recording(events, name, getattr(loop, name)))
    _, reports = _compressed_trial(tmp_path, epochs=3)
    student = events[0][1]
    planned = next(i for i, (name, _) in enumerate(events) if name == "packed_size_bytes")
    assert planned == 1 and events.pop(planned)[1] != student, "planned_size_bytes: costed on a copy at set-up, the student untouched"
    assert [name for name, _ in events] == [
        "reestimate_batchnorm",  # after the structural steps, before training
        "train_epoch", "evaluate", "train_epoch", "evaluate",  # QAT not on yet: these epochs cannot be `best`
        "train_epoch", "reestimate_batchnorm", "evaluate",  # final compression: this validation may pick `best`
        "reestimate_batchnorm", "evaluate", "static_cost",  # the finalized copy: re-estimated, tested, costed
    ]
    assert all(module == student for _, module in events[:8])
    finalized = events[-1][1]
    assert finalized != student and events[-3][1] == events[-2][1] == finalized, "the test figure and the costs are of the finalized copy"
    final = reports[-1]
    assert 0 < final[metrics.REESTIMATE_S] and 0 < final[metrics.FINISH_S] and final[metrics.REESTIMATE_S] + final[metrics.FINISH_S] < final[metrics.COMPUTE_S]
    assert metrics.LATENCY_MS not in final, "the sweep's cost is gzip bytes: no latency rounds in the trial"


def test_teacher_training_reestimates_before_each_validation(monkeypatch):
    from lepton_ray.config import DataConfig, TeacherConfig
    from lepton_ray.data.datasets import build_data
    from lepton_ray.trial import teacher

    events: list[tuple[str, int]] = []
    for name in ("reestimate_batchnorm", "evaluate"):
        monkeypatch.setattr(teacher, name, recording(events, name, getattr(teacher, name)))
    data = build_data(DataConfig(name="synthetic", options={"num_samples": 200}))
    teacher.train_teacher(TeacherConfig(name="cnn_small", train={"epochs": 2}), data, seed=0, fingerprint_value="f")
    names = [name for name, _ in events]
    assert names == ["reestimate_batchnorm", "evaluate"] * 2 + ["evaluate"], "the test evaluation loads best-val weights, re-estimated with them"
