"""``charge_each`` (a turn's requests for one key in one write) decides exactly as one call per request."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.store.window import charge_each, charge_window

T0 = 1_700_000_000.0


@st.composite
def history(draw: st.DrawFn) -> tuple[bytes | None, float, int]:
    """A window built by earlier charges at earlier instants, then the instant and limit of the turn
    (the limit may have been lowered since: the window can hold more than the new limit)."""
    before = draw(st.integers(1, 40))
    state: bytes | None = None
    now = T0
    for step in draw(st.lists(st.tuples(st.floats(0, 30), st.integers(0, 5)), max_size=12)):
        now += step[0]
        state, _ = charge_window(state, before, now, step[1])
    lag = draw(st.sampled_from([0.0, 0.3, 1.0, 59.5, 61.0, 120.0, -2.0]))  # -2: a clock behind the window's
    return state, now + lag, draw(st.sampled_from([before, max(1, before // 3)]))


@settings(max_examples=300, deadline=None)
@given(history(), st.integers(1, 50))
def test_charge_each_matches_one_charge_per_request(h: tuple[bytes | None, float, int], n: int) -> None:
    state, now, limit = h
    one_by_one = []
    sequential = state
    for _ in range(n):
        sequential, decision = charge_window(sequential, limit, now, 1)
        one_by_one.append(decision)
    batched_state, batched = charge_each(state, limit, now, n)
    assert batched == one_by_one
    assert batched_state == sequential


def test_the_first_requests_of_the_turn_pass_and_the_rest_are_refused_alike() -> None:
    state, _ = charge_window(None, 5, T0, 3)
    _, decisions = charge_each(state, 5, T0 + 0.5, 4)
    assert [d.allowed for d in decisions] == [True, True, False, False]
    assert [d.remaining for d in decisions] == [1, 0, 0, 0]
    assert decisions[2].retry_after > 59 and decisions[2] == decisions[3]
