"""Wire models of the discovery and operations endpoints (``/v1/models``, ``/v1/tasks``, ``/ready``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class ModelOut(BaseModel):
    """OpenAI's model object, plus which tasks the model serves and on how many miners."""

    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="Unix seconds of the availability data this entry comes from")
    owned_by: str = "sn1"
    miners: int = Field(description="Available miners serving this model")
    tasks: dict[str, int] = Field(description="Task -> available miners serving it with this model")


class ModelListOut(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelOut]


class TaskOut(BaseModel):
    id: str
    object: Literal["task"] = "task"
    miners: int = Field(description="Available miners serving this task")
    models: list[str] = Field(description="Models served for this task")


class TaskListOut(BaseModel):
    object: Literal["list"] = "list"
    data: list[TaskOut]


class CheckOut(BaseModel):
    ok: bool
    detail: str
    required: bool = Field(default=True, description="false: a failure is a warning, not a reason to take the "
                                                     "worker out of rotation")


class ReadyOut(BaseModel):
    """``GET /ready``: 200 when every required check passes, 503 with the failing checks' reasons otherwise;
    a failing check that does not stop the worker serving is a warning."""

    ready: bool
    reasons: list[str]
    warnings: list[str] = Field(default_factory=list)
    checks: dict[str, CheckOut]
