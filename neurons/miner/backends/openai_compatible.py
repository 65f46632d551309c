"""Forward to any OpenAI-compatible server (vLLM, llama.cpp, Ollama, a hosted API).

Answers are relayed as the upstream sent them: the JSON completion's bytes, and
the SSE stream's bytes as they arrive (``complete_raw``, ``stream_raw``), with no
parsing or re-encoding on the miner (the API checks every chunk anyway);
``tools``/``tool_calls``, ``response_format``, ``logprobs`` travel untouched. Only the
request fields of ``upstream_fields`` reach the model server: the subnet's own are
removed (strict upstreams reject unknown parameters), and so is any field a caller
sent that is not OpenAI's (a model server's own parameters are not for strangers).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import aiohttp
from loguru import logger
from multidict import CIMultiDict
from yarl import URL

from neurons.miner.backends.base import BackendError
from neurons.miner.backends.counted_usage import counted, prompt_counted
from neurons.miner.backends.server_watch import DOWN_PROBE_S, ServerWatch, clock_time
from neurons.miner.backends.upstream_fields import forwarded_fields, upstream_request
from neurons.miner.media_urls import MediaBusy, MediaFetcher, MediaRefused
from shared.errors import MODEL_SERVER_REJECTED, REJECTED_STATUSES
from shared.field_refusals import FieldRefusals
from shared.jsonutil import dumpb
from shared.logging import CredentialMask, printable
from shared.openai_headers import openai_headers
from shared.protocol import ANY_MODEL, DEADLINE_HEADER
from shared.resend import post_once_more
from shared.settings import mask_credentials
from shared.sse import DONE, DONE_TAIL_BYTES, SSEError, SSEParser, ends_with_done
from shared.tasks import ARITHMETIC, INFERENCE, QUESTION_ANSWERING

# The upstream refused the request itself (bad parameter, too many tokens for the model, too large):
# the miner answers with the same status and MODEL_SERVER_REJECTED, so the API can tell the caller's mistake
# from the miner's failure. Any other upstream status (auth, rate limit, 5xx) is the miner's 502.
REFUSED_REQUEST = REJECTED_STATUSES
# A model server that cannot read a part of the request (a text-only model given an image or audio) refuses it
# with a 500 on some servers: llama.cpp's ("image input is not supported - hint: if this is unexpected, you may
# need to provide the mmproj", ggml-org/llama.cpp#15377; "Unsupported content part type" before, #12947). The
# caller's request, not the miner's failure: relayed as a 502, any caller could have every such miner fail.
UNREADABLE_INPUT = re.compile(r"\b(image|audio|video|file) input is not supported\b|\bunsupported content part "
                              r"type\b", re.IGNORECASE)
# Models a /models list holds that answer no chat completion (OpenAI's lists embeddings, speech, images and
# moderation beside its chat models; Ollama's, the embedding models pulled): not advertised.
# An upstream's whole JSON answer is held in memory: bounded (a 200 MB answer was read whole), far above
# what the API takes from a miner (MINER_MAX_RESPONSE_BYTES, 2 MiB by default). Error bodies: their start.
MAX_ANSWER_BYTES = 32 << 20
DEADLINE_SLACK = 0.01  # seconds: a timeout that fired this close to the caller's deadline was the deadline's
MAX_ERROR_BYTES = 64 << 10
ANSWER_TYPES = {False: "application/json", True: "text/event-stream"}  # what a 200 must be, by stream
# How much of a stream is held back to see whether its first event is an error (``opening_error``): an
# error event is small, and a first event larger than this is an answer, relayed as it comes.
MAX_HEAD_BYTES = 64 << 10
AFTER_DONE_S = 0.25  # seconds an upstream's stream is given to end after its [DONE] (``_end_after_done``)
# TGI's in-stream error kinds (``error_type``) that it answers with a 422 when not streaming.
TGI_REFUSALS = frozenset({"validation"})
LIST_TIMEOUT_S = 10.0  # seconds the upstream's /models has to answer
BUSY_RETRY_AFTER_S = 1  # a full media budget's Retry-After: room comes back as the model server's answers end
Mask = Callable[[str], str]  # what hides the upstream's credentials in its words (``CredentialMask``)
NOT_CHAT = re.compile(r"embed|whisper|tts|dall-e|gpt-image|moderation|rerank|transcribe", re.IGNORECASE)
# An answer's ``"model": "..."`` (any spacing; a JSON string, escapes and all): renamed to the public name a caller
# asked for (``UPSTREAM_MODEL_ALIASES``). Unescaped quotes are JSON's own, so a "model" in the text is never one.
MODEL_FIELD = re.compile(rb'"model"\s*:\s*"(?:[^"\\]|\\.)*"')


def listed_models(listing: Any) -> list[str]:
    """The model ids of a ``/models`` answer; ValueError for an answer that is no model list.

    Ollama with no model pulled yet answers ``{"object": "list", "data": null}`` (Go's nil slice): that is
    an empty list, not a failure (iterating it raised TypeError, which stopped the miner at start and,
    later, the refresher for good, so a model pulled afterwards was never served)."""
    if not isinstance(listing, dict):
        raise ValueError(f"/models answered {type(listing).__name__}, not an object")
    if "data" not in listing:  # Ollama's own /api/tags is {"models": [...]}: no OpenAI-compatible server
        raise ValueError(f"/models answered no 'data' list (keys: {', '.join(sorted(map(str, listing))[:8])})")
    data = listing.get("data")
    if data is None:
        return []
    if not isinstance(data, list):
        raise ValueError(f"/models 'data' is {type(data).__name__}, not a list")
    return [str(m["id"]) for m in data if isinstance(m, dict) and m.get("id")]


async def listing_json(r: aiohttp.ClientResponse, base_url: str, *, url_setting: str = "UPSTREAM_URL") -> Any:
    """A 200 ``/models`` answer's JSON; ValueError saying what came instead. A web page (a UI, or a proxy's, served
    at a URL that is not the API's) was "Expecting value: line 1 column 1 (char 0)", the JSON parser's words."""
    try:
        return await r.json(content_type=None)
    except ValueError:
        hint = "" if base_url.rstrip("/").endswith("/v1") else f" ({url_setting} is the OpenAI-compatible base URL, " \
                                                              "usually ending in /v1)"
        raise ValueError(f"HTTP 200 with {r.content_type!r} that is not JSON, no model list{hint}") from None


def listing_hint(status: int, base_url: str, *, url_setting: str = "UPSTREAM_URL",
                 key_setting: str = "UPSTREAM_API_KEY", models_setting: str = "UPSTREAM_MODELS",
                 what: str = "its models", keyed: bool = True) -> str:
    """What to check when ``/models`` answers ``status``: the URL (``http://host:11434`` is Ollama's own
    API, whose OpenAI-compatible one is under ``/v1``), or the key (``keyed``: one is set; a server that wants one
    when none is set was told "check UPSTREAM_API_KEY" of an empty setting); named by the settings of the process
    asking (the miner's upstream, the validator's reference model)."""
    if status == 404:
        if not base_url.rstrip("/").endswith("/v1"):
            return f" ({url_setting} is the OpenAI-compatible base URL, usually ending in /v1)"
        return f" (a server with no model list: name {what} in {models_setting})"
    if status in (401, 403):
        return f" (check {key_setting})" if keyed else f" (the server wants a key, and {key_setting} sets none)"
    return ""


class OpenAICompatibleBackend:
    name = "openai"

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 120.0,
        models_refresh: float = 60.0,
        down_probe: float = DOWN_PROBE_S,
        serve_models: list[str] | None = None,
        media: MediaFetcher | None = None,
        extra_fields: list[str] | None = None,
        aliases: dict[str, str] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        # For logs: credentials in the URL (http://user:token@host/v1) are never written out.
        self.shown_url = mask_credentials(self.base_url)
        self._headers = openai_headers(api_key)
        self._keyed = bool(api_key)  # a 401 with none set says to set one (``listing_hint``)
        # A chat's: it accepts what its answer must be (ANSWER_TYPES), an SSE stream when it asks for one. Made once,
        # as aiohttp takes them (a dict was copied into a CIMultiDict, and the URL parsed, at every request: 7 K
        # instructions of a miner's ~1.5 M)
        self._chat_headers = {stream: CIMultiDict(openai_headers(api_key, accept=kind))
                              for stream, kind in ANSWER_TYPES.items()}
        self._chat_url = _parsed_url(f"{self.base_url}/chat/completions")
        # What an upstream's error text must never carry on: it goes to the log and to the API's caller.
        self._masked = CredentialMask(api_key, self.base_url)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        # What the upstream serves, from its /models: nothing until it answers (a model server still
        # loading at start is no model to advertise), then refreshed every ``models_refresh`` seconds.
        self._models: list[str] = []
        self._models_refresh = models_refresh
        self._serve_models = list(serve_models or [])  # UPSTREAM_MODELS: the operator's choice, in order
        # UPSTREAM_MODEL_ALIASES: public name -> the model server's, and back (advertised and answered as the public)
        self._aliases = dict(aliases or {})
        self._public = {upstream: public for public, upstream in self._aliases.items()}
        self._missing: list[str] = []
        self._hint = ""  # the alias that would serve a model of ``_missing`` (``_alias_hint``)
        self._unaliased: list[str] = []  # UPSTREAM_MODEL_ALIASES' upstream names its /models lacks (``problems``)
        self._listing_problem: str | None = None  # why its last /models gave no model to serve (``problems``)
        self._watch = ServerWatch(self.shown_url, down_every=down_probe)  # down: nothing advertised
        self._refresher: asyncio.Task[None] | None = None
        self._refusals = FieldRefusals()  # what its models refused, learnt from their 4xx
        self._fields = forwarded_fields(extra_fields or ())  # what of a request the model server is sent
        self._media = media or MediaFetcher()  # fetches callers' media URLs, so the model server never does

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=512),
                                              cookie_jar=aiohttp.DummyCookieJar())
        await self._media.start()
        await self.refresh_models()
        self._refresher = asyncio.create_task(self._refresh_forever())

    async def _refresh_forever(self) -> None:
        """Refresh until closed, every ``models_refresh`` seconds while models are served, every ``down_probe``
        while none is, sooner when a chat request failed (``ServerWatch``): an unforeseen failure is logged, never
        the end of the task (a dead refresher left nothing behind but a miner that never saw a model the upstream
        gained)."""
        while True:
            await self._watch.wait(self._watch.delay(self._models_refresh, serving=bool(self.models())))
            try:
                await self.refresh_models()
            except Exception:  # noqa: BLE001 - one bad answer must not stop the refresher
                logger.exception("refreshing the upstream models at {} failed", self.shown_url)

    async def refresh_models(self) -> None:
        """Read the upstream's models. A failure is said once, with what to check, and a second in a row (the first,
        when nothing is served yet) takes the model server as down: nothing is advertised until it answers again. A
        server with no list at all (a 404) serves UPSTREAM_MODELS as they are named."""
        try:
            listed = await self._listing()
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            # aiohttp's certificate error is a ValueError too (ssl.CertificateError's): told as the others are
            why = failure_words(e, f"{LIST_TIMEOUT_S:g} s") if isinstance(e, aiohttp.ClientError | TimeoutError) \
                else str(e)
            self._watch.failed(f"could not list upstream models at {self.shown_url}: {why}", serving=self.models(),
                               refused=isinstance(e, aiohttp.ClientConnectorError))
            return
        if listed is None:
            self._tell(None)
            self._unlisted()
        else:
            self._listed(listed)
        self._watch.answered(self._models)

    async def _listing(self) -> list[str] | None:
        """The model ids the upstream's ``/models`` lists; None for a server with no list (a 404) when
        UPSTREAM_MODELS names what to serve. ValueError (or aiohttp's errors) for a list not read."""
        async with self._http().get(f"{self.base_url}/models", headers=self._headers,
                                    timeout=aiohttp.ClientTimeout(total=LIST_TIMEOUT_S)) as r:
            if r.status == 404 and self._serve_models:
                return None
            if r.status != 200:
                raise ValueError(f"HTTP {r.status}{listing_hint(r.status, self.base_url, keyed=self._keyed)}")
            return listed_models(await listing_json(r, self.base_url))

    def _listed(self, listed: list[str]) -> None:
        """Advertise what of ``listed`` is served (nothing, when it lists none: a model it no longer lists was
        advertised still, and every request for it failed), and say once why that is nothing."""
        models = self._served(listed)
        if models != self._models and models:
            logger.info("upstream models: {}", ", ".join(models))
        self._models = models
        if models:
            self._tell(None)
        elif not listed:
            self._tell(f"the upstream at {self.shown_url} lists no model yet: nothing is served until it does "
                       "(Ollama: pull one with ollama pull)")
        elif not self._serve_models:  # an embedding model alone pulled: it was as silent
            self._tell(f"the upstream at {self.shown_url} lists no chat model (only {', '.join(listed[:20])}): "
                       "nothing is served (a chat model it lists under such a name is served when UPSTREAM_MODELS "
                       "names it)")
        else:  # UPSTREAM_MODELS names none it lists: ``_served`` said so, and ``problems`` does
            self._tell(None)

    def _tell(self, problem: str | None) -> None:
        """Why a listing that answered gives no model to serve (None: it gives some, or ``problems`` says why), a
        WARNING once per change (it was said at every refresh)."""
        if problem is not None and problem != self._listing_problem:
            logger.warning("{}", problem)
        self._listing_problem = problem

    def _unlisted(self) -> None:
        """The upstream has no /models (Cloudflare Workers AI's OpenAI endpoint, some proxies): the models
        UPSTREAM_MODELS names are taken on the operator's word (a miner advertised nothing, for good)."""
        named = self._advertised(self._wanted())
        if self._models != named:
            logger.warning("the upstream at {} has no model list (/models: HTTP 404): serving UPSTREAM_MODELS "
                           "as named: {}", self.shown_url, ", ".join(named))
            self._models = named

    def _served(self, listed: list[str]) -> list[str]:
        """The models to advertise: those of UPSTREAM_MODELS the upstream lists, in that order, else
        every listed chat model. A chosen model the upstream does not list is left out, with a warning."""
        self._check_aliases(listed)
        if not self._serve_models:
            return self._advertised([m for m in listed if not NOT_CHAT.search(m)])
        wanted = self._wanted()
        missing = [m for m in wanted if m not in listed]
        self._hint = self._alias_hint(missing, listed)
        if missing and listed and missing != self._missing:  # once per change, not every refresh
            logger.warning("UPSTREAM_MODELS names {} that the upstream does not list (it lists {}){}",
                           ", ".join(missing), ", ".join(listed[:20]), self._hint)
        self._missing = missing
        return self._advertised([m for m in wanted if m in listed])

    def _alias_hint(self, missing: list[str], listed: list[str]) -> str:
        """How to serve a model ``UPSTREAM_MODELS`` names by the name callers ask for (a Hugging Face name) that the
        server lists under its own (Ollama's ``qwen2.5:7b``): the alias, with the server's name when it lists one chat
        model; nothing for a name an alias maps already (its own warning says what is wrong)."""
        named = [m for m in missing if m not in self._public]
        chat = [m for m in listed if not NOT_CHAT.search(m)]
        if not named or not chat:
            return ""
        upstream = chat[0] if len(chat) == 1 else "<its name for it>"
        return f"; to serve a model it lists under that name: UPSTREAM_MODEL_ALIASES={named[0]}={upstream}"

    def _check_aliases(self, listed: list[str]) -> None:
        """The aliases whose upstream name the model server does not list (a tag mistyped, a model not pulled): a
        WARNING once per change, and a problem in ``/health``; the public name is then advertised by nobody."""
        unaliased = [f"{upstream} (for {public})" for upstream, public in self._public.items() if upstream not in listed]
        if unaliased and listed and unaliased != self._unaliased:
            logger.warning("UPSTREAM_MODEL_ALIASES names {} that the upstream does not list (it lists {})",
                           ", ".join(unaliased), ", ".join(listed[:20]))
        self._unaliased = unaliased if listed else []

    def _wanted(self) -> list[str]:
        """UPSTREAM_MODELS in the model server's names (an operator may name a model by its public name)."""
        return [self._aliases.get(m, m) for m in self._serve_models]

    def _advertised(self, upstream: list[str]) -> list[str]:
        """The model server's ``upstream`` names as callers see them: each under its public name if it has one."""
        return [self._public.get(m, m) for m in upstream] if self._public else upstream

    def problems(self) -> list[str]:
        """What its last ``/models`` said is wrong (``/health``'s ``problems``): the model server not answering it
        (at start, or down since, with nothing advertised meanwhile), listing no model, or not listing a model
        ``UPSTREAM_MODELS`` names. Empty when it lists what is served."""
        if (down := self._watch.problem()) is not None:
            return [down]
        problems = [self._listing_problem] if self._listing_problem else []
        if self._unaliased and self._listing_problem is None:
            problems.append(f"UPSTREAM_MODEL_ALIASES names {', '.join(self._unaliased)} that the model server at "
                            f"{self.shown_url} does not list: not served")
        if self._missing and self._listing_problem is None:
            problems.append(f"UPSTREAM_MODELS names {', '.join(self._missing)} that the model server at "
                            f"{self.shown_url} does not list: not served (GET {self.shown_url}/models lists the names "
                            f"it takes){self._hint}")
        return problems

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("backend not started")
        return self._session

    def models(self) -> list[str]:
        """What the model server's last listing gave to serve; nothing while it is down (``ServerWatch``)."""
        return [] if self._watch.down else list(self._models)

    def unavailable(self) -> str | None:
        """Why a chat request is answered this miner's ``503`` without asking the model server (it serves no model:
        down, or listing none of its models), in words for its caller; None while a model is served."""
        if self._watch.down_since is not None:
            return (f"This miner serves no model now: its model server's model list could not be read since "
                    f"{clock_time(self._watch.down_since)}.")
        return None if self._models else "This miner serves no model now: its model server lists none it is set to serve."

    def tasks(self) -> list[str]:
        """What a chat model answers: inference, questions on a context, arithmetic (it was left out, and
        every arithmetic job, 15% of the weight, was this miner's 0). Web retrieval needs a search this
        backend does not have. Nothing while the upstream lists no model (down, or still loading)."""
        if not self.models():
            return []
        return [INFERENCE, QUESTION_ANSWERING, ARITHMETIC]

    def _served_model(self, body: dict[str, Any]) -> Any:
        """The model a request is answered by, as advertised: the one it names, the first served for ``default``."""
        model = body.get("model")
        return self._models[0] if model in ANY_MODEL and self._models else model

    def _renamed(self, body: dict[str, Any]) -> bytes | None:
        """The ``"model"`` field an answer to ``body`` carries instead of the model server's: the public name the
        request is answered under when it is an alias (``UPSTREAM_MODEL_ALIASES``); None (the answer's bytes
        relayed untouched) otherwise."""
        if not self._aliases:
            return None
        model = self._served_model(body)
        return b'"model":' + dumpb(model) if isinstance(model, str) and model in self._aliases else None

    def upstream_body(self, body: dict[str, Any], *, stream: bool) -> dict[str, Any]:
        out = upstream_request(body, self._fields)
        model = self._served_model(out)  # ``default`` (or none) is the first model served
        if self._aliases and isinstance(model, str):
            model = self._aliases.get(model, model)  # the model server's own name for it
        if model is not None:
            out["model"] = model
        out["stream"] = stream
        if not stream:
            out.pop("stream_options", None)
        return self._refusals.apply(out)

    def _timeout_until(self, deadline: float | None) -> aiohttp.ClientTimeout:
        """The upstream request's timeout: ``UPSTREAM_TIMEOUT``, or less when the caller's ``deadline`` (loop
        time, from its ``x-sn1-deadline``) comes first; a deadline passed already is a BackendError (504)."""
        if deadline is None:
            return self._timeout
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            raise deadline_passed("before the model server was asked")
        if self._timeout.total is not None and self._timeout.total <= left:
            return self._timeout
        # the one timer that keeps the deadline (the app sets none of its own for this backend): not rounded up
        # to a whole second, as aiohttp rounds timeouts longer than its ceil_threshold (5 s)
        return aiohttp.ClientTimeout(total=left, ceil_threshold=math.inf)

    @contextlib.asynccontextmanager
    async def _chat(self, body: dict[str, Any], *, stream: bool,
                    deadline: float | None = None) -> AsyncIterator[aiohttp.ClientResponse]:
        """POST the upstream chat completion, within the caller's ``deadline`` if given (``_timeout_until``);
        a non-200 answer is a BackendError naming its status.

        A refusal that names fields the answer does without is asked again without them, or with them
        renamed (``FieldRefusals``); again for each refusal that names another (a server that refuses
        ``seed`` and ``stream_options`` names one at a time, and asked only twice the first request failed)."""
        # the model server would fetch them from inside the miner's network: fetched here, checked, and held
        # within the miner's media budget until this call ends, in the JSON sent alone (``MediaFetcher.encoded``;
        # its refusals translated here, not in a block of its own: one generator-based block a request, not two)
        try:
            async with self._media.encoded(body, lambda b: self.upstream_body(b, stream=stream),
                                           deadline=deadline) as sent:
                while True:
                    # once more on a new connection if a kept-alive one closed before any answer (``post_once_more``:
                    # vLLM's, SGLang's and llama.cpp's servers end an idle one after 5 s, this pool keeps one 15 s)
                    async with await post_once_more(
                        self._http(), self._chat_url, data=sent,
                        headers=self._chat_headers[stream], timeout=self._timeout_until(deadline),
                        again=lambda: {"timeout": self._timeout_until(deadline)},
                    ) as r:
                        if r.status == 200:
                            if r.content_type != ANSWER_TYPES[stream]:  # a proxy's HTML page is no answer, though 200
                                raise await self._not_an_answer(r, stream)
                            self._watch.answered_chat()
                            yield r
                            return
                        message = self._masked(error_message((await r.content.read(MAX_ERROR_BYTES)).decode(
                            "utf-8", "replace")))
                        refused = refusal_status(r.status, message)
                    if refused and (again := self._refusals.resent(sent, message)) is not None:
                        sent = again  # ends: each time a field named goes
                        continue
                    if not refused and r.status != RATE_LIMITED:
                        self._watch.failed_chat()  # is it down? (a proxy's 502 for a server gone, a key revoked)
                    raise BackendError(f"upstream HTTP {r.status}: {message[:300]}", status=refused or 502,
                                       code=MODEL_SERVER_REJECTED if refused else None)
        except (MediaRefused, MediaBusy) as e:
            raise media_failure(e) from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as e:
            if not isinstance(e, TimeoutError):  # refused, reset, closed mid-answer: is it down? (a timeout: slow)
                self._watch.failed_chat()
            raise

    async def _not_an_answer(self, r: aiohttp.ClientResponse, stream: bool) -> BackendError:
        """The error for a 200 that is not the answer asked for (its type is not ``ANSWER_TYPES[stream]``): the error
        a JSON body reports, with its status (a stream asked of a server that answers its errors as JSON with a
        200, as OpenRouter does: its refusal was the miner's 502, a 0, and its words were lost), else its type."""
        if stream and r.content_type == ANSWER_TYPES[False]:
            error = error_answer(await r.content.read(MAX_ERROR_BYTES), mask=self._masked)
            if error is not None:
                return error
        return BackendError(f"upstream answered HTTP 200 with {r.content_type!r}, not {ANSWER_TYPES[stream]!r}")

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            async with self._chat(body, stream=False) as r:
                answer = await r.json(content_type=None)
            if (err := reported_error(answer)) is not None:
                raise upstream_error(err, answer, "answered HTTP 200 with an error", mask=self._masked)
            if self._renamed(body) is not None and isinstance(answer, dict):
                answer["model"] = self._served_model(body)
            return answer
        except (aiohttp.ClientError, TimeoutError) as e:
            raise upstream_failure(e, None, "upstream failed", timeout=self._timeout.total) from None
        except ValueError as e:
            raise BackendError(f"upstream failed: {type(e).__name__}: {e}") from None

    async def complete_raw(self, body: dict[str, Any], *, deadline: float | None = None) -> bytes:
        """The upstream's JSON completion, byte for byte (but tool calls' arguments, ``string_arguments``, and usage
        counts it left out or gave as 0, ``counted``); asked for until the caller's ``deadline`` (loop time) at most."""
        try:
            async with self._chat(body, stream=False, deadline=deadline) as r:
                raw = bytearray()
                async for piece in r.content.iter_any():
                    raw += piece
                    if len(raw) > MAX_ANSWER_BYTES:
                        raise BackendError(f"upstream answer larger than {MAX_ANSWER_BYTES} bytes")
                answer = bytes(raw)
                if b'"choices"' not in answer:  # every answer has them: an error object, or no answer at all
                    raise error_answer(answer, mask=self._masked) or no_completion(answer, mask=self._masked)
                if body.get("tools") and b'"tool_calls"' in answer:  # the only answers that may need it
                    answer = string_arguments(answer)
                answer = counted(answer, body)  # a count it left out, or a 0 for text, estimated
                return answer if (field := self._renamed(body)) is None else renamed_model(answer, field)
        except (aiohttp.ClientError, TimeoutError) as e:
            raise upstream_failure(e, deadline, "upstream failed", timeout=self._timeout.total) from None

    def stream_raw(self, body: dict[str, Any], *, deadline: float | None = None) -> AsyncIterator[bytes]:
        """``relayed_stream``'s bytes, with the public name in each chunk's ``model`` for a model served under an
        alias (``renamed_stream``); as they came otherwise."""
        reads = self.relayed_stream(body, deadline=deadline)
        return reads if (field := self._renamed(body)) is None else renamed_stream(reads, field)

    async def relayed_stream(self, body: dict[str, Any], *,
                             deadline: float | None = None) -> AsyncGenerator[bytes]:
        """The upstream's SSE bytes as each read returns them (its own ``[DONE]`` included), until the caller's
        ``deadline`` (loop time) at most.

        Its first event is read before anything is yielded: a stream that opens with an error (llama.cpp
        until October 2025 and TGI refuse a prompt too long for the model that way, after a 200) is the
        BackendError its status says, as if the upstream had answered with it (``opening_error``)."""
        began = False  # its first chunk was relayed (the deadline's words say whether the model had begun)
        try:
            async with self._chat(body, stream=True, deadline=deadline) as r:
                reads = r.content.iter_any()
                head, event, ended = b"", None, True
                async for chunk in reads:
                    head += chunk
                    ends_a_line = b"\n" in chunk or b"\r" in chunk
                    if ends_a_line and (event := first_event(head)) or len(head) > MAX_HEAD_BYTES:
                        ended = False
                        break
                event = event or first_event(head, ended=True)  # the stream ended, or its head is large
                if event is not None and (error := opening_error(event, mask=self._masked)) is not None:
                    raise error
                if (event is not None or ended) and (error := no_first_chunk(event, mask=self._masked)) is not None:
                    raise error
                if head:
                    began = True
                    yield prompt_counted(head, body)  # a usage's prompt count of 0 estimated
                tail = head[-DONE_TAIL_BYTES:]
                finished = finishes(head)
                while not ends_with_done(tail) and (chunk := await anext(reads, None)) is not None:
                    yield prompt_counted(chunk, body)
                    finished = finished or finishes(tail + chunk)  # the tail: a finish_reason split between reads
                    tail = (tail + chunk[-DONE_TAIL_BYTES:])[-DONE_TAIL_BYTES:]
                if ends_with_done(tail):
                    await _end_after_done(r.content)
                elif not finished:
                    raise BackendError("upstream stream ended without a finish_reason or [DONE]: cut short, a failed "
                                       "answer (a proxy's time or size limit before the model server?)")
        except (aiohttp.ClientError, TimeoutError) as e:
            raise upstream_failure(e, deadline, "upstream stream failed", timeout=self._timeout.total,
                                   when="as the answer streamed" if began else "before the model server's first chunk"
                                   ) from None

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[str]:
        async for batch in self.stream_batches(body):
            for data in batch:
                yield data

    async def stream_batches(self, body: dict[str, Any]) -> AsyncIterator[list[str]]:
        """The chunks grouped as they arrived (one list per upstream read, never empty).

        The miner app writes each group in one go: a write per chunk costs a
        syscall per chunk on both ends of the connection.
        """
        parser = SSEParser()
        try:
            async with contextlib.aclosing(self.stream_raw(body)) as reads:  # its checks, and one HTTP path
                async for chunk in reads:
                    events = parser.feed(chunk)
                    if DONE in events:
                        if events.index(DONE):
                            yield events[: events.index(DONE)]
                        return
                    if events:
                        yield events
                tail = [data for data in parser.close() if data != DONE]
                if tail:
                    yield tail
        except SSEError as e:
            raise BackendError(f"upstream stream failed: {type(e).__name__}: {e}") from None

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            self._refresher = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        await self._media.close()


def _parsed_url(url: str) -> URL | str:
    """``url`` parsed once; as it is when it does not parse (aiohttp refuses it at each request, as before:
    the request's 502 says why, and the miner still starts)."""
    try:
        return URL(url)
    except ValueError:
        return url


def renamed_model(data: bytes, field: bytes) -> bytes:
    """``data`` (whole JSON lines) with each ``"model": "..."`` replaced by ``field``."""
    return MODEL_FIELD.sub(lambda _m: field, data) if b'"model"' in data else data


async def renamed_stream(reads: AsyncGenerator[bytes], field: bytes) -> AsyncIterator[bytes]:
    """A stream's ``reads`` with each chunk's ``model`` as ``field`` (``renamed_model``): each read up to its last
    line end, the rest held for the next (a read may end inside a chunk's model name); closed with ``reads``."""
    held = b""
    async with contextlib.aclosing(reads):
        async for piece in reads:
            data = held + piece if held else piece
            cut = max(data.rfind(b"\n"), data.rfind(b"\r")) + 1
            held = data[cut:]
            if cut:
                yield renamed_model(data[:cut], field)
    if held:
        yield renamed_model(held, field)


async def _end_after_done(content: aiohttp.StreamReader) -> None:
    """What an upstream sends after its ``[DONE]`` (its stream's end, at once from a sound server) is read within
    ``AFTER_DONE_S``, so its connection is kept; past that, or ``MAX_HEAD_BYTES`` of it, it is not waited for (the
    connection is dropped) nor relayed. Read to the end, a server that held its stream open after ``[DONE]`` held
    the miner's answer back (all of it, when it came in one read) until the caller's deadline had passed."""
    if content.at_eof():
        return
    left = MAX_HEAD_BYTES
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(AFTER_DONE_S):
            while left > 0 and (piece := await content.readany()):
                left -= len(piece)


def media_failure(error: MediaRefused | MediaBusy) -> BackendError:
    """The BackendError for the caller's media the miner did not fetch: a URL refused is the caller's 400, a full
    media budget this miner's ``503 server_busy`` (no fault of the caller's, and gone once answers end)."""
    if isinstance(error, MediaRefused):
        return BackendError(f"refused: {error}", status=400, code=MODEL_SERVER_REJECTED)
    return BackendError(str(error), status=503, code="server_busy", retry_after=BUSY_RETRY_AFTER_S)


def upstream_failure(error: Exception, deadline: float | None, what: str, *, timeout: float | None = None,
                     when: str = "before the model server finished") -> BackendError:
    """The BackendError for a request to the upstream that failed (``what``): the caller's deadline (504
    ``deadline_exceeded``, passed ``when``) when it timed out at it (its timeout was cut to it: ``_timeout_until``),
    else the miner's 502 saying why (``failure_words``; ``timeout``: ``UPSTREAM_TIMEOUT``)."""
    if isinstance(error, TimeoutError) and deadline is not None \
            and asyncio.get_running_loop().time() >= deadline - DEADLINE_SLACK:
        return deadline_passed(when)
    return BackendError(f"{what}: {failure_words(error, f'UPSTREAM_TIMEOUT ({timeout:g} s)' if timeout else None)}")


def failure_words(error: Exception, limit: str | None) -> str:
    """Why a request to the model server failed, in words its operator can act on. aiohttp's own were
    ``TimeoutError: `` (nothing after it) for ``UPSTREAM_TIMEOUT``, ``... ssl:default [Connect call failed ...]``
    for a server that is down, and ``Response payload is not completed: <TransferEncodingError: 400, ...>`` (a
    400 that never was) for one that closed its connection mid-answer. ``limit``: the timeout, for a timeout."""
    if isinstance(error, TimeoutError):
        return f"no answer within {limit}" if limit else "TimeoutError"
    if isinstance(error, aiohttp.ClientConnectorError) and isinstance(error.os_error, ssl.SSLError):
        return _tls_words(error.os_error, f"{error.host}:{error.port}")
    if isinstance(error, aiohttp.ClientConnectorError):
        code = error.os_error.errno
        # the errno's words ("Connection refused": asyncio's strerror is "Connect call failed (...)"); a name that
        # does not resolve has a negative one (gaierror's), whose own words say it
        why = os.strerror(code) if isinstance(code, int) and code > 0 else error.os_error.strerror or str(error.os_error)
        return (f"cannot connect to the model server at {error.host}:{error.port} ({why}): is it running, and "
                "UPSTREAM_URL right?")
    if isinstance(error, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return f"the model server closed the connection before its answer ended ({type(error).__name__})"
    return f"{type(error).__name__}: {error}"


def _tls_words(error: ssl.SSLError, where: str) -> str:
    """A TLS handshake that failed, in its own words: its errno is 1 whatever went wrong, which read "Operation not
    permitted" (an https:// UPSTREAM_URL at a server that speaks plain HTTP, as vLLM and Ollama do by default)."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return (f"the model server at {where} has a certificate this miner does not trust "
                f"({error.verify_message or error.reason}): is UPSTREAM_URL's host the one its certificate names?")
    reason = (error.reason or type(error).__name__).replace("_", " ").lower()
    return (f"the TLS handshake with the model server at {where} failed ({reason}): https:// in UPSTREAM_URL for a "
            "server that speaks plain HTTP? (http:// then)")


def deadline_passed(when: str) -> BackendError:
    """The caller's deadline passed (``when``): the miner's 504 ``deadline_exceeded``."""
    return BackendError(f"the caller's deadline ({DEADLINE_HEADER}) passed {when}", 504, code="deadline_exceeded")


def first_event(head: bytes, *, ended: bool = False) -> list[bytes] | None:
    """The field lines of the first event in a stream's ``head`` (comment lines, keep-alives, skipped),
    or None while no such event is complete (``ended``: the stream stopped, its last event counts)."""
    if b"\r" in head:
        head = head.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    rest = head
    while rest:  # block by block, not the whole head split (it often holds the whole answer)
        block, blank, rest = rest.partition(b"\n\n")
        if not blank and not ended:
            return None  # not closed by a blank line yet
        lines = [line for line in block.split(b"\n") if line and not line.startswith(b":")]
        if lines:
            return lines
    return None


def opening_error(lines: list[bytes], *, mask: Mask | None = None) -> BackendError | None:
    """The error a stream's first event reports, with the status the upstream would have answered it with
    had it not streamed (400/413/422: the request refused, ``MODEL_SERVER_REJECTED``; else the miner's 502);
    None for an answer's first chunk.

    Relayed, such a stream was the miner's failure (no ``finish_reason``, or a chunk without choices) for
    a prompt too long for any miner's model, and scored 0 by any key that sent one. The shapes:
    llama.cpp until September 2025, an ``error:`` field; then, until its 400s came before the stream,
    ``data: {"error": {...}}`` as vLLM and SGLang send; TGI, ``data:{"error": "...", "error_type": ...}``.
    """
    field = lines[0].partition(b":")[0]
    if field not in (b"data", b"error"):
        return None
    payload = b"\n".join(line.partition(b":")[2].removeprefix(b" ") for line in lines
                         if line.partition(b":")[0] == field)
    if field == b"data" and b"error" not in payload:  # every error shape names it: an answer's chunk, unparsed
        return None
    try:
        obj = json.loads(payload)
    except ValueError:
        obj = payload.decode("utf-8", "replace")
    err = reported_error(obj) if field == b"data" else obj
    return None if err is None else upstream_error(err, obj, "stream opened with an error", mask=mask)


def finishes(data: bytes) -> bool:
    """Whether a stream's bytes hold a chunk's ``finish_reason`` (a string: ``null`` is none), as every model
    server's JSON writes it (no space; Python's ``json`` with one)."""
    return b'"finish_reason":"' in data or b'"finish_reason": "' in data


def no_first_chunk(event: list[bytes] | None, *, mask: Mask) -> BackendError | None:
    """The miner's 502 for a stream whose first event (its field lines; None: the stream ended with none) is no chat
    completion chunk: no event at all, ``[DONE]`` at once, or data with no ``"choices"`` (text that is no JSON,
    another API's events). Relayed, each was an answer without a word or a ``finish_reason``, a 0 at the API and
    the validator, while the miner logged ``status=200``. None for a chunk, or an event with no data to judge."""
    if event is None:
        return BackendError("upstream stream ended before its first event (no answer)")
    data = b"\n".join(value.removeprefix(b" ") for field, _, value in (line.partition(b":") for line in event)
                      if field == b"data")
    if not data or b'"choices"' in data:
        return None
    if data.strip() == DONE.encode():
        return BackendError("upstream stream ended before its first chunk (data: [DONE] at once: no answer)")
    start = printable(mask(data[:MAX_ERROR_BYTES].decode("utf-8", "replace"))[:200])
    return BackendError(f"upstream stream opened with no chat completion chunk (no 'choices'): {start}")


def reported_error(answer: Any) -> Any:
    """The error an upstream's answer object reports instead of answering (``{"error": ...}``, or vLLM's
    ``{"object": "error", ...}``); None for an answer (it has ``choices``) or anything else."""
    if not isinstance(answer, dict) or "choices" in answer:
        return None
    return answer.get("error", answer if answer.get("object") == "error" else None)


def upstream_error(err: Any, answer: Any, where: str, *, mask: Mask | None = None) -> BackendError:
    """The BackendError for an error the upstream reported inside an answer: the status it carries when it
    is a refusal of the request (400/413/422: ``MODEL_SERVER_REJECTED``, the caller's), else the miner's 502.
    ``mask``: the backend's ``CredentialMask``, applied before the message is cut (the error goes to the log and
    to the caller, and a server may quote the key it refused)."""
    status, message = _error_status(err, answer)
    message = message if mask is None else mask(message)
    refused = refusal_status(status, message)
    return BackendError(f"upstream {where} ({status or 'no status'}): {message[:300]}",
                        status=refused or 502, code=MODEL_SERVER_REJECTED if refused else None)


# A model server's 429: it is there, past its rate limit (a hosted one's, drawn by a flood of callers). No outage to
# look for: a listing woken by each spent the same limit, and two 429 listings took the server as down (``ServerWatch``).
RATE_LIMITED = 429


def refusal_status(status: int | None, message: str) -> int | None:
    """The status a model server's refusal of the request itself is relayed with (``MODEL_SERVER_REJECTED``, the
    caller's): its own for 400/413/422, 400 for a 500 saying it cannot read a part (``UNREADABLE_INPUT``); None
    for any other error (the miner's 502)."""
    if status in REFUSED_REQUEST:
        return status
    if status == 500 and UNREADABLE_INPUT.search(message):
        return 400
    return None


def error_answer(raw: bytes, *, mask: Mask | None = None) -> BackendError | None:
    """The error a JSON answer's bytes report though its status was 200 (OpenRouter answers an error met
    once a request was under way so, the status in ``code``), None for an answer. Relayed, such a body was
    the miner's malformed answer, a 0, even when it was the caller's request that was refused. Only a body
    without ``"choices"`` is parsed: every answer has them."""
    if b'"choices"' in raw:
        return None
    try:
        answer = json.loads(raw)
    except ValueError:
        return None  # not JSON: the API judges it
    err = reported_error(answer)
    return None if err is None else upstream_error(err, answer, "answered HTTP 200 with an error", mask=mask)


def no_completion(raw: bytes, *, mask: Mask) -> BackendError:
    """The miner's 502 for a 200 labelled JSON that holds no chat completion (no ``choices``) and no error: a proxy's
    page labelled JSON, a body cut off, another API's answer at the URL. Relayed as an answer, each was a 0 scored
    against a miner whose log said ``status=200`` and whose operator saw nothing wrong."""
    start = printable(mask(raw[:MAX_HEAD_BYTES].decode("utf-8", "replace"))[:200]) or "an empty body"
    return BackendError(f"upstream answered HTTP 200 with no chat completion (no 'choices'): {start}")


def error_message(text: str) -> str:
    """The message of an error status's body: OpenAI's ``error.message``, vLLM's older ``{"object": "error",
    "message": ...}`` and TGI's ``{"error": "..."}`` too (they were quoted as the JSON they came in); the text as
    it is when it is no such error."""
    try:
        answer = json.loads(text)
    except ValueError:
        return text
    err = reported_error(answer)
    return text if err is None else _error_status(err, answer)[1]


def _error_status(err: Any, event: Any) -> tuple[int, str]:
    """An in-stream error's HTTP status (0: none given) and message."""
    if isinstance(err, dict):
        code, message = err.get("code"), err.get("message")
        status = code if type(code) is int else int(code) if isinstance(code, str) and code.isdigit() else 0
        return status, message if isinstance(message, str) else json.dumps(err)
    kind = event.get("error_type") if isinstance(event, dict) else None  # TGI: the error is its message
    return (422 if kind in TGI_REFUSALS else 0), str(err)


def string_arguments(raw: bytes) -> bytes:
    """A JSON completion whose tool calls' ``function.arguments`` are JSON text, as OpenAI's are.

    TGI (huggingface/text-generation-inference#2136) and koboldcpp answer the arguments as the object
    itself: the API could not fold it into a call (an honest call was the miner's garbage) and a caller's
    ``json.loads(arguments)`` failed. The bytes are returned as they came when nothing needs it, or when
    they are not JSON (the API judges that)."""
    try:
        completion = json.loads(raw)
    except ValueError:
        return raw
    changed = False
    for function in _tool_functions(completion):
        arguments = function.get("arguments")
        if arguments is not None and not isinstance(arguments, str):
            function["arguments"] = json.dumps(arguments, ensure_ascii=False)
            changed = True
    return dumpb(completion) if changed else raw


def _tool_functions(completion: Any) -> list[dict[str, Any]]:
    """The ``function`` objects of every tool call in a completion's messages (anything malformed skipped)."""
    choices = completion.get("choices") if isinstance(completion, dict) else None
    messages = [c.get("message") for c in choices if isinstance(c, dict)] if isinstance(choices, list) else []
    calls = [call for m in messages if isinstance(m, dict) and isinstance(m.get("tool_calls"), list)
             for call in m["tool_calls"] if isinstance(call, dict)]
    return [call["function"] for call in calls if isinstance(call.get("function"), dict)]
