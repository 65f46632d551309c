"""``GET|POST /web_retrieval``: fan a search out to miners, merge and de-duplicate results.

Miners answer ``WebRetrievalTask`` with a JSON list of ``{url, content, relevant}``
as the message content. Miners are untrusted: anything that is not such a list
is discarded, malformed items are dropped one by one, and results are
de-duplicated by normalised URL before the first ``n_results`` are returned.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.access_log import access_logged, request_id, write
from api.auth import SEARCH_SCOPE, authenticate
from api.completion import each_failure
from api.context import CTX, ApiContext
from api.fanout import settle, start_race
from api.race import MinerRun
from api.selection import select_miners
from shared.errors import ApiError
from shared.http import json_response, parse_model, read_json
from shared.jsonutil import whole_characters
from shared.protocol import MAX_TIMEOUT, MIN_TIMEOUT
from shared.settings import split_csv
from shared.urls import normalise_url

TASK = "WebRetrievalTask"
MAX_URL = 2048
MAX_CONTENT = 20_000
MAX_QUERY = 2000
# The most results a caller may ask for, and so the most items of a miner's list read: 36,000 results of a few
# bytes fit in the 2 MiB a miner may send, and parsing each URL held the event loop (every request of the
# process) for half a second per such answer.
MAX_RESULTS = 100
DEFAULT_RESPONSE_TIME = 10.0  # seconds the miners get when the caller names none (max_response_time)
MIN_GRACE_S = 0.5  # the least a hedged search waits for more answers after its first (``grace``)


class WebRetrievalRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    search_query: str = Field(min_length=1, max_length=MAX_QUERY)
    n_miners: int | None = Field(default=None, ge=1, le=64)
    n_results: int = Field(default=5, ge=1, le=MAX_RESULTS)
    # up to what a chat's ``timeout`` may name, cut to MAX_REQUEST_TIMEOUT as it is (a fixed 120 refused 121 s on
    # a node whose operator allows 300, and was no cap on one that allows 60)
    max_response_time: float = Field(default=DEFAULT_RESPONSE_TIME, ge=MIN_TIMEOUT, le=MAX_TIMEOUT)
    uids: list[int] | None = Field(default=None, max_length=64, description="Deprecated: prefer n_miners")

    @field_validator("search_query")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("search_query must not be blank")
        return v.strip()

    @field_validator("uids", mode="before")
    @classmethod
    def _split_uids(cls, v: Any) -> Any:
        return split_csv(v)


class WebResult(BaseModel):
    url: str
    content: str
    relevant: str = ""


def results_list(text: str) -> list[Any] | None:
    """A retrieval answer's list of results as miners write it: a JSON list, ``{"results": [...]}``, or
    either in a ```json fence; None when it is none of them. The validator reads answers this way too:
    a form shown to callers must not score 0."""
    text = text.strip()
    if text.startswith("```"):
        text = text.strip("`")
        text = text[4:] if text.lower().startswith("json") else text
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if isinstance(data, dict):
        data = data.get("results")
    return data if isinstance(data, list) else None


def parse_results(text: str) -> list[WebResult]:
    """One miner's answer -> its well-formed results (``well_formed``)."""
    return well_formed(results_list(text) or [])


def well_formed(data: list[Any]) -> list[WebResult]:
    """The well-formed results among the list's first ``MAX_RESULTS`` items (malformed ones dropped)."""
    out = []
    for item in data[:MAX_RESULTS]:
        if not isinstance(item, dict):
            continue
        url, content, relevant = item.get("url"), item.get("content"), item.get("relevant", "")
        if not isinstance(url, str) or not isinstance(content, str) or not isinstance(relevant, str):
            continue
        if len(url) > MAX_URL or not content.strip() or normalise_url(url) is None:
            continue
        # whole characters: JSON can spell half an emoji, which no response, chat request or log line can carry
        out.append(WebResult(url=url.strip(), content=whole_characters(content[:MAX_CONTENT]),
                             relevant=whole_characters(relevant[:MAX_CONTENT])))
    return out


def grace(first_s: float) -> float:
    """How long a hedged search waits for more answers after its first (``first_s`` after it began): as long
    again, at least ``MIN_GRACE_S``, so a miner a little slower than the first still adds its results."""
    return max(MIN_GRACE_S, first_s)


# Why a miner that ended its answer without a word failed (``Race.empty``): "nothing found" is an empty list, which
# the validator scores as an answer; no text is none (it scores 0), and a search whose every miner sent none was a
# 200 `[]`, its web search call "completed", and the one that said nothing won the race.
EMPTY = "the answer is empty (not a list of web results, not even [])"


class ResultsCheck:
    """The race's check of retrieval answers. An answer is one when it is a list of results with a usable
    one, or an empty list (nothing found is an answer). Prose, a list of junk or no text at all is none:
    it neither wins the race (the win counted in ``sn1_api_miner_wins``) nor keeps a search whose every
    miner sent it from failing. What each answer gave is kept: an answer of megabytes is parsed once, not
    twice."""

    def __init__(self) -> None:
        self._found: dict[int, list[WebResult]] = {}

    def __call__(self, run: MinerRun) -> str | None:
        data = results_list(run.text)
        if data is None:
            return "the answer is not a list of web results"
        results = well_formed(data)
        if data and not results:
            return "no result in the answer has a url and content"
        self._found[id(run)] = results
        return None

    def results(self, run: MinerRun) -> list[WebResult]:
        """The run's results: none for a run that failed or sent no answer."""
        return self._found.get(id(run), []) if run.error is None else []


def merge_results(per_miner: list[list[WebResult]], n_results: int) -> list[WebResult]:
    """Round-robin across miners (no one miner floods the answer), first occurrence of a URL wins."""
    seen: set[str] = set()
    merged: list[WebResult] = []
    depth = max((len(r) for r in per_miner), default=0)
    for i in range(depth):
        for results in per_miner:
            if i >= len(results):
                continue
            key = normalise_url(results[i].url)
            if key is None or key in seen:
                continue
            seen.add(key)
            merged.append(results[i])
            if len(merged) >= n_results:
                return merged
    return merged


async def _request_model(request: web.Request) -> WebRetrievalRequest:
    """The parameters: a POST's JSON body, or the query string (a GET's, or a POST with no body, as the
    subnet's original API took it: ``POST /web_retrieval?search_query=...``). Not both: a query string beside a
    JSON body is a 400 naming its first parameter (it was dropped in silence: ``?n_results=1`` gave five). A GET
    with a JSON body is refused before it comes here, as on every route (``api.request_shape``)."""
    if request.method == "POST":
        sent = await read_json(request, empty={})
        if sent and request.query:
            name = next(iter(request.query))
            raise ApiError(400, f"'{name[:64]}' is in the query string of a request with a JSON body, and would not be "
                           "read: send every parameter in the body, or all of them in the query string and no body.",
                           param=name[:64], code="unsupported_parameter")
        if sent or not request.query:
            return parse_model(WebRetrievalRequest, sent, strict=True)  # JSON has its types
    query: dict[str, Any] = dict(request.query)
    if len(uids := request.query.getall("uids", [])) > 1:  # uids=4&uids=5 (as FastAPI took it): every one
        query["uids"] = ",".join(uids)
    return parse_model(WebRetrievalRequest, query)


@access_logged("web_retrieval")
async def web_retrieval(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    started = time.perf_counter()
    rid = request_id(request)
    key = await authenticate(request, ctx.store, scope=SEARCH_SCOPE)
    req = await _request_model(request)
    found = await search(ctx, req.search_query, n_results=req.n_results, n_miners=req.n_miners, uids=req.uids,
                         timeout=min(req.max_response_time, ctx.settings.max_request_timeout), request_id=rid)
    failed = not found.results and found.all_failed
    write(request, f"web_retrieval rid={rid} key={key.id} uids={str(found.uids).replace(' ', '')} "
                   f"results={len(found.results)} "
                   f"status={502 if failed else 200} latency_ms={(time.perf_counter() - started) * 1000:.1f}")
    if failed:  # why each miner failed, as chat's 502 says (a timeout or junk asks different things of the caller)
        raise ApiError(502, f"No miner returned web results. {each_failure(found.failures)}".strip(),
                       code="no_valid_answer", headers={"x-request-id": rid})
    return json_response({"results": [r.model_dump() for r in found.results]}, headers={"x-request-id": rid})


@dataclass
class Found:
    """What a search gave: the merged results, the miners asked, whether every one of them failed, and why
    each that failed did (by uid)."""

    query: str
    results: list[WebResult]
    uids: list[int]
    all_failed: bool
    failures: dict[int, str] = field(default_factory=dict)


def retrieval_body(query: str, *, n_results: int, timeout: float, seed: int) -> dict[str, Any]:
    """What a retrieval miner is sent for ``query``: by the API for a caller, and by the validator for its
    synthetic tasks alike (a field only one of them sent told a miner which traffic it could cut corners on)."""
    return {"task": TASK, "messages": [{"role": "user", "content": query}], "target_results": n_results,
            "timeout": timeout, "stream": True, "seed": seed}


async def search(ctx: ApiContext, query: str, *, n_results: int, timeout: float, request_id: str,
                 n_miners: int | None = None, uids: list[int] | None = None, hedged: bool = False) -> Found:
    """Fan ``query`` out to web retrieval miners; their answers are scored like any organic answer.

    ``hedged``: once the first valid answer is in, the others have as long again (``grace``) to join its
    results; one slower than that is left out of the results (a web search before a chat answer waited
    for its slowest miner, up to the whole 10 s), and still answers for scoring."""
    neurons = select_miners(
        ctx.metagraph.snapshot, ctx.availability, uids=uids, task=TASK, model=None,
        k=n_miners or ctx.settings.web_retrieval_n_miners, rng=ctx.rng, self_hotkey=ctx.client.signer.hotkey,
        health=ctx.miner_health,
    )
    body = retrieval_body(query, n_results=n_results, timeout=timeout, seed=random.randrange(2**31))
    check = ResultsCheck()
    race = start_race(ctx, neurons, body, timeout, stream=False, request_id=request_id, check=check,
                      excuse_timeouts=timeout < DEFAULT_RESPONSE_TIME,  # a caller's shorter time cuts miners off
                      scored=not uids, latency_scale=DEFAULT_RESPONSE_TIME, empty=EMPTY)
    try:
        if hedged and (first := await race.winner()) is not None:
            await asyncio.wait(race.tasks, timeout=grace(first.timings[-1] if first.timings else 0.0))
        else:
            await race.finish()
    except asyncio.CancelledError:  # the caller left: its miners' requests go too
        race.cancel()
        raise
    settle(ctx, race, body, kind="web_retrieval")  # those still answering: once they end
    per_miner = [check.results(r) for r in race.runs if r.done]
    return Found(query=query, results=merge_results(per_miner, n_results), uids=[n.uid for n in neurons],
                 all_failed=all(r.error for r in race.runs), failures=race.errors())
