"""Running on a Ray cluster: connecting to or starting Ray (`ray_runtime.py`), and sweeps as Ray Jobs (`jobs.py`)."""
