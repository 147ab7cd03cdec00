"""Compression applied inside the trial (pruning, channel pruning, QAT, low-rank) and what the result costs.

A new method is a `Compressor` registered for its config type (`compress/base.py`); the trial
loop only sees `Compression` (`compress/pipeline.py`).
"""

from lepton_ray.compress.base import COMPRESSORS, Compressor, register_compressor
from lepton_ray.compress.pipeline import Compression

__all__ = ["COMPRESSORS", "Compression", "Compressor", "register_compressor"]
