"""The SDK's request signing (``bittensor.http_auth``) without the rest of the SDK.

``from bittensor import http_auth`` first runs the package's ``__init__``, which imports the whole SDK: its chain
client and generated call tables, the EVM and Ethereum packages, QR codes and imaging (~500 modules: ~24 MB of
every API worker's and miner's memory, ~0.4 s of CPU at each start), none of which signing or verifying a request
uses. Here ``http_auth`` and the few SDK modules it imports itself (keys, wallets, errors) load under a
``bittensor`` package whose ``__init__`` has not run yet; the first attribute of the package that is not one of
those submodules (``bt.Wallet`` for an encrypted hotkey, ``bt.Client`` for a chain's metagraph, anything a test
reads) runs it then, in full, on the same module object: the same modules and objects ``import bittensor`` gives.
Until then ``bittensor.wallet`` is the submodule (``__init__`` rebinds it to the ``Wallet`` class).

A process that imported ``bittensor`` before (the validator, a test) is left as it is.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import threading
from types import ModuleType
from typing import Any

PACKAGE = "bittensor"


class _Deferred:
    """The light package's ``__getattr__`` (PEP 562), called for a name it does not hold yet: runs the package's
    ``__init__`` on it once, then answers the name as the whole SDK does. Another thread asking meanwhile waits
    for it, as an import in progress makes it wait; the ``__init__`` running asks it for its own submodules
    (``from . import evm``), which it is told are not there yet, so that the import system loads them."""

    def __init__(self, package: ModuleType) -> None:
        self.package = package
        self.lock = threading.RLock()
        self.running = False

    def __call__(self, name: str) -> Any:
        with self.lock:
            if self.running:  # this thread, inside the __init__ below
                raise AttributeError(f"module {PACKAGE!r} has no attribute {name!r} yet")
            if self.package.__dict__.get("__getattr__") is self:
                self.running = True
                try:
                    self.package.__spec__.loader.exec_module(self.package)  # type: ignore[union-attr]
                finally:
                    self.running = False
                if self.package.__dict__.get("__getattr__") is self:  # the SDK defines none of its own
                    del self.package.__dict__["__getattr__"]
        return getattr(self.package, name)


def _light_package() -> None:
    """``bittensor`` in ``sys.modules`` with its ``__init__`` deferred (``_Deferred``), unless it is there already."""
    if PACKAGE in sys.modules:
        return
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.loader is None:  # not installed: the import below says so, as it always did
        return
    package = importlib.util.module_from_spec(spec)
    package.__dict__["__getattr__"] = _Deferred(package)
    sys.modules[PACKAGE] = package
    # what its __init__ does first of all: the SDK's loggers stay silent unless the application opts in
    logging.getLogger(PACKAGE).addHandler(logging.NullHandler())


_light_package()

# as submodules: ``from bittensor import http_auth`` asks the package for the name first, which would run it all
import bittensor.http_auth as http_auth  # noqa: E402
from bittensor.wallets import parse_crypto_type  # noqa: E402

__all__ = ["http_auth", "parse_crypto_type"]
