"""Test helpers: real servers on 127.0.0.1 (free ports), keypairs, a metagraph."""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator

from aiohttp import web
from bittensor.sp_core import Keypair
from loguru import logger

from shared.http import app_runner
from shared.metagraph import MetagraphSnapshot, Neuron


def hangup_as(*, nohup: bool = False) -> Callable[[], None]:
    """A ``preexec_fn`` that gives a child SIGHUP as a terminal does (it stops the process) or as
    ``nohup`` does (ignored). Set either way: a test run started under nohup passes "ignored" on to
    every child, and the tests that send SIGHUP then fail for the run's sake, not the code's."""
    wanted = signal.SIG_IGN if nohup else signal.SIG_DFL
    return lambda: signal.signal(signal.SIGHUP, wanted)


def response_events(text: str) -> list[dict]:
    """A Responses API stream's events, in order; each frame's ``event:`` line must name its type."""
    out = []
    for frame in text.split("\n\n"):
        if frame:
            name, data = frame.split("\n")
            event = json.loads(data.removeprefix("data: "))
            assert name == f"event: {event['type']}", frame
            out.append(event)
    return out


ENDINGS = ("response.completed", "response.failed", "response.incomplete")


def stream_faults(events: list[dict]) -> list[str]:
    """What is inconsistent in a Responses stream's events, as OpenAI's SDKs and their callers read it (none: []):
    a sequence number skipped or repeated, an ``output_index`` used twice, an item opened and never done (or done
    still ``in_progress``), a content part never done, an event after the last, or a last event whose ``output``
    is not the items done, with their ids and statuses."""
    faults = []
    if [e.get("sequence_number") for e in events] != list(range(len(events))):
        faults.append(f"sequence numbers {[e.get('sequence_number') for e in events]}")
    if not events or events[-1]["type"] not in ENDINGS or sum(e["type"] in ENDINGS for e in events) != 1:
        faults.append(f"not one last event: {[e['type'] for e in events][-3:]}")
    added: dict[int, dict] = {}
    done: dict[int, dict] = {}
    parts: set[tuple[int, int]] = set()
    for e in events:
        index = e.get("output_index")
        if e["type"] == "response.output_item.added":
            if index != len(added):
                faults.append(f"output_index {index} added as item {len(added)}")
            added[index] = e["item"]
        elif e["type"] == "response.output_item.done":
            if index in done or added.get(index, {}).get("id") != e["item"]["id"]:
                faults.append(f"item {index} done twice, or not the one added")
            if e["item"].get("status") in ("in_progress", "searching"):
                faults.append(f"item {index} done {e['item']['status']}")
            done[index] = e["item"]
        elif e["type"] == "response.content_part.added":
            parts.add((index, e["content_index"]))
        elif e["type"] == "response.content_part.done":
            parts.discard((index, e["content_index"]))
        elif index in done:
            faults.append(f"{e['type']} after item {index} was done")
    faults += [f"item {index} ({item['type']}) never done" for index, item in added.items() if index not in done]
    faults += [f"content part {part} never done" for part in sorted(parts)]
    output = events[-1].get("response", {}).get("output") if events else None
    whole = [(item["id"], item.get("status")) for _, item in sorted(done.items())]
    if output is not None and [(item["id"], item.get("status")) for item in output] != whole:
        faults.append(f"the last event's output {[(o['type'], o.get('status')) for o in output]} is not the items "
                      f"done {[(item['type'], item.get('status')) for _, item in sorted(done.items())]}")
    return faults


def keypair(uri: str) -> Keypair:
    """A deterministic sr25519 keypair (``//Validator``, ``//Miner1``, ...)."""
    return Keypair.create_from_uri(uri)


@contextlib.asynccontextmanager
async def serve_app(app: web.Application, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve ``app`` on ``port`` (default: a free one); yield its base URL; always clean up."""
    runner = app_runner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


def snapshot(validator_hotkey: str, miners: dict[int, tuple[str, str | None]], *, incentives: dict[int, float] | None = None) -> MetagraphSnapshot:
    """uid 0 is the validator (permit); ``miners`` maps uid -> (hotkey, "ip:port" or None)."""
    neurons = [Neuron(uid=0, hotkey=validator_hotkey, axon=None, stake=1000.0, validator_permit=True)]
    for uid, (hk, axon) in sorted(miners.items()):
        neurons.append(Neuron(uid=uid, hotkey=hk, axon=axon, incentive=(incentives or {}).get(uid, 0.0)))
    return MetagraphSnapshot(netuid=1, block=1, neurons=tuple(neurons))


class StaticSource:
    """A MetagraphSource over a fixed snapshot (swap ``.snapshot`` to simulate a refresh)."""

    def __init__(self, snap: MetagraphSnapshot) -> None:
        self.snapshot = snap

    async def fetch(self) -> MetagraphSnapshot:
        return self.snapshot

    async def close(self) -> None:
        return None


# --- scripted miners and an in-process API ----------------------------------------------------------

import asyncio  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402


def chunk(content: str | None = None, *, finish: str | None = None, model: str = "scripted", usage: dict | None = None) -> str:
    delta = {} if content is None else {"content": content}
    obj: dict[str, Any] = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": model,
                           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage:
        obj["usage"] = usage
    return json.dumps(obj)


@dataclass
class Script:
    """What a scripted miner streams: (delay_seconds, raw bytes) steps, a step's delay an ``asyncio.Event`` to
    wait for instead (the test says when); ``die`` drops the connection after."""

    steps: list[tuple[float | asyncio.Event, bytes]]
    die: bool = False
    status: int = 200
    error_code: str | None = None  # with a failing status: answer an OpenAI-shaped error with this code
    error_message: str = "scripted refusal"  # ... and this message
    error_delay: float = 0.0  # ... after this many seconds (a model server slow to refuse)
    errors: int | None = None  # ... to its first this many requests only (None: to every one); the rest, ``steps``
    calls: int = 0
    cancelled: int = 0
    active: int = 0
    bodies: list = field(default_factory=list)
    headers: list = field(default_factory=list)  # each request's headers, as received


class AnswersOnce(Script):
    """A miner that answers its first request, then fails every one with ``later_status`` (a 500: its model server
    went down between a mixture's first stage, which it answered, and the final one, which it was asked to write)."""

    later_status = 500

    @property
    def status(self) -> int:
        return 200 if self.calls <= 1 else self.later_status

    @status.setter
    def status(self, _: int) -> None:
        pass


@contextlib.contextmanager
def info_lines() -> Iterator[list[str]]:
    """Every line logged at INFO and above meanwhile (a message of several lines is several), as ``{message}``."""
    out: list[str] = []
    handler = logger.add(lambda m: out.extend(str(m).splitlines()), level="INFO", format="{message}")
    try:
        yield out
    finally:
        logger.remove(handler)


def paced(script: Script, seconds: float) -> None:
    """The miner's next answers with ``seconds`` before each of its steps: slow for the one answer a test cancels,
    deletes or reads around while it is made, at once for the turns before and after it (which only need to be
    there: each slow one cost the test its seconds)."""
    script.steps = [(seconds, data) for _, data in script.steps]


def sse(*datas: str, done: bool = True) -> list[bytes]:
    out = [f"data: {d}\n\n".encode() for d in datas]
    if done:
        out.append(b"data: [DONE]\n\n")
    return out


def scripted_miner_app(script: Script) -> web.Application:
    """A miner double that streams exactly what the script says (no signature check)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        script.bodies.append(json.loads(raw) if raw else None)
        script.headers.append(dict(request.headers))
        script.calls += 1
        script.active += 1
        try:
            failing = script.status != 200 and (script.errors is None or script.calls <= script.errors)
            if failing and script.error_code:
                await asyncio.sleep(script.error_delay)
                return web.json_response({"error": {"message": script.error_message, "type": "invalid_request_error",
                                                    "code": script.error_code, "param": None}},
                                         status=script.status)
            if failing:
                return web.Response(status=script.status, text="scripted failure")
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            for delay, data in script.steps:
                if isinstance(delay, asyncio.Event):
                    await delay.wait()
                elif delay:
                    await asyncio.sleep(delay)
                await resp.write(data)
            if script.die:
                assert request.transport is not None
                request.transport.close()
                return resp
            await resp.write_eof()
            return resp
        except asyncio.CancelledError:
            script.cancelled += 1
            raise
        finally:
            script.active -= 1

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    return app


async def build_api_context(tmp: Path, snap: MetagraphSnapshot, signer_keypair: Any, *,
                            redis_namespace: str | None = None, **settings: Any):
    """An ApiContext with a real store (SQLite in ``tmp``, or ``REDIS_URL`` in ``redis_namespace``), a static
    metagraph and a real signed client. Its stores are the ones a served API opens (``api.worker.open_stores``),
    each on its own Redis client (no shared ``RedisLinks``: ``close_stores`` closes each)."""
    from api.context import ApiContext
    from api.worker import open_stores
    from shared.metagraph import MetagraphView
    from shared.miner_client import MinerClient, make_session
    from shared.settings import ApiSettings
    from shared.signing import Signer

    url = f"sqlite:///{tmp / 'api.db'}" if redis_namespace is None else os.environ["REDIS_URL"]
    api_settings = ApiSettings(_env_file=None, store_url=url, store_namespace=redis_namespace or "sn1",
                               admin_key="admin-secret-for-tests", **settings)
    view = MetagraphView(StaticSource(snap))
    await view.refresh()
    client = MinerClient(make_session(), Signer(signer_keypair),
                         max_response_bytes=api_settings.miner_max_response_bytes)
    stores = open_stores(api_settings, None)
    # No forwarder here (the tests' apps run without background work): the scoring outbox is not the tests'.
    await stores.outbox.close()
    return ApiContext(settings=api_settings, store=stores.store, metagraph=view, client=client, availability=None,
                      sessions=stores.sessions, responses=stores.responses, conversations=stores.conversations)


async def close_stores(ctx: Any) -> None:
    await ctx.store.close()
    for kept in (ctx.sessions, ctx.responses, ctx.conversations):
        if kept is not None:
            await kept.aclose()


@dataclass
class ApiUnderTest:
    url: str
    key: str
    ctx: Any
    scripts: dict[int, Script] = field(default_factory=dict)


import aiohttp  # noqa: E402

from api.app import create_api_app  # noqa: E402
from neurons.miner.app import create_miner_app  # noqa: E402
from neurons.miner.backends.deterministic import DeterministicBackend  # noqa: E402
from neurons.miner.backends.openai_compatible import OpenAICompatibleBackend  # noqa: E402
from neurons.miner.quality import DownBackend  # noqa: E402
from shared.signing import Authorizer, RequestVerifier  # noqa: E402
from tests.ports import free_port  # noqa: E402

VALIDATOR_KP = keypair("//Validator")


@contextlib.asynccontextmanager
async def openai_miner(upstream: web.Application, miner_hotkey: str, *, api_key: str | None = None
                       ) -> AsyncIterator[str]:
    """The reference miner (the openai backend, ``UPSTREAM_TIMEOUT`` its default 120 s, ``api_key`` its
    ``UPSTREAM_API_KEY``) in front of ``upstream``, served over HTTP as the miner of ``miner_hotkey``, taking
    ``VALIDATOR_KP``'s signed requests: its base URL."""
    async with serve_app(upstream) as up:
        backend = OpenAICompatibleBackend(up + "/v1", api_key=api_key)
        await backend.start()
        verifier = RequestVerifier(miner_hotkey, Authorizer(lambda: {VALIDATOR_KP.ss58_address}))
        async with serve_app(create_miner_app(backend, verifier)) as url:
            yield url


@contextlib.asynccontextmanager
async def api_with_miners(tmp_path: Path, scripts: dict[int, Script], *, honest: set[int] = frozenset(),
                          incentives: dict[int, float] | None = None, unlistened: set[int] = frozenset(),
                          redis_namespace: str | None = None, down: set[int] = frozenset(),
                          **settings) -> AsyncIterator[ApiUnderTest]:
    """Start scripted miners (and real deterministic miners for uids in ``honest``, real ones in the ``down``
    quality profile for those in ``down``) plus the API; the uids in
    ``unlistened`` serve an axon on a free port nobody listens on (a miner that is down). ``redis_namespace``: its
    store is ``REDIS_URL``'s, there (two APIs in one namespace are two hosts of a fleet), not a SQLite file."""
    async with contextlib.AsyncExitStack() as stack:
        miners: dict[int, tuple[str, str | None]] = {
            uid: (keypair(f"//Miner{uid}").ss58_address, f"127.0.0.1:{free_port()}") for uid in unlistened}
        for uid, script in scripts.items():
            url = await stack.enter_async_context(serve_app(scripted_miner_app(script)))
            miners[uid] = (keypair(f"//Miner{uid}").ss58_address, url.removeprefix("http://"))
        for uid in (*honest, *down):
            kp = keypair(f"//Miner{uid}")
            verifier = RequestVerifier(kp.ss58_address, Authorizer(lambda: {VALIDATOR_KP.ss58_address}))
            backend = DownBackend(DeterministicBackend()) if uid in down else DeterministicBackend()
            url = await stack.enter_async_context(serve_app(create_miner_app(backend, verifier)))
            miners[uid] = (kp.ss58_address, url.removeprefix("http://"))
        ctx = await build_api_context(tmp_path, snapshot(VALIDATOR_KP.ss58_address, miners, incentives=incentives),
                                      VALIDATOR_KP, redis_namespace=redis_namespace, **settings)
        stack.push_async_callback(ctx.client.session.close)
        if redis_namespace is not None:  # its Redis clients (a SQLite file is left to the test's tmp_path)
            stack.push_async_callback(close_stores, ctx)
        secret, _ = await ctx.store.create_key(1000)
        url = await stack.enter_async_context(serve_app(create_api_app(ctx, run_background=False)))
        yield ApiUnderTest(url=url, key=secret, ctx=ctx, scripts=scripts)


@contextlib.asynccontextmanager
async def fresh_namespace(store: str, name: str = "apis") -> AsyncIterator[str | None]:
    """For ``store`` "redis": a namespace of its own in ``REDIS_URL`` (``test-<name>-<random>``), its keys dropped
    after (skipped without a Redis); for "sqlite": None (the test's file is its own)."""
    from tests.store.conftest import drop_keys, redis_url

    namespace = f"test-{name}-{secrets.token_hex(6)}" if store == "redis" else None
    if namespace is not None:
        redis_url()  # skipped without a Redis
    try:
        yield namespace
    finally:
        if namespace is not None:
            import redis.asyncio as aioredis

            client = aioredis.from_url(redis_url())
            await drop_keys(client, namespace)
            await client.aclose()


@contextlib.asynccontextmanager
async def apis_on_one_store(tmp_path: Path, store: str, count: int, miner: Script,
                            **settings: Any) -> AsyncIterator[list[ApiUnderTest]]:
    """``count`` API processes on one store (``store``: "sqlite", one file; "redis", one ``REDIS_URL`` namespace,
    dropped after; skipped without a Redis), each with ``miner`` as uid 1 and ``settings``."""
    async with fresh_namespace(store) as namespace, contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(api_with_miners(
            tmp_path, {1: miner}, redis_namespace=namespace, **settings)) for _ in range(count)]


ADMIN = {"admin-key": "admin-secret-for-tests"}  # the headers of an admin request to the API under test


async def call(api: ApiUnderTest, method: str, path: str, body: Any = None, key: str | None = None,
               headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    """A request to the API under test with its key (or ``key``; or ``headers``, as ``ADMIN``), JSON ``body`` if
    any: status and JSON."""
    headers = headers or {"Authorization": f"Bearer {key or api.key}"}
    async with aiohttp.ClientSession() as s, s.request(method, api.url + path, json=body, headers=headers) as r:
        return r.status, await r.json()


async def post(api: ApiUnderTest, body: dict, *, timeout: float = 20, headers: dict[str, str] | None = None,
               path: str = "/v1/chat/completions") -> tuple[int, dict, str]:
    async with aiohttp.ClientSession() as s:
        async with s.post(api.url + path, json=body, timeout=aiohttp.ClientTimeout(total=timeout),
                          headers={"Authorization": f"Bearer {api.key}", **(headers or {})}) as r:
            return r.status, dict(r.headers), await r.text()


async def synthetic_jobs(client: Any, miner_url: str, cycles: int) -> MetagraphSnapshot:
    """The validator's own jobs to one miner, as it sends them: ``cycles`` synthetic cycles (``run_cycle``, seeds
    0, 1, ...; 7 s each) through ``client`` (a ``MinerClient``) to uid 1, hotkey ``//Miner1`` at ``miner_url``,
    available for every task. Returns the metagraph they ran on (uid 1 is the miner)."""
    from neurons.validator.availability import AvailabilityBook
    from neurons.validator.datasets import build_datasets
    from neurons.validator.synthetic import SyntheticConfig, run_cycle
    from neurons.validator.tasks import default_registry
    from shared.corpus import builtin_corpus
    from shared.metagraph import MetagraphView
    from shared.tasks import ALL_TASKS

    miner = keypair("//Miner1").ss58_address
    snap = snapshot(VALIDATOR_KP.ss58_address, {1: (miner, miner_url.removeprefix("http://"))})
    view = MetagraphView(StaticSource(snap))
    await view.refresh()
    book = AvailabilityBook(entries={1: {"task_availabilities": dict.fromkeys(ALL_TASKS, True),
                                         "llm_model_availabilities": {}}}, hotkeys={1: miner})
    for seed in range(cycles):
        await run_cycle(client, view, book, default_registry(), build_datasets(builtin_corpus()),
                        SyntheticConfig(sample_size=8, timeout=7.0), random.Random(seed))
    return snap


def failing_appends(api: ApiUnderTest, monkeypatch: Any, times: int, *, landed: bool,
                    noting: str = "fence") -> list[Any]:
    """The API's conversation store fails its next ``times`` appends (each having ``landed`` first: a timed-out Redis
    call that ran all the same), as StoreUnavailable; what each failed one was given as ``noting`` (its ``fence``,
    its ``once``), in a list."""
    from shared.store.base import StoreUnavailable

    real_append, failed = api.ctx.conversations.append, []

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        if len(failed) < times:
            failed.append(kwargs.get(noting))
            if landed:
                await real_append(*args, **kwargs)
            raise StoreUnavailable("redis conversations: TimeoutError")
        return await real_append(*args, **kwargs)

    monkeypatch.setattr(api.ctx.conversations, "append", flaky)
    return failed


def until_empty(probe: Callable[[], list[str]], seconds: float) -> list[str]:
    """What ``probe`` still finds (processes, say) once it finds nothing or ``seconds`` have passed."""
    deadline = time.monotonic() + seconds
    while (found := probe()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return found


async def wait_until(check: Callable[[], bool], timeout: float) -> float:
    """Poll ``check`` (state held by servers in this process) until true or ``timeout``; the seconds taken."""
    started = time.monotonic()
    while not check() and time.monotonic() - started < timeout:  # noqa: ASYNC110 - polling another party's state
        await asyncio.sleep(0.01)
    return time.monotonic() - started


def openai_client(api: ApiUnderTest, key: str | None = None) -> Any:
    """The OpenAI SDK's async client on ``api`` (no retries: a test sees the first answer)."""
    import openai

    return openai.AsyncOpenAI(base_url=api.url + "/v1", api_key=key or api.key, max_retries=0, timeout=20)



def log_lines(level: str = "WARNING") -> tuple[list[str], int]:
    """Capture the log from ``level`` up as ``"LEVEL message"`` lines: the list, and the sink's id for
    ``logger.remove`` when the test is done with it."""
    lines: list[str] = []
    return lines, logger.add(lambda m: lines.append(f"{m.record['level'].name} {m.record['message']}"), level=level)

@contextlib.asynccontextmanager
async def loop_gaps(tick: float = 0.005) -> AsyncIterator[list[float]]:
    """The event loop's stalls while the block runs: the CPU time the loop's thread spent between the ticks of a
    task that sleeps ``tick`` (one far above it is CPU work that held the loop: other requests, chunk timings,
    ``/health`` waited). CPU time, not the clock's: on a loaded CI host a process waits its turn for a core, and
    the clock's gaps there (2.3 s seen, for a hold of 0.07 s on a quiet host) measured the host, not the code."""
    gaps: list[float] = []

    async def ticking() -> None:
        last = time.thread_time()
        while True:
            await asyncio.sleep(tick)
            now = time.thread_time()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(ticking())
    await asyncio.sleep(2 * tick)
    try:
        yield gaps
        await asyncio.sleep(10 * tick)  # the next tick records a stall that ended just now
    finally:
        ticker.cancel()


NOBODY = 65534  # the uid and gid of ``nobody``


def without_access(directory: Path, call: Callable[[], object]) -> str:
    """``call()`` made by a user that cannot enter ``directory`` (a service's ``User=`` and a directory root made
    0700), as ``"ExceptionName: message"`` (``"returned"`` when nothing was raised). Root enters any directory, so
    as root (the suite's user in CI) it runs in a forked child as ``nobody``, whatever it needs imported first;
    otherwise ``directory`` is made unenterable meanwhile."""
    if os.geteuid() != 0:
        directory.chmod(0o000)
        try:
            call()
            return "returned"
        except Exception as e:  # noqa: BLE001 - what escaped, told to the test
            return f"{type(e).__name__}: {e}"
        finally:
            directory.chmod(0o700)
    directory.chmod(0o700)
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        said = "returned"
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            call()
        except BaseException as e:  # noqa: BLE001 - what escaped, told to the parent
            said = f"{type(e).__name__}: {e}"
        os.write(write, said.encode()[:4000])
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    with os.fdopen(read) as got:
        return got.read()
