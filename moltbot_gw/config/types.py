"""The value types of config keys, as ``Annotated`` pydantic types: strict JSON scalars (no
"5" for 5, no true for 1), positive numbers, ports, bind addresses, URLs, model references.

A check that pydantic has no constraint for raises ``PydanticCustomError`` whose message is the
"expected ..." half of our ``path: expected ..., got ...`` line (``errors.py`` adds the rest).
"""
from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Optional

from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, Strict, WithJsonSchema
from pydantic_core import PydanticCustomError

AGENT_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_HEADER_NAME_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
_HTTP_URL_RE = re.compile(r"^https?://[^\s/]+")


def parse_model_ref(ref: str) -> Optional[tuple[str, str]]:
    """Split ``provider/model`` at the first slash (model ids may hold slashes themselves)."""
    if not isinstance(ref, str):
        return None
    provider, sep, model = ref.strip().partition("/")
    if not sep or not provider or not model:
        return None
    return provider, model


def normalize_agent_id(raw: str) -> Optional[str]:
    """Trim and lowercase an agent id; ``None`` when it is not a valid id."""
    if not isinstance(raw, str):
        return None
    agent_id = raw.strip().lower()
    return agent_id if AGENT_ID_RE.match(agent_id) else None


def _integral(value: Any) -> Any:
    """JSON5 writes ``1e6`` as a float: a float with no fraction is an integer too."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# The BeforeValidator comes last so pydantic applies the bounds natively (and puts them into
# the JSON Schema as minimum / exclusiveMinimum).
_INTEGRAL = BeforeValidator(_integral)
Int = Annotated[int, Strict(), _INTEGRAL]
PositiveInt = Annotated[int, Strict(), Field(gt=0), _INTEGRAL]
NonNegativeInt = Annotated[int, Strict(), Field(ge=0), _INTEGRAL]
Float = Annotated[float, Strict()]  # strict float still takes an int (and returns a float)
PositiveFloat = Annotated[float, Strict(), Field(gt=0)]
NonNegativeFloat = Annotated[float, Strict(), Field(ge=0)]
Str = Annotated[str, Strict()]
Bool = Annotated[bool, Strict()]


def _check(pattern_ok, expected: str, kind: str):
    """An after-validator: keep the value when ``pattern_ok(value)``, else our error."""
    def validate(value):
        if not pattern_ok(value):
            raise PydanticCustomError(kind, expected)
        return value
    return AfterValidator(validate)


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _is_network(value: str) -> bool:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return True


# A port keeps its own message ("a port number 0-65535") rather than pydantic's two bounds.
Port = Annotated[int, Strict(), _check(lambda v: 0 <= v <= 65535,
                                       "expected a port number 0-65535", "port"),
                 _INTEGRAL, WithJsonSchema({"type": "integer", "minimum": 0, "maximum": 65535})]
Bind = Annotated[str, Strict(), _check(lambda v: v in ("loopback", "lan") or _is_ip(v),
                                       'expected "loopback", "lan" or an IP address', "bind")]
HttpUrl = Annotated[str, Strict(), _check(lambda v: bool(_HTTP_URL_RE.match(v)),
                                          "expected an http(s) URL", "http_url")]
ModelRef = Annotated[str, Strict(), _check(lambda v: parse_model_ref(v) is not None,
                                           'expected a model reference "provider/model"',
                                           "model_ref")]
HeaderName = Annotated[str, Strict(), _check(lambda v: bool(_HEADER_NAME_RE.match(v)),
                                             "expected an HTTP header name", "header_name")]
IpOrNetwork = Annotated[str, Strict(), _check(_is_network,
                                              "expected an IP address or CIDR network",
                                              "ip_network")]


def _null_is_defaults(value: Any) -> Any:
    return {} if value is None else value


# ``auth: null`` in a file means "all defaults", as an omitted section does.
NULL_IS_DEFAULTS = BeforeValidator(_null_is_defaults)

# Every config object is ``@dataclass(frozen=True, config=SECTION_CONFIG)`` (pydantic's):
# frozen (shared by every request, never changed after load) and strict about keys (a typo is
# an error, not silently ignored). Field names are the camelCase JSON5 keys themselves, so one
# name serves docs, files and code and no alias is needed. A pydantic dataclass, not a
# BaseModel, so ``dataclasses.replace`` and ``FrozenInstanceError`` keep working for callers.
SECTION_CONFIG = ConfigDict(extra="forbid")
