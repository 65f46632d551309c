"""SSE parsing: the wire can split, mix line endings, comment and truncate."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.sse import DONE, SSEError, SSEParser, encode_event, encode_events


def feed_all(chunks: list[bytes], **kw) -> list[str]:
    p = SSEParser(**kw)
    out: list[str] = []
    for c in chunks:
        out += p.feed(c)
    return out + p.close()


def test_simple_events_and_done() -> None:
    assert feed_all([b'data: {"a":1}\n\ndata: [DONE]\n\n']) == ['{"a":1}', DONE]


@pytest.mark.parametrize("split", range(1, 20))
def test_split_anywhere_gives_same_events(split: int) -> None:
    raw = b'data: {"a":1}\r\n\r\ndata: {"b":2}\n\n'
    assert feed_all([raw[:split], raw[split:]]) == ['{"a":1}', '{"b":2}']


def test_byte_by_byte_crlf() -> None:
    raw = b'data: x\r\n\r\ndata: y\r\n\r\n'
    assert feed_all([raw[i : i + 1] for i in range(len(raw))]) == ["x", "y"]


def test_bare_cr_line_endings() -> None:
    assert feed_all([b"data: x\r\rdata: y\r\r"]) == ["x", "y"]


def test_comments_and_other_fields_are_ignored() -> None:
    raw = b": keep-alive\n\nevent: message\nid: 7\nretry: 10\ndata: payload\n\n"
    assert feed_all([raw]) == ["payload"]


def test_multiline_data_joined_with_newline() -> None:
    assert feed_all([b"data: one\ndata: two\n\n"]) == ["one\ntwo"]


def test_data_without_space_after_colon() -> None:
    assert feed_all([b"data:tight\n\n"]) == ["tight"]


def test_final_event_without_blank_line_is_kept() -> None:
    assert feed_all([b"data: a\n\ndata: last"]) == ["a", "last"]


def test_oversized_event_raises() -> None:
    p = SSEParser(max_event_bytes=100)
    with pytest.raises(SSEError):
        p.feed(b"data: " + b"x" * 200 + b"\n")


def test_oversized_line_without_newline_raises() -> None:
    p = SSEParser(max_event_bytes=100)
    with pytest.raises(SSEError):
        p.feed(b"data: " + b"x" * 200)


def test_invalid_utf8_raises() -> None:
    with pytest.raises(SSEError):
        feed_all([b"data: \xff\xfe\n\n"])


def test_encode_roundtrip_multiline() -> None:
    assert feed_all([encode_event("a\nb"), encode_event('{"x": 1}')]) == ["a\nb", '{"x": 1}']


def reference_events(chunks: list[bytes]) -> list[str]:
    """The general line parser alone (no whole-frame fast path), as the reference."""
    p = SSEParser()
    out: list[str] = []
    for c in chunks:
        out += p._feed_lines(c)
    return out + p.close()


SSE_PIECES = [b"data: ", b"data:", b"{\"a\":1}", b"x", b"", b"\n", b"\n\n", b"\r\n", b"\r", b": c\n",
              b"event: e\n", b"[DONE]", "é".encode(), b"data: tok \n\n", b"id: 1\n"]


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(SSE_PIECES), max_size=30), st.lists(st.integers(0, 200), max_size=6))
def test_fast_path_matches_the_line_parser_on_any_stream_and_split(pieces: list[bytes], cuts: list[int]) -> None:
    raw = b"".join(pieces)
    bounds = sorted({min(c, len(raw)) for c in cuts})
    chunks = [raw[a:b] for a, b in zip([0, *bounds], [*bounds, len(raw)], strict=True)]
    assert feed_all(chunks) == reference_events(chunks)


def test_fast_path_whole_frames() -> None:
    raw = b"".join(b'data: {"i":%d}\n\n' % i for i in range(20)) + b"data: [DONE]\n\n"
    assert feed_all([raw]) == [f'{{"i":{i}}}' for i in range(20)] + [DONE]
    assert feed_all([raw[:25], raw[25:]]) == [f'{{"i":{i}}}' for i in range(20)] + [DONE]


EVENT_PIECES = ['{"a":', "1}", "\n", "\r", "\r\n", " ", "é", "data: "]


@given(st.lists(st.lists(st.sampled_from(EVENT_PIECES), max_size=8).map("".join), max_size=8))
def test_a_batch_of_events_is_framed_as_each_alone(texts: list[str]) -> None:
    """A streamed answer's chunks are framed together (``encode_events``: one join, one encode): byte for byte what
    framing each alone gives, a chunk that spans lines (pretty-printed JSON, a stray CR) included."""
    assert encode_events(texts) == b"".join(encode_event(text) for text in texts)
