"""Cost figures measured on the int8 ONNX file a student ships as: its bytes, its gzip -9 bytes (what a
download costs) and ONNX Runtime latency at batch 1 and at the deployment batch (interleaved rounds,
medians with their interquartile ranges). The estimates from the torch student are `compress/cost.py`."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from lepton_ray import metrics
from lepton_ray.data.inputs import ModelInput
from lepton_ray.export.runtime import batch_size_timings

GZIP_LEVEL = 9
LATENCY_ROUNDS = 200
LATENCY_SECONDS = 1.0


def gzip_bytes(data: bytes) -> int:
    """Bytes of `data` gzip-compressed at level 9: what a download costs (HTTP `Content-Encoding: gzip`, zip app packages)."""
    return len(gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0))


def file_cost(path: Path) -> dict[str, float]:
    """The int8 file's bytes and gzip bytes."""
    data = Path(path).read_bytes()
    return {metrics.INT8_FILE_BYTES: len(data), metrics.INT8_GZIP_BYTES: gzip_bytes(data)}


def median_and_iqr(values: list[float]) -> tuple[float, float]:
    """(median, interquartile range) of timings."""
    lower, median, upper = np.percentile(values, [25, 50, 75])
    return float(median), float(upper - lower)


def latency_cost(path: Path, input_shape: ModelInput | tuple[int, ...], batch_size: int, rounds: int = LATENCY_ROUNDS, seconds: float = LATENCY_SECONDS) -> dict[str, float]:
    """ONNX Runtime ms per forward of the file at batch 1 and `batch_size`: medians and interquartile ranges,
    from rounds that alternate the two batch sizes on one session (both see the same machine load)."""
    timings = batch_size_timings(path, input_shape, (1, batch_size), rounds, seconds)
    single_ms, single_iqr = median_and_iqr(timings[1])
    batch_ms, batch_iqr = median_and_iqr(timings[batch_size])
    return {metrics.LATENCY_MS: single_ms, metrics.LATENCY_IQR_MS: single_iqr, metrics.LATENCY_BATCH_MS: batch_ms, metrics.LATENCY_BATCH_IQR_MS: batch_iqr}


def shipped_cost(int8_path: Path, input_shape: ModelInput | tuple[int, ...], latency_batch_size: int | None) -> dict[str, float]:
    """Cost figures measured on the int8 ONNX file a student ships as, keyed by metric name; no latency
    rounds when `latency_batch_size` is None (a cost that reads the file alone is cheaper than a timing)."""
    timed = latency_cost(int8_path, input_shape, latency_batch_size) if latency_batch_size is not None else {}
    return {**file_cost(int8_path), **timed}
