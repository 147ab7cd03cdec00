"""A trial: the one training loop (`loop.py`) and its epoch functions (`epoch.py`), where it runs (`sessions.py`),
its files (`files.py`), the `TorchTrainer` that runs it as DDP (`trainer.py`), and the teacher stage (`teacher.py`)."""
