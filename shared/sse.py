"""Server-sent events: an incremental parser and the encoders we send with.

Miners are untrusted, so the parser copes with everything the wire can do:
chunks split mid-line, CRLF or CR line endings, comment lines, multi-line
``data:`` fields, events without a trailing blank line at end of stream, and an
upper bound on how large one event may grow.
"""

from __future__ import annotations

from collections.abc import Iterator

DONE = "[DONE]"
DONE_FRAME = b"data: [DONE]\n\n"


class SSEError(ValueError):
    """The stream broke the SSE framing rules or a size limit."""


class SSEParser:
    """Feed raw bytes, get back complete events' ``data`` payloads (as str)."""

    def __init__(self, max_event_bytes: int = 1 << 20) -> None:
        self._buf = bytearray()
        self._data: list[str] = []
        self._data_size = 0
        self._max = max_event_bytes

    def feed(self, chunk: bytes) -> list[str]:
        self._buf += chunk
        events: list[str] = []
        for line in self._lines():
            event = self._line(line)
            if event is not None:
                events.append(event)
        if len(self._buf) > self._max:
            raise SSEError(f"SSE line longer than {self._max} bytes")
        return events

    def close(self) -> list[str]:
        """End of stream: a final event without its blank line still counts."""
        events = []
        if self._buf:
            tail = bytes(self._buf)
            self._buf.clear()
            event = self._line(tail.rstrip(b"\r\n"))
            if event is not None:
                events.append(event)
        if self._data:
            events.append(self._flush())
        return events

    def _lines(self) -> Iterator[bytes]:
        buf = self._buf
        start = 0
        n = len(buf)
        while start < n:
            nl = buf.find(b"\n", start)
            cr = buf.find(b"\r", start)
            if nl < 0 and cr < 0:
                break
            if cr >= 0 and (nl < 0 or cr < nl):
                if cr + 1 == n:  # a CR at the end may be the first half of CRLF
                    break
                end, nxt = cr, cr + 2 if buf[cr + 1] == 0x0A else cr + 1
            else:
                end, nxt = nl, nl + 1
            yield bytes(buf[start:end])
            start = nxt
        del buf[:start]

    def _line(self, line: bytes) -> str | None:
        if not line:
            return self._flush() if self._data else None
        if line[:1] == b":":
            return None
        field, _, value = line.partition(b":")
        if field != b"data":
            return None  # event:, id:, retry: carry nothing we use
        if value[:1] == b" ":
            value = value[1:]
        self._data_size += len(value)
        if self._data_size > self._max:
            raise SSEError(f"SSE event larger than {self._max} bytes")
        try:
            self._data.append(value.decode())
        except UnicodeDecodeError as e:
            raise SSEError("SSE data is not valid UTF-8") from e
        return None

    def _flush(self) -> str:
        data = "\n".join(self._data)
        self._data.clear()
        self._data_size = 0
        return data


def encode_event(data: str | bytes) -> bytes:
    """One ``data:`` event. Multi-line payloads get one ``data:`` line each."""
    raw = data.encode() if isinstance(data, str) else data
    if b"\n" in raw or b"\r" in raw:
        lines = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        return b"".join(b"data: " + ln + b"\n" for ln in lines) + b"\n"
    return b"data: " + raw + b"\n\n"
