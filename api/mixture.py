"""Mixture of miners: gather several answers, then have one top miner synthesise them.

Stage 1 asks up to ``MIXTURE_K`` miners non-streaming under the first half of
the deadline and keeps every valid answer (partial failures are fine). Stage 2
sends the original conversation plus a synthesis instruction listing those
answers to the top-incentive miner among those that answered stage 1 (one that failed it is not
trusted with the last word), streaming or not as the caller asked; when it gives no answer, the next
of them is asked within what is left of the deadline (``next_synthesiser``).
"""

from __future__ import annotations

import asyncio
import math
import random
from dataclasses import dataclass
from typing import Any

from loguru import logger

from api.completion import each_failure, no_winner_error
from api.context import ApiContext
from api.fanout import passed_over, settle, start_race
from api.race import MinerRun, Race
from api.selection import top_miner
from shared.errors import CONTEXT_LENGTH_EXCEEDED, MODEL_SERVER_REJECTED, ApiError, invalid_value
from shared.jsonutil import dumpb
from shared.metagraph import Neuron
from shared.protocol import ChatCompletionRequest, content_text

MIXTURE_MODES = {"mixture-of-agents", "mixture-of-miners", "mixture"}
STAGE_ONE_SHARE = 0.5
# Drafts that make a mixture: once this share of the miners asked (rounded up) gave one, the rest of the first stage
# have a grace (``GRACE_*``), not the stage's whole half of the deadline, which one stalled miner held every caller for.
QUORUM_SHARE = 0.5
GRACE_FACTOR = 1.0  # the grace: as long again as the quorum took ...
MIN_GRACE_SECONDS = 0.5  # ... and at least this (network jitter on short answers)
CUT_NOTE = " [cut short]"  # ends a first-stage answer cut to fit the synthesis in what a miner takes (``fitted``)
# The first stage's bodies together: each of its miners is sent one of its own (its own seed), so 256 named miners
# and a 4 MiB image were 1 GiB of copies at once, and 1.6 s of the event loop to make them. 16 bodies at the API's
# MAX_BODY_BYTES; a text-only request of 10 kB fits thousands.
MIXTURE_STAGE_BYTES = 64 << 20
MIN_FINAL_SECONDS = 0.05  # less left than this: the next synthesiser is not asked (it could not answer)

SYNTHESIS_PROMPT = (
    "You have been provided with a set of responses from various models to the latest user query. "
    "Your task is to synthesize these responses into a single, high-quality response. Critically "
    "evaluate the information provided, recognising that some of it may be biased or incorrect. Do not "
    "simply replicate the given answers; offer a refined, accurate and comprehensive reply.\n\n"
    "Responses from models:"
)


def is_mixture(req: ChatCompletionRequest) -> bool:
    if req.mixture:
        return True
    if req.sampling_parameters is not None and req.sampling_parameters.mixture:
        return True
    return (req.inference_mode or "").strip().lower() in MIXTURE_MODES


def synthesis_messages(messages: list[dict[str, Any]], answers: list[str]) -> list[dict[str, Any]]:
    """The conversation with the synthesis instruction and ``answers`` in its system message: after the caller's
    own when it has one (as the original Mixture-of-Agents does), else as a system message of its own, first. A
    second system message was refused by a chat template that takes one (Mistral's), a mixture with a system
    prompt a 400 on such a model."""
    listing = "\n".join(f"{i}. {a}" for i, a in enumerate(answers, 1))
    instruction = f"{SYNTHESIS_PROMPT}\n{listing}"
    first = messages[0] if messages else None
    if first is None or first.get("role") != "system":
        return [{"role": "system", "content": instruction}, *messages]
    content = first.get("content")
    if isinstance(content, list):  # content parts: the instruction is one more text part
        merged: Any = [*content, {"type": "text", "text": f"\n\n{instruction}"}]
    else:
        merged = f"{content or ''}\n\n{instruction}"
    return [{**first, "content": merged}, *messages[1:]]


def final_body(body: dict[str, Any], answers: list[str], *, limit: int, request_id: str) -> dict[str, Any]:
    """The synthesis request: ``body`` with ``answers`` in its instruction, each cut (``fitted``) when the whole would
    be over ``limit`` bytes, what the miners take (``MINER_MAX_BODY_BYTES``): every miner refused it (413) and the
    caller got a 502 with valid answers in hand. A cut is a DEBUG line with ``request_id`` (the request's one INFO
    line is its access line): a thin synthesis had no sign that its drafts were cut."""
    out = _synthesis_body(body, answers)
    size = len(dumpb(out))
    if size <= limit:
        return out
    room = limit - len(dumpb(_synthesis_body(body, [""] * len(answers))))
    cut = fitted(answers, room)
    logger.debug("mixture rid={} first-stage drafts cut to fit the synthesis in MINER_MAX_BODY_BYTES {}: {} of {} "
                 "drafts cut, the synthesis body {} bytes before", request_id, limit,
                 sum(a != b for a, b in zip(answers, cut, strict=True)), len(answers), size)
    return _synthesis_body(body, cut)


def prompt_text(body: dict[str, Any]) -> str:
    """The text of ``body``'s messages (a synthesis: the conversation and the answers), for an estimated usage."""
    return "\n".join(content_text(m.get("content")) for m in body["messages"])


def fitted(answers: list[str], room: int) -> list[str]:
    """``answers`` in at most ``room`` bytes as JSON text: each a fair share of it, the shorter ones whole, so that
    no long answer crowds out the others; one cut ends with ``CUT_NOTE``, telling the synthesiser it was."""
    sizes = [_json_size(a) for a in answers]
    shares: dict[int, int] = {}
    left = room - len(answers) * _json_size(CUT_NOTE)
    for done, i in enumerate(sorted(range(len(answers)), key=sizes.__getitem__)):
        shares[i] = min(sizes[i], max(0, left // (len(answers) - done)))
        left -= shares[i]
    return [a if shares[i] >= sizes[i] else _cut(a, shares[i]) + CUT_NOTE for i, a in enumerate(answers)]


def _json_size(text: str) -> int:
    """The bytes ``text`` takes inside a JSON string (its escapes included; they are per character)."""
    return len(dumpb(text)) - 2


def _cut(text: str, size: int) -> str:
    """The longest start of ``text`` that takes at most ``size`` bytes as JSON text."""
    low, high = 0, len(text)
    while low < high:
        mid = (low + high + 1) // 2
        if _json_size(text[:mid]) <= size:
            low = mid
        else:
            high = mid - 1
    return text[:low]


def _synthesis_body(body: dict[str, Any], answers: list[str]) -> dict[str, Any]:
    out = dict(body)
    out["messages"] = synthesis_messages(body["messages"], answers)
    out.pop("mixture", None)
    out.pop("inference_mode", None)
    if isinstance(out.get("sampling_parameters"), dict):
        out["sampling_parameters"] = {k: v for k, v in out["sampling_parameters"].items() if k != "mixture"}
    return out


@dataclass(frozen=True)
class StageOne:
    """The first stage's valid answers, and every run of it (the request's access line names each miner asked,
    and why one failed)."""

    answers: list[MinerRun]
    runs: list[MinerRun]


def start_stage_one(ctx: ApiContext, neurons: list[Neuron], body: dict[str, Any], seconds: float, request_id: str, *,
                    scored: bool = True, latency_scale: float | None = None, param: str = "messages") -> Race:
    """Stage 1's race: ``neurons`` asked non-streaming within ``seconds``, a share of the node's deadline, so a miner
    that runs out of it is not at fault (``excuse_timeouts``). Started apart from ``gather_answers`` so that a
    caller who hangs up meanwhile still has the race its line names. ``param``: what a refusal of the size of its
    bodies names (``uids`` when the caller chose the miners, else its input)."""
    check_stage_size(body, len(neurons), param=param, largest=ctx.settings.max_body_bytes)
    return start_race(ctx, neurons, _stage_body(body), seconds, stream=False, request_id=request_id,
                      excuse_timeouts=True, scored=scored, latency_scale=latency_scale,
                      seeds=stage_seeds(body.get("seed"), neurons))


def check_stage_size(body: dict[str, Any], miners: int, *, param: str, largest: int) -> None:
    """The caller's 400 when the first stage's ``miners`` bodies, one each, would be over ``MIXTURE_STAGE_BYTES``
    together. ``body`` is measured (serialised once more) only when that many of the ``largest`` a caller may
    send (``MAX_BODY_BYTES``, and the fields the API adds) could be: never at the default ``MIXTURE_K``."""
    if miners * (largest + (64 << 10)) <= MIXTURE_STAGE_BYTES:
        return
    size = len(dumpb(body))
    if size * miners > MIXTURE_STAGE_BYTES:
        raise invalid_value(param,
                            f"a mixture sends each of its {miners} first-stage miners a {size}-byte copy of the "
                            f"request (each with its own seed), {size * miners} bytes together, over the "
                            f"{MIXTURE_STAGE_BYTES} one mixture may send; name fewer uids or send less (smaller "
                            "images)")


def stage_seeds(seed: int | None, neurons: list[Neuron]) -> dict[int, int]:
    """A seed for each first-stage miner, derived from the request's ``seed`` and its uid: given one seed, every
    miner wrote the same draft when they serve the same model deterministically, and the synthesis had one answer
    several times over. Derived, not drawn: the same request with the same seed asks each miner the same (a
    caller's seed makes the mixture reproducible as far as the miners are); the synthesis keeps ``seed``."""
    return {n.uid: random.Random(f"mixture:{seed}:{n.uid}").randrange(2**31) for n in neurons}


def _stage_body(body: dict[str, Any]) -> dict[str, Any]:
    return {**body, "stream": True}


async def gather_answers(ctx: ApiContext, race: Race, body: dict[str, Any], *, named: bool = False,
                         input_param: str = "messages") -> StageOne:
    """Stage 1: every valid answer of ``race`` (``start_stage_one``); none valid is the error a plain request would
    get (400 if every model server refused it, 504 past the deadline, else 502). ``named``: the caller named the
    miners (``uids``); ``input_param``: the request's field a context overflow names, as a plain request's does
    (the Responses API's ``input``: it said ``messages``, a field that request does not have)."""
    await drafts_in(race)
    settle(ctx, race, _stage_body(body), kind="mixture_stage1")  # a miner still answering is scored once done
    valid = [r for r in race.runs if _is_draft(r)]
    if not valid:
        raise StageOneFailed(no_winner_error(race, input_param, model=body.get("model"),
                                             passed_over=passed_over(ctx, body, named=named)), race)
    return StageOne(answers=valid, runs=list(race.runs))


async def drafts_in(race: Race) -> None:
    """Wait until every miner of ``race`` has answered or failed, or, once a quorum of valid drafts is in (half of the
    miners asked, ``QUORUM_SHARE``, rounded up: 2 of ``MIXTURE_K``'s 3, 1 of 2), until the others' grace is over (as
    long again as the quorum took, at least ``MIN_GRACE_SECONDS``), whichever comes first. The miners still
    answering are not stopped: they are scored when they finish, as a plain race's slower miners are."""
    loop = asyncio.get_running_loop()
    quorum = math.ceil(len(race.runs) * QUORUM_SHARE)
    pending: set[asyncio.Task[None]] = set(race.tasks)
    cutoff: float | None = None
    while pending:
        timeout = None if cutoff is None else max(0.0, cutoff - loop.time())
        done, pending = await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if not done:
            return  # the grace is over
        if cutoff is None and sum(_is_draft(r) for r in race.runs) >= quorum:
            took = loop.time() - race.started
            cutoff = loop.time() + max(took * GRACE_FACTOR, MIN_GRACE_SECONDS)


def _is_draft(run: MinerRun) -> bool:
    return run.done and run.error is None and run.has_answer and bool(run.text)


def synthesisers(answers: list[MinerRun]) -> list[Neuron]:
    """Who may write the final answer, in the order they are asked: the miners that answered stage one, the
    highest incentive first (``top_miner``)."""
    left = [r.neuron for r in answers]
    ordered: list[Neuron] = []
    while left:
        ordered.append(top_miner(left))
        left.remove(ordered[-1])
    return ordered


async def next_synthesiser(
    ctx: ApiContext, race: Race, rest: list[Neuron], body: dict[str, Any], *, stream: bool, request_id: str,
    scored: bool, latency_scale: float | None,
) -> tuple[Race, MinerRun | None, list[MinerRun]]:
    """The final miner gave no answer (so nothing of it reached the caller): ask the next of ``rest`` within what
    is left of the deadline, until one answers. Returns the last race, its winner (None: none did) and the runs of
    the races before it, each settled. A failed synthesis was the caller's 502 with valid answers in hand and
    the other miners that gave them idle. A synthesis the model server refused is not asked again: any would
    refuse it."""
    earlier: list[MinerRun] = []
    for neuron in rest:
        remaining = race.deadline - asyncio.get_running_loop().time()
        if race.refused() or remaining < MIN_FINAL_SECONDS:
            break
        settle(ctx, race, body, kind="mixture")
        earlier.extend(race.runs)
        race = start_race(ctx, [neuron], body, remaining, stream=stream, request_id=request_id, excuse_timeouts=True,
                          scored=scored, latency_scale=latency_scale)
        winner = await race.winner()
        if winner is not None:
            return race, winner, earlier
    return race, None, earlier


def final_stage_error(error: ApiError, race: Race, answers: int) -> ApiError:
    """The error of a synthesis no miner wrote (``error``: what a plain race would say). One refused as longer than
    the final model's context is not the caller's messages' fault, as that error says (OpenAI's
    ``context_length_exceeded`` naming ``messages``, on which agent frameworks trim their history): the first stage
    answered those messages, and the prompt that overflowed holds its ``answers`` too."""
    if error.code != CONTEXT_LENGTH_EXCEEDED:
        return error
    return ApiError(400, f"Mixture, final stage: the synthesis of {answers} answers (the conversation and each "
                         "first-stage answer, in one prompt) is longer than the final miner's model's context: ask "
                         "for fewer tokens (max_tokens bounds each answer), or without a mixture. "
                         f"{each_failure(race.errors())}", code=MODEL_SERVER_REJECTED)


class StageOneFailed(ApiError):
    """No valid answer in the first stage: the error a plain request would get, and the stage's race, whose runs the
    request's access line names (``failed=1:refused,...``: its line said only ``status=502``, and under
    ``truncation: "auto"`` the refused attempt had none) and which the "requests no miner answers" run counts."""

    def __init__(self, plain: ApiError, race: Race) -> None:
        super().__init__(plain.status, f"Mixture, first stage: {plain.message}", code=plain.code, param=plain.param,
                         type_=plain.type, headers=dict(plain.headers))  # a 503's Retry-After, say
        self.race = race


def stage_one_seconds(total: float) -> float:
    return total * STAGE_ONE_SHARE


def check_request(req: ChatCompletionRequest, session_header: str | None) -> None:
    """What a mixture cannot be combined with: tools (its first stage synthesises text) and a session named
    (``session_id`` or the ``x-session-id`` header ``session_header``), which pins one miner: a named session was
    ignored in silence, even one that did not exist, and the caller got a mixture of other miners."""
    if req.tools:
        raise ApiError(400, "Mixture mode does not support tools.", param="tools", code="unsupported_parameter")
    if req.session_id is not None or session_header is not None:
        param = "session_id" if req.session_id is not None else "x-session-id"
        raise ApiError(400, f"A mixture of miners cannot be combined with {param}: a session pins one miner.",
                       param=param, code="unsupported_parameter")
