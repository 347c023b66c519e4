"""Turns pydantic's validation errors into our ``dotted.path: problem`` lines, one per fault,
in the wording the docs show (``gateway.port: expected an integer, got "x"``), with secret
values hidden. ``ConfigError`` carries those lines to the CLI, the daemon and reload."""
from __future__ import annotations

import collections.abc
import dataclasses
import re
import typing
from typing import Annotated, Any, Optional, Union

from pydantic import ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails


class ConfigError(Exception):
    """The config cannot be used; ``errors`` holds one ``path: problem`` line per fault."""

    def __init__(self, errors: list[str]):
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


def show(value: Any) -> str:
    """A short, safe rendering of a bad value for an error message."""
    if isinstance(value, str):
        text = value if len(value) <= 60 else value[:57] + "..."
        return '"' + text.replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def join(path: str, key: Any) -> str:
    """``agents.list`` + 0 -> ``agents.list[0]``; ``gateway`` + ``port`` -> ``gateway.port``."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def dotted(loc: tuple) -> str:
    path = ""
    for key in loc:
        path = join(path, key)
    return path


_UNKNOWN_KEY = ("unexpected_keyword_argument", "extra_forbidden")

# pydantic error type -> the "expected ..." half of our message (the value is added after it)
_EXPECTED = {
    "int_type": "expected an integer", "int_parsing": "expected an integer",
    "int_from_float": "expected an integer",
    "float_type": "expected a number", "float_parsing": "expected a number",
    "string_type": "expected a string", "bool_type": "expected a boolean",
    "bool_parsing": "expected a boolean",
    "tuple_type": "expected a list", "list_type": "expected a list",
    "dict_type": "expected an object", "mapping_type": "expected an object",
    "dataclass_type": "expected an object", "dataclass_args_type": "expected an object",
    "model_type": "expected an object",
}


def unwrap_type(tp: Any) -> Any:
    """The type under ``Annotated[...]`` and ``Optional[...]`` (an optional key's own type)."""
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin is Union:
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        else:
            return tp


def fields_of(cls: Any) -> dict[str, FieldInfo]:
    """The fields of a config dataclass. ``cls`` is ``Any`` because pydantic's decorator adds
    ``__pydantic_fields__`` at run time, where the type checker cannot see it."""
    fields: dict[str, FieldInfo] = cls.__pydantic_fields__
    return fields


def _walk(root: type, loc: tuple) -> tuple[Optional[type], bool]:
    """Follow ``loc`` through the config types: the config object that holds the last key
    (for "known keys") and whether any field on the way is a secret (``repr=False``)."""
    tp: Any = root  # then each field's annotation: a class, a generic alias or Annotated
    owner: Optional[type] = None
    secret = False
    for key in loc:
        tp = unwrap_type(tp)
        origin = typing.get_origin(tp)
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):  # a config class
            owner = tp
            info = fields_of(tp).get(key)
            if info is None:
                return owner, secret
            secret = secret or info.repr is False
            tp = info.annotation
        elif origin is tuple:
            owner, tp = None, typing.get_args(tp)[0]
        elif origin in (collections.abc.Mapping, dict):
            owner, tp = None, typing.get_args(tp)[1]
        else:
            return None, secret
    if dataclasses.is_dataclass(unwrap_type(tp)):
        owner = unwrap_type(tp)
    return owner, secret


def _known_keys(owner: Optional[type]) -> str:
    return ", ".join(sorted(fields_of(owner))) if owner is not None else ""


def _literal_choices(expected: str) -> str:
    """pydantic says ``'token' or 'password'``; we say ``"token" or "password"``."""
    return " or ".join(f'"{choice}"' for choice in re.findall(r"'([^']*)'", expected))


def describe(error: ErrorDetails, root: type, prefix: str = "") -> str:
    """One pydantic error as our ``path: problem`` line."""
    loc = tuple(error["loc"])
    path = join(prefix, dotted(loc)) if loc else (prefix or "config")
    kind = error["type"]
    if kind in _UNKNOWN_KEY:
        owner, _ = _walk(root, loc[:-1])
        return f"{path}: unknown key (known keys: {_known_keys(owner)})"
    if kind == "missing":
        return f"{path}: required"
    _, secret = _walk(root, loc)
    shown = "(hidden)" if secret else show(error["input"])
    ctx = error.get("ctx") or {}
    if kind == "literal_error":
        expected = f"expected {_literal_choices(ctx.get('expected', ''))}"
    elif kind == "greater_than":
        expected = ("expected a positive number" if ctx.get("gt") == 0
                    else f"expected a number greater than {ctx.get('gt')}")
    elif kind == "greater_than_equal":
        expected = ("expected zero or more" if ctx.get("ge") == 0
                    else f"expected a number of at least {ctx.get('ge')}")
    elif kind in _EXPECTED:
        expected = _EXPECTED[kind]
    elif error["msg"].startswith("expected "):  # ours, from types.py (PydanticCustomError)
        expected = error["msg"]
    else:  # a pydantic check we have no wording for: its own message, never the value
        return f"{path}: {error['msg']}"
    return f"{path}: {expected}, got {shown}"


def _unknown_keys_first(errors: list[ErrorDetails]) -> list[ErrorDetails]:
    """pydantic lists an object's unknown keys after its fields' faults; a typo is the likelier
    cause of what follows, so (as before pydantic) each object's unknown keys come first."""
    first_seen: dict[tuple, int] = {}
    for index, error in enumerate(errors):
        loc = tuple(error["loc"])
        for depth in range(1, len(loc) + 1):
            first_seen.setdefault(loc[:depth], index)

    def order(error: ErrorDetails) -> list[tuple[int, int]]:
        loc = tuple(error["loc"])
        unknown = error["type"] in _UNKNOWN_KEY
        return [(0 if unknown and depth == len(loc) else 1, first_seen[loc[:depth]])
                for depth in range(1, len(loc) + 1)]

    return sorted(errors, key=order)


def describe_all(exc: ValidationError, root: type, prefix: str = "") -> list[str]:
    """Every fault of a failed validation, each object's unknown keys first, without repeats."""
    errors = _unknown_keys_first(exc.errors(include_url=False))
    return list(dict.fromkeys(describe(error, root, prefix) for error in errors))
