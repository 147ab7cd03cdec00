"""Data: the data set registry (`datasets.py`) and the batching path trials read through (`batches.py`).

Register a data set with `@DATASETS.register("name")` on a function `DataConfig -> DataSplits`, or
name your own factory by import path (`data.name: "my_data:load"`) returning a `TensorData`.
"""

from lepton_ray.data.datasets import DATASETS, DataSplits, TensorData, build_data

__all__ = ["DATASETS", "DataSplits", "TensorData", "build_data"]
