"""A run's token usage in the two OpenAI wire formats: ``chat_usage_json`` for Chat
Completions (and legacy text completions, which share its shape) and
``responses_usage_json`` for the Responses API. Other formats (the WS protocol's camelCase
``usage``, the transcript's counts) belong to their own layers."""
from __future__ import annotations

from ..providers.base import Usage


def chat_usage_json(usage: Usage) -> dict:
    """Chat's ``usage``: the three counts, and the token details only when the provider
    reported them."""
    body: dict[str, object] = {
        "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens}
    if usage.prompt_tokens_details:
        body["prompt_tokens_details"] = dict(usage.prompt_tokens_details)
    if usage.completion_tokens_details:
        body["completion_tokens_details"] = dict(usage.completion_tokens_details)
    return body


def responses_usage_json(usage: Usage) -> dict:
    """Responses' ``usage``: the SDK's documented fields only; cached and reasoning tokens
    come from the upstream's breakdowns when it reported them, else 0."""
    prompt_details = usage.prompt_tokens_details or {}
    completion_details = usage.completion_tokens_details or {}
    return {"input_tokens": usage.prompt_tokens,
            "input_tokens_details": {
                "cached_tokens": prompt_details.get("cached_tokens", 0),
                "cache_write_tokens": prompt_details.get("cache_write_tokens", 0)},
            "output_tokens": usage.completion_tokens,
            "output_tokens_details": {
                "reasoning_tokens": completion_details.get("reasoning_tokens", 0)},
            "total_tokens": usage.total_tokens}
