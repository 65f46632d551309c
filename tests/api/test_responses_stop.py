"""What a caller following a background response is told when the API process stops (``stopped_following``)."""

from __future__ import annotations

import json

from api.responses_background import stopped_following


def told(sent: int, *, here: bool = True) -> dict:
    frame = stopped_following("resp_1", sent, here=here).decode()
    assert frame.startswith("event: error\ndata: ") and frame.endswith("\n\n"), frame
    return json.loads(frame.split("data: ", 1)[1])


def test_a_caller_that_had_events_is_told_to_resume_after_the_last() -> None:
    error = told(7)
    assert error["code"] == "server_shutting_down" and "starting_after=7 " in error["message"], error
    assert "goes on here for up to 5 s" in error["message"]
    assert "goes on on another API worker" in told(7, here=False)["message"]


def test_a_caller_that_had_no_event_yet_is_told_to_stream_it_from_its_start() -> None:
    """Cut before its first event (a stop as it began to read the store): it was told ``starting_after=-1``, which
    the resume refuses (a 400: ``starting_after`` is at least 0)."""
    error = told(-1)
    assert "starting_after=-1" not in error["message"], error["message"]
    assert "without starting_after" in error["message"], error["message"]
