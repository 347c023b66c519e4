"""Incremental Server-Sent-Events parser for upstream model streams (bytes in, events out).

Pure and I/O-free: it does not know HTTP, JSON or any provider's event vocabulary. It is not
the writer of our own SSE responses (that lives with the protocol code).
"""
from __future__ import annotations

from dataclasses import dataclass

_BOM = b"\xef\xbb\xbf"


class SSEError(ValueError):
    """The stream cannot be parsed (a single line grew beyond the parser's limit)."""


@dataclass(frozen=True)
class SSEEvent:
    event: str          # the ``event:`` field, "message" when absent (as in the HTML spec)
    data: str           # ``data:`` lines joined with "\n"


class SSEParser:
    """Feed it bytes as they arrive; it returns the events completed by that read.

    Follows the HTML "event stream" interpretation: lines end in CRLF, LF or CR (a CRLF split
    across two reads counts once), ``:`` starts a comment, one space after the field colon is
    dropped, an event is dispatched at a blank line, events with no ``data`` are not dispatched,
    ``id`` and ``retry`` are accepted and ignored.
    """

    def __init__(self, max_line_bytes: int = 8 * 1024 * 1024):
        self._max_line = max_line_bytes
        self._buffer = b""
        self._pending: list[bytes] = []   # pieces of a long unfinished line, joined lazily
        self._pending_size = 0
        self._skip_lf = False       # the previous read ended in CR; a leading LF is its pair
        self._at_start = True       # a UTF-8 BOM may open the stream
        self._event = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if not chunk:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if not self._at_start and b"\n" not in chunk and b"\r" not in chunk:
            # no line ends here: keep the piece without re-copying what came before
            self._pending.append(chunk)
            self._pending_size += len(chunk)
            if len(self._buffer) + self._pending_size > self._max_line:
                raise SSEError(f"event stream line longer than {self._max_line} bytes")
            return []
        buffer = self._buffer + b"".join(self._pending) + chunk
        self._pending = []
        self._pending_size = 0
        if self._at_start:
            if len(buffer) < len(_BOM) and _BOM.startswith(buffer):
                self._buffer = buffer
                return []
            self._at_start = False
            if buffer.startswith(_BOM):
                buffer = buffer[len(_BOM):]

        events: list[SSEEvent] = []
        if b"\r" not in buffer:
            # The common shape (LF only): one split instead of a search per line end.
            lines = buffer.split(b"\n")
            rest = lines.pop()
            line = self._line
            for raw in lines:
                line(raw, events)
            self._buffer = rest
            if len(rest) > self._max_line:
                raise SSEError(f"event stream line longer than {self._max_line} bytes")
            return events
        start = 0
        size = len(buffer)
        while start < size:
            cr = buffer.find(b"\r", start)
            lf = buffer.find(b"\n", start)
            if cr == -1 and lf == -1:
                break
            if cr == -1 or (lf != -1 and lf < cr):
                end, next_start = lf, lf + 1
            elif cr + 1 < size:
                end = cr
                next_start = cr + 2 if buffer[cr + 1:cr + 2] == b"\n" else cr + 1
            else:
                # CR is the last byte we have: the line is complete, but an LF may follow
                end, next_start = cr, cr + 1
                self._skip_lf = True
            self._line(buffer[start:end], events)
            start = next_start
        self._buffer = buffer[start:]
        if len(self._buffer) > self._max_line:
            raise SSEError(f"event stream line longer than {self._max_line} bytes")
        return events

    def finish(self) -> list[SSEEvent]:
        """At end of stream: dispatch a last event that lacked its closing blank line.

        The spec discards such an event; upstreams that omit the final blank line are common
        enough that callers reading a model stream want it.
        """
        events: list[SSEEvent] = []
        rest = self._buffer + b"".join(self._pending)
        self._buffer, self._pending, self._pending_size = b"", [], 0
        if rest:
            self._line(rest, events)
        self._line(b"", events)
        return events

    def _line(self, raw: bytes, events: list[SSEEvent]) -> None:
        if raw[:5] == b"data:":
            # the hot path: a data line (the field name is ASCII, so slicing bytes is safe)
            data = raw[6:] if raw[5:6] == b" " else raw[5:]
            self._data.append(data.decode("utf-8", errors="replace"))
            return
        if not raw:
            if self._data:
                events.append(SSEEvent(self._event or "message", "\n".join(self._data)))
            self._event = ""
            self._data = []
            return
        line = raw.decode("utf-8", errors="replace")
        if line.startswith(":"):
            return
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value


def parse_events(payload: bytes) -> list[SSEEvent]:
    """Parse a complete event stream at once (tests and small bodies)."""
    parser = SSEParser()
    return parser.feed(payload) + parser.finish()


__all__ = ["SSEError", "SSEEvent", "SSEParser", "parse_events"]
