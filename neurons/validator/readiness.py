"""Whether the validator is doing its job: ``GET /ready``, ``/health``'s ``status`` and ``/metrics``' checks.

One check per thing that stops it (or will soon), each with a line an operator can act on. Required checks
make ``/ready`` a 503 (``/health``: ``"degraded"``); warnings are said and leave it a 200. Every check reads
what the validator already holds in memory (the book, the scores, the inbox's and the reference model's
last outcome, what the chain sink last read): ``/ready`` does no disk or chain I/O, and costs microseconds.

Which are required: what stops the validator's output (availability for the API processes, scores that
survive a restart, payloads accepted, jobs scored, weights set) now or within an interval. Warnings: what
an operator should know and may act on, while the validator still does its job (a full scoring lane is
backpressure that the APIs' outboxes absorb; a weights interval shorter than the chain's rate limit still
sets weights, at the chain's pace).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from loguru import logger

from neurons.validator.loops import own_weights_refusal
from neurons.validator.recheck import RECHECK_SECONDS
from neurons.validator.weights import ChainLimits
from shared.aio import within
from shared.readiness import CheckOut, ReadyOut, metagraph_check, ready_out
from shared.store.outage import RECHECK, START, TRAFFIC, OutageLog

if TYPE_CHECKING:
    from neurons.validator.app import ValidatorContext

MIN_AVAILABILITY_LIMIT = 60.0  # seconds: the shortest age at which availability counts as stale
POLLS_MISSED = 3  # availability older than this many AVAILABILITY_INTERVALs (plus a poll's timeout) is stale
WEIGHTS_MISSED = 3  # no weights set for this many WEIGHTS_INTERVALs (or chain rate limits) is a failure
CHAIN_READ_SECONDS = 15.0  # the longest the start waits for the chain's limits
TRIED_BY: Mapping[str, str] = MappingProxyType({
    TRAFFIC: "traffic", RECHECK: f"the recheck, every {RECHECK_SECONDS:g}s while no traffic tries",
    START: "the check at start"})


@dataclass
class ReadinessConfig:
    """What the checks measure against: settings, the weight sink, the start time and the chain's limits."""

    hotkey: str | None = None  # this validator's hotkey (None: its standing is not checked)
    sink: str = "disabled"  # the weight sink's name: "chain", "ledger" or "disabled"
    availability_interval: float = 30.0
    availability_timeout: float = 10.0
    weights_interval: float = 600.0
    started_at: float = field(default_factory=time.monotonic)  # ``time.monotonic()``: the ages are told on it
    chain: ChainLimits | None = None  # the chain sink's last read of the chain's limits (None: another sink)


def metagraph(ctx: ValidatorContext) -> CheckOut:
    """Required (the API's check, shared): an old metagraph polls miners that left, credits uids that changed
    hands, and sizes the weights vector wrong."""
    return metagraph_check(ctx.metagraph, ctx.metagraph.refresh_seconds)


def availability(ctx: ValidatorContext) -> CheckOut:
    """Required: availability is what the API processes ask this validator for, and what synthetic jobs are
    sampled from. Stale after ``POLLS_MISSED`` intervals plus a poll's timeout (at least 60 s); before the
    first poll ends, counted from the start."""
    cfg, book = ctx.readiness, ctx.book
    limit = max(MIN_AVAILABILITY_LIMIT, POLLS_MISSED * cfg.availability_interval + cfg.availability_timeout)
    if book.refused_by_all:
        why = ("at the last poll every miner refused this validator's signature (HTTP 401/403): check its "
               "validator permit (the permit check) and this host's clock")
    else:
        why = ("the availability cycles fail or outlast the limit ('availability cycle failed' in the log; "
               "AVAILABILITY_TIMEOUT, AVAILABILITY_CONCURRENCY)")
    age = book.age()
    if age is not None:
        if age <= limit:
            up = sum(1 for e in book.entries.values() if e)
            return CheckOut(ok=True, detail=f"{up} of {len(book.entries)} polled miner(s) up, {age:.0f}s old")
        return CheckOut(ok=False, detail=f"the last availability poll ended {age:.0f}s ago (limit {limit:.0f}s): the "
                                         f"API processes are served stale availability; {why}")
    since = time.monotonic() - cfg.started_at
    if since <= limit:
        return CheckOut(ok=True, detail=f"the first poll has not ended yet ({since:.0f}s since start)")
    return CheckOut(ok=False, detail=f"no availability poll has ended in the {since:.0f}s since start (limit "
                                     f"{limit:.0f}s): the API processes get none; {why}")


def miners(ctx: ValidatorContext) -> CheckOut:
    """A warning: no miner answering leaves nothing to score, but the miners' fault is not the validator's
    (and when it is, a host that cannot reach them, the availability WARNING names one's reason)."""
    book = ctx.book
    if book.polled_at is None:
        return CheckOut(ok=True, required=False, detail="no availability poll has ended yet")
    if not book.entries:
        return CheckOut(ok=False, required=False, detail="the metagraph lists no serving miner (none has an axon): "
                                                         "nothing to poll or score")
    up = sum(1 for e in book.entries.values() if e)
    if not up:
        return CheckOut(ok=False, required=False,
                        detail=f"none of the {len(book.entries)} serving miner(s) answered the last availability "
                               "poll: nothing is scored; can this host reach them? (the log's availability "
                               "WARNING names one's reason)")
    return CheckOut(ok=True, required=False, detail=f"{up} of {len(book.entries)} serving miner(s) answered")


def scores(ctx: ValidatorContext) -> CheckOut:
    """Required: scores that cannot be saved are kept in memory and lost at the next restart (weeks of them),
    and the disk that refuses them is the scoring inbox's too."""
    book = ctx.scores
    if book.path is None:
        return CheckOut(ok=True, detail="kept in memory only (no STATE_DIR)")
    if book.save_error:
        return _tried(book.save_outage, f"scores cannot be saved to {book.path} ({book.save_error}): kept in memory "
                                        "and lost at a restart; is STATE_DIR full or read-only?")
    return CheckOut(ok=True, detail=f"saved to {book.path}")


def scoring_inbox(ctx: ValidatorContext) -> CheckOut:
    """Required: an inbox that refuses writes makes every ``/scoring`` a 503 (``store_unavailable``), so no
    organic answer is scored. Known from the last write a ``/scoring`` tried (no write of its own here)."""
    inbox = ctx.inbox
    if inbox is None:
        return CheckOut(ok=True, detail="not used (payloads are kept in memory)")
    if inbox.refused.failing:
        since = inbox.refused.failing_for
        return _tried(inbox.refused, f"the scoring inbox {inbox.path} refused the last write ({since:.0f}s into a "
                                     f"run of failures: {inbox.refused.last_error}): /scoring answers 503 "
                                     "store_unavailable and the APIs keep the payloads in their outboxes; is "
                                     "STATE_DIR's disk full or read-only?")
    return CheckOut(ok=True, detail=f"{inbox.path} takes writes")


def scoring_queue(ctx: ValidatorContext) -> CheckOut:
    """A warning: a full organic lane is backpressure (``/scoring`` answers 503 ``queue_full``, the APIs'
    outboxes keep the payloads and send them again), not a stop; one that stays full says scoring is slower
    than organic traffic."""
    queue = ctx.scoring_queue
    waiting = ctx.inbox.waiting if ctx.inbox is not None else 0
    if waiting:
        return CheckOut(ok=False, required=False,
                        detail=f"{waiting} payload(s) from before a restart wait on disk for room in the organic "
                               "lane: /scoring answers 503 queue_full until they are loaded")
    by_bytes = queue.max_bytes is not None and queue.organic_bytes >= queue.max_bytes
    if queue.qsize() >= queue.maxsize or by_bytes:
        return CheckOut(ok=False, required=False,
                        detail=f"the organic scoring lane is full ({queue.qsize()}/{queue.maxsize} payloads, "
                               f"{queue.organic_bytes}/{queue.max_bytes or '-'} bytes): /scoring answers 503 "
                               "queue_full and the APIs hold the payloads in their outboxes; scoring is slower "
                               "than organic traffic (SCORING_WORKERS, the reference model's speed)")
    return CheckOut(ok=True, required=False, detail=f"{queue.qsize()}/{queue.maxsize} organic payload(s) waiting")


def reference(ctx: ValidatorContext) -> CheckOut:
    """Required: while the reference model fails, every job it is asked for is skipped (not scored 0), so
    scores stand still and the weights set go on paying for the past. Failing from the first job skipped for
    it (the run the log tells, ``ReferenceStatus.outage``): one call that answers clears it."""
    status, run = ctx.reference, ctx.reference.outage
    if run.failing:
        since = run.failing_for
        error = run.last_error if run.tried_by == RECHECK else status.last_error  # the recheck's question is no call
        return _tried(run, f"the reference model ({status.kind}) failed its last {run.failures} call(s), for "
                           f"{since:.0f}s: {error}; every job it is asked for is skipped and the scores stand still")
    if not status.calls:
        return CheckOut(ok=True, detail=f"{status.kind}: no call yet")
    return CheckOut(ok=True, detail=f"{status.kind}: {status.calls} call(s), the last one answered")


def _tried(run: OutageLog, detail: str) -> CheckOut:
    """A failing check the recheck tries again while no traffic does (``recheck.py``): ``detail``, then when it
    was last tried and by what (an operator of a validator stuck "not ready" could not tell whether it was still
    tried), in words and in ``last_tried_at`` / ``last_tried_by``."""
    ago = run.tried_ago
    if ago is None or run.tried_by is None:
        return CheckOut(ok=False, detail=detail)
    return CheckOut(ok=False, detail=f"{detail} (last tried {ago:.0f}s ago, by {TRIED_BY[run.tried_by]})",
                    last_tried_at=run.tried_at, last_tried_by=run.tried_by)


def _on_chain(ctx: ValidatorContext) -> bool:
    return ctx.readiness.sink == "chain"


def permit(ctx: ValidatorContext) -> CheckOut:
    """Required when weights go on chain: unregistered or without a validator permit, the validator sets no
    weights (the chain refuses them) and miners refuse its requests. A warning otherwise (the local network's
    ledger takes any weights; miners may allow-list the hotkey)."""
    cfg, snapshot = ctx.readiness, ctx.metagraph.snapshot
    required = _on_chain(ctx)
    if cfg.hotkey is None:
        return CheckOut(ok=True, required=required, detail="not checked (no hotkey given)")
    if not snapshot.neurons:
        return CheckOut(ok=True, required=required, detail="not checked: the metagraph has not been loaded")
    refusal = own_weights_refusal(snapshot, cfg.hotkey)
    if refusal is not None:
        return CheckOut(ok=False, required=required,
                        detail=f"{refusal}: the chain refuses its weights, and miners its requests unless they "
                               "allow-list it")
    own = snapshot.by_hotkey(cfg.hotkey)
    return CheckOut(ok=True, required=required, detail=f"uid {own.uid if own else '-'} holds a validator permit")


def _stake_shortfall(ctx: ValidatorContext) -> tuple[float, float] | None:
    """(this validator's stake, the chain's minimum) when the stake is below it; None otherwise or unknown."""
    cfg, snapshot = ctx.readiness, ctx.metagraph.snapshot
    limits = cfg.chain
    if not _on_chain(ctx) or limits is None or limits.stake_threshold is None or cfg.hotkey is None:
        return None
    own = snapshot.by_hotkey(cfg.hotkey)
    if own is None or snapshot.owner_hotkey == cfg.hotkey:
        return None
    return (own.stake, limits.stake_threshold) if own.stake < limits.stake_threshold else None


def stake(ctx: ValidatorContext) -> CheckOut:
    """Required when weights go on chain: below the chain's ``StakeThreshold`` every set is refused
    (``NotEnoughStakeToSetWeights``; the SDK's preflight does not check it) and its fee still charged.
    Read from the chain at start and at every weights cycle. The stake is the metagraph's ``total_stake``: the
    stake weight (alpha stake + TAO stake x ``TaoWeight``) that the chain's ``check_weights_min_stake``
    compares with the threshold, not ``alpha_stake`` alone (which would fail a validator staked in TAO)."""
    cfg = ctx.readiness
    if not _on_chain(ctx):
        return CheckOut(ok=True, required=False, detail="not checked: weights are not set on chain")
    limits = cfg.chain
    if limits is None or limits.stake_threshold is None:
        error = f" ({limits.error})" if limits is not None and limits.error else ""
        return CheckOut(ok=True, detail=f"not checked: the chain's minimum stake to set weights is not read yet{error}")
    short = _stake_shortfall(ctx)
    if short is not None:
        return CheckOut(ok=False, detail=f"this validator's stake weight {short[0]:,.2f} is below the chain's minimum "
                                         f"to set weights ({short[1]:,.2f}, StakeThreshold): every set is refused "
                                         f"(NotEnoughStakeToSetWeights); stake to hotkey {cfg.hotkey} (btcli stake add)")
    own = ctx.metagraph.snapshot.by_hotkey(cfg.hotkey or "")
    if own is None:
        return CheckOut(ok=True, detail="not checked: this hotkey is not registered (the permit check)")
    if ctx.metagraph.snapshot.owner_hotkey == cfg.hotkey:
        return CheckOut(ok=True, detail="the subnet owner's hotkey: exempt from the chain's minimum stake")
    return CheckOut(ok=True, detail=f"stake weight {own.stake:,.2f}, the chain's minimum {limits.stake_threshold:,.2f}")


def _weights_limit(cfg: ReadinessConfig) -> float:
    """How long without a set is a failure: ``WEIGHTS_MISSED`` weights intervals, or chain rate limits when
    those are longer (the chain takes a set no more often)."""
    rate_limit = cfg.chain.rate_limit_seconds if cfg.chain is not None else None
    return WEIGHTS_MISSED * max(cfg.weights_interval, rate_limit or 0.0)


def _cannot_set(ctx: ValidatorContext) -> bool:
    """The chain would refuse this validator's weights now (the permit and stake checks say why)."""
    cfg, snapshot = ctx.readiness, ctx.metagraph.snapshot
    if not _on_chain(ctx) or cfg.hotkey is None or not snapshot.neurons:
        return False
    return own_weights_refusal(snapshot, cfg.hotkey) is not None or _stake_shortfall(ctx) is not None


def weights(ctx: ValidatorContext) -> CheckOut:
    """Required when this validator sets weights: none set for ``WEIGHTS_MISSED`` intervals (counted from the
    last set, or from the start: a restart after a day down is not failing at once) while it could set them.
    Without them the chain pays miners by its old weights, then by none. While the chain would refuse them
    (no permit, too little stake) this passes: those checks fail instead, with what to do."""
    cfg, book = ctx.readiness, ctx.scores
    if cfg.sink == "disabled":
        return CheckOut(ok=True, required=False, detail="not set by this validator (NEURON_DISABLE_SET_WEIGHTS, or "
                                                        "METAGRAPH_FILE without WEIGHTS_LEDGER_FILE)")
    if _cannot_set(ctx):
        return CheckOut(ok=True, detail="not expected while the chain would refuse them (the permit and stake checks)")
    limit = _weights_limit(cfg)
    never = book.weights_set_clock is None
    age = time.monotonic() - (cfg.started_at if book.weights_set_clock is None else book.weights_set_clock)
    if age > limit:
        last = book.weights_not_set or "none has ended"
        return CheckOut(ok=False, detail=f"no weights set {'since start, ' if never else 'for '}{age:.0f}s (limit "
                                         f"{limit:.0f}s, {WEIGHTS_MISSED} WEIGHTS_INTERVALs or chain rate limits); "
                                         f"the last cycle: {last}")
    if never:
        return CheckOut(ok=True, detail=f"none set yet, {age:.0f}s since start (limit {limit:.0f}s)")
    return CheckOut(ok=True, detail=f"last set {age:.0f}s ago (limit {limit:.0f}s)")


def last_weights_cycle(ctx: ValidatorContext) -> CheckOut:
    """A warning: one cycle that set nothing (no positive score yet, the chain's rate limit, a refusal) is
    not a stop; the ``weights`` check fails once they add up to ``WEIGHTS_MISSED`` intervals."""
    if ctx.readiness.sink == "disabled":
        return CheckOut(ok=True, required=False, detail="not set by this validator")
    if ctx.scores.weights_not_set:
        return CheckOut(ok=False, required=False, detail=f"the last weights cycle set nothing: "
                                                         f"{ctx.scores.weights_not_set}")
    if ctx.scores.weights_set_clock is not None:
        return CheckOut(ok=True, required=False, detail="the last cycle set weights")
    return CheckOut(ok=True, required=False, detail="no cycle has ended since start")


def weights_rate_limit(ctx: ValidatorContext) -> CheckOut:
    """A warning: a ``WEIGHTS_INTERVAL`` shorter than the chain's weights rate limit still sets weights, at
    the chain's pace, but the cycles in between set nothing (``rate limited``) or wait for it."""
    cfg = ctx.readiness
    if not _on_chain(ctx):
        return CheckOut(ok=True, required=False, detail="not checked: weights are not set on chain")
    limits = cfg.chain
    seconds = limits.rate_limit_seconds if limits is not None else None
    if limits is None or seconds is None:
        error = f" ({limits.error})" if limits is not None and limits.error else ""
        return CheckOut(ok=True, required=False, detail=f"not checked: the chain's weights rate limit is not read "
                                                        f"yet{error}")
    assumed = (f", the block time assumed: the chain did not answer ({limits.block_seconds_assumed})"
               if limits.block_seconds_assumed else "")
    what = (f"the chain's weights rate limit on netuid {limits.netuid} ({limits.rate_limit_blocks} blocks x "
            f"{limits.block_seconds:g} s = {seconds:g} s{assumed})")
    if cfg.weights_interval < seconds:
        return CheckOut(ok=False, required=False,
                        detail=f"WEIGHTS_INTERVAL ({cfg.weights_interval:g} s) is shorter than {what}: the cycles in "
                               f"between set nothing (rate limited) or wait for it; set WEIGHTS_INTERVAL to at least "
                               f"{math.ceil(seconds)}")
    return CheckOut(ok=True, required=False, detail=f"WEIGHTS_INTERVAL ({cfg.weights_interval:g} s) is no shorter "
                                                    f"than {what}")


CHECKS: Mapping[str, Callable[[ValidatorContext], CheckOut]] = MappingProxyType({
    "metagraph": metagraph, "availability": availability, "scores": scores, "scoring_inbox": scoring_inbox,
    "reference": reference, "permit": permit, "stake": stake, "weights": weights,
    "miners": miners, "scoring_queue": scoring_queue, "last_weights_cycle": last_weights_cycle,
    "weights_rate_limit": weights_rate_limit,
})
START_CHECKS = ("weights_rate_limit", "stake")  # the ones the start reads the chain for, and warns about


def readiness(ctx: ValidatorContext) -> ReadyOut:
    """Every check, from memory alone (cheap enough for every ``/health``, ``/ready`` and scrape)."""
    return ready_out({name: check(ctx) for name, check in CHECKS.items()})


async def start_checks(ctx: ValidatorContext, read_limits: Callable[[], object] | None,
                       timeout: float = CHAIN_READ_SECONDS) -> None:
    """At start: read the chain's limits (``read_limits``: the chain sink's, None for another sink) within
    ``timeout``, and say each of ``START_CHECKS`` that fails in a WARNING, in ``/ready``'s words (it says
    them too, while they hold). A chain that cannot be read delays nothing: read again at each weights cycle."""
    limits = ctx.readiness.chain
    if read_limits is not None and limits is not None:
        try:
            await within(read_limits(), timeout)  # type: ignore[arg-type]
        except TimeoutError:
            limits.error = f"no answer within {timeout:g} s"
        if limits.error:
            logger.warning("chain: the weights rate limit and the minimum stake to set weights could not be read "
                           "({}): read again at each weights cycle, /ready says them then", limits.error)
    for name in START_CHECKS:
        check = CHECKS[name](ctx)
        if not check.ok:
            logger.warning("{}: {}", name, check.detail)
