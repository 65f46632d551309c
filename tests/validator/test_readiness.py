"""The validator says when it is not doing its job: ``GET /ready`` (200, or 503 with a reason per failing
check), ``/health``'s ``status`` ("ok" only when ``/ready`` is a 200) and ``/metrics``' gauges, each check
failing and recovering on the real app served on 127.0.0.1; and the chain's limits said at start."""

from __future__ import annotations

import asyncio
import json
import math
import re
import sqlite3
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import bittensor as bt
from bittensor.sp_core import Keypair
from loguru import logger

from neurons.validator.app import ValidatorContext, create_validator_app
from neurons.validator.availability import poll_all
from neurons.validator.loops import weights_cycle
from neurons.validator.readiness import CHECKS, readiness, start_checks
from neurons.validator.recheck import recheck_cycle
from neurons.validator.reference import CachedReference, DeterministicReference, OpenAIReference
from neurons.validator.reference_status import ReferenceStatus
from neurons.validator.scores import ScoreBook
from neurons.validator.scoring import Scorer, ScoringJob
from neurons.validator.tasks import default_registry
from neurons.validator.tasks.base import RewardContext
from neurons.validator.weights import ChainWeightSink, LedgerWeightSink
from shared.corpus import builtin_corpus
from shared.jsonutil import dumps
from shared.metagraph import ChainMetagraphSource, MetagraphSnapshot
from shared.metrics import ValidatorMetrics
from shared.miner_client import MinerClient, make_session
from shared.protocol import chunk_object
from shared.signing import Signer
from tests.compat.support import sample
from tests.helpers import log_lines, serve_app
from tests.ports import free_port
from tests.validator.test_app import MINERS, VALIDATOR, make_ctx, post
from tests.validator.test_inbox import answered, validator, validator_env, validator_process
from tests.validator.test_operator_view import flaky_reference_model
from tests.validator.test_scores_weights import DevWallet, FakeSubstrate, chain_storage

SM = "SubtensorModule"


async def get(url: str, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.get(url + path) as r:
        return r.status, (await r.json() if path != "/metrics" else await r.text())


async def view(url: str) -> tuple[int, dict, dict, str]:
    """``/ready``'s status and body, ``/health``'s body and the ``/metrics`` text, in one go."""
    status, ready = await get(url, "/ready")
    health_status, health = await get(url, "/health")
    assert health_status == 200, "liveness stays a 200 whatever fails"
    _, prom = await get(url, "/metrics")
    return status, ready, health, prom


async def assert_failing(url: str, name: str, words: str) -> dict:
    """``name`` fails as a required check: a 503 naming it, /health degraded, its gauge 0; returns /ready."""
    status, ready, health, prom = await view(url)
    assert status == 503 and not ready["ready"], ready
    reason = next((r for r in ready["reasons"] if r.startswith(f"{name}: ")), None)
    assert reason is not None and words in reason, ready["reasons"]
    check = {k: v for k, v in ready["checks"][name].items() if not k.startswith("last_tried_")}  # test_recheck.py's
    assert check == {"ok": False, "required": True, "detail": reason.removeprefix(f"{name}: ")}
    assert health["status"] == "degraded" and name in health["failing_checks"], health
    assert sample(prom, "sn1_validator_ready") == 0 and sample(prom, "sn1_validator_check_ok", check=name) == 0
    return ready


async def assert_ready(url: str, *warnings: str) -> dict:
    """A 200, /health "ok", every required gauge 1, and exactly the ``warnings`` named; returns /ready."""
    status, ready, health, prom = await view(url)
    assert status == 200 and ready["ready"] and ready["reasons"] == [], ready
    assert sorted(w.split(":")[0] for w in ready["warnings"]) == sorted(warnings), ready["warnings"]
    assert health["status"] == "ok" and health["failing_checks"] == [], health
    assert sample(prom, "sn1_validator_ready") == 1
    for name in CHECKS:
        assert sample(prom, "sn1_validator_check_ok", check=name) == (0 if name in warnings else 1), name
    return ready


def served(ctx: ValidatorContext):
    return serve_app(create_validator_app(ctx, metrics=ValidatorMetrics()))


async def test_a_working_validator_is_ready_with_every_check_and_health_keeps_its_fields() -> None:
    ctx = make_ctx()
    async with served(ctx) as url:
        ready = await assert_ready(url)
        _, health = await get(url, "/health")
    assert set(ready["checks"]) == set(CHECKS)
    assert {name for name, c in ready["checks"].items() if c["required"]} == {
        "metagraph", "availability", "scores", "scoring_inbox", "reference"}, "with no sink on chain"
    assert set(health) >= {"status", "availability_updated_at", "scoring_queue", "scoring_queue_max",
                           "scoring_queue_bytes", "scoring_queue_max_bytes", "synthetic_queue", "synthetic_queue_max",
                           "organic_stale_dropped", "scoring_inbox_waiting", "scores_updated_at", "scores_save_error",
                           "last_weights_set_at", "weights_not_set", "metagraph_block", "metagraph_age_seconds",
                           "reference", "failing_checks"}


async def test_a_stale_metagraph_fails_and_a_refresh_recovers() -> None:
    ctx = make_ctx()
    fresh = ctx.metagraph.snapshot
    async with served(ctx) as url:
        ctx.metagraph.snapshot = replace(fresh, fetched_at=time.monotonic() - 1000)
        await assert_failing(url, "metagraph", "the metagraph is 1000s old (limit 180s)")
        await ctx.metagraph.refresh()  # its source answers again
        await assert_ready(url)


async def test_availability_never_polled_or_gone_stale_fails_and_a_poll_recovers() -> None:
    ctx = make_ctx()
    ctx.readiness.availability_interval, ctx.readiness.availability_timeout = 30, 10
    ctx.readiness.started_at = time.monotonic() - 500
    async with served(ctx) as url, make_session() as session:
        await assert_failing(url, "availability", "no availability poll has ended in the 500s since start (limit 100s)")
        _, _, health, prom = await view(url)  # never polled: the gauge and /health say so too, not "0 s old"
        assert sample(prom, "sn1_validator_availability_age_seconds") == math.inf
        assert health["availability_updated_at"] is None
        client = MinerClient(session, Signer(VALIDATOR))
        await poll_all(client, ctx.metagraph, ctx.book, timeout=1, concurrency=2)  # no miner serves an axon
        await assert_ready(url, "miners")
        _, _, health, prom = await view(url)
        assert 0 <= sample(prom, "sn1_validator_availability_age_seconds") < 5
        assert abs(health["availability_updated_at"] - time.time()) < 5
        ctx.book.polled_at = time.monotonic() - 300
        ctx.book.refused_by_all = True
        ready = await assert_failing(url, "availability", "the last availability poll ended 300s ago")
        assert "every miner refused this validator's signature" in ready["checks"]["availability"]["detail"]
        ctx.book.refused_by_all = False
        await poll_all(client, ctx.metagraph, ctx.book, timeout=1, concurrency=2)
        ready = await assert_ready(url, "miners")
    assert ready["checks"]["miners"]["detail"].startswith("the metagraph lists no serving miner")


async def test_scores_the_disk_refuses_fail_and_the_next_save_recovers(tmp_path: Path) -> None:
    path = tmp_path / "scores.json"
    ctx = make_ctx()
    ctx.scores = ScoreBook({"InferenceTask": 1.0}, path=path)
    async with served(ctx) as url:
        path.mkdir()
        (path / "in-the-way").write_text("")  # a file cannot replace a directory: a real OSError
        ctx.scores.update(1, "hk1", "InferenceTask", 1.0)
        await ctx.scores.save_off_loop()
        await assert_failing(url, "scores", f"scores cannot be saved to {path} (IsADirectoryError")
        (path / "in-the-way").unlink()
        path.rmdir()
        await ctx.scores.save_off_loop()
        await assert_ready(url)


async def test_scores_the_disk_refused_are_saved_by_the_recheck_when_no_job_comes(tmp_path: Path) -> None:
    """Only a scored job's save ended the run: with no job (no miner answering, synthetic jobs off, no organic
    payload), ``/ready`` said "scores cannot be saved" for as long as the validator ran after the disk was back,
    and the scores scored meanwhile stayed in memory only, lost at the next restart. The recheck saves them."""
    path = tmp_path / "scores.json"
    ctx = make_ctx()
    ctx.scores = ScoreBook({"InferenceTask": 1.0}, path=path)
    reference = CachedReference(DeterministicReference())
    async with served(ctx) as url:
        path.mkdir()
        (path / "in-the-way").write_text("")  # a file cannot replace a directory: a real OSError
        ctx.scores.update(1, "hk1", "InferenceTask", 1.0)
        await ctx.scores.save_off_loop()
        await recheck_cycle(None, reference, ctx.scores, quiet=0.0)  # still refused
        await assert_failing(url, "scores", f"scores cannot be saved to {path} (IsADirectoryError")
        (path / "in-the-way").unlink()
        path.rmdir()  # the disk takes writes again, and no job comes
        await recheck_cycle(None, reference, ctx.scores, quiet=60.0)  # a save failed a moment ago: not yet
        await assert_failing(url, "scores", f"scores cannot be saved to {path} (IsADirectoryError")
        await recheck_cycle(None, reference, ctx.scores, quiet=0.0)
        await assert_ready(url)
    assert json.loads(path.read_text())["miners"]["1"]["hotkey"] == "hk1", "the score kept in memory is saved"


BIG = answered("big", chunks={"1": ['{"choices":[{"delta":{"content":"x"}}]}'] * 2000, "2": []})


async def refused_by_a_full_disk(url: str, ctx: ValidatorContext) -> sqlite3.Connection:
    """``ctx``'s inbox file may not grow past its size now (a full disk), and a ``/scoring`` it refused (a 503);
    the connection whose ``PRAGMA max_page_count = 1073741823`` frees the disk."""
    assert ctx.inbox is not None
    db = ctx.inbox._durable
    db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0]}")
    assert (await post(url, "/scoring", json.dumps(BIG).encode()))[0] == 503
    return db


async def test_a_scoring_inbox_that_refuses_writes_fails_and_the_next_write_recovers(tmp_path: Path) -> None:
    async with validator(tmp_path / "scoring_inbox.db", scoring=False) as (url, ctx):
        db = await refused_by_a_full_disk(url, ctx)
        await assert_failing(url, "scoring_inbox", "/scoring answers 503 store_unavailable")
        db.execute("PRAGMA max_page_count = 1073741823")
        assert (await post(url, "/scoring", json.dumps(BIG).encode()))[0] == 202
        await assert_ready(url)


async def test_a_scoring_inbox_refusal_ends_with_no_traffic_once_the_disk_takes_writes(tmp_path: Path) -> None:
    """The check knew the disk from ``/scoring``'s writes alone: once no API sent (stopped, its outbox lost), a
    disk freed long ago still read "refused the last write (...s into a run of failures)" and ``/ready`` stayed a
    503 for as long as the validator ran. The recheck writes as much as was refused, itself, when nothing has."""
    lines, handler = log_lines("INFO")
    try:
        async with validator(tmp_path / "scoring_inbox.db", scoring=False) as (url, ctx):
            reference = CachedReference(DeterministicReference(), status=ctx.reference)
            db = await refused_by_a_full_disk(url, ctx)
            assert ctx.inbox is not None
            await recheck_cycle(ctx.inbox, reference, quiet=0.0)  # still full: a write that size is refused
            await assert_failing(url, "scoring_inbox", "/scoring answers 503 store_unavailable")
            db.execute("PRAGMA max_page_count = 1073741823")  # the operator frees the disk; no API sends
            await recheck_cycle(ctx.inbox, reference, quiet=60.0)  # tried a moment ago: not yet
            await assert_failing(url, "scoring_inbox", "/scoring answers 503 store_unavailable")
            await recheck_cycle(ctx.inbox, reference, quiet=0.0)
            ready = await assert_ready(url)
            assert ready["checks"]["scoring_inbox"]["detail"].endswith("takes writes")
            assert (await post(url, "/scoring", json.dumps(BIG).encode()))[0] == 202, "and so does /scoring"
    finally:
        logger.remove(handler)
    told = [line for line in lines if line.startswith(("WARNING scoring inbox", "INFO recovered: scoring inbox: payloads"))]
    assert len(told) == 3 and "tried again, still failing" in told[1], told  # the recheck's (test_recheck.py)
    assert told[2].startswith("INFO recovered: scoring inbox: payloads not stored, /scoring answers 503: the store answers "
                              "again after "), told
    assert told[2].endswith("(1 failure(s))"), "the recheck's refusal is no /scoring refused"


async def test_a_full_scoring_queue_is_a_warning_not_a_503(tmp_path: Path) -> None:
    async with validator(tmp_path / "scoring_inbox.db", scoring=False, queue_size=1) as (url, ctx):
        assert (await post(url, "/scoring", json.dumps(answered("one")).encode()))[0] == 202
        ready = await assert_ready(url, "scoring_queue")
        assert ready["warnings"][0].startswith("scoring_queue: the organic scoring lane is full (1/1 payloads")
        ctx.scoring_queue.get_nowait()  # a worker takes it
        await assert_ready(url)


def organic(task: str, prompt: str, answer: str) -> ScoringJob:
    """A caller's ``prompt`` and one miner's ``answer`` to it, as the API forwards them."""
    return ScoringJob(source="organic", task=task, bodies={1: {"messages": [{"role": "user", "content": prompt}]}},
                      hotkeys={1: MINERS[1].ss58_address}, chunks={1: [dumps(chunk_object(completion_id="rid", model="m", delta={"content": answer}))]},
                      timings={1: [0.1]}, deadline_s=10.0)


async def two_jobs_skipped(ctx: ValidatorContext, llm: str, session: aiohttp.ClientSession,
                           tmp_path: Path) -> tuple[CachedReference, Scorer]:
    """``ctx``'s reference model served at ``llm`` (down), and a scorer that skipped two jobs for it."""
    reference = CachedReference(OpenAIReference(llm + "/v1", session=session, model="m"),
                                status=ReferenceStatus(kind="llm"))
    ctx.reference = reference.status
    scorer = Scorer(default_registry(), RewardContext(reference, builtin_corpus()),
                    ScoreBook(default_registry().probabilities, path=tmp_path / "scores.json"),
                    reference=reference.status)
    for prompt in ("Say hello.", "Say goodbye."):
        assert await scorer.score(organic("InferenceTask", prompt, "hi")) == {}, "skipped"
    return reference, scorer


async def test_a_failing_reference_model_fails_until_a_call_answers(tmp_path: Path) -> None:
    """The log's run of skipped jobs and ``/ready``'s are one record: a job scored without the reference model
    (arithmetic) while it fails neither clears ``/ready`` nor logs "it answers again" (the scorer kept a run of
    its own, which such a job ended in the log while ``/ready`` still failed); a call that answers ends both."""
    state = {"down": True}
    app = flaky_reference_model(state)
    ctx = make_ctx()
    lines, handler = log_lines("INFO")
    try:
        async with serve_app(app) as llm, aiohttp.ClientSession() as session, served(ctx) as url:
            reference, scorer = await two_jobs_skipped(ctx, llm, session, tmp_path)
            assert await scorer.score(organic("ArithmeticTask", "What is 2 + 3?", "5")) == {1: 1.0}
            await assert_failing(url, "reference", "the reference model (llm) failed its last 2 call(s)")
            assert not [line for line in lines if "it answers again" in line], "it does not: /ready is right"
            state["down"] = False
            assert await scorer.score(organic("InferenceTask", "Say hi.", "the answer"))
            ready = await assert_ready(url)
    finally:
        logger.remove(handler)
    assert ready["checks"]["reference"]["detail"] == "llm: 3 call(s), the last one answered"
    told = [line for line in lines if "reference model failing" in line]
    assert len(told) == 2 and told[0].startswith("WARNING reference model failing, jobs skipped: organic "
                                                 "InferenceTask job skipped: reference LLM answered HTTP 503"), told
    assert told[1].startswith("INFO recovered: reference model failing, jobs skipped: it answers again after") and \
        told[1].endswith("(2 failure(s))"), told


async def test_a_reference_model_back_with_no_job_to_ask_it_is_asked_by_the_recheck(tmp_path: Path) -> None:
    """Only a job's call ended the run: with no job asking (organic traffic stopped, synthetic jobs off, no
    miner answering), ``/ready`` said "failed its last 2 call(s), for ...s" for hours after the model was back.
    The recheck asks it a short question when no job has for a while; a question it still fails is no job
    skipped (``failures`` stays) and leaves the run on."""
    state = {"down": True}
    ctx = make_ctx()
    lines, handler = log_lines("INFO")
    try:
        async with serve_app(flaky_reference_model(state)) as llm, aiohttp.ClientSession() as session, \
                served(ctx) as url:
            reference, _ = await two_jobs_skipped(ctx, llm, session, tmp_path)
            await recheck_cycle(None, reference, quiet=0.0)  # still down
            await assert_failing(url, "reference", "the reference model (llm) failed its last 2 call(s)")
            state["down"] = False  # back, and no job comes
            await recheck_cycle(None, reference, quiet=60.0)  # a job failed a moment ago: not yet
            await assert_failing(url, "reference", "the reference model (llm) failed its last 2 call(s)")
            await recheck_cycle(None, reference, quiet=0.0)
            ready = await assert_ready(url)
            _, health = await get(url, "/health")
    finally:
        logger.remove(handler)
    assert ready["checks"]["reference"]["detail"] == "llm: 3 call(s), the last one answered"
    assert health["reference"]["failures"] == 2, "the recheck's failed question skipped no job"
    told = [line for line in lines if "reference model failing" in line]
    assert len(told) == 3 and "tried again, still failing" in told[1], told  # the recheck's (test_recheck.py)
    assert told[2].startswith("INFO recovered: reference model failing, jobs skipped: it answers again after") and \
        told[2].endswith("(2 failure(s))"), told


async def test_weights_not_set_for_three_intervals_fail_and_a_set_recovers(tmp_path: Path) -> None:
    ctx = scored(make_ctx())
    ctx.readiness.sink, ctx.readiness.weights_interval = "ledger", 10
    ctx.readiness.started_at = time.monotonic() - 100
    sink = LedgerWeightSink(tmp_path / "weights.json", None, validator_hotkey=VALIDATOR.ss58_address)
    async with served(ctx) as url:
        await assert_failing(url, "weights", "no weights set since start, 100s (limit 30s")
        await weights_cycle(ctx.scores, sink, ctx.metagraph.snapshot, power=1.0)
        await assert_ready(url)
        ctx.scores.weights_not_set = "no positive score yet"  # a cycle that set nothing: said, not a 503
        ready = await assert_ready(url, "last_weights_cycle")
        assert ready["warnings"] == ["last_weights_cycle: the last weights cycle set nothing: no positive score yet"]
        ctx.scores.weights_set_clock = time.monotonic() - 45
        await assert_failing(url, "weights", "no weights set for 45s (limit 30s, 3 WEIGHTS_INTERVALs or chain "
                                             "rate limits); the last cycle: no positive score yet")


async def test_an_ntp_step_of_the_wall_clock_moves_no_age_that_ready_tells(tmp_path: Path, wall_step) -> None:
    """The metagraph's, the availability poll's and the weights' ages, and how long the reference model has
    failed, were wall-clock differences: NTP stepping the host's clock 5 minutes forward failed the metagraph
    and availability checks at once (a 503 taking a working validator out of rotation until its next
    refresh), one stepped back told negative ages, and a failing run read an hour long after a step of one."""
    ctx = scored(make_ctx())
    ctx.readiness.sink, ctx.readiness.weights_interval = "ledger", 60
    sink = LedgerWeightSink(tmp_path / "weights.json", None, validator_hotkey=VALIDATOR.ss58_address)
    async with served(ctx) as url, make_session() as session:
        await poll_all(MinerClient(session, Signer(VALIDATOR)), ctx.metagraph, ctx.book, timeout=1, concurrency=2)
        await weights_cycle(ctx.scores, sink, ctx.metagraph.snapshot, power=1.0)
        await assert_ready(url, "miners")
        wall_step(+300)
        ready = await assert_ready(url, "miners")
        wall_step(-900)
        ready = await assert_ready(url, "miners")
        details = {name: ready["checks"][name]["detail"] for name in ("metagraph", "availability", "weights")}
        # the seconds the test itself took (a second on a busy host), never the steps' 300 or -900
        ages = [re.search(pattern, details[name]) for name, pattern in (
            ("metagraph", r", (-?\d+)s old$"), ("availability", r", (-?\d+)s old$"), ("weights", r"^last set (-?\d+)s ago"))]
        assert all(age is not None and 0 <= int(age[1]) <= 5 for age in ages), details
        ctx.reference.outage.failed("reference LLM answered HTTP 503")
        wall_step(+3600)
        ready = await assert_failing(url, "reference", "failed its last 1 call(s), for ")
        failing_for = re.search(r"for (-?\d+)s:", ready["checks"]["reference"]["detail"])
        assert failing_for is not None and 0 <= int(failing_for[1]) <= 5, ready["checks"]["reference"]


def scored(ctx: ValidatorContext) -> ValidatorContext:
    """``ctx`` with a positive score for each of its miners, and an availability poll just ended."""
    for uid, key in MINERS.items():
        ctx.scores.update(uid, key.ss58_address, "InferenceTask", 1.0 / uid)
    ctx.book.entries = {1: {"task_availabilities": {"InferenceTask": True}, "llm_model_availabilities": {}}}
    ctx.book.polled_at = time.monotonic()
    return ctx


def chain_sink(storage: dict) -> tuple[ChainWeightSink, FakeSubstrate]:
    cold = Keypair.create_from_uri("//Readiness")
    wallet = DevWallet(cold, cold, VALIDATOR)
    fake = FakeSubstrate(storage=storage)
    return ChainWeightSink(lambda: bt.Client("local", substrate=fake), wallet, 1), fake


def on_chain(ctx: ValidatorContext, sink: ChainWeightSink, weights_interval: float = 600) -> None:
    ctx.readiness.sink, ctx.readiness.chain = "chain", sink.limits
    ctx.readiness.hotkey, ctx.readiness.weights_interval = VALIDATOR.ss58_address, weights_interval


async def test_a_stake_below_the_chains_minimum_and_a_short_weights_interval_are_said_at_start_and_in_ready() -> None:
    """Both were found only by reading the chain's refusals: every set refused (``NotEnoughStakeToSetWeights``,
    its fee charged) or most cycles ``rate limited``. Read at start, said in a WARNING each and by /ready."""
    storage = {**chain_storage(VALIDATOR.ss58_address, last_update=850), (SM, "StakeThreshold", ()): 2000 * 10**9}
    sink, fake = chain_sink(storage)  # a 100-block rate limit (1,200 s); the validator's stake is 1,000
    ctx = make_ctx()
    on_chain(ctx, sink)
    lines, handler = log_lines()
    try:
        await start_checks(ctx, sink.read_limits)
    finally:
        logger.remove(handler)
    assert lines == [
        "WARNING weights_rate_limit: WEIGHTS_INTERVAL (600 s) is shorter than the chain's weights rate limit on "
        "netuid 1 (100 blocks x 12 s = 1200 s): the cycles in between set nothing (rate limited) or wait for it; "
        "set WEIGHTS_INTERVAL to at least 1200",
        "WARNING stake: this validator's stake weight 1,000.00 is below the chain's minimum to set weights (2,000.00, "
        f"StakeThreshold): every set is refused (NotEnoughStakeToSetWeights); stake to hotkey {VALIDATOR.ss58_address} "
        "(btcli stake add)"]
    try:
        async with served(ctx) as url:
            ready = await assert_failing(url, "stake", "is below the chain's minimum to set weights (2,000.00")
            assert [w.split(":")[0] for w in ready["warnings"]] == ["weights_rate_limit"]
            assert ready["checks"]["weights"]["ok"], "not expected while the chain would refuse them"
            fake.storage[(SM, "StakeThreshold", ())] = 500 * 10**9  # the subnet lowers it (or stake is added)
            await sink.rules()  # what each weights cycle reads
            await assert_ready(url, "weights_rate_limit")
            ctx.readiness.weights_interval = 1200
            ready = await assert_ready(url)
            assert ready["checks"]["stake"]["detail"] == "stake weight 1,000.00, the chain's minimum 500.00"
            ctx.metagraph.snapshot = replace(ctx.metagraph.snapshot, owner_hotkey=VALIDATOR.ss58_address)
            fake.storage[(SM, "StakeThreshold", ())] = 5000 * 10**9
            await sink.rules()
            ready = await assert_ready(url)  # the subnet owner's hotkey is exempt
            assert "exempt" in ready["checks"]["stake"]["detail"]
    finally:
        await sink.close()


async def test_a_block_time_the_chain_did_not_say_is_called_assumed_in_ready_and_said_once_in_the_log() -> None:
    """The chain sink falls back to 12 s a block when the chain does not answer for its block time: /ready's
    ``weights_rate_limit`` quoted that figure as if the chain had said it, and nothing in the log said otherwise.
    /ready says it is assumed and why, the log says so once (not at every weights cycle), and once the chain
    answers, /ready quotes the chain's own."""
    sink, fake = chain_sink(chain_storage(VALIDATOR.ss58_address, last_update=850))
    said_block_time = fake.block_time

    async def no_answer() -> float:
        raise ConnectionError("the node closed the connection")

    fake.block_time = no_answer
    ctx = make_ctx()
    on_chain(ctx, sink, weights_interval=1200)
    lines, handler = log_lines("INFO")
    try:
        await start_checks(ctx, sink.read_limits)
        await sink.rules()  # two weights cycles meet the same silence
        await sink.rules()
        async with served(ctx) as url:
            ready = await assert_ready(url)
            assert ready["checks"]["weights_rate_limit"]["detail"] == (
                "WEIGHTS_INTERVAL (1200 s) is no shorter than the chain's weights rate limit on netuid 1 (100 blocks x "
                "12 s = 1200 s, the block time assumed: the chain did not answer (ConnectionError: the node closed the "
                "connection))")
            fake.block_time, fake.block_seconds = said_block_time, 0.25  # the chain answers: a fast local chain
            await sink.rules()
            ready = await assert_ready(url)
            assert ready["checks"]["weights_rate_limit"]["detail"] == (
                "WEIGHTS_INTERVAL (1200 s) is no shorter than the chain's weights rate limit on netuid 1 (100 blocks x "
                "0.25 s = 25 s)")
    finally:
        logger.remove(handler)
        await sink.close()
    told = [line for line in lines if "block time" in line]
    assert told == ["WARNING weights: the chain did not say its block time (ConnectionError: the node closed the "
                    "connection): 12 s a block assumed for the rate limit's wait and /ready",
                    "INFO weights: the chain says its block time again: 0.25 s"], lines


async def test_no_permit_fails_when_weights_go_on_chain_and_the_weights_check_waits_for_it() -> None:
    sink, _ = chain_sink(chain_storage(VALIDATOR.ss58_address, last_update=850))
    ctx = scored(make_ctx())
    on_chain(ctx, sink, weights_interval=10)
    ctx.readiness.started_at = time.monotonic() - 100
    permitted = ctx.metagraph.snapshot
    neurons = tuple(replace(n, validator_permit=False) for n in permitted.neurons)
    try:
        async with served(ctx) as url:
            ctx.metagraph.snapshot = replace(permitted, neurons=neurons)
            ready = await assert_failing(url, "permit", "this validator (uid 0) holds no validator permit")
            assert ready["checks"]["weights"]["ok"], "the permit check says it; the weights one does not too"
            ctx.metagraph.snapshot = permitted
            await assert_failing(url, "weights", "no weights set since start")
            assert await weights_cycle(ctx.scores, sink, permitted, power=1.0, hotkey=VALIDATOR.ss58_address)
            ready = await assert_ready(url, "weights_rate_limit")  # the cycle read the chain's: 1,200 s
            assert ready["checks"]["weights"]["detail"].endswith("(limit 3600s)")
    finally:
        await sink.close()


async def test_a_chain_that_does_not_answer_delays_the_start_by_the_timeout_alone() -> None:
    sink, _ = chain_sink({})
    ctx = make_ctx()
    on_chain(ctx, sink)

    async def hangs() -> None:
        await asyncio.sleep(3600)

    lines, handler = log_lines()
    started = time.monotonic()
    try:
        await start_checks(ctx, hangs, timeout=0.2)
    finally:
        logger.remove(handler)
    assert time.monotonic() - started < 2
    assert lines == ["WARNING chain: the weights rate limit and the minimum stake to set weights could not be read "
                     "(no answer within 0.2 s): read again at each weights cycle, /ready says them then"]
    checks = readiness(ctx).checks
    assert checks["stake"].ok and "not read yet (no answer within 0.2 s)" in checks["stake"].detail
    assert checks["weights_rate_limit"].ok


async def test_the_chains_metagraph_reads_each_stake_in_its_own_unit_and_the_owner() -> None:
    """A subnet's stakes are alpha ``Balance``s whose ``.tao`` raises: every chain metagraph failed to load. The
    stake is ``total_stake``, the stake weight the chain's ``check_weights_min_stake`` compares with
    ``StakeThreshold`` (1,000 alpha + 20,000 TAO x a ``TaoWeight`` of 0.2 here), not ``alpha_stake``."""
    graph = {"block": 1000, "tempo": 360, "last_step": 900, "blocks_since_last_step": 100,
             "owner_hotkey": "5Owner", "owner_coldkey": "5Owner", "network_registered_at": 1,
             "hotkeys": ["5A", "5B"], "coldkeys": ["5C", "5D"], "validator_permit": [True, False],
             "incentives": [0, 65535], "total_stake": [5 * 10**12, 0], "alpha_stake": [10**12, 0],
             "tao_stake": [2 * 10**13, 0],
             "axons": [{"ip": 0, "port": 0}, {"ip": 3405803785, "port": 8091, "ip_type": 4}]}
    fake = FakeSubstrate(runtime={("SubnetInfoRuntimeApi", "get_metagraph", (1,)): graph})
    source = ChainMetagraphSource("local", 1)
    source._client = bt.Client("local", substrate=fake)
    await source._client.connect()
    try:
        snap: MetagraphSnapshot = await source.fetch()
    finally:
        await source.close()
    assert [n.stake for n in snap.neurons] == [5000.0, 0.0] and snap.owner_hotkey == "5Owner"


async def test_sn1_validator_answers_ready_and_health_ok(tmp_path: Path) -> None:
    port = free_port()
    env_file, hotkey = validator_env(tmp_path, port)
    url = f"http://127.0.0.1:{port}"
    async with validator_process(env_file, url, tmp_path / "validator.log"):
        status, ready = await get(url, "/ready")
        _, health = await get(url, "/health")
    assert status == 200 and ready["reasons"] == [], ready
    assert health["status"] == "ok" and health["failing_checks"] == []
    assert ready["checks"]["permit"]["detail"] == "uid 0 holds a validator permit"
    assert ready["checks"]["stake"]["detail"] == "not checked: weights are not set on chain"
