"""``truncation: "auto"`` on the Responses API: a conversation the miners' models refuse as too long is cut and
asked again, within the bound of miners one request may ask."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from tests.helpers import Script, api_with_miners, chunk, openai_client, sse

OVERFLOW = "This model's maximum context length is 40 tokens (context_length_exceeded)"
TALK = [
    {"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " + "word " * 8} for i in range(8)
]


def overflowing(refusals: int | None) -> Script:
    """A miner (one script for every uid: its counts are the request's) whose model refuses the first ``refusals``
    requests as longer than its context window (None: every one), then answers."""
    return Script(
        [(0, d) for d in sse(chunk("Fits now."), chunk(finish="stop"))],
        status=400,
        error_code="model_server_rejected",
        error_message=OVERFLOW,
        errors=refusals,
    )


@pytest.mark.parametrize(
    ("uids", "refusals", "calls", "answered"),
    [
        (100, None, 100 + 52 + 52 + 52, False),  # never fits: each cut asks a share of the 156 left
        (128, 128, 128 + 42, True),  # fits once cut: the second race asked a third of the 128 left
        (3, 3 * 3, 3 * 4, True),  # few miners: every race asks them all, as before
    ],
)
async def test_the_races_of_a_truncated_response_ask_at_most_256_miners(
    tmp_path: Path, uids: int, refusals: int | None, calls: int, answered: bool
) -> None:
    """Each race asked again with the conversation cut asked every miner of the first: a request naming 256 uids
    asked 1,024 miners (256 naming 100 asked 400), for one request of the key's limits. The races of one request
    together ask at most 256 miners, as ``n``'s do: a race asked again asks the first miners of the last, as many
    as a share of those left."""
    miner = overflowing(refusals)
    async with api_with_miners(tmp_path, dict.fromkeys(range(1, uids + 1), miner)) as api:
        client = openai_client(api)
        ask = {
            "model": "default",
            "input": TALK,
            "truncation": "auto",
            "extra_body": {"uids": list(range(1, uids + 1))},
        }
        if answered:
            done = await client.responses.create(**ask)  # type: ignore[arg-type]
            assert done.output_text == "Fits now."
        else:
            with pytest.raises(openai.BadRequestError) as e:
                await client.responses.create(**ask)  # type: ignore[arg-type]
            assert e.value.code == "context_length_exceeded"
    assert miner.calls == calls


async def test_a_request_that_asked_256_miners_is_not_cut_and_asked_again(tmp_path: Path) -> None:
    """No miner is left for a second race: the refusal, saying why truncation did not ask again."""
    miner = overflowing(None)
    async with api_with_miners(tmp_path, dict.fromkeys(range(1, 257), miner)) as api:
        with pytest.raises(openai.BadRequestError) as e:
            await openai_client(api).responses.create(
                model="default",
                input=TALK,
                truncation="auto",  # type: ignore[arg-type]
                extra_body={"uids": list(range(1, 257))},
            )
    assert (e.value.code, e.value.param, miner.calls) == ("context_length_exceeded", "input", 256)
    assert "name fewer uids" in e.value.message


async def test_a_mixtures_overflow_names_input_and_is_cut_and_asked_again(tmp_path: Path) -> None:
    """A mixture (``inference_mode``) whose first-stage miners all refused the conversation as too long answered
    OpenAI's ``context_length_exceeded`` naming ``messages``, a field a Responses API request has not: the SDK's
    ``e.param`` pointed the caller at nothing it sent. It names ``input``, as a plain race's does; with
    ``truncation: "auto"`` the conversation is cut and the mixture asked again."""
    miners = {1: overflowing(1), 2: overflowing(1)}
    async with api_with_miners(tmp_path, miners, incentives={1: 0.9, 2: 0.1}) as api:
        client = openai_client(api)
        mixture = {"inference_mode": "Mixture-of-Agents"}
        with pytest.raises(openai.BadRequestError) as e:
            await client.responses.create(model="default", input=TALK, extra_body=mixture)  # type: ignore[arg-type]
        assert (e.value.code, e.value.param) == ("context_length_exceeded", "input")
        for miner in miners.values():
            miner.calls = 0
        done = await client.responses.create(
            model="default", input=TALK, truncation="auto", extra_body=mixture
        )  # type: ignore[arg-type]
    # each refused the whole conversation, answered the cut one, and the top miner wrote the synthesis
    assert done.output_text == "Fits now." and [m.calls for m in miners.values()] == [3, 2]
