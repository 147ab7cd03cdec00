"""ONNX Runtime plumbing: sessions, a classifier's accuracy over a split, latency timed in interleaved rounds.

Imports `onnxruntime` but not its quantizer (about 0.5 s more), so a trial can time a file cheaply.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Callable, Hashable, Iterable, Mapping, TypeVar

import numpy as np
import onnxruntime as ort
import torch
from torch.utils.data import Dataset

from lepton_ray.data.batches import iterate_batches
from lepton_ray.data.inputs import ModelInput, as_model_input
from lepton_ray.export.onnx_graph import INPUT_NAME, OUTPUT_NAME

LATENCY_SECONDS = 2.0
"""Time spent timing one comparison; rounds stop early when it is used up."""
WARMUP_RUNS = 3
MIN_ROUNDS = 5

Key = TypeVar("Key", bound=Hashable)


def ort_session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def dataset_images(dataset: Dataset, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) of the given samples, stacked, on the CPU."""
    batches = list(iterate_batches(dataset, indices, 256, torch.device("cpu")))
    return torch.cat([batch.images for batch in batches]), torch.cat([batch.labels for batch in batches])


def onnx_accuracy(path: Path, dataset: Dataset, batch_size: int = 256) -> float:
    """Top-1 accuracy (fraction) of an ONNX classifier in ONNX Runtime over the whole split."""
    session = ort_session(path)
    images, labels = dataset_images(dataset, list(range(len(dataset))))
    correct = 0
    for start in range(0, len(images), batch_size):
        logits = session.run([OUTPUT_NAME], {INPUT_NAME: images[start : start + batch_size].numpy()})[0]
        correct += int((logits.argmax(axis=1) == labels[start : start + batch_size].numpy()).sum())
    return correct / max(len(labels), 1)


def random_feed(input_shape: ModelInput | tuple[int, ...], batch_size: int) -> dict[str, np.ndarray]:
    """A seeded random batch in the input's dtype (a plain shape: float32 normal; token ids: uniform in the vocabulary)."""
    return {INPUT_NAME: as_model_input(input_shape).feed(batch_size)}


def interleaved_timings(runs: Mapping[Key, Callable[[], object]], max_rounds: int, seconds: float) -> dict[Key, list[float]]:
    """Milliseconds of each call in every round, after `WARMUP_RUNS` warm-up calls each.

    Rounds interleave the calls (A, B, A, B, ...), so each sees the same machine load; timings taken
    one after the other varied up to 2.3x here (STACK.md). Stops after `max_rounds`, or once
    `seconds` are used up and at least `MIN_ROUNDS` rounds ran.
    """
    for run in runs.values():
        for _ in range(WARMUP_RUNS):
            run()
    timings: dict[Key, list[float]] = {key: [] for key in runs}
    deadline = time.perf_counter() + seconds
    for round_index in range(max_rounds):
        for key, run in runs.items():
            start = time.perf_counter()
            run()
            timings[key].append((time.perf_counter() - start) * 1000)
        if round_index + 1 >= MIN_ROUNDS and time.perf_counter() > deadline:
            break
    return timings


def measure_latency(models: dict[str, Path], input_shape: ModelInput | tuple[int, ...], batch_size: int, max_rounds: int = 200, seconds: float = LATENCY_SECONDS) -> dict[str, float]:
    """Median ms per forward of each model at one batch size, the models interleaved round by round."""
    feed = random_feed(input_shape, batch_size)
    runs = {name: partial(ort_session(path).run, None, feed) for name, path in models.items()}
    return {name: float(np.median(values)) for name, values in interleaved_timings(runs, max_rounds, seconds).items()}


def batch_size_timings(path: Path, input_shape: ModelInput | tuple[int, ...], batch_sizes: Iterable[int], max_rounds: int, seconds: float) -> dict[int, list[float]]:
    """Ms per forward of one model at each batch size, on one session, the batch sizes alternated round by round."""
    session = ort_session(path)
    runs = {batch: partial(session.run, None, random_feed(input_shape, batch)) for batch in dict.fromkeys(batch_sizes)}
    return interleaved_timings(runs, max_rounds, seconds)
