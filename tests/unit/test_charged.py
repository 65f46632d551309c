"""``MinerRun.charged``'s shortcuts (no byte count while the miner's count is within the unseen tokens, one encode of
the parts joined, no details loop for a usage without details) charge exactly what the plain formula charges."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from api.race import UNSEEN_TOKENS, MinerRun
from shared.metagraph import Neuron
from shared.protocol import USAGE_DETAILS

texts = st.lists(st.text(max_size=40), max_size=4)
counts = st.integers(min_value=0, max_value=5000)


def plain(run: MinerRun) -> dict[str, Any] | None:
    """The formula as it was written first: every part encoded on its own, every bound taken."""
    usage = run.usage
    if usage is None or run.prompt_most is None:
        return usage
    calls = [c["function"]["name"] + c["function"]["arguments"] for c in run.tool_calls.values()]
    written = sum(len(p.encode()) for p in (*run.reasoning, *run.content, *run.refusal, *calls))
    prompt = min(usage["prompt_tokens"], run.prompt_most)
    completion = min(usage["completion_tokens"], written + UNSEEN_TOKENS * (1 + len(run.tool_calls)))
    out = usage | {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    for group, most in zip(USAGE_DETAILS, (prompt, completion), strict=True):
        if group in out:
            out[group] = {name: min(n, most) for name, n in out[group].items()}
    return out


@settings(max_examples=300, deadline=None)
@given(content=texts, reasoning=texts, refusal=texts, names=st.lists(st.text(max_size=10), max_size=3),
       prompt=counts, completion=counts, most=st.one_of(st.none(), counts),
       cached=st.one_of(st.none(), counts), reasoning_tokens=st.one_of(st.none(), counts),
       estimated=st.booleans())
def test_charged_is_the_plain_formula(content: list[str], reasoning: list[str], refusal: list[str], names: list[str],
                                      prompt: int, completion: int, most: int | None, cached: int | None,
                                      reasoning_tokens: int | None, estimated: bool) -> None:
    run = MinerRun(Neuron(1, "hk"), prompt_most=most)
    run.content, run.reasoning, run.refusal = content, reasoning, refusal
    run.tool_calls = {i: {"function": {"name": n, "arguments": n * 3}} for i, n in enumerate(names)}
    usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                             "total_tokens": prompt + completion}
    if cached is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    if reasoning_tokens is not None:
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
    if estimated:
        usage["estimated"] = True
    run.usage = usage
    assert run.charged() == plain(run)
    assert run.output_bytes() == sum(len(p.encode()) for p in (*reasoning, *content, *refusal)) + sum(
        len((n + n * 3).encode()) for n in names)
