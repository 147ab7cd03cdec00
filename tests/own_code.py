"""A user's project outside the package, as the README's "Your own model and data" has it: a student
and a teacher class in their own file, a data factory in another, a teacher saved as a plain
state_dict, and a workflow naming them by import path. Module names are unique to these tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml

MODELS_FILE = '''
import torch
from torch import nn


class TinyNet(nn.Module):
    """conv -> ReLU -> 2x2 average pool -> linear; `width` channels."""

    def __init__(self, input_shape, num_classes, width=8):
        super().__init__()
        self.conv = nn.Conv2d(input_shape[0], width, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.head = nn.Linear(width * 4, num_classes)

    def forward(self, images):
        return self.head(torch.flatten(self.pool(torch.relu(self.conv(images))), 1))


class ViewsFeatures(nn.Module):
    """conv -> `.view` flatten -> linear: a forward that assumes contiguous (NCHW) conv outputs."""

    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.conv = nn.Conv2d(input_shape[0], 4, 3, padding=1)
        self.head = nn.Linear(4 * input_shape[1] * input_shape[2], num_classes)

    def forward(self, images):
        features = self.conv(images)
        return self.head(features.view(len(features), -1))


def three_logits(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0] * input_shape[1] * input_shape[2], 3))


def not_a_model(input_shape, num_classes):
    return "a model"


def raises(input_shape, num_classes):
    raise RuntimeError("no GPU kernels for this layer")
'''

DATA_FILE = '''
import numpy as np
from sklearn.datasets import load_digits

from lepton_ray.data import TensorData


def load(test_images=300):
    """scikit-learn's digits in raw pixel units (0..16), the last `test_images` as the data set's own test split."""
    digits = load_digits()
    images, labels = digits.images.astype(np.float32), digits.target
    return TensorData(images[:-test_images], labels[:-test_images], images[-test_images:], labels[-test_images:], num_classes=10)


def a_list():
    return [1, 2, 3]


def own_splits():
    """Splits the factory chose itself (here lepton-ray's own digits splits)."""
    from lepton_ray.config import DataConfig
    from lepton_ray.data.datasets import build_data

    return build_data(DataConfig(name="digits"))
'''

MODELS_MODULE, DATA_MODULE = "own_code_models", "own_code_data"


def write_user_files(folder: Path) -> Path:
    """The user's two modules and their teacher's state_dict under `folder`, imported once in this
    process (a module name maps to one file per process, so tests share these); returns `folder`."""
    from lepton_ray.config import DataConfig
    from lepton_ray.data.datasets import build_data
    from lepton_ray.user_code import load_user_code

    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{MODELS_MODULE}.py").write_text(MODELS_FILE)
    (folder / f"{DATA_MODULE}.py").write_text(DATA_FILE)
    load_user_code([folder / f"{MODELS_MODULE}.py", folder / f"{DATA_MODULE}.py"])
    torch.save(train_state_dict(build_data(DataConfig(name=f"{DATA_MODULE}:load")), width=32), folder / TEACHER_FILE)
    return folder


TEACHER_FILE = "my_teacher_state_dict.pt"


def write_project(folder: Path, user: Path, overrides: dict[str, Any] | None = None) -> Path:
    """A workflow in `folder` naming the user's code in `user` (from `write_user_files`) by import path; returns its path."""
    from lepton_ray.config import apply_overrides

    workflow = {
        "name": "own_code",
        "output_dir": str(folder / "runs"),
        "user_code": [str(user / f"{MODELS_MODULE}.py"), str(user / f"{DATA_MODULE}.py")],
        "data": {"name": f"{DATA_MODULE}:load"},
        "teacher": {"name": f"{MODELS_MODULE}:TinyNet", "options": {"width": 32}, "checkpoint": str(user / TEACHER_FILE)},
        "student": {"name": f"{MODELS_MODULE}:TinyNet", "options": {"width": 8}},
        "training": {"epochs": 2, "batch_size": 32, "lr": 0.01},
        "resources": {"num_workers": 2, "cpus_per_worker": 0.45, "max_concurrent_trials": 1},
        "tracking": {"uri": f"sqlite:///{folder / 'mlflow.db'}", "experiment": "own-code", "model_name": "own-code-student"},
        "sweep": {"num_samples": 2, "seed": 0, "space": str(folder / "space.yaml")},
        "selection": {"policy": "knee"},
    }
    (folder / "space.yaml").write_text(yaml.safe_dump({"params": {"distillation.alpha": {"type": "float", "low": 0.3, "high": 0.9}}}))
    path = folder / "workflow.yaml"
    path.write_text(yaml.safe_dump(apply_overrides(workflow, overrides or {}), sort_keys=False))
    return path


def train_state_dict(data, width: int, epochs: int = 60, module: str = MODELS_MODULE) -> dict[str, torch.Tensor]:
    """The user's own training: full-batch Adam on the normalised training split; only the weights are saved."""
    import importlib

    torch.manual_seed(0)
    model = importlib.import_module(module).TinyNet(data.input_shape, data.num_classes, width=width)
    images, labels = data.train.tensors[:2]
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(epochs):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
    return model.state_dict()
