"""Chat messages encoded once and sent many times.

A stored history message goes upstream, unchanged, with every later turn of its session (up to
``history.maxMessages`` of them each turn). A ``SharedMessage`` keeps its compact JSON once it
has been encoded, and ``compact_body`` splices that into a request body instead of encoding
the message again. Every turn that replays it shares the one object, so it cannot be changed
(``dict(message)`` is a private copy): its encoding stays true.
"""
from __future__ import annotations

import json
from operator import attrgetter
from typing import Any, Callable, Mapping, NoReturn, Optional

Default = Optional[Callable[[Any], Any]]


def compact_json(value: Any, default: Default = None) -> bytes:
    """``value`` as compact UTF-8 JSON, non-ASCII kept as is: the one encoding of bodies
    sent upstream (and of a ``SharedMessage``)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"),
                      default=default).encode("utf-8")


class SharedMessage(dict):
    """A read-only chat message (JSON types only) and its encoding, made once."""

    __slots__ = ("encoded",)

    def __init__(self, message: Mapping[str, Any]):
        super().__init__(message)
        self.encoded: bytes = compact_json(message)

    def _refuse(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("a stored history message is shared by every turn that replays it;"
                        " change a copy (dict(message))")

    __setitem__ = __delitem__ = __ior__ = _refuse
    setdefault = update = pop = popitem = clear = _refuse

    def __reduce__(self) -> tuple:
        return (SharedMessage, (dict(self),))


def compact_body(payload: Mapping[str, Any], default: Default = None) -> bytes:
    """``compact_json(payload)``, where a top-level list holding ``SharedMessage``s takes
    their kept encodings (such a list comes last in the object; key order means nothing in
    JSON)."""
    spliced = [key for key, value in payload.items()
               if type(value) is list and any(type(item) is SharedMessage for item in value)]
    if not spliced:
        return compact_json(payload, default)
    head = compact_json({key: value for key, value in payload.items() if key not in spliced},
                        default)
    parts = [head[:-1]]    # without its "}"
    for key in spliced:
        if len(parts) > 1 or len(head) > 2:
            parts.append(b",")
        parts += (compact_json(key), b":[", _encoded_list(payload[key], default), b"]")
    parts.append(b"}")
    return b"".join(parts)


_ENCODED = attrgetter("encoded")


def _encoded_list(items: list, default: Default) -> bytes:
    """The items of a list, encoded and comma-separated. A conversation is a few new messages
    around a run of shared ones: that run is joined in one pass that runs in C."""
    first = next(i for i, item in enumerate(items) if type(item) is SharedMessage)
    end = len(items)
    while type(items[end - 1]) is not SharedMessage:
        end -= 1
    try:
        middle = [b",".join(map(_ENCODED, items[first:end]))]
    except AttributeError:   # a message of another kind among them
        middle = [_encoded(item, default) for item in items[first:end]]
    return b",".join([_encoded(item, default) for item in items[:first]] + middle
                     + [_encoded(item, default) for item in items[end:]])


def _encoded(item: Any, default: Default) -> bytes:
    return item.encoded if type(item) is SharedMessage else compact_json(item, default)
