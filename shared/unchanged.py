"""A periodic summary line said at INFO when it says something new, at DEBUG when it repeats the last.

The validator's metagraph and availability loops wrote one INFO line a cycle (every 60 s and 30 s by default): a
day of ``metagraph: block N: 64 neurons, 58 serving an axon`` and ``availability: 58/58 miners up``, the same words
thousands of times, between which the one poll that lost a miner was hard to find. Such a line is INFO when what it
says changed since the last one said at INFO (the block aside: it moves every cycle), and once ``every`` seconds
after it even when not (the loop is seen to run); DEBUG otherwise (``LOG_LEVEL=DEBUG`` shows every cycle).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

UNCHANGED_INFO_EVERY_S = 600.0  # a line that says the same is INFO again after this long (the loop still runs)


@dataclass
class Unchanged:
    every: float = UNCHANGED_INFO_EVERY_S
    clock: Callable[[], float] = time.monotonic
    _said: Hashable = field(default=None, repr=False)  # what the last line at INFO said (None: none yet)
    _at: float | None = field(default=None, repr=False)  # when (``clock``)

    def level(self, says: Hashable) -> str:
        """The level of a line that ``says`` this (what it tells an operator, without what moves every cycle)."""
        now = self.clock()
        if self._at is not None and says == self._said and now - self._at < self.every:
            return "DEBUG"
        self._said, self._at = says, now
        return "INFO"
