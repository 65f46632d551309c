"""The reset times in ``x-ratelimit-reset-*`` and 429 messages, in OpenAI's format."""

from __future__ import annotations

import pytest

from api.auth import go_duration


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (-3, "0s"), (1e-5, "1ms"), (0.0204, "20ms"), (0.9996, "999ms"), (1, "1s"), (1.5, "1.5s"), (59.4, "59.4s"), (60, "1m0s"), (125.2, "2m6s"), (3599, "59m59s"),
    (3600, "1h0m0s"), (86399.2, "24h0m0s"), (7322, "2h2m2s"),
])
def test_reset_times_read_as_openai_writes_them(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text
