"""Data: the data set registry (`datasets.py`) and the batching path trials read through (`batches.py`).

Register a data set with `@DATASETS.register("name")` on a function `DataConfig -> DataSplits`.
"""

from lepton_ray.data.datasets import DATASETS, DataSplits, build_data

__all__ = ["DATASETS", "DataSplits", "build_data"]
