"""Per-layer compression in a sweep (issue 33): the sensitivity profile measured once per sweep, and each trial's
allocation of bits and sparsity from it under the trial's budget (`compression.allocation`).

The profile is of a reference student: the workflow's own student, trained `profile_epochs` on labels alone (what
makes a layer fragile is its role in the network, which a short run already shows), then each layer compressed
alone to each candidate (`compress/sensitivity.py`). A trial reads the profile by layer name, prices every option
on its own layers (width and channel pruning change their sizes, not their names) and lets `compress/allocation.py`
choose. The choice becomes plain `per_layer` settings of QAT and pruning, so the trial trains, saves and exports
exactly what a user writing those settings by hand would get.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from lepton_ray.compress.allocation import Allocation, LayerOption, allocate
from lepton_ray.compress.layers import weight_layers
from lepton_ray.compress.pipeline import Compression
from lepton_ray.compress.sensitivity import sensitivity_profile
from lepton_ray.compress.cost import FLOAT_BITS
from lepton_ray.config import AllocationConfig, CompressionConfig, WorkflowConfig, stored_bits_per_weight
from lepton_ray.data.batches import iterate_batches
from lepton_ray.data.datasets import DataSplits
from lepton_ray.distill.losses import DistillationObjective
from lepton_ray.errors import ConfigError
from lepton_ray.models.zoo import build_model
from lepton_ray.trial.batchnorm import reestimate_batchnorm
from lepton_ray.trial.epoch import Precision, build_optimizer, epoch_lr, set_lr, train_batches, train_epoch

Profile = dict[str, list[dict[str, float]]]
"""Layer name -> one {"bits", "sparsity", "shift"} per candidate: plain data, so it travels to trials and into JSON."""

SETTLE_SAMPLES = 512
"""Training images each probe's BatchNorm statistics are re-estimated on before its outputs are read."""

PROFILE_FILE = "sensitivity-{key}.json"


def allocates(wf: WorkflowConfig, searched: list[str]) -> bool:
    """Whether any trial of this sweep may allocate: the workflow sets a budget or the search space searches one."""
    return wf.compression.allocation.active or any(name.startswith("compression.allocation.") for name in searched)


def profile_key(wf: WorkflowConfig) -> str:
    """What the profile depends on: the reference student, its data and training, the candidates."""
    described = {"student": wf.student.model_dump(mode="json"), "data": wf.data.model_dump(mode="json"),
                 "training": wf.training.model_dump(mode="json", include={"seed", "lr", "lr_schedule", "batch_size", "optimizer", "weight_decay", "momentum"}),
                 "allocation": wf.compression.allocation.model_dump(mode="json", exclude={"bits_per_weight"})}
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]


def measure_profile(wf: WorkflowConfig, data: DataSplits, device: torch.device, log: Callable[[str], None] = print) -> Profile:
    """Train the reference student on labels for `profile_epochs`, then profile every layer (`sensitivity_profile`)."""
    cfg = wf.compression.allocation
    started = time.perf_counter()
    torch.manual_seed(wf.training.seed)
    student = build_model(wf.student, data.model_input, data.num_classes).to(device)
    optimizer = build_optimizer(wf.training, list(student.parameters()))
    objective, precision = DistillationObjective.hard_labels_only(), Precision(wf.training.precision, device)
    for epoch in range(cfg.profile_epochs):
        set_lr(optimizer, epoch_lr(wf.training.lr, wf.training.lr_schedule, epoch, cfg.profile_epochs))
        train_epoch(student, [], objective, train_batches(wf, data, epoch, device), optimizer, precision)
    trained_s = time.perf_counter() - started

    def settle(probe: nn.Module) -> None:
        reestimate_batchnorm(probe, train_batches(wf, data, 0, device), max_samples=SETTLE_SAMPLES)

    settle(student)
    count = min(cfg.profile_samples, len(data.val))
    val_images = torch.cat([batch.images for batch in iterate_batches(data.val, list(range(count)), 512, device)])
    raw = sensitivity_profile(student, val_images, settle, cfg.bits, cfg.sparsities)
    profile = {layer: [{**option.setting, "shift": option.sensitivity} for option in options] for layer, options in raw.items()}
    log(f"sensitivity profile: {len(profile)} layers x {len(cfg.bits) * len(cfg.sparsities)} settings on {count} validation images "
        f"({trained_s:.0f} s training the reference student {cfg.profile_epochs} epochs, {time.perf_counter() - started - trained_s:.0f} s profiling)")
    return profile


def sweep_profile(wf: WorkflowConfig, data: DataSplits, storage: Path, log: Callable[[str], None] = print) -> Profile:
    """The sweep's profile: read back from `storage` (a resumed sweep) or measured once here and kept there."""
    path = Path(storage) / PROFILE_FILE.format(key=profile_key(wf))
    if path.is_file():
        return json.loads(path.read_text())
    profile = measure_profile(wf, data, torch.device("cpu"), log)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(profile, indent=1) + "\n")
    partial.replace(path)
    return profile


def layer_cost_bits(layer: nn.Module, bits: int, sparsity: float) -> float:
    """Stored bits of `layer`'s weights at (bits, sparsity): `stored_bits_per_weight` each, one fp32 scale per output channel."""
    return layer.weight.numel() * stored_bits_per_weight(bits, sparsity) + layer.weight.shape[0] * FLOAT_BITS


def allocate_layers(profile: Profile, student: nn.Module, cfg: AllocationConfig) -> Allocation:
    """Each layer of `student` (its own sizes) gets the profiled option with the least total shift whose stored bits,
    summed, fit `bits_per_weight` per weight plus the per-channel scales."""
    layers = dict(weight_layers(student))
    if missing := sorted(set(layers) - set(profile)):
        raise ConfigError(f"compression.allocation: the sensitivity profile has no layer {missing[0]!r} (it profiled {', '.join(profile)}); "
                          "allocation needs the reference student's layer names, so it does not combine with low_rank or a renamed student")
    options = {name: [LayerOption({"bits": int(row["bits"]), "sparsity": float(row["sparsity"])}, layer_cost_bits(layer, int(row["bits"]), row["sparsity"]),
                                  float(row["shift"])) for row in profile[name]] for name, layer in layers.items()}
    budget = sum(cfg.bits_per_weight * layer.weight.numel() + layer.weight.shape[0] * FLOAT_BITS for layer in layers.values())
    return allocate(options, budget)


def allocated_workflow(wf: WorkflowConfig, profile: Profile | None, data: DataSplits, log: Callable[[str], None] = print) -> tuple[WorkflowConfig, Allocation | None]:
    """`wf` with its allocation resolved into `quantization.per_layer` and `pruning.per_layer` for this trial's student
    (after width and channel pruning); unchanged without a budget. No profile from the sweep: measured here."""
    cfg = wf.compression.allocation
    if not cfg.active:
        return wf, None
    if profile is None:
        profile = measure_profile(wf, data, torch.device("cpu"), log)
    torch.manual_seed(wf.training.seed)  # as set_up_student builds it, so channel pruning keeps the same channels
    structure = CompressionConfig(channel_pruning=wf.compression.channel_pruning)
    example = next(iterate_batches(data.train, [0, 1], 2, torch.device("cpu"))).images
    student = Compression(structure, wf.training.epochs).prepare(build_model(wf.student, data.model_input, data.num_classes), example)
    allocation = allocate_layers(profile, student, cfg)
    bits = {name: option.setting["bits"] for name, option in allocation.choices.items()}
    sparsity = {name: option.setting["sparsity"] for name, option in allocation.choices.items() if option.setting["sparsity"] > 0}
    compression = wf.compression.model_copy(update={
        "allocation": AllocationConfig(),
        "quantization": wf.compression.quantization.model_copy(update={"per_layer": bits}),
        "pruning": wf.compression.pruning.model_copy(update={"per_layer": sparsity}),
    })
    return wf.model_copy(update={"compression": compression}), allocation


def allocation_table(allocation: Allocation, student: nn.Module, bits_per_weight: float) -> list[dict[str, Any]]:
    """One row per layer for MLflow and the report: its setting, weights, stored bytes and profiled shift."""
    layers = dict(weight_layers(student))
    return [{"layer": name, "bits": option.setting["bits"], "sparsity": option.setting["sparsity"], "weights": layers[name].weight.numel(),
             "stored_bytes": option.cost / 8, "shift": option.sensitivity, "budget_bits_per_weight": bits_per_weight}
            for name, option in allocation.choices.items()]
