"""Unit tests of the incremental SSE parser: framing, line endings, comments, splits."""
import pytest

from moltbot_gw.providers.sse import SSEError, SSEEvent, SSEParser, parse_events

STREAM = (b": hello comment\n"
          b"event: message_start\n"
          b"data: {\"a\": 1}\n"
          b"\n"
          b"data: first line\n"
          b"data:second line\n"
          b"id: 7\n"
          b"retry: 100\n"
          b"\n"
          b"data: caf\xc3\xa9 \xe2\x9c\x93\n"
          b"\n"
          b"data: [DONE]\n"
          b"\n")
EXPECTED = [SSEEvent("message_start", '{"a": 1}'),
            SSEEvent("message", "first line\nsecond line"),
            SSEEvent("message", "café ✓"),
            SSEEvent("message", "[DONE]")]


def feed_in_pieces(stream: bytes, cuts) -> list[SSEEvent]:
    parser = SSEParser()
    events, start = [], 0
    for cut in list(cuts) + [len(stream)]:
        events += parser.feed(stream[start:cut])
        start = cut
    return events + parser.finish()


def test_whole_stream_gives_events_with_names_and_joined_data():
    assert parse_events(STREAM) == EXPECTED


@pytest.mark.parametrize("ending", [b"\r\n", b"\r"], ids=["crlf", "cr"])
def test_other_line_endings_give_the_same_events(ending):
    assert parse_events(STREAM.replace(b"\n", ending)) == EXPECTED


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
def test_split_at_every_byte_offset_gives_the_same_events(ending):
    stream = STREAM.replace(b"\n", ending)
    for offset in range(len(stream) + 1):
        assert feed_in_pieces(stream, [offset]) == EXPECTED, offset


def test_one_byte_at_a_time_gives_the_same_events():
    stream = STREAM.replace(b"\n", b"\r\n")
    assert feed_in_pieces(stream, range(1, len(stream))) == EXPECTED


def test_events_are_returned_by_the_read_that_completes_them():
    parser = SSEParser()
    assert parser.feed(b"data: x\n") == []
    assert parser.feed(b"\n") == [SSEEvent("message", "x")]
    assert parser.feed(b"data: y\r") == []
    assert parser.feed(b"\n\r\n") == [SSEEvent("message", "y")]


def test_comment_only_blocks_and_event_without_data_are_not_dispatched():
    assert parse_events(b": ping\n\n:\n\nevent: lonely\n\nid: 3\n\n") == []


def test_space_after_colon_is_dropped_once_and_field_without_colon_is_a_name():
    events = parse_events(b"data:  two spaces\ndata\n\n")
    assert events == [SSEEvent("message", " two spaces\n")]


def test_leading_utf8_bom_is_ignored_even_when_split():
    assert feed_in_pieces(b"\xef\xbb\xbfdata: x\n\n", [1, 2]) == [SSEEvent("message", "x")]


def test_finish_dispatches_a_last_event_missing_its_blank_line():
    parser = SSEParser()
    assert parser.feed(b"data: [DONE]") == []
    assert parser.finish() == [SSEEvent("message", "[DONE]")]


def test_event_name_resets_after_each_event():
    events = parse_events(b"event: a\ndata: 1\n\ndata: 2\n\n")
    assert [e.event for e in events] == ["a", "message"]


def test_a_line_over_the_limit_is_an_error():
    parser = SSEParser(max_line_bytes=16)
    parser.feed(b"data: 0123")
    with pytest.raises(SSEError):
        parser.feed(b"456789abcdef")


def test_event_json_is_read_as_json_loads_reads_it():
    """The per-event decoder (issue #16) takes the fast path only for data it reads whole:
    anything else gets json.loads' own result or error."""
    import json

    from moltbot_gw.providers.sinks import _loads

    for text in ['{"a":1}', ' {"a": [1, 2]} ', '{"a":"\\ud800"}', "[1]", '"x"', "12"]:
        assert _loads(text) == json.loads(text)
    for bad in ['{"a":1} x', "{", "", "\ufeff{}", '{"a":1}{"b":2}', "NaNx"]:
        with pytest.raises(ValueError) as ours:
            _loads(bad)
        with pytest.raises(ValueError) as theirs:
            json.loads(bad)
        assert str(ours.value) == str(theirs.value)
