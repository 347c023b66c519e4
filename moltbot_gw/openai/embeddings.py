"""``POST /v1/embeddings``: validate the request and keep the provider's answer in the OpenAI
shape. The vectors come from the provider's own OpenAI-compatible ``/embeddings``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from .errors import APIError
from .request_common import parse_body

MAX_INPUTS = 2048


@dataclass(frozen=True)
class EmbeddingsRequest:
    model: str
    input: Any                       # str | list[str] | list[int] | list[list[int]]
    encoding_format: Optional[str]
    dimensions: Optional[int]


def _bad(message: str, param: str) -> APIError:
    return APIError(400, message, param=param, code="invalid_value")


def _is_token_list(value) -> bool:
    return (isinstance(value, list) and bool(value)
            and all(isinstance(t, int) and not isinstance(t, bool) for t in value))


def _valid_input(value) -> bool:
    if isinstance(value, str):
        return bool(value)
    if not isinstance(value, list) or not value or len(value) > MAX_INPUTS:
        return False
    return (all(isinstance(v, str) and v for v in value) or _is_token_list(value)
            or all(_is_token_list(v) for v in value))


def parse_embeddings_request(body: bytes) -> EmbeddingsRequest:
    data = parse_body(body)
    model = data.get("model")
    if not isinstance(model, str) or not model.strip():
        raise _bad('model must be "provider/model" or "moltbot:<agentId>"', "model")
    value = data.get("input")
    if not _valid_input(value):
        raise _bad(f"input must be a non-empty string, a list of up to {MAX_INPUTS} "
                   "non-empty strings, or token arrays", "input")
    encoding_format = data.get("encoding_format")
    if encoding_format not in (None, "float", "base64"):
        raise _bad('encoding_format must be "float" or "base64"', "encoding_format")
    dimensions = data.get("dimensions")
    if dimensions is not None and (not isinstance(dimensions, int)
                                   or isinstance(dimensions, bool) or dimensions < 1):
        raise _bad("dimensions must be a positive integer", "dimensions")
    return EmbeddingsRequest(model.strip(), value, encoding_format, dimensions)


def embeddings_body(answer: dict, model: str) -> dict:
    """The provider's list, with the fields clients rely on present."""
    usage = answer.get("usage")
    if not isinstance(usage, dict):
        usage = {}
    prompt = usage.get("prompt_tokens", 0)
    return {"object": "list", "data": answer.get("data", []), "model": model,
            "usage": {"prompt_tokens": prompt, "total_tokens": usage.get("total_tokens", prompt)}}
