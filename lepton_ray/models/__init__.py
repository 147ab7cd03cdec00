"""Models: the model registry (`zoo.py`), feature taps for distillation (`features.py`), saved model files (`saved.py`).

Register a model with `@MODELS.register("name")` on a function `(input_shape, num_classes, **options) -> nn.Module`.
"""

from lepton_ray.models.zoo import MODELS, build_model

__all__ = ["MODELS", "build_model"]
