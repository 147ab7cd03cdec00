"""Data: the data set registry (`datasets.py`; text sets in `text_sets.py`, their vocabulary in `text.py`), what a
model trained on a set expects and means (`contract.py`), what one model input is (`inputs.py`: float images or
int64 token ids), and the batching path trials read through (`batches.py`).

Register a data set with `@DATASETS.register("name")` on a function `DataConfig -> DataSplits`; its
`DataSplits.contract` says how raw inputs become its tensors and names its classes. Or name your own
factory by import path (`data.name: "my_data:load"`) returning a `TensorData`.
"""

from lepton_ray.data.contract import DataContract
from lepton_ray.data.datasets import DATASETS, DataSplits, build_data
from lepton_ray.data.user_data import TensorData

__all__ = ["DATASETS", "DataContract", "DataSplits", "TensorData", "build_data"]
