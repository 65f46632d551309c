"""Synthetic tasks go only to miners whose availability the validator knows for their current
hotkey: a miner the first poll has not reached yet (every start) or a uid that changed hands is
unknown, not a miner to score 0."""

from __future__ import annotations

import json
import random

import aiohttp

from neurons.miner.app import create_miner_app
from neurons.miner.backends.deterministic import DeterministicBackend
from neurons.validator.availability import AvailabilityBook
from neurons.validator.datasets import build_datasets
from neurons.validator.scores import ScoreBook
from neurons.validator.synthetic import SyntheticConfig, run_cycle
from neurons.validator.tasks import default_registry
from shared.corpus import builtin_corpus
from shared.metagraph import MetagraphSnapshot, MetagraphView, Neuron, write_metagraph_file
from shared.miner_client import MinerClient, make_session
from shared.signing import Authorizer, RequestVerifier, Signer
from tests.helpers import VALIDATOR_KP, StaticSource, keypair, serve_app, snapshot, wait_until
from tests.ports import free_port
from tests.validator.test_inbox import tail, validator_env, validator_process

NOTHING = {"task_availabilities": {}, "llm_model_availabilities": {}}


async def _cycle(book: AvailabilityBook, *, dark: tuple[int, ...] = (), scored: tuple[int, ...] = (),
                 seed: int = 1, uids: tuple[int, ...] = (1, 2)):
    miners = {uid: (keypair(f"//Miner{uid}").ss58_address, None if uid in dark else "127.0.0.1:9") for uid in uids}
    view = MetagraphView(StaticSource(snapshot(VALIDATOR_KP.ss58_address, miners)))
    await view.refresh()
    client = MinerClient(make_session(), Signer(VALIDATOR_KP))
    try:
        return await run_cycle(client, view, book, default_registry(), build_datasets(builtin_corpus()),
                               SyntheticConfig(sample_size=8, timeout=1.0), random.Random(seed), scored=scored)
    finally:
        await client.session.close()


async def test_before_the_first_availability_poll_no_miner_is_sampled() -> None:
    assert await _cycle(AvailabilityBook()) is None, "no job: nobody scored 0 for being unknown"


async def test_a_uid_known_only_under_its_previous_hotkey_is_left_out() -> None:
    book = AvailabilityBook(entries={1: NOTHING, 2: NOTHING},
                            hotkeys={1: keypair("//Miner1").ss58_address, 2: keypair("//Someone").ss58_address})
    job = await _cycle(book)
    assert job is not None and set(job.bodies) == {1}, "uid 2's new owner was never polled"
    assert job.errors == {1: "unavailable for this task"}, "uid 1 was polled and serves nothing: that is a 0"


def _known(*uids: int) -> AvailabilityBook:
    return AvailabilityBook(entries={u: NOTHING for u in uids},
                            hotkeys={u: keypair(f"//Miner{u}").ss58_address for u in uids})


async def test_a_scored_miner_that_took_its_axon_down_is_a_failure_in_every_job() -> None:
    """It kept its score (and its weight) for good: only serving miners were ever sampled."""
    job = await _cycle(_known(1, 2), dark=(2,), scored=(1, 2))
    assert job is not None and set(job.bodies) == {1, 2}
    assert job.errors[2] == "serves no axon"
    never_scored = await _cycle(_known(1, 2), dark=(2,), scored=(1,))
    assert never_scored is not None and set(never_scored.bodies) == {1}, "a uid with no score has nothing to lose"


async def test_seeds_of_one_job_are_independent_so_no_miner_can_name_a_peers() -> None:
    """Consecutive seeds (base + i) let a miner answer with a peer's honest text (its seed +- 1) and have
    the peer zeroed as a copier with it."""
    uids = tuple(range(1, 9))
    for seed in range(20):
        job = await _cycle(_known(*uids), uids=uids, seed=seed)
        assert job is not None
        if job.task in ("InferenceTask",):
            seeds = sorted(b["seed"] for b in job.bodies.values())
            assert len(set(seeds)) == len(seeds)
            assert all(b - a != 1 for a, b in zip(seeds, seeds[1:], strict=False)), seeds
            return
    raise AssertionError("no seed-dependent task was chosen in 20 cycles")


async def test_a_synthetic_request_looks_like_an_organic_one() -> None:
    """"synthetic-<seed>" as the request id, and a timeout field the API never forwards, told synthetic
    traffic apart: a miner could answer it honestly and cut corners on callers."""
    job = await _cycle(_known(1, 2))
    assert job is not None
    for body in job.bodies.values():
        assert "timeout" not in body and "uids" not in body and "session_id" not in body


def test_a_synthetic_body_has_the_fields_of_a_callers_in_their_place() -> None:
    """Synthetic chat bodies carried their sampling only in ``sampling_parameters``, which the API's bodies never
    do alone (it puts a caller's at the top level): one rule told all 48 synthetic requests of a run from the
    organic ones. Retrieval queries lacked the ``target_results`` and ``timeout`` the API's carry. Each is
    now made as the API makes a caller's."""

    from api.web_retrieval import retrieval_body
    from neurons.validator.synthetic import challenge_body
    from neurons.validator.tasks.base import Challenge
    from shared.protocol import ChatCompletionRequest

    messages = [{"role": "user", "content": "What is 2 + 2?"}]
    synthetic = challenge_body(Challenge("ArithmeticTask", messages, max_tokens=64), 11)
    sent = {"messages": messages, "stream": True, "temperature": 0.7, "top_p": 0.95, "max_tokens": 64,
            "task": "ArithmeticTask"}  # what an SDK caller sends
    organic = ChatCompletionRequest.model_validate(sent).miner_body(seed=11, sent=sent)
    assert list(synthetic) == list(organic) and synthetic == organic
    assert "sampling_parameters" not in synthetic and synthetic["temperature"] == 0.7
    web = challenge_body(Challenge("WebRetrievalTask", [{"role": "user", "content": "pelseldan"}]), 5,
                         results=3, timeout=10.0)
    assert web == retrieval_body("pelseldan", n_results=3, timeout=10.0, seed=5)


async def test_synthetic_requests_are_worded_as_variously_as_callers_are() -> None:
    """Every synthetic request came without a ``model``, streamed, at temperature 0.7 and top_p 0.95, while
    every organic one through the OpenAI SDK names a model: ``"model" not in body`` told them apart. A job
    names "default", a model the miner serves, or none; streams or not; and varies its sampling (above 0)."""
    served = {"task_availabilities": {}, "llm_model_availabilities": {"org/served": True, "org/off": False}}
    book = AvailabilityBook(entries={1: served}, hotkeys={1: keypair("//Miner1").ss58_address})
    chat = [b for seed in range(60) if (job := await _cycle(book, seed=seed, uids=(1,))) is not None
            for b in job.bodies.values() if b["task"] != "WebRetrievalTask"]
    assert {b.get("model") for b in chat} == {None, "default", "org/served"}
    assert {b["stream"] for b in chat} == {True, False}
    assert len({b["temperature"] for b in chat}) > 2 and min(b["temperature"] for b in chat) > 0
    assert {"top_p" in b for b in chat} == {True, False}
    assert all(list(b)[:2] in (["messages", "model"], ["messages", "stream"]) for b in chat)


async def test_miners_down_at_the_poll_with_no_score_do_not_crowd_the_live_ones_out() -> None:
    """256 uids, most of them down: a sample of 8 drawn from every polled uid was mostly down miners
    (a 0 that changes nothing), and a live miner got a job in 1 of 16 cycles instead of every one. A down
    miner that holds a score is still sampled: its score must decay."""
    uids = tuple(range(1, 41))
    book = _known(*uids)
    for uid in uids[3:]:
        book.entries[uid] = None  # polled for its hotkey, unreachable
    for seed in range(5):
        job = await _cycle(book, uids=uids, seed=seed)
        assert job is not None and set(job.bodies) == {1, 2, 3}, sorted(job.bodies)
    job = await _cycle(book, uids=uids, scored=(7,))
    assert job is not None and set(job.bodies) == {1, 2, 3, 7}
    assert job.errors[7] == "unavailable for this task"


async def test_a_scored_miner_that_went_down_for_good_stops_being_sampled_once_its_score_decays() -> None:
    """A moving average never reached 0 in floating point (0.9 x 2.5e-323 rounds back to 2.5e-323): a miner that
    had ever scored and then went down held a "positive" score for good, so it joined every synthetic job (no
    axon) or kept a place in every sample (unreachable), crowding the live miners out for the validator's life."""
    from neurons.validator.scores import ScoreBook

    registry = default_registry()
    book = ScoreBook(registry.probabilities)
    hotkey = keypair("//Miner2").ss58_address
    for task in registry.probabilities:
        book.update(2, hotkey, task, 1.0)
    assert 2 in book.holding()
    for _ in range(10_000):  # every synthetic job it joins is a 0 for it
        for task in registry.probabilities:
            book.update(2, hotkey, task, 0.0)
    assert book.combined(2) == 0.0 and 2 not in book.holding()
    job = await _cycle(_known(1, 2), dark=(2,), scored=tuple(book.holding()))
    assert job is not None and set(job.bodies) == {1}


async def test_a_validator_without_a_permit_scores_no_miner_for_refusing_it(tmp_path) -> None:
    """``sn1 validator`` whose hotkey holds no validator permit on its metagraph: uid 1 allow-lists it, uids 2 and 3
    refuse it (HTTP 403 ``NotAValidator``), as miners are to. Each synthetic job scored 2 and 3 zero for the
    validator's own standing (1.0 to 0.03 within 3 s here; about half a score a minute at the default
    intervals), and its first set once its permit came back paid uid 1 alone. Refusals are left out while it
    holds no permit; uid 1 is scored as before."""
    port = free_port()
    url, log = f"http://127.0.0.1:{port}", tmp_path / "validator.log"
    env_file, validator = validator_env(tmp_path, port, SYNTHETIC_ENABLED="true", SYNTHETIC_INTERVAL="0.3",
                                        AVAILABILITY_INTERVAL="1", SYNTHETIC_TIMEOUT="2")
    miners = {uid: keypair(f"//Miner{uid}") for uid in (1, 2, 3)}
    book = ScoreBook(dict.fromkeys(default_registry().probabilities, 0.25), alpha=1.0,
                     path=tmp_path / "state" / "scores.json")
    for uid, key in miners.items():
        for task in default_registry().probabilities:
            book.update(uid, key.ss58_address, task, 1.0)
    book.save()

    def miner(uid: int, allowed: set[str]):
        return create_miner_app(DeterministicBackend(), RequestVerifier(miners[uid].ss58_address,
                                                                        Authorizer(lambda: allowed)))

    async with serve_app(miner(1, {validator})) as u1, serve_app(miner(2, set())) as u2, \
            serve_app(miner(3, set())) as u3:
        axons = {1: u1, 2: u2, 3: u3}
        neurons = [Neuron(uid=0, hotkey=validator, stake=1000.0, validator_permit=False)]
        neurons += [Neuron(uid=u, hotkey=k.ss58_address, axon=axons[u].removeprefix("http://")) for u, k in miners.items()]
        write_metagraph_file(tmp_path / "metagraph.json", MetagraphSnapshot(netuid=1, block=1, neurons=tuple(neurons)))
        async with validator_process(env_file, url, log), aiohttp.ClientSession() as s:
            await wait_until(lambda: tail(log, 0).count("scored synthetic") >= 6, 20)
            async with s.get(url + "/scores") as r:
                shown = {m["uid"]: m["score"] for m in (await r.json())["miners"]}
    scored = [line for line in tail(log, 0).splitlines() if "scored synthetic" in line]
    assert len(scored) >= 6, tail(log)
    assert shown[2] == shown[3] == 1.0, (shown, scored[-3:])
    assert all(" 1=" in line and " 2=" not in line and " 3=" not in line for line in scored), scored[-3:]
    assert "refused this validator's signed requests (uids 2,3)" in tail(log, 0)
    assert json.loads(book.path.read_text())["miners"]["2"]["tasks"] == book.to_json()["miners"]["2"]["tasks"]


async def test_a_synthetic_cycle_stopped_mid_job_leaves_no_miner_call_running() -> None:
    """A shutdown cancels the synthetic loops mid-job: the calls to the sampled miners were left running (until
    their deadline, past the session's close), and at exit were "Task was destroyed but it is pending"."""
    import asyncio

    from aiohttp import web

    from neurons.validator.tasks import DEFAULT_PROBABILITIES

    arrived = asyncio.Event()
    held: list[int] = []

    async def never_answers(request: web.Request) -> web.StreamResponse:
        held.append(1)
        if len(held) == 2:
            arrived.set()
        await asyncio.sleep(60)
        return web.Response()

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", never_answers)
    every_task = {"task_availabilities": dict.fromkeys(DEFAULT_PROBABILITIES, True), "llm_model_availabilities": {}}
    async with serve_app(app) as url:
        axon = url.removeprefix("http://")
        miners = {uid: (keypair(f"//Miner{uid}").ss58_address, axon) for uid in (1, 2)}
        view = MetagraphView(StaticSource(snapshot(VALIDATOR_KP.ss58_address, miners)))
        await view.refresh()
        book = AvailabilityBook(entries={1: every_task, 2: every_task},
                                hotkeys={u: hk for u, (hk, _) in miners.items()})
        client = MinerClient(make_session(), Signer(VALIDATOR_KP))
        try:
            cycle = asyncio.create_task(run_cycle(client, view, book, default_registry(),
                                                  build_datasets(builtin_corpus()),
                                                  SyntheticConfig(sample_size=8, timeout=30.0), random.Random(1)))
            await asyncio.wait_for(arrived.wait(), 10)
            cycle.cancel()
            await asyncio.gather(cycle, return_exceptions=True)
            await asyncio.sleep(0.05)
            running = [t for t in asyncio.all_tasks() if "query_one" in repr(t.get_coro())]
            assert running == [], "miner calls still running after their cycle was stopped"
        finally:
            await client.session.close()
