"""The metagraph, from the chain or from a local JSON file, behind one interface.

Only ``ChainMetagraphSource`` touches the SDK's chain client; everything else
reads immutable ``MetagraphSnapshot`` objects through a ``MetagraphView`` that
refreshes in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from loguru import logger

from shared.public_address import is_public
from shared.store.outage import OutageLog, Voice


@dataclass(frozen=True, slots=True)
class Neuron:
    uid: int
    hotkey: str
    coldkey: str = ""
    axon: str | None = None  # "ip:port", None when nothing is served
    stake: float = 0.0
    incentive: float = 0.0
    validator_permit: bool = False

    @property
    def url(self) -> str | None:
        return f"http://{self.axon}" if self.axon else None


@dataclass(frozen=True)
class MetagraphSnapshot:
    netuid: int
    block: int
    neurons: tuple[Neuron, ...]
    # ``time.monotonic()`` when read, for its age (``/ready``'s metagraph check): on the wall clock, an NTP step
    # forward past the limit failed every process's check at once, and one back told a negative age
    fetched_at: float = field(default_factory=time.monotonic)
    # the subnet owner's hotkey, where the source says (the chain's metagraph): exempt from the chain's
    # minimum stake to set weights
    owner_hotkey: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_uid", {n.uid: n for n in self.neurons})
        object.__setattr__(self, "_by_hotkey", {n.hotkey: n for n in self.neurons})
        object.__setattr__(
            self, "_permitted", frozenset(n.hotkey for n in self.neurons if n.validator_permit)
        )

    def by_uid(self, uid: int) -> Neuron | None:
        return self._by_uid.get(uid)  # type: ignore[attr-defined]

    def by_hotkey(self, hotkey: str) -> Neuron | None:
        return self._by_hotkey.get(hotkey)  # type: ignore[attr-defined]

    @property
    def permitted_hotkeys(self) -> frozenset[str]:
        return self._permitted  # type: ignore[attr-defined]

    def serving(self, exclude_hotkey: str | None = None) -> list[Neuron]:
        """Neurons with an axon, other than ourselves: the miners we may call."""
        return [n for n in self.neurons if n.axon and n.hotkey != exclude_hotkey]

    def to_json(self) -> dict[str, Any]:
        return {"netuid": self.netuid, "block": self.block, "neurons": [asdict(n) for n in self.neurons]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MetagraphSnapshot:
        neurons = tuple(
            Neuron(
                uid=int(n["uid"]),
                hotkey=str(n["hotkey"]),
                coldkey=str(n.get("coldkey", "")),
                axon=n.get("axon") or None,
                stake=float(n.get("stake", 0.0)),
                incentive=float(n.get("incentive", 0.0)),
                validator_permit=bool(n.get("validator_permit", False)),
            )
            for n in data.get("neurons", [])
        )
        return cls(netuid=int(data.get("netuid", 0)), block=int(data.get("block", 0)), neurons=neurons)


class MetagraphSource(Protocol):
    async def fetch(self) -> MetagraphSnapshot: ...

    async def close(self) -> None: ...


class FileMetagraphSource:
    """The local network's metagraph: a JSON file written by ``sn1 localnet`` and the weight ledger."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    async def fetch(self) -> MetagraphSnapshot:
        data = await asyncio.to_thread(self.path.read_text)
        return MetagraphSnapshot.from_json(json.loads(data))

    async def close(self) -> None:
        return None


def write_metagraph_file(path: str | Path, snapshot: MetagraphSnapshot) -> None:
    """Atomic write (temp file + rename) so readers never see half a file."""
    atomic_write_json(path, snapshot.to_json())


def atomic_write_json(path: str | Path, data: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path))
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def remove_temp_files(path: str | Path) -> int:
    """Remove the temp files ``atomic_write_json`` left beside ``path`` when its process was killed between the
    write and the rename (each has its own name, so every such kill left one more); returns how many. Only for a
    file one process writes, at its start: another writer's temp file would be taken from under its rename."""
    path = Path(path)
    name = re.compile(re.escape(_temp_prefix(path)) + r"[a-z0-9_]{8}")
    removed = 0
    for leftover in path.parent.glob(_temp_prefix(path) + "*"):
        if not name.fullmatch(leftover.name):
            continue
        try:
            leftover.unlink(missing_ok=True)
        except OSError as e:  # not worth stopping a start for: said, and tried again at the next
            logger.warning("cannot remove {}, a temp file of {} ({})", leftover, path, e)
            continue
        removed += 1
    if removed:
        logger.info("removed {} temp file(s) of {} left by a stop in the middle of a write", removed, path)
    return removed


def stake_amount(balance: Any) -> float:
    """A neuron's stake as a number in its own unit: a subnet's ``total_stake`` is a ``bt.Balance`` in the
    subnet's alpha, whose ``.tao`` raises ``UnitMismatchError`` (a ``TypeError``, which ``hasattr`` does not
    swallow): read that way, every metagraph of a subnet other than root failed to load."""
    return float(getattr(balance, "amount", balance))


async def connected_client(make: Callable[[], Any]) -> Any:
    """A chain client built by ``make`` and connected, for its owner to keep: one whose connect fails is closed and
    raised, never kept. The SDK's client is usable only after a connect that worked (a read on one whose connect
    failed raises ``ConnectionNotReady`` whatever the node does since), so a client kept before its connect, as
    the metagraph source kept it, failed every later read with the node back."""
    client = make()
    try:
        await client.connect()
    except BaseException:
        with contextlib.suppress(Exception):  # what the failed connect left open; its error is the one to tell
            await client.close()
        raise
    return client


class ChainMetagraphSource:
    """Reads the subnet's metagraph through the bittensor SDK's async client."""

    def __init__(self, network: str, netuid: int) -> None:
        self.network = network
        self.netuid = netuid
        self._client: Any = None

    async def fetch(self) -> MetagraphSnapshot:
        import bittensor as bt

        if self._client is None:
            self._client = await connected_client(lambda: bt.Client(self.network))
        mg = await self._client.subnets.metagraph(self.netuid, commitments=False)
        if mg is None:
            raise RuntimeError(f"subnet {self.netuid} does not exist on {self.network}")
        neurons = tuple(
            Neuron(
                uid=n.uid,
                hotkey=n.hotkey,
                coldkey=n.coldkey,
                axon=n.axon,
                stake=stake_amount(n.total_stake),
                incentive=float(n.incentive),
                validator_permit=bool(n.validator_permit),
            )
            for n in mg.neurons
        )
        return MetagraphSnapshot(netuid=self.netuid, block=int(mg.block), neurons=neurons,
                                 owner_hotkey=getattr(mg, "owner_hotkey", None) or None)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


AxonPolicy = Callable[[str], bool]  # whether a miner's axon at this IP address may be called
MAX_AXONS_NAMED = 5  # of the axons not called, how many the WARNING names


def axon_host(axon: str) -> str:
    """The IP address of an ``ip:port`` or ``[v6]:port`` axon."""
    return axon.rpartition(":")[0].strip("[]")


def callable_axons(snapshot: MetagraphSnapshot, allowed: AxonPolicy) -> tuple[MetagraphSnapshot, list[Neuron]]:
    """``snapshot`` with each axon at an address not ``allowed`` taken away (its neuron serves nothing here), and
    the neurons whose axon was."""
    refused = [n for n in snapshot.neurons if n.axon and not allowed(axon_host(n.axon))]
    if not refused:
        return snapshot, []
    gone = {n.uid for n in refused}
    neurons = tuple(replace(n, axon=None) if n.uid in gone else n for n in snapshot.neurons)
    return replace(snapshot, neurons=neurons), refused


class MetagraphView:
    """The current snapshot plus a refresh loop. Readers never block on the network.

    ``axons``: which miners' axon addresses may be called (None: all). A hotkey publishes any IP it likes on chain
    (``10.0.0.7``, ``127.0.0.2``, ``169.254.169.254``): called as published, a stranger's registration had this
    host POST its callers' prompts, signed, into its own network (the reference model server a validator runs on
    ``127.0.0.1:8000`` answered them, scored as that miner's answers). Such a neuron is taken as serving no axon,
    and a WARNING names it whenever the set changes."""

    def __init__(self, source: MetagraphSource, *, refresh_seconds: float = 60.0,
                 axons: AxonPolicy | None = None, voice: Voice | None = None) -> None:
        self.source = source
        # refreshes that fail (a chain endpoint down): a run, told as every run is (it was a WARNING each refresh, and
        # nothing said when they worked again); ``voice``: an API fleet's workers all meet it, one tells it
        self.refresh_failures = OutageLog("metagraph refresh failed, keeping the last snapshot",
                                          back="a refresh succeeded again", voice=voice)
        self.refresh_seconds = refresh_seconds
        self.snapshot = MetagraphSnapshot(netuid=0, block=0, neurons=(), fetched_at=0.0)
        self._axons = axons
        self._refused: frozenset[str] = frozenset()  # the axons refused at the last refresh (``_callable``)

    async def refresh(self) -> MetagraphSnapshot:
        """Read the source; a read with no neurons after one that had some raises and keeps the last snapshot.

        A subnet never loses every uid (the chain gives a uid to a new hotkey, it does not remove it), so such
        a read is a bad one (a node that lagged or lost state, a metagraph file rewritten by hand). Taken, every
        uid "left": the validator dropped every score and saved the empty book over its scores file."""
        fetched = await self.source.fetch()
        if not fetched.neurons and self.snapshot.neurons:
            raise RuntimeError(f"the metagraph read from {self.source_label()} has no neurons (block {fetched.block}; "
                               f"the last had {len(self.snapshot.neurons)}): kept the last one")
        self.snapshot = self._callable(fetched)
        return self.snapshot

    def _callable(self, fetched: MetagraphSnapshot) -> MetagraphSnapshot:
        """``fetched`` with the axons ``axons`` refuses taken away, told once per change of them."""
        if self._axons is None:
            return fetched
        kept, refused = callable_axons(fetched, self._axons)
        axons = frozenset(f"uid {n.uid} at {n.axon}" for n in refused)
        if axons and axons != self._refused:
            named = sorted(axons)
            logger.warning("metagraph: {} miner(s) publish an axon at a private address, never called (PRIVATE_AXONS="
                           "true calls them, for a chain whose nodes share a private network): {}{}", len(named),
                           ", ".join(named[:MAX_AXONS_NAMED]), ", ..." if len(named) > MAX_AXONS_NAMED else "")
        self._refused = axons
        return kept

    def hotkey_of(self, uid: int) -> str | None:
        """The hotkey that owns ``uid`` now (None: no such uid)."""
        neuron = self.snapshot.by_uid(uid)
        return neuron.hotkey if neuron is not None else None

    async def first_refresh(self) -> MetagraphSnapshot:
        """The start-up read: a failure here is a configuration problem, reported as one line."""
        from shared.settings import SettingsError

        try:
            return await self.refresh()
        except Exception as e:  # noqa: BLE001 - any failure to read the source stops the start
            raise SettingsError(f"METAGRAPH_FILE/SUBTENSOR_NETWORK/NETUID: cannot read the metagraph from "
                                f"{self.source_label()}: {type(e).__name__}: {e}") from None

    def source_label(self) -> str:
        if isinstance(self.source, FileMetagraphSource):
            return f"file {self.source.path}"
        if isinstance(self.source, ChainMetagraphSource):
            return f"{self.source.network} netuid {self.source.netuid}"
        return type(self.source).__name__

    async def run(self, on_refresh: Callable[[MetagraphSnapshot], None] | None = None) -> None:
        """Refresh forever; a failed refresh keeps the last good snapshot. ``on_refresh`` is handed each new one."""
        while True:
            await asyncio.sleep(self.refresh_seconds)
            try:
                await self.refresh()
                logger.debug("metagraph refreshed: {} neurons at block {}", len(self.snapshot.neurons), self.snapshot.block)
                if on_refresh is not None:
                    on_refresh(self.snapshot)
                self.refresh_failures.ok()
            except Exception as e:  # noqa: BLE001 - a refresh failure must not kill the loop
                self.refresh_failures.failed(f"{type(e).__name__}: {e}")

    @classmethod
    def from_settings(cls, settings: Any, *, calls_miners: bool = True, voice: Voice | None = None) -> MetagraphView:
        """The view every process builds: the file source for the local network, else the chain. A process that
        ``calls_miners`` (the API, the validator) calls only public axons read from the chain, unless
        ``PRIVATE_AXONS``; a metagraph file's (the local network's, on 127.0.0.1) are all called."""
        private = bool(settings.metagraph_file) or settings.private_axons or not calls_miners
        return cls(make_source(settings.metagraph_file, settings.subtensor_network, settings.netuid),
                   refresh_seconds=settings.metagraph_refresh_seconds, axons=None if private else is_public, voice=voice)

    def permitted_hotkeys(self) -> frozenset[str]:
        return self.snapshot.permitted_hotkeys

    @property
    def age_seconds(self) -> float:
        return time.monotonic() - self.snapshot.fetched_at


def make_source(metagraph_file: str | None, network: str, netuid: int) -> MetagraphSource:
    if metagraph_file:
        return FileMetagraphSource(metagraph_file)
    return ChainMetagraphSource(network, netuid)
