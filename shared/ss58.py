"""Whether a text is an SS58 address (a hotkey), its checksum too, as the chain decodes it.

Checked by ``bittensor_core``, the SDK's native key primitives (``bittensor.sp_core.Keypair`` is
``bittensor_core.Keypair``), not through ``bittensor``: importing anything under ``bittensor`` first runs its
``__init__``, which imports the whole SDK, its EVM and Ethereum packages too (~0.4 s of CPU, ~1 s on a loaded
host), for a check that takes microseconds. A settings check, a ``sn1 localnet`` argument, and a receiver's
look at a refused caller's claim share this one."""

from __future__ import annotations

import bittensor_core


def check_ss58(address: str) -> None:
    """ValueError saying why when ``address`` is not an SS58 address."""
    try:
        bittensor_core.Keypair(ss58_address=address)
    except TypeError as e:
        raise ValueError(str(e)) from None


def is_ss58(address: str) -> bool:
    try:
        check_ss58(address)
    except ValueError:
        return False
    return True
