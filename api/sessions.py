"""Sticky model sessions: ``/v1/sessions`` routes and how chat uses a pinned miner.

A session pins one miner (chosen like any selection: serving the model,
incentive-weighted) to the calling key until it expires. While a key has an
active session, chat requests without explicit ``uids`` go to that miner only;
with ``failover``, a miner that fails before the caller got any of its answer is
replaced by another serving the same model and the session is re-pinned.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

from aiohttp import web
from loguru import logger
from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from api.access_log import request_id
from api.auth import authenticate, check_model, one_header, store_errors
from api.context import CTX, ApiContext
from api.fanout import ping, settle, start_race
from api.race import MinerRun, Race
from api.selection import select_miners
from shared.errors import ApiError, shown_name
from shared.http import json_response, parse_model, read_json, refuse_query
from shared.logging import field_value
from shared.metagraph import Neuron
from shared.protocol import DEFAULT_TASK, MAX_SESSION_ID
from shared.store.base import KeyRecord, StoreUnavailable
from shared.store.outage import OutageLog
from shared.store.sessions import Session, SessionStore, pin_of

MIN_DURATION, MAX_DURATION = 1, 7 * 24 * 3600
PING_TIMEOUT = 10.0
MAX_PING_MOVES = 2  # replacements a ping tries (each pinged in turn) before it closes a session


class OpenSessionRequest(BaseModel):
    """Strict, as chat requests are: coerced, ``"session_duration": true`` opened a 1-second session
    and ``"failover": "no"`` or ``0`` passed as a choice the caller may not have meant."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, strict=True)
    # model_id: the reference sessions API's name for it (in its query string, or here)
    model: str = Field(min_length=1, max_length=256, validation_alias=AliasChoices("model", "model_id"))
    session_duration: int = Field(default=3600, ge=MIN_DURATION, le=MAX_DURATION, alias="sessionDuration")
    failover: bool = False
    direct_payment: bool | None = Field(default=None, alias="directPayment", description="Accepted, ignored")


def _store(ctx: ApiContext) -> SessionStore:
    if ctx.sessions is None:
        raise ApiError(503, "Sessions are not enabled on this API.", code="sessions_disabled")
    return ctx.sessions


def serving_miners(ctx: ApiContext, model: str | None, k: int) -> list[Neuron]:
    """Up to ``k`` miners serving ``model`` (incentive-weighted), chosen as chat chooses them, and refused as chat
    is: OpenAI's 404 ``model_not_found`` when fresh availability says none serves it, a 503 when none is up."""
    return select_miners(ctx.metagraph.snapshot, ctx.availability, health=ctx.miner_health, uids=None, task=DEFAULT_TASK, model=model, k=k,
                         rng=ctx.rng, self_hotkey=ctx.client.signer.hotkey)


def pick_miner(ctx: ApiContext, model: str | None, *, exclude: set[int] = frozenset()) -> Neuron | None:
    """One miner serving ``model`` (incentive-weighted), or None."""
    try:
        picked = serving_miners(ctx, model, len(exclude) + 1)
    except ApiError:
        return None
    return next((n for n in picked if n.uid not in exclude), None)


def pinned_neuron(ctx: ApiContext, session: Session) -> Neuron | None:
    """The session's miner if it is still the same registered, serving hotkey."""
    n = ctx.metagraph.snapshot.by_uid(session.uid)
    if n is None or n.hotkey != session.hotkey or not n.axon:
        return None
    return n


def still_valid(ctx: ApiContext, session: Session) -> bool:
    if pinned_neuron(ctx, session) is None:
        return False
    cache = ctx.availability
    served = cache.serves(session.uid, None, _model(session.model)) if cache is not None else None
    return served is not False


def _model(model: str) -> str | None:
    return None if model in ("", "default") else model


def pinned_model(session: Session) -> str | None:
    """The model a session was opened for; None for one opened for any model."""
    return _model(session.model)


async def move_or_close(ctx: ApiContext, session: Session, reason: str,
                        avoid: frozenset[int] = frozenset()) -> tuple[Session | None, str]:
    """Failover: re-pin to another miner (not one of ``avoid``, found failing already); otherwise (or if none)
    close. Returns (session or None, action).

    Both only while the session still pins the miner that failed: concurrent requests (on any worker or
    host sharing the store) and the sweeps see the same failure, and each moved the session again, so
    one conversation's turns were answered by as many miners (or a sweep closed a session a request had
    just moved). Whoever comes second takes the session where the first put it.
    The store down is StoreUnavailable (the sweep skips a round); request paths use ``moved_or_closed``."""
    store = _store(ctx)
    pin = pin_of(session)
    if session.failover:
        replacement = pick_miner(ctx, _model(session.model), exclude={session.uid, *avoid})
        if replacement is not None:
            current = await store.repin(session.id, replacement.uid, replacement.hotkey, if_pinned=pin)
            if current is None:
                return None, "closed"
            if pin_of(current) == (replacement.uid, replacement.hotkey):
                logger.info("session {} moved uid {} -> {}: {}", session.id, session.uid, current.uid, reason)
            return current, "moved"
    if await store.close(session.id, if_pinned=pin):
        logger.info("session {} closed (uid {}): {}", session.id, session.uid, reason)
        return None, "closed"
    current = await store.get(session.id)  # moved meanwhile by another worker, or gone
    return (current, "moved") if current is not None else (None, "closed")


async def moved_or_closed(ctx: ApiContext, session: Session, reason: str,
                          avoid: frozenset[int] = frozenset()) -> tuple[Session | None, str]:
    """``move_or_close`` for a request: the session store down is its 503, not a 500."""
    with store_errors("session store"):
        return await move_or_close(ctx, session, reason, avoid)


async def resolve(ctx: ApiContext, request: web.Request, explicit_id: str | None, key: KeyRecord,
                  model: str | None = None) -> Session | None:
    """The session this chat request runs in: the named one (``session_id`` / ``x-session-id``) or the key's.

    The key's session pins the requests for its model (or any model, for a session opened for any): a
    request naming another model is raced as usual, since the pinned miner may not serve it. Naming a
    session and another model is a 400."""
    if ctx.sessions is None:
        return None
    session_id = explicit_id or session_header(request)
    # as chat's session_id field is checked (a 5,000-character header was echoed back whole in the 404)
    if session_id is not None and len(session_id) > MAX_SESSION_ID:
        raise ApiError(400, f"x-session-id is at most {MAX_SESSION_ID} characters.", code="invalid_value",
                       param="x-session-id")
    with store_errors("session store"):
        if session_id:
            session = await ctx.sessions.get(session_id)
            if session is None or session.key_id != key.id:
                raise ApiError(404, f"No active session '{session_id}' for this key.", code="session_not_found",
                               param="session_id")
            if _other_model(session, model):
                raise ApiError(400, f"Session {session.id} serves the model '{session.model}'; this request names "
                               f"'{model}'.", code="session_model_mismatch", param="model")
            return session
        session = await ctx.sessions.for_key(key.id)
        return None if session is None or _other_model(session, model) else session


def session_header(request: web.Request) -> str | None:
    """The session the ``x-session-id`` header names, if any; two of them with two values is a 400 (``one_header``):
    the first was taken in silence."""
    return one_header(request.headers, "x-session-id") or None


def _other_model(session: Session, model: str | None) -> bool:
    pinned = _model(session.model)
    return model is not None and pinned is not None and model != pinned


async def session_miners(ctx: ApiContext, session: Session) -> tuple[Session, list[Neuron], int | None]:
    """The miner this request goes to: the pinned one while ``still_valid``; otherwise fail over now (or
    answer 502 naming the session). Returns the session as it now stands, its miner, and the uid it
    moved from (None when it did not move).

    Only a deregistered miner was checked here: one that availability said no longer served the
    session's model kept getting its requests until the next sweep. And the caller went on with the
    session it had read, so when the replacement failed too, the failover excluded the first miner
    instead of the replacement, asked the replacement again and named the first in its 502."""
    neuron = pinned_neuron(ctx, session)
    if neuron is not None and still_valid(ctx, session):
        return session, [neuron], None
    moved, _ = await moved_or_closed(ctx, session, "miner deregistered or no longer serving the session's model")
    neuron = pinned_neuron(ctx, moved) if moved else None
    if moved is None or neuron is None:
        what = "the session was closed" if moved is None else f"the session now pins uid {moved.uid}, not registered here"
        raise ApiError(502, f"Session {session.id}: its miner uid {session.uid} is gone or no longer serves the "
                       f"model; {what}.", code="session_miner_failed")
    return moved, [neuron], session.uid


async def failover_race(
    ctx: ApiContext, session: Session, race: Race, body: dict[str, Any], *, stream: bool, request_id: str,
    headers: dict[str, str],
) -> tuple[Race, MinerRun | None]:
    """The pinned miner gave no valid answer: with failover, re-pin and ask the replacement within what is
    left of the deadline; otherwise a 502 naming the session.

    No winner means the caller got nothing of the failed answer (a stream is relayed from its first content
    on), so the request can go to the replacement whatever the miner sent before it failed. It was failed
    over only when the miner had sent no chunk at all: one that sent its role chunk (every OpenAI-compatible
    server's first) and then dropped, or an answer cut short or stalled before the caller saw it, was a
    502 (or a 504) telling a caller with ``failover`` to "open another with failover", and the session went
    on pinning that miner.

    A miner that does not serve the session's model (its 404 ``model_not_found``) is failed over as any
    other failure; when no miner asked serves it, the race is returned unanswered, for the caller's
    ``no_winner_error`` to make OpenAI's 404 of it (as for a race outside a session), and the session is
    closed. It was a 502 on every turn (the session still pinned that miner, or the failover moved it
    between two that said so) until the session was pinged or expired."""
    failed = race.runs[0]
    what = ""
    if session.failover:
        moved, _ = await moved_or_closed(ctx, session, f"request failed: {failed.error}")
        if moved is not None:
            headers["x-sn1-session-moved-from"] = str(session.uid)
            neuron, what = pinned_neuron(ctx, moved), f" The session now pins uid {moved.uid}."
        else:  # closed for want of another miner, or it ended as this ran: the request is failed over all the same
            neuron = pick_miner(ctx, _model(session.model), exclude={session.uid})
            what = " The session was closed." if neuron is None else " The session has ended."
        remaining = race.deadline - asyncio.get_running_loop().time()
        if neuron is not None and remaining > 0.05:
            return await _ask_replacement(ctx, session, moved, neuron, race, body, remaining, stream=stream,
                                          request_id=request_id, headers=headers)
    if race.not_served():  # with failover it was moved (and the replacement not asked: no time left) or closed
        if not session.failover:
            await close_not_serving(ctx, session, failed)
        return race, None
    if failed.error_kind == "timeout":  # as a plain request past its deadline: a 504, not a bad answer
        raise ApiError(504, f"Session {session.id}: the pinned miner uid {session.uid} did not answer before the "
                       f"deadline.{what}", code="deadline_exceeded", headers=dict(headers))
    if not what:  # no failover: where the session stands now
        what = await _without_failover(ctx, session)
    raise ApiError(502, f"Session {session.id}: the pinned miner uid {session.uid} failed: {failed.error}.{what}",
                   code="session_miner_failed", headers=dict(headers))


async def _without_failover(ctx: ApiContext, session: Session) -> str:
    """What a 502 of a session without failover says of the session: it still pins the miner that failed (until a
    ping finds it so), or it ended while the request ran (it expired, was deleted, or the key opened another),
    where the 502 told the caller to ping it, which was a 404. Without failover nothing moves a session, it only
    ends. The store down: nothing is said of it."""
    try:
        current = await _store(ctx).get(session.id)
    except StoreUnavailable as e:
        logger.warning("session {}: not read for its 502 ({}); the session store is unavailable", session.id, e)
        return ""
    if current is None:
        return (" The session has ended meanwhile (it expired, was deleted, or the key opened another): the key's "
                "next request is raced, or goes to its new session.")
    return (f" The session still pins it: ping it (POST /v1/sessions/{session.id}/ping) to close it, or open "
            "another with failover.")


async def _ask_replacement(
    ctx: ApiContext, session: Session, moved: Session | None, neuron: Neuron, race: Race, body: dict[str, Any],
    remaining: float, *, stream: bool, request_id: str, headers: dict[str, str],
) -> tuple[Race, MinerRun | None]:
    """Ask ``neuron`` within ``remaining`` seconds, after the pinned miner failed ``race``: where the session
    now pins (``moved``), or, the session having ended as the request ran (``moved`` None: it expired, was
    deleted, or the key's new session replaced it), a miner serving its model, pinned by nothing.

    A session that ended as its request ran was a 502 "the session was closed" for a request with
    ``failover``, though other miners served the model: a key that opened a new session failed every request
    still in flight on the old one whose miner then failed."""
    failed = race.runs[0]
    settle(ctx, race, body, kind="session")  # the failed attempt is scored too
    # the replacement has only what the failed miner left of the deadline: not its fault if short
    retry = start_race(ctx, [neuron], body, remaining, stream=stream, request_id=request_id,
                       excuse_timeouts=True, scored=race.scored,
                       latency_scale=race.latency_scale or race.deadline - race.started)
    try:
        winner = await retry.winner()
    except BaseException:  # the caller left (or a bug): the handler's cleanup only knows the first race
        retry.cancel()
        raise
    if winner is not None or retry.refused():  # a refusal is the request's: its 400, as any race's
        return retry, winner
    settle(ctx, retry, body, kind="session")
    again = retry.runs[0]
    if retry.not_served():  # neither serves the model: the caller's 404, and no session pinned to either
        if moved is not None:
            await close_not_serving(ctx, moved, again)
        return retry, None
    status, code = (504, "deadline_exceeded") if again.error_kind == "timeout" else (502, "session_miner_failed")
    where = (f"the session moved to uid {neuron.uid}, which failed too: {again.error}. The session now pins uid "
             f"{neuron.uid}: send the request again, or ping the session to move it." if moved is not None else
             f"the session had ended, and uid {neuron.uid}, asked instead, failed too: {again.error}.")
    raise ApiError(status, f"Session {session.id}: the pinned miner uid {session.uid} failed ({failed.error}); {where}",
                   code=code, headers=dict(headers))


async def after_mid_stream_failure(ctx: ApiContext, session: Session, race: Race, run: MinerRun) -> None:
    """With failover, a miner whose streamed answer failed after it started (the caller got part of it, then
    an error event) no longer keeps the session: it is moved, or closed when no other miner serves the model,
    so the key's next turn goes elsewhere. It kept the session, and a miner that fails every answer midway
    (a model server that dies at some length) cut every turn short; a ping (one token) may well pass it as "ok".

    Not for a miner cut off by a deadline it is excused from (``Race.excuse_timeouts``: the caller's own
    shorter ``timeout``, a replacement's remainder): it was answering, and a short deadline is no fault of
    its own. ``run`` is the winner (the pinned miner, or the replacement a failover asked). The answer is
    sent already: the store down is a WARNING here, not the caller's 503."""
    if not session.failover or run.error is None or (race.excuse_timeouts and run.error_kind == "timeout"):
        return
    failed = dataclasses.replace(session, uid=run.uid, hotkey=run.neuron.hotkey)
    try:  # a replacement's failure: not back to the miner it replaced, which failed this request first
        await move_or_close(ctx, failed, f"failed mid-stream: {run.error}", avoid=frozenset({session.uid}))
    except StoreUnavailable as e:
        logger.warning("session {}: not moved off uid {}, which failed mid-stream: {}", session.id, run.uid, e)


async def close_not_serving(ctx: ApiContext, session: Session, run: MinerRun) -> None:
    """Close a session whose miner said it does not serve the session's model (``run``: its answer), unless it
    was moved meanwhile: the key's next request is not pinned to it (each was that miner's 404 again)."""
    await moved_or_closed(ctx, dataclasses.replace(session, failover=False), f"request failed: {run.error}")


async def open_session(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    key = await authenticate(request, ctx.store, scope="chat")
    body = parse_model(OpenSessionRequest, _with_query_model(await read_json(request, empty={}), request))
    model = _model(body.model)
    check_model(key, model)  # as chat checks it: a key limited to some models cannot pin "default" either
    # Selection's own refusal: every miner down at the validator's last poll was a 404 model_not_found for
    # any model (the caller fixed its request), where chat says 503 no_miners_available.
    miner = serving_miners(ctx, model, 1)[0]
    with store_errors("session store"):
        # a key deleted as this ran: the 401 it would get a moment later (KeyForgotten), nothing kept
        session = await _store(ctx).open(key.id, body.model, miner.uid, miner.hotkey,
                                         duration=body.session_duration, failover=body.failover)
    # the caller's model name, taken as written while availability is unknown: one word of the line (a line break in
    # it wrote a line of the caller's into the API's log, a space and an ``=`` fields of its own: ``uid=999``)
    logger.info("session {} opened key={} model={} uid={}", session.id, key.id, field_value(session.model), session.uid)
    return json_response(session.public())


class OpenSessionQuery(BaseModel):
    """``POST /v1/sessions``'s query string: the model, as the reference sessions API's client names it
    (``?model_id=...``). Anything else is a 400 naming it, as on ``/web_retrieval``: ``?sessionDuration=60``
    was ignored and a one-hour session opened; an empty ``?model_id=`` was a 400 asking for ``model``."""

    model_config = ConfigDict(extra="forbid")
    model_id: str | None = Field(default=None, min_length=1, max_length=256)
    model: str | None = Field(default=None, min_length=1, max_length=256)


MODEL_NAMES = ("model", "model_id")  # the body's and the query's names for the model a session is opened for


def _with_query_model(sent: Any, request: web.Request) -> Any:
    """The body, with the model a reference-API client names in the query string (``?model_id=...``) when the
    body names none. The model named twice, with two values (``?model_id=A`` and ``"model": "B"``), is a 400
    naming both: the body's was taken, in silence."""
    parse_model(OpenSessionQuery, dict(request.query))
    given = [(f"{name} in the query string", value) for name in MODEL_NAMES for value in request.query.getall(name, [])]
    if isinstance(sent, dict):
        given += [(f"{name} in the body", sent[name]) for name in MODEL_NAMES if name in sent]
    if len({repr(value) for _, value in given}) > 1:
        raise ApiError(400, "Two models named for one session: " + ", ".join(f"{where} {shown_name(repr(value))}" for where, value in
                       given) + ". Name it once.", code="invalid_value", param=given[0][0].split()[0])
    if not given or not isinstance(sent, dict):
        return sent
    if "model" in sent and "model_id" in sent:  # the same twice: once is enough
        return {k: v for k, v in sent.items() if k != "model_id"}
    return sent if "model" in sent or "model_id" in sent else sent | {"model": given[0][1]}


async def _own_session(request: web.Request, ctx: ApiContext, key: KeyRecord) -> Session:
    """The caller's session the path names; its route reads nothing from the query string (``refuse_query``)."""
    refuse_query(request)
    session_id = request.match_info["session_id"]
    with store_errors("session store"):
        session = await _store(ctx).get(session_id)
    if session is None or session.key_id != key.id:
        raise ApiError(404, f"No active session '{session_id[:128]}' for this key.", code="session_not_found")
    return session


async def get_session(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    key = await authenticate(request, ctx.store, scope="chat")
    refuse_query(request)  # ?session_id=... answered the key's session as if it were the one asked for
    with store_errors("session store"):
        session = await _store(ctx).for_key(key.id)
    if session is None:
        raise ApiError(404, "This key has no active session.", code="session_not_found")
    return json_response(session.public())


async def delete_session(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    key = await authenticate(request, ctx.store, scope="chat")
    session = await _own_session(request, ctx, key)
    with store_errors("session store"):
        await _store(ctx).close(session.id)
    return json_response({"session_id": session.id, "deleted": True})


async def ping_session(request: web.Request) -> web.Response:
    """A minimal completion against the pinned miner; on failure the session is moved (to a miner that answers
    the same ping: a move to a miner as dead said "moved" and the next chat failed again) or closed."""
    ctx = request.app[CTX]
    key = await authenticate(request, ctx.store, scope="chat")
    session = await _own_session(request, ctx, key)
    rid = request_id(request)  # the id its response and log line name (a new one each call, when none was sent)
    started = time.perf_counter()
    error = await ping_miner(ctx, session, rid)
    if error is None:
        latency_ms = round((time.perf_counter() - started) * 1000, 1)
        return json_response({"session_id": session.id, "uid": session.uid, "status": "ok", "latency_ms": latency_ms})
    out: dict[str, Any] = {"session_id": session.id, "status": "closed", "error": error, "previous_uid": session.uid}
    current, reason, tried = session, f"ping failed: {error}", []
    while True:
        if len(tried) >= MAX_PING_MOVES:  # the replacements failed too: the session is closed, as without failover
            current = dataclasses.replace(current, failover=False)
        moved, out["status"] = await moved_or_closed(ctx, current, reason, frozenset([session.uid, *tried]))
        if moved is None or moved.uid == current.uid or moved.uid in tried:
            break  # closed; or moved meanwhile by another worker, to a miner this ping did not pick
        replacement_error = await ping_miner(ctx, moved, rid)
        if replacement_error is None:
            break
        tried.append(moved.uid)
        current, reason = moved, f"ping failed: {replacement_error}"
    if tried:
        out["failed_replacements"] = tried  # moved to, pinged, and found failing too
    if moved is not None:
        out["uid"] = moved.uid
    return json_response(out)


async def ping_miner(ctx: ApiContext, session: Session, request_id: str) -> str | None:
    """None if the pinned miner answered a one-token completion, else the reason it did not. A miner that
    availability says no longer serves the session's model fails without being asked, as a chat request
    would move off it (it answered the ping and the ping said "ok")."""
    neuron = pinned_neuron(ctx, session)
    if neuron is None:
        return f"uid {session.uid} is no longer registered with the pinned hotkey"
    if not still_valid(ctx, session):
        return f"uid {session.uid} no longer serves the model '{session.model}' (availability)"
    return await ping(ctx, neuron, PING_TIMEOUT, request_id, task=DEFAULT_TASK,
                      model=session.model if _model(session.model) else None)


async def sweep(ctx: ApiContext) -> int:
    """End sessions whose miner was deregistered or is no longer available (run after refreshes)."""
    if ctx.sessions is None:
        return 0
    ended = 0
    for session in await ctx.sessions.active():
        if not still_valid(ctx, session):
            await move_or_close(ctx, session, "miner deregistered or unavailable")
            ended += 1
    return ended


async def sweep_loop(ctx: ApiContext, interval: float) -> None:
    """Sweep every ``interval`` seconds. A store down skips rounds, told as a run (``OutageLog``): a WARNING a
    round was four lines a minute for as long as it lasted. A bug in a round is a run too, its first line with the
    traceback: a traceback a round (every 15 s) buried the API's log in the same stack."""
    outage = OutageLog("session sweep skipped", voice=ctx.fleet.voice())  # every worker sweeps: told by one
    bugs = OutageLog("session sweep failed", back="a sweep succeeded again")
    while True:
        await asyncio.sleep(interval)
        try:
            await sweep(ctx)
        except StoreUnavailable as e:
            outage.failed(e)
        except Exception as e:  # a bug in one round must not end the sweeps for good
            bugs.failed(f"{type(e).__name__}: {e}", exception=e)
        else:
            outage.ok()
            bugs.ok()
