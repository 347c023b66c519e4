"""Redis, the state several gateway processes share (``session.store.backend: "redis"``):
the connection every shared component uses, and the names of the keys they keep."""
from .connection import RedisLink, RedisUnavailable, masked_url, parse_redis_url

__all__ = ["RedisLink", "RedisUnavailable", "masked_url", "parse_redis_url"]
