"""``GET /ready`` for the API and the validator: its wire models, how checks become an answer, and the checks
both processes share (the metagraph's).

A check is a ``CheckOut``: whether it passes, one line an operator can act on, and whether it is required
(a failure takes the process out of rotation, a 503) or a warning (said in ``warnings``, still a 200).
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, Field

from shared.http import json_response
from shared.metagraph import MetagraphView

MIN_METAGRAPH_LIMIT = 60.0


class CheckOut(BaseModel):
    ok: bool
    detail: str
    required: bool = Field(default=True, description="false: a failure is a warning, not a reason to take the "
                                                     "worker out of rotation")
    # A failing check the process tries again itself while no traffic does (the validator's recheck): when it was
    # last tried and by what. Left out of the JSON otherwise (``ready_response``).
    last_tried_at: float | None = Field(default=None, description="Unix seconds of the failing check's latest try")
    last_tried_by: str | None = Field(default=None, description="what made it: traffic, or the process's recheck")


class ReadyOut(BaseModel):
    """``GET /ready``: 200 when every required check passes, 503 with the failing checks' reasons otherwise;
    a failing check that does not stop the worker serving is a warning."""

    ready: bool
    reasons: list[str]
    warnings: list[str] = Field(default_factory=list)
    checks: dict[str, CheckOut]


def ready_out(checks: dict[str, CheckOut]) -> ReadyOut:
    """The answer for ``checks``: a reason per failing required check, a warning per failing other one."""
    reasons = [f"{name}: {c.detail}" for name, c in checks.items() if not c.ok and c.required]
    warnings = [f"{name}: {c.detail}" for name, c in checks.items() if not c.ok and not c.required]
    return ReadyOut(ready=not reasons, reasons=reasons, warnings=warnings, checks=checks)


def failing(out: ReadyOut) -> list[str]:
    """The names of the required checks that fail (what makes ``out`` a 503)."""
    return [name for name, c in out.checks.items() if not c.ok and c.required]


def ready_response(out: ReadyOut) -> Any:
    """``out`` as ``/ready`` answers it: 200 when ready, 503 otherwise (the same body)."""
    return json_response(out.model_dump(mode="json", exclude_none=True), status=200 if out.ready else 503)


def gauge_age(age: float | None) -> float:
    """An age as a gauge shows it: +Inf when the thing has never happened (``age`` None). Shown as 0 it read "as
    fresh as can be" on a process that never had one, the opposite of what ``/ready`` said then."""
    return math.inf if age is None else age


def metagraph_check(metagraph: MetagraphView, refresh_seconds: float) -> CheckOut:
    """Loaded, and younger than 3 refresh intervals (at least ``MIN_METAGRAPH_LIMIT``): a process working
    from an old metagraph calls miners that left, credits uids that changed hands, and misses new ones."""
    limit = max(MIN_METAGRAPH_LIMIT, 3 * refresh_seconds)
    age = metagraph.age_seconds
    if not metagraph.snapshot.neurons:
        return CheckOut(ok=False, detail="the metagraph has not been loaded")
    if age > limit:
        return CheckOut(ok=False, detail=f"the metagraph is {age:.0f}s old (limit {limit:.0f}s)")
    return CheckOut(ok=True, detail=f"block {metagraph.snapshot.block}, {age:.0f}s old")
