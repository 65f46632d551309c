"""The organic scoring payload an API process posts to ``/scoring`` (wire model).

Shape (``api.race.Race.payload()`` plus ``body``): the request body sent to
every miner (with a seed of its own for each uid in ``seeds``), the uids raced and
the hotkey each was raced under, each uid's raw SSE chunks and their arrival times
(seconds since fan-out), each uid's error, the winner and a timestamp.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from neurons.validator.scoring import ScoringJob, job_bytes
from shared.errors import first_problem
from shared.metagraph import MetagraphSnapshot
from shared.protocol import DEFAULT_TASK, ChatCompletionRequest

MAX_UIDS = 256
MAX_CHUNKS = 100_000


class OrganicPayload(BaseModel):
    model_config = ConfigDict(extra="ignore")

    body: dict[str, Any]
    uids: list[int] = Field(min_length=1, max_length=MAX_UIDS)
    chunks: dict[int, list[str]] = Field(default_factory=dict)
    timings: dict[int, list[float]] = Field(default_factory=dict)
    errors: dict[int, str | None] = Field(default_factory=dict)
    # The hotkey each uid was raced under (an API from before it existed sends none): a payload that
    # arrives after a uid changed hands (an outbox holds payloads while the validator is down) scores
    # only the uids still held by the hotkeys that answered.
    hotkeys: dict[int, str] = Field(default_factory=dict)
    winner: int | None = None
    created_at: float | None = None
    # The deadline the miners had (the API's: the caller's timeout or what its max_tokens allows); an API
    # from before it existed sends none and the validator's ORGANIC_TIMEOUT stands in.
    deadline_s: float | None = Field(default=None, gt=0, le=3600)
    request_id: str | None = Field(default=None, max_length=128)
    kind: str | None = Field(default=None, max_length=64)
    # The caller in effect chose these miners (``uids``, a session, a model only one serves: ``api.fanout.aimed``):
    # taken, never scored. A key holder could otherwise score a miner it owns with as many answers as it likes
    # (honest only for its own requests), or sink a rival's.
    caller_chose_miners: bool = False
    # The seed each of these uids was sent in place of ``body``'s (a mixture's first stage gives each miner its own):
    # each answer is judged against its own seed's reference. An API from before it existed sends none.
    seeds: dict[int, int] = Field(default_factory=dict)

    def identity(self) -> tuple[Any, ...] | None:
        """What tells this payload from any other (None: an API too old to say). A forwarder that lost the
        validator's 202 sends the same stored payload again: it must be scored once."""
        if self.request_id is None or self.created_at is None:
            return None
        return (self.request_id, self.kind, self.created_at, tuple(self.uids))

    # Each problem is told as ``PydanticCustomError``, whose message is the 400's as written: a ``ValueError``'s
    # came as "Invalid request body: Value error, ..." with no param, whatever field it was about, and the API's
    # outbox quoted that in its WARNING for the dropped payload.
    @field_validator("uids")
    @classmethod
    def _distinct(cls, uids: list[int]) -> list[int]:
        if any(u < 0 for u in uids) or len(set(uids)) != len(uids):
            raise PydanticCustomError("invalid_payload", "uids must be distinct non-negative integers")
        return uids

    @field_validator("body")
    @classmethod
    def _chat_request(cls, body: dict[str, Any]) -> dict[str, Any]:
        try:
            ChatCompletionRequest.model_validate(body)  # the body must be a real chat request
        except ValidationError as e:
            where, why = first_problem(e)
            raise PydanticCustomError("invalid_payload", "not a chat request ({where}: {why})",
                                      {"where": where, "why": why}) from None
        return body

    @model_validator(mode="after")
    def _consistent(self) -> OrganicPayload:
        known = set(self.uids)
        for name in ("chunks", "timings", "errors", "hotkeys", "seeds"):
            extra = set(getattr(self, name)) - known
            if extra:
                raise PydanticCustomError("invalid_payload", "{name} has uids {extra} that are not in uids",
                                          {"name": name, "extra": str(sorted(extra))})
        if sum(len(c) for c in self.chunks.values()) > MAX_CHUNKS:
            raise PydanticCustomError("invalid_payload", "too many chunks")
        if self.winner is not None and self.winner not in known:
            raise PydanticCustomError("invalid_payload", "winner is not one of uids")
        return self

    @property
    def task(self) -> str:
        """The task its body names (a body naming none is the default task's, as miners read it)."""
        return str(self.body.get("task") or DEFAULT_TASK)

    def body_of(self, uid: int) -> dict[str, Any]:
        """The body ``uid`` was sent: ``body``, with its own seed when it had one (``seeds``)."""
        return {**self.body, "seed": self.seeds[uid]} if uid in self.seeds else self.body

    def to_job(self, snapshot: MetagraphSnapshot, deadline_s: float) -> ScoringJob:
        """A scoring job for the uids the metagraph still knows, held by the hotkeys that answered."""
        hotkeys = {u: n.hotkey for u in self.uids if (n := snapshot.by_uid(u)) is not None
                   and self.hotkeys.get(u, n.hotkey) == n.hotkey}
        chunks = {u: c for u, c in self.chunks.items() if u in hotkeys}
        return ScoringJob(
            source="organic",
            task=self.task,
            bodies={u: self.body_of(u) for u in hotkeys},
            hotkeys=hotkeys,
            chunks=chunks,
            timings={u: t for u, t in self.timings.items() if u in hotkeys},
            errors={u: e for u, e in self.errors.items() if u in hotkeys and e},
            deadline_s=self.deadline_s or deadline_s,
            created_at=arrival_time(self.created_at, time.time()),
            size=job_bytes(chunks, self.body),
            request_id=self.request_id,
        )


def arrival_time(created_at: float | None, now: float) -> float:
    """The time a payload's age (``ORGANIC_MAX_AGE_SECONDS``) counts from: its ``created_at``, and ``now`` when it
    has none (an API too old to say) or one in the future (an API whose clock is ahead, or was when it made the
    payload). Counted from a future time, a payload was never stale: one dated a year ahead waited in the queue
    or the scoring inbox past any age and was still scored."""
    return min(created_at, now) if created_at else now
