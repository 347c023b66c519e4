"""The JSON-lines log format (``--log-format json``): every ``twisted.logger`` event as one
JSON object per line, as ``eventAsJSON`` writes it plus the formatted message as ``text``.
"""
from __future__ import annotations

from typing import IO

from twisted.logger import FileLogObserver, LogEvent, eventAsJSON, formatEvent


def json_log_line(event: LogEvent) -> str:
    """One event as one line. No event is lost to its own formatting: ``formatEvent``
    reports a broken format string in ``text``, and such a format is written escaped (as
    is) since ``eventAsJSON`` cannot flatten it."""
    line = dict(event, text=formatEvent(event))
    try:
        return eventAsJSON(line) + "\n"
    except ValueError:
        escaped = str(event.get("log_format")).replace("{", "{{").replace("}", "}}")
        return eventAsJSON(dict(line, log_format=escaped)) + "\n"


def json_file_log_observer(out: IO[str]) -> FileLogObserver:
    """An observer writing (and flushing) every event to ``out`` as a JSON line."""
    return FileLogObserver(out, json_log_line)
