"""The validator's periodic loops: each has its own interval, bounded work and one summary log line.

A cycle that raises is logged and the loop goes on: a validator must run for weeks.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from loguru import logger

from neurons.validator.availability import AvailabilityBook, poll_all
from neurons.validator.scores import ScoreBook
from neurons.validator.scoring_queue import ScoringQueue
from neurons.validator.synthetic import SyntheticConfig, run_cycle
from neurons.validator.tasks.base import TaskRegistry
from neurons.validator.weights import WeightSink, WeightsNotSet, log_top, weights_from_scores
from shared.metagraph import MetagraphSnapshot, MetagraphView
from shared.miner_client import MinerClient
from shared.store.outage import OutageLog
from shared.unchanged import Unchanged


async def every(name: str, interval: float, cycle: Callable[[], Awaitable[Any]], *, first_delay: float = 0.0,
                observe: Callable[[str, float, bool], None] | None = None) -> None:
    """Run ``cycle`` forever, ``interval`` seconds apart (start to start when it is quicker).

    ``observe(name, seconds, ok)`` is told about every cycle (the ``/metrics`` loop timings). A run of failed
    cycles is told as ``failed_cycle`` says, and its end in one INFO line."""
    name_task(name)
    failures = OutageLog(f"{name} cycle failed", every=math.inf, back="a cycle succeeded again")
    await asyncio.sleep(first_delay)
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        ok = False
        try:
            await cycle()
            ok = True
            failures.ok()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - one failed cycle must not end the loop
            failed_cycle(failures, name, e)
        if observe is not None:
            observe(name, loop.time() - started, ok)
        await asyncio.sleep(max(0.0, interval - (loop.time() - started)))


def failed_cycle(failures: OutageLog, name: str, error: Exception) -> None:
    """Tell a failed cycle: the first of a run with its traceback, each repeat in one line naming how many in a
    row. A bug inside a cycle fails it every interval, and told in one line each with no traceback, the operator
    never had a stack to report (``failures.ok`` ends the run with one INFO line)."""
    said = f"{type(error).__name__}: {error}"
    failures.failed(said, exception=error)  # its ``every`` is infinite: the run's first line alone, with the stack
    if failures.failures > 1:
        logger.warning("{} cycle failed again ({} in a row): {}", name, failures.failures, said)


def name_task(name: str) -> None:
    """Name the running task after its loop: the line saying a loop stopped names it (``app.say_stopped``)."""
    task = asyncio.current_task()
    if task is not None:
        task.set_name(name)


def first_weights_delay(last_set_at: float | None, interval: float, now: float) -> float:
    """How long after a start the weights loop first runs: what is left of ``interval`` since the last set saved in
    ``scores.json`` (``last_set_at``, Unix seconds), so a restart neither waits a whole interval nor sets again at
    once. Waiting a whole interval after every start, a validator restarted more often than its interval (an
    upgrade, a crash loop, a supervisor's restarts) never set weights; with no set on record (a first start), or a
    time past ``now`` (a clock set back), it still waits the whole interval."""
    if last_set_at is None or not math.isfinite(last_set_at) or last_set_at > now:
        return interval
    return min(interval, max(0.0, interval - (now - last_set_at)))


async def metagraph_cycle(metagraph: MetagraphView, scores: ScoreBook, hotkey: str | None = None,
                          told: Unchanged | None = None) -> None:
    """Read the metagraph, drop the scores of uids that changed hands, and say it in one line: INFO when the count of
    neurons or of those serving changed since the last INFO one (``told``, shared by the loops that read it), DEBUG
    when it says the same (it was INFO every cycle, 1,440 alike a day)."""
    before = metagraph.snapshot
    snapshot = await metagraph.refresh()
    reset = scores.sync(snapshot)
    if reset:
        await scores.save_off_loop()
    if hotkey is not None:
        log_own_standing(before, snapshot, hotkey)
    # the uids ``sync`` dropped have their own line, in words
    neurons, serving = len(snapshot.neurons), len(snapshot.serving())
    logger.log((told or Unchanged()).level((neurons, serving)), "metagraph: block {}: {} neurons, {} serving an axon",
               snapshot.block, neurons, serving)


def log_own_standing(before: MetagraphSnapshot, after: MetagraphSnapshot, hotkey: str) -> None:
    """Say when this validator's own uid or permit changed, and every cycle while it has none: nothing
    said so, and the first sign was every miner refusing it (or the chain refusing its weights)."""
    was, now = before.by_hotkey(hotkey), after.by_hotkey(hotkey)
    if now is None:
        logger.warning("metagraph: this validator's hotkey {} is not registered{}: its weights will be refused and "
                       "miners refuse its requests", hotkey, f" (it was uid {was.uid})" if was else "")
    elif not now.validator_permit:
        logger.warning("metagraph: this validator (uid {}) holds no validator permit: miners refuse its requests "
                       "unless they allow-list hotkey {}, and the chain refuses its weights", now.uid, hotkey)
    if was is None and now is not None and before.neurons:
        logger.info("metagraph: this validator's hotkey is registered now, as uid {}", now.uid)
    if was is not None and now is not None and was.uid != now.uid:
        logger.warning("metagraph: this validator's uid changed from {} to {}", was.uid, now.uid)
    elif was is not None and now is not None and now.validator_permit and not was.validator_permit:
        logger.info("metagraph: this validator (uid {}) holds a validator permit again", now.uid)


async def availability_cycle(client: MinerClient, metagraph: MetagraphView, book: AvailabilityBook, *,
                             timeout: float, concurrency: int) -> None:
    await poll_all(client, metagraph, book, timeout=timeout, concurrency=concurrency)


async def synthetic_cycle(
    client: MinerClient, metagraph: MetagraphView, book: AvailabilityBook, registry: TaskRegistry,
    datasets: dict[str, Any], config: SyntheticConfig, rng: random.Random, queue: ScoringQueue,
    scores: ScoreBook | None = None,
) -> None:
    if book.refused_by_all:  # miners refuse us: a job would score every one of them 0 for our fault
        logger.info("synthetic: paused: every miner refused this validator at the last availability poll")
        return
    job = await run_cycle(client, metagraph, book, registry, datasets, config, rng,
                          scored=scores.holding() if scores is not None else ())
    if job is None:
        logger.info("synthetic: no serving miner")
        return
    answered = len(job.bodies) - len(job.errors)
    await queue.put(job)  # its own bounded lane: a backlog slows synthetic traffic instead of growing memory
    logger.info("synthetic: {} to {} miners, {} answered, queue {}/{}", job.task, len(job.bodies), answered,
                queue.synthetic_qsize(), queue.synthetic_maxsize)


async def fresh_weights_cycle(metagraph: MetagraphView, scores: ScoreBook, sink: WeightSink, *, power: float,
                              hotkey: str | None = None, told: Unchanged | None = None) -> dict[int, float] | None:
    """``weights_cycle`` over the metagraph as it is now: read (and the scores synced to it) first.

    The chain pays whoever holds a uid when the weights are set. Set on the metagraph of the last metagraph
    cycle (up to ``METAGRAPH_REFRESH_SECONDS`` old), a uid re-registered since by another hotkey was given its
    previous owner's share. A metagraph that cannot be read sets nothing this cycle, and says why. The sink's wait
    for its turn (the chain's rate limit, up to minutes) comes before the read, for the same reason."""
    with recording_why_not_set(scores):
        await sink.wait_turn()
    try:
        await metagraph_cycle(metagraph, scores, hotkey, told)
    except Exception as e:  # noqa: BLE001 - said in /health's weights_not_set and the log; the next cycle tries again
        scores.weights_not_set = f"the metagraph could not be read before setting weights: {type(e).__name__}: {e}"
        logger.warning("weights: not set: {}", scores.weights_not_set)
        return None
    return await weights_cycle(scores, sink, metagraph.snapshot, power=power, hotkey=hotkey)


async def weights_cycle(scores: ScoreBook, sink: WeightSink, snapshot: MetagraphSnapshot, *,
                        power: float, hotkey: str | None = None) -> dict[int, float] | None:
    """Compute weights over the metagraph's uids now and hand them to the sink; returns the weights set
    (uid -> share), or None when nothing was set, with why in ``scores.weights_not_set`` (``/health``:
    a failing set was a WARNING in the log alone, and ``last_weights_set_at`` only grew old).

    ``snapshot`` sizes the vector: only uids that exist now, each scored only for the hotkey holding it,
    and unscored uids available to fill the subnet's minimum count of weights or to take what its max
    share caps (with only the scored uids, a young validator's set was refused by the chain)."""
    with recording_why_not_set(scores):
        return await _set_weights(scores, sink, snapshot, power=power, hotkey=hotkey)


@contextlib.contextmanager
def recording_why_not_set(scores: ScoreBook) -> Iterator[None]:
    """An exception raised inside is why this weights cycle set nothing: kept in ``scores.weights_not_set``
    (``/health``, ``/ready``) and raised on, for the loop's WARNING."""
    try:
        yield
    except Exception as e:
        scores.weights_not_set = f"{type(e).__name__}: {e}"
        raise


async def _set_weights(scores: ScoreBook, sink: WeightSink, snapshot: MetagraphSnapshot, *,
                       power: float, hotkey: str | None) -> dict[int, float] | None:
    refusal = own_weights_refusal(snapshot, hotkey) if hotkey is not None and sink.name == "chain" else None
    if refusal is not None:
        logger.warning("weights: not set: {}", refusal)
        scores.weights_not_set = refusal
        return None
    rules = await sink.rules()
    uids, weights = weights_from_scores(scores.combined_for(snapshot), rules, power)
    if not any(w > 0 for w in weights):
        logger.info("weights: nothing to set yet (no positive score)")
        scores.weights_not_set = "no positive score yet"
        return None
    nonzero = [(u, w) for u, w in zip(uids, weights, strict=True) if w > 0]
    try:
        outcome = await sink.set_weights([u for u, _ in nonzero], [w for _, w in nonzero])
    except WeightsNotSet as e:  # not a failure, and not a set: /health keeps the last real one
        logger.info("weights: not set this cycle: {}", e)
        scores.weights_not_set = str(e)
        return None
    scores.record_weights(dict(nonzero), snapshot)
    scores.weights_not_set = None
    if sink.name != "disabled":
        scores.last_weights_set_at, scores.weights_set_clock = time.time(), time.monotonic()
    await scores.save_off_loop()
    logger.info("weights: {} uids via {} -> {}; top {}", len(nonzero), sink.name, outcome,
                log_top([u for u, _ in nonzero], [w for _, w in nonzero]))
    return dict(nonzero)


def own_weights_refusal(snapshot: MetagraphSnapshot, hotkey: str) -> str | None:
    """Why the chain cannot take this validator's weights, as the metagraph says (None: it can): unregistered,
    or holding no validator permit. Submitted anyway, ``SetWeights`` was refused on chain every interval
    (``NeuronNoValidatorPermit``, which the SDK does not check on a Yuma subnet) and each refusal's fee
    was charged to the coldkey."""
    own = snapshot.by_hotkey(hotkey)
    if own is None:
        return f"hotkey {hotkey} is not registered on netuid {snapshot.netuid} (btcli subnets register)"
    if not own.validator_permit:
        return (f"this validator (uid {own.uid}) holds no validator permit; the chain gives one to the subnet's top "
                "validators by stake (btcli stake add)")
    return None
