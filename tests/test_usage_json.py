"""The two usage builders, one per OpenAI wire format (moltbot_gw/openai/usage.py)."""
from __future__ import annotations

from moltbot_gw.openai.usage import chat_usage_json, responses_usage_json
from moltbot_gw.providers.base import Usage


def test_chat_usage_has_the_three_counts_and_no_details_unless_reported():
    assert chat_usage_json(Usage(prompt_tokens=3, completion_tokens=4)) == {
        "prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


def test_chat_usage_passes_reported_details_through():
    usage = Usage(prompt_tokens=10, completion_tokens=5,
                  prompt_tokens_details={"cached_tokens": 8},
                  completion_tokens_details={"reasoning_tokens": 2})
    assert chat_usage_json(usage) == {
        "prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
        "prompt_tokens_details": {"cached_tokens": 8},
        "completion_tokens_details": {"reasoning_tokens": 2}}


def test_responses_usage_always_has_its_documented_details():
    assert responses_usage_json(Usage(prompt_tokens=3, completion_tokens=4)) == {
        "input_tokens": 3,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 4,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 7}


def test_responses_usage_takes_only_the_documented_fields_of_the_details():
    usage = Usage(prompt_tokens=10, completion_tokens=5,
                  prompt_tokens_details={"cached_tokens": 8, "audio_tokens": 1},
                  completion_tokens_details={"reasoning_tokens": 2, "audio_tokens": 3})
    assert responses_usage_json(usage) == {
        "input_tokens": 10,
        "input_tokens_details": {"cached_tokens": 8, "cache_write_tokens": 0},
        "output_tokens": 5,
        "output_tokens_details": {"reasoning_tokens": 2},
        "total_tokens": 15}
