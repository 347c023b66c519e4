"""Finding, reading and validating the config: the file's path and the state dir from the
environment, ``${VAR}`` substitution, gateway secrets from the environment, and the
``--port`` / ``--bind`` overrides. Every fault is collected before ``ConfigError`` is raised."""
from __future__ import annotations

import copy
import dataclasses
import functools
import os
import re
from pathlib import Path
from typing import Any, Mapping, Optional

import json5
from pydantic import TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from ..names import CONFIG_PATH_ENV, GATEWAY_PASSWORD_ENV, GATEWAY_TOKEN_ENV, STATE_DIR_ENV
from .errors import ConfigError, describe_all, join
from .references import reference_problems
from .root import DEFAULT_STATE_DIR, Config, ConfigFile, file_adapter
from .types import Bind, Port

_ENV_REF_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SALVAGE_PASSES = 8


def substitute_env(raw: Any, env: Mapping[str, str], path: str, errors: list[str]) -> Any:
    """Replace ``${VAR}`` in every string; a variable that is not set is an error."""
    if isinstance(raw, str):
        def repl(match):
            name = match.group(1)
            if name not in env:
                errors.append(f"{path}: environment variable {name} is not set")
                return ""
            return env[name]
        return _ENV_REF_RE.sub(repl, raw)
    if isinstance(raw, list):
        return [substitute_env(v, env, join(path, i), errors) for i, v in enumerate(raw)]
    if isinstance(raw, dict):
        return {k: substitute_env(v, env, join(path, k), errors) for k, v in raw.items()}
    return raw


def _first_env(env: Mapping[str, str], *names: str) -> Optional[str]:
    for name in names:
        value = env.get(name)
        if value:
            return value
    return None


def resolve_state_dir(env: Mapping[str, str] = os.environ) -> Path:
    found = _first_env(env, *STATE_DIR_ENV)
    return Path(found).expanduser() if found else DEFAULT_STATE_DIR


def resolve_config_path(explicit: Optional[str], env: Mapping[str, str] = os.environ) -> Path:
    if explicit:
        return Path(explicit).expanduser()
    found = _first_env(env, *CONFIG_PATH_ENV)
    if found:
        return Path(found).expanduser()
    return resolve_state_dir(env) / "moltbot.json"


def _apply_auth_env(raw: dict, env: Mapping[str, str]) -> dict:
    """Gateway secrets from the environment override the file."""
    token = _first_env(env, *GATEWAY_TOKEN_ENV)
    password = _first_env(env, *GATEWAY_PASSWORD_ENV)
    if token is None and password is None:
        return raw
    gateway = raw.get("gateway")
    if gateway is not None and not isinstance(gateway, dict):
        return raw  # reported by validation
    gateway = dict(gateway or {})
    auth = gateway.get("auth")
    if auth is not None and not isinstance(auth, dict):
        return raw
    auth = dict(auth or {})
    if token is not None:
        auth["token"] = token
    if password is not None:
        auth["password"] = password
    if "mode" not in auth and password is not None and token is None and not auth.get("token"):
        auth["mode"] = "password"
    gateway["auth"] = auth
    return {**raw, "gateway": gateway}


def _without_faults(raw: Any, faults: list[ErrorDetails]) -> Optional[dict]:
    """A copy of ``raw`` with every faulty value removed, so it takes its default; ``None``
    when the document itself is the fault. A bad list item drops the whole list, and an
    object missing a required key drops that object."""
    if not isinstance(raw, dict):
        return None
    raw = copy.deepcopy(raw)
    for fault in faults:
        loc = list(fault["loc"])
        if fault["type"] == "missing":
            loc = loc[:-1]
        if not _remove(raw, loc):
            return None
    return raw


def _remove(raw: dict, loc: list) -> bool:
    """Remove the innermost object key on ``loc`` that exists (a list holding the value
    goes whole); ``False`` when only the document itself is left to remove."""
    while loc:
        if isinstance(loc[-1], str):
            parent: Any = raw
            for key in loc[:-1]:
                if isinstance(parent, dict):
                    parent = parent.get(key)
                elif isinstance(parent, list) and isinstance(key, int) and key < len(parent):
                    parent = parent[key]
                else:
                    parent = None
            if isinstance(parent, dict) and loc[-1] in parent:
                del parent[loc[-1]]
                return True
        loc = loc[:-1]
    return False


def _salvaged(raw: Any, failure: ValidationError) -> Optional[ConfigFile]:
    """The config with every faulty value at its default, so the cross-field rules can still
    be checked (and reported with the field errors), or ``None`` if nothing usable is left."""
    for _ in range(_SALVAGE_PASSES):
        raw = _without_faults(raw, failure.errors(include_url=False))
        if raw is None:
            return None
        try:
            return file_adapter().validate_python(raw)
        except ValidationError as again:
            failure = again
    return None


def parse_config(raw: Any, env: Mapping[str, str] = os.environ,
                 state_dir: Optional[Path] = None, path: Optional[Path] = None) -> Config:
    """Validate an already-parsed JSON5 document into a frozen ``Config``."""
    errors: list[str] = []
    if raw is None:
        raw = {}
    if isinstance(raw, dict):
        raw = _apply_auth_env(substitute_env(raw, env, "", errors), env)
    try:
        document: Optional[ConfigFile] = file_adapter().validate_python(raw)
    except ValidationError as failure:
        errors.extend(describe_all(failure, ConfigFile))
        document = _salvaged(raw, failure)
    if document is not None:
        errors.extend(reference_problems(document))
    if errors or document is None:
        raise ConfigError(errors or ["config: invalid"])
    return Config(gateway=document.gateway, models=document.models, agents=document.agents,
                  session=document.session, tools=document.tools,
                  state_dir=state_dir or resolve_state_dir(env),
                  path=path)


def load_config(explicit_path: Optional[str] = None,
                env: Mapping[str, str] = os.environ) -> Config:
    """Find, read and validate the config. A missing file at the default path means defaults;
    a missing file that was named explicitly is an error."""
    path = resolve_config_path(explicit_path, env)
    named = bool(explicit_path or _first_env(env, *CONFIG_PATH_ENV))
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if named:
            raise ConfigError([f"{path}: config file not found"]) from None
        text = None
    except OSError as e:
        raise ConfigError([f"{path}: cannot read config file ({e.strerror})"]) from e
    raw = None
    if text is not None and text.strip():
        try:
            raw = json5.loads(text)
        except ValueError as e:
            raise ConfigError([f"{path}: not valid JSON5: {e}"]) from e
    return parse_config(raw, env, resolve_state_dir(env), path)


@functools.cache
def _override_adapter(name: str) -> TypeAdapter:
    return TypeAdapter({"port": Port, "bind": Bind}[name])


def with_overrides(config: Config, port: Optional[int] = None,
                   bind: Optional[str] = None) -> Config:
    """Apply command-line overrides, validating them like file values."""
    errors: list[str] = []
    # Any: each value is checked below by its field's own validator, not by this dict's type.
    changes: dict[str, Any] = {name: value for name, value in (("port", port), ("bind", bind))
                               if value is not None}
    for name, value in changes.items():
        try:
            _override_adapter(name).validate_python(value)
        except ValidationError as failure:
            errors.extend(describe_all(failure, ConfigFile, prefix=f"--{name}"))
    if errors:
        raise ConfigError(errors)
    if not changes:
        return config
    return dataclasses.replace(config, gateway=dataclasses.replace(config.gateway, **changes))
