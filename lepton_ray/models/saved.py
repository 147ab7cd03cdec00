"""What a saved model file holds (plain data that `torch.load(weights_only=True)` accepts), and a
frozen teacher rebuilt from one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

from lepton_ray.config import ModelSpec
from lepton_ray.data.inputs import model_input_of
from lepton_ray.models.features import unwrap
from lepton_ray.models.zoo import build_model

if TYPE_CHECKING:
    from lepton_ray.data.datasets import DataSplits


def model_payload(model: nn.Module, spec_name: str, options: dict, data: DataSplits, **extra: Any) -> dict[str, Any]:
    """What a student/teacher file holds: plain data that `torch.load(weights_only=True)` accepts. `class_names`
    (output index order) lets a teacher be checked against data whose folders sort otherwise."""
    state = {key: value.detach().cpu() for key, value in unwrap(model).state_dict().items()}
    return {"model": spec_name, "options": dict(options), "input_shape": list(data.input_shape), "model_input": data.model_input.as_dict(),
            "num_classes": data.num_classes, "class_names": list(data.contract.class_names), "state_dict": state, **extra}


def load_teacher_module(payload: dict[str, Any]) -> nn.Module:
    """A frozen teacher in eval mode (never wrapped in DDP, never trained here)."""

    teacher = build_model(ModelSpec(name=payload["model"], options=payload["options"]), model_input_of(payload), payload["num_classes"], field="teacher")
    teacher.load_state_dict(payload["state_dict"])
    teacher.eval()
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher
