"""Small checks every OpenAI-shaped request parser shares: the 400 error naming a param,
number/integer tests that refuse booleans, and a function tool's definition."""
from __future__ import annotations

from typing import Any, Mapping, Optional

from .errors import APIError


def bad_request(message: str, param: Optional[str], code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def function_definition(name: str, spec: Mapping[str, Any], where: str) -> dict:
    """``{name, description?, parameters?, strict?}`` of a function tool, its optional fields
    checked in ``spec`` (chat nests them under ``function``, Responses keeps them flat) and
    named ``<where>.<field>`` in errors."""
    function: dict[str, Any] = {"name": name}
    for field, kind, wording in (("description", str, "a string"),
                                 ("parameters", dict, "a JSON Schema object"),
                                 ("strict", bool, "a boolean")):
        value = spec.get(field)
        if value is None:
            continue
        if not isinstance(value, kind):
            raise bad_request(f"{where}.{field} must be {wording}", f"{where}.{field}",
                              "invalid_type")
        function[field] = value
    return function
