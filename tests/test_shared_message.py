"""History messages are encoded once and spliced into every later request body: the body must
be the JSON the plain encoding gives, and a shared message must never change (issue #16)."""
from __future__ import annotations

import copy
import json
import pickle
from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moltbot_gw.providers.upstream_client import _jsonable
from moltbot_gw.shared_message import SharedMessage, compact_body, compact_json

TEXT = st.text(max_size=12)
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]),
                                 "content": TEXT})
ITEM = st.one_of(MESSAGE.map(SharedMessage), MESSAGE,
                 st.builds(lambda m: MappingProxyType(dict(m)), MESSAGE))
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-10, 10), TEXT)


@settings(max_examples=300, deadline=None)
@given(before=st.dictionaries(TEXT, SCALAR, max_size=4), items=st.lists(ITEM, max_size=8),
       others=st.lists(ITEM, max_size=3), after=st.dictionaries(TEXT, SCALAR, max_size=3))
def test_a_body_with_shared_messages_is_the_json_of_the_plain_encoding(before, items, others,
                                                                        after):
    payload = dict(before)
    payload["messages"] = items
    payload["tools"] = others
    payload.update(after)
    body = compact_body(payload, default=_jsonable)
    expected = compact_json(payload, default=_jsonable)
    assert json.loads(body) == json.loads(expected)
    if not any(type(item) is SharedMessage for item in items + others):
        assert body == expected   # nothing to splice: the very same bytes


def test_a_shared_message_keeps_non_ascii_text_as_it_is():
    message = SharedMessage({"role": "user", "content": "héllo \u2603 \"quoted\"\n"})
    body = compact_body({"model": "m", "messages": [{"role": "system", "content": "s"},
                                                    message]})
    assert "héllo \u2603".encode() in body
    assert json.loads(body)["messages"][1] == {"role": "user",
                                               "content": "héllo \u2603 \"quoted\"\n"}


def test_only_a_body_of_shared_messages_splices_them_alone():
    shared = [SharedMessage({"role": "user", "content": str(n)}) for n in range(3)]
    assert compact_body({"messages": shared}) == (
        b'{"messages":[{"role":"user","content":"0"},{"role":"user","content":"1"},'
        b'{"role":"user","content":"2"}]}')


@pytest.mark.parametrize("change", [
    lambda m: m.__setitem__("content", "changed"),
    lambda m: m.__delitem__("content"),
    lambda m: m.update(content="changed"),
    lambda m: m.setdefault("name", "x"),
    lambda m: m.pop("content"),
    lambda m: m.popitem(),
    lambda m: m.clear(),
    lambda m: m.__ior__({"content": "changed"}),
])
def test_a_shared_message_cannot_change_and_its_copy_can(change):
    message = SharedMessage({"role": "user", "content": "hi"})
    with pytest.raises(TypeError, match="shared"):
        change(message)
    assert message == {"role": "user", "content": "hi"}
    assert message.encoded == b'{"role":"user","content":"hi"}'
    mine = dict(message)
    change(mine)   # a plain copy is the caller's own
    for same in (copy.copy(message), copy.deepcopy(message), pickle.loads(pickle.dumps(message))):
        assert type(same) is SharedMessage and same == message
        assert same.encoded == message.encoded
