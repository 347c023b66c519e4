"""The ``gateway`` section: where the gateway listens, how clients authenticate, and the limits
of the HTTP and WebSocket front door. ``GatewayConfig.exposure_problem`` is the one rule for
listening beyond loopback."""
import ipaddress
from typing import Annotated, Literal, Optional

from pydantic import Field
from pydantic.dataclasses import dataclass

from .types import (
    NULL_IS_DEFAULTS,
    SECTION_CONFIG,
    Bind,
    Bool,
    HeaderName,
    IpOrNetwork,
    NonNegativeFloat,
    NonNegativeInt,
    Port,
    PositiveFloat,
    PositiveInt,
    Str,
)

DEFAULT_PORT = 18789
MIN_EXPOSED_SECRET_LENGTH = 16  # a secret for a gateway listening beyond loopback


@dataclass(frozen=True, config=SECTION_CONFIG)
class RateLimitConfig:
    maxFailures: PositiveInt = Field(
        default=10, description="failed auth attempts allowed per client address per window")
    windowSeconds: PositiveFloat = Field(
        default=60.0, description="length of the failed-attempt window")
    exemptLoopback: Bool = Field(
        default=True,
        description="never lock out a direct loopback client (not a browser page, not via a proxy)")


@dataclass(frozen=True, config=SECTION_CONFIG)
class AuthConfig:
    mode: Literal["token", "password"] = Field(default="token", description='"token" or "password"')
    # Secrets: repr=False keeps them out of any logged Config; errors.py hides their values.
    token: Optional[Str] = Field(default=None, repr=False,
                                 description="bearer token (env MOLTBOT_GATEWAY_TOKEN overrides)")
    password: Optional[Str] = Field(
        default=None, repr=False, description="password (env MOLTBOT_GATEWAY_PASSWORD overrides)")
    rateLimit: Annotated[RateLimitConfig, NULL_IS_DEFAULTS] = Field(
        default_factory=RateLimitConfig, description="failed-attempt limiter")

    @property
    def explicit_secret(self) -> Optional[str]:
        """The secret for the configured mode, if an operator set one."""
        return self.token if self.mode == "token" else self.password


@dataclass(frozen=True, config=SECTION_CONFIG)
class ImagesConfig:
    allowUrl: Bool = Field(default=False, description="allow remote http(s) image URLs")
    urlAllowlist: tuple[Str, ...] = Field(default=(), description="hostnames images may come from")
    maxParts: PositiveInt = Field(default=8, description="image parts per request")
    maxTotalBytes: PositiveInt = Field(default=20 * 1024 * 1024,
                                       description="decoded image bytes per request")
    maxBytes: PositiveInt = Field(default=10 * 1024 * 1024, description="decoded bytes per image")
    fetchSeconds: PositiveFloat = Field(
        default=10.0, description="deadline of one remote image fetch, redirects and body included")


@dataclass(frozen=True, config=SECTION_CONFIG)
class ChatCompletionsConfig:
    enabled: Bool = Field(default=False, description="serve POST /v1/chat/completions")
    maxBodyBytes: PositiveInt = Field(default=20 * 1024 * 1024,
                                      description="largest request body on any /v1 endpoint; "
                                                  "larger gets 413")
    keepaliveSeconds: PositiveFloat = Field(
        default=15.0, description="SSE comment interval while no token arrives")
    statelessTaskPrompts: Bool = Field(
        default=True, description='"### Task:" requests touch no session')
    images: Annotated[ImagesConfig, NULL_IS_DEFAULTS] = Field(
        default_factory=ImagesConfig, description="image input limits")
    maxMessages: PositiveInt = Field(
        default=2000, description="messages per request; more gets 400 too_many_messages")
    maxContentParts: PositiveInt = Field(
        default=200, description="content parts per message; more gets 400")
    maxTotalChars: PositiveInt = Field(
        default=1_000_000, description="characters of text per request (images not counted)")


@dataclass(frozen=True, config=SECTION_CONFIG)
class ResponsesConfig:
    enabled: Bool = Field(default=False, description="serve POST /v1/responses")
    maxStoredResponses: PositiveInt = Field(
        default=10_000, description="responses kept for previous_response_id and item_reference "
                            "(least recently used forgotten)")
    maxStoredBytes: PositiveInt = Field(
        default=64 * 1024 * 1024, description="bytes those kept responses may hold in memory")
    maxInputItems: PositiveInt = Field(
        default=2000, description="input items per request; more gets 400 too_many_input_items")
    maxContentParts: PositiveInt = Field(
        default=200, description="content parts per input item; more gets 400")
    maxTotalChars: PositiveInt = Field(
        default=1_000_000, description="characters of text per request (images not counted)")


@dataclass(frozen=True, config=SECTION_CONFIG)
class EndpointsConfig:
    chatCompletions: Annotated[ChatCompletionsConfig, NULL_IS_DEFAULTS] = Field(
        default_factory=ChatCompletionsConfig, description="the OpenAI Chat Completions endpoint")
    responses: Annotated[ResponsesConfig, NULL_IS_DEFAULTS] = Field(
        default_factory=ResponsesConfig, description="the OpenAI Responses endpoint")


@dataclass(frozen=True, config=SECTION_CONFIG)
class CorsConfig:
    allowedOrigins: tuple[Str, ...] = Field(
        default=(), description="browser origins allowed on /v1/*")


@dataclass(frozen=True, config=SECTION_CONFIG)
class HttpConfig:
    endpoints: Annotated[EndpointsConfig, NULL_IS_DEFAULTS] = Field(
        default_factory=EndpointsConfig,
        description="which /v1 endpoints are served, and their limits")
    sessionHeaders: tuple[HeaderName, ...] = Field(
        default=(), description="headers whose value selects a session")
    cors: Annotated[CorsConfig, NULL_IS_DEFAULTS] = Field(
        default_factory=CorsConfig, description="cross-origin access from browsers")
    idleTimeoutSeconds: PositiveFloat = Field(
        default=60.0, description="close a connection silent this long between or within requests")
    headersTimeoutSeconds: PositiveFloat = Field(
        default=30.0, description="a request's line and headers must arrive within this; else 408")
    requestTimeoutSeconds: PositiveFloat = Field(
        default=300.0,
        description="a whole request, body included, must arrive within this; else 408")


@dataclass(frozen=True, config=SECTION_CONFIG)
class WebSocketConfig:
    maxFrameBytes: PositiveInt = Field(
        default=4 * 1024 * 1024, description="largest WebSocket message after connect (16 KiB "
                                     "before); larger closes with 1009")


@dataclass(frozen=True, config=SECTION_CONFIG)
class MetricsConfig:
    enabled: Bool = Field(default=False, description="serve GET /metrics")
    public: Bool = Field(default=False, description="serve /metrics without auth")


@dataclass(frozen=True, config=SECTION_CONFIG)
class LimitsConfig:
    perClientConcurrency: PositiveInt = Field(
        default=8, description="agent runs one client address may have at once")
    perClientQueue: NonNegativeInt = Field(
        default=16, description="runs of one client that may wait for a slot; more get 429")
    wsWriteRatePerSecond: PositiveFloat = Field(
        default=10.0, description="state-changing WS requests per second per connection; more get "
                          "RATE_LIMITED")
    wsWriteBurst: PositiveInt = Field(
        default=20, description="state-changing WS requests allowed at once before the rate")
    wsMaxMessageChars: PositiveInt = Field(
        default=1_000_000, description="characters of an agent / chat.send message")


@dataclass(frozen=True, config=SECTION_CONFIG)
class GatewayConfig:
    port: Port = Field(default=DEFAULT_PORT, description="TCP port for HTTP and WebSocket")
    bind: Bind = Field(default="loopback", description='"loopback", "lan" or an IP address')
    auth: Annotated[AuthConfig, NULL_IS_DEFAULTS] = Field(
        default_factory=AuthConfig, description="how clients authenticate")
    http: Annotated[HttpConfig, NULL_IS_DEFAULTS] = Field(
        default_factory=HttpConfig, description="HTTP endpoints, CORS and slow-client deadlines")
    ws: Annotated[WebSocketConfig, NULL_IS_DEFAULTS] = Field(
        default_factory=WebSocketConfig, description="WebSocket limits")
    trustedProxies: tuple[IpOrNetwork, ...] = Field(
        default=(), description="proxies whose X-Forwarded-For is believed")
    metrics: Annotated[MetricsConfig, NULL_IS_DEFAULTS] = Field(
        default_factory=MetricsConfig, description="the Prometheus endpoint")
    shutdownGraceSeconds: NonNegativeFloat = Field(
        default=30.0, description="how long in-flight requests may finish on stop")
    limits: Annotated[LimitsConfig, NULL_IS_DEFAULTS] = Field(
        default_factory=LimitsConfig, description="per-client fairness and WebSocket write limits")

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
                    "configured secret: set gateway.auth.token (or MOLTBOT_GATEWAY_TOKEN), "
                    "or gateway.auth.password, or bind to loopback")
        if len(secret.strip()) < MIN_EXPOSED_SECRET_LENGTH:
            return (f"refusing to listen on {self.interface} with a gateway {self.auth.mode} "
                    f"of fewer than {MIN_EXPOSED_SECRET_LENGTH} non-blank characters: set a "
                    "longer one (moltbot-gw token prints a generated one), or bind to "
                    "loopback")
        return None
