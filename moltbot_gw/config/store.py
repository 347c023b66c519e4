"""``session.store``: where sessions, transcripts and the state several gateway processes
share live — local files (the embedded default, one process) or Redis (several processes or
machines; docs/operations.rst, "Scaling out")."""
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field
from pydantic.dataclasses import dataclass
from pydantic_core import PydanticCustomError

from .types import NULL_IS_DEFAULTS, SECTION_CONFIG, PositiveFloat, PositiveInt, Str

StoreBackend = Literal["file", "redis"]


def _redis_url(value: str) -> str:
    """A ``redis://`` or ``rediss://`` URL with a host; the error never repeats the URL (it may
    hold a password)."""
    parts = urlsplit(value)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise PydanticCustomError(
            "redis_url", 'expected "redis://[user:password@]host[:port][/db]" (or rediss://)')
    try:
        _ = parts.port   # urlsplit checks the port only when asked
    except ValueError:
        raise PydanticCustomError("redis_url", "the port is not a number") from None
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise PydanticCustomError("redis_url", "the database after the host must be a number")
    return value


RedisUrl = Annotated[Str, AfterValidator(_redis_url)]


@dataclass(frozen=True, config=SECTION_CONFIG)
class RedisConfig:
    url: RedisUrl = Field(
        default="redis://127.0.0.1:6379/0", repr=False,
        description="redis://[user:password@]host[:port][/db] (rediss:// for TLS); "
                    "${REDIS_URL} keeps the password out of the file")
    keyPrefix: Str = Field(
        default="moltbot:", description="prefix of every key; gateways sharing it share state")
    connectTimeoutSeconds: PositiveFloat = Field(
        default=5.0, description="how long to wait for a connection, at start and on reconnect")
    commandTimeoutSeconds: PositiveFloat = Field(
        default=5.0, description="a request needing Redis answers 503 after this long without it")
    poolSize: PositiveInt = Field(default=8, description="connections per gateway process")
    lockLeaseSeconds: PositiveFloat = Field(
        default=30.0, description="lease of a session's run lock; renewed while the run lives, "
                                  "taken over by another process this long after its holder died")
    runResultSeconds: PositiveInt = Field(
        default=600, description="how long a finished run's result is kept for agent.wait")


@dataclass(frozen=True, config=SECTION_CONFIG)
class StoreConfig:
    backend: StoreBackend = Field(
        default="file", description='"file" (the state dir; one process) or "redis" '
                                    '(shared by several processes and machines)')
    redis: Annotated[RedisConfig, NULL_IS_DEFAULTS] = Field(
        default_factory=RedisConfig, description='the Redis server used by backend "redis"')
