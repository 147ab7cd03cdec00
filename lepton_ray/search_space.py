"""Typed search spaces (`sweep.space` YAML): each knob by its dotted path in the workflow, checked like the workflow."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Field, ValidationError, model_validator

from lepton_ray.config import Scalar, StrictModel, validation_error_line
from lepton_ray.errors import ConfigError
from lepton_ray.yaml_input import read_yaml


class FloatParam(StrictModel):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> "FloatParam":
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be < high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("log=true needs low > 0")
        return self


class IntParam(StrictModel):
    type: Literal["int"]
    low: int
    high: int
    step: int = Field(1, ge=1)
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> "IntParam":
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be < high ({self.high})")
        return self


class CategoricalParam(StrictModel):
    type: Literal["categorical"]
    choices: list[Scalar] = Field(min_length=1)


ParamSpec = Annotated[Union[FloatParam, IntParam, CategoricalParam], Field(discriminator="type")]


class SearchSpace(StrictModel):
    """Knobs keyed by their dotted path in the workflow, e.g. `distillation.temperature`."""

    params: dict[str, ParamSpec] = Field(min_length=1)


def parse_search_space(raw: dict[str, Any]) -> SearchSpace:
    try:
        return SearchSpace.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(validation_error_line(err, "search_space.")) from None


def load_search_space(path: Path) -> SearchSpace:
    return parse_search_space(read_yaml(path, "sweep.space"))
