"""The validator's reference model: what a good miner would have answered.

Two implementations behind one interface:

- ``DeterministicReference`` runs the very code the local network's miners run
  (``DeterministicBackend``), so an honest answer is reproduced exactly and is
  rewarded by exact match;
- ``OpenAIReference`` asks any OpenAI-compatible endpoint
  (``REFERENCE_LLM_URL``) with the same messages, seed and sampling parameters.
  Real LLM servers are rarely bit-reproducible, so its answers are compared by
  similarity unless ``REFERENCE_LLM_REPRODUCIBLE`` says otherwise.

Each answers ``reply`` (its text and the tools it called: an agent's request is judged by its calls,
``rewards/tools.py``) and ``answer`` (its text alone, for the tasks that compare text). References are
cached per request (everything but how it is delivered): an organic payload sends one body to k miners
and the reference is computed once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, Protocol

import aiohttp
from loguru import logger

from neurons.miner.backends.deterministic import DeterministicBackend
from neurons.miner.backends.openai_compatible import (
    UNREADABLE_INPUT,
    listed_models,
    listing_hint,
    listing_json,
    refusal_status,
)
from neurons.miner.backends.tool_calls import planned_tool_calls
from neurons.miner.backends.upstream_fields import upstream_request
from neurons.miner.media_urls import MediaBusy, MediaFetcher, MediaRefused
from neurons.validator.reference_status import ReferenceStatus
from neurons.validator.rewards.tools import Reply, calls_of
from shared.errors import parse_error
from shared.field_refusals import FieldRefusals
from shared.jsonutil import dumpb
from shared.logging import CredentialMask, printable
from shared.openai_headers import openai_headers
from shared.resend import post_once_more
from shared.settings import mask_credentials

# The settings an operator fixes for what the reference model's server refuses (``listing_hint``'s words)
REFERENCE_SETTINGS: Mapping[str, str] = MappingProxyType({
    "url_setting": "REFERENCE_LLM_URL", "key_setting": "REFERENCE_LLM_API_KEY", "models_setting": "REFERENCE_LLM_MODEL",
    "what": "its model"})


class ReferenceError(Exception):
    """The reference model could not answer; the job is skipped, not scored as 0."""


class UnscorableRequest(Exception):
    """The request is not asked of the reference model, or it cannot read it (a caller's media URL that is private
    or could not be fetched, media past the validator's MEDIA_BYTES_IN_FLIGHT, an image given a text-only model):
    the job is skipped, and the reference model is not failing (any caller could otherwise make it look down)."""


class EmptyReference(ReferenceError):
    """The reference model answered nothing (a job scored against it would be a 0 for every miner)."""


# What a call to the reference model fails with: a server not reached, too slow, or no JSON (ValueError) ...
UNREACHED: tuple[type[Exception], ...] = (aiohttp.ClientError, TimeoutError, ValueError)
# ... and an answer that is JSON but not a chat completion's shape (no choices, no message, not objects)
MISSHAPEN: tuple[type[Exception], ...] = (KeyError, IndexError, TypeError, AttributeError)


@contextlib.contextmanager
def failing_as_reference(masked: Callable[[str], str], *caught: type[Exception]) -> Iterator[None]:
    """One of ``caught`` raised inside: a ``ReferenceError`` naming it (its traceback dropped: the job skipped
    is said in one line), which skips the job instead of failing it. Its text goes through ``masked``: the
    WARNING and ``/ready`` quote it, and a client error can carry the reference's URL with its password."""
    try:
        yield
    except caught as e:
        raise ReferenceError(masked(f"reference LLM failed: {type(e).__name__}: {e}")) from None


class ReferenceModel(Protocol):
    reproducible: bool
    empty_ok: bool  # "" is an answer (a model that reproduces the miners'), not a failure to answer

    async def reply(self, body: dict[str, Any]) -> Reply: ...

    async def answer(self, body: dict[str, Any]) -> str: ...

    async def close(self) -> None: ...


class DeterministicReference:
    reproducible = True
    empty_ok = True  # a stop sequence that matches at once: the miners' answer is "" too

    def __init__(self, backend: DeterministicBackend | None = None) -> None:
        self.backend = backend or DeterministicBackend()

    async def reply(self, body: dict[str, Any]) -> Reply:
        calls = planned_tool_calls(body)  # the very rule the local miners follow
        if calls:
            return Reply(calls=calls_of(calls))
        return Reply(text=self.backend.answer_text(body))

    async def answer(self, body: dict[str, Any]) -> str:
        return text_of(await self.reply(body), empty_ok=True)

    async def close(self) -> None:
        return None


class OpenAIReference:
    """Non-streaming chat completion against an OpenAI-compatible server."""

    empty_ok = False

    def __init__(
        self,
        base_url: str,
        *,
        session: aiohttp.ClientSession,
        api_key: str | None = None,
        model: str | None = None,
        timeout: float = 60.0,
        reproducible: bool = False,
        media: MediaFetcher | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = session
        self.model = model
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.reproducible = reproducible
        self._headers = openai_headers(api_key)
        # What a server's error text must never carry into the log or /health: the key, or a token given as
        # the password of REFERENCE_LLM_URL (http://user:token@host/v1), which was logged as the server quoted it.
        self._masked = CredentialMask(api_key, self.base_url)
        # What its models refuse, learnt as a miner's backend learns it: a hosted reference (Mistral's refuses
        # ``seed``, OpenAI's reasoning models ``max_tokens`` and a temperature) failed every job it was asked.
        self._refusals = FieldRefusals()
        self._last_model: Any = model  # the model last asked for (a request's own, without REFERENCE_LLM_MODEL)
        # A caller's media URLs, fetched here as a miner fetches them (``media_urls``): the reference server
        # fetched them itself, from inside the validator's network (a private address, a redirect to one).
        # ``build_reference`` gives it the validator's budget (MEDIA_BYTES_IN_FLIGHT).
        self._media = media or MediaFetcher(owner="validator")

    def request_body(self, body: dict[str, Any]) -> dict[str, Any]:
        # what a miner's model server is sent of it (``upstream_request``): a caller's own fields (vLLM's
        # ``chat_template``, ``guided_*``, ...) do not reach the reference model either
        out = upstream_request(body)
        out.pop("stream_options", None)
        if self.model:
            out["model"] = self.model
        out["stream"] = False
        return out

    async def reply(self, body: dict[str, Any]) -> Reply:
        # The fetched media count against the validator's budget (MEDIA_BYTES_IN_FLIGHT) until the reference
        # model's answer ends, held in the JSON sent alone (``MediaFetcher.encoded``).
        try:
            with failing_as_reference(self._masked, *UNREACHED, *MISSHAPEN):
                async with self._media.encoded(body, self._sent_body) as sent:
                    data = await self._completion(sent)
                message = data["choices"][0]["message"]
                content, calls = message.get("content"), calls_of(message.get("tool_calls"))
        except (MediaRefused, MediaBusy) as e:  # the caller's media, or too many at once: no reference failure
            raise UnscorableRequest(str(e)) from None
        return Reply(text=content if isinstance(content, str) else "", calls=calls)

    def _sent_body(self, body: dict[str, Any]) -> dict[str, Any]:
        """What the reference model is sent of ``body`` (its media inlined), as its model takes it."""
        sent = self.request_body(body)
        self._last_model = sent.get("model")
        return self._refusals.apply(sent)

    async def probe(self) -> None:
        """A short chat completion of the model last asked for, asked only while the reference model fails and no
        job asks it (``recheck``); ``ReferenceError`` while it still cannot answer. Its text is not read: a
        model that answers at all is back."""
        body: dict[str, Any] = {"messages": [{"role": "user", "content": "Say OK."}], "max_tokens": 8,
                                "stream": False}
        if self._last_model:
            body["model"] = self._last_model
        with failing_as_reference(self._masked, *UNREACHED):  # its answer is not read: no shape to miss
            await self._completion(dumpb(self._refusals.apply(body)))

    async def _completion(self, sent: bytes) -> Any:
        """The server's JSON completion of ``sent``; a 400/422 naming a field the answer does without is asked
        again without it (or renamed), once per field (``FieldRefusals``), and any other refusal is a
        ``ReferenceError`` quoting the server's reason (it said only the status: an operator could not tell a
        refused field from a wrong key)."""
        while True:
            # once more on a new connection if a kept-alive one closed before any answer (``post_once_more``)
            async with await post_once_more(self.session, f"{self.base_url}/chat/completions", data=sent,
                                            headers=self._headers, timeout=self.timeout) as r:
                if r.status == 200:
                    return await r.json(content_type=None)
                reason = parse_error((await r.content.read(4096)).decode("utf-8", "replace"))[1]
                reason = self._masked(reason)  # a server that quotes the key it refused must not have it logged
            if r.status in (400, 422) and (again := self._refusals.resent(sent, reason)) is not None:
                sent = again  # ends: a field named goes each time
                continue
            if refusal_status(r.status, reason) and UNREADABLE_INPUT.search(reason):
                # a text-only reference model given a caller's image: the caller's request, no outage (any caller
                # could otherwise have the reference model look down)
                raise UnscorableRequest(f"the reference model cannot read a part of it: {printable(reason)[:300]}")
            raise ReferenceError(f"reference LLM answered HTTP {r.status}{self._hint(r.status)}: "
                                 f"{printable(reason)[:300]}")

    def _hint(self, status: int) -> str:
        """What setting to check for a refusal an operator's configuration causes (a bare 404 or 401 did not
        say whether the URL, the key or the model was wrong): a chat completion's 404 at a ``/v1`` URL is a
        model it does not serve; the rest as for a model list (``listing_hint``)."""
        if status == 404 and self._at_v1():
            return f" (does the server serve REFERENCE_LLM_MODEL {self.model!r}?)"
        return listing_hint(status, self.base_url, **REFERENCE_SETTINGS)

    def _at_v1(self) -> bool:
        return self.base_url.rstrip("/").endswith("/v1")

    async def answer(self, body: dict[str, Any]) -> str:
        return text_of(await self.reply(body), empty_ok=self.empty_ok)

    async def check(self) -> bool:
        """At start: ask ``/models`` and say in one line what is wrong (True: nothing found). A reference model
        that cannot be reached, refuses the key, sits at a URL without ``/v1`` or does not serve the model
        named skips every job it is asked, and the first sign was a ``job skipped`` WARNING per job, minutes
        later. Not fatal: a model server still loading comes up after the validator. A list that cannot be read
        (the server unreachable, a refusal, no OpenAI API there) is a ``ReferenceError``: the reference model's
        run of failures begins with it (``CachedReference.check``)."""
        shown = mask_credentials(self.base_url)
        try:
            async with self.session.get(f"{self.base_url}/models", headers=self._headers,
                                        timeout=aiohttp.ClientTimeout(total=10)) as r:
                if r.status != 200:
                    if r.status == 404 and self._at_v1():  # a server with no model list: nothing to check against
                        logger.info("reference model: {} at {} (it lists no models: not checked)", self.model, shown)
                        return True
                    hint = listing_hint(r.status, self.base_url, **REFERENCE_SETTINGS)
                    raise ValueError(f"/models answered HTTP {r.status}{hint}")
                listed = listed_models(await listing_json(r, self.base_url,
                                                          url_setting=REFERENCE_SETTINGS["url_setting"]))
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            raise ReferenceError(f"its model list at {shown} could not be read at start: {type(e).__name__}: "
                                 f"{self._masked(str(e))}") from None
        return self._check_model(shown, listed)

    def _check_model(self, shown: str, listed: list[str]) -> bool:
        if self.model is None:
            logger.warning("REFERENCE_LLM_MODEL is unset: the reference model at {} is asked for the model each "
                           "request names (a miner's), which it may not serve; it lists {}", shown,
                           ", ".join(listed[:20]) or "none")
            return False
        if listed and self.model not in listed:
            logger.warning("REFERENCE_LLM_MODEL {} is not served by the reference model at {} (it lists {}): "
                           "every job would be skipped", self.model, shown, ", ".join(listed[:20]))
            return False
        logger.info("reference model: {} at {}", self.model, shown)
        return True

    async def close(self) -> None:
        await self._media.close()  # its own pool (the session belongs to the caller)


def text_of(reply: Reply, *, empty_ok: bool) -> str:
    """A reply's text, for a task that compares text. A call instead of text, or "" from a model that does
    not reproduce the miners' (a reasoning model that spent max_tokens thinking), would score every miner
    0: an ``EmptyReference``, which skips the job."""
    if reply.calls:
        raise EmptyReference("the reference model called a tool instead of answering in text")
    if not empty_ok and not reply.text.strip():
        raise EmptyReference("reference LLM returned no text")
    return reply.text


def cache_key(body: dict[str, Any]) -> bytes:
    """Everything the reference answer depends on (the model, tools, response format and stop sequences
    as much as the messages and seed); only how the answer is delivered is left out."""
    fields = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).digest()


class CachedReference:
    """A bounded LRU cache in front of a reference model, keyed by the request fingerprint."""

    def __init__(self, inner: ReferenceModel, *, size: int = 4096, status: ReferenceStatus | None = None) -> None:
        self.inner = inner
        self.status = status or ReferenceStatus()  # every call to ``inner`` is counted here (a hit is no call)
        self.reproducible = inner.reproducible
        self.empty_ok = inner.empty_ok
        self.size = size
        self._cache: OrderedDict[bytes, Reply] = OrderedDict()

    async def reply(self, body: dict[str, Any]) -> Reply:
        key = cache_key(body)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        try:
            reply = await self.inner.reply(body)
        except ReferenceError as e:
            self.status.failed(e)
            raise
        self.status.ok()
        self._cache[key] = reply
        if len(self._cache) > self.size:
            self._cache.popitem(last=False)
        return reply

    async def answer(self, body: dict[str, Any]) -> str:
        return text_of(await self.reply(body), empty_ok=self.empty_ok)

    async def probe(self) -> None:
        """The inner model asked a short question (``recheck``; the built-in model always answers): one that
        answers is a call that ends the run of failures, as a job's would; one that fails leaves it on, its latest
        try (``OutageLog.retry_failed``), and is no job skipped (not counted in ``failures``)."""
        probe = getattr(self.inner, "probe", None)
        try:
            if probe is not None:
                await probe()
        except ReferenceError as e:
            self.status.outage.retry_failed(e)
            return
        self.status.ok()

    async def check(self) -> bool:
        """The inner model's start-up check, where it has one (the built-in model needs none). One that could not
        read the model list begins the run of failures (``ReferenceStatus.start_failed``): ``/ready``'s
        ``reference`` check fails from the start and the recheck asks the model until it answers. The WARNING said
        every job would be skipped while ``/ready`` answered 200 until a job asked the model (never, with no
        organic traffic and synthetic jobs off)."""
        check = getattr(self.inner, "check", None)
        if check is None:
            return True
        try:
            return bool(await check())
        except ReferenceError as e:
            self.status.start_failed(e)
            return False

    async def close(self) -> None:
        await self.inner.close()
