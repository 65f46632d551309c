"""Wire models of the discovery and operations endpoints (``/v1/models``, ``/v1/tasks``, ``/ready``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

# ``/ready``'s models live in ``shared.readiness`` (the validator answers ``/ready`` with them too)
from shared.readiness import CheckOut, ReadyOut

__all__ = ["CheckOut", "ModelListOut", "ModelOut", "ReadyOut", "TaskListOut", "TaskOut"]


class ModelOut(BaseModel):
    """OpenAI's model object, plus which tasks the model serves and on how many miners."""

    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="Unix seconds when this API first saw a miner serve the model (stays put "
                                     "while it is served)")
    owned_by: str = "sn1"
    miners: int = Field(description="Available miners serving this model that a request would race now")
    miners_set_aside: int = Field(description="Available miners serving this model that this API has set aside "
                                              "for failing its requests (a chat skips them until a probe answers)")
    tasks: dict[str, int] = Field(description="Task -> available miners serving it with this model, not set aside")


class ModelListOut(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelOut]


class TaskOut(BaseModel):
    id: str
    object: Literal["task"] = "task"
    miners: int = Field(description="Available miners serving this task that a request would race now")
    miners_set_aside: int = Field(description="Available miners serving this task that this API has set aside")
    models: list[str] = Field(description="Models served for this task")


class TaskListOut(BaseModel):
    object: Literal["list"] = "list"
    data: list[TaskOut]
