"""What the metagraph says of this miner: registered, its axon published, at the port it listens on.

A miner whose hotkey is not registered on its netuid, or whose axon is not published, or is published at
another port, is never called by a validator: it started, said ``serving on ...``, and then logged nothing at
all, whatever the cause (``btcli tx serve-axon`` not run, run with another hotkey or port, the wrong ``NETUID``).
The metagraph the miner reads anyway (for its callers' permits) tells it: a WARNING at start and whenever the
problems change (an INFO line once they are gone), and ``/health``'s ``problems`` list meanwhile.
"""

from __future__ import annotations

from loguru import logger

from shared.metagraph import MetagraphSnapshot, axon_host
from shared.public_address import is_public


def standing_problems(snapshot: MetagraphSnapshot, hotkey: str, port: int, *, public_only: bool = False) -> list[str]:
    """Why no validator calls this miner, as ``snapshot`` says (empty: nothing). The port of a published axon is
    checked, and with ``public_only`` (a metagraph read from the chain, ``PRIVATE_AXONS`` off) that its address is a
    public one, as validators and APIs call no other; that address may otherwise be one this host does not know it
    has (a NAT, a cloud's)."""
    netuid = snapshot.netuid
    own = snapshot.by_hotkey(hotkey)
    if own is None:
        return [f"hotkey {hotkey} is not registered on netuid {netuid}: no validator calls this miner (register "
                f"it: btcli subnets register --netuid {netuid}, with this miner's wallet and hotkey; or check "
                "NETUID and SUBTENSOR_NETWORK)"]
    if not own.axon:
        return [f"uid {own.uid} publishes no axon on netuid {netuid}: no validator calls this miner (publish it: "
                f"btcli tx serve-axon --netuid {netuid} --ip <public IP> --port {port}, with this miner's wallet "
                "and hotkey)"]
    published = own.axon.rpartition(":")[2]
    if public_only and not is_public(axon_host(own.axon)):
        return [f"uid {own.uid}'s axon is published at {own.axon}, a private address: validators and APIs call only "
                f"public ones (publish this host's public IP with btcli tx serve-axon --netuid {netuid}; "
                "PRIVATE_AXONS=true on every node of a chain whose nodes share a private network)"]
    if published != str(port):
        return [f"uid {own.uid}'s axon is published at {own.axon}, but this miner listens on port {port} "
                f"(MINER_PORT): validators call port {published} (publish port {port} with btcli tx serve-axon, or "
                f"forward port {published} to it)"]
    return []


class Standing:
    """This miner's standing problems (``standing_problems``), checked at start and at each metagraph refresh;
    each change is logged once, not every refresh."""

    def __init__(self, hotkey: str, port: int, *, public_only: bool = False) -> None:
        self.hotkey = hotkey
        self.port = port
        self.public_only = public_only
        self.problems: list[str] = []
        self._checked = False

    def check(self, snapshot: MetagraphSnapshot) -> None:
        problems = standing_problems(snapshot, self.hotkey, self.port, public_only=self.public_only)
        if self._checked and problems == self.problems:
            return
        for problem in problems:
            logger.warning("metagraph: {}", problem)
        if not problems:
            own = snapshot.by_hotkey(self.hotkey)
            logger.info("metagraph: this miner is {}uid {} on netuid {}, axon {}", "now " if self._checked else "",
                        own.uid if own else "?", snapshot.netuid, own.axon if own else "?")
        self.problems = problems
        self._checked = True
