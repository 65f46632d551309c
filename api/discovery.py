"""Discovery: ``GET /v1/models``, ``GET /v1/models/{model}`` and ``GET /v1/tasks``.

Built from the validator's availability (what each miner says it serves),
restricted to miners that are in the metagraph with an axon. Without fresh
availability data nothing is known to be available, so the lists are empty
rather than guessed. Any live API key may read them (as with OpenAI's
``/v1/models``); they are charged like any request.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from api.auth import authenticate, check_model
from api.chat import CTX
from api.context import ApiContext
from api.discovery_wire import ModelListOut, ModelOut, TaskListOut, TaskOut
from api.selection import NO_MINERS, none_fits
from shared.availability_query import offered
from shared.errors import ApiError, model_not_found
from shared.http import json_response
from shared.protocol import ANY_MODEL

DEFAULT_MODEL = "default"  # the name of "any model" in a request (``ANY_MODEL``), as ``GET /v1/models/default`` answers it


@dataclass
class Served:
    """Who serves one model or task: the miners a chat would race (``miners``), those this API has set aside for
    failing its requests (``aside``), and per task (of a model) the miners it would race, or the models (of a task)."""

    miners: set[int] = field(default_factory=set)
    aside: set[int] = field(default_factory=set)
    per_task: dict[str, int] = field(default_factory=dict)
    models: set[str] = field(default_factory=set)

    def add(self, uid: int, aside: bool) -> None:
        (self.aside if aside else self.miners).add(uid)


@dataclass
class Catalogue:
    """Who serves what, per model and per task. A miner set aside still makes its models and tasks listed (a
    chat for them is a 503 with ``Retry-After`` until a probe finds it answering, not a 404), counted apart."""

    created: dict[str, int] = field(default_factory=dict)  # model -> when this API first saw it served
    by_model: dict[str, Served] = field(default_factory=dict)
    by_task: dict[str, Served] = field(default_factory=dict)

    def add(self, uid: int, entry: dict[str, Any], *, aside: bool = False,
            allowed: Collection[str] | None = None) -> None:
        """``allowed``: the models a key may use (None: any); a miner serving none of them is left out, so the
        tasks' miners and models are those a chat of that key could reach."""
        models, tasks = offered(entry, "llm_model_availabilities"), offered(entry, "task_availabilities")
        if allowed is not None:
            models = [m for m in models if m in allowed]
            if not models:
                return
        for model in models:
            served = self.by_model.setdefault(model, Served())
            served.add(uid, aside)
            for task in tasks:
                served.per_task[task] = served.per_task.get(task, 0) + (not aside)
        for task in tasks:
            served = self.by_task.setdefault(task, Served())
            served.add(uid, aside)
            served.models.update(models)

    def model(self, name: str) -> ModelOut | None:
        served = self.by_model.get(name)
        if served is None:
            return None
        return ModelOut(id=name, created=self.created.get(name, 0), miners=len(served.miners),
                        miners_set_aside=len(served.aside), tasks=dict(sorted(served.per_task.items())))

    def any_model(self) -> ModelOut | None:
        """``default``, "any model" as a chat takes it: the miners serving any model (each once), per task the
        miners serving it with any model, first seen when the first model was (None: no model served)."""
        if not self.by_model:
            return None
        served = self.by_model.values()
        return ModelOut(id=DEFAULT_MODEL, created=min(self.created.get(name, 0) for name in self.by_model),
                        miners=len(set().union(*(s.miners for s in served))),
                        miners_set_aside=len(set().union(*(s.aside for s in served))),
                        tasks={task: len(s.miners) for task, s in sorted(self.by_task.items())})

    def models(self) -> ModelListOut:
        return ModelListOut(data=[m for name in sorted(self.by_model) if (m := self.model(name))])

    def tasks(self) -> TaskListOut:
        return TaskListOut(data=[TaskOut(id=t, miners=len(s.miners), miners_set_aside=len(s.aside),
                                         models=sorted(s.models)) for t, s in sorted(self.by_task.items())])


def build_catalogue(ctx: ApiContext, allowed: Collection[str] | None = None) -> Catalogue:
    """The catalogue of miners that are serving now and whose availability is fresh, those this API has set
    aside counted apart (what selection races: ``miners`` 0 is the 503 a chat for the model then gets).
    ``allowed``: a key's ``allowed_models``, the only models it is told of (as OpenAI lists a key's models)."""
    cache = ctx.availability
    if cache is None or not cache.fresh():
        return Catalogue()
    catalogue = Catalogue(created=cache.first_listed)
    allowed = None if allowed is None else frozenset(allowed)
    health = ctx.miner_health
    for neuron in ctx.metagraph.snapshot.serving(exclude_hotkey=ctx.client.signer.hotkey):
        entry = cache.entries.get(neuron.uid)
        if isinstance(entry, dict):
            catalogue.add(neuron.uid, entry, aside=health is not None and health.is_aside(neuron), allowed=allowed)
    return catalogue


async def list_models(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    key = await authenticate(request, ctx.store, scope=None)
    return json_response(build_catalogue(ctx, key.allowed_models).models().model_dump(mode="json"))


async def get_model(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    key = await authenticate(request, ctx.store, scope=None)
    name = request.match_info["model"]
    if name in ANY_MODEL:  # "any model", as a chat takes it (it was a 404 model_not_found, as no miner's name)
        check_model(key, None)  # a key limited to some models must name one, in a chat too
        found = build_catalogue(ctx).any_model()
        if found is None:
            raise not_listed(ctx, None)
        return json_response(found.model_dump(mode="json"))
    found = build_catalogue(ctx, key.allowed_models).model(name)
    if found is None:
        raise model_not_found(name) if key.allowed_models is not None and name not in key.allowed_models \
            else not_listed(ctx, name)
    return json_response(found.model_dump(mode="json"))


def not_listed(ctx: ApiContext, model: str | None) -> ApiError:
    """Why ``model`` is not in the catalogue, as a chat for it is told: a 404 only when fresh availability says
    no miner serves it. Every miner down at the last poll is the chat's 503; and without fresh availability
    (a chat is raced to every serving miner), a model the last availability known listed may still be served,
    a 503 until the next refresh: it was a 404 "does not exist" both times, which took an outage for a wrong
    model name. A name no availability listed stays a 404, fresh or not (a 503 for any name at all named
    ``../../etc/passwd`` a model that may be served). ``model`` None: any model (``default``), never a 404."""
    cache = ctx.availability
    if cache is None or not cache.fresh():
        # not served when last known (or never known): a 404; a 503 for any name took `../../etc/passwd` for a model
        if model is not None and (cache is None or model not in cache.first_listed):
            return model_not_found(model)
        retry = max(1, math.ceil(ctx.settings.availability_refresh_seconds))  # the next refresh's chance
        what = "any model" if model is None else f"the model `{model}`"
        return ApiError(503, f"Whether any miner serves {what} is not known now: this API has no fresh "
                             "availability from the validator (a chat is raced to every serving miner meanwhile).",
                        code=NO_MINERS, headers={"Retry-After": str(retry)})
    registered = ctx.metagraph.snapshot.serving(exclude_hotkey=ctx.client.signer.hotkey)
    return none_fits(registered, cache, task=None, model=model)


async def list_tasks(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    key = await authenticate(request, ctx.store, scope=None)
    return json_response(build_catalogue(ctx, key.allowed_models).tasks().model_dump(mode="json"))
