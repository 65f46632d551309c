"""From scores to weights, and where weights go (the chain or the local ledger).

``compute_weights`` turns combined scores into a non-negative, normalised vector
that respects the subnet's hyperparameters: no uid above the max weight limit,
at least ``min_allowed`` non-zero entries. Scores are raised to ``power`` first:
a miner that is right only on the easy tasks (or copies) should earn a small
share, not a proportional one. ``to_u16`` is the chain's integer form (the
largest weight becomes 65535, as the SDK's normalisation does).

``WeightSink`` is the only door to the outside: ``ChainWeightSink`` submits the
SDK's ``SetWeights`` intent; ``LedgerWeightSink`` writes the local network's
ledger and the incentives in its metagraph file, so the API's miner selection
follows quality exactly as on chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from loguru import logger

from shared.metagraph import (
    FileMetagraphSource,
    MetagraphSnapshot,
    atomic_write_json,
    connected_client,
    write_metagraph_file,
)

U16_MAX = 65535


@dataclass(frozen=True)
class WeightRules:
    """The subnet's constraints: max share of one uid (fraction) and minimum non-zero entries."""

    max_weight: float = 1.0
    min_allowed: int = 1


def clip_max_weight(w: np.ndarray, limit: float) -> np.ndarray:
    """Cap normalised weights at ``limit``, handing the excess to uncapped non-zero entries pro rata."""
    w = w / w.sum()
    if limit >= 1.0:
        return w
    capped = np.zeros(w.shape, dtype=bool)
    for _ in range(w.size):
        over = w > limit + 1e-12
        if not over.any():
            break
        capped |= over
        excess = float((w[over] - limit).sum())
        w[over] = limit
        room = (~capped) & (w > 0)
        if not room.any():
            room = ~capped
        if not room.any():
            break
        base = w[room]
        w[room] = base + excess * (base / base.sum() if base.sum() > 0 else 1.0 / base.size)
    return w / w.sum()


def compute_weights(
    uids: np.ndarray, scores: np.ndarray, rules: WeightRules = WeightRules(), *, power: float = 1.0
) -> np.ndarray:
    """Normalised weights aligned with ``uids`` (all zeros when no uid has a positive score).

    A score that is not a finite number (NaN, inf: a hand-edited or damaged scores file) counts 0, and
    scores are scaled to their maximum before the power: a huge one overflowed to inf, and the whole
    vector to NaN."""
    s = np.clip(np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0), 0.0, None)
    if s.size == 0 or s.max() <= 0:
        return np.zeros(s.shape)
    positive = s > 0
    s = (s / s.max()) ** power
    w = s / s.sum()
    # Every positive score keeps at least the smallest u16 step: rounded to 0 (2.5% of the top after the
    # power of 3), the chain would drop it, and the minimum below would be counted on weights it never sees.
    # ``positive`` is taken before the power: a score under 1e-20 of the top one underflows to 0.0 at a power of 16.
    step = w.max() / U16_MAX
    w[positive & (w < step)] = step
    missing = rules.min_allowed - int(np.count_nonzero(w))
    if missing > 0:
        # Fill up to the minimum with the best remaining uids at the smallest u16 step.
        order = np.lexsort((uids, -s))
        fill = [i for i in order if w[i] == 0][:missing]
        w[fill] = step
    return fit_max_weight(uids, w / w.sum(), rules.max_weight)


def u16_top_share(uids: np.ndarray, weights: np.ndarray) -> float:
    """The largest share after ``to_u16``, as the chain measures it against ``MaxWeightsLimit``."""
    _, values = to_u16(uids, weights)
    return max(values) / sum(values) if values else 0.0


def fit_max_weight(uids: np.ndarray, w: np.ndarray, limit: float, *, tries: int = 20) -> np.ndarray:
    """``clip_max_weight``, its cap lowered until the u16 values (what the chain checks, normalised) keep
    the top share within ``limit`` too. Rounding every small entry to u16 moved mass to the capped top
    uid: 0.50016 of the vector under a 0.5 limit, which the chain refuses whole (``MaxWeightExceeded``)."""
    clipped = clip_max_weight(w.copy(), limit)
    if limit >= 1.0:
        return clipped
    cap = limit
    for _ in range(tries):
        over = u16_top_share(uids, clipped) - limit
        if over <= 0:
            return clipped
        cap -= over + 1.0 / U16_MAX
        if cap * w.size < 1.0:
            break  # no vector of this size fits under the cap: keep the closest one
        clipped = clip_max_weight(w.copy(), cap)
    return clipped


def to_u16(uids: np.ndarray, weights: np.ndarray) -> tuple[list[int], list[int]]:
    """Max-upscale to u16 (largest = 65535), rounding; zero entries are dropped."""
    if weights.size == 0 or weights.max() <= 0:
        return [], []
    q = np.rint(weights / weights.max() * U16_MAX).astype(np.int64)
    keep = q > 0
    return uids[keep].astype(np.int64).tolist(), q[keep].tolist()


def from_u16(values: list[int]) -> list[float]:
    total = sum(values)
    return [v / total for v in values] if total else []


class WeightSink(Protocol):
    name: str

    async def rules(self) -> WeightRules: ...

    async def wait_turn(self) -> None:
        """Wait until a set would be taken now, before the weights are computed (the chain's rate limit)."""
        ...

    async def set_weights(self, uids: list[int], weights: list[float]) -> str:
        """Submit normalised weights; returns a one-line outcome for the log. Raises on failure."""
        ...

    async def close(self) -> None: ...


class DisabledSink:
    """``NEURON_DISABLE_SET_WEIGHTS``: compute and log, set nothing."""

    name = "disabled"

    def __init__(self, rules: WeightRules = WeightRules()) -> None:
        self._rules = rules

    async def rules(self) -> WeightRules:
        return self._rules

    async def wait_turn(self) -> None:
        return None

    async def set_weights(self, uids: list[int], weights: list[float]) -> str:
        return "not set (NEURON_DISABLE_SET_WEIGHTS)"

    async def close(self) -> None:
        return None


class LedgerWeightSink:
    """The local network: ``weights.json`` plus incentives in the metagraph file."""

    name = "ledger"

    def __init__(self, ledger_path: str | Path, metagraph_file: str | Path | None, *, validator_hotkey: str,
                 rules: WeightRules = WeightRules()) -> None:
        self.ledger_path = Path(ledger_path)
        self.metagraph_file = Path(metagraph_file) if metagraph_file else None
        self.validator_hotkey = validator_hotkey
        self._rules = rules

    async def rules(self) -> WeightRules:
        return self._rules

    async def wait_turn(self) -> None:
        return None

    async def set_weights(self, uids: list[int], weights: list[float]) -> str:
        dests, values = to_u16(np.asarray(uids, dtype=np.int64), np.asarray(weights, dtype=np.float64))
        if not dests:
            raise ValueError("no non-zero weight to set")
        shares = dict(zip(dests, from_u16(values), strict=True))
        block = await self._update_metagraph(shares)
        atomic_write_json(self.ledger_path, {
            "set_at": time.time(), "block": block, "validator_hotkey": self.validator_hotkey,
            "uids": dests, "weights_u16": values, "weights": {str(u): s for u, s in shares.items()},
        })
        return f"ledger {self.ledger_path} ({len(dests)} uids, block {block})"

    async def _update_metagraph(self, shares: dict[int, float]) -> int | None:
        """Incentive follows the (single) validator's weights; the block advances by one."""
        if self.metagraph_file is None:
            return None
        snapshot = await FileMetagraphSource(self.metagraph_file).fetch()
        neurons = tuple(replace(n, incentive=shares.get(n.uid, 0.0)) for n in snapshot.neurons)
        updated = MetagraphSnapshot(netuid=snapshot.netuid, block=snapshot.block + 1, neurons=neurons)
        write_metagraph_file(self.metagraph_file, updated)
        return updated.block

    async def close(self) -> None:
        return None


@dataclass
class ChainLimits:
    """What the chain says about this validator setting weights, as the chain sink last read it: at start
    (``read_limits``) and at every weights cycle (``rules``). ``/ready`` and the start checks read this
    copy: the event loop never waits on the chain for them."""

    netuid: int
    rate_limit_blocks: int | None = None  # ``WeightsSetRateLimit``: blocks between two sets of one hotkey
    block_seconds: float | None = None  # the chain's block time (12 s on finney, 0.25 s on a fast local chain)
    # why ``block_seconds`` is the sink's assumption, not the chain's (its error when asked; None: the chain said it)
    block_seconds_assumed: str | None = None
    # ``StakeThreshold``: the stake weight a hotkey needs to set weights (the subnet owner's is exempt), in
    # TAO/alpha units (the chain keeps it in rao); the SDK's preflight does not check it, the chain does
    stake_threshold: float | None = None
    read_at: float | None = None  # when the values were last read
    error: str | None = None  # why the last read failed (the values are the last read's, or None)

    @property
    def rate_limit_seconds(self) -> float | None:
        if self.rate_limit_blocks is None or self.block_seconds is None:
            return None
        return self.rate_limit_blocks * self.block_seconds


class WeightsNotSet(RuntimeError):
    """The chain would not take weights now (its rate limit): the cycle records nothing as set."""


class ChainWeightSink:
    """On chain through the SDK: hyperparameters read from the subnet, ``SetWeights`` executed.

    ``client_factory`` builds a ``bt.Client`` inside the running loop (tests pass
    one over the SDK doc's ``FakeSubstrate``); ``wallet`` is anything with
    ``hotkey``/``coldkey``/``coldkeypub`` (a ``bt.Wallet`` in production).
    """

    name = "chain"

    def __init__(self, client_factory: Callable[[], Any], wallet: Any, netuid: int, *,
                 block_seconds: float = 12.0, max_wait: float = 300.0, retries: int = 2) -> None:
        self.client_factory = client_factory
        self.wallet = wallet
        self.netuid = netuid
        self.block_seconds = block_seconds  # the block time assumed when the chain does not say its own
        self.max_wait = max_wait  # the longest wait for the rate limit before giving up this cycle
        self.retries = retries  # resubmissions of a set the pool refused for a transient reason
        self.limits = ChainLimits(netuid)
        self._client: Any = None

    async def _connected(self) -> Any:
        if self._client is None:
            self._client = await connected_client(self.client_factory)
        return self._client

    async def rules(self) -> WeightRules:
        client = await self._connected()
        max_limit = await client.hyperparameters.max_weight_limit(self.netuid)
        min_allowed = await client.hyperparameters.min_allowed_weights(self.netuid)
        await self._read_limits(client)  # each cycle: a subnet owner may change them
        return WeightRules(max_weight=float(max_limit) / U16_MAX, min_allowed=int(min_allowed or 1))

    async def read_limits(self) -> ChainLimits:
        """Read the chain's weights rate limit, block time and minimum stake to set weights into ``limits``
        (a failure is kept in ``limits.error``, never raised)."""
        try:
            client = await self._connected()
        except Exception as e:  # noqa: BLE001 - said in limits.error, and by the start check
            self.limits.error = f"{type(e).__name__}: {e}"
            return self.limits
        await self._read_limits(client)
        return self.limits

    async def _read_limits(self, client: Any) -> None:
        import bittensor as bt

        try:
            rate_limit = await client.hyperparameters.weights_rate_limit(self.netuid)
            threshold = await client.query(bt.storage.SubtensorModule.StakeThreshold)
            block_seconds = await self._block_seconds(client)
        except Exception as e:  # noqa: BLE001 - never fails a weights cycle: kept for /ready
            self.limits.error = f"{type(e).__name__}: {e}"
            return
        self.limits.rate_limit_blocks = int(rate_limit) if rate_limit is not None else None
        # kept in rao: the SDK's Balance gives it in TAO/alpha units, as the metagraph's stake (``stake_amount``)
        self.limits.stake_threshold = bt.Balance.from_rao(int(threshold)).amount if threshold is not None else None
        self.limits.block_seconds = block_seconds
        self.limits.read_at, self.limits.error = time.time(), None

    async def _block_seconds(self, client: Any) -> float:
        """The chain's block time (the SDK reads it once and caches it), or ``block_seconds`` when the chain
        does not say. The rate limit's wait and ``/ready``'s ``weights_rate_limit`` both use this one: a wait
        counted at 12 s a block on a 0.25 s local chain was 48 times too long, and past ``max_wait`` set
        nothing at all. The assumption is kept in ``limits.block_seconds_assumed`` and said once in the log:
        taken quietly, ``/ready`` quoted it as if the chain had said it."""
        try:
            seconds = float(await client.block_time())
        except Exception as e:  # noqa: BLE001 - a chain that does not say: the sink's own assumption
            if self.limits.block_seconds_assumed is None:
                logger.warning("weights: the chain did not say its block time ({}: {}): {:g} s a block assumed for "
                               "the rate limit's wait and /ready", type(e).__name__, e, self.block_seconds)
            self.limits.block_seconds_assumed = f"{type(e).__name__}: {e}"
            return self.block_seconds
        if self.limits.block_seconds_assumed is not None:
            logger.info("weights: the chain says its block time again: {:g} s", seconds)
            self.limits.block_seconds_assumed = None
        return seconds

    async def wait_turn(self) -> None:
        """Wait out the weights rate limit, when it is within ``max_wait``, before the weights cycle reads the
        metagraph and computes the weights (``loops.fresh_weights_cycle``). Waited in ``set_weights`` alone, the
        weights set were computed up to ``max_wait`` earlier, on a metagraph in which a uid re-registered meanwhile
        by another hotkey still had its previous owner, who was paid. A longer wait, or a hotkey not registered:
        no wait here, and the set says why (``set_weights`` meets the same)."""
        client = await self._connected()
        uid = await client.neurons.uid(self.wallet.hotkey.ss58_address, self.netuid)
        if uid is None:
            return
        with contextlib.suppress(WeightsNotSet):
            await self._wait_for_rate_limit(client, uid)

    async def set_weights(self, uids: list[int], weights: list[float]) -> str:
        import bittensor as bt

        client = await self._connected()
        hotkey = self.wallet.hotkey.ss58_address
        uid = await client.neurons.uid(hotkey, self.netuid)
        if uid is None:
            raise RuntimeError(f"hotkey {hotkey} is not registered on netuid {self.netuid}")
        await self._wait_for_rate_limit(client, uid)
        version = int(await client.query(bt.storage.SubtensorModule.WeightsVersionKey, [self.netuid]) or 0)
        intent = bt.SetWeights(netuid=self.netuid, weights=dict(zip(uids, weights, strict=True)),
                               version_key=version)
        try:
            # retries: the SDK resubmits a block later when the pool refuses for a transient reason
            # ("priority is too low", an outdated nonce): the set was otherwise lost for a whole interval
            result = await client.execute(intent, self.wallet, wait_for_finalization=False, retries=self.retries)
        except bt.ChainError as e:  # the SDK's preflight: rate limit, not registered, too few weights
            raise _refusal(e) from e
        if not result:
            error = getattr(result, "error", None)
            raise _refusal(error) if error is not None else RuntimeError(f"SetWeights failed: {result.message}")
        return f"chain netuid {self.netuid}: {len(uids)} uids set ({getattr(result, 'message', 'ok')})"

    async def _wait_for_rate_limit(self, client: Any, uid: int) -> None:
        """Wait out the subnet's weights rate limit (up to ``max_wait``); WeightsNotSet if it still holds."""
        waited = False
        while True:
            rate_limit = await client.hyperparameters.weights_rate_limit(self.netuid)
            since = await client.epochs.blocks_since_last_update(self.netuid, uid)
            if since is None or rate_limit is None or since >= rate_limit:
                return
            wait = (rate_limit - since) * await self._block_seconds(client)
            if waited or wait > self.max_wait:
                raise WeightsNotSet(f"rate limited ({since} of {rate_limit} blocks since the last update)")
            logger.info("weights: rate limited, waiting {:.0f} s ({} blocks)", wait, rate_limit - since)
            await asyncio.sleep(wait)
            waited = True

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


def _refusal(error: Any) -> Exception:
    """The exception for a set the chain (or the SDK's preflight) refused, from its ``ChainError``.

    "Too soon" (the weights rate limit: another process with this hotkey set weights, or the chain's
    count differs from ours) is not a failure: WeightsNotSet, nothing recorded as set, tried again next
    cycle. Anything else names the chain's error and what to do about it (a bare message such as
    "Extrinsic failed" told the operator nothing)."""
    import bittensor as bt

    if getattr(error, "code", None) == bt.ErrorCode.RATE_LIMITED:
        return WeightsNotSet(f"rate limited by the chain: {error}")
    name = getattr(error, "name", None) or getattr(getattr(error, "code", None), "value", None) or "error"
    remediation = getattr(error, "remediation", None)
    return RuntimeError(f"SetWeights refused ({name}): {error}" + (f"; {remediation}" if remediation else ""))


def log_top(uids: list[int], weights: list[float], n: int = 5) -> str:
    top = sorted(zip(uids, weights, strict=True), key=lambda p: -p[1])[:n]
    return ", ".join(f"{u}:{w:.3f}" for u, w in top)


def weights_from_scores(scores: dict[int, float], rules: WeightRules, power: float) -> tuple[list[int], list[float]]:
    """Dict in, parallel lists out (uids sorted); zero weights are kept so the caller sees every uid."""
    uids = np.asarray(sorted(scores), dtype=np.int64)
    w = compute_weights(uids, np.asarray([scores[int(u)] for u in uids]), rules, power=power)
    if not w.any():
        logger.debug("no positive score yet")
    return [int(u) for u in uids], [float(x) for x in w]
