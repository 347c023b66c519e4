"""The ``agents`` section (which model answers, with what prompt, limits and history) and the
``session`` section (how much of the session store is kept)."""
from typing import Annotated, Any, Optional, Union

from pydantic import BeforeValidator, Field
from pydantic.dataclasses import dataclass
from pydantic_core import PydanticCustomError

from .store import StoreConfig
from .tools import AgentToolsConfig
from .types import NULL_IS_DEFAULTS, SECTION_CONFIG, Bool, ModelRef, PositiveFloat, PositiveInt, Str


@dataclass(frozen=True, config=SECTION_CONFIG)
class ModelChoice:
    """A primary model ref and the refs tried, in order, when it fails retryably."""

    primary: ModelRef = Field(description='"provider/model"')
    fallbacks: tuple[ModelRef, ...] = Field(
        default=(), description="tried in order when the model before fails retryably")

    @property
    def chain(self) -> tuple[str, ...]:
        return (self.primary,) + self.fallbacks


def _model_choice(value: Any) -> Any:
    """``"p/m"`` is short for ``{primary: "p/m"}``."""
    if isinstance(value, str):
        return {"primary": value}
    if isinstance(value, (dict, ModelChoice)):
        return value
    raise PydanticCustomError("model_choice", 'expected "provider/model" or {primary, fallbacks}')


ModelChoiceOrRef = Annotated[ModelChoice, BeforeValidator(
    _model_choice, json_schema_input_type=Union[ModelRef, ModelChoice])]


@dataclass(frozen=True, config=SECTION_CONFIG)
class HistoryConfig:
    maxMessages: PositiveInt = Field(
        default=200, description="history messages replayed to the model")
    maxTokens: PositiveInt = Field(
        default=100000, description="estimated history tokens replayed to the model")


@dataclass(frozen=True, config=SECTION_CONFIG)
class ToolLoopConfig:
    """How far a run's server-tool loop may go (see docs/tools)."""

    maxIterations: PositiveInt = Field(
        default=20, description="rounds of server tool calls in one run; past it the run fails")
    maxParallel: PositiveInt = Field(
        default=4, description="server tool calls of one reply running at once")
    maxResultChars: PositiveInt = Field(
        default=64_000, description="longest tool result fed back to the model (cut marked)")


@dataclass(frozen=True, config=SECTION_CONFIG)
class AgentDefaults:
    model: ModelChoiceOrRef = Field(default_factory=lambda: ModelChoice("builtin/echo"),
                                    description='"provider/model" or {primary, fallbacks}')
    timeoutSeconds: PositiveFloat = Field(default=600.0,
                                          description="a run is cancelled after this long")
    maxConcurrent: PositiveInt = Field(
        default=64, description="runs executing at once, gateway-wide")
    maxReplyChars: PositiveInt = Field(
        default=2_000_000, description="longest model reply (text, reasoning, tool arguments)")
    history: Annotated[HistoryConfig, NULL_IS_DEFAULTS] = Field(
        default_factory=HistoryConfig, description="how much history a turn replays")
    tools: Annotated[ToolLoopConfig, NULL_IS_DEFAULTS] = Field(
        default_factory=ToolLoopConfig, description="limits of the server-tool loop")


@dataclass(frozen=True, config=SECTION_CONFIG)
class AgentConfig:
    id: Str = Field(description="lowercase, see Agents above")
    default: Bool = Field(default=False, description="the agent used when none is named")
    name: Optional[Str] = Field(default=None, description="display name")
    systemPrompt: Optional[Str] = Field(default=None, description="the agent's persona")
    model: Optional[ModelChoiceOrRef] = Field(default=None,
                                              description="overrides agents.defaults.model")
    models: tuple[ModelRef, ...] = Field(
        default=(), description="allowlist for x-moltbot-model overrides")
    embeddingModel: Optional[ModelRef] = Field(
        default=None, description="model for /v1/embeddings with moltbot:<id>")
    workspace: Optional[Str] = Field(
        default=None, description="folder whose AGENTS.md / SOUL.md join the prompt; "
                                          "the root of the fs tools")
    timeoutSeconds: Optional[PositiveFloat] = Field(
        default=None, description="overrides agents.defaults.timeoutSeconds")
    history: Optional[HistoryConfig] = Field(default=None,
                                             description="overrides agents.defaults.history")
    tools: Optional[AgentToolsConfig] = Field(
        default=None, description="overrides the tools section's profile, allow, deny")


@dataclass(frozen=True, config=SECTION_CONFIG)
class AgentsConfig:
    defaults: Annotated[AgentDefaults, NULL_IS_DEFAULTS] = Field(
        default_factory=AgentDefaults, description="what every agent uses unless it says otherwise")
    list: tuple[AgentConfig, ...] = Field(
        default=(), description='the agents; empty means one agent "main" on the defaults')


@dataclass(frozen=True, config=SECTION_CONFIG)
class SessionConfig:
    """Retention and size bounds of the session store (docs/operations.rst, "Sessions")."""

    maxSessionsPerAgent: PositiveInt = Field(
        default=10_000, description="sessions kept per agent; least recently used pruned")
    idleDays: Optional[PositiveFloat] = Field(
        default=None, description="sessions idle longer are pruned (unset: kept)")
    maxTranscriptBytes: PositiveInt = Field(
        default=64 * 1024 * 1024,
        description="a transcript past this is compacted to its newest turns")
    store: Annotated[StoreConfig, NULL_IS_DEFAULTS] = Field(
        default_factory=StoreConfig, description="where sessions and shared state live")
