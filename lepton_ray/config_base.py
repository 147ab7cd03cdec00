"""The base of every typed config model: unknown keys are errors, validated objects are frozen."""

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
