"""What the per-layer sensitivity profile costs (issue 33): once per sweep on Fashion-MNIST, and how it scales with layers.

    .venv/bin/python -m benchmarks.sensitivity_profile [--quick]    # writes benchmarks/results/sensitivity_profile.{json,md}

Fashion-MNIST: the sweep's own step (`trial/per_layer.py: measure_profile`) on the FM workflow's student with the
default candidates (bits {2, 4, 7} x sparsity {0, 0.5, 0.8}): the reference student trained `profile_epochs` on labels,
then every layer compressed alone, BatchNorm re-estimated, outputs compared on `profile_samples` validation images.
Scaling: `sensitivity_profile` alone (no training: its cost does not depend on the weights) on students of growing
depth on generated 3 x 32 x 32 data, up to MobileNetV2 (53 conv/linear layers), with the same candidates, 512
validation images and 512 re-estimation images per probe. Seconds per probe is the figure that carries over: a
profile costs layers x candidates probes, each one validation forward and one re-estimation forward, no backward.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from benchmarks.common import REPO, Figure, figures_table, format_table, write_result_and_page
from lepton_ray.compress.layers import weight_layers
from lepton_ray.compress.sensitivity import CANDIDATE_BITS, CANDIDATE_SPARSITY, sensitivity_profile
from lepton_ray.config import DataConfig, ModelSpec, load_workflow
from lepton_ray.data.batches import iterate_batches
from lepton_ray.data.datasets import build_data
from lepton_ray.models.zoo import build_model
from lepton_ray.trial.batchnorm import reestimate_batchnorm
from lepton_ray.trial.per_layer import measure_profile

NAME = "sensitivity_profile"
WORKFLOW = REPO / "workflows" / "fashion_mnist.yaml"
CPU = torch.device("cpu")
THREADS = 2
SCALING = [("cnn_small", {"channels": [16, 32, 64]}), ("cnn_large", {"channels": [32, 64, 128], "convs_per_stage": 2}), ("resnet18", {}), ("mobilenet_v2", {})]
QUICK_SCALING = SCALING[:2]
SAMPLES = 512


def fashion_mnist(quick: bool) -> dict[str, Any]:
    overrides = {"compression.allocation.bits_per_weight": 3.0, **({"compression.allocation.profile_epochs": 1, "compression.allocation.profile_samples": 200} if quick else {})}
    wf = load_workflow(WORKFLOW, overrides)
    data = build_data(wf.data)
    lines: list[str] = []
    started = time.perf_counter()
    profile = measure_profile(wf, data, CPU, log=lines.append)
    return {"seconds": time.perf_counter() - started, "layers": len(profile), "probes": sum(len(rows) for rows in profile.values()),
            "profile_epochs": wf.compression.allocation.profile_epochs, "profile_samples": wf.compression.allocation.profile_samples,
            "log": lines, "profile": profile}


def scaling_row(name: str, options: dict[str, Any]) -> dict[str, Any]:
    data = build_data(DataConfig(name="synthetic", options={"num_samples": 3 * SAMPLES, "channels": 3, "image_size": 32}))
    torch.manual_seed(0)
    student = build_model(ModelSpec(name=name, options=options), data.model_input, data.num_classes)
    images = torch.cat([batch.images for batch in iterate_batches(data.val, list(range(min(SAMPLES, len(data.val)))), 256, CPU)])

    def settle(probe: torch.nn.Module) -> None:
        reestimate_batchnorm(probe, iterate_batches(data.train, list(range(len(data.train))), 128, CPU), max_samples=SAMPLES)

    started = time.perf_counter()
    profile = sensitivity_profile(student, images, settle)
    seconds = time.perf_counter() - started
    probes = sum(len(options) for options in profile.values())
    return {"student": name, "layers": len(weight_layers(student)), "parameters": sum(p.numel() for p in student.parameters()),
            "probes": probes, "seconds": seconds, "seconds_per_probe": seconds / probes}


def run(quick: bool) -> dict[str, Any]:
    torch.set_num_threads(THREADS)
    return {"setting": {"threads": THREADS, "candidates": {"bits": list(CANDIDATE_BITS), "sparsity": list(CANDIDATE_SPARSITY)},
                        "scaling_samples": SAMPLES, "scaling_data": "synthetic 3 x 32 x 32"},
            "fashion_mnist": fashion_mnist(quick), "scaling": [scaling_row(name, options) for name, options in (QUICK_SCALING if quick else SCALING)]}


def figures(payload: dict[str, Any]) -> list[Figure]:
    fm, rows = payload["fashion_mnist"], payload["scaling"]
    return [
        Figure(NAME, f"FM profile once per sweep, seconds ({fm['layers']} layers, {fm['probes']} probes, reference trained {fm['profile_epochs']} epochs)", fm["seconds"]),
        *(Figure(NAME, f"{row['student']} ({row['layers']} layers): profile seconds", row["seconds"]) for row in rows),
    ]


def markdown(payload: dict[str, Any]) -> str:
    rows = [[row["student"], row["layers"], f"{row['parameters']:,}", row["probes"], f"{row['seconds']:.1f}", f"{row['seconds_per_probe']:.3f}"] for row in payload["scaling"]]
    return "\n".join([
        "# The per-layer sensitivity profile: its cost once per sweep, and how it scales", "",
        f"Measured at commit `{payload['commit']}` on {payload['machine']['cpu_model']}, {payload['setting']['threads']} threads, {payload['measured_at']}.", "",
        figures_table(figures(payload)), "",
        "Fashion-MNIST: " + " ".join(payload["fashion_mnist"]["log"]), "",
        f"Scaling, `sensitivity_profile` alone on {payload['setting']['scaling_data']} ({payload['setting']['scaling_samples']} validation and "
        "re-estimation images per probe, candidates bits {2, 4, 7} x sparsity {0, 0.5, 0.8}):", "",
        format_table(["student", "conv/linear layers", "parameters", "probes", "seconds", "s per probe"], rows), "",
    ])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 profile epoch, the two small students")
    args = parser.parse_args(argv)
    return write_result_and_page(NAME, run(args.quick), args.quick, markdown, figures)


if __name__ == "__main__":
    main()
