"""Gateway authentication: the shared secret, its constant-time check and the per-address
limiter for failed attempts.

Transport-neutral: HTTP and WebSocket layers hand in the presented secret and the client
address; nothing here knows about requests or frames.
"""
from __future__ import annotations

import errno
import hmac
import ipaddress
import os
import secrets
import stat
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Protocol, Sequence

from twisted.logger import Logger

from .config import Config

TOKEN_FILE_NAME = "gateway.token"
# Request headers that make a client ineligible for the loopback lockout exemption: a browser
# page always sends Origin (Sec-WebSocket-Origin in old drafts); a proxy in front relays
# clients that are not local at all.
NOT_EXEMPTABLE_HEADERS = ("origin", "sec-websocket-origin", "x-forwarded-for", "forwarded",
                          "x-real-ip")
log = Logger()


def token_file(state_dir: Path) -> Path:
    return state_dir / TOKEN_FILE_NAME


class UnsafeTokenFile(ValueError):
    """The token file is not a plain file of ours (a symbolic link, say): never used."""


def read_token(state_dir: Path) -> Optional[str]:
    """The token stored in the state dir, ``None`` when there is none (or it is blank).

    Opened with ``O_NOFOLLOW``: a symbolic link planted in its place is refused, not
    followed to wherever it points."""
    path = token_file(state_dir)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UnsafeTokenFile(f"{path} is a symbolic link; refusing to use it as the "
                                  "gateway token (remove it to have a new token generated)") from e
        raise
    with os.fdopen(fd, "r", encoding="utf-8") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise UnsafeTokenFile(f"{path} is not a regular file; refusing to use it as the "
                                  "gateway token")
        return f.read().strip() or None


def load_or_create_token(state_dir: Path) -> tuple[str, bool]:
    """Return the stored gateway token, generating it (0600) on first use.

    Runs before the reactor starts (and from the CLI), so plain file I/O is fine here.
    The second item says whether the token was created just now. The new file is written
    through ``mkstemp`` (``O_EXCL|O_NOFOLLOW``, 0600) and linked into place, which fails
    rather than replace anything that appeared there meanwhile.
    """
    token = read_token(state_dir)
    if token:
        return token, False
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = token_file(state_dir)
    token = secrets.token_urlsafe(32)
    fd, tmp = tempfile.mkstemp(prefix=TOKEN_FILE_NAME + ".", suffix=".tmp", dir=state_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(token + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            path.unlink()      # a blank token file: replace it, but never through a link
            os.link(tmp, path)
    finally:
        os.unlink(tmp)
    return token, True


def bearer_credential(authorization: Optional[str]) -> Optional[str]:
    """The credential of an ``Authorization: Bearer <secret>`` header, else ``None``."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    value = value.strip()
    return value or None


class BadForwardedFor(ValueError):
    """An ``X-Forwarded-For`` from a trusted proxy names a hop that is not an IP address."""


def client_address(peer: str, forwarded_for: Optional[str],
                   trusted_proxies: Sequence[ipaddress._BaseNetwork]) -> str:
    """The address to charge failed attempts to.

    ``X-Forwarded-For`` is believed only when the peer is a trusted proxy; then the
    right-most hop that is not itself a trusted proxy is the client. A hop that is not an
    IP address raises ``BadForwardedFor`` (a 400): charging the proxy instead would let one
    client behind it lock every other one out.
    """
    if not forwarded_for or not _is_trusted(peer, trusted_proxies):
        return peer
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        if not _is_trusted(hop, trusted_proxies):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                raise BadForwardedFor("X-Forwarded-For names a hop that is not an IP "
                                      "address") from None
    return peer


def limiter_key(address: str) -> str:
    """What the limiter counts ``address`` under: an IPv6 client by its /64 (one host
    usually holds a whole /64, so per-address counting would be no limit at all), an
    IPv4-mapped IPv6 address as its IPv4 address, anything else as given."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def is_loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _is_trusted(address: str, trusted: Sequence[ipaddress._BaseNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in trusted)


class FailureLimiter:
    """Counts failed attempts per client address in a fixed window.

    After ``max_failures`` failures inside ``window`` seconds the address is refused until
    the window ends. Memory is bounded: expired entries are dropped as new ones arrive and
    at most ``max_entries`` addresses are remembered (the oldest go first).
    """

    def __init__(self, clock, max_failures: int = 10, window: float = 60.0,
                 max_entries: int = 100_000):
        self._clock = clock
        self.max_failures = max_failures
        self.window = window
        self.max_entries = max_entries
        self._entries: OrderedDict[str, list] = OrderedDict()  # addr -> [window_start, count]

    def __len__(self) -> int:
        return len(self._entries)

    def retry_after(self, address: str) -> Optional[float]:
        """Seconds until ``address`` may try again, or ``None`` if it may try now."""
        entry = self._entries.get(address)
        if entry is None:
            return None
        remaining = entry[0] + self.window - self._clock.seconds()
        if remaining <= 0:
            del self._entries[address]
            return None
        return remaining if entry[1] >= self.max_failures else None

    def reset(self, address: str) -> None:
        """Forget the failures of ``address`` (it just authenticated)."""
        self._entries.pop(address, None)

    def lock(self, address: str, seconds: float) -> None:
        """Refuse ``address`` for ``seconds`` from now (another process saw it reach the
        limit); a longer lock already in force stays."""
        if seconds <= 0 or (self.retry_after(address) or 0) >= seconds:
            return
        self._entries[address] = [self._clock.seconds() + seconds - self.window,
                                  self.max_failures]
        self._entries.move_to_end(address)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def knows(self, address: str) -> bool:
        """Whether failures of ``address`` are remembered (its window has not ended)."""
        return address in self._entries

    def record_failure(self, address: str) -> None:
        now = self._clock.seconds()
        self._expire(now)
        entry = self._entries.get(address)
        if entry is None or entry[0] + self.window <= now:
            self._entries[address] = [now, 1]
            self._entries.move_to_end(address)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        else:
            entry[1] += 1

    def _expire(self, now: float) -> None:
        # Entries are ordered by window start, so expired ones sit at the front.
        while self._entries:
            address, (start, _count) = next(iter(self._entries.items()))
            if start + self.window > now:
                break
            del self._entries[address]


@dataclass(frozen=True)
class AuthOutcome:
    ok: bool
    retry_after: Optional[float] = None  # set when the address is rate limited

    @property
    def rate_limited(self) -> bool:
        return self.retry_after is not None


class Authenticator(Protocol):
    """What a transport asks of the gateway's auth: ``GatewayAuth`` itself, or the
    ``metrics.CountingAuth`` over it that counts the transport's refusals."""

    @property
    def trusted_proxies(self) -> Sequence[ipaddress._BaseNetwork]:
        ...

    def authenticate(self, address: str, presented: Optional[str], *,
                     exemptable: bool = True) -> AuthOutcome:
        ...

    def charge(self, address: str, *, exemptable: bool = True) -> None:
        ...


class SharedFailures(Protocol):
    """Where the failures are counted across processes too (``redis/auth_failures.py``):
    told without waiting for an answer, so the check stays synchronous."""

    def failed(self, key: str) -> None:
        ...

    def succeeded(self, key: str) -> None:
        ...


class GatewayAuth:
    """Checks a presented secret against the gateway's token or password."""

    log = Logger()
    # Set by the service with the Redis store backend: failures are counted across processes.
    shared: Optional[SharedFailures] = None

    def __init__(self, mode: str, secret: str, limiter: FailureLimiter,
                 trusted_proxies: Sequence[str] = (), generated: bool = False,
                 exempt_loopback: bool = True):
        self.mode = mode
        self.exempt_loopback = exempt_loopback
        self._secret = secret.encode("utf-8")
        self.limiter = limiter
        self.generated = generated
        self.trusted_proxies = tuple(ipaddress.ip_network(p, strict=False)
                                     for p in trusted_proxies)

    def __repr__(self) -> str:
        return f"<GatewayAuth mode={self.mode} generated={self.generated}>"

    @classmethod
    def from_config(cls, config: Config, clock) -> "GatewayAuth":
        auth = config.gateway.auth
        mode, secret, generated = cls._secret_of(config)
        limiter = FailureLimiter(clock, auth.rateLimit.maxFailures, auth.rateLimit.windowSeconds)
        return cls(mode, secret, limiter, config.gateway.trustedProxies, generated,
                   auth.rateLimit.exemptLoopback)

    def reconfigure(self, config: Config) -> None:
        """Take the secret, mode, limits and trusted proxies of a reloaded config; the
        limiter keeps what it knows about failing addresses."""
        self.mode, secret, self.generated = self._secret_of(config)
        self._secret = secret.encode("utf-8")
        limits = config.gateway.auth.rateLimit
        self.limiter.max_failures = limits.maxFailures
        self.limiter.window = limits.windowSeconds
        self.exempt_loopback = limits.exemptLoopback
        self.trusted_proxies = tuple(ipaddress.ip_network(p, strict=False)
                                     for p in config.gateway.trustedProxies)

    @classmethod
    def _secret_of(cls, config: Config) -> tuple[str, str, bool]:
        """(mode, secret, generated) for ``config``; a token is generated when none is set."""
        auth = config.gateway.auth
        secret = auth.explicit_secret
        generated = False
        if secret is None:
            if auth.mode == "password":
                raise ValueError("gateway.auth.password: required when gateway.auth.mode is "
                                 '"password" (or set MOLTBOT_GATEWAY_PASSWORD)')
            secret, created = load_or_create_token(config.state_dir)
            generated = True
            path = token_file(config.state_dir)
            if created:
                cls.log.info("Generated a gateway token and stored it in {path} "
                             "(print it with: moltbot-gw token)", path=str(path))
            else:
                cls.log.info("Using the gateway token stored in {path}", path=str(path))
        return auth.mode, secret, generated

    def matches(self, presented: Optional[str]) -> bool:
        """Constant-time comparison of a presented secret."""
        if presented is None:
            return False
        return hmac.compare_digest(presented.encode("utf-8"), self._secret)

    def is_exempt(self, address: str, exemptable: bool = True) -> bool:
        """Whether failures of ``address`` are not counted: a loopback client, unless the
        config says otherwise or the transport says it may not be (``exemptable`` is False
        for a browser page, which sent ``Origin``, and for a request relayed by a proxy)."""
        return self.exempt_loopback and exemptable and is_loopback(address)

    def authenticate(self, address: str, presented: Optional[str], *,
                     exemptable: bool = True) -> AuthOutcome:
        """Check ``presented`` for a client at ``address``, applying the failure limiter.

        A limited address is refused without looking at the secret, so guessing gains
        nothing; a missing credential is refused but not counted as a guess; a success
        clears the address's failures. Exempt clients (``is_exempt``) are never limited.
        """
        exempt = self.is_exempt(address, exemptable)
        key = limiter_key(address)
        wait = None if exempt else self.limiter.retry_after(key)
        if wait is not None:
            return AuthOutcome(False, retry_after=wait)
        if self.matches(presented):
            if not exempt:
                if self.shared is not None and self.limiter.knows(key):
                    self.shared.succeeded(key)   # only then: no Redis write per request
                self.limiter.reset(key)
            return AuthOutcome(True)
        if presented is not None:
            if not exempt:
                self._record_failure(key)
            self.log.warn("Failed gateway auth from {address}", address=address)
        return AuthOutcome(False)

    def charge(self, address: str, *, exemptable: bool = True) -> None:
        """Count a failed attempt that presented no secret worth checking: a malformed or
        oversized handshake. Exempt clients are not charged."""
        if not self.is_exempt(address, exemptable):
            self._record_failure(limiter_key(address))

    def _record_failure(self, key: str) -> None:
        self.limiter.record_failure(key)
        if self.shared is not None:
            self.shared.failed(key)
