"""The server's garbage-collector settings: fewer passes, and cyclic garbage still freed."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from shared.gc_tuning import OLDER_THRESHOLD, YOUNG_THRESHOLD, freeze_heap, tune_for_serving


@pytest.fixture
def tuned() -> Iterator[None]:
    """``tune_for_serving`` from an unfrozen heap; the suite's own freeze (``tests/conftest.py``) made again after."""
    before, frozen = gc.get_threshold(), gc.get_freeze_count() > 0
    gc.unfreeze()
    tune_for_serving()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
        if frozen:
            freeze_heap()


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the cyclic collector frees it


def test_the_start_up_heap_is_frozen_and_passes_are_rarer(tuned: None) -> None:
    assert gc.get_freeze_count() > 1000  # pytest's own heap at least
    assert gc.get_threshold() == (YOUNG_THRESHOLD, OLDER_THRESHOLD, OLDER_THRESHOLD)
    assert gc.isenabled()


def test_cycles_made_while_serving_are_still_collected_without_an_explicit_collect(tuned: None) -> None:
    """A request that leaves a reference cycle (an exception and its traceback, say) must not leak."""
    early = [weakref.ref(Node()) for _ in range(1000)]
    for _ in range(YOUNG_THRESHOLD * 5):  # enough allocation for several young passes
        Node()
    assert sum(r() is None for r in early) == len(early)


def test_the_suites_processes_froze_the_heap_their_collection_left() -> None:
    """Left to the collector, each full pass of a worker that imported every test module walked them all (0.5-0.9 s
    of CPU a pass), and stalled whatever test ran then (``tests/conftest.py``)."""
    assert gc.get_freeze_count() > 10_000
