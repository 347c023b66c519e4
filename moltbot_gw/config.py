"""Load the gateway's JSON5 config once at start and validate it into frozen objects.

Every problem is collected with its dotted path (``gateway.auth.mode: expected ...``) so an
operator sees all of them at once; nothing on the request path ever touches raw dicts.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import ipaddress
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, Mapping, Optional

import json5

from .names import CONFIG_PATH_ENV, GATEWAY_PASSWORD_ENV, GATEWAY_TOKEN_ENV, STATE_DIR_ENV

DEFAULT_PORT = 18789
AGENT_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_ENV_REF_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_MISSING = object()


class ConfigError(Exception):
    """The config cannot be used; ``errors`` holds one ``path: problem`` line per fault."""

    def __init__(self, errors: list[str]):
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


def _key(wire: str, default: Any = _MISSING, *, check=None, doc: str = "", secret: bool = False):
    """A config field: its camelCase name on disk, its default and an optional extra check."""
    meta = {"wire": wire, "check": check, "doc": doc, "secret": secret}
    repr_ = not secret  # a logged Config must never show a secret
    if default is _MISSING:
        return field(metadata=meta, repr=repr_)
    if isinstance(default, (list, dict)):
        raise TypeError("mutable defaults are not allowed; use tuples / MappingProxyType")
    if isinstance(default, MappingProxyType):
        return field(default_factory=lambda: default, metadata=meta, repr=repr_)
    return field(default=default, metadata=meta, repr=repr_)


def _positive(value, path):
    if value <= 0:
        return f"{path}: expected a positive number, got {_show(value)}"
    return None


def _non_negative(value, path):
    if value < 0:
        return f"{path}: expected zero or more, got {_show(value)}"
    return None


def _port(value, path):
    if not 0 <= value <= 65535:
        return f"{path}: expected a port number 0-65535, got {_show(value)}"
    return None


def _bind(value, path):
    if value in ("loopback", "lan"):
        return None
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return f'{path}: expected "loopback", "lan" or an IP address, got {_show(value)}'
    return None


def _http_url(value, path):
    if value is not None and not re.match(r"^https?://[^\s/]+", value):
        return f"{path}: expected an http(s) URL, got {_show(value)}"
    return None


def _model_ref(value, path):
    if parse_model_ref(value) is None:
        return f'{path}: expected a model reference "provider/model", got {_show(value)}'
    return None


def _header_name(value, path):
    if not re.match(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$", value):
        return f"{path}: expected an HTTP header name, got {_show(value)}"
    return None


def _ip_or_network(value, path):
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return f"{path}: expected an IP address or CIDR network, got {_show(value)}"
    return None


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


# --- gateway -----------------------------------------------------------------------------

MIN_EXPOSED_SECRET_LENGTH = 16  # a secret for a gateway listening beyond loopback


@dataclass(frozen=True)
class RateLimitConfig:
    maxFailures: int = _key("maxFailures", 10, check=_positive,
                            doc="failed auth attempts allowed per client address per window")
    windowSeconds: float = _key("windowSeconds", 60.0, check=_positive,
                                doc="length of the failed-attempt window")
    exemptLoopback: bool = _key("exemptLoopback", True,
                                doc="never lock out a loopback client (not a browser page,"
                                    " not one relayed by a proxy)")


@dataclass(frozen=True)
class AuthConfig:
    mode: Literal["token", "password"] = _key("mode", "token", doc='"token" or "password"')
    token: Optional[str] = _key("token", None, secret=True,
                                doc="bearer token (env MOLTBOT_GATEWAY_TOKEN overrides)")
    password: Optional[str] = _key("password", None, secret=True,
                                   doc="password (env MOLTBOT_GATEWAY_PASSWORD overrides)")
    rateLimit: RateLimitConfig = _key("rateLimit", RateLimitConfig(),
                                      doc="failed-attempt limiter")

    @property
    def explicit_secret(self) -> Optional[str]:
        """The secret for the configured mode, if an operator set one."""
        return self.token if self.mode == "token" else self.password


@dataclass(frozen=True)
class ImagesConfig:
    allowUrl: bool = _key("allowUrl", False, doc="allow remote http(s) image URLs")
    urlAllowlist: tuple[str, ...] = _key("urlAllowlist", (), doc="hostnames images may come from")
    maxParts: int = _key("maxParts", 8, check=_positive, doc="image parts per request")
    maxTotalBytes: int = _key("maxTotalBytes", 20 * 1024 * 1024, check=_positive,
                              doc="decoded image bytes per request")
    maxBytes: int = _key("maxBytes", 10 * 1024 * 1024, check=_positive,
                         doc="decoded bytes per image")
    fetchSeconds: float = _key("fetchSeconds", 10.0, check=_positive,
                               doc="deadline of one remote image fetch, redirects and "
                                   "body included")


@dataclass(frozen=True)
class ChatCompletionsConfig:
    enabled: bool = _key("enabled", False, doc="serve POST /v1/chat/completions")
    maxBodyBytes: int = _key("maxBodyBytes", 20 * 1024 * 1024, check=_positive,
                             doc="largest request body; larger gets 413")
    keepaliveSeconds: float = _key("keepaliveSeconds", 15.0, check=_positive,
                                   doc="SSE comment interval while no token arrives")
    statelessTaskPrompts: bool = _key("statelessTaskPrompts", True,
                                      doc='"### Task:" requests touch no session')
    images: ImagesConfig = _key("images", ImagesConfig(), doc="image input limits")
    maxMessages: int = _key("maxMessages", 2000, check=_positive,
                            doc="messages per request; more gets 400 too_many_messages")
    maxContentParts: int = _key("maxContentParts", 200, check=_positive,
                                doc="content parts per message; more gets 400")
    maxTotalChars: int = _key("maxTotalChars", 1_000_000, check=_positive,
                              doc="characters of text per request (images not counted)")


@dataclass(frozen=True)
class ResponsesConfig:
    enabled: bool = _key("enabled", False, doc="serve POST /v1/responses")
    maxStoredResponses: int = _key("maxStoredResponses", 10_000, check=_positive,
                                   doc="responses kept for previous_response_id and "
                                       "item_reference (least recently used forgotten)")
    maxStoredBytes: int = _key("maxStoredBytes", 64 * 1024 * 1024, check=_positive,
                               doc="bytes those kept responses may hold in memory")
    maxInputItems: int = _key("maxInputItems", 2000, check=_positive,
                              doc="input items per request; more gets 400 too_many_input_items")
    maxContentParts: int = _key("maxContentParts", 200, check=_positive,
                                doc="content parts per input item; more gets 400")
    maxTotalChars: int = _key("maxTotalChars", 1_000_000, check=_positive,
                              doc="characters of text per request (images not counted)")


@dataclass(frozen=True)
class EndpointsConfig:
    chatCompletions: ChatCompletionsConfig = _key("chatCompletions", ChatCompletionsConfig())
    responses: ResponsesConfig = _key("responses", ResponsesConfig())


@dataclass(frozen=True)
class CorsConfig:
    allowedOrigins: tuple[str, ...] = _key("allowedOrigins", (),
                                           doc="browser origins allowed on /v1/*")


@dataclass(frozen=True)
class HttpConfig:
    endpoints: EndpointsConfig = _key("endpoints", EndpointsConfig())
    sessionHeaders: tuple[str, ...] = _key("sessionHeaders", (), check=_header_name,
                                           doc="headers whose value selects a session")
    cors: CorsConfig = _key("cors", CorsConfig())
    idleTimeoutSeconds: float = _key("idleTimeoutSeconds", 60.0, check=_positive,
                                     doc="close a connection silent this long between or"
                                         " within requests")
    headersTimeoutSeconds: float = _key("headersTimeoutSeconds", 30.0, check=_positive,
                                        doc="a request's line and headers must arrive within"
                                            " this; else 408")
    requestTimeoutSeconds: float = _key("requestTimeoutSeconds", 300.0, check=_positive,
                                        doc="a whole request, body included, must arrive"
                                            " within this; else 408")


@dataclass(frozen=True)
class WebSocketConfig:
    maxFrameBytes: int = _key("maxFrameBytes", 4 * 1024 * 1024, check=_positive,
                              doc="largest WebSocket message after connect (before it: 16 KiB);"
                                  " larger closes with 1009")


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool = _key("enabled", False, doc="serve GET /metrics")
    public: bool = _key("public", False, doc="serve /metrics without auth")


@dataclass(frozen=True)
class LimitsConfig:
    perClientConcurrency: int = _key("perClientConcurrency", 8, check=_positive,
                                     doc="agent runs one client address may have at once")
    perClientQueue: int = _key("perClientQueue", 16, check=_non_negative,
                               doc="runs of one client that may wait for a slot; more get 429")
    wsWriteRatePerSecond: float = _key("wsWriteRatePerSecond", 10.0, check=_positive,
                                       doc="state-changing WS requests per second per"
                                           " connection; more get RATE_LIMITED")
    wsWriteBurst: int = _key("wsWriteBurst", 20, check=_positive,
                             doc="state-changing WS requests allowed at once before the rate")
    wsMaxMessageChars: int = _key("wsMaxMessageChars", 1_000_000, check=_positive,
                                  doc="characters of an agent / chat.send message")


@dataclass(frozen=True)
class GatewayConfig:
    port: int = _key("port", DEFAULT_PORT, check=_port, doc="TCP port for HTTP and WebSocket")
    bind: str = _key("bind", "loopback", check=_bind, doc='"loopback", "lan" or an IP address')
    auth: AuthConfig = _key("auth", AuthConfig())
    http: HttpConfig = _key("http", HttpConfig())
    ws: WebSocketConfig = _key("ws", WebSocketConfig())
    trustedProxies: tuple[str, ...] = _key("trustedProxies", (), check=_ip_or_network,
                                           doc="proxies whose X-Forwarded-For is believed")
    metrics: MetricsConfig = _key("metrics", MetricsConfig())
    shutdownGraceSeconds: float = _key("shutdownGraceSeconds", 30.0, check=_non_negative,
                                       doc="how long in-flight requests may finish on stop")
    limits: LimitsConfig = _key("limits", LimitsConfig(),
                                doc="per-client fairness and WebSocket write limits")

    @property
    def interface(self) -> str:
        """The address to listen on."""
        if self.bind == "loopback":
            return "127.0.0.1"
        if self.bind == "lan":
            return "0.0.0.0"
        return self.bind

    @property
    def is_loopback_only(self) -> bool:
        return ipaddress.ip_address(self.interface).is_loopback

    def exposure_problem(self) -> Optional[str]:
        """Why this config may not listen where it says, or ``None``: beyond loopback the
        secret must be configured explicitly and hold at least ``MIN_EXPOSED_SECRET_LENGTH``
        non-blank characters (a short or blank one is guessed or typed by mistake)."""
        if self.is_loopback_only:
            return None
        secret = self.auth.explicit_secret
        if secret is None:
            return (f"refusing to listen on {self.interface} without an explicitly "
                    "configured secret: set gateway.auth.token (or CLAWDBOT_GATEWAY_TOKEN), "
                    "or gateway.auth.password, or bind to loopback")
        if len(secret.strip()) < MIN_EXPOSED_SECRET_LENGTH:
            return (f"refusing to listen on {self.interface} with a gateway {self.auth.mode} "
                    f"of fewer than {MIN_EXPOSED_SECRET_LENGTH} non-blank characters: set a "
                    "longer one (moltbot-gw token prints a generated one), or bind to "
                    "loopback")
        return None


# --- models ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProviderConfig:
    api: Literal["openai-completions", "anthropic-messages"] = _key(
        "api", doc='"openai-completions" or "anthropic-messages"')
    baseUrl: Optional[str] = _key("baseUrl", None, check=_http_url,
                                  doc="API base URL (Anthropic defaults to the public API)")
    apiKey: Optional[str] = _key("apiKey", None, secret=True, doc="sent as Bearer / x-api-key")
    headers: Mapping[str, str] = _key("headers", MappingProxyType({}),
                                      doc="extra request headers")
    connectTimeoutSeconds: float = _key("connectTimeoutSeconds", 10.0, check=_positive,
                                        doc="TCP/TLS connect timeout")
    idleTimeoutSeconds: float = _key("idleTimeoutSeconds", 120.0, check=_positive,
                                     doc="longest silence from the upstream mid-request")


@dataclass(frozen=True)
class ModelsConfig:
    providers: Mapping[str, ProviderConfig] = _key("providers", MappingProxyType({}))


# --- agents ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelChoice:
    """A primary model ref and the refs tried, in order, when it fails retryably."""

    primary: str = _key("primary", check=_model_ref)
    fallbacks: tuple[str, ...] = _key("fallbacks", (), check=_model_ref)

    @property
    def chain(self) -> tuple[str, ...]:
        return (self.primary,) + self.fallbacks


@dataclass(frozen=True)
class HistoryConfig:
    maxMessages: int = _key("maxMessages", 200, check=_positive,
                            doc="history messages replayed to the model")
    maxTokens: int = _key("maxTokens", 100000, check=_positive,
                          doc="estimated history tokens replayed to the model")


@dataclass(frozen=True)
class AgentDefaults:
    model: ModelChoice = _key("model", ModelChoice("builtin/echo"),
                              doc='"provider/model" or {primary, fallbacks}')
    timeoutSeconds: float = _key("timeoutSeconds", 600.0, check=_positive,
                                 doc="a run is cancelled after this long")
    maxConcurrent: int = _key("maxConcurrent", 64, check=_positive,
                              doc="runs executing at once, gateway-wide")
    maxReplyChars: int = _key("maxReplyChars", 2_000_000, check=_positive,
                              doc="longest model reply (text, reasoning, tool arguments)")
    history: HistoryConfig = _key("history", HistoryConfig())


@dataclass(frozen=True)
class AgentConfig:
    id: str = _key("id", doc="lowercase, see Agents above")
    default: bool = _key("default", False, doc="the agent used when none is named")
    name: Optional[str] = _key("name", None, doc="display name")
    systemPrompt: Optional[str] = _key("systemPrompt", None, doc="the agent's persona")
    model: Optional[ModelChoice] = _key("model", None, doc="overrides agents.defaults.model")
    models: tuple[str, ...] = _key("models", (), check=_model_ref,
                                   doc="allowlist for x-moltbot-model overrides")
    embeddingModel: Optional[str] = _key("embeddingModel", None, check=_model_ref,
                                         doc="model for /v1/embeddings with moltbot:<id>")
    workspace: Optional[str] = _key("workspace", None,
                                    doc="folder whose AGENTS.md / SOUL.md join the prompt")
    timeoutSeconds: Optional[float] = _key("timeoutSeconds", None, check=_positive,
                                           doc="overrides agents.defaults.timeoutSeconds")
    history: Optional[HistoryConfig] = _key("history", None,
                                            doc="overrides agents.defaults.history")


@dataclass(frozen=True)
class AgentsConfig:
    defaults: AgentDefaults = _key("defaults", AgentDefaults())
    list: tuple[AgentConfig, ...] = _key("list", ())


def _positive_or_unset(value, path):
    return None if value is None else _positive(value, path)


@dataclass(frozen=True)
class SessionConfig:
    """Retention and size bounds of the session store (docs/operations.rst, "Sessions")."""

    maxSessionsPerAgent: int = _key("maxSessionsPerAgent", 10_000, check=_positive,
                                    doc="sessions kept per agent; least recently used pruned")
    idleDays: Optional[float] = _key("idleDays", None, check=_positive_or_unset,
                                     doc="sessions idle longer are pruned (unset: kept)")
    maxTranscriptBytes: int = _key("maxTranscriptBytes", 64 * 1024 * 1024, check=_positive,
                                   doc="a transcript past this is compacted to its newest turns")


@dataclass(frozen=True)
class Config:
    gateway: GatewayConfig = _key("gateway", GatewayConfig())
    models: ModelsConfig = _key("models", ModelsConfig())
    agents: AgentsConfig = _key("agents", AgentsConfig())
    session: SessionConfig = _key("session", SessionConfig())
    # Not in the file: where it came from and where state lives.
    state_dir: Path = field(default=Path("~/.moltbot").expanduser(), metadata={"wire": None})
    path: Optional[Path] = field(default=None, metadata={"wire": None})


# --- conversion --------------------------------------------------------------------------


def _show(value: Any) -> str:
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


def _join(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def _type_name(tp) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp)))


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _convert(tp, value, path: str, errors: list[str], secret: bool = False):
    """Convert raw JSON ``value`` to type ``tp``; on a fault append an error, return _MISSING."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    shown = "(hidden)" if secret else _show(value)
    if origin is typing.Union:  # Optional[X]
        inner = [a for a in args if a is not type(None)]
        if value is None:
            return None
        return _convert(inner[0], value, path, errors, secret)
    if origin is Literal:
        if value in args:
            return value
        choices = " or ".join(f'"{a}"' for a in args)
        errors.append(f"{path}: expected {choices}, got {shown}")
        return _MISSING
    if tp is ModelChoice:
        if isinstance(value, str):
            value = {"primary": value}
        elif not isinstance(value, dict):
            errors.append(f'{path}: expected "provider/model" or {{primary, fallbacks}}, got {shown}')
            return _MISSING
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path, errors)
    if origin is tuple:
        if not isinstance(value, list):
            errors.append(f"{path}: expected a list, got {shown}")
            return _MISSING
        items = [_convert(args[0], item, _join(path, i), errors, secret)
                 for i, item in enumerate(value)]
        return _MISSING if _MISSING in items else tuple(items)
    if origin in (collections.abc.Mapping, dict):
        if not isinstance(value, dict):
            errors.append(f"{path}: expected an object, got {shown}")
            return _MISSING
        out = {k: _convert(args[1], v, _join(path, k), errors, secret) for k, v in value.items()}
        return _MISSING if _MISSING in out.values() else MappingProxyType(out)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif isinstance(value, tp):
        return value
    errors.append(f"{path}: expected {_type_name(tp)}, got {shown}")
    return _MISSING


def _build(cls, raw, path: str, errors: list[str]):
    """Build dataclass ``cls`` from a raw object, reporting unknown keys and bad values."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        errors.append(f"{path or 'config'}: expected an object, got {_show(raw)}")
        return _MISSING
    hints = _hints(cls)
    wire_fields = {f.metadata["wire"]: f for f in dataclasses.fields(cls) if f.metadata["wire"]}
    for key in raw:
        if key not in wire_fields:
            known = ", ".join(sorted(wire_fields))
            errors.append(f"{_join(path, key)}: unknown key (known keys: {known})")
    kwargs = {}
    for wire, f in wire_fields.items():
        where = _join(path, wire)
        if wire not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                errors.append(f"{where}: required")
            continue
        secret = f.metadata.get("secret", False)
        value = _convert(hints[f.name], raw[wire], where, errors, secret)
        if value is _MISSING:
            continue
        check = f.metadata.get("check")
        if check is not None and value is not None:
            for item_path, item in _items_to_check(where, value):
                problem = check(item, item_path)
                if problem:
                    errors.append(problem)
        kwargs[f.name] = value
    try:
        return cls(**kwargs)
    except TypeError:  # a required field was missing; already reported
        return _MISSING


def _items_to_check(path: str, value):
    if isinstance(value, tuple):
        return [(_join(path, i), v) for i, v in enumerate(value)]
    return [(path, value)]


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
        return [substitute_env(v, env, _join(path, i), errors) for i, v in enumerate(raw)]
    if isinstance(raw, dict):
        return {k: substitute_env(v, env, _join(path, k), errors) for k, v in raw.items()}
    return raw


# --- locating and loading ------------------------------------------------------------------


def _first_env(env: Mapping[str, str], *names: str) -> Optional[str]:
    for name in names:
        value = env.get(name)
        if value:
            return value
    return None


def resolve_state_dir(env: Mapping[str, str] = os.environ) -> Path:
    found = _first_env(env, *STATE_DIR_ENV)
    return Path(found).expanduser() if found else Path("~/.moltbot").expanduser()


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


def _check_references(config: Config, errors: list[str]) -> None:
    """Cross-field rules: agent ids, one default, model refs naming configured providers."""
    providers = set(config.models.providers) | {"builtin"}

    def check_ref(ref: str, where: str) -> None:
        parsed = parse_model_ref(ref)
        if parsed and parsed[0] not in providers:
            errors.append(f'{where}: unknown provider "{parsed[0]}" in {_show(ref)} '
                          f"(configured: {', '.join(sorted(providers))})")

    for name, provider in config.models.providers.items():
        if name == "builtin":
            errors.append('models.providers.builtin: "builtin" is reserved for the built-in provider')
        if provider.api == "openai-completions" and not provider.baseUrl:
            errors.append(f"models.providers.{name}.baseUrl: required for openai-completions")

    def check_choice(choice: ModelChoice, where: str) -> None:
        check_ref(choice.primary, f"{where}.primary" if choice.fallbacks else where)
        for i, ref in enumerate(choice.fallbacks):
            check_ref(ref, f"{where}.fallbacks[{i}]")

    check_choice(config.agents.defaults.model, "agents.defaults.model")
    seen: set[str] = set()
    defaults = 0
    for i, agent in enumerate(config.agents.list):
        where = f"agents.list[{i}]"
        if normalize_agent_id(agent.id) is None:
            errors.append(f"{where}.id: expected a lowercase id matching "
                          f"[a-z0-9][a-z0-9_-]{{0,63}}, got {_show(agent.id)}")
        elif normalize_agent_id(agent.id) in seen:
            errors.append(f"{where}.id: duplicate agent id {_show(agent.id)}")
        seen.add(normalize_agent_id(agent.id) or agent.id)
        defaults += agent.default
        if agent.model is not None:
            check_choice(agent.model, f"{where}.model")
        for j, ref in enumerate(agent.models):
            check_ref(ref, f"{where}.models[{j}]")
        if agent.embeddingModel:
            check_ref(agent.embeddingModel, f"{where}.embeddingModel")
    if defaults > 1:
        errors.append("agents.list: more than one agent is marked default")


def parse_config(raw: Any, env: Mapping[str, str] = os.environ,
                 state_dir: Optional[Path] = None, path: Optional[Path] = None) -> Config:
    """Validate an already-parsed JSON5 document into a frozen ``Config``."""
    errors: list[str] = []
    if raw is None:
        raw = {}
    if isinstance(raw, dict):
        raw = _apply_auth_env(substitute_env(raw, env, "", errors), env)
    built = _build(Config, raw, "", errors)
    if built is not _MISSING:
        # Bad values were left at their defaults, so cross-checks still make sense.
        _check_references(built, errors)
    if errors or built is _MISSING:
        raise ConfigError(errors or ["config: invalid"])
    return dataclasses.replace(built, state_dir=state_dir or resolve_state_dir(env), path=path)


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
            raise ConfigError([f"{path}: config file not found"])
        text = None
    except OSError as e:
        raise ConfigError([f"{path}: cannot read config file ({e.strerror})"])
    raw = None
    if text is not None and text.strip():
        try:
            raw = json5.loads(text)
        except ValueError as e:
            raise ConfigError([f"{path}: not valid JSON5: {e}"])
    return parse_config(raw, env, resolve_state_dir(env), path)


def with_overrides(config: Config, port: Optional[int] = None, bind: Optional[str] = None) -> Config:
    """Apply command-line overrides, validating them like file values."""
    errors: list[str] = []
    gateway = config.gateway
    if port is not None:
        problem = _port(port, "--port")
        if problem:
            errors.append(problem)
        gateway = dataclasses.replace(gateway, port=port)
    if bind is not None:
        problem = _bind(bind, "--bind")
        if problem:
            errors.append(problem)
        gateway = dataclasses.replace(gateway, bind=bind)
    if errors:
        raise ConfigError(errors)
    return dataclasses.replace(config, gateway=gateway)


def iter_keys(cls=Config, prefix: str = ""):
    """Yield ``(dotted key, field)`` for every key of the schema (used for the docs check)."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        wire = f.metadata.get("wire")
        if not wire:
            continue
        key = _join(prefix, wire)
        yield key, f
        tp = hints[f.name]
        inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        target = tp if dataclasses.is_dataclass(tp) else (inner[0] if inner else None)
        if target is not None and target is not ModelChoice:
            sub = f"{key}[]" if typing.get_origin(tp) is tuple else key
            if typing.get_origin(tp) in (collections.abc.Mapping, dict):
                sub = f"{key}.<name>"
            yield from iter_keys(target, sub)
