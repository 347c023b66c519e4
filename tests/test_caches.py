"""The gateway's in-memory caches are ``cachetools`` caches on the reactor clock (issue 14):
the WebSocket methods' expiring memories and the Responses API's LRU index. In memory, with
``task.Clock`` for time."""
from __future__ import annotations

from twisted.internet.task import Clock

from moltbot_gw.openai.response_index import ResponseIndex, StoredResponse
from moltbot_gw.ws.idempotency import expiring_cache


def test_an_expiring_cache_forgets_an_entry_ttl_seconds_after_it_was_last_stored():
    clock = Clock()
    cache = expiring_cache(clock, ttl=10.0, max_entries=100)
    cache["run"] = 1
    clock.advance(9.0)
    assert cache.get("run") == 1
    cache["run"] = 2             # stored again (the run ended): its lifetime restarts
    clock.advance(9.0)
    assert cache.get("run") == 2
    clock.advance(1.0)
    assert cache.get("run") is None and "run" not in cache


def test_an_expiring_cache_keeps_at_most_max_entries():
    clock = Clock()
    cache = expiring_cache(clock, ttl=10.0, max_entries=2)
    for key in "abc":
        cache[key] = key
        clock.advance(1.0)
    assert len(cache) == 2 and cache.get("a") is None and cache.get("c") == "c"


def _stored(tag: str, size: int = 0) -> StoredResponse:
    item_id = f"msg_{tag}"
    return StoredResponse("main", None,
                          ({"role": "user", "content": tag + "x" * size},),
                          {item_id: {"type": "message", "id": item_id}})


def test_an_evicted_response_takes_its_items_with_it():
    index = ResponseIndex(capacity=2)
    index.add("resp_a", _stored("a"))
    index.add("resp_b", _stored("b"))
    assert index.item("msg_a") is not None         # a is now the most recently used
    index.add("resp_c", _stored("c"))
    assert index.get("resp_b") is None and index.item("msg_b") is None
    assert index.item("msg_a") is not None and index.item("msg_c") is not None
    assert len(index) == 2


def test_resizing_keeps_the_most_recently_used_responses_and_their_items():
    index = ResponseIndex(capacity=10, max_bytes=10_000)
    for tag in "abcd":
        index.add(f"resp_{tag}", _stored(tag, 100))
    index.get("resp_a")                            # order now: b, c, d, a
    index.resize(capacity=2, max_bytes=10_000)
    assert (index.capacity, index.max_bytes) == (2, 10_000)
    assert [tag for tag in "abcd" if index.get(f"resp_{tag}") is not None] == ["a", "d"]
    assert index.item("msg_b") is None and index.item("msg_d") is not None
    one = _stored("e", 100).size
    index.resize(capacity=10, max_bytes=one)       # now only one fits by bytes
    assert len(index) == 1 and index.bytes <= one


def test_storing_a_response_id_again_replaces_it_and_its_items():
    index = ResponseIndex(capacity=10)
    index.add("resp_a", _stored("a"))
    index.add("resp_a", _stored("z"))
    assert index.item("msg_a") is None and index.item("msg_z") is not None
    assert len(index) == 1 and index.bytes == _stored("z").size
