"""The HTTP side of ``POST /scoring``: the body read into payloads (a malformed one is the caller's 400, or in a batch
a ``rejected`` item), and what the intake cannot take (``intake.IntakeRefused``) answered in OpenAI's error shape.
The statuses, codes and headers of the intake's refusals are here alone: ``intake`` raises them as its own kinds."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from neurons.validator.intake import InboxRefused, IntakeRefused, QueueFull, UnknownTask, check_task
from neurons.validator.payload import OrganicPayload
from shared.errors import ApiError
from shared.http import parse_model

MAX_SCORING_BATCH = 256
RETRY_AFTER_S = "5"  # a batch refused for now: the API's forwarder sends it again after that


def refusal(e: IntakeRefused) -> ApiError:
    """``e`` as the error its sender gets: a task not scored is the payload's 400 (``unknown_task``, naming
    ``body.task``: the forwarder drops it); a full queue and an inbox that cannot store are 503s with ``Retry-After``
    (the forwarder keeps the batch and sends it again)."""
    if isinstance(e, UnknownTask):
        return ApiError(400, str(e), param="body.task", code="unknown_task")
    if isinstance(e, QueueFull):
        return ApiError(503, str(e), code="queue_full", headers={"Retry-After": RETRY_AFTER_S})
    if isinstance(e, InboxRefused):
        return ApiError(503, str(e), code="store_unavailable", headers={"Retry-After": RETRY_AFTER_S})
    raise TypeError(f"no answer for {type(e).__name__}") from e  # a kind added to intake without its answer here


def read_payload(item: Any, tasks: Collection[str]) -> OrganicPayload:
    """``item`` as a payload this validator scores: well formed (else the 400 naming the field) and of one of
    ``tasks`` (else ``UnknownTask``)."""
    return check_task(parse_model(OrganicPayload, item), tasks)


def read_batch(items: list[Any], tasks: Collection[str]) -> tuple[list[OrganicPayload], list[dict[str, Any]]]:
    """The batch's well-formed payloads, and each other item's index and why (malformed items are reported, not
    fatal: the API's forwarder drops those and delivers the rest)."""
    if not items or len(items) > MAX_SCORING_BATCH:
        raise ApiError(400, f"A scoring batch holds 1 to {MAX_SCORING_BATCH} payloads.", code="invalid_payload")
    payloads, rejected = [], []
    for index, item in enumerate(items):
        if not isinstance(item, dict):  # "Request body must be a JSON object" said of a batch that is an array
            rejected.append({"index": index, "error": "A scoring payload must be a JSON object."})
            continue
        try:
            payloads.append(read_payload(item, tasks))
        except ApiError as e:
            rejected.append({"index": index, "error": e.message})
        except UnknownTask as e:
            rejected.append({"index": index, "error": str(e)})
    return payloads, rejected
