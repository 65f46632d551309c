"""The signed HTTP client every process uses to call miners (and the validator).

One pooled ``aiohttp.ClientSession`` per process; each call is signed for its
receiver's hotkey and bounded by an absolute deadline (loop time) and a
response-size cap, so an untrusted peer can neither hang nor flood us.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from loguru import logger
from yarl import URL

from shared.errors import MODEL_NOT_FOUND, MODEL_SERVER_REJECTED, REJECTED_STATUSES, parse_error
from shared.jsonutil import dumpb, dumps, loads
from shared.logging import printable
from shared.metagraph import Neuron
from shared.resend import post_once_more
from shared.resigning import ResigningConnector, Signing
from shared.signing import SIGN_AGAIN_HEADER, Signer
from shared.sse import DONE, SSEError, SSEParser

Event = str | dict[str, Any]
"""One chunk from a miner: the raw JSON text of an SSE event (relayed byte for byte when streaming),
or, for a miner that answered with one JSON completion, that completion already parsed into
a stream's chunks (parsed once here, never serialised again on the response path)."""


def event_text(event: Event) -> str:
    """An event as JSON text (a parsed completion is serialised only where text is needed)."""
    return event if isinstance(event, str) else dumps(event)

# A miner's 404 ``model_not_found``: it does not serve the request's model (api.fanout leaves it out of scoring
# when nothing told the API it does: raced for a model it never listed, as without fresh availability).
NOT_SERVED = "not_served"
ERROR_BODY_BYTES = 64 << 10  # of a miner's error answer, what is read to learn its code and message
JSON, EVENT_STREAM = "application/json", "text/event-stream"  # a request's Content-Type; what it accepts back
REFUSED_SIGNATURE = (401, 403)  # a receiver's answers to a signature it does not take (shared.signing)
_BOUNDED_BY_CALLER = aiohttp.ClientTimeout(total=None, connect=None, sock_read=None, sock_connect=None)
# A request body past this goes to each miner a slice at a time (``SlicedBody``); a smaller one, in one write.
SLICED_BODY_BYTES = 256 << 10
BODY_SLICE = 64 << 10


class SlicedBody(aiohttp.BytesPayload):
    """A request body written to its connection a slice at a time, each once the connection has room for it.

    Given bytes, aiohttp hands the whole body to the transport in one write, and the transport keeps what the
    miner has not read yet in a buffer of its own (a copy, on Python 3.11): a request fans out one body to as
    many as 256 miners, and 64 miners that accepted the connection and never read held 64 copies of a 4 MiB
    body in the API until its deadline (+99 MB of RSS; 256 of them +339 MB, on loopback, whose kernel took the
    rest). Sliced, a connection holds a slice or two; the body itself is held once, for every miner."""

    async def write_with_length(self, writer: Any, content_length: int | None) -> None:
        view = memoryview(self._value)[:content_length]
        # each write waits while the connection's buffer is full (aiohttp's drain)
        for start in range(0, len(view), BODY_SLICE):
            await writer.write(view[start : start + BODY_SLICE])

    async def write(self, writer: Any) -> None:
        await self.write_with_length(writer, None)


def outgoing(body: bytes) -> bytes | SlicedBody:
    """What a request's ``body`` is sent as: itself when small (one write, as ever), else a ``SlicedBody``."""
    return body if len(body) <= SLICED_BODY_BYTES else SlicedBody(body, content_type=JSON)


def status_kind(status: int) -> str:
    """A failed answer's kind for its HTTP status: ``http_5xx``, ``http_4xx``, ... (a few values: log fields)."""
    return f"http_{status // 100}xx"


def redirect_note(status: int, location: str | None = None) -> str:
    """What a miner's 3xx means, for the line that tells of it (``""`` for any other status): a redirect is never
    followed (``_sent``), so a miner behind one (an HTTP-to-HTTPS redirect, a moved path) fails every request
    until it answers at its axon address itself."""
    if not 300 <= status < 400:
        return ""
    to = f" to {printable(location)[:200]}" if location else ""
    return f" (a redirect{to}, never followed: a miner must answer at the address its axon publishes)"


def transport_kind(error: aiohttp.ClientError) -> str:
    """A transport failure's kind: ``unreachable`` when no connection was made (refused, no route, DNS, TLS),
    ``dropped`` when one was and broke before the answer was whole (a miner that crashed or was restarted
    mid-answer, a proxy's idle cut). Both were ``unreachable``, so an on-call engineer chasing a miner that
    dies mid-stream checked its firewall and its port instead of its process."""
    return "unreachable" if isinstance(error, aiohttp.ClientConnectorError) else "dropped"


class MinerError(Exception):
    """A miner call failed: refused, timed out, bad status, broken stream, too large.

    ``kind`` names the failure in a word the API's access log shows for each miner that lost (``failed=2:http_5xx``):
    ``timeout``, ``unreachable`` (no connection could be made), ``dropped`` (connected, then the connection broke
    before the answer was whole), ``http_5xx``/``http_4xx``/... (an error status),
    ``signature`` (it refused this host's signature: 401/403), ``refused`` (its model server refused the request:
    400/413/422 ``model_server_rejected``, ``model_server_refused``),
    ``bad_response`` (garbage: broken JSON or SSE, the wrong content type, an answer cut short), ``too_large``.
    """

    def __init__(self, message: str, *, kind: str = "error") -> None:
        super().__init__(printable(message))  # it quotes what a peer sent, and is logged
        self.kind = kind


def model_server_refused(status: int, message: str) -> MinerError:
    """A miner's answer that its model server refused the request (``model_server_rejected``): the caller's
    (``refused``) for the statuses of a request refused itself (``REJECTED_STATUSES``); any other (a 401/403 for
    the miner's own key, a 429 for its rate limit, a 5xx) the miner's failure, told as its model server's (its
    words never begin ``HTTP 401``/``HTTP 403``, which the validator reads as a refused signature, not scored)."""
    if status in REJECTED_STATUSES:
        return MinerError(f"HTTP {status}: {message[:300]}", kind="refused")
    return MinerError(f"its model server refused the miner (HTTP {status} {MODEL_SERVER_REJECTED}): {message[:300]}",
                      kind=status_kind(status))


def make_session(*, limit: int = 1024, limit_per_host: int = 256) -> aiohttp.ClientSession:
    """The process-wide pooled session (call once, inside the running loop)."""
    connector = ResigningConnector(limit=limit, limit_per_host=limit_per_host, ttl_dns_cache=300)
    # No cookie jar: a miner must not be able to plant state that we send back (to it or to others),
    # and matching cookies per request was measurable on the hot path.
    return aiohttp.ClientSession(connector=connector, auto_decompress=True, raise_for_status=False,
                                 cookie_jar=aiohttp.DummyCookieJar())


REFUSAL_WARNING_EVERY = 60.0  # seconds between WARNINGs about miners refusing our signature


class MinerClient:
    def __init__(self, session: aiohttp.ClientSession, signer: Signer, *, max_response_bytes: int = 8 << 20) -> None:
        self.session = session
        self.signer = signer
        self.max_response_bytes = max_response_bytes
        self._refusals = 0  # miners' refusals of our signature since the last WARNING about them
        self._refusal_told = float("-inf")  # when that WARNING was (monotonic)
        self._chat_urls: dict[str, URL] = {}
        # Where the pool finds how to sign a request again after a long wait for a connection (ResigningConnector).
        self._pending: dict[str, Signing] | None = getattr(session.connector, "pending", None)

    def _chat_url(self, base: str) -> URL:
        """The parsed chat URL of an axon, built once (parsing a URL per request showed in the profile)."""
        url = self._chat_urls.get(base)
        if url is None:
            if len(self._chat_urls) >= 8192:  # axons change rarely; a bound keeps a churning metagraph small
                self._chat_urls.clear()
            url = self._chat_urls[base] = URL(base + "/v1/chat/completions")
        return url

    async def stream_chat(
        self,
        neuron: Neuron,
        body: bytes,
        deadline: float,
        *,
        request_id: str | None = None,
        stream: bool = True,
    ) -> AsyncIterator[str]:
        """Yield each SSE event's ``data`` (raw JSON text) as it arrives, ending before ``[DONE]``.

        A miner that answers with plain JSON (what a non-streaming request asks
        for) is yielded as one chunk-shaped event.
        """
        async for batch in self.stream_chat_batches(neuron, body, deadline, request_id=request_id, stream=stream):
            for data in batch:
                yield event_text(data)

    async def stream_chat_batches(
        self,
        neuron: Neuron,
        body: bytes,
        deadline: float,
        *,
        request_id: str | None = None,
        stream: bool = True,
    ) -> AsyncIterator[list[Event]]:
        """``stream_chat``'s events grouped as they arrived: one non-empty list per network read.

        The hot path handles a group at once (one timestamp, one wake-up, one
        write to the client) instead of paying per event. ``stream``: what ``body`` asks for (its ``stream``),
        the answer the miner is told this host accepts (``Accept``).
        """
        if not neuron.url:
            raise MinerError(f"uid {neuron.uid} serves no axon", kind="unreachable")
        if deadline <= asyncio.get_running_loop().time():
            raise MinerError("deadline passed before the request was sent", kind="timeout")
        headers = {"Content-Type": JSON, "Accept": EVENT_STREAM if stream else JSON}
        if request_id:
            headers["x-request-id"] = request_id
        # signed for the miner, and told in x-sn1-deadline the seconds it has (advisory: not signed)
        signing = Signing(self.signer, self._chat_url(neuron.url), body, neuron.hotkey, headers, deadline=deadline,
                          pending=self._pending)
        try:
            async with asyncio.timeout_at(deadline):
                # No aiohttp timer: ``timeout_at`` already bounds the whole call (a second timer per request
                # showed in the profile and could only fire at the same moment).
                async with await self._sent(signing, _BOUNDED_BY_CALLER) as resp:
                    signing.done()  # sent: nothing to sign again (the finally is for a request that never was)
                    if resp.status != 200:
                        text = (await self._error_body(resp)).decode(errors="replace")
                        code, message = parse_error(text)
                        if resp.status in REFUSED_SIGNATURE and code != MODEL_SERVER_REJECTED:
                            self._refused(neuron, resp.status, code, message)
                            raise MinerError(f"HTTP {resp.status}: {text[:300]}", kind="signature")
                        if code == MODEL_SERVER_REJECTED:
                            raise model_server_refused(resp.status, message)
                        if resp.status == 404 and code == MODEL_NOT_FOUND:
                            raise MinerError(f"HTTP 404 {MODEL_NOT_FOUND}: {message[:300]}", kind=NOT_SERVED)
                        note = redirect_note(resp.status, resp.headers.get("Location"))
                        raise MinerError(f"HTTP {resp.status}{note}: {text[:300]}", kind=status_kind(resp.status))
                    ctype = resp.content_type
                    if ctype == JSON:
                        yield await self._json_as_chunks(resp)
                        return
                    if ctype != EVENT_STREAM:
                        raise MinerError(f"unexpected content type {ctype!r}", kind="bad_response")
                    async for batch in self._event_batches(resp):
                        yield batch
        except TimeoutError:
            raise MinerError("deadline exceeded", kind="timeout") from None
        except aiohttp.ClientError as e:
            raise MinerError(f"{type(e).__name__}: {e}", kind=transport_kind(e)) from None
        except SSEError as e:
            raise MinerError(f"broken SSE stream: {e}", kind="bad_response") from None
        finally:
            signing.done()

    async def _sent(self, signing: Signing, timeout: aiohttp.ClientTimeout) -> aiohttp.ClientResponse:
        """POST the signed request, once more on a new connection when a kept-alive one closed before any answer
        (``post_once_more``). Signed anew: a miner that read the first before closing must not take the second
        for a replay; told what is left of its deadline."""

        def resigned() -> dict[str, Any]:
            signing.sign()
            return {"headers": signing.headers}

        # Never a redirect: a miner's 3xx is its answer (a failure), not an address to call. Followed, a miner's
        # ``307 Location: http://10.0.0.5/...`` had this host POST the signed request there (an operator's private
        # model server, a metadata address) and relay that server's answer to the caller.
        resp = await post_once_more(self.session, signing.url, again=resigned, data=outgoing(signing.body),
                                    headers=signing.headers, timeout=timeout, allow_redirects=False)
        if resp.status != 401 or SIGN_AGAIN_HEADER not in resp.headers:
            return resp
        # signed before the receiver (re)started (``SignedBeforeStart``): a miner that restarted while the request
        # was on its way fails no caller for it; signed anew, it is taken (unless our clock is behind its own)
        resp.release()
        logger.debug("{} started after the request was signed: signed again and sent once more", signing.url)
        return await post_once_more(self.session, signing.url, again=resigned, data=outgoing(signing.body),
                                    timeout=timeout, allow_redirects=False, **resigned())

    def _refused(self, neuron: Neuron, status: int, code: str | None, message: str) -> None:
        """A miner refused our signed request (401/403): one WARNING a minute, quoting the latest refusal.
        It was a DEBUG line per request, so an API whose clock had drifted (every miner answering 401
        ``StaleRequest``) failed every chat with only ``status=error`` lines to show for it."""
        self._refusals += 1
        now = time.monotonic()
        if now - self._refusal_told < REFUSAL_WARNING_EVERY:
            return
        logger.warning("miners refuse this host's signed requests (hotkey {}): uid {} answered HTTP {} {}: {} ({} "
                       "refusal(s) since the last such line, at most one a minute)", self.signer.hotkey, neuron.uid,
                       status, printable(code or "-")[:64], printable(message.removeprefix(f"{code}: "))[:300],
                       self._refusals)
        self._refusals, self._refusal_told = 0, now

    async def _event_batches(self, resp: aiohttp.ClientResponse) -> AsyncIterator[list[Event]]:
        parser = SSEParser(max_event_bytes=self.max_response_bytes)
        received = 0
        async for chunk in resp.content.iter_any():
            received += len(chunk)
            if received > self.max_response_bytes:
                raise MinerError(f"response larger than {self.max_response_bytes} bytes", kind="too_large")
            events = parser.feed(chunk)
            if DONE in events:
                events = events[: events.index(DONE)]
                if events:
                    yield events
                return
            if events:
                yield events
        events = parser.close()
        if DONE in events:
            events = events[: events.index(DONE)]
        if events:
            yield events

    async def _error_body(self, resp: aiohttp.ClientResponse) -> bytes:
        """A failing answer's body, whole up to ``ERROR_BODY_BYTES`` (past it, its start): its OpenAI-shaped
        error names why. ``read(2048)`` was whatever had arrived of its first 2 KiB, and a miner's refusal that
        quoted its model server at length (``model_server_rejected``) was cut mid-JSON, read as no error
        body, and so as the miner's failure (a zero, and a 502 for the caller instead of the refusal)."""
        raw = bytearray()
        async for chunk in resp.content.iter_any():
            raw += chunk
            if len(raw) >= ERROR_BODY_BYTES:
                break
        return bytes(raw[:ERROR_BODY_BYTES])

    async def _read_capped(self, resp: aiohttp.ClientResponse) -> bytes:
        """The whole body, cut with ``too_large`` past the cap.

        ``StreamReader.read(n)`` returns whatever is buffered (often one TCP
        segment), not n bytes, so a body is read to EOF here.
        """
        raw = bytearray()
        async for chunk in resp.content.iter_any():
            raw += chunk
            if len(raw) > self.max_response_bytes:
                raise MinerError(f"response larger than {self.max_response_bytes} bytes", kind="too_large")
        return bytes(raw)

    async def _json_as_chunks(self, resp: aiohttp.ClientResponse) -> list[Event]:
        """A JSON completion as a stream's chunks: its choice, then its usage in a chunk of no choices, as
        a stream with ``include_usage`` ends (on the choice's chunk, a streaming caller's last chunk had
        none, and a caller that reads the usage from the last chunk missed it)."""
        raw = await self._read_capped(resp)
        try:
            obj = loads(raw)
            choice = obj["choices"][0]
            message = choice.get("message") or {}
            delta = {k: v for k, v in message.items() if v is not None}
            if isinstance(delta.get("tool_calls"), list):  # a stream's tool-call deltas carry their index
                delta["tool_calls"] = [{"index": i, **c} if isinstance(c, dict) else c
                                       for i, c in enumerate(delta["tool_calls"])]
            head = {
                "id": obj.get("id", ""),
                "object": "chat.completion.chunk",
                "created": obj.get("created", int(time.time())),
                "model": obj.get("model", ""),
            }
            if fingerprint := obj.get("system_fingerprint"):  # what the server says of its build: the caller's too
                head["system_fingerprint"] = fingerprint
            chunks: list[Event] = [head | {"choices": [{"index": 0, "delta": delta, "logprobs": choice.get("logprobs"),
                                                        "finish_reason": choice.get("finish_reason")}]}]
            if obj.get("usage"):
                chunks.append(head | {"choices": [], "usage": obj["usage"]})
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
            raise MinerError(f"malformed JSON completion: {e}", kind="bad_response") from None
        return chunks

    async def post_json(
        self, base_url: str, path: str, payload: Any, receiver: str, *, timeout: float, tell_deadline: bool = False
    ) -> tuple[int, Any]:
        """Signed JSON POST; returns (status, parsed body or None). Raises MinerError on transport failure.
        ``tell_deadline``: the receiver (a miner) is told ``timeout`` in ``x-sn1-deadline``, as a chat's is."""
        return await self.post_json_bytes(base_url, path, dumpb(payload), receiver, timeout=timeout,
                                          tell_deadline=tell_deadline)

    async def post_json_bytes(
        self, base_url: str, path: str, body: bytes, receiver: str, *, timeout: float, tell_deadline: bool = False
    ) -> tuple[int, Any]:
        """``post_json`` for a body that is already JSON bytes."""
        # the seconds it has (advisory: not signed), told again after a wait for a connection
        deadline = asyncio.get_running_loop().time() + timeout if tell_deadline else None
        signing = Signing(self.signer, URL(base_url.rstrip("/") + path), body, receiver,
                          {"Content-Type": JSON, "Accept": JSON}, deadline=deadline, pending=self._pending)
        try:
            async with await self._sent(signing, aiohttp.ClientTimeout(total=timeout)) as resp:
                signing.done()
                raw = await self._read_capped(resp)
                try:
                    data = loads(raw) if raw else None
                except ValueError:
                    data = None
                return resp.status, data
        except TimeoutError:
            raise MinerError("timed out", kind="timeout") from None
        except aiohttp.ClientError as e:
            raise MinerError(f"{type(e).__name__}: {e}", kind=transport_kind(e)) from None
        finally:
            signing.done()
