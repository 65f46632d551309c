"""Discovery: ``GET /v1/models``, ``GET /v1/models/{model}`` and ``GET /v1/tasks``.

Built from the validator's availability (what each miner says it serves),
restricted to miners that are in the metagraph with an axon. Without fresh
availability data nothing is known to be available, so the lists are empty
rather than guessed. Any live API key may read them (as with OpenAI's
``/v1/models``); they are charged like any request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from api.auth import authenticate
from api.chat import CTX
from api.context import ApiContext
from api.discovery_wire import ModelListOut, ModelOut, TaskListOut, TaskOut
from shared.availability_query import offered
from shared.errors import model_not_found
from shared.http import json_response


@dataclass
class Catalogue:
    """Who serves what: per model, the miners and per-task counts; per task, the miners and models."""

    updated_at: int = 0
    model_miners: dict[str, set[int]] = field(default_factory=dict)
    model_tasks: dict[str, dict[str, int]] = field(default_factory=dict)
    task_miners: dict[str, set[int]] = field(default_factory=dict)
    task_models: dict[str, set[str]] = field(default_factory=dict)

    def add(self, uid: int, entry: dict[str, Any]) -> None:
        models, tasks = offered(entry, "llm_model_availabilities"), offered(entry, "task_availabilities")
        for model in models:
            self.model_miners.setdefault(model, set()).add(uid)
            per_task = self.model_tasks.setdefault(model, {})
            for task in tasks:
                per_task[task] = per_task.get(task, 0) + 1
        for task in tasks:
            self.task_miners.setdefault(task, set()).add(uid)
            self.task_models.setdefault(task, set()).update(models)

    def model(self, name: str) -> ModelOut | None:
        if name not in self.model_miners:
            return None
        return ModelOut(id=name, created=self.updated_at, miners=len(self.model_miners[name]),
                        tasks=dict(sorted(self.model_tasks[name].items())))

    def models(self, allowed: list[str] | None = None) -> ModelListOut:
        """Every served model, or those of them a key may use (``allowed_models``), as OpenAI lists them."""
        names = sorted(self.model_miners) if allowed is None else sorted(set(self.model_miners) & set(allowed))
        return ModelListOut(data=[m for name in names if (m := self.model(name))])

    def tasks(self) -> TaskListOut:
        return TaskListOut(data=[TaskOut(id=t, miners=len(uids), models=sorted(self.task_models[t]))
                                 for t, uids in sorted(self.task_miners.items())])


def build_catalogue(ctx: ApiContext) -> Catalogue:
    """The catalogue of miners that are serving now and whose availability is fresh."""
    cache = ctx.availability
    if cache is None or not cache.fresh():
        return Catalogue()
    catalogue = Catalogue(updated_at=int(cache.updated_at))
    for neuron in ctx.metagraph.snapshot.serving(exclude_hotkey=ctx.client.signer.hotkey):
        entry = cache.entries.get(neuron.uid)
        if isinstance(entry, dict):
            catalogue.add(neuron.uid, entry)
    return catalogue


async def list_models(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    key = await authenticate(request, ctx.store, scope=None)
    return json_response(build_catalogue(ctx).models(key.allowed_models).model_dump(mode="json"))


async def get_model(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    key = await authenticate(request, ctx.store, scope=None)
    name = request.match_info["model"]
    found = build_catalogue(ctx).model(name) if key.allowed_models is None or name in key.allowed_models else None
    if found is None:
        raise model_not_found(name)
    return json_response(found.model_dump(mode="json"))


async def list_tasks(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    await authenticate(request, ctx.store, scope=None)
    return json_response(build_catalogue(ctx).tasks().model_dump(mode="json"))
