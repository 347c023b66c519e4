"""The content model's one rule for the text of a message's content (moltbot_gw/content.py),
and that every layer that reads content follows it."""
from __future__ import annotations

import pytest

from moltbot_gw.content import content_text
from moltbot_gw.providers.anthropic_messages import convert_messages
from moltbot_gw.sessions.transcript import history_messages


def test_a_string_is_its_own_text():
    assert content_text("hello") == "hello"
    assert content_text("") == ""


@pytest.mark.parametrize("kind", ["text", "input_text", "output_text"])
def test_every_text_part_type_counts(kind):
    assert content_text([{"type": kind, "text": "a"}, {"type": "text", "text": "b"}]) == "ab"


def test_parts_are_joined_in_order_with_nothing_between():
    parts = ({"type": "input_text", "text": "one "}, {"type": "output_text", "text": "two"})
    assert content_text(parts) == "one two"


def test_images_and_other_parts_add_nothing():
    parts = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
             {"type": "input_image", "image_url": "data:image/png;base64,AAAA"},
             {"type": "refusal", "refusal": "no"},
             {"type": "thinking", "text": "hidden"},
             {"text": "untyped"},
             {"type": "text", "text": 7},
             "bare string",
             None,
             {"type": "text", "text": "kept"}]
    assert content_text(parts) == "kept"


@pytest.mark.parametrize("content", [None, 3, {"type": "text", "text": "x"}, b"bytes"])
def test_anything_else_has_no_text(content):
    assert content_text(content) == ""


def test_anthropic_system_prompt_uses_the_same_rule():
    system, messages = convert_messages([
        {"role": "system", "content": [{"type": "input_text", "text": "be "},
                                       {"type": "output_text", "text": "brief"},
                                       {"type": "image_url", "image_url": {"url": "x"}}]},
        {"role": "user", "content": "hi"}])
    assert system == ["be brief"]
    assert messages == [{"role": "user", "content": "hi"}]


def test_transcript_history_reads_stored_parts_by_the_same_rule():
    records = [{"type": "message", "role": "user", "content": "hi"},
               {"type": "message", "role": "assistant",
                "content": [{"type": "output_text", "text": "hello"}]},
               {"type": "message", "role": "user", "content": "again"}]
    assert history_messages(records) == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "again"}]
