"""plain_loop: a lepton-ray training epoch against a 20-line plain PyTorch loop, side by side in one run.

    .venv/bin/python -m benchmarks.plain_loop [--quick]

Fashion-MNIST workflow (`workflows/fashion_mnist.yaml`): its student, batch, optimizer and loss (DIST), on the
sweep's teacher cache (the same cached logits for both), one thread, the first `TRAIN_SAMPLES` training images
(more rounds of shorter epochs: a steadier median). `ours` is the trial's own epoch
(`benchmarks.common.StudentRun`: compression hook, batches, `trial.epoch.train_epoch`); `plain` indexes the
in-memory tensors and the logits table directly. Epochs alternate (ours, plain, variants, ...), so every arm
sees the same machine load; medians over the rounds after a warm-up. Both start from the same weights and
visit the same order, and the first epoch's mean losses are compared to show they do the same work.

`ours` is the workflow as it ships: `training.channels_last` and `training.fused_optimizer` on by default, and
`training.precision: auto` (bf16 autocast on a CPU with AMX tiles) (issue 32); `ours-off` turns them off (fp32), as
the defaults were before. The plain loop runs with the same two (`plain+fast`),
without (`plain`), and with each alone, so what each buys is seen and each of ours is compared with the plain
loop on the same kernels. (`torch.compile` was tried on this student on CPU: 175 s to compile, 0.995x the eager
step time; it is not offered.)
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from benchmarks.common import REPO, Figure, StudentRun, figures_table, first_training_images, write_result
from lepton_ray.config import WorkflowConfig, load_workflow
from lepton_ray.data.splits import DataSplits
from lepton_ray.data.batches import train_indices
from lepton_ray.data.datasets import build_data
from lepton_ray.trial.epoch import epoch_lr, resolve_precision, set_lr
from lepton_ray.trial.teacher import prepare_teachers
from lepton_ray.trial.trainer import sweep_teacher_cache

NAME = "plain_loop"
WORKFLOW = REPO / "workflows" / "fashion_mnist.yaml"
ROUNDS, QUICK_ROUNDS = 6, 1
TRAIN_SAMPLES, QUICK_SAMPLES = 20_000, 4_000


def correlation(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
    a, b = a - a.mean(dim, keepdim=True), b - b.mean(dim, keepdim=True)
    return (a * b).sum(dim) / (a.norm(dim=dim) * b.norm(dim=dim) + 1e-8)


def plain_epoch(student, optimizer, images, labels, teacher_logits, order, batch_size, temperature, alpha, memory_format, bf16=False) -> float:
    """The reference: the workflow's loss (DIST, beta = gamma = 1) on cached logits over in-memory tensors, nothing else;
    `bf16`: the forward under bf16 autocast, as `training.precision` bf16 runs it."""
    student.train()
    loss_sum = 0.0
    for positions in order.split(batch_size):
        x = images[positions].contiguous(memory_format=memory_format)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = student(x)
        logits = logits.float()
        ys, yt = F.softmax(logits / temperature, -1), F.softmax(teacher_logits[positions] / temperature, -1)
        dist = temperature**2 * ((1 - correlation(ys, yt, 1).mean()) + (1 - correlation(ys, yt, 0).mean()))
        loss = (1 - alpha) * F.cross_entropy(logits, labels[positions]) + alpha * dist
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.item() * len(positions)
    return loss_sum / len(order)


class PlainRun:
    """A copy of the trial's initial student, trained by `plain_epoch` with its own optimizer."""

    def __init__(self, ours: StudentRun, teacher_logits: torch.Tensor, fused: bool = False, channels_last: bool = False, bf16: bool = False) -> None:
        wf = ours.wf
        self.wf, self.teacher_logits, self.bf16 = wf, teacher_logits, bf16
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.student = copy.deepcopy(ours.student).to(memory_format=self.memory_format)
        self.optimizer = torch.optim.Adam(self.student.parameters(), lr=wf.training.lr, weight_decay=wf.training.weight_decay, fused=fused or None)
        self.images, self.labels = ours.data.train.tensors[:2]

    def train_epoch(self, epoch: int) -> float:
        training = self.wf.training
        set_lr(self.optimizer, epoch_lr(training.lr, training.lr_schedule, epoch, training.epochs))
        order = torch.as_tensor(train_indices(len(self.labels), epoch, training.seed))
        return plain_epoch(self.student, self.optimizer, self.images, self.labels, self.teacher_logits, order, training.batch_size,
                           self.wf.distillation.temperature, self.wf.distillation.alpha, self.memory_format, self.bf16)


def ours_epoch(run: StudentRun) -> Callable[[int], float]:
    """The trial's epoch, at the rate the trial's schedule gives that epoch."""
    def train_epoch(epoch: int) -> float:
        training = run.wf.training
        set_lr(run.optimizer, epoch_lr(training.lr, training.lr_schedule, epoch, training.epochs))
        return run.train_epoch(epoch)
    return train_epoch


def timed(train_epoch: Callable[[int], float], epoch: int) -> tuple[float, float]:
    started = time.perf_counter()
    loss = train_epoch(epoch)
    return time.perf_counter() - started, loss


@dataclass
class Arms:
    """The Fashion-MNIST workflow, its (possibly subsampled) splits, and one epoch function per arm."""

    wf: WorkflowConfig
    data: DataSplits
    epochs: dict[str, Callable[[int], float]]


BF16 = resolve_precision("auto", torch.device("cpu")) == "bf16"
"""Whether the workflow's default precision (auto) trains in bf16 on this CPU (AMX); the plain loop then does too."""
PLAIN_OPTIONS = {"plain": {}, "plain+fast": {"channels_last": True, "fused": True, "bf16": BF16}, "plain+channels_last": {"channels_last": True},
                 "plain+fused_adam": {"fused": True}, "plain+bf16": {"bf16": True}, "plain+channels_last+bf16": {"channels_last": True, "bf16": True}}


def fashion_mnist_arms(folder: Path, train_samples: int | None, plain_arms: tuple[str, ...] = tuple(PLAIN_OPTIONS)) -> Arms:
    """`ours` and `ours-off` (the trial's epoch with the workflow's defaults and with the speed knobs off) and the
    chosen plain-loop arms, all from the same initial student, on the sweep's teacher cache; the first `train_samples` training images."""
    torch.set_num_threads(1)
    wf = load_workflow(WORKFLOW, {"output_dir": str(folder), "teacher.checkpoint": str(REPO / "runs" / "teachers" / "fashion_mnist_cnn_large_aug.pt")})
    if [(loss.name, loss.weight, loss.options) for loss in wf.distillation.losses] != [("dist", 1.0, {})]:
        raise SystemExit("plain_loop: plain_epoch computes DIST (beta = gamma = 1, weight 1), and the workflow's losses changed; update plain_epoch")
    data = build_data(wf.data)
    if train_samples:
        data = first_training_images(data, train_samples)
    cache, _ = sweep_teacher_cache(wf, prepare_teachers(wf, data, log=lambda _: None), data, folder)
    teacher_logits = cache.logits[0][0]  # view 0: the students train unaugmented
    ours = StudentRun(wf, data, cache)
    off_wf = wf.model_copy(update={"training": wf.training.model_copy(update={"channels_last": False, "fused_optimizer": False, "precision": "fp32"})})
    epochs = {"ours": ours_epoch(ours), "ours-off": ours_epoch(StudentRun(off_wf, data, cache))}
    epochs |= {name: PlainRun(ours, teacher_logits, **PLAIN_OPTIONS[name]).train_epoch for name in plain_arms}
    return Arms(wf, data, epochs)


def time_rounds(arms: Arms, rounds: int, between: Callable[[], None] = lambda: None) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Seconds of every arm's epoch in each round (arms alternate; `between` runs after each round), and each arm's
    mean loss in epoch 0, the warm-up round, which is not timed."""
    seconds: dict[str, list[float]] = {name: [] for name in arms.epochs}
    first_losses: dict[str, float] = {}
    for epoch in range(rounds + 1):
        for name, train_epoch in arms.epochs.items():
            elapsed, loss = timed(train_epoch, epoch)
            if epoch == 0:
                first_losses[name] = loss
            else:
                seconds[name].append(elapsed)
        between()
    return seconds, first_losses


def run(rounds: int, quick: bool, folder: Path) -> dict[str, Any]:
    arms = fashion_mnist_arms(folder, QUICK_SAMPLES if quick else TRAIN_SAMPLES)
    wf, data = arms.wf, arms.data
    seconds, first_losses = time_rounds(arms, rounds)
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    return {
        "setting": {
            "workflow": "workflows/fashion_mnist.yaml", "student": wf.student.model_dump(), "train_samples": len(data.train),
            "batch_size": wf.training.batch_size, "optimizer": wf.training.optimizer, "torch_threads": 1, "rounds": rounds,
            "default_precision": resolve_precision(wf.training.precision, torch.device("cpu")),
        },
        "epoch_seconds": seconds, "epoch_seconds_median": medians, "first_epoch_mean_loss": first_losses,
        "ours_over_plain_fast": medians["ours"] / medians["plain+fast"],
        "ours_off_over_plain": medians["ours-off"] / medians["plain"],
        "ours_over_ours_off": medians["ours"] / medians["ours-off"],
        "variants_over_plain": {name: medians[name] / medians["plain"] for name in medians if name.startswith("plain+")},
        "first_epoch_loss_difference": max(abs(first_losses["ours"] - first_losses["plain+fast"]), abs(first_losses["ours-off"] - first_losses["plain"])),
    }


def figures(payload: dict[str, Any]) -> list[Figure]:
    return [
        Figure(NAME, "lepton-ray epoch (defaults: channels_last + fused + precision auto) / plain PyTorch loop with the same, FM, 1 thread",
               payload["ours_over_plain_fast"], at_most=1.05),
        Figure(NAME, "same, both with channels_last and fused optimizer off, fp32", payload["ours_off_over_plain"], at_most=1.05),
        Figure(NAME, "lepton-ray default epoch / the default before issue 32 (both off, fp32)", payload["ours_over_ours_off"], at_most=0.7),
        *(Figure(NAME, f"{name} / plain epoch", value) for name, value in payload["variants_over_plain"].items()),
        Figure(NAME, "|ours - plain| first-epoch mean loss, same kernels", payload["first_epoch_loss_difference"], at_most=1e-3),
    ]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ROUNDS} round on {QUICK_SAMPLES} training images")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lepton-plain-") as folder:
        payload = write_result(NAME, run(QUICK_ROUNDS if args.quick else ROUNDS, args.quick, Path(folder)), args.quick)
    print(figures_table(figures(payload)))
    return payload


if __name__ == "__main__":
    main()
