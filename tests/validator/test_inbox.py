"""The validator's durable inbox: what ``/scoring`` acknowledged outlives a restart, a crash and a full disk.

Real SQLite files in ``tmp_path``, the real validator app on 127.0.0.1, and for the crash a real
``sn1 validator`` process killed with SIGKILL. The API deletes a payload once the validator answers 202:
from then on the validator's copy is the only one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from loguru import logger

from api.scoring_outbox import OutboxForwarder
from neurons.miner.backends.deterministic import DeterministicBackend
from neurons.validator.app import ValidatorContext, create_validator_app
from neurons.validator.inbox import ScoringInbox
from neurons.validator.intake import SEEN_SIZE, RecentPayloads
from neurons.validator.reference import DeterministicReference
from neurons.validator.scoring import Scorer, ScoringJob, scoring_worker
from neurons.validator.scoring_queue import ScoringQueue
from neurons.validator.tasks import default_registry
from neurons.validator.tasks.base import RewardContext
from shared.corpus import builtin_corpus
from shared.metagraph import MetagraphSnapshot, Neuron, write_metagraph_file
from shared.miner_client import MinerClient, make_session
from shared.signing import Signer
from shared.store.outbox import SQLiteOutbox
from shared.wallet import ensure_wallet
from tests.helpers import serve_app, wait_until
from tests.ports import free_port
from tests.validator.test_app import BODY, MINERS, VALIDATOR, is_openai_error, make_ctx, payload, post

ROOT = Path(__file__).resolve().parents[2]
ALPHA = 0.1  # ScoreBook's default: after n perfect organic answers a uid's organic average is 1 - 0.9^n
HONEST = [json.dumps({"choices": [{"index": 0, "delta": {"content": DeterministicBackend().answer_text(BODY)}}]})]


def answered(rid: str, **over) -> dict:
    """A payload whose two miners both gave the honest answer (a reward of 1 each, once scored)."""
    return payload(**{"request_id": rid, "kind": "chat", "chunks": {"1": HONEST, "2": HONEST},
                      "timings": {"1": [0.1], "2": [0.1]}, "errors": {}, **over})


def after(n: int) -> float:
    """The organic average of a uid after ``n`` perfect answers: it tells n exactly (one more or less shows)."""
    return round(1 - (1 - ALPHA) ** n, 6)


def rows(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT COUNT(*) FROM inbox").fetchone()[0]
    finally:
        db.close()


@contextlib.asynccontextmanager
async def validator(path: Path, *, scoring: bool = True, queue_size: int = 100,
                    max_age: float = 3600.0) -> AsyncIterator[tuple[str, ValidatorContext]]:
    """A validator as ``sn1 validator`` builds one around its inbox at ``path`` (restored from it), served on
    127.0.0.1, with a scoring worker (or none: what it accepts stays queued until it stops)."""
    ctx = make_ctx(queue_size)
    inbox = ScoringInbox(path)
    ctx.inbox = inbox
    ctx.scoring_queue = ScoringQueue(queue_size, max_age=max_age, settle=inbox.settle)
    inbox.restore(ctx.scoring_queue)
    ctx.seen = RecentPayloads(SEEN_SIZE, restored=inbox.seen(SEEN_SIZE))
    scorer = Scorer(default_registry(), RewardContext(DeterministicReference(), builtin_corpus()), ctx.scores,
                    settle=inbox.settle)
    workers = [lambda: scoring_worker(ctx.scoring_queue, scorer, ctx.metagraph)] if scoring else []
    async with serve_app(create_validator_app(ctx, background=workers)) as url:
        yield url, ctx


def organic(ctx: ValidatorContext, uid: int) -> float:
    entry = ctx.scores.miners.get(uid)
    return round(entry.organic.get("InferenceTask", 0.0), 6) if entry else 0.0


async def test_payloads_accepted_before_a_restart_are_scored_after_it_and_once(tmp_path: Path) -> None:
    """Acknowledged and still queued when the validator stopped: they were lost, and the API had already
    forgotten them. A payload sent again after the restart (its 202 lost just before) was scored twice."""
    path = tmp_path / "scoring_inbox.db"
    batch, new = [answered(f"rid-{i}") for i in range(5)], answered("rid-new")
    async with validator(path, scoring=False) as (url, ctx):
        status, body = await post(url, "/scoring", json.dumps(batch).encode())
        assert status == 202 and body["queued"] == 5, body
        assert ctx.scoring_queue.qsize() == 5
    assert rows(path) == 5, "on disk before the 202"

    async with validator(path) as (url, ctx):
        await wait_until(lambda: organic(ctx, 1) == after(5), 10)
        resent = json.dumps([*batch[2:], new]).encode()  # by two API hosts at once, say
        answers = await asyncio.gather(post(url, "/scoring", resent), post(url, "/scoring", resent))
        assert [status for status, _ in answers] == [202, 202], answers
        assert sorted(body["queued"] for _, body in answers) == [0, 1], "only the new one is queued, once"
        await wait_until(lambda: organic(ctx, 1) == after(6), 10)
        await asyncio.sleep(0.2)
        assert organic(ctx, 1) == organic(ctx, 2) == after(6), "each payload scored once, across the restart"
    assert rows(path) == 0, "a scored job leaves the file"

    async with validator(path, scoring=False) as (url, ctx):
        assert ctx.scoring_queue.qsize() == 0, "nothing scored comes back"
        status, body = await post(url, "/scoring", json.dumps([batch[0], new]).encode())
        assert status == 202 and body["queued"] == 0, "the seen-list outlived two restarts"


async def test_a_payload_too_old_at_reload_is_dropped_with_one_line(tmp_path: Path) -> None:
    """Reloaded after a long stop, a payload past ORGANIC_MAX_AGE_SECONDS would be scored as the miners'
    quality now: it is dropped and counted, in one line for all of them, and leaves the file."""
    path = tmp_path / "scoring_inbox.db"
    old = [answered(f"old-{i}", created_at=time.time() - 500) for i in range(4)]
    async with validator(path, scoring=False) as (url, _):
        status, body = await post(url, "/scoring", json.dumps([*old, answered("fresh")]).encode())
        assert status == 202 and body["queued"] == 5, body
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="INFO",
                      filter=lambda r: "ORGANIC_MAX_AGE_SECONDS" in r["message"])
    try:
        async with validator(path, scoring=False, max_age=300.0) as (url, ctx):
            assert ctx.scoring_queue.qsize() == 1 and ctx.scoring_queue.stale_dropped == 4
            async with aiohttp.ClientSession() as s, s.get(url + "/health") as r:
                assert (await r.json())["organic_stale_dropped"] == 4
            job = ctx.scoring_queue.get_nowait()
            assert job.created_at > time.time() - 60 and job.hotkeys == {u: k.ss58_address for u, k in MINERS.items()}
            assert rows(path) == 1, "the stale ones left the file; the fresh one waits for a worker"
            job.created_at = time.time() - 400  # as if it had waited in the queue past the age: dropped there
            ctx.scoring_queue.put_nowait(job)
            fresh = ScoringJob(source="organic", task="InferenceTask", bodies={1: BODY}, hotkeys={1: MINERS[1].ss58_address})
            ctx.scoring_queue.put_nowait(fresh)
            assert await asyncio.wait_for(ctx.scoring_queue.get(), 1) is fresh
            assert ctx.scoring_queue.stale_dropped == 5
    finally:
        logger.remove(sink)
    # one line, the run's first (the one dropped in the queue a moment later is in the run, counted)
    assert len(lines) == 1 and ": 4 stored in the scoring inbox, older than 300 s (4 since start)" in lines[0], lines
    assert rows(path) == 0, "one dropped in the queue leaves the file too"


async def test_a_queue_smaller_than_what_was_stored_takes_the_rest_as_room_frees(tmp_path: Path) -> None:
    """Restarted with a smaller SCORING_QUEUE_SIZE (or a lane that held one batch past its bytes): the jobs
    that do not fit wait on disk, loaded as scoring frees room; new payloads wait behind them (503)."""
    path = tmp_path / "scoring_inbox.db"
    async with validator(path, scoring=False) as (url, _):
        status, body = await post(url, "/scoring", json.dumps([answered(f"rid-{i}") for i in range(5)]).encode())
        assert status == 202 and body["queued"] == 5
    async with validator(path, scoring=False, queue_size=2) as (url, ctx):
        assert ctx.scoring_queue.qsize() == 2 and ctx.inbox is not None and ctx.inbox.waiting == 3
        async with aiohttp.ClientSession() as s, s.get(url + "/health") as r:
            assert (await r.json())["scoring_inbox_waiting"] == 3
        status, body = await post(url, "/scoring", json.dumps(answered("later")).encode())
        assert status == 503 and body["error"]["code"] == "queue_full", body
        status, body = await post(url, "/scoring", json.dumps([answered("rid-0", created_at=1.0)]).encode())
        assert status == 202 and body["stale"] == 1, "what queues nothing is still taken"
    async with validator(path, queue_size=2) as (url, ctx):
        await wait_until(lambda: organic(ctx, 1) == after(5), 10)
        assert ctx.inbox is not None and ctx.inbox.waiting == 0
        assert (await post(url, "/scoring", json.dumps(answered("later")).encode()))[0] == 202
        await wait_until(lambda: organic(ctx, 1) == after(6), 10)
    assert rows(path) == 0


async def test_a_write_the_disk_refuses_is_a_503_and_the_forwarders_retry_lands(tmp_path: Path) -> None:
    """A payload acknowledged but not stored is lost on the next restart, and a 500 told the API nothing:
    a file that cannot grow (a full disk) is a 503 in OpenAI's shape, the API's outbox keeps the payload, and
    its retry lands once there is room. The seen-list did not take the refused payload for one already seen."""
    path = tmp_path / "scoring_inbox.db"
    box = SQLiteOutbox(tmp_path / "api.db")
    big = answered("big", chunks={"1": HONEST * 200, "2": HONEST}, timings={"1": [0.1] * 200, "2": [0.1]})
    try:
        async with validator(path, scoring=False) as (url, ctx), make_session() as session:
            assert ctx.inbox is not None
            db = ctx.inbox._durable  # the connection /scoring writes with: the file may not grow past its size now
            db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0]}")
            status, body = await post(url, "/scoring", json.dumps([big]).encode())
            assert status == 503 and is_openai_error(body) and body["error"]["code"] == "store_unavailable", body
            assert ctx.scoring_queue.qsize() == 0, "never queued (nor acknowledged) unless stored"

            fwd = OutboxForwarder(box, MinerClient(session, Signer(VALIDATOR)), url, VALIDATOR.ss58_address,
                                  lease_seconds=2.0, base_delay=0.05, max_delay=0.2, linger=0)
            await fwd.sink(big)
            task = asyncio.create_task(fwd.run())
            try:
                await wait_until(lambda: fwd.delivery_failures >= 2, 5)
                assert await box.depth() == 1, "the API keeps what the validator could not store"
                db.execute("PRAGMA max_page_count = 1073741823")  # room again
                for _ in range(100):
                    if await box.depth() == 0:
                        break
                    await asyncio.sleep(0.05)
                assert await box.depth() == 0
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            assert ctx.scoring_queue.qsize() == 1
    finally:
        await box.close()
    assert rows(path) == 1


# --- a real process, killed --------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def hanging_reference() -> AsyncIterator[str]:
    """A reference model that never answers: the scoring worker is busy, the rest of the queue waits."""
    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(3600)
        return web.Response()

    app = web.Application()
    app.router.add_post("/v1/chat/completions", hang)
    async with serve_app(app) as url:
        yield url + "/v1"


def validator_env(tmp_path: Path, port: int, **extra: str) -> tuple[Path, str]:
    """A validator of a two-miner metagraph file (no axons: no synthetic work), taking //Validator's
    payloads; returns its env file and its hotkey."""
    wallets = tmp_path / "wallets"
    hotkey = ensure_wallet("validator", "default", wallets).ss58_address
    neurons = [Neuron(uid=0, hotkey=hotkey, axon=None, stake=1000.0, validator_permit=True)]
    neurons += [Neuron(uid=u, hotkey=k.ss58_address, axon=None) for u, k in MINERS.items()]
    write_metagraph_file(tmp_path / "metagraph.json", MetagraphSnapshot(netuid=1, block=1, neurons=tuple(neurons)))
    env = {"WALLET_NAME": "validator", "WALLET_HOTKEY": "default", "WALLET_PATH": str(wallets),
           "METAGRAPH_FILE": str(tmp_path / "metagraph.json"), "STATE_DIR": str(tmp_path / "state"),
           "SCORING_API_HOST": "127.0.0.1", "SCORING_API_PORT": str(port), "API_HOTKEYS": VALIDATOR.ss58_address,
           "SYNTHETIC_ENABLED": "false", "NEURON_DISABLE_SET_WEIGHTS": "true", "SCORING_WORKERS": "1",
           "LOG_LEVEL": "INFO", **extra}
    path = tmp_path / "validator.env"
    path.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    return path, hotkey


def spawn_validator(env_file: Path, log: Path) -> subprocess.Popen:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "shared.cli", "validator", "--env-file", str(env_file)],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def tail(log: Path, size: int = 3000) -> str:
    """The end of the validator's log (``size=0``: all of it), for an assertion's message."""
    return log.read_text()[-size:]


@contextlib.asynccontextmanager
async def validator_process(env_file: Path, url: str, log: Path) -> AsyncIterator[subprocess.Popen]:
    """``sn1 validator`` from ``env_file`` until it answers ``/health``; always stopped (and waited for)."""
    proc = spawn_validator(env_file, log)
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(600):
                assert proc.poll() is None, tail(log)
                with contextlib.suppress(aiohttp.ClientError):
                    async with s.get(url + "/health") as r:
                        if r.status == 200:
                            break
                await asyncio.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
        await asyncio.to_thread(proc.wait, 20)


async def scores_of(url: str, log: Path) -> dict[int, float]:
    async with aiohttp.ClientSession() as s, s.get(url + "/scores") as r:
        body = await r.json(content_type=None)
    # a CI run once got an answer with no "miners" here: what answered, and the validator's log, say why
    assert r.status == 200 and "miners" in body, (r.status, r.headers.get("Server"), body, tail(log))
    miners = body["miners"]
    return {m["uid"]: m["organic"].get("InferenceTask", 0.0) for m in miners}


async def test_a_validator_killed_between_accept_and_score_loses_nothing(tmp_path: Path) -> None:
    """``sn1 validator`` takes 6 payloads (202) while its only worker waits on a reference model, and is
    SIGKILLed; started again, it scores each of the 6 once, and the same 6 sent again are not scored again."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    batch = [answered(f"rid-{i}") for i in range(6)]
    log = tmp_path / "validator.log"
    async with hanging_reference() as reference:
        env_file, hotkey = validator_env(tmp_path, port, REFERENCE_LLM_URL=reference)
        async with validator_process(env_file, url, log) as proc:
            status, body = await post(url, "/scoring", json.dumps(batch).encode(), receiver=hotkey)
            assert status == 202 and body["queued"] == 6, body
            os.kill(proc.pid, signal.SIGKILL)
    assert rows(tmp_path / "state" / "scoring_inbox.db") == 6

    env_file, hotkey = validator_env(tmp_path, port)  # the built-in reference now: scoring goes on
    async with validator_process(env_file, url, log):
        for _ in range(200):
            if (await scores_of(url, log)).get(1) == after(6):
                break
            await asyncio.sleep(0.05)
        status, body = await post(url, "/scoring", json.dumps(batch).encode(), receiver=hotkey)
        assert status == 202 and (body["accepted"], body["queued"]) == (6, 0), body
        await asyncio.sleep(0.5)
        assert await scores_of(url, log) == {1: after(6), 2: after(6)}, tail(log)
    assert rows(tmp_path / "state" / "scoring_inbox.db") == 0
    assert "6 unscored organic payload(s) put back in the scoring queue" in tail(log, 0)


def test_an_inbox_file_that_is_not_a_database_stops_the_start_in_one_line(tmp_path: Path) -> None:
    """Started on it, the validator would answer 503 to every payload (or lose them): one line naming the
    setting, before it serves anything."""
    bad = tmp_path / "inbox.db"
    bad.write_text("not a database " * 100)
    bad.chmod(0o644)
    env_file, _ = validator_env(tmp_path, free_port(), SCORING_INBOX_FILE=str(bad))
    out = subprocess.run([sys.executable, "-m", "shared.cli", "validator", "--env-file", str(env_file)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.splitlines()[-1] == (f"sn1 validator: SCORING_INBOX_FILE: {bad} cannot be used as the scoring "
                                           "inbox (file is not a database)")
    # The operator's file, named by mistake, is left as it was (it was made 0600 first, with a WARNING).
    assert bad.stat().st_mode & 0o777 == 0o644 and "readable by its owner alone" not in out.stderr, out.stderr



def test_an_inbox_sqlite_cannot_write_beside_says_what_to_fix(tmp_path: Path) -> None:
    """"unable to open database file" alone, for a STATE_DIR its user cannot write, named nothing to fix."""
    from neurons.validator.inbox import open_inbox
    from shared.settings import SettingsError

    path = tmp_path / "scoring_inbox.db"
    sqlite3.connect(path).execute("CREATE TABLE t (a)").connection.close()
    Path(f"{path}-wal").mkdir()  # SQLite cannot make its -wal there, as in a directory it may not write
    with pytest.raises(SettingsError) as refused:
        open_inbox(path)
    assert str(refused.value).endswith(f"; the file and its directory, {tmp_path}, must be writable by this "
                                       "process's user (" + pwd.getpwuid(os.geteuid()).pw_name + "): SQLite writes "
                                       "scoring_inbox.db-wal and scoring_inbox.db-shm beside the file")


def test_an_inbox_in_a_directory_its_user_cannot_enter_is_one_line(tmp_path: Path) -> None:
    """A STATE_DIR under a directory root made 0700, and a validator run as a service's user: what to fix was
    looked for with a ``stat`` of the file, which raised the same PermissionError out of the error being made (a
    traceback, not the SettingsError line). The API's STORE_URL file takes the same path (``why_not_opened``)."""
    from neurons.validator.inbox import open_inbox
    from tests.helpers import without_access

    state = tmp_path / "state"
    state.mkdir()
    said = without_access(state, lambda: open_inbox(state / "scoring_inbox.db"))
    assert said.startswith(f"SettingsError: SCORING_INBOX_FILE: {state / 'scoring_inbox.db'} cannot be used as the "
                           "scoring inbox ([Errno 13] Permission denied"), said
    assert said.endswith("SQLite writes scoring_inbox.db-wal and scoring_inbox.db-shm beside the file"), said

async def test_the_scored_line_names_the_request_id_across_a_restart(tmp_path: Path) -> None:
    """``scored organic InferenceTask: 1=1.00 2=0.00`` named no request: a caller's request id, found in the
    API's access log, could not be followed to its scores. A job kept in the inbox over a restart keeps it."""
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="INFO")
    path = tmp_path / "scoring_inbox.db"
    try:
        async with validator(path, scoring=False) as (url, _):
            status, _ = await post(url, "/scoring", json.dumps([answered("rid-kept")]).encode())
            assert status == 202
        async with validator(path) as (url, ctx):
            status, _ = await post(url, "/scoring", json.dumps([answered("rid-live"),
                                                                answered("bad id\nforged")]).encode())
            assert status == 202
            await wait_until(lambda: organic(ctx, 1) == after(3), 10)
    finally:
        logger.remove(sink)
    scored = sorted(x for x in lines if x.startswith("scored organic"))
    assert scored == ["scored organic InferenceTask rid=-: 1=1.00 2=1.00",
                      "scored organic InferenceTask rid=rid-kept: 1=1.00 2=1.00",
                      "scored organic InferenceTask rid=rid-live: 1=1.00 2=1.00"], scored


def honest(seed: int) -> list[str]:
    """The chunks of the honest answer to ``BODY`` asked with ``seed``."""
    return [json.dumps({"choices": [{"index": 0, "delta": {
        "content": DeterministicBackend().answer_text({**BODY, "seed": seed})}}]})]


async def test_a_mixture_stage_is_scored_against_each_miners_own_seed_across_a_restart(tmp_path: Path) -> None:
    """A mixture's first stage sends each miner a seed of its own (``seeds``), for drafts that differ: scored
    against the body's one seed, every honest draft would miss its reference. Each is judged against its own seed's,
    queued in the inbox and after a restart too; two honest miners that happen to answer alike under different seeds
    are not zeroed as copies (the copy rule is for synthetic jobs, which sample; a caller's temperature 0 does not)."""
    path = tmp_path / "scoring_inbox.db"
    own = answered("rid-seeds", kind="mixture_stage1", seeds={"1": 11, "2": 22},
                   chunks={"1": honest(11), "2": honest(22)})
    alike = answered("rid-alike", kind="mixture_stage1", seeds={"1": 11, "2": 22},
                     chunks={"1": honest(11), "2": honest(11)})
    async with validator(path, scoring=False) as (url, ctx):
        status, body = await post(url, "/scoring", json.dumps([own]).encode())
        assert status == 202 and body["queued"] == 1, body
    async with validator(path) as (url, ctx):
        await wait_until(lambda: organic(ctx, 2) > 0, 10)
        assert organic(ctx, 1) == organic(ctx, 2) == after(1), "each honest draft matches its own seed's reference"
        status, body = await post(url, "/scoring", json.dumps([alike]).encode())
        assert status == 202 and body["queued"] == 1, body
        await wait_until(lambda: organic(ctx, 1) > after(1), 10)
        assert organic(ctx, 1) == after(2), "uid 1's draft is its own seed's, and no copy"
