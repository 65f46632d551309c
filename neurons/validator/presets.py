"""Setting presets for the local network (``sn1 localnet --fast``).

``FAST_ENV`` shortens every validator interval so quality shows in the weights
within a minute or two: for demos and the end-to-end test, not for a real
subnet (it sends far more synthetic traffic than miners should bear).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

FAST_ENV: Mapping[str, str] = MappingProxyType({
    "METAGRAPH_REFRESH_SECONDS": "2",
    "AVAILABILITY_INTERVAL": "1",
    "AVAILABILITY_TIMEOUT": "1",
    "SYNTHETIC_INTERVAL": "0.5",
    "SYNTHETIC_TIMEOUT": "3",
    "SYNTHETIC_CONCURRENCY": "4",
    "SCORE_ALPHA": "0.2",
    "WEIGHTS_INTERVAL": "3",
})
