"""The headers of a refusal that ends after a wait: what the OpenAI SDKs' own retries read."""

from __future__ import annotations

import pytest

from shared.errors import retry_after


@pytest.mark.parametrize(("seconds", "headers"), [
    (0.2, {"Retry-After": "1", "retry-after-ms": "200"}),  # the SDKs wait 0.2 s, not the second it rounds to
    (0.0, {"Retry-After": "1", "retry-after-ms": "1"}),
    (59.0001, {"Retry-After": "60", "retry-after-ms": "59001"}),
    (61, {"Retry-After": "61", "retry-after-ms": "61000"}),
    (3600, {"Retry-After": "3600", "x-should-retry": "false"}),  # hours: the caller's to decide, not the SDK's
])
def test_a_short_wait_is_given_to_the_millisecond_and_a_long_one_is_not_retried(seconds: float,
                                                                                 headers: dict[str, str]) -> None:
    assert retry_after(seconds) == headers
