"""Parsing the ``/miner_availabilities/*`` inputs, shared by the validator and the API (same shapes)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aiohttp import web

from shared.errors import ApiError
from shared.http import read_json, read_raw
from shared.tasks import ALL_TASKS

MAX_UIDS = 65536
# ``get_available_miners``'s query parameters (any other is a 400: ``?models=m2`` listed every miner in silence)
AVAILABLE_MINERS_QUERY = ("k", "task", "model")


def offered(entry: dict[str, Any], field: str) -> list[str]:
    """The names an availability entry marks available under ``field`` (``llm_model_availabilities``: the
    models a miner serves; ``task_availabilities``: its tasks)."""
    return [name for name, ok in (entry.get(field) or {}).items() if ok]


def parse_uid_list(data: Any) -> list[int] | None:
    """A JSON array of non-negative integer uids, or null for every uid."""
    if data is None:
        return None
    if not isinstance(data, list) or not all(isinstance(u, int) and not isinstance(u, bool) and u >= 0 for u in data):
        raise ApiError(400, "Body must be a JSON array of non-negative integer uids, or null.", code="invalid_uids")
    if len(data) > MAX_UIDS:
        raise ApiError(400, f"At most {MAX_UIDS} uids per request.", code="invalid_uids")
    return data


async def read_uid_list(request: web.Request) -> list[int] | None:
    """The request body as a uid list; an empty body means all uids."""
    raw = await read_raw(request)
    return parse_uid_list(await read_json(request)) if raw.strip() else None


def parse_k(value: str | None, default: int = 10) -> int:
    """``k`` from a query string: at least 1, and any larger number asks for every uid there is (``k=1000``
    to mean "all" was a 400 past 256, though the original documents only an integer); absent is the
    default, and ``k=`` (empty) is not a number: a 400."""
    if value is None:
        return default
    try:
        k = int(value)
    except ValueError:  # 5,000 digits too (Python's limit on int() of a long string)
        raise ApiError(400, "k must be an integer.", param="k", code="invalid_value") from None
    if k < 1:
        raise ApiError(400, "k must be at least 1.", param="k", code="invalid_value")
    return min(k, MAX_UIDS)


def parse_task(value: str | None, advertised: Iterable[str] = ()) -> str | None:
    """``task`` from a query string: one of the subnet's tasks or of those a miner ``advertised``
    (selection takes those too), or None (any). A misspelt task is a 400 naming them, not an empty
    list that reads as "no miner serves it". Its code is ``unknown_task``, as a chat request's for a task no
    miner advertises (it was ``invalid_value`` here: one mistake, two codes, and README's table named one)."""
    if not value:
        return None
    if value not in ALL_TASKS and value not in set(advertised):
        names = [*ALL_TASKS, *sorted(set(advertised) - set(ALL_TASKS))]
        raise ApiError(400, f"Unknown task {value[:64]!r}: the tasks are {', '.join(names)}.", param="task",
                       code="unknown_task")
    return value
