"""Model registry: small CNNs/MLPs for digits-sized data and torchvision classifiers by name.

The factory contract, for ours and for yours (`student.name: "my_models:tiny_cnn"`, see
`lepton_ray/user_code.py`): called as `factory(input_shape, num_classes, **options)` with
`input_shape` = (channels, height, width) of one normalised sample and `options` the spec's
`options:`, it returns an untrained `torch.nn.Module` mapping a float batch (N, C, H, W) to logits
(N, num_classes). A class whose `__init__` takes those arguments is a factory too. Nothing is
downloaded (torchvision models are built with `weights=None`; `options.weights_file` loads local weights).
On text data (`data/inputs.TokenInput`) `input_shape` is (max_length,), the batch is token ids (N, L) int64,
and the factory also gets `vocab_size` (`text_transformer`, `bag_of_embeddings` at the end of this file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from lepton_ray.config import ModelSpec
from lepton_ray.data.inputs import ModelInput, as_model_input
from lepton_ray.errors import ConfigError
from lepton_ray.models.text import BagOfEmbeddings, TextTransformer
from lepton_ray.registry import Registry
from lepton_ray.user_code import first_line

InputShape = tuple[int, int, int]
ModelFactory = Callable[..., nn.Module]
MODELS: Registry[ModelFactory] = Registry("model", "model name", imported=lambda factory, _name: factory)


def build_model(spec: ModelSpec, input_shape: ModelInput | InputShape, num_classes: int, field: str = "student") -> nn.Module:
    """The spec's model for this data (a plain shape: float input); any failure of the factory is a one-line
    `ConfigError` naming the field."""
    factory = MODELS.get(spec.name, f"{field}.name")
    model_input = as_model_input(input_shape)
    input_shape = model_input.shape
    try:
        model = factory(tuple(input_shape), num_classes, **model_input.model_options(), **spec.options)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{field}.options: {first_line(err)}; check the options of model {spec.name!r}") from None
    except Exception as err:  # a user's factory may raise anything: report it, in one line
        raise ConfigError(f"{field}.name: {spec.name} raised {type(err).__name__}: {first_line(err)} for input {list(input_shape)}, {num_classes} classes; fix the factory") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{field}.name: {spec.name} returned a {type(model).__name__}, not a torch.nn.Module; return the model")
    return model


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@MODELS.register("mlp")
def mlp(input_shape: InputShape, num_classes: int, hidden: list[int] | None = None, dropout: float = 0.0) -> nn.Module:
    """Fully connected net on flattened pixels."""
    widths = [int(torch.tensor(input_shape).prod()), *(hidden or [64])]
    layers: list[nn.Module] = [nn.Flatten()]
    for fan_in, fan_out in zip(widths, widths[1:]):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU(), nn.Dropout(dropout)]
    layers.append(nn.Linear(widths[-1], num_classes))
    return nn.Sequential(*layers)


class ConvNet(nn.Module):
    """Stages of `convs_per_stage` Conv-BN-ReLU (the first of each stage after the first has stride 2),
    then average pooling to a `pool_size` x `pool_size` grid and a linear head.

    `pool_size` 1 is global pooling; 2 keeps where on the image a feature fired, which small nets on
    28x28 data need (Fashion-MNIST, 5 epochs: 2 reached 85.4% after one epoch where 1 reached 79.6%).
    Stages are named `features.<i>` so hint/attention losses can pick layers by module name.
    """

    def __init__(
        self, input_shape: InputShape, num_classes: int, channels: list[int], hidden: int = 0, convs_per_stage: int = 1, pool_size: int = 1,
    ) -> None:
        super().__init__()
        if convs_per_stage < 1:
            raise ValueError(f"convs_per_stage must be >= 1, got {convs_per_stage}")
        if pool_size < 1:
            raise ValueError(f"pool_size must be >= 1, got {pool_size}")
        stages: list[nn.Module] = []
        fan_in = input_shape[0]
        for index, width in enumerate(channels):
            layers: list[nn.Module] = []
            for conv in range(convs_per_stage):
                stride = 2 if index > 0 and conv == 0 else 1
                layers += [nn.Conv2d(fan_in, width, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
                fan_in = width
            stages.append(nn.Sequential(*layers))
        self.features = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(pool_size)
        fan_in *= pool_size * pool_size
        head: list[nn.Module] = [nn.Flatten()]
        if hidden:
            head += [nn.Linear(fan_in, hidden), nn.ReLU(inplace=True)]
            fan_in = hidden
        head.append(nn.Linear(fan_in, num_classes))
        self.classifier = nn.Sequential(*head)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(images)))


def scaled(channels: list[int], width: float) -> list[int]:
    """Channel counts times a width multiplier (at least 1 each): one searchable knob for a student family."""
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    return [max(1, round(c * width)) for c in channels]


@MODELS.register("cnn_small")
def cnn_small(
    input_shape: InputShape, num_classes: int, channels: list[int] | None = None, hidden: int = 0, convs_per_stage: int = 1, width: float = 1.0,
    pool_size: int = 1,
) -> nn.Module:
    """A student-sized CNN (about 6k parameters by default); `width` scales every stage's channels."""
    return ConvNet(input_shape, num_classes, scaled(channels or [16, 32], width), hidden, convs_per_stage, pool_size)


@MODELS.register("cnn_large")
def cnn_large(
    input_shape: InputShape, num_classes: int, channels: list[int] | None = None, hidden: int = 256, convs_per_stage: int = 1, pool_size: int = 1,
) -> nn.Module:
    """A teacher-sized CNN (about 0.5M parameters by default)."""
    return ConvNet(input_shape, num_classes, channels or [64, 128, 256], hidden, convs_per_stage, pool_size)


def _adapt_stem(model: nn.Module, input_shape: InputShape) -> nn.Module:
    """Match torchvision's ImageNet stem to the data: channel count, and no early downsampling below 64 px."""
    channels, height, _ = input_shape
    small = height < 64
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            stride = (1, 1) if small else module.stride
            kernel = (3, 3) if small and module.kernel_size == (7, 7) else module.kernel_size
            padding = (1, 1) if kernel == (3, 3) else module.padding
            stem = nn.Conv2d(channels, module.out_channels, kernel, stride, padding, bias=module.bias is not None)
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, stem)
            break
    if small and hasattr(model, "maxpool"):
        model.maxpool = nn.Identity()
    return model


def load_local_weights(model: nn.Module, weights_file: str) -> nn.Module:
    """Weights from a local state_dict file (e.g. torchvision's ImageNet `resnet18-f37072fd.pth`, copied to the machine:
    nothing is downloaded) into every layer whose shape matches. The stem and the classifier may differ (adapted to
    the data's channels, size and classes: they keep their fresh weights); any other difference is an error."""
    file = Path(weights_file).expanduser()
    if not file.is_file():
        raise ValueError(f"weights_file {weights_file!r} not found; give a local state_dict file (e.g. torchvision's .pth), readable on every node")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"weights_file {weights_file!r} is not a file torch.load(weights_only=True) reads ({type(err).__name__}); give a saved state_dict") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    own = model.state_dict()
    if not isinstance(state, dict) or not state:
        raise ValueError(f"weights_file {weights_file!r} holds no state_dict; save one with torch.save(model.state_dict(), path)")
    unknown = [key for key in state if key not in own]
    if unknown:
        raise ValueError(f"weights_file {weights_file!r} holds weights this architecture lacks (e.g. {unknown[0]!r}); give the file of the same architecture")
    convs = [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    adapted = {f"{name}.{kind}" for name in convs[:1] + linears[-1:] for kind in ("weight", "bias")}
    differing = [key for key, value in state.items() if tuple(value.shape) != tuple(own[key].shape)]
    wrong = [key for key in differing if key not in adapted]
    if wrong:
        key = wrong[0]
        raise ValueError(f"weights_file {weights_file!r}: layer {key!r} is {tuple(state[key].shape)} in the file but {tuple(own[key].shape)} here; "
                         "give the file of this architecture and options (only the stem and the classifier may differ)")
    model.load_state_dict({key: value for key, value in state.items() if key not in differing}, strict=False)
    return model


def _torchvision(builder_name: str) -> ModelFactory:
    def factory(input_shape: InputShape, num_classes: int, weights_file: str | None = None, **options) -> nn.Module:
        import torchvision

        builder = getattr(torchvision.models, builder_name)
        model = _adapt_stem(builder(weights=None, num_classes=num_classes, **options), input_shape)
        return load_local_weights(model, weights_file) if weights_file else model

    factory.__doc__ = (f"torchvision.models.{builder_name}(weights=None), stem adapted to the data; "
                       "`weights_file`: start from a local state_dict (e.g. ImageNet weights), nothing downloaded.")
    return factory


for _name, _builder in {
    "resnet18": "resnet18",
    "resnet34": "resnet34",
    "resnet50": "resnet50",
    "mobilenet_v2": "mobilenet_v2",
    "mobilenet_v3_small": "mobilenet_v3_small",
    "shufflenet_v2": "shufflenet_v2_x1_0",
}.items():
    MODELS.register(_name)(_torchvision(_builder))


def _text_factory(model_class: type[nn.Module]) -> ModelFactory:
    def factory(input_shape: tuple[int, ...], num_classes: int, vocab_size: int | None = None, **options) -> nn.Module:
        if vocab_size is None or len(input_shape) != 1:
            raise ValueError(f"{model_class.__name__} reads token ids, not input {list(input_shape)}; use it on a text data set (reviews, text_csv)")
        return model_class(input_shape[0], num_classes, vocab_size, **options)

    factory.__doc__ = model_class.__doc__
    return factory


MODELS.register("text_transformer")(_text_factory(TextTransformer))
MODELS.register("bag_of_embeddings")(_text_factory(BagOfEmbeddings))
