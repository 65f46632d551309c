"""Moving averages, resets, persistence (SIGKILL included), weight constraints, u16, the sinks."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp
import bittensor as bt
import numpy as np
import pytest
from bittensor.sp_core import Keypair
from loguru import logger

from neurons.validator.loops import first_weights_delay, weights_cycle
from neurons.validator.scores import ScoreBook
from neurons.validator.weights import (
    U16_MAX,
    ChainWeightSink,
    DisabledSink,
    LedgerWeightSink,
    WeightRules,
    WeightsNotSet,
    compute_weights,
    from_u16,
    to_u16,
    u16_top_share,
)
from shared.metagraph import FileMetagraphSource, MetagraphSnapshot, write_metagraph_file
from tests.helpers import log_lines, snapshot

PROBS = {"A": 0.75, "B": 0.25}


def _graph(miners: int, *, hotkeys: dict[int, str] | None = None) -> MetagraphSnapshot:
    """uid 0 (the validator) and miners 1..n holding ``hk<uid>`` (or ``hotkeys[uid]``), all serving."""
    return snapshot("val", {u: ((hotkeys or {}).get(u, f"hk{u}"), f"127.0.0.1:{u}") for u in range(1, miners + 1)})


def test_ema_and_combined_score() -> None:
    book = ScoreBook(PROBS, alpha=0.5)
    assert book.update(1, "hk1", "A", 1.0) == 0.5
    assert book.update(1, "hk1", "A", 1.0) == 0.75
    assert book.update(1, "hk1", "A", 0.0) == 0.375
    book.update(1, "hk1", "B", 2.0)  # clamped to 1
    assert book.combined(1) == pytest.approx(0.75 * 0.375 + 0.25 * 0.5)
    assert book.combined(99) == 0.0


def test_only_a_positive_score_is_held() -> None:
    """What a down or dark miner still has to lose: one scored 0 (every dead uid of a large subnet, once
    sampled) is not sampled or carried as failed in every job again."""
    book = ScoreBook(PROBS, alpha=0.5)
    book.update(1, "hk1", "A", 1.0)
    book.update(2, "hk2", "A", 0.0)
    book.update(3, "hk3", "C", 1.0)  # a task with no probability counts nothing
    assert book.holding() == {1}


def test_organic_answers_move_a_score_by_their_share_at_most(tmp_path: Path) -> None:
    """A miner answering its owner's requests well (any key may send them) and the validator's badly took the
    top weight: organic and synthetic rewards shared one average, and 20,000 organic answers a minute
    outweighed a synthetic job every few minutes. They are two averages now; organic holds ``organic_share``."""
    book = ScoreBook(PROBS, alpha=0.1, path=tmp_path / "scores.json", organic_share=0.25)
    for _ in range(2000):
        book.update(1, "selfdeal", "A", 1.0, organic=True)  # its own flood, answered honestly
        book.update(2, "honest", "A", 0.0, organic=True)  # a rival's key sinking an honest miner
    for _ in range(50):
        book.update(1, "selfdeal", "A", 0.0)  # the validator's jobs, sandbagged
        book.update(2, "honest", "A", 1.0)
    assert book.task_score(book.miners[1], "A") == pytest.approx(0.25, abs=1e-3)
    assert book.task_score(book.miners[2], "A") == pytest.approx(0.75, abs=1e-2)
    assert book.combined(2) > 2.5 * book.combined(1)
    fresh = ScoreBook(PROBS, alpha=0.1, organic_share=0.25)
    fresh.update(3, "new", "A", 1.0, organic=True)
    assert fresh.task_score(fresh.miners[3], "A") == pytest.approx(0.025), "no synthetic job yet: the share, grown"
    for _ in range(200):
        fresh.update(3, "new", "A", 1.0, organic=True)
    assert fresh.task_score(fresh.miners[3], "A") == pytest.approx(0.25, abs=1e-6), "...to the whole share at most"
    organic_only = ScoreBook(PROBS, alpha=0.5, organic_share=1.0)  # SYNTHETIC_ENABLED=false
    organic_only.update(4, "hk4", "A", 1.0, organic=True)
    assert organic_only.task_score(organic_only.miners[4], "A") == 0.5
    book.save()
    again = ScoreBook(PROBS, alpha=0.1, path=tmp_path / "scores.json", organic_share=0.25)
    assert again.load() and again.combined(1) == pytest.approx(book.combined(1))
    assert again.miners[1].organic_counts == {"A": 2000} and again.report()["miners"][0]["organic"]["A"] > 0.99


def test_a_miners_first_perfect_organic_answers_do_not_lower_its_score() -> None:
    """The organic average starts at 0: one perfect answer read 0.1 and cut a miner's score from 1.0 to 0.775,
    so four requests through a session pinned to a rival (any key can) were a sink. Its weight grows with its
    answers instead; poor answers still lower the score, by as much as they have earned weight."""
    book = ScoreBook({"A": 1.0}, alpha=0.1, organic_share=0.25)
    for uid in (1, 2):
        for _ in range(300):
            book.update(uid, f"hk{uid}", "A", 1.0)
    assert book.combined(1) == pytest.approx(1.0, abs=1e-9)
    for n in range(1, 31):
        book.update(1, "hk1", "A", 1.0, organic=True)
        assert book.combined(1) == pytest.approx(1.0, abs=1e-9), n
    for _ in range(4):
        book.update(2, "hk2", "A", 0.0, organic=True)
    assert book.combined(2) == pytest.approx(1 - 0.25 * (1 - 0.9 ** 4))  # four bad answers: their earned share


def test_hotkey_change_resets_the_score() -> None:
    book = ScoreBook(PROBS, alpha=0.5)
    book.update(1, "old", "A", 1.0)
    book.update(2, "hk2", "A", 1.0)
    book.update(1, "new", "A", 0.0)
    assert book.miners[1].hotkey == "new" and book.combined(1) == 0.0
    # a metagraph sync drops a uid whose hotkey changed or that left
    book.weights = {2: 1.0}
    snap = snapshot("v", {2: ("other", "127.0.0.1:1")})
    assert sorted(book.sync(snap)) == [1, 2]
    assert book.miners == {} and book.weights == {}


def test_persistence_across_restart(tmp_path: Path) -> None:
    path = tmp_path / "scores.json"
    book = ScoreBook(PROBS, alpha=0.2, path=path)
    book.update(3, "hk3", "A", 1.0)
    book.weights = {3: 1.0}
    book.last_weights_set_at = 123.0
    book.save()
    again = ScoreBook(PROBS, alpha=0.2, path=path)
    assert again.load()
    assert again.combined(3) == pytest.approx(book.combined(3))
    assert again.weights == {3: 1.0} and again.last_weights_set_at == 123.0
    path.write_text("{corrupt")
    assert not ScoreBook(PROBS, path=path).load()


WRITER = """
import sys
from neurons.validator.scores import ScoreBook
book = ScoreBook({"A": 1.0}, alpha=0.1, path=sys.argv[1])
i = 0
print("ready", flush=True)
while True:
    i += 1
    book.update(i % 50, f"hk{i % 50}", "A", 1.0)
    book.save()
"""


def test_sigkill_mid_write_leaves_a_readable_file(tmp_path: Path) -> None:
    path = tmp_path / "scores.json"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE,
                            cwd=Path(__file__).resolve().parents[2])
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        time.sleep(0.5)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=10)
    restored = ScoreBook({"A": 1.0}, path=path)
    assert restored.load(), "the file must be whole after SIGKILL"
    assert len(restored.miners) > 0
    assert not [p for p in tmp_path.iterdir() if p.name != "scores.json" and not p.name.startswith(".scores")]


KILLED_MID_SAVE = """
import os, signal, sys
from neurons.validator.scores import ScoreBook
book = ScoreBook({"A": 1.0}, alpha=1.0, path=sys.argv[1])
book.load()  # what the validator does at start
print(sorted(book.miners), flush=True)
book.update(int(sys.argv[2]), "hk", "A", 1.0)
os.replace = lambda *_: os.kill(os.getpid(), signal.SIGKILL)  # killed between the temp file's write and its rename
book.save()
"""


def kill_mid_save(path: Path, uid: int) -> subprocess.CompletedProcess[bytes]:
    """A process that starts as the validator does (``ScoreBook.load``) and is killed in its next save."""
    return subprocess.run([sys.executable, "-c", KILLED_MID_SAVE, str(path), str(uid)],
                          cwd=Path(__file__).resolve().parents[2], capture_output=True, timeout=60)


def test_temp_files_left_by_kills_mid_save_are_removed_at_start(tmp_path: Path) -> None:
    """A SIGKILL between the temp file's fsync and its rename left ``.scores.json.XXXXXXXX`` (a whole copy of
    the scores), each under its own name: a crash loop or a supervisor's kills piled them up in STATE_DIR for
    good. A start reads the last scores saved whole and removes what earlier kills left."""
    path = tmp_path / "scores.json"
    book = ScoreBook({"A": 1.0}, alpha=1.0, path=path)
    book.update(0, "hk", "A", 1.0)
    book.save()
    for uid in (1, 2, 3):
        run = kill_mid_save(path, uid)
        assert run.returncode == -signal.SIGKILL and run.stdout.strip() == b"[0]", run.stderr[-2000:]
    assert len(list(tmp_path.glob(".scores.json.*"))) <= 1, "each start removes what the kills before it left"
    restored = ScoreBook({"A": 1.0}, path=path)
    assert restored.load() and sorted(restored.miners) == [0], "the last scores saved whole"
    assert [p.name for p in tmp_path.iterdir()] == ["scores.json"]


def test_weights_sum_to_one_and_sharpen() -> None:
    uids = np.arange(4)
    w = compute_weights(uids, np.array([1.0, 0.5, 0.0, -1.0]), power=1.0)
    assert w.sum() == pytest.approx(1.0) and (w >= 0).all()
    assert w[0] == pytest.approx(2 / 3) and w[2] == w[3] == 0.0
    sharp = compute_weights(uids, np.array([1.0, 0.5, 0.0, 0.0]), power=3.0)
    assert sharp[0] == pytest.approx(1 / 1.125)
    assert not compute_weights(uids, np.zeros(4)).any()
    assert not compute_weights(uids, np.array([np.nan, 0, 0, 0])).any()


def test_every_positive_score_keeps_a_weight_however_small_and_tiny_scores_set_weights() -> None:
    """A score raised to ``WEIGHTS_POWER`` (up to 16) underflowed to 0.0 when small enough next to the top one
    (1e-21 of it: 1e-336), and the miner got no weight although every positive score keeps the smallest u16
    step. Scores that are all tiny still set weights, in proportion: they are scaled to the top one first."""
    uids = np.array([1, 2, 3])
    w = compute_weights(uids, np.array([1.0, 1e-21, 0.0]), power=16.0)
    dests, values = to_u16(uids, w)
    assert dests == [1, 2] and values == [U16_MAX, 1]
    tiny = compute_weights(uids, np.array([2e-14, 1e-14, 0.0]), power=1.0)
    assert tiny == pytest.approx([2 / 3, 1 / 3, 0.0])


def test_max_weight_limit_is_respected() -> None:
    uids = np.arange(5)
    w = compute_weights(uids, np.array([10.0, 1.0, 1.0, 1.0, 1.0]), WeightRules(max_weight=0.3))
    assert w.sum() == pytest.approx(1.0)
    assert w.max() <= 0.3 + 1e-9
    assert w[1] == pytest.approx(w[4]) == pytest.approx(0.7 / 4)


def test_min_allowed_weights_fills_with_the_next_best() -> None:
    uids = np.array([5, 6, 7, 8])
    w = compute_weights(uids, np.array([1.0, 0.0, 0.0, 0.0]), WeightRules(min_allowed=3))
    assert np.count_nonzero(w) == 3 and w.sum() == pytest.approx(1.0)
    dests, values = to_u16(uids, w)
    assert dests == [5, 6, 7] and values[0] == U16_MAX and values[1:] == [1, 1]


def test_u16_conversion_matches_the_sdk() -> None:
    dests, values = to_u16(np.array([1, 2, 3]), np.array([0.1, 0.7, 0.2]))
    assert dests == [1, 2, 3] and values == [9362, 65535, 18724]  # the SDK doc's observed values
    assert to_u16(np.array([1, 2]), np.array([0.0, 0.0])) == ([], [])
    assert sum(from_u16(values)) == pytest.approx(1.0)


async def test_ledger_sink_moves_incentive_to_quality(tmp_path: Path) -> None:
    mg = tmp_path / "metagraph.json"
    write_metagraph_file(mg, snapshot("val", {1: ("hk1", "127.0.0.1:1"), 2: ("hk2", "127.0.0.1:2")},
                                      incentives={1: 0.5, 2: 0.5}))
    book = ScoreBook(PROBS, alpha=1.0, path=tmp_path / "scores.json")
    book.update(1, "hk1", "A", 1.0)
    book.update(1, "hk1", "B", 1.0)
    book.update(2, "hk2", "A", 0.2)
    sink = LedgerWeightSink(tmp_path / "weights.json", mg, validator_hotkey="val")
    await weights_cycle(book, sink, await FileMetagraphSource(mg).fetch(), power=1.0)
    ledger = json.loads((tmp_path / "weights.json").read_text())
    assert ledger["uids"] == [1, 2] and ledger["weights_u16"][0] == U16_MAX
    snap = await FileMetagraphSource(mg).fetch()
    assert snap.block == 2
    assert snap.by_uid(1).incentive > 0.8 > snap.by_uid(2).incentive > 0
    assert snap.by_uid(0).incentive == 0.0
    assert book.last_weights_set_at is not None and book.weights[1] > book.weights[2]
    report = book.report(snap)
    assert [m["uid"] for m in report["miners"]] == [1, 2]
    assert set(report["miners"][0]) == {"uid", "hotkey", "score", "weight", "tasks", "organic"}


async def test_disabled_sink_computes_but_sets_nothing(tmp_path: Path) -> None:
    book = ScoreBook(PROBS, alpha=1.0)
    book.update(1, "hk1", "A", 1.0)
    weights = await weights_cycle(book, DisabledSink(), _graph(3), power=1.0)
    assert weights == {1: 1.0} and book.last_weights_set_at is None and book.weights == {1: 1.0}


class FakeSubstrate:
    """The SDK doc's offline substrate (section 3): enough for hyperparameters and SetWeights."""

    def __init__(self, storage=None, runtime=None, block=1000, block_seconds=12.0):
        self.storage, self.runtime, self.block = storage or {}, runtime or {}, block
        self.block_seconds = block_seconds  # 12 s on finney, 0.25 s on a fast-blocks local chain
        self.token_symbols, self.submitted = {}, []

    def balance(self, rao, netuid=0):
        return bt.Balance.from_rao(rao, netuid)

    async def connect(self): pass

    async def close(self): pass

    async def block_number(self): return self.block

    async def block_hash(self, block=None): return f"0x{block or self.block:064x}"

    async def block_time(self): return self.block_seconds

    async def query(self, module, name, params=None, block_hash=None):
        return self.storage.get((module, name, tuple(params or ())))

    async def query_map(self, module, name, params=None, block_hash=None): return []

    async def runtime_call(self, api, method, params, block_hash=None):
        return self.runtime.get((api, method, tuple(params)))

    async def compose(self, call): return call

    async def estimate_fee(self, call, keypair): raise RuntimeError("no fee offline")

    async def submit(self, call, keypair, **kw):
        self.submitted.append((call, keypair.ss58_address, kw))
        return bt.ExtrinsicResult(success=True, message="fake inclusion")


@dataclass
class DevWallet:
    coldkey: Keypair
    coldkeypub: Keypair
    hotkey: Keypair


def chain_storage(hotkey: str, *, last_update: int, max_limit: int = 32767, min_allowed: int = 2) -> dict:
    sm = "SubtensorModule"
    return {(sm, "Uids", (1, hotkey)): 0, (sm, "WeightsSetRateLimit", (1,)): 100,
            (sm, "LastUpdate", (1,)): [last_update], (sm, "MinAllowedWeights", (1,)): min_allowed,
            (sm, "MaxWeightsLimit", (1,)): max_limit, (sm, "WeightsVersionKey", (1,)): 3,
            (sm, "CommitRevealWeightsEnabled", (1,)): False, (sm, "SubnetEpochConsensus", (1,)): "Yuma"}


async def test_chain_sink_sets_weights_through_the_sdk_intent() -> None:
    cold = Keypair.create_from_uri("//Alice")
    wallet = DevWallet(cold, cold, Keypair.create_from_uri("//Alice//validator"))
    fake = FakeSubstrate(storage=chain_storage(wallet.hotkey.ss58_address, last_update=850))
    sink = ChainWeightSink(lambda: bt.Client("local", substrate=fake), wallet, 1)
    rules = await sink.rules()
    assert rules == WeightRules(max_weight=32767 / U16_MAX, min_allowed=2)
    book = ScoreBook(PROBS, alpha=1.0)
    for uid, s in ((1, 1.0), (2, 0.5), (3, 0.25)):
        book.update(uid, f"hk{uid}", "A", s)
        book.update(uid, f"hk{uid}", "B", s)
    await weights_cycle(book, sink, _graph(3), power=1.0)
    call = fake.submitted[0][0]
    assert call.params["dests"] == [1, 2, 3] and call.params["version_key"] == 3
    shares = from_u16(call.params["weights"])
    assert max(shares) <= 0.5 + 1e-3, "the subnet's max weight limit holds"
    assert book.last_weights_set_at is not None
    await sink.close()


def _book(*scores: float) -> ScoreBook:
    book = ScoreBook(PROBS, alpha=1.0)
    for uid, s in enumerate(scores, start=1):
        book.update(uid, f"hk{uid}", "A", s)
        book.update(uid, f"hk{uid}", "B", s)
    return book


async def test_chain_sink_past_its_longest_wait_sets_nothing_and_records_nothing() -> None:
    cold = Keypair.create_from_uri("//Bob")
    wallet = DevWallet(cold, cold, Keypair.create_from_uri("//Bob//validator"))
    fake = FakeSubstrate(storage=chain_storage(wallet.hotkey.ss58_address, last_update=990))
    sink = ChainWeightSink(lambda: bt.Client("local", substrate=fake), wallet, 1, max_wait=60)  # 90 blocks left
    with pytest.raises(WeightsNotSet, match="rate limited"):
        await sink.set_weights([1, 2], [0.6, 0.4])
    book = _book(1.0, 0.5)
    assert await weights_cycle(book, sink, _graph(2), power=1.0) is None
    assert fake.submitted == [] and book.last_weights_set_at is None and book.weights == {}, \
        "/health must not report weights the chain never took"
    await sink.close()


async def test_chain_sink_waits_out_the_rate_limit_then_sets() -> None:
    """The wait is counted in the chain's own block time (``block_time()``, as ``/ready``'s rate-limit check
    counts it): at an assumed 12 s a block, 90 blocks of a fast local chain were 18 minutes, past the
    longest wait, and nothing was set."""
    cold = Keypair.create_from_uri("//Bob")
    wallet = DevWallet(cold, cold, Keypair.create_from_uri("//Bob//validator"))
    fake = FakeSubstrate(storage=chain_storage(wallet.hotkey.ss58_address, last_update=990), block_seconds=0.01)
    sink = ChainWeightSink(lambda: bt.Client("local", substrate=fake), wallet, 1)  # assumes 12 s a block

    async def blocks_pass() -> None:
        await asyncio.sleep(0.3)
        fake.block += 100

    passing = asyncio.create_task(blocks_pass())
    book = _book(1.0, 0.5)
    started = time.monotonic()
    assert await weights_cycle(book, sink, _graph(2), power=1.0) is not None
    assert 0.3 <= time.monotonic() - started < 5 and len(fake.submitted) == 1 and book.last_weights_set_at
    assert sink.limits.rate_limit_seconds == pytest.approx(100 * 0.01), "the same block time as /ready's check"
    await passing
    await sink.close()


async def test_min_allowed_weights_counts_what_survives_the_u16_rounding() -> None:
    """With a power of 3, a score 1/90 of the top one is 1/729,000 of its weight: 0 in u16, which the SDK
    drops. It must keep the smallest step, or the chain refuses the set for too few weights."""
    cold = Keypair.create_from_uri("//Dave")
    wallet = DevWallet(cold, cold, Keypair.create_from_uri("//Dave//validator"))
    fake = FakeSubstrate(storage=chain_storage(wallet.hotkey.ss58_address, last_update=850, max_limit=U16_MAX))
    sink = ChainWeightSink(lambda: bt.Client("local", substrate=fake), wallet, 1)
    await weights_cycle(_book(0.9, 0.01), sink, _graph(2), power=3.0)
    call = fake.submitted[0][0]
    assert call.params["dests"] == [1, 2] and call.params["weights"] == [65535, 1]
    await sink.close()


async def test_a_save_writes_the_scores_as_they_were_when_it_was_asked_for(tmp_path: Path) -> None:
    """The file is written in a thread while jobs go on changing the scores on the event loop: the
    thread gets a copy (reading the live dicts failed now and then: "dictionary changed size")."""
    book = ScoreBook(PROBS, alpha=1.0, path=tmp_path / "scores.json")
    book.update(1, "hk1", "A", 0.5)
    saving = asyncio.create_task(book.save_off_loop())
    await asyncio.sleep(0)  # the copy is taken; the write is in its thread
    book.update(1, "hk1", "B", 1.0)
    for uid in range(2, 500):
        book.update(uid, f"hk{uid}", "A", 1.0)
    await saving
    saved = json.loads((tmp_path / "scores.json").read_text())
    assert list(saved["miners"]) == ["1"] and saved["miners"]["1"]["tasks"] == {"A": 0.5}


async def test_saves_asked_for_during_a_save_coalesce_and_the_file_ends_with_the_latest(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each scored job saved the whole file: two saves at once could land out of order (an older copy
    over a newer one), and at 4,096 uids a save per job capped scoring at ~5 jobs/s."""
    import neurons.validator.scores as scores_module

    writes: list[dict] = []
    real = scores_module.atomic_write_json

    def slow_write(path, data) -> None:  # a slow disk: each write takes a while
        time.sleep(0.05)
        writes.append(data)
        real(path, data)

    monkeypatch.setattr(scores_module, "atomic_write_json", slow_write)
    book = ScoreBook(PROBS, alpha=1.0, path=tmp_path / "scores.json")
    saves = []
    for i in range(20):
        book.update(1, "hk1", "A", i / 20)
        saves.append(asyncio.create_task(book.save_off_loop()))
        await asyncio.sleep(0.01)
    await asyncio.gather(*saves)
    assert len(writes) < 10, f"{len(writes)} writes for 20 saves: they did not coalesce"
    saved = json.loads((tmp_path / "scores.json").read_text())
    assert saved["miners"]["1"]["tasks"] == {"A": 19 / 20}, "the last change is on disk"


def _chain_sink(uri: str, **storage) -> tuple[ChainWeightSink, FakeSubstrate]:
    cold = Keypair.create_from_uri(uri)
    wallet = DevWallet(cold, cold, Keypair.create_from_uri(uri + "//validator"))
    fake = FakeSubstrate(storage=chain_storage(wallet.hotkey.ss58_address, **storage))
    return ChainWeightSink(lambda: bt.Client("local", substrate=fake), wallet, 1), fake


async def test_a_young_validator_meets_the_subnets_minimum_count_of_weights() -> None:
    """Two miners scored so far, a subnet that wants 4 weights: the set was refused by the SDK ("requires
    at least 4 weights") every cycle until 4 miners held a score. The metagraph's other uids fill in."""
    sink, fake = _chain_sink("//Erin", last_update=850, min_allowed=4, max_limit=U16_MAX)
    set_ = await weights_cycle(_book(1.0, 0.5), sink, _graph(5), power=3.0)
    call = fake.submitted[0][0]
    assert len(call.params["dests"]) == 4 and {1, 2} <= set(call.params["dests"])
    assert call.params["weights"][call.params["dests"].index(1)] == U16_MAX
    assert set_ is not None and set_[1] > set_[2] > max(w for u, w in set_.items() if u not in (1, 2))
    await sink.close()


async def test_a_max_weight_limit_two_miners_cannot_meet_is_met_with_the_metagraphs_other_uids() -> None:
    """A 20 % cap with two scored miners: both were set at 50 % (over the cap: the chain refuses it, and
    the better miner was paid no more than the worse). The excess goes to the metagraph's other uids."""
    sink, fake = _chain_sink("//Ferdie", last_update=850, min_allowed=1, max_limit=int(0.2 * U16_MAX))
    await weights_cycle(_book(1.0, 0.5), sink, _graph(8), power=1.0)
    shares = dict(zip(fake.submitted[0][0].params["dests"], from_u16(fake.submitted[0][0].params["weights"]),
                      strict=True))
    assert max(shares.values()) <= 0.2 + 1e-3 and len(shares) >= 5
    await sink.close()


async def test_weights_go_only_to_uids_that_exist_now_held_by_the_hotkey_that_earned_them() -> None:
    """Between two metagraph syncs the book can still hold a uid the subnet dropped (n shrank: the chain
    refuses the whole vector) or one that changed hands (the new owner was paid the old one's score)."""
    sink, fake = _chain_sink("//Charlie", last_update=850, min_allowed=1, max_limit=U16_MAX)
    book = _book(1.0, 0.9, 0.8)  # uids 1, 2, 3
    now = _graph(2, hotkeys={2: "someone-else"})  # uid 3 is gone, uid 2 has a new owner
    set_ = await weights_cycle(book, sink, now, power=1.0)
    assert fake.submitted[0][0].params["dests"] == [1] and set_ == {1: 1.0}
    await sink.close()


async def test_a_damaged_scores_file_never_puts_nan_on_chain(tmp_path: Path) -> None:
    """A scores file edited by hand (or damaged) with Infinity or a huge value made every weight NaN:
    nothing was ever set again. Such a value counts 0; the other miners are paid."""
    path = tmp_path / "scores.json"
    book = ScoreBook(PROBS, alpha=1.0, path=path)
    for uid, s in ((1, 0.9), (2, 0.5), (3, 0.2)):
        book.update(uid, f"hk{uid}", "A", s)
    book.save()
    path.write_text(path.read_text().replace('"A": 0.9', '"A": Infinity').replace('"A": 0.5', '"A": 1e300'))
    restored = ScoreBook(PROBS, alpha=1.0, path=path)
    assert restored.load()
    sink, fake = _chain_sink("//Eve", last_update=850, min_allowed=1, max_limit=U16_MAX)
    set_ = await weights_cycle(restored, sink, _graph(3), power=3.0)
    call = fake.submitted[0][0]
    assert set_ is not None and all(np.isfinite(list(set_.values())))
    assert all(0 < v <= U16_MAX for v in call.params["weights"])
    await sink.close()


def test_a_damaged_scores_file_is_repaired_on_load_and_the_miner_scores_again(tmp_path: Path) -> None:
    """An average of inf stayed inf through every later update (NaN likewise), so the miner was never paid
    again; one of 1e300 held the weights for thousands of jobs. Loaded, each is made a number in [0, 1]."""
    path = tmp_path / "scores.json"
    book = ScoreBook(PROBS, alpha=0.5, path=path)
    for uid in (1, 2, 3, 4):
        book.update(uid, f"hk{uid}", "A", 0.5)
    book.save()
    data = json.loads(path.read_text())
    for uid, value in (("1", float("inf")), ("2", float("nan")), ("3", 1e300), ("4", -3.0)):
        data["miners"][uid]["tasks"]["A"] = value
    path.write_text(json.dumps(data))  # Infinity, NaN: what Python's json writes and reads
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="WARNING", format="{message}")
    try:
        restored = ScoreBook(PROBS, alpha=0.5, path=path)
        assert restored.load()
    finally:
        logger.remove(sink)
    assert [restored.combined(u) for u in (1, 2, 3, 4)] == [0.0, 0.0, 0.75, 0.0]
    assert restored.update(1, "hk1", "A", 1.0) == 0.5 and restored.update(2, "hk2", "A", 1.0) == 0.5
    assert any("4 task scores were not numbers in [0, 1]" in line for line in lines), lines


class ScriptedSubstrate(FakeSubstrate):
    """The offline substrate whose submissions answer, in turn, the results given (then success)."""

    def __init__(self, results: list[bt.ExtrinsicResult], **kw) -> None:
        super().__init__(**kw)
        self.results = list(results)
        self.attempts = 0

    async def submit(self, call, keypair, **kw):
        self.attempts += 1
        if self.results:
            return self.results.pop(0)
        return await super().submit(call, keypair, **kw)


def _scripted_sink(uri: str, results: list[bt.ExtrinsicResult]) -> tuple[ChainWeightSink, ScriptedSubstrate]:
    cold = Keypair.create_from_uri(uri)
    wallet = DevWallet(cold, cold, Keypair.create_from_uri(uri + "//validator"))
    fake = ScriptedSubstrate(results, storage=chain_storage(wallet.hotkey.ss58_address, last_update=850,
                                                            min_allowed=1, max_limit=U16_MAX), block_seconds=0.01)
    return ChainWeightSink(lambda: bt.Client("local", substrate=fake), wallet, 1), fake


async def test_a_set_the_pool_refuses_for_a_transient_reason_is_resubmitted_in_the_same_cycle() -> None:
    """"Priority is too low" (an earlier set of ours still in the pool, a nonce race) lost the set for a
    whole WEIGHTS_INTERVAL; the SDK resubmits it a block later when asked to."""
    low = bt.ExtrinsicResult(success=False, message="Priority is too low",
                             error=bt.ChainError("Priority is too low"))
    sink, fake = _scripted_sink("//Alice", [low])
    book = _book(1.0, 0.5)
    assert await weights_cycle(book, sink, _graph(2), power=1.0) is not None
    assert fake.attempts == 2 and len(fake.submitted) == 1 and book.last_weights_set_at is not None
    await sink.close()


async def test_the_chains_too_soon_is_not_a_failure_and_other_refusals_name_the_chain_error() -> None:
    too_soon = bt.ExtrinsicResult(success=False, message="SettingWeightsTooFast",
                                  error=bt.ChainError("SettingWeightsTooFast", name="SettingWeightsTooFast"))
    sink, fake = _scripted_sink("//Bob", [too_soon])
    book = _book(1.0, 0.5)
    lines, handler = log_lines("INFO")
    try:
        assert await weights_cycle(book, sink, _graph(2), power=1.0) is None  # no exception: the loop is fine
    finally:
        logger.remove(handler)
    assert book.last_weights_set_at is None and book.weights == {}
    assert any(line.startswith("INFO weights: not set this cycle: rate limited") for line in lines), lines
    await sink.close()

    wrong_key = bt.ExtrinsicResult(success=False, message="IncorrectWeightVersionKey",
                                   error=bt.ChainError("IncorrectWeightVersionKey", name="IncorrectWeightVersionKey"))
    sink, fake = _scripted_sink("//Charlie", [wrong_key])
    with pytest.raises(RuntimeError, match=r"SetWeights refused \(IncorrectWeightVersionKey\)"):
        await weights_cycle(_book(1.0, 0.5), sink, _graph(2), power=1.0)
    assert fake.attempts == 1, "a dispatch failure is not resubmitted: it would fail the same way"
    await sink.close()


def test_after_a_restart_into_a_smaller_subnet_scores_shows_no_uid_beyond_it(tmp_path: Path) -> None:
    """Saved with 5 miners, restarted after the subnet shrank to 2 and uid 2 changed hands: uid 2 starts
    from 0 under its new hotkey, and no uid beyond n keeps a score or a weight in ``/scores`` (uid 5
    held only a weight, given to meet the subnet's minimum count)."""
    path = tmp_path / "scores.json"
    book = _book(1.0, 0.8, 0.6, 0.4)  # uids 1-4
    book.path = path
    book.weights = {1: 0.5, 2: 0.3, 3: 0.1, 4: 0.05, 5: 0.05}
    book.save()
    restored = ScoreBook(PROBS, alpha=1.0, path=path)
    assert restored.load()
    now = _graph(2, hotkeys={2: "new-owner"})
    assert restored.sync(now) == [2, 3, 4, 5], "uid 5 lost its weight: reset too (and saved)"
    report = restored.report(now)
    assert {m["uid"] for m in report["miners"]} <= {0, 1, 2}
    by_uid = {m["uid"]: m for m in report["miners"]}
    assert by_uid[2]["hotkey"] == "new-owner" and by_uid[2]["score"] == 0.0 and by_uid[2]["weight"] == 0.0
    assert by_uid[1]["score"] == pytest.approx(1.0) and restored.weights == {1: 0.5}


def test_max_weight_limit_holds_for_the_u16_values_the_chain_checks() -> None:
    """The chain normalises the u16 values and refuses the whole set when one is above ``MaxWeightsLimit``
    (``MaxWeightExceeded``). Clipped as floats to exactly the limit, a capped uid rose above it once every
    small entry was rounded: 0.50016 under a 0.5 limit on 256 uids."""
    rng = np.random.default_rng(7)
    checked = 0
    for _ in range(400):
        n = int(rng.integers(20, 257))
        uids = np.arange(n)
        s = np.zeros(n)
        scored = rng.choice(n, int(rng.integers(2, n)), replace=False)
        s[scored] = rng.random(scored.size) ** 8
        limit = float(rng.choice([0.5, 0.2, 0.1]))
        w = compute_weights(uids, s, WeightRules(max_weight=limit, min_allowed=int(rng.choice([1, 8, 64]))), power=3)
        assert w.sum() == pytest.approx(1.0) and w.max() <= limit + 1e-9
        assert u16_top_share(uids, w) <= limit, (n, limit)
        checked += 1
    assert checked == 400


async def test_the_validator_says_when_its_own_uid_or_permit_changes() -> None:
    """Deregistered, moved to another uid or stripped of its permit, the validator said nothing: the first
    sign was every miner refusing it, or the chain refusing its weights."""
    from neurons.validator.loops import metagraph_cycle
    from shared.metagraph import MetagraphView, Neuron
    from tests.helpers import StaticSource

    def graph(*neurons: Neuron) -> MetagraphSnapshot:
        return MetagraphSnapshot(netuid=1, block=1, neurons=neurons)

    miner = Neuron(uid=1, hotkey="hk1", axon="127.0.0.1:1")
    steps = [graph(Neuron(uid=0, hotkey="val", validator_permit=True), miner),
             graph(Neuron(uid=0, hotkey="val", validator_permit=False), miner),
             graph(Neuron(uid=0, hotkey="val", validator_permit=True), miner),
             graph(Neuron(uid=0, hotkey="other"), miner, Neuron(uid=2, hotkey="val", validator_permit=True)),
             graph(Neuron(uid=0, hotkey="other"), miner),
             graph(Neuron(uid=0, hotkey="other"), miner),
             graph(Neuron(uid=0, hotkey="other"), miner, Neuron(uid=2, hotkey="val", validator_permit=True))]
    source = StaticSource(steps[0])
    view = MetagraphView(source)
    await view.refresh()
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="INFO", filter=lambda r: "this validator" in r["message"])
    try:
        for step in steps[1:]:
            source.snapshot = step
            await metagraph_cycle(view, ScoreBook(PROBS), "val")
    finally:
        logger.remove(sink)
    assert len(lines) == 6, lines
    assert "uid 0) holds no validator permit" in lines[0]
    assert "holds a validator permit again" in lines[1]
    assert "uid changed from 0 to 2" in lines[2]
    assert "is not registered (it was uid 2)" in lines[3]
    assert lines[4].endswith("is not registered: its weights will be refused and miners refuse its requests"), lines[4]
    assert "is registered now, as uid 2" in lines[5], "it said nothing when it came back ('it was uid -' before)"


async def test_a_validator_without_a_permit_or_registration_submits_no_weights_and_says_why() -> None:
    """The SDK checks no permit on a Yuma subnet: a validator whose stake fell out of the permitted set
    submitted SetWeights every interval, the chain refused each (``NeuronNoValidatorPermit``) and charged
    the coldkey its fee. The metagraph says so first: nothing is submitted, and a WARNING says why."""
    sink, fake = _chain_sink("//Dave", last_update=850, min_allowed=1, max_limit=U16_MAX)
    own = sink.wallet.hotkey.ss58_address
    book = _book(1.0, 0.5)
    lines, handler = log_lines("INFO")
    try:
        no_permit = snapshot(own, {1: ("hk1", "127.0.0.1:1"), 2: ("hk2", "127.0.0.1:2")})
        no_permit = MetagraphSnapshot(netuid=1, block=1, neurons=(replace(no_permit.neurons[0], validator_permit=False),
                                                                   *no_permit.neurons[1:]))
        assert await weights_cycle(book, sink, no_permit, power=1.0, hotkey=own) is None
        assert book.weights_not_set is not None and "holds no validator permit" in book.weights_not_set
        unregistered = _graph(2)  # uid 0 is another validator's
        assert await weights_cycle(book, sink, unregistered, power=1.0, hotkey=own) is None
        assert fake.submitted == [] and book.last_weights_set_at is None
        permitted = snapshot(own, {1: ("hk1", "127.0.0.1:1"), 2: ("hk2", "127.0.0.1:2")})
        assert await weights_cycle(book, sink, permitted, power=1.0, hotkey=own) is not None
        assert fake.submitted[0][0].params["dests"] == [1, 2] and book.weights_not_set is None
    finally:
        logger.remove(handler)
        await sink.close()
    assert "WARNING weights: not set: this validator (uid 0) holds no validator permit" in lines[0], lines
    assert f"WARNING weights: not set: hotkey {own} is not registered on netuid 1" in lines[1], lines


async def test_a_metagraph_read_with_no_neurons_keeps_every_score(tmp_path: Path) -> None:
    """A subnet never loses every uid (the chain replaces a uid's hotkey, it does not remove the uid): a read
    with no neurons after one that had some is a bad read (a node that lagged or lost state, a metagraph file
    rewritten by hand). Taken as the metagraph, every uid "left", every score was dropped and the empty book
    saved over ``scores.json`` within the cycle: weeks of scores gone on one bad read. It is now a failed
    refresh: the last snapshot and every score stay, and the cycle fails (a ``metagraph cycle failed``
    WARNING; ``metagraph_age_seconds`` grows)."""
    from neurons.validator.loops import metagraph_cycle
    from shared.metagraph import MetagraphView

    graph_file, scores_file = tmp_path / "metagraph.json", tmp_path / "scores.json"
    write_metagraph_file(graph_file, snapshot("val", {1: ("hk1", "127.0.0.1:1"), 2: ("hk2", "127.0.0.1:2")}))
    view = MetagraphView(FileMetagraphSource(graph_file))
    await view.refresh()
    book = ScoreBook(PROBS, path=scores_file)
    for uid in range(3):
        book.update(uid, view.snapshot.by_uid(uid).hotkey, "A", 1.0)
    await book.save_off_loop()

    write_metagraph_file(graph_file, MetagraphSnapshot(netuid=1, block=7, neurons=()))
    with pytest.raises(RuntimeError, match="no neurons"):
        await metagraph_cycle(view, book, "val")
    assert len(view.snapshot.neurons) == 3
    assert sorted(book.miners) == [0, 1, 2]
    restored = ScoreBook(PROBS, path=scores_file)
    assert restored.load() and sorted(restored.miners) == [0, 1, 2]

    write_metagraph_file(graph_file, snapshot("val", {1: ("hk1", "127.0.0.1:1")}))  # a real change still resets
    await metagraph_cycle(view, book, "val")
    assert sorted(book.miners) == [0, 1]


async def test_the_metagraph_line_says_in_words_what_was_dropped_and_that_nothing_is_to_be_done(tmp_path: Path) -> None:
    """Each refresh said ``metagraph: block 7 neurons 2 serving 2 reset -`` (``reset [2]`` when uid 2's miner
    changed): an operator could not tell what was reset, why, or whether to act."""
    from neurons.validator.loops import metagraph_cycle
    from shared.metagraph import MetagraphView
    from tests.helpers import info_lines

    graph_file = tmp_path / "metagraph.json"
    write_metagraph_file(graph_file, snapshot("val", {1: ("hk1", "127.0.0.1:1"), 2: ("hk2", "127.0.0.1:2")}))
    view = MetagraphView(FileMetagraphSource(graph_file))
    book = ScoreBook(PROBS, path=tmp_path / "scores.json")
    with info_lines() as quiet:
        await metagraph_cycle(view, book, "val")
    book.update(2, "hk2", "A", 1.0)
    write_metagraph_file(graph_file, snapshot("val", {1: ("hk1", "127.0.0.1:1"), 2: ("hk9", None)}))
    with info_lines() as changed:
        await metagraph_cycle(view, book, "val")
    assert not any(" reset" in line for line in quiet + changed), quiet + changed
    assert [line for line in quiet if line.startswith("metagraph: ")] == [
        "metagraph: block 1: 3 neurons, 2 serving an axon"], quiet
    said = [line for line in changed if "uid 2" in line]
    assert len(said) == 1 and "its hotkey changed" in said[0] and "nothing to do" in said[0], changed


async def test_a_validator_started_on_a_metagraph_with_no_neurons_keeps_the_scores_it_loaded(tmp_path: Path) -> None:
    """``sn1 validator`` whose first metagraph read has no neurons (the same bad read, at start): it dropped
    every score it had just loaded and saved the empty book over ``scores.json`` at its first save (here its
    shutdown's). They are kept, shown in ``/scores`` and saved again as they were."""
    from tests.ports import free_port
    from tests.validator.test_app import MINERS
    from tests.validator.test_inbox import validator_env, validator_process

    port = free_port()
    url, log = f"http://127.0.0.1:{port}", tmp_path / "validator.log"
    env_file, _ = validator_env(tmp_path, port)
    book = ScoreBook(PROBS, path=tmp_path / "state" / "scores.json")
    for uid, key in MINERS.items():
        book.update(uid, key.ss58_address, "InferenceTask", 1.0)
    book.save()
    write_metagraph_file(tmp_path / "metagraph.json", MetagraphSnapshot(netuid=1, block=9, neurons=()))

    async with validator_process(env_file, url, log), aiohttp.ClientSession() as s, s.get(url + "/scores") as r:
        shown = {m["uid"]: m["tasks"] for m in (await r.json())["miners"]}
    assert shown == {uid: {"InferenceTask": 0.1} for uid in MINERS}, log.read_text()[-3000:]
    saved = json.loads((tmp_path / "state" / "scores.json").read_text())["miners"]
    assert sorted(int(u) for u in saved) == sorted(MINERS), log.read_text()[-3000:]
    assert "the metagraph read has no neurons (block 9): scores for 2 uids kept" in log.read_text()


def test_the_first_weights_set_after_a_start_waits_only_what_is_left_of_the_interval() -> None:
    """After a restart the weights loop waited a whole ``WEIGHTS_INTERVAL`` whatever ``scores.json`` said of the last
    set: a validator restarted more often than its interval never set weights. It now waits what is left of the
    interval since the saved set; a first start, or a saved time past now (a clock set back), waits the whole."""
    now = 1_800_000_000.0
    assert first_weights_delay(now - 1200, 600, now) == 0.0  # overdue: at once
    assert first_weights_delay(now - 100, 600, now) == 500.0  # the rest of the interval
    assert first_weights_delay(None, 600, now) == 600.0  # never set
    assert first_weights_delay(now + 3600, 600, now) == 600.0  # a time past now
    assert first_weights_delay(float("nan"), 600, now) == 600.0


async def test_a_restarted_validator_whose_last_set_is_overdue_sets_weights_at_once(tmp_path: Path) -> None:
    """``sn1 validator`` with ``WEIGHTS_INTERVAL`` 600 s, restored scores and a last set 20 minutes ago in
    ``scores.json`` (its ledger, the local network's chain, the sink): it sets weights within seconds of its start,
    where it waited 600 s. A hand-edited non-number in ``last_weights_set_at`` reads as none (it reached
    ``/health`` as it was)."""
    from tests.ports import free_port
    from tests.validator.test_app import MINERS
    from tests.validator.test_inbox import tail, validator_env, validator_process

    port = free_port()
    url, log, ledger = f"http://127.0.0.1:{port}", tmp_path / "validator.log", tmp_path / "weights.json"
    env_file, _ = validator_env(tmp_path, port, NEURON_DISABLE_SET_WEIGHTS="false", WEIGHTS_INTERVAL="600",
                                WEIGHTS_LEDGER_FILE=str(ledger))
    book = ScoreBook(PROBS, path=tmp_path / "state" / "scores.json")
    for uid, key in MINERS.items():
        book.update(uid, key.ss58_address, "InferenceTask", 1.0)
    book.last_weights_set_at = time.time() - 1200
    book.save()
    async with validator_process(env_file, url, log), aiohttp.ClientSession() as s:
        for _ in range(200):  # bounded: 10 s
            if ledger.exists():
                break
            await asyncio.sleep(0.05)
        assert ledger.exists(), tail(log)
        async with s.get(url + "/health") as r:
            assert (await r.json())["last_weights_set_at"] > time.time() - 60, tail(log)
    saved = json.loads(book.path.read_text())
    saved["last_weights_set_at"] = "yesterday"
    book.path.write_text(json.dumps(saved))
    edited = ScoreBook(PROBS, path=book.path)
    assert edited.load() and edited.last_weights_set_at is None


async def test_sn1_validator_started_after_kills_mid_save_reads_the_last_scores_and_removes_the_temp_files(
    tmp_path: Path,
) -> None:
    """The start of a real ``sn1 validator`` after two processes were killed between a save's write and its
    rename: ``/scores`` shows the scores saved whole before, and STATE_DIR holds no temp file any more."""
    from tests.ports import free_port
    from tests.validator.test_app import MINERS
    from tests.validator.test_inbox import validator_env, validator_process

    port = free_port()
    url, log = f"http://127.0.0.1:{port}", tmp_path / "validator.log"
    env_file, _ = validator_env(tmp_path, port)
    state = tmp_path / "state"
    book = ScoreBook(PROBS, path=state / "scores.json")
    for uid, key in MINERS.items():
        book.update(uid, key.ss58_address, "InferenceTask", 1.0)
    book.save()
    for uid in (7, 8):
        kill_mid_save(state / "scores.json", uid)
    assert len(list(state.glob(".scores.json.*"))) == 1, "the second start removed the first one's"

    async with validator_process(env_file, url, log), aiohttp.ClientSession() as s, s.get(url + "/scores") as r:
        body = await r.json()
        left = list(state.glob(".scores.json.*"))
    assert r.status == 200, (body, log.read_text()[-3000:])
    shown = {m["uid"]: m["tasks"] for m in body["miners"]}
    assert shown == {uid: {"InferenceTask": 0.1} for uid in MINERS}, log.read_text()[-3000:]
    assert left == [], left
    assert "removed 1 temp file(s) of" in log.read_text()


async def test_weights_set_after_a_uid_changed_hands_do_not_pay_its_new_owner(tmp_path: Path) -> None:
    """``sn1 validator`` with the local network's ledger (the chain's stand-in), uid 2 earned by //Miner2 and
    re-registered by another hotkey after the validator's last metagraph read (``METAGRAPH_REFRESH_SECONDS``
    away): the next weights set gave uid 2 //Miner2's share, and the ledger wrote it as the new hotkey's
    incentive, as the chain pays whoever holds a uid when weights are set. The weights cycle reads the
    metagraph first: uid 2 counts 0 and its score is dropped."""
    from tests.helpers import keypair
    from tests.ports import free_port
    from tests.validator.test_app import MINERS
    from tests.validator.test_inbox import tail, validator_env, validator_process

    port = free_port()
    url, log, ledger = f"http://127.0.0.1:{port}", tmp_path / "validator.log", tmp_path / "weights.json"
    env_file, _ = validator_env(tmp_path, port, NEURON_DISABLE_SET_WEIGHTS="false", WEIGHTS_INTERVAL="3",
                                METAGRAPH_REFRESH_SECONDS="600", WEIGHTS_LEDGER_FILE=str(ledger))
    book = ScoreBook(PROBS, path=tmp_path / "state" / "scores.json")
    for uid, key in MINERS.items():
        book.update(uid, key.ss58_address, "InferenceTask", 1.0)
    book.save()
    newcomer = keypair("//Newcomer").ss58_address
    source = FileMetagraphSource(tmp_path / "metagraph.json")
    async with validator_process(env_file, url, log), aiohttp.ClientSession() as s:
        before = await source.fetch()  # the validator has read this one; uid 2 changes hands after
        changed = tuple(replace(n, hotkey=newcomer) if n.uid == 2 else n for n in before.neurons)
        write_metagraph_file(source.path, replace(before, block=before.block + 1, neurons=changed))
        for _ in range(200):  # bounded: 10 s (the first set is 3 s after the start)
            if ledger.exists():
                break
            await asyncio.sleep(0.05)
        assert ledger.exists(), tail(log)
        async with s.get(url + "/scores") as r:
            shown = {m["uid"]: m for m in (await r.json())["miners"]}
    assert json.loads(ledger.read_text())["weights"] == {"1": 1.0}, tail(log)
    incentives = {n.uid: n.incentive for n in (await source.fetch()).neurons}
    assert incentives[2] == 0.0 and incentives[1] == 1.0, "the newcomer at uid 2 was paid //Miner2's score"
    assert 2 not in shown and shown[1]["weight"] == 1.0, "uid 2 (no axon yet) holds neither a score nor a weight"


async def test_a_metagraph_that_cannot_be_read_before_a_weights_set_sets_nothing_and_says_why(tmp_path: Path) -> None:
    """The weights cycle's own metagraph read fails (the file gone, a chain endpoint down): nothing is set on the
    last metagraph read (a uid may have changed hands since), and ``/health`` ``weights_not_set`` says why."""
    from neurons.validator.loops import fresh_weights_cycle
    from shared.metagraph import MetagraphView

    path = tmp_path / "metagraph.json"
    write_metagraph_file(path, _graph(2))
    view = MetagraphView(FileMetagraphSource(path))
    await view.first_refresh()
    book, ledger = _book(1.0, 0.5), tmp_path / "weights.json"
    sink = LedgerWeightSink(ledger, None, validator_hotkey="val")
    path.unlink()
    assert await fresh_weights_cycle(view, book, sink, power=1.0) is None
    assert not ledger.exists() and book.last_weights_set_at is None
    assert book.weights_not_set is not None and "metagraph could not be read" in book.weights_not_set
    write_metagraph_file(path, _graph(2, hotkeys={2: "new-owner"}))
    assert await fresh_weights_cycle(view, book, sink, power=1.0) == {1: 1.0}, "read again: uid 2 is paid nothing"


async def test_a_uid_weighted_only_to_meet_the_minimum_starts_fresh_once_it_changes_hands(tmp_path: Path) -> None:
    """A subnet that wants 4 weights and two scored miners: uids 0 and 3 get the smallest weight to make up the count.
    Re-registered by another hotkey, it kept that weight in ``/scores`` and ``/metrics`` under its new owner (and
    in ``scores.json`` across a restart) until the next set: a weight it never earned, where a scored uid that
    changed hands lost its weight at once."""
    path = tmp_path / "scores.json"
    book = _book(1.0, 0.5)
    book.path = path
    assert await weights_cycle(book, DisabledSink(WeightRules(min_allowed=4)), _graph(3), power=1.0)
    assert book.weights[3] > 0, "uid 3 is weighted to meet the minimum count"
    book.save()  # the scores file as the set left it
    restarted = ScoreBook(PROBS, alpha=1.0, path=path)
    assert restarted.load()
    after = _graph(3, hotkeys={3: "new-owner"})
    for shown in (book, restarted):  # the running validator's metagraph cycle, and a restart's first sync
        assert 3 in shown.sync(after)
        by_uid = {m["uid"]: m for m in shown.report(after)["miners"]}
        assert by_uid[3]["hotkey"] == "new-owner" and by_uid[3]["weight"] == 0.0, by_uid[3]
        assert shown.per_uid(after)[3] == (0.0, 0.0) and by_uid[1]["weight"] > 0
        assert 3 not in shown.to_json()["weights"], "not saved over either"


async def test_a_validator_without_a_scores_file_says_so_naming_state_dir(tmp_path: Path) -> None:
    """``sn1 validator`` whose ``STATE_DIR`` holds no ``scores.json`` (a first start, or a validator moved or started
    from another directory with a relative ``STATE_DIR``): every miner starts from 0, its weights re-earned from
    nothing, and it said nothing. Now one WARNING names the file and ``STATE_DIR``; a start that restores the scores
    says nothing of it."""
    from tests.ports import free_port
    from tests.validator.test_inbox import tail, validator_env, validator_process

    port = free_port()
    url, log = f"http://127.0.0.1:{port}", tmp_path / "validator.log"
    env_file, _ = validator_env(tmp_path, port)
    scores = tmp_path / "state" / "scores.json"
    async with validator_process(env_file, url, log):
        pass
    told = [line for line in tail(log, 0).splitlines() if "no scores file" in line]
    assert len(told) == 1 and "WARNING" in told[0], tail(log)
    assert str(scores) in told[0] and "STATE_DIR" in told[0] and "working directory" in told[0], told
    assert scores.exists(), "saved at the stop"
    log.write_text("")
    async with validator_process(env_file, url, log):
        pass
    assert "no scores file" not in tail(log, 0) and "restored scores" in tail(log, 0), tail(log)


async def test_weights_set_after_waiting_out_the_chains_rate_limit_follow_the_metagraph_read_after_the_wait(
        tmp_path: Path) -> None:
    """The chain sink waits out the weights rate limit (up to ``max_wait``, 300 s by default) before it sets. The
    weights were computed on the metagraph read before that wait: a uid re-registered by another hotkey meanwhile
    was paid its previous owner's share, the very case the weights cycle reads the metagraph first to avoid. The
    wait comes first now, then the read."""
    from neurons.validator.loops import fresh_weights_cycle
    from shared.metagraph import MetagraphView

    sink, fake = _chain_sink("//Eve", last_update=990, max_limit=U16_MAX, min_allowed=1)  # 90 blocks left
    fake.block_seconds = 0.01  # 0.9 s
    path = tmp_path / "metagraph.json"
    write_metagraph_file(path, _graph(2))
    view = MetagraphView(FileMetagraphSource(path))
    await view.first_refresh()

    async def uid_2_changes_hands_during_the_wait() -> None:
        await asyncio.sleep(0.3)
        write_metagraph_file(path, _graph(2, hotkeys={2: "new-owner"}))
        fake.block += 100

    changing = asyncio.create_task(uid_2_changes_hands_during_the_wait())
    book = _book(1.0, 0.5)
    assert await fresh_weights_cycle(view, book, sink, power=1.0) == {1: 1.0}, "uid 2's new owner is paid nothing"
    await changing
    assert fake.submitted[0][0].params["dests"] == [1]
    await sink.close()
