"""SSE parsing: the wire can split, mix line endings, comment and truncate."""

from __future__ import annotations

import pytest

from shared.sse import DONE, SSEError, SSEParser, encode_event


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
