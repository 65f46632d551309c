"""A miner written from docs/miner-protocol.md alone, on a live local network.

``ThirdPartyMiner`` below imports nothing of this repository: it is what a third party writes in its own
framework from the protocol document, with the bittensor SDK for the btauth/1 signature, as a real one
would. It is registered on a local network beside two reference miners (``sn1 localnet --external-miner``)
and must be treated as one of them: the validator learns its availability, sends it every synthetic task
and scores it as the reference miners (the same model answers both), its weight follows, and the API
routes organic chat (streamed and not) and web retrieval to it. If the protocol changes, this test fails:
change docs/miner-protocol.md with it.

What a real miner runs behind its HTTP server (a model server, a search engine) is stood in for by the
test: ``model_server_app`` serves the network's reference model (the deterministic test model the local
validator judges against) as vLLM would serve a real one, and the miner's search index is the local
network's web (``<dir>/corpus.jsonl``, the pages the validator checks results against).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from bittensor import http_auth
from bittensor.sp_core import Keypair

from neurons.localnet import LocalNet, LocalNetConfig
from neurons.localnet_args import external_miner
from tests.ports import free_ports, pool

LIMIT_S = 90.0  # the whole wait for availability, every task and scores (it usually takes about 20 s)
MODEL = "sn1/deterministic"  # the local network's model: the miner serves the model the API routes by name
TASKS = ("InferenceTask", "QuestionAnsweringTask", "ArithmeticTask", "WebRetrievalTask")
ORGANIC = "organic-test-"  # the x-request-id prefix of this test's own API calls (synthetic ones have others)


# --- the third party's miner: docs/miner-protocol.md, nothing else --------------------------------------------

def openai_error(status: int, message: str, code: str, kind: str = "invalid_request_error") -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "code": code, "param": None}},
                             status=status)


WORD = re.compile(r"[a-z0-9]+")
STOPWORDS = frozenset("a an and are as at be by for from has in is it of on or that the to was what which who".split())


def terms(text: str) -> frozenset[str]:
    return frozenset(w for w in WORD.findall(text.lower()) if w not in STOPWORDS)


class ThirdPartyMiner:
    """Serves ``POST /availability``, ``POST /v1/chat/completions`` and ``GET /health``: every task but
    web retrieval relayed to its model server, web retrieval answered from its own search index."""

    def __init__(self, keypair: Keypair, metagraph_file: Path, index_file: Path, model_server: str) -> None:
        self.keypair, self.hotkey = keypair, keypair.ss58_address
        self.metagraph_file, self.model_server = metagraph_file, model_server
        self.nonces = http_auth.InMemoryNonceStore()  # replays: verify() remembers each (hotkey, nonce)
        self.index_file = index_file
        self.pages: list[dict[str, str]] = []
        self._permits: tuple[float, frozenset[str]] = (0.0, frozenset())
        self.received: list[tuple[str, dict[str, Any]]] = []  # (x-request-id, body) of each chat request
        self.availability_polls = 0
        self.refused: list[tuple[int, str]] = []
        self.off_protocol: list[str] = []  # what reached it that the doc says never does (the test's own check)
        self.session: aiohttp.ClientSession | None = None

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.btauth])
        app.router.add_get("/health", self.health)
        app.router.add_post("/availability", self.availability)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.cleanup_ctx.append(self._session)
        return app

    async def _session(self, _app: web.Application) -> Any:
        self.session = aiohttp.ClientSession()
        yield
        await self.session.close()

    def permitted(self) -> frozenset[str]:
        """Hotkeys holding a validator permit: on chain the SDK's metagraph; on the local network its
        ``metagraph.json`` (re-read when it changes)."""
        try:
            mtime = self.metagraph_file.stat().st_mtime
        except OSError:
            return frozenset()
        if mtime != self._permits[0]:
            neurons = json.loads(self.metagraph_file.read_text())["neurons"]
            self._permits = (mtime, frozenset(n["hotkey"] for n in neurons if n["validator_permit"]))
        return self._permits[1]

    @web.middleware
    async def btauth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == "/health":
            return await handler(request)
        raw = await request.read()  # the raw bytes: the signature covers them
        try:
            caller = http_auth.verify(request.headers, raw, method=request.method, path=request.raw_path,
                                      self_hotkey_ss58=self.hotkey, nonce_store=self.nonces)
        except http_auth.AuthError as e:
            status = {http_auth.MalformedAuth: 400, http_auth.WrongReceiver: 403}.get(type(e), 401)
            self.refused.append((status, type(e).__name__))
            return openai_error(status, f"{type(e).__name__}: {e}", type(e).__name__, "authentication_error")
        if caller.hotkey_ss58 not in self.permitted():
            self.refused.append((403, "NotAValidator"))
            return openai_error(403, f"hotkey {caller.hotkey_ss58} holds no validator permit", "NotAValidator",
                                "permission_error")
        return await handler(request)

    async def health(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def availability(self, _request: web.Request) -> web.Response:
        self.availability_polls += 1
        return web.json_response({"task_availabilities": dict.fromkeys(TASKS, True),
                                  "llm_model_availabilities": {MODEL: True}})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = json.loads(await request.read())
        self.received.append((request.headers.get("x-request-id", ""), body))
        self.check_documented(request, body)
        if body.get("model") not in (None, "", "default", MODEL):
            return openai_error(404, f"The model {body['model']!r} is not served here.", "model_not_found")
        if body.get("task") == "WebRetrievalTask":
            query = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
            return await self.answer(request, body, json.dumps(self.search(query, body.get("target_results") or 3)))
        return await self.relay(request, body)

    def check_documented(self, request: web.Request, body: dict[str, Any]) -> None:
        """What the doc promises of every chat request (the test's own bookkeeping, not a miner's job)."""
        rid = request.headers.get("x-request-id", "?")
        if request.headers.get("Content-Type") != "application/json" or not request.headers.get("x-request-id"):
            self.off_protocol.append(f"{rid}: headers {dict(request.headers)}")
        if body.get("task") not in TASKS or type(body.get("seed")) is not int or type(body.get("stream")) is not bool:
            self.off_protocol.append(f"{rid}: task/seed/stream {body}")
        if body.get("task") == "WebRetrievalTask" and (
                "model" in body or type(body.get("target_results")) is not int
                or not isinstance(body.get("timeout"), int | float) or body.get("stream") is not True):
            self.off_protocol.append(f"{rid}: retrieval body {body}")
        if body.get("model") not in (None, "", "default", MODEL):
            self.off_protocol.append(f"{rid}: a model it does not list: {body.get('model')}")

    async def relay(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        """The model server's answer, in the mode the body asks for (``stream``)."""
        assert self.session is not None
        async with self.session.post(f"{self.model_server}/v1/chat/completions", json=body | {"model": MODEL}) as up:
            if up.status != 200:
                text = await up.text()
                if up.status in (400, 413, 422):  # the request itself was refused: not this miner's fault
                    return openai_error(up.status, text[:500], "model_server_rejected")
                return openai_error(502, f"model server HTTP {up.status}", "upstream_error", "server_error")
            if not body.get("stream"):
                return web.Response(body=await up.read(), content_type="application/json")
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            async for piece in up.content.iter_any():
                await resp.write(piece)
            await resp.write_eof()
            return resp

    async def answer(self, request: web.Request, body: dict[str, Any], text: str) -> web.StreamResponse:
        """``text`` as an OpenAI chat completion, streamed (SSE, ending in ``[DONE]``) or one JSON object."""
        head = {"id": f"chatcmpl-tp{time.time_ns()}", "created": int(time.time()), "model": MODEL}
        if not body.get("stream"):
            return web.json_response(head | {"object": "chat.completion", "choices": [{
                "index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for delta, finish in (({"role": "assistant", "content": text}, None), ({}, "stop")):
            chunk = head | {"object": "chat.completion.chunk",
                            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    def search(self, query: str, k: int) -> list[dict[str, str]]:
        """Up to ``k`` pages that share the query's words (a title's count twice), each with its best sentence."""
        if not self.pages:  # the search index, read once
            self.pages = [json.loads(line) for line in self.index_file.read_text().splitlines() if line.strip()]
            self.page_terms = [(terms(p["title"]), terms(p["content"])) for p in self.pages]
        wanted = terms(query)
        ranked = sorted(((2 * len(wanted & title) + len(wanted & content), -i)
                         for i, (title, content) in enumerate(self.page_terms)), reverse=True)[:k]
        best = ranked[0][0] if ranked else 0
        out = []
        for score, negative_i in ranked:
            if score == 0 or 2 * score < best:
                continue
            page = self.pages[-negative_i]
            sentences = re.split(r"(?<=[.!?])\s+", page["content"])
            relevant = max(sentences, key=lambda s: len(wanted & terms(s)))
            out.append({"url": page["url"], "content": page["content"], "relevant": relevant})
        return out


# --- what stands in for the miner's own machines -----------------------------------------------------------------

def model_server_app() -> web.Application:
    """An OpenAI-compatible model server with the network's reference model (as vLLM would serve a real
    one): the local validator's reference is this deterministic model, so an honest relay of it scores."""
    from neurons.miner.backends.deterministic import DeterministicBackend  # the model, not a miner

    model = DeterministicBackend(MODEL)

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not body.get("stream"):
            return web.json_response(await model.complete(body))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        async for data in model.stream(body):
            await resp.write(f"data: {data}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


class Servers:
    """aiohttp apps on 127.0.0.1 in a thread of their own (the local network starts synchronously)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.runners: list[web.AppRunner] = []
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def serve(self, app: web.Application, port: int) -> str:
        async def start() -> None:
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            self.runners.append(runner)

        asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)
        return f"127.0.0.1:{port}"

    def close(self) -> None:
        async def stop() -> None:
            for runner in self.runners:
                await runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


# --- the checks --------------------------------------------------------------------------------------------------

def call(url: str, *, data: Any = None, key: str | None = None, rid: str | None = None) -> tuple[int, dict, bytes]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    if rid:
        headers["x-request-id"] = rid
    body = None if data is None else json.dumps(data).encode()
    req = urllib.request.Request(url, data=body, headers=headers, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def until(what: str, check: Any, deadline: float, every: float = 0.5) -> Any:
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


def test_a_miner_written_from_the_protocol_doc_is_one_of_the_network(tmp_path: Path) -> None:
    api_port, validator_port, miner_port, model_port = free_ports(4)
    keypair = Keypair.create_from_uri("//ThirdPartyMiner")
    servers = Servers()
    net = None
    try:
        model_server = "http://" + servers.serve(model_server_app(), model_port)
        # The local network writes its web (the corpus the validator checks results against) and its metagraph
        # before it starts anything; the miner reads both when it is first called.
        miner = ThirdPartyMiner(keypair, tmp_path / "net" / "metagraph.json", tmp_path / "net" / "corpus.jsonl",
                                model_server)
        address = servers.serve(miner.app(), miner_port)
        net = LocalNet(LocalNetConfig(directory=tmp_path / "net", miners=2, api_port=api_port,
                                      validator_port=validator_port, admin_key="third-party-admin-key-0123456789",
                                      fast=True, external_miners=[f"{keypair.ss58_address}@{address}"]),
                       ports=pool())
        info = net.start(timeout=120)
        deadline = time.monotonic() + LIMIT_S
        uid = next(m["uid"] for m in info["miners"] if m["backend"] == "external")
        references = [m["uid"] for m in info["miners"] if m["backend"] != "external"]
        api, validator, key = info["api_url"], info["validator_url"], info["api_key"]

        # The validator learns what it serves from its signed /availability answer ...
        def available() -> dict | None:
            _, _, raw = call(f"{validator}/miner_availabilities/miner_availabilities", data=[uid])
            return json.loads(raw).get(str(uid))

        entry = until("the validator to poll the third-party miner", available, deadline)
        assert entry == {"task_availabilities": dict.fromkeys(TASKS, True), "llm_model_availabilities": {MODEL: True}}
        # ... and the API routes by it: the miner is among those a request for its model would race.
        status, _, raw = call(f"{api}/miner_availabilities/get_available_miners?model={MODEL}&task=InferenceTask",
                              key=key)
        assert status == 200 and uid in json.loads(raw), raw

        # Organic chat, not streamed and streamed, answered by it (x-sn1-miner-uid).
        messages = [{"role": "user", "content": "Name three rivers."}]
        status, headers, raw = call(f"{api}/v1/chat/completions", key=key, rid=ORGANIC + "json",
                                    data={"model": MODEL, "messages": messages, "uids": [uid], "seed": 7})
        assert status == 200, raw
        assert headers["x-sn1-miner-uid"] == str(uid)
        assert json.loads(raw)["choices"][0]["message"]["content"]
        status, headers, raw = call(f"{api}/v1/chat/completions", key=key, rid=ORGANIC + "sse",
                                    data={"model": "default", "messages": messages, "uids": [uid], "stream": True})
        assert status == 200 and headers["Content-Type"].startswith("text/event-stream"), raw
        assert headers["x-sn1-miner-uid"] == str(uid)
        events = [line[6:] for line in raw.decode().splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]" and "".join(
            (c["choices"][0]["delta"].get("content") or "") for c in map(json.loads, events[:-1]) if c["choices"])
        # A caller's web search reaches it too, as a WebRetrievalTask chat request.
        status, _, raw = call(f"{api}/web_retrieval", key=key, rid=ORGANIC + "web",
                              data={"search_query": "Tarsund river", "n_results": 3, "uids": [uid]})
        assert status == 200 and json.loads(raw)["results"], raw
        organic = {rid: body for rid, body in miner.received if rid.startswith(ORGANIC)}
        assert organic[ORGANIC + "json"]["stream"] is False and organic[ORGANIC + "sse"]["stream"] is True
        assert organic[ORGANIC + "web"]["task"] == "WebRetrievalTask"
        assert organic[ORGANIC + "web"]["target_results"] == 3

        # The validator's synthetic tasks: every task, each body naming its task and a seed.
        def every_task() -> bool:
            seen = {body.get("task") for rid, body in miner.received if not rid.startswith(ORGANIC)}
            return seen >= set(TASKS)

        until("a synthetic job of every task", every_task, deadline)
        synthetic = [body for rid, body in miner.received if not rid.startswith(ORGANIC)]
        assert all(isinstance(body.get("seed"), int) and isinstance(body.get("stream"), bool) for body in synthetic)

        # Scored as the reference miners are (the same model answers), and weighted so.
        def scored() -> dict | None:
            scores = json.loads(call(f"{validator}/scores")[2])
            by_uid = {m["uid"]: m for m in scores["miners"]}
            if not scores["last_weights_set_at"] or not all(
                    set(by_uid.get(u, {}).get("tasks", {})) >= set(TASKS) for u in (uid, *references)):
                return None
            return by_uid

        by_uid = until("scores for every task and weights", scored, deadline, every=1.0)
        ours, theirs = by_uid[uid], [by_uid[u] for u in references]
        assert all(0.5 < m["score"] for m in (ours, *theirs)), by_uid
        assert abs(ours["score"] - sum(m["score"] for m in theirs) / len(theirs)) < 0.15, by_uid
        for task in TASKS:
            assert ours["tasks"][task] > min(m["tasks"][task] for m in theirs) - 0.25, (task, by_uid)
        assert ours["weight"] > 0.5 * min(m["weight"] for m in theirs), by_uid
        # The ledger moved its incentive in the metagraph, as for any miner.
        neurons = json.loads((tmp_path / "net" / "metagraph.json").read_text())["neurons"]
        assert next(n for n in neurons if n["uid"] == uid)["incentive"] > 0.1
        # Nobody the doc says to refuse reached it, and nobody it should take was refused.
        assert miner.availability_polls and not miner.refused, miner.refused
        assert not miner.off_protocol, miner.off_protocol
    finally:
        if net is not None:
            net.stop()
        servers.close()


def test_the_protocol_docs_worked_signature_example_verifies() -> None:
    """docs/miner-protocol.md's signed request verifies as shown, over the signed bytes it shows: a port of
    btauth/1 to another language can be checked against it."""
    doc = (Path(__file__).parents[2] / "docs" / "miner-protocol.md").read_text()
    request = re.search(r"```http\n(.*?)\n```", doc, re.S).group(1)
    signed = re.search(r"```text\n(btauth/1\n.*?)\n```", doc, re.S).group(1).encode()
    head, body = request.split("\n\n", 1)
    method, path, _ = head.splitlines()[0].split(" ")
    headers = dict(line.split(": ", 1) for line in head.splitlines()[1:])
    nonce = int(headers["X-Bittensor-Nonce"])
    caller = http_auth.verify(headers, body.encode(), method=method, path=path,
                              self_hotkey_ss58=headers["X-Bittensor-Receiver"], now_ns=nonce,
                              nonce_store=http_auth.InMemoryNonceStore())
    assert caller.hotkey_ss58 == headers["X-Bittensor-Hotkey"] == Keypair.create_from_uri("//Validator").ss58_address
    assert headers["X-Bittensor-Receiver"] == Keypair.create_from_uri("//Miner1").ss58_address
    assert signed == http_auth.build_payload(scheme="sr25519", method=method, path=path, body=body.encode(),
                                             nonce_ns=nonce, sender_ss58=caller.hotkey_ss58,
                                             receiver_ss58=headers["X-Bittensor-Receiver"])
    assert Keypair(ss58_address=caller.hotkey_ss58).verify(signed, bytes.fromhex(headers["X-Bittensor-Signature"][2:]))


def test_external_miner_is_hotkey_at_host_and_port() -> None:
    hotkey = Keypair.create_from_uri("//ThirdPartyMiner").ss58_address
    assert external_miner(f" {hotkey}@127.0.0.1:8095 ") == f"{hotkey}@127.0.0.1:8095"
    for bad in (f"{hotkey}127.0.0.1:8095", f"{hotkey}@127.0.0.1", f"{hotkey}@:8095", "5Fnot-an-address@127.0.0.1:8095",
                f"{hotkey}@127.0.0.1:70000"):
        with pytest.raises(argparse.ArgumentTypeError):
            external_miner(bad)
